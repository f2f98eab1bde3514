"""``/api/v1``: tools and events (dead letters arrive with the processing issue).

Every route needs ``Authorization: Bearer $ADMIN_TOKEN``; without ADMIN_TOKEN only loopback
clients are served. Errors use the ingest error shape and name the offending field.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_worker.api.responses import JSONResponse, error
from webhook_worker.clock import parse_time
from webhook_worker.constants import EVENT_STATUSES
from webhook_worker.errors import NotFoundError, QueueUnavailableError, ToolConfigError
from webhook_worker.replay import ConflictError, Replayer
from webhook_worker.storage.database import is_unavailable
from webhook_worker.storage.deadletters import (
    DLQ_PENDING,
    DLQ_STATUSES,
    DeadLetterFilter,
    DeadLetterStore,
)
from webhook_worker.storage.events import EventFilter, EventStore
from webhook_worker.tools.service import ToolService

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class ManagementAPI:
    def __init__(
        self,
        tools: ToolService,
        events: EventStore,
        dead_letters: DeadLetterStore,
        replayer: Replayer,
        admin_token: str | None,
    ) -> None:
        self._tools = tools
        self._events = events
        self._dead_letters = dead_letters
        self._replayer = replayer
        self._token = admin_token.encode() if admin_token else None

    def routes(self) -> list[Route]:
        guarded = self._guarded
        return [
            Route("/api/v1/tools", guarded(self.list_tools), methods=["GET"]),
            Route("/api/v1/tools", guarded(self.create_tool), methods=["POST"]),
            Route("/api/v1/tools/{tool_id}", guarded(self.get_tool), methods=["GET"]),
            Route("/api/v1/tools/{tool_id}", guarded(self.replace_tool), methods=["PUT"]),
            Route("/api/v1/tools/{tool_id}", guarded(self.patch_tool), methods=["PATCH"]),
            Route("/api/v1/tools/{tool_id}", guarded(self.delete_tool), methods=["DELETE"]),
            Route("/api/v1/events", guarded(self.list_events), methods=["GET"]),
            Route("/api/v1/events/{event_id}", guarded(self.get_event), methods=["GET"]),
            Route("/api/v1/events/{event_id}/replay", guarded(self.replay_event), methods=["POST"]),
            Route("/api/v1/dlq", guarded(self.list_dead_letters), methods=["GET"]),
            Route("/api/v1/dlq/retry", guarded(self.retry_dead_letters), methods=["POST"]),
            Route("/api/v1/dlq/{dlq_id}", guarded(self.get_dead_letter), methods=["GET"]),
            Route("/api/v1/dlq/{dlq_id}", guarded(self.discard_dead_letter), methods=["DELETE"]),
            Route("/api/v1/dlq/{dlq_id}/retry", guarded(self.retry_dead_letter), methods=["POST"]),
        ]

    async def list_tools(self, request: Request) -> Response:
        return JSONResponse({"items": await self._tools.list_all(), "next_cursor": None})

    async def create_tool(self, request: Request) -> Response:
        return JSONResponse(await self._tools.create(await _json_object(request)), status_code=201)

    async def get_tool(self, request: Request) -> Response:
        return JSONResponse(await self._tools.get(request.path_params["tool_id"]))

    async def replace_tool(self, request: Request) -> Response:
        tool_id = request.path_params["tool_id"]
        return JSONResponse(await self._tools.replace(tool_id, await _json_object(request)))

    async def patch_tool(self, request: Request) -> Response:
        tool_id = request.path_params["tool_id"]
        return JSONResponse(await self._tools.patch(tool_id, await _json_object(request)))

    async def delete_tool(self, request: Request) -> Response:
        await self._tools.delete(request.path_params["tool_id"])
        return Response(status_code=204)

    async def list_events(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status")
        if status and status not in EVENT_STATUSES:
            raise BadRequest(f"status: expected one of {', '.join(EVENT_STATUSES)}", "status")
        where = EventFilter(
            tool_id=query.get("tool_id") or None,
            event_type=query.get("event_type") or None,
            status=status or None,
            since=_time(query.get("since"), "since"),
            until=_time(query.get("until"), "until"),
        )
        try:
            items, cursor = await self._events.list(
                where, _limit(query.get("limit")), query.get("cursor")
            )
        except ValueError as exc:
            raise BadRequest(str(exc), "cursor") from None
        return JSONResponse({"items": items, "next_cursor": cursor})

    async def get_event(self, request: Request) -> Response:
        return JSONResponse(await self._events.get(request.path_params["event_id"]))

    async def replay_event(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        await self._replayer.replay_event(event_id)
        return JSONResponse({"event_id": event_id, "status": "requeued"}, status_code=202)

    async def list_dead_letters(self, request: Request) -> Response:
        query = request.query_params
        where = _dead_letter_filter(dict(query))
        try:
            items, cursor = await self._dead_letters.list(
                where, _limit(query.get("limit")), query.get("cursor")
            )
        except ValueError as exc:
            raise BadRequest(str(exc), "cursor") from None
        return JSONResponse({"items": items, "next_cursor": cursor})

    async def get_dead_letter(self, request: Request) -> Response:
        letter = await self._dead_letters.get(request.path_params["dlq_id"])
        letter["event"] = await self._events.get(letter["event_id"])
        return JSONResponse(letter)

    async def discard_dead_letter(self, request: Request) -> Response:
        return JSONResponse(await self._dead_letters.discard(request.path_params["dlq_id"]))

    async def retry_dead_letter(self, request: Request) -> Response:
        letter = await self._replayer.retry_dead_letter(request.path_params["dlq_id"])
        return JSONResponse(letter, status_code=202)

    async def retry_dead_letters(self, request: Request) -> Response:
        """Bulk: every pending dead letter matching the filter in the JSON body."""
        body = await request.body()
        where = _dead_letter_filter(await _json_object(request) if body.strip() else {})
        if where.status not in (None, DLQ_PENDING):
            raise BadRequest("status: bulk retry takes pending dead letters only", "status")
        total, started = 0, datetime.now(UTC)
        while requeued := await self._replayer.retry_matching(where, before=started):
            total += requeued
        return JSONResponse({"requeued": total})

    def _guarded(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            denied = self._deny(request)
            if denied is not None:
                return denied
            try:
                return await endpoint(request)
            except ToolConfigError as exc:
                return _bad_request(str(exc), exc.field)
            except BadRequest as exc:
                return _bad_request(str(exc), exc.field)
            except NotFoundError as exc:
                return error(404, "not_found", str(exc))
            except ConflictError as exc:
                return error(409, "conflict", str(exc))
            except QueueUnavailableError:
                return error(503, "queue_unavailable", "the queue is unavailable; retry later")
            except Exception as exc:
                if is_unavailable(exc):
                    return error(
                        503, "database_unavailable", "the database is unavailable; retry later"
                    )
                raise

        return guarded

    def _deny(self, request: Request) -> Response | None:
        if self._token is None:
            host = request.client.host if request.client else ""
            if _is_loopback(host):
                return None
            return error(
                403,
                "forbidden",
                "the management API answers only loopback clients until ADMIN_TOKEN is set",
            )
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token):
            return None
        return error(
            401,
            "unauthorized",
            "send Authorization: Bearer <ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _bad_request(detail: str, field: str | None) -> Response:
    payload: dict[str, Any] = {"error": "invalid_request", "detail": detail}
    if field:
        payload["field"] = field
    return JSONResponse(payload, status_code=400)


_DLQ_FILTERS = ("tool_id", "event_type", "error_class", "status", "since", "until")


def _dead_letter_filter(raw: dict[str, Any]) -> DeadLetterFilter:
    unknown = sorted(set(raw) - {*_DLQ_FILTERS, "limit", "cursor"})
    if unknown:
        raise BadRequest(
            f"{unknown[0]}: unknown filter (known: {', '.join(_DLQ_FILTERS)})", unknown[0]
        )
    values = {name: raw.get(name) or None for name in ("tool_id", "event_type", "error_class")}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{name}: expected a string", name)
    status = raw.get("status") or None
    if status is not None and status not in DLQ_STATUSES:
        raise BadRequest(f"status: expected one of {', '.join(DLQ_STATUSES)}", "status")
    return DeadLetterFilter(
        **values,
        status=status,
        since=_time(raw.get("since"), "since"),
        until=_time(raw.get("until"), "until"),
    )


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise BadRequest("limit: expected a whole number from 1 to 500", "limit")
    return int(raw)


def _time(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}", name) from None


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
