"""Upgrading a database the previous release wrote (commit d57eecc, before destinations):
``webhook-worker migrate`` keeps every event, attempt, dead letter and queued message, gives
each forward's history to the destination ``default``, and this release then finishes what was
in flight. The data was written by that release's own code (fixtures/make_previous_release_data.py
says how and what each delivery id stands for)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tests.conftest import POSTGRES_URL, RUN_ID, SECRETS_KEY
from tests.support import Target, eventually, running_service, serving, target_server
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage import migrate
from webhook_worker.storage.database import Database

FIXTURES = Path(__file__).with_name("fixtures")
FORWARDING_TOOLS = ("relay", "slow")

# The `default` delivery each event must have after the upgrade: (status, attempt_count).
# Events without a forward attempt (archive-*, broken-1: its transform failed, noise-1: filtered
# out, interrupted-1: its forward was under way) have none.
DELIVERIES = {
    **{f"ok-{n}": ("delivered", 1) for n in range(1, 7)},
    "flaky-1": ("delivered", 2),
    "flaky-2": ("delivered", 2),
    "dead-1": ("dead", 3),
    "dead-2": ("dead", 3),
    "dead-3": ("retrying", 3),  # its dead letter was being retried
    "rejected-1": ("dead", 1),
    "resolved-1": ("delivered", 4),
    "discarded-1": ("dead", 3),
    "retrying-1": ("retrying", 1),
}
STATUSES = {
    **{f"archive-{n}": "processed" for n in range(1, 5)},
    **{f"ok-{n}": "processed" for n in range(1, 7)},
    "flaky-1": "processed",
    "flaky-2": "processed",
    "dead-1": "dead",
    "dead-2": "dead",
    "dead-3": "retrying",
    "rejected-1": "dead",
    "broken-1": "dead",
    "noise-1": "ignored",
    "resolved-1": "processed",
    "discarded-1": "dead",
    "retrying-1": "retrying",
    "interrupted-1": "pending",
}
# What the previous release's tables held, column by column (0001's columns only).
SNAPSHOT = {
    "events": "id tool_id event_type delivery_id status received_at processed_at headers body "
    "payload attempt_count",
    "event_attempts": "id event_id attempt started_at duration_ms outcome error_class error "
    "http_status",
    "dead_letters": "id event_id tool_id event_type error error_class retryable retry_count "
    "status created_at updated_at last_retry_at next_retry_at",
    "queue_messages": "id event_id tool_id event_type delivery_id received_at headers body "
    "traceparent attempt retry_from available_at locked_by locked_until deliveries",
    "delivery_ids": "tool_id delivery_id event_id expires_at",
    "tools": "id provider enabled config created_at updated_at",
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def previous_release(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The DATABASE_URL of a fresh database holding the previous release's data, unmigrated."""
    if request.param == "sqlite":
        path = tmp_path / "previous.db"
        shutil.copyfile(FIXTURES / "previous_release.sqlite", path)
        yield f"sqlite:///{path}"
        return
    name = f"webhook_worker_test_{RUN_ID}_previous_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"
        loader = await asyncpg.connect(url)
        try:
            await loader.execute((FIXTURES / "previous_release.sql").read_text())
        finally:
            await loader.close()  # the dump empties search_path for its session
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secrets_key=SECRETS_KEY,
        tools_refresh_interval=0.1,
        worker_reclaim_idle=1.0,
        worker_consumer_name="test",
        allow_private_forward=True,  # the forward target is on loopback
        dlq_auto_retry_max=0,
    )


def database(database_url: str) -> Database:
    return Database.from_settings(settings(database_url))


def migrate_with_cli(database_url: str) -> str:
    """``webhook-worker migrate``, as an operator runs it; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "webhook_worker", "migrate"],
        env={"PATH": os.environ["PATH"], "DATABASE_URL": database_url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(sql))]


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of :data:`SNAPSHOT`'s tables and columns, in a fixed order."""
    taken = {}
    async with db.connect() as conn:
        for name, columns in SNAPSHOT.items():
            table = sa.table(name, *(sa.column(column) for column in columns.split()))
            query = sa.select(*table.c).order_by(*list(table.c)[:2])
            taken[name] = [tuple(row) for row in await conn.execute(query)]
    return taken


async def by_delivery(db: Database, sql: str) -> dict[str, list[tuple[Any, ...]]]:
    """``sql``'s rows (their first column a delivery id) grouped by delivery id."""
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for row in await rows(db, sql):
        grouped.setdefault(row[0], []).append(row[1:])
    return grouped


async def test_migrate_keeps_everything_and_gives_forwards_to_default(
    previous_release: str,
) -> None:
    db = database(previous_release)
    try:
        assert await migrate.current_revision(db) == "0001"
        before = await snapshot(db)
        assert len(before["events"]) == len(STATUSES)
        assert f"from 0001 to revision {migrate.head_revision()}" in migrate_with_cli(
            previous_release
        )
        # Statements this pool prepared are of the tables the migration replaced.
        await db.engine.dispose()
        assert await migrate.current_revision(db) == migrate.head_revision()
        assert await snapshot(db) == before  # nothing lost, nothing changed

        deliveries = await by_delivery(
            db,
            "SELECT e.delivery_id, d.destination_id, d.tool_id, d.status, d.attempt_count "
            "FROM event_deliveries d JOIN events e ON e.id = d.event_id",
        )
        assert deliveries == {
            delivery: [("default", "slow" if delivery == "retrying-1" else "relay", *expected)]
            for delivery, expected in DELIVERIES.items()
        }
        attempts = await by_delivery(
            db,
            "SELECT e.delivery_id, a.outcome, a.destination_id FROM event_attempts a "
            "JOIN events e ON e.id = a.event_id",
        )
        for delivery, made in attempts.items():
            expected = "default" if delivery in DELIVERIES else None
            assert {destination for _, destination in made} == {expected}, (delivery, made)
        assert attempts["broken-1"] == [("dead", None)]
        letters = await by_delivery(
            db,
            "SELECT e.delivery_id, l.destination_id, l.error_class, l.status FROM dead_letters l "
            "JOIN events e ON e.id = l.event_id",
        )
        assert letters == {
            "broken-1": [("", "transform_error", "pending")],
            "dead-1": [("default", "http_5xx", "pending")],
            "dead-2": [("default", "http_5xx", "pending")],
            "dead-3": [("default", "http_5xx", "retrying")],
            "rejected-1": [("default", "http_4xx", "pending")],
            "resolved-1": [("default", "http_5xx", "resolved")],
            "discarded-1": [("default", "http_5xx", "discarded")],
        }
        queued = await rows(
            db, "SELECT delivery_id, destination_id, available_at FROM queue_messages"
        )
        assert sorted((delivery, destination) for delivery, destination, _ in queued) == [
            ("dead-3", None),
            ("interrupted-1", None),
            ("queued-1", None),
            ("queued-2", None),
            ("retrying-1", None),
        ]
        due = {delivery: available_at for delivery, _, available_at in queued}
    finally:
        await db.close()

    async with (
        open_runtime(settings(previous_release)) as runtime,
        serving(runtime) as client,
    ):
        listing = (await client.get("/api/v1/events", params={"limit": 100})).json()["items"]
        events = {event["delivery_id"]: event for event in listing}
        assert {delivery: event["status"] for delivery, event in events.items()} == STATUSES
        for delivery, event in events.items():
            shown = (await client.get(f"/api/v1/events/{event['id']}")).json()
            if delivery not in DELIVERIES:
                assert shown["deliveries"] == [], delivery
                continue
            [default] = shown["deliveries"]
            assert default["destination_id"] == "default"
            assert (default["status"], default["attempt_count"]) == DELIVERIES[delivery]
            assert default["attempts"] == shown["attempts"]
            # Only a retrying delivery has a next attempt: when its queued message falls due.
            if default["status"] == "retrying":
                next_attempt = datetime.fromisoformat(default["next_attempt_at"])
                assert abs(next_attempt.timestamp() - due[delivery]) < 0.001
            else:
                assert default["next_attempt_at"] is None, delivery
        flaky = (await client.get(f"/api/v1/events/{events['flaky-1']['id']}")).json()
        assert [(a["outcome"], a["http_status"]) for a in flaky["deliveries"][0]["attempts"]] == [
            ("failed", 500),
            ("forwarded", 200),
        ]
        letters_shown = (await client.get("/api/v1/dlq", params={"limit": 100})).json()["items"]
        destinations = {letter["event_id"]: letter["destination_id"] for letter in letters_shown}
        assert destinations.pop(events["broken-1"]["id"]) is None
        assert set(destinations.values()) == {"default"}
        assert len(destinations) == 6


async def test_the_new_release_finishes_what_was_in_flight(previous_release: str) -> None:
    migrate_with_cli(previous_release)
    async with target_server() as target:
        async with open_runtime(settings(previous_release)) as runtime:
            for tool_id in FORWARDING_TOOLS:
                await runtime.tool_service.patch(tool_id, {"forward": {"url": target.url}})
        db = database(previous_release)
        try:
            # The hour `slow` waits between attempts has passed.
            async with db.begin() as conn:
                await conn.execute(
                    text("UPDATE queue_messages SET available_at = :now WHERE tool_id = 'slow'"),
                    {"now": time.time()},
                )
        finally:
            await db.close()

        async with running_service(settings(previous_release)) as service:
            ids = {
                event["delivery_id"]: event["id"]
                for event in (await service.client.get("/api/v1/events?limit=100")).json()["items"]
            }
            retried = await service.settled(ids["retrying-1"], "processed")
            [default] = retried["deliveries"]
            assert (default["destination_id"], default["status"]) == ("default", "delivered")
            assert [(a["outcome"], a["destination_id"]) for a in default["attempts"]] == [
                ("failed", "default"),
                ("forwarded", "default"),
            ]
            assert default["attempt_count"] == 2

            # Stopped with its forward under way: sent again once the old lease ran out.
            interrupted = await service.settled(ids["interrupted-1"], "processed")
            assert [(d["destination_id"], d["status"]) for d in interrupted["deliveries"]] == [
                ("default", "delivered")
            ]

            # Its dead letter was sent back before the upgrade: delivered and resolved now.
            sent_back = await service.settled(ids["dead-3"], "processed")
            [default] = sent_back["deliveries"]
            assert (default["status"], default["attempt_count"]) == ("delivered", 4)
            await resolved(service.client, ids["dead-3"])

            # Accepted by the previous release, never stored by it: stored and delivered now.
            queued = await queued_events(service.client, "queued-1", "queued-2")
            relayed = await service.settled(queued["queued-1"], "processed")
            assert [(d["destination_id"], d["status"]) for d in relayed["deliveries"]] == [
                ("default", "delivered")
            ]
            archived = await service.settled(queued["queued-2"], "processed")
            assert archived["deliveries"] == []

            letter = await letter_of(service.client, ids["dead-1"])
            response = await service.client.post(f"/api/v1/dlq/{letter['id']}/retry")
            assert response.status_code == 202, response.text
            await resolved(service.client, ids["dead-1"])
            revived = await service.settled(ids["dead-1"], "processed")
            [default] = revived["deliveries"]
            assert (default["status"], default["attempt_count"]) == ("delivered", 4)

            # Only what was still owed went out: nothing delivered before was sent again.
            assert sorted(sent_deliveries(target)) == [
                "dead-1",
                "dead-3",
                "interrupted-1",
                "queued-1",
                "retrying-1",
            ]


async def queued_events(client: httpx.AsyncClient, *deliveries: str) -> dict[str, str]:
    """The event ids of ``deliveries`` once they are stored."""

    async def stored() -> dict[str, str] | None:
        listing = (await client.get("/api/v1/events?limit=100")).json()["items"]
        found = {e["delivery_id"]: e["id"] for e in listing if e["delivery_id"] in deliveries}
        return found if len(found) == len(deliveries) else None

    return await eventually(stored, within=15, what=f"{deliveries} to be stored")


async def letter_of(client: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    """The one dead letter of ``event_id``."""
    listing: list[dict[str, Any]] = (await client.get("/api/v1/dlq", params={"limit": 100})).json()[
        "items"
    ]
    [letter] = [item for item in listing if item["event_id"] == event_id]
    return letter


async def resolved(client: httpx.AsyncClient, event_id: str) -> None:
    """Wait for the dead letter of ``event_id`` to be resolved."""

    async def check() -> bool:
        return bool((await letter_of(client, event_id))["status"] == "resolved")

    await eventually(check, within=15, what=f"the dead letter of {event_id} to resolve")


def sent_deliveries(target: Target) -> list[str]:
    return [orjson.loads(request.body)["delivery"] for request in target.requests]


async def test_downgrade_gives_the_previous_data_back_and_says_what_it_drops(
    previous_release: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = database(previous_release)
    try:
        before = await snapshot(db)
        migrate_with_cli(previous_release)
        await db.engine.dispose()  # as above: its statements are of the replaced tables
        # A second destination's dead letter, which the previous release has no place for.
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO dead_letters (id, event_id, tool_id, event_type, error, "
                    "error_class, retryable, retry_count, status, created_at, updated_at, "
                    "destination_id) SELECT 'billing-letter', event_id, tool_id, event_type, "
                    "error, error_class, retryable, retry_count, status, created_at, updated_at, "
                    "'billing' FROM dead_letters WHERE destination_id = 'default' "
                    "AND status = 'discarded'"
                )
            )
            await conn.run_sync(downgrade_to_0001)
        assert await migrate.current_revision(db) == "0001"
        assert await snapshot(db) == before
        assert "downgrade to 0001 deletes 1 dead letters of other destinations" in caplog.text
    finally:
        await db.close()


def downgrade_to_0001(conn: Connection) -> None:
    config = migrate.alembic_config()
    config.attributes["connection"] = conn
    command.downgrade(config, "0001")
