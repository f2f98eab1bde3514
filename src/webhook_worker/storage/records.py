"""What the worker hands storage to write, and the state it reads back: one immutable record per
row, its fields named and ordered as its table's columns.

The records are the seam between the worker (which decides) and the write functions in
:mod:`~webhook_worker.storage.events` and :mod:`~webhook_worker.storage.deadletters` (which
only write). They are converted to the driver's parameters at that boundary, once per write:
column arrays for the PostgreSQL ``UNNEST`` insert (one ``zip``), dicts for executemany.

Row records are typed named tuples rather than frozen dataclasses because the worker builds
two or three per event on its hot path: a named tuple is built several times faster than a
frozen dataclass (whose ``__init__`` sets each field through ``object.__setattr__``), costs
little more than the dict it replaces, and is already the column-ordered tuple the database
wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from webhook_worker.vocabulary import AttemptOutcome, DeadLetterStatus, DeliveryStatus, EventStatus


class EventRecord(NamedTuple):
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
    ordering: str | None = None
    """The message's ordering positions as JSON text (``queue.positions.encode_ordering``),
    None when no destination orders the event: kept so that a replay, or a paused delivery
    sent again, keeps its place in the order."""


class OutcomeRecord(NamedTuple):
    """An existing event's new outcome, after an attempt."""

    event_id: str
    status: EventStatus
    processed_at: datetime | None
    attempt_count: int
    payload: Any


class AttemptRecord(NamedTuple):
    """A row of ``event_attempts``: one processing attempt."""

    event_id: str
    attempt: int
    started_at: datetime
    duration_ms: float
    outcome: AttemptOutcome
    error_class: str | None
    error: str | None
    http_status: int | None
    destination_id: str | None = None
    """The destination delivered to; None for what happened to the event itself."""


class DeliveryRecord(NamedTuple):
    """A destination's delivery of an event (``event_deliveries``), new or changed."""

    event_id: str
    destination_id: str
    tool_id: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    updated_at: datetime


class DeadLetterRecord(NamedTuple):
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
    destination_id: str = ""
    """The destination whose delivery failed; '' when the event itself failed."""


@dataclass(frozen=True, slots=True)
class EventState:
    """What the worker needs to know of an event already stored (a redelivery or a retry)."""

    status: EventStatus
    attempt_count: int
    deliveries: Mapping[str, DeliveryState]
    """Its deliveries so far, by destination id."""


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """What the worker needs to know of a delivery already recorded."""

    status: DeliveryStatus
    attempt_count: int


def as_rows(records: Iterable[NamedTuple], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """``records`` as executemany parameters: one dict per record, keyed by ``columns`` (the
    record type's ``_fields``)."""
    return [dict(zip(columns, record, strict=False)) for record in records]


def columns_of(records: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Records (named tuples in a statement's column order) as one list per column: the
    parameters of a PostgreSQL ``unnest`` statement, encoded by the driver a column at a time."""
    return tuple(list(column) for column in zip(*records, strict=True))
