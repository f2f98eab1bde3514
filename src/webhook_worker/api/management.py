"""``/api/v1``: tools and events (dead letters arrive with the processing issue).

Every route needs ``Authorization: Bearer $ADMIN_TOKEN``; without ADMIN_TOKEN only loopback
clients are served. Errors use the ingest error shape and name the offending field.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from ipaddress import ip_address
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_worker.api.responses import JSONResponse, error
from webhook_worker.clock import parse_time
from webhook_worker.constants import EVENT_STATUSES
from webhook_worker.errors import NotFoundError, ToolConfigError
from webhook_worker.storage.database import is_unavailable
from webhook_worker.storage.events import EventFilter, EventStore
from webhook_worker.tools.service import ToolService

Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class ManagementAPI:
    def __init__(self, tools: ToolService, events: EventStore, admin_token: str | None) -> None:
        self._tools = tools
        self._events = events
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
