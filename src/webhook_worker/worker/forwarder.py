"""Sends an event to its tool's ``forward.url``: one pooled HTTP client (aiohttp) for every tool,
a timeout per tool, Standard Webhooks signatures when the tool has a ``signing_secret``.

Every request carries ``webhook-id`` (the event id: the same on every retry, so a target can
de-duplicate), the event type and tool id, and the W3C ``traceparent`` of the event's trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import yarl

from webhook_worker.auth import standard_webhooks
from webhook_worker.credentials import redact_urls_in
from webhook_worker.tools.model import ForwardConfig
from webhook_worker.worker.retry import Failure, http_failure
from webhook_worker.worker.target_guard import ForbiddenTargetError, GuardedResolver, TargetGuard

USER_AGENT = "webhook-worker"
_DETAIL_BYTES = 200
_NOT_SENT = frozenset({"Accept", "Accept-Encoding"})
_TARGETS = 4096
"""Destinations whose request parts are kept at most (a bound over tools changed while the
process runs)."""
_CONNECTIONS = 256
"""Connections open at once, all targets together (a tool's own share is bounded by
WORKER_TOOL_CONCURRENCY)."""


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


@dataclass(frozen=True, slots=True)
class _Target:
    """What every request to one destination shares, worked out once (parsing the URL and
    building the timeout and the fixed headers each time was a good part of a request's CPU)."""

    url: yarl.URL
    timeout: aiohttp.ClientTimeout
    headers: dict[str, str]


class Forwarder:
    def __init__(self, guard: TargetGuard | None = None) -> None:
        self._guard = guard or TargetGuard()
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[ForwardConfig, _Target] = {}

    def _target(self, config: ForwardConfig) -> _Target:
        target = self._targets.get(config)
        if target is None:
            if len(self._targets) >= _TARGETS:
                self._targets.clear()  # tools changed a lot: start again
            target = self._targets[config] = _Target(
                yarl.URL(config.url, encoded=False),
                aiohttp.ClientTimeout(total=config.timeout),
                dict(config.headers),
            )
        return target

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=_CONNECTIONS,
                limit_per_host=0,
                resolver=GuardedResolver(self._guard.allow_private),
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, config: ForwardConfig, request: ForwardRequest) -> ForwardOutcome:
        started = time.perf_counter()
        try:
            refusal = await self._guard.refusal(config.url)
        except OSError as exc:
            failure = Failure("connection_error", f"cannot resolve the target: {exc}"[:500])
            return _outcome(started, None, failure)
        if refusal is not None:
            return _outcome(started, None, Failure("forbidden_target", refusal))
        target = self._target(config)
        headers = target.headers.copy()
        headers["Content-Type"] = request.content_type
        headers["webhook-id"] = request.event_id
        headers["X-Webhook-Tool-Id"] = request.tool_id
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
            async with self._client().request(
                config.method,
                target.url,
                data=request.body,
                headers=headers,
                timeout=target.timeout,
                allow_redirects=False,
                # Nothing the target answers is decoded (only a few bytes of an error are read).
                skip_auto_headers=_NOT_SENT,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    return _outcome(started, status, None)
                detail_bytes = await response.content.read(_DETAIL_BYTES)
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return _outcome(
                started, None, Failure("timeout", f"no answer within {config.timeout:g}s")
            )
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenTargetError):
                return _outcome(started, None, Failure("forbidden_target", str(exc.os_error)))
            return _outcome(started, None, Failure("connection_error", _describe(exc)))
        except (aiohttp.ClientError, ValueError) as exc:
            return _outcome(started, None, Failure("connection_error", _describe(exc)))
        detail = detail_bytes.decode("utf-8", errors="replace").strip()
        return _outcome(started, status, http_failure(status, retry_after, detail))


def _describe(exc: BaseException) -> str:
    # The client's messages may quote the URL, and with it a credential query value.
    return redact_urls_in(f"{type(exc).__name__}: {exc}").strip()[:500]


def _outcome(started: float, status: int | None, failure: Failure | None) -> ForwardOutcome:
    return ForwardOutcome((time.perf_counter() - started) * 1000, status, failure)
