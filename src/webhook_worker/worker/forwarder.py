"""Sends an event to its tool's ``forward.url``: one pooled HTTP client for every tool, a
timeout per tool, Standard Webhooks signatures when the tool has a ``signing_secret``.

Every request carries ``webhook-id`` (the event id: the same on every retry, so a target can
de-duplicate), the event type and tool id, and the W3C ``traceparent`` of the event's trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from webhook_worker.auth import standard_webhooks
from webhook_worker.tools.model import ForwardConfig
from webhook_worker.worker.retry import Failure, http_failure
from webhook_worker.worker.target_guard import TargetGuard

USER_AGENT = "webhook-worker"
_DETAIL_BYTES = 200


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    event_id: str
    tool_id: str
    event_type: str | None
    body: bytes
    content_type: str
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class ForwardOutcome:
    """``failure`` is None when the target answered 2xx."""

    duration_ms: float
    http_status: int | None
    failure: Failure | None


class Forwarder:
    def __init__(
        self, client: httpx.AsyncClient | None = None, guard: TargetGuard | None = None
    ) -> None:
        self._guard = guard or TargetGuard()
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, config: ForwardConfig, request: ForwardRequest) -> ForwardOutcome:
        started = time.perf_counter()
        try:
            refusal = await self._guard.refusal(config.url)
        except OSError as exc:
            failure = Failure("connection_error", f"cannot resolve the target: {exc}"[:500])
            return _outcome(started, None, failure)
        if refusal is not None:
            return _outcome(started, None, Failure("forbidden_target", refusal))
        headers = {name: value for name, value in config.headers}
        headers.update(
            {
                "Content-Type": request.content_type,
                "webhook-id": request.event_id,
                "X-Webhook-Tool-Id": request.tool_id,
            }
        )
        if request.event_type is not None:
            headers["X-Webhook-Event-Type"] = request.event_type
        if request.traceparent is not None:
            headers["traceparent"] = request.traceparent
        if config.signing_secret:
            now = int(time.time())
            headers["webhook-timestamp"] = str(now)
            headers["webhook-signature"] = standard_webhooks.sign(
                config.signing_secret, request.event_id, now, request.body
            )
        try:
            response = await self._client.request(
                config.method,
                config.url,
                content=request.body,
                headers=headers,
                timeout=config.timeout,
            )
        except httpx.TimeoutException:
            return _outcome(
                started, None, Failure("timeout", f"no answer within {config.timeout:g}s")
            )
        except httpx.HTTPError as exc:
            message = f"{type(exc).__name__}: {exc}".strip()[:500]
            return _outcome(started, None, Failure("connection_error", message))
        if 200 <= response.status_code < 300:
            return _outcome(started, response.status_code, None)
        detail = response.content[:_DETAIL_BYTES].decode("utf-8", errors="replace").strip()
        failure = http_failure(response.status_code, response.headers.get("retry-after"), detail)
        return _outcome(started, response.status_code, failure)


def _outcome(started: float, status: int | None, failure: Failure | None) -> ForwardOutcome:
    return ForwardOutcome((time.perf_counter() - started) * 1000, status, failure)
