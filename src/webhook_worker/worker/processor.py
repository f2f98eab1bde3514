"""What happens to a batch of events: today ``store_only`` (insert, one transaction per batch).

Exactly once into the events table: the insert skips an event id or a (tool, delivery id) it
already holds, so a redelivered message never creates a second row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook_worker.constants import STATUS_DEAD, STATUS_PROCESSED
from webhook_worker.ids import new_id
from webhook_worker.observability import metrics
from webhook_worker.queue.base import Delivery, Message
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import insert_dead_letters
from webhook_worker.storage.events import insert_attempts, insert_events


class Processor:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def store(self, deliveries: Sequence[Delivery]) -> int:
        """Store the batch in one transaction. Returns how many events were new."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        rows = [_event_row(d.message, STATUS_PROCESSED, now) for d in deliveries]
        async with self._db.begin() as conn:
            inserted = await insert_events(conn, rows)
            await insert_attempts(
                conn, [_attempt_row(event_id, now, started, "stored") for event_id in inserted]
            )
        elapsed = time.perf_counter() - started
        for delivery in deliveries:
            message = delivery.message
            if message.event_id in inserted:
                labels = (message.event_type or "", message.tool_id, STATUS_PROCESSED)
                metrics.EVENTS_PROCESSED.labels(*labels).inc()
                metrics.PROCESSING_DURATION.labels(*labels).observe(elapsed)
        return len(inserted)

    async def dead_letter(
        self, deliveries: Sequence[Delivery], error_class: str, error: str
    ) -> None:
        """Store each event with status ``dead`` and a dead letter explaining why."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        rows = [_event_row(d.message, STATUS_DEAD, now) for d in deliveries]
        letters = [
            {
                "id": new_id(),
                "event_id": d.message.event_id,
                "tool_id": d.message.tool_id,
                "event_type": d.message.event_type,
                "error": error,
                "error_class": error_class,
                "retryable": False,
                "retry_count": 0,
                "status": "pending",
                "created_at": now,
                "updated_at": now,
            }
            for d in deliveries
        ]
        async with self._db.begin() as conn:
            inserted = await insert_events(conn, rows)
            await insert_attempts(
                conn,
                [_attempt_row(i, now, started, "dead", error_class, error) for i in inserted],
            )
            await insert_dead_letters(conn, [row for row in letters if row["event_id"] in inserted])
        for delivery in deliveries:
            if delivery.message.event_id in inserted:
                message = delivery.message
                metrics.EVENTS_PROCESSED.labels(
                    message.event_type or "", message.tool_id, STATUS_DEAD
                ).inc()


def _event_row(message: Message, status: str, now: datetime) -> dict[str, Any]:
    return {
        "id": message.event_id,
        "tool_id": message.tool_id,
        "event_type": message.event_type,
        "delivery_id": message.delivery_id,
        "status": status,
        "received_at": datetime.fromtimestamp(message.received_at, UTC),
        "processed_at": now,
        "headers": orjson.loads(message.headers),
        "body": message.body,
        "payload": None,
        "attempt_count": 1,
    }


def _attempt_row(
    event_id: str,
    now: datetime,
    started: float,
    outcome: str,
    error_class: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "attempt": 1,
        "started_at": now,
        "duration_ms": (time.perf_counter() - started) * 1000,
        "outcome": outcome,
        "error_class": error_class,
        "error": error,
        "http_status": None,
    }
