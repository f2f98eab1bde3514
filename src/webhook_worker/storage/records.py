"""What the worker hands storage to write, and the state it reads back: one frozen record per
row, named by its table's columns.

The records are the seam between the worker (which decides) and the write functions in
:mod:`~webhook_worker.storage.events` and :mod:`~webhook_worker.storage.deadletters` (which
only write). They are converted to the driver's parameters at that boundary, once per write:
column arrays for the PostgreSQL ``UNNEST`` insert, dicts for executemany everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson

from webhook_worker.vocabulary import AttemptOutcome, DeadLetterStatus, EventStatus


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A new row of ``events``."""

    id: str
    tool_id: str
    event_type: str | None
    delivery_id: str
    status: EventStatus
    received_at: datetime
    processed_at: datetime | None
    headers: orjson.Fragment | Mapping[str, str]
    """The worker passes the JSON the API stored in the message as an ``orjson.Fragment``,
    written as it is (never parsed and encoded again)."""
    body: bytes
    payload: Any
    """The stored JSON when it differs from the body (a transform ran), else None."""
    attempt_count: int


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """An existing event's new outcome, after an attempt."""

    event_id: str
    status: EventStatus
    processed_at: datetime | None
    attempt_count: int
    payload: Any


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A row of ``event_attempts``: one processing attempt."""

    event_id: str
    attempt: int
    started_at: datetime
    duration_ms: float
    outcome: AttemptOutcome
    error_class: str | None
    error: str | None
    http_status: int | None


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A new dead letter, or the new error of an event's existing one."""

    id: str
    event_id: str
    tool_id: str
    event_type: str | None
    error: str
    error_class: str
    retryable: bool
    retry_count: int
    status: DeadLetterStatus
    created_at: datetime
    updated_at: datetime
    next_retry_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventState:
    """What the worker needs to know of an event already stored (a redelivery or a retry)."""

    status: EventStatus
    attempt_count: int


def columns_of(record_type: type[Any]) -> tuple[str, ...]:
    """The column names a record type carries, in declaration order."""
    return tuple(f.name for f in fields(record_type))


def as_rows(records: Iterable[Any], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """``records`` as executemany parameters: one dict per record, keyed by column name."""
    values = attrgetter(*columns)
    return [dict(zip(columns, values(record), strict=True)) for record in records]
