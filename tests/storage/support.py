"""Rows written straight into the tables, so the read side is tested on data it did not write."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from webhook_worker.storage.database import Database
from webhook_worker.storage.partitions import id_bound
from webhook_worker.storage.schema import attempts, dead_letters, events

BASE_TIME = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def event_id(index: int) -> str:
    """The id of event ``index``: a UUIDv7 made when it was received (BASE_TIME + ``index``
    minutes, as ingest makes them), so ids sort by ``index`` and time filters find them."""
    made = id_bound((BASE_TIME + timedelta(minutes=index)).timestamp())
    return f"{made[:13]}-7000-8000-{index:012d}"


def letter_id(index: int) -> str:
    return f"01900000-0000-7000-9000-{index:012d}"


def event_record(index: int, **fields: Any) -> dict[str, Any]:
    received = BASE_TIME + timedelta(minutes=index)
    record = {
        "id": event_id(index),
        "tool_id": "demo",
        "event_type": "push",
        "delivery_id": f"delivery-{index}",
        "status": "dead",
        "received_at": received,
        "processed_at": received + timedelta(seconds=1),
        "headers": {"content-type": "application/json", "x-event": "push"},
        "body": json.dumps({"n": index}).encode(),
        "payload": None,
        "attempt_count": 1,
    }
    record.update(fields)
    return record


def letter_record(index: int, **fields: Any) -> dict[str, Any]:
    """The dead letter of event ``index``."""
    created = BASE_TIME + timedelta(minutes=index, seconds=2)
    record = {
        "id": letter_id(index),
        "event_id": event_id(index),
        "tool_id": "demo",
        "event_type": "push",
        "error": "forward answered 400",
        "error_class": "http_4xx",
        "retryable": False,
        "retry_count": 0,
        "status": "pending",
        "created_at": created,
        "updated_at": created,
        "last_retry_at": None,
        "next_retry_at": None,
    }
    record.update(fields)
    return record


async def seed(
    db: Database,
    event_records: list[dict[str, Any]],
    attempt_records: list[dict[str, Any]] | None = None,
    letter_records: list[dict[str, Any]] | None = None,
) -> None:
    async with db.begin() as conn:
        await conn.execute(events.insert(), event_records)
        if attempt_records:
            await conn.execute(attempts.insert(), attempt_records)
        if letter_records:
            await conn.execute(dead_letters.insert(), letter_records)
