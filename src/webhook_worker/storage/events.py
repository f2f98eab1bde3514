"""Events and their processing attempts: the batch insert the worker uses, and the queries
behind ``/api/v1/events`` and ``webhook-worker events``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Insert,
    Integer,
    LargeBinary,
    RowMapping,
    Select,
    Table,
    bindparam,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from webhook_worker.errors import NotFoundError
from webhook_worker.storage.database import Database, json_text
from webhook_worker.storage.deliveries import deliveries_of, delivery_states
from webhook_worker.storage.partitions import id_bound
from webhook_worker.storage.records import (
    AttemptRecord,
    EventRecord,
    EventState,
    OutcomeRecord,
    as_rows,
    columns_of,
)
from webhook_worker.storage.rows import AttemptRow, DeliveryRow, EventRow, Page, utc, utc_or_none
from webhook_worker.storage.schema import attempts, events
from webhook_worker.vocabulary import EventStatus

MAX_PAGE = 500
MAX_SEARCH = 256
"""The longest ``search`` text (characters) a filter takes."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    tool_id: str | None = None
    event_type: str | None = None
    status: EventStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    delivery_id: str | None = None
    search: str | None = None
    """Text the body contains: a substring of its bytes (the text's UTF-8 encoding),
    case-sensitive, every character literal."""

    def ending_by(self, now: datetime) -> EventFilter:
        """This filter, ending at ``now`` at the latest: what a long read (an export, a bulk
        replay) works through, leaving out events received while it runs."""
        return self if self.until is not None and self.until <= now else replace(self, until=now)

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` narrowed to the events this filter matches (an unset field matches all).

        ``since``/``until`` also bound the event id: ids are UUIDv7 made at ingest together
        with ``received_at`` (api/ingest.py), so the id range holds every match, and on
        PostgreSQL, whose event tables are partitioned by id (storage/partitions.py), the
        partitions outside it are not read at all. :data:`ID_MARGIN` widens it, and the
        ``received_at`` condition keeps the result exact."""
        e = events.c
        for column, value in (
            (e.tool_id, self.tool_id),
            (e.event_type, self.event_type),
            (e.status, self.status),
            (e.delivery_id, self.delivery_id),
        ):
            if value:
                query = query.where(column == value)
        if self.since:
            query = query.where(
                e.received_at >= self.since,
                e.id >= _id_at(self.since.timestamp() - ID_MARGIN),
            )
        if self.until:
            query = query.where(
                e.received_at < self.until,
                e.id < _id_at(self.until.timestamp() + ID_MARGIN),
            )
        if self.search:
            needle = literal(self.search.encode(), LargeBinary)
            query = query.where(_Position(e.body, needle) > 0)
        return query


ID_MARGIN = 60.0
"""Seconds the event id range of a time filter reaches beyond it: an event's id and its
``received_at`` are read from the same clock microseconds apart, so this covers a clock step
between the two, at the cost of reading a minute more of events at each end (from their
``received_at`` index)."""

_LATEST_ID_TIME = (2**48 - 1) / 1000  # the 48 bits of milliseconds a UUIDv7 id has


def _id_at(at: float) -> str:
    """:func:`partitions.id_bound` for any time a filter may name (before 1970 is 0)."""
    return id_bound(min(max(at, 0.0), _LATEST_ID_TIME))


class _Position(FunctionElement[int]):
    """Where ``needle`` (bytes) first occurs in ``haystack`` (bytes), counting from 1; 0 when
    it does not. Byte-wise: no collation, no pattern characters, and a body that is not valid
    UTF-8 is searched like any other."""

    type = Integer()
    name = "position"
    inherit_cache = True


@compiles(_Position, "postgresql")
def _position_postgresql(element: _Position, compiler: SQLCompiler, **kw: Any) -> str:
    haystack, needle = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"position({needle} IN {haystack})"


@compiles(_Position)
def _position_sqlite(element: _Position, compiler: SQLCompiler, **kw: Any) -> str:
    # instr() compares BLOBs byte by byte (text would be compared as characters).
    return f"instr({compiler.process(element.clauses, **kw)})"


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
#
# An event is inserted only when its (tool_id, delivery_id) is new in event_keys (the unique
# delivery id, which the partitioned events table cannot hold itself: storage/partitions.py), in
# the same statement: a redelivered message (same event id, same key) and a repeated delivery id
# (a new event id, a key already there) both insert nothing.
_INSERT_EVENTS_UNNEST = """
WITH new AS (
    SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[],
                         $5::varchar[], $6::timestamptz[], $7::timestamptz[], $8::jsonb[],
                         $9::bytea[], $10::jsonb[], $11::int[], $12::text[])
        AS new (id, tool_id, event_type, delivery_id, status, received_at, processed_at,
                headers, body, payload, attempt_count, ordering)
), keyed AS (
    INSERT INTO event_keys (tool_id, delivery_id, event_id)
    SELECT tool_id, delivery_id, id FROM new
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
INSERT INTO events (id, tool_id, event_type, delivery_id, status, received_at, processed_at,
                    headers, body, payload, attempt_count, ordering)
SELECT new.* FROM new JOIN keyed ON keyed.event_id = new.id
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


_INSERT_ATTEMPTS_UNNEST = """
INSERT INTO event_attempts (event_id, attempt, started_at, duration_ms, outcome, error_class,
                            error, http_status, destination_id)
SELECT * FROM unnest($1::varchar[], $2::int[], $3::timestamptz[], $4::float8[], $5::varchar[],
                     $6::varchar[], $7::text[], $8::int[], $9::varchar[])
"""


async def insert_attempts(conn: AsyncConnection, records: Sequence[AttemptRecord]) -> None:
    """Add processing attempts (on PostgreSQL one array per column, as :func:`insert_events`)."""
    if not records:
        return
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(_INSERT_ATTEMPTS_UNNEST, columns_of(records))
    else:
        await conn.execute(attempts.insert(), as_rows(records, _ATTEMPT_COLUMNS))


async def event_states(conn: AsyncConnection, event_ids: Sequence[str]) -> dict[str, EventState]:
    """The state of each of ``event_ids`` that exists, with its deliveries, by id."""
    if not event_ids:
        return {}
    query = select(events.c.id, events.c.status, events.c.attempt_count).where(
        events.c.id.in_(list(event_ids))
    )
    rows = list(await conn.execute(query))
    states = await delivery_states(conn, [row.id for row in rows])
    return {
        row.id: EventState(EventStatus(row.status), int(row.attempt_count), states.get(row.id, {}))
        for row in rows
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
    """The read side: events with their attempts, as :class:`EventRow`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self,
        where: EventFilter,
        limit: int = 50,
        after: str | None = None,
        *,
        oldest_first: bool = False,
    ) -> Page[EventRow]:
        """A page of events, newest first (or oldest first), starting after the event id
        ``after``."""
        limit = max(1, min(limit, MAX_PAGE))
        order = events.c.id.asc() if oldest_first else events.c.id.desc()
        query = where.apply(select(events)).order_by(order).limit(limit + 1)
        if after:
            query = query.where(events.c.id > after if oldest_first else events.c.id < after)
        async with self._db.connect() as conn:
            rows = list((await conn.execute(query)).mappings())
            more = len(rows) > limit
            rows = rows[:limit]
            ids = [row["id"] for row in rows]
            by_event = await _attempts_of(conn, ids)
            sent = await deliveries_of(conn, ids)
        items = [
            _event_row(row, by_event.get(row["id"], ()), sent.get(row["id"], ())) for row in rows
        ]
        return Page(items, items[-1].id if more else None)

    async def batches(
        self, where: EventFilter, size: int = MAX_PAGE
    ) -> AsyncGenerator[Sequence[EventRow], None]:
        """Every event matching ``where``, oldest first, ``size`` at a time (an export): only
        one batch is in memory, and each is read in a short transaction of its own, so a long
        export holds no lock between batches that would keep the retention sweep waiting."""
        after: str | None = None
        while True:
            page = await self.list(where, size, after, oldest_first=True)
            if page.items:
                yield page.items
            if page.after is None:
                return
            after = page.after

    async def get(self, event_id: str) -> EventRow:
        """The event with its attempts; NotFoundError when there is none."""
        async with self._db.connect() as conn:
            query = select(events).where(events.c.id == event_id)
            row = (await conn.execute(query)).mappings().first()
            if row is None:
                raise NotFoundError(f"no event {event_id!r}")
            by_event = await _attempts_of(conn, [event_id])
            sent = await deliveries_of(conn, [event_id])
        return _event_row(row, by_event.get(event_id, ()), sent.get(event_id, ()))

    async def count(self, where: EventFilter | None = None) -> int:
        """How many events match ``where`` (all of them without it)."""
        query = select(func.count()).select_from(events)
        if where is not None:
            query = where.apply(query)
        async with self._db.connect() as conn:
            return int(await conn.scalar(query) or 0)


async def _attempts_of(
    conn: AsyncConnection, event_ids: list[str]
) -> dict[str, tuple[AttemptRow, ...]]:
    if not event_ids:
        return {}
    query = (
        select(attempts)
        .where(attempts.c.event_id.in_(event_ids))
        .order_by(attempts.c.event_id, attempts.c.attempt)
    )
    grouped: dict[str, list[AttemptRow]] = {}
    for row in (await conn.execute(query)).mappings():
        grouped.setdefault(row["event_id"], []).append(
            AttemptRow(
                attempt=row["attempt"],
                started_at=utc(row["started_at"]),
                duration_ms=row["duration_ms"],
                outcome=row["outcome"],
                error_class=row["error_class"],
                error=row["error"],
                http_status=row["http_status"],
                destination_id=row["destination_id"],
            )
        )
    return {event_id: tuple(rows) for event_id, rows in grouped.items()}


def _event_row(
    row: RowMapping, attempt_rows: tuple[AttemptRow, ...], delivery_rows: tuple[DeliveryRow, ...]
) -> EventRow:
    return EventRow(
        id=row["id"],
        tool_id=row["tool_id"],
        event_type=row["event_type"],
        delivery_id=row["delivery_id"],
        status=EventStatus(row["status"]),
        received_at=utc(row["received_at"]),
        processed_at=utc_or_none(row["processed_at"]),
        headers=row["headers"],
        body=bytes(row["body"]),
        payload=row["payload"],
        attempt_count=row["attempt_count"],
        attempts=attempt_rows,
        deliveries=delivery_rows,
    )
