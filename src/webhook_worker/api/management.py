"""``/api/v1``: tools, events and dead letters.

The routes here are relative to ``/api/v1``; :mod:`webhook_worker.api.v1` mounts them behind
the access rule (``Authorization: Bearer $ADMIN_TOKEN``; without ADMIN_TOKEN only loopback
clients are served) and turns the errors they raise into answers that name the offending field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from webhook_worker.api.cursor import decode_cursor
from webhook_worker.api.export import export_response
from webhook_worker.api.responses import JSONResponse
from webhook_worker.api.views import dead_letter_view, event_view, page_view
from webhook_worker.clock import parse_time
from webhook_worker.errors import BadRequestError
from webhook_worker.queue.base import Queue
from webhook_worker.replay import Replayer
from webhook_worker.storage import purge
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import (
    DeadLetterFilter,
    DeadLetterStore,
)
from webhook_worker.storage.erase import Deleted, ReplayKeys
from webhook_worker.storage.events import MAX_SEARCH, EventFilter, EventStore
from webhook_worker.storage.rows import Page
from webhook_worker.tools.service import ToolService, picked_up_after
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

_F = TypeVar("_F", EventFilter, DeadLetterFilter)
_R = TypeVar("_R")


class ManagementAPI:
    def __init__(
        self,
        tools: ToolService,
        events: EventStore,
        dead_letters: DeadLetterStore,
        replayer: Replayer,
        *,
        refresh_interval: float,
        db: Database,
        queue: Queue,
        replay_keys: ReplayKeys | None = None,
    ) -> None:
        """``replay_keys`` tells the replay keys ingest may keep for an event's body (the tool
        cache's), so that a purge forgets them too."""
        self._tools = tools
        self._events = events
        self._dead_letters = dead_letters
        self._replayer = replayer
        self._db = db
        self._queue = queue
        self._replay_keys = replay_keys
        # Every process re-reads its tools within TOOLS_REFRESH_INTERVAL: after this long, a
        # change of `paused` is what every worker acts on.
        self._picked_up = picked_up_after(refresh_interval)

    def routes(self) -> list[Route]:
        """The routes, relative to where :func:`webhook_worker.api.v1.management_app` mounts
        them."""
        return [
            Route("/tools", self.list_tools, methods=["GET"]),
            Route("/tools", self.create_tool, methods=["POST"]),
            Route("/tools/{tool_id}", self.get_tool, methods=["GET"]),
            Route("/tools/{tool_id}", self.replace_tool, methods=["PUT"]),
            Route("/tools/{tool_id}", self.patch_tool, methods=["PATCH"]),
            Route("/tools/{tool_id}", self.delete_tool, methods=["DELETE"]),
            Route(
                "/tools/{tool_id}/destinations/{destination_id}/pause",
                self.pause_destination,
                methods=["POST"],
            ),
            Route(
                "/tools/{tool_id}/destinations/{destination_id}/resume",
                self.resume_destination,
                methods=["POST"],
            ),
            Route("/events", self.list_events, methods=["GET"]),
            Route("/events", self.purge_events, methods=["DELETE"]),
            Route("/events/replay", self.replay_events, methods=["POST"]),
            Route("/events/export", self.export_events, methods=["GET"]),
            Route("/events/{event_id}", self.get_event, methods=["GET"]),
            Route("/events/{event_id}/replay", self.replay_event, methods=["POST"]),
            Route("/dlq", self.list_dead_letters, methods=["GET"]),
            Route("/dlq/retry", self.retry_dead_letters, methods=["POST"]),
            Route("/dlq/{dlq_id}", self.get_dead_letter, methods=["GET"]),
            Route("/dlq/{dlq_id}", self.discard_dead_letter, methods=["DELETE"]),
            Route("/dlq/{dlq_id}/retry", self.retry_dead_letter, methods=["POST"]),
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

    async def pause_destination(self, request: Request) -> Response:
        """Stop deliveries to one destination: they wait (``paused``) until it is resumed. The
        answer comes once every worker has re-read its tools (TOOLS_REFRESH_INTERVAL), and a
        worker checks ``paused`` right before each send: after it, no new delivery starts
        there (one already under way finishes). Idempotent."""
        tool_id, destination_id = _destination(request)
        await self._tools.set_paused(tool_id, destination_id, True)
        await asyncio.sleep(self._picked_up)
        return JSONResponse({"tool_id": tool_id, "destination_id": destination_id, "paused": True})

    async def resume_destination(self, request: Request) -> Response:
        """Deliver to one destination again, and send what waited while it was paused, oldest
        first. The waiting deliveries are released only once every worker has re-read its
        tools (TOOLS_REFRESH_INTERVAL): a worker still seeing the pause would park them again.
        Idempotent: resuming a destination that is not paused sends whatever still waits."""
        tool_id, destination_id = _destination(request)
        await self._tools.set_paused(tool_id, destination_id, False)
        await asyncio.sleep(self._picked_up)
        requeued = await self._replayer.release_paused(tool_id, destination_id)
        return JSONResponse(
            {
                "tool_id": tool_id,
                "destination_id": destination_id,
                "paused": False,
                "requeued": requeued,
            }
        )

    async def list_events(self, request: Request) -> Response:
        query = request.query_params
        _refuse_unknown(query, (*_EVENT_FILTERS, *_PAGING))
        return await _page(self._events.list, event_view, _event_filter(query), query)

    async def export_events(self, request: Request) -> Response:
        """Every event matching the list's filters, oldest first, as NDJSON (api/export.py)."""
        query = request.query_params
        _refuse_unknown(query, _EVENT_FILTERS)
        where = _event_filter(query).ending_by(datetime.now(UTC))
        return await export_response(self._events, where)

    async def purge_events(self, request: Request) -> Response:
        """Delete every event matching the filters in the query string (at least one), with
        its attempts, deliveries, dead letters and de-duplication key: a delivery id erased
        is accepted as new when sent again. ``dry_run=true`` counts them instead."""
        query = request.query_params
        _refuse_unknown(query, (*_EVENT_FILTERS, "dry_run"))
        dry_run = _query_flag(query, "dry_run")
        where = _event_filter(query)
        if where == EventFilter():
            raise BadRequestError(
                "give at least one filter (" + ", ".join(_EVENT_FILTERS) + "): deleting every "
                "event at once is not offered"
            )
        if dry_run:
            return JSONResponse({"matched": await purge.count(self._db, where)})

        async def forget(chunk: Deleted) -> None:
            await self._queue.forget_delivery_ids(chunk.keys, chunk.replay_keys)

        deleted = await purge.purge(self._db, where, forget, self._replay_keys)
        return JSONResponse({"deleted": deleted.events})

    async def get_event(self, request: Request) -> Response:
        return JSONResponse(event_view(await self._events.get(request.path_params["event_id"])))

    async def replay_event(self, request: Request) -> Response:
        """Every delivery of the event again, or (body ``{"destination_id": ...}``) one."""
        event_id = request.path_params["event_id"]
        raw = await _optional_json_object(request)
        _refuse_unknown(raw, ("destination_id",))
        destination_id = _string(raw, "destination_id")
        if destination_id is not None:
            event = await self._events.get(event_id)
            await self._tools.check_destination(event.tool_id, destination_id)
        await self._replayer.replay_event(event_id, destination_id)
        answer = {"event_id": event_id, "status": "requeued"}
        if destination_id is not None:
            answer["destination_id"] = destination_id
        return JSONResponse(answer, status_code=202)

    async def replay_events(self, request: Request) -> Response:
        """Bulk: every event matching the filter in the JSON body, to every destination or to
        ``destination_id`` (which needs ``tool_id``); ``dry_run`` counts them first."""
        raw = await _optional_json_object(request)
        _refuse_unknown(raw, (*_EVENT_FILTERS, "destination_id", "dry_run"))
        dry_run = _flag(raw, "dry_run")
        where = _event_filter(raw)
        destination_id = _string(raw, "destination_id")
        if destination_id is not None:
            if where.tool_id is None:
                raise BadRequestError(
                    "destination_id: give tool_id too (a destination belongs to one tool)",
                    "destination_id",
                )
            await self._tools.check_destination(where.tool_id, destination_id)
        count = await self._replayer.replay_matching(where, destination_id, dry_run=dry_run)
        return JSONResponse({"matched": count} if dry_run else {"requeued": count})

    async def list_dead_letters(self, request: Request) -> Response:
        query = request.query_params
        _refuse_unknown(query, (*_DLQ_FILTERS, *_PAGING))
        where = _dead_letter_filter(dict(query))
        return await _page(self._dead_letters.list, dead_letter_view, where, query)

    async def get_dead_letter(self, request: Request) -> Response:
        letter = await self._dead_letters.get(request.path_params["dlq_id"])
        event = await self._events.get(letter.event_id)
        return JSONResponse(dead_letter_view(letter, event))

    async def discard_dead_letter(self, request: Request) -> Response:
        letter = await self._dead_letters.discard(request.path_params["dlq_id"])
        return JSONResponse(dead_letter_view(letter))

    async def retry_dead_letter(self, request: Request) -> Response:
        letter = await self._replayer.retry_dead_letter(request.path_params["dlq_id"])
        return JSONResponse(dead_letter_view(letter), status_code=202)

    async def retry_dead_letters(self, request: Request) -> Response:
        """Bulk: every pending dead letter matching the filter in the JSON body; ``dry_run``
        counts them first."""
        raw = await _optional_json_object(request)
        _refuse_unknown(raw, (*_DLQ_FILTERS, "dry_run"))
        dry_run = _flag(raw, "dry_run")
        where = _dead_letter_filter({k: v for k, v in raw.items() if k != "dry_run"})
        if where.status not in (None, DeadLetterStatus.PENDING):
            raise BadRequestError("status: bulk retry takes pending dead letters only", "status")
        if dry_run:
            return JSONResponse({"matched": await self._replayer.count_matching(where)})
        total, started = 0, datetime.now(UTC)
        while requeued := await self._replayer.retry_matching(where, before=started):
            total += requeued
        return JSONResponse({"requeued": total})


def _destination(request: Request) -> tuple[str, str]:
    return request.path_params["tool_id"], request.path_params["destination_id"]


async def _optional_json_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body, or {} when the body is empty."""
    body = await request.body()
    return await _json_object(request) if body.strip() else {}


def _string(raw: Mapping[str, Any], name: str) -> str | None:
    """A string field of a JSON body or query string. Absent, null and "" mean unset (no
    filter); false, 0, [] or {} are mistakes, not wildcards."""
    value = raw.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{name}: expected a string", name)
    return value


def _query_flag(query: Mapping[str, str], name: str) -> bool:
    """A ``true``/``false`` query parameter (absent or empty: false)."""
    value = query.get(name, "").strip().lower()
    if value not in ("", "true", "false"):
        raise BadRequestError(f"{name}: expected true or false", name)
    return value == "true"


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise BadRequestError(f"{name}: expected true or false", name)
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("the body must be a JSON object")
    # PostgreSQL text and JSONB cannot hold NUL; refuse it on every backend alike. A stack, not
    # recursion: the body may nest as deep as the JSON parser allows.
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            if any("\x00" in key for key in value):
                raise BadRequestError(f"{_NUL} in a key")
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and "\x00" in value:
            raise BadRequestError(f"{_NUL} in a string")
    return data


_EVENT_FILTERS = ("tool_id", "event_type", "status", "since", "until", "delivery_id", "search")
_DLQ_FILTERS = (
    "tool_id",
    "event_type",
    "error_class",
    "status",
    "since",
    "until",
    "destination_id",
)
_PAGING = ("limit", "cursor")
_NUL = "the NUL character (\\u0000) is not allowed"


async def _page(
    list_page: Callable[[_F, int, str | None], Awaitable[Page[_R]]],
    view: Callable[[_R], dict[str, Any]],
    where: _F,
    query: Mapping[str, str],
) -> Response:
    """A page of a list endpoint: ``limit`` and ``cursor`` from the query string, a malformed
    cursor a 400."""
    limit = _limit(query.get("limit"))
    cursor = query.get("cursor")
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise BadRequestError(str(exc), "cursor") from None
    return JSONResponse(page_view(await list_page(where, limit, after), view))


def _refuse_unknown(raw: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """A misspelt filter would silently match everything: name it instead."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        filters = [name for name in known if name not in _PAGING]
        raise BadRequestError(
            f"{unknown[0]!r}: unknown parameter (known filters: {', '.join(filters)})", unknown[0]
        )


def _event_filter(raw: Mapping[str, Any]) -> EventFilter:
    """The event filter of a query string or a JSON body (see :func:`_string`)."""
    values = {name: _string(raw, name) for name in _EVENT_FILTERS}
    status = values["status"]
    if status is not None and status not in tuple(EventStatus):
        raise BadRequestError(f"status: expected one of {', '.join(tuple(EventStatus))}", "status")
    search = values["search"]
    if search is not None and len(search) > MAX_SEARCH:
        raise BadRequestError(
            f"search: at most {MAX_SEARCH} characters (got {len(search)}); search for a "
            "distinctive part of the body",
            "search",
        )
    return EventFilter(
        tool_id=values["tool_id"],
        event_type=values["event_type"],
        status=EventStatus(status) if status is not None else None,
        since=_time(values["since"], "since"),
        until=_time(values["until"], "until"),
        delivery_id=values["delivery_id"],
        search=search,
    )


def _dead_letter_filter(raw: Mapping[str, Any]) -> DeadLetterFilter:
    values = {name: _string(raw, name) for name in _DLQ_FILTERS}
    status = values.pop("status")
    if status is not None and status not in tuple(DeadLetterStatus):
        raise BadRequestError(
            f"status: expected one of {', '.join(tuple(DeadLetterStatus))}", "status"
        )
    return DeadLetterFilter(
        tool_id=values["tool_id"],
        event_type=values["event_type"],
        error_class=values["error_class"],
        status=DeadLetterStatus(status) if status is not None else None,
        since=_time(values["since"], "since"),
        until=_time(values["until"], "until"),
        destination_id=values["destination_id"],
    )


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 50
    # isascii: str.isdigit() also holds for digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 500:
        raise BadRequestError("limit: expected a whole number from 1 to 500", "limit")
    return int(raw)


def _time(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise BadRequestError(f"{name}: {exc}", name) from None
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        raise BadRequestError(f"{name}: {raw!r} is out of the supported range", name) from None
