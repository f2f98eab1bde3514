"""Events and their processing attempts: the batch insert the worker uses, and the queries
behind ``/api/v1/events`` and ``webhook-worker events``."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Insert, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.clock import iso
from webhook_worker.errors import NotFoundError
from webhook_worker.storage.database import Database, json_text
from webhook_worker.storage.records import (
    AttemptRecord,
    EventRecord,
    EventState,
    OutcomeRecord,
    as_rows,
)
from webhook_worker.storage.schema import attempts, events
from webhook_worker.vocabulary import EventStatus

MAX_PAGE = 500
_CURSOR = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class EventFilter:
    tool_id: str | None = None
    event_type: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def insert_ignoring_conflicts(dialect: str, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for either dialect."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement: Insert = module.insert(table).on_conflict_do_nothing()
    return statement


async def insert_events(conn: AsyncConnection, records: Sequence[EventRecord]) -> set[str]:
    """Insert new events; a redelivered message or a repeated delivery id is skipped, not an
    error. Returns the ids actually inserted."""
    if not records:
        return set()
    if conn.dialect.name == "postgresql":
        return await _insert_events_unnest(conn, records)
    statement = insert_ignoring_conflicts(conn.dialect.name, events).returning(events.c.id)
    return {row[0] for row in await conn.execute(statement, as_rows(records, _EVENT_COLUMNS))}


# One array per column: the same prepared statement for every batch size, and the rows are
# encoded by the driver in C rather than bound one parameter at a time (a multi-row VALUES of
# 500 rows has 5,500 parameters and is a new statement for every batch size).
_INSERT_EVENTS_UNNEST = """
INSERT INTO events (id, tool_id, event_type, delivery_id, status, received_at, processed_at,
                    headers, body, payload, attempt_count)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
                     $6::timestamptz[], $7::timestamptz[], $8::jsonb[], $9::bytea[],
                     $10::jsonb[], $11::int[])
ON CONFLICT DO NOTHING
RETURNING id
"""
_EVENT_COLUMNS = EventRecord._fields  # the statement's column order
_JSON_COLUMNS = tuple(_EVENT_COLUMNS.index(name) for name in ("headers", "payload"))


async def _insert_events_unnest(conn: AsyncConnection, records: Sequence[EventRecord]) -> set[str]:
    columns: list[Any] = list(zip(*records, strict=True))
    for index in _JSON_COLUMNS:
        columns[index] = [_json_text(value) for value in columns[index]]
    result = await conn.exec_driver_sql(_INSERT_EVENTS_UNNEST, tuple(columns))
    return {row[0] for row in result}


def _json_text(value: Any) -> str | None:
    return None if value is None else json_text(value)


_ATTEMPT_COLUMNS = AttemptRecord._fields


async def insert_attempts(conn: AsyncConnection, records: Sequence[AttemptRecord]) -> None:
    """Add processing attempts."""
    if records:
        await conn.execute(attempts.insert(), as_rows(records, _ATTEMPT_COLUMNS))


async def event_states(conn: AsyncConnection, event_ids: Sequence[str]) -> dict[str, EventState]:
    """The state of each of ``event_ids`` that exists, by id."""
    if not event_ids:
        return {}
    query = select(events.c.id, events.c.status, events.c.attempt_count).where(
        events.c.id.in_(list(event_ids))
    )
    return {
        row.id: EventState(EventStatus(row.status), int(row.attempt_count))
        for row in await conn.execute(query)
    }


_OUTCOME_COLUMNS = OutcomeRecord._fields
_UPDATE_OUTCOMES = (
    update(events)
    .where(events.c.id == bindparam("event_id"))
    .values(
        status=bindparam("status"),
        processed_at=bindparam("processed_at"),
        attempt_count=bindparam("attempt_count"),
        payload=bindparam("payload", type_=events.c.payload.type),
    )
)


async def update_outcomes(conn: AsyncConnection, records: Sequence[OutcomeRecord]) -> None:
    """Set the outcome of events after an attempt."""
    if records:
        await conn.execute(_UPDATE_OUTCOMES, as_rows(records, _OUTCOME_COLUMNS))


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self, where: EventFilter, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of events, newest first, and the cursor of the next page (None at the end)."""
        limit = max(1, min(limit, MAX_PAGE))
        query = select(events).order_by(events.c.id.desc()).limit(limit + 1)
        if where.tool_id:
            query = query.where(events.c.tool_id == where.tool_id)
        if where.event_type:
            query = query.where(events.c.event_type == where.event_type)
        if where.status:
            query = query.where(events.c.status == where.status)
        if where.since:
            query = query.where(events.c.received_at >= where.since)
        if where.until:
            query = query.where(events.c.received_at < where.until)
        if cursor:
            query = query.where(events.c.id < decode_cursor(cursor))
        async with self._db.connect() as conn:
            rows = [dict(row) for row in (await conn.execute(query)).mappings()]
            more = len(rows) > limit
            rows = rows[:limit]
            by_event = await _attempts_of(conn, [row["id"] for row in rows])
        items = [event_view(row, by_event.get(row["id"], [])) for row in rows]
        return items, encode_cursor(rows[-1]["id"]) if more else None

    async def get(self, event_id: str) -> dict[str, Any]:
        async with self._db.connect() as conn:
            row = (
                (await conn.execute(select(events).where(events.c.id == event_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"no event {event_id!r}")
            by_event = await _attempts_of(conn, [event_id])
        return event_view(dict(row), by_event.get(event_id, []))

    async def count(self, where: EventFilter | None = None) -> int:
        from sqlalchemy import func

        query = select(func.count()).select_from(events)
        if where and where.tool_id:
            query = query.where(events.c.tool_id == where.tool_id)
        if where and where.status:
            query = query.where(events.c.status == where.status)
        async with self._db.connect() as conn:
            return int(await conn.scalar(query) or 0)


async def _attempts_of(
    conn: AsyncConnection, event_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    if not event_ids:
        return {}
    query = (
        select(attempts)
        .where(attempts.c.event_id.in_(event_ids))
        .order_by(attempts.c.event_id, attempts.c.attempt)
    )
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in (await conn.execute(query)).mappings():
        grouped.setdefault(row["event_id"], []).append(
            {
                "attempt": row["attempt"],
                "started_at": iso(row["started_at"]),
                "duration_ms": round(row["duration_ms"], 3),
                "outcome": row["outcome"],
                "error_class": row["error_class"],
                "error": row["error"],
                "http_status": row["http_status"],
            }
        )
    return grouped


def event_view(row: Mapping[str, Any], attempt_list: list[dict[str, Any]]) -> dict[str, Any]:
    """The SPEC shape of an event. ``payload`` is what was stored (the transform's result when
    there is one); ``raw_payload`` is the body as received, present only when it differs."""
    body = decode_body(row["body"])
    view: dict[str, Any] = {
        "id": row["id"],
        "tool_id": row["tool_id"],
        "event_type": row["event_type"],
        "delivery_id": row["delivery_id"],
        "status": row["status"],
        "received_at": iso(row["received_at"]),
        "processed_at": iso(row["processed_at"]),
        "payload": body if row["payload"] is None else row["payload"],
        "headers": row["headers"],
        "attempts": attempt_list,
    }
    if row["payload"] is not None:
        view["raw_payload"] = body
    return view


def decode_body(body: bytes) -> Any:
    """The body as JSON when it is JSON, else as text (undecodable bytes replaced)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")


def encode_cursor(event_id: str) -> str:
    return base64.urlsafe_b64encode(event_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The event id a cursor stands for; ValueError for anything this API did not hand out."""
    try:
        if not _CURSOR.match(cursor):
            raise ValueError
        event_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return str(uuid.UUID(event_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor this API returned") from None
