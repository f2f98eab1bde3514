"""``webhook_destination_backlog`` on SQLite and PostgreSQL: deliveries not final yet, per
destination, refreshed with the other state gauges; back to 0 when a backlog empties; an outage
leaves the last value and is logged once."""

from __future__ import annotations

import logging
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.storage.support import BASE_TIME, event_id, event_record, seed
from tests.support import free_port
from webhook_worker.observability.health import Gauges
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.deliveries import upsert_deliveries
from webhook_worker.storage.records import DeliveryRecord
from webhook_worker.vocabulary import DeliveryStatus


def backlog(tool_id: str, destination_id: str) -> float | None:
    """The gauge's value for one destination, as /metrics would serve it (None: no series)."""
    labels = {"tool_id": tool_id, "destination_id": destination_id}
    return REGISTRY.get_sample_value("webhook_destination_backlog", labels)


def delivery(
    index: int, tool_id: str, destination_id: str, status: DeliveryStatus
) -> DeliveryRecord:
    return DeliveryRecord(
        event_id=event_id(index),
        destination_id=destination_id,
        tool_id=tool_id,
        status=status,
        attempt_count=0 if status is DeliveryStatus.PENDING else 1,
        next_attempt_at=None,
        updated_at=BASE_TIME,
    )


async def record(db: Database, deliveries: list[DeliveryRecord]) -> None:
    async with db.begin() as conn:
        await upsert_deliveries(conn, deliveries)


def gauges(db: Database) -> Gauges:
    return Gauges(db, DatabaseQueue(db, "c", 3600, 30))


@pytest.fixture
def tool() -> str:
    """A tool id no other test uses: the registry is shared by the whole test process."""
    return f"b{uuid.uuid4().hex[:8]}"


async def test_counts_pending_retrying_and_paused_per_destination(db: Database, tool: str) -> None:
    other = f"{tool}-other"
    await seed(db, [event_record(i, tool_id=tool) for i in range(7)])
    await record(
        db,
        [
            delivery(0, tool, "billing", DeliveryStatus.PENDING),
            delivery(1, tool, "billing", DeliveryStatus.RETRYING),
            delivery(2, tool, "billing", DeliveryStatus.PAUSED),
            delivery(3, tool, "billing", DeliveryStatus.DELIVERED),
            delivery(4, tool, "billing", DeliveryStatus.DEAD),
            delivery(5, tool, "billing", DeliveryStatus.IGNORED),
            delivery(0, tool, "audit", DeliveryStatus.RETRYING),
            delivery(1, tool, "audit", DeliveryStatus.DELIVERED),
            delivery(6, other, "billing", DeliveryStatus.PENDING),
        ],
    )
    await gauges(db).refresh()
    assert backlog(tool, "billing") == 3
    assert backlog(tool, "audit") == 1
    assert backlog(other, "billing") == 1
    assert backlog(tool, "nowhere") is None


async def test_an_emptied_backlog_reads_zero(db: Database, tool: str) -> None:
    await seed(db, [event_record(i, tool_id=tool) for i in range(3)])
    await record(
        db,
        [
            delivery(0, tool, "billing", DeliveryStatus.RETRYING),
            delivery(1, tool, "billing", DeliveryStatus.PENDING),
            delivery(2, tool, "audit", DeliveryStatus.PAUSED),
        ],
    )
    refreshing = gauges(db)
    await refreshing.refresh()
    assert (backlog(tool, "billing"), backlog(tool, "audit")) == (2, 1)

    await record(
        db,
        [
            delivery(0, tool, "billing", DeliveryStatus.DELIVERED),
            delivery(1, tool, "billing", DeliveryStatus.DEAD),
            delivery(2, tool, "audit", DeliveryStatus.PENDING),
        ],
    )
    await refreshing.refresh()
    assert (backlog(tool, "billing"), backlog(tool, "audit")) == (0, 1)
    # The process's other Gauges (the API's and the worker's /metrics) agree.
    await gauges(db).refresh()
    assert (backlog(tool, "billing"), backlog(tool, "audit")) == (0, 1)


async def test_a_failing_read_keeps_the_last_value_and_is_logged_once(
    sqlite_db: Database, tool: str, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(sqlite_db, [event_record(0, tool_id=tool)])
    await record(sqlite_db, [delivery(0, tool, "billing", DeliveryStatus.RETRYING)])
    refreshing = gauges(sqlite_db)
    await refreshing.refresh()
    assert backlog(tool, "billing") == 1

    # The table out of reach: every query on it fails until it is back.
    async with sqlite_db.begin() as conn:
        await conn.execute(text("ALTER TABLE event_deliveries RENAME TO away"))
    with caplog.at_level(logging.INFO, logger="webhook_worker.observability.health"):
        await refreshing.refresh()
        await refreshing.refresh()
        assert backlog(tool, "billing") == 1
        async with sqlite_db.begin() as conn:
            await conn.execute(text("ALTER TABLE away RENAME TO event_deliveries"))
            await upsert_deliveries(conn, [delivery(0, tool, "billing", DeliveryStatus.DEAD)])
        await refreshing.refresh()
        await refreshing.refresh()
    assert backlog(tool, "billing") == 0
    messages = [r.getMessage() for r in caplog.records if "destination backlog" in r.getMessage()]
    assert messages == [
        "/metrics: cannot read the destination backlog, keeping its last value: the database is "
        "unavailable: (sqlite3.OperationalError) no such table: event_deliveries",
        "/metrics: the destination backlog can be read again",
    ]


async def test_an_unreachable_database_is_a_warning_and_the_rest_still_refresh(
    sqlite_db: Database, tool: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = Database.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    try:
        refreshing = Gauges(dead, DatabaseQueue(sqlite_db, "c", 3600, 30))
        with caplog.at_level(logging.WARNING, logger="webhook_worker.observability.health"):
            await refreshing.refresh()
            await refreshing.refresh()
    finally:
        await dead.close()
    warnings = [r.getMessage() for r in caplog.records]
    backlog_warnings = [m for m in warnings if "destination backlog" in m]
    assert len(backlog_warnings) == 1, warnings
    assert "the database is unavailable" in backlog_warnings[0]
    assert not any("queue depth" in m for m in warnings)  # the queue (SQLite) answered
    assert REGISTRY.get_sample_value("webhook_queue_depth") == 0
