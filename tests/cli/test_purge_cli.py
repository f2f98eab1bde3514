"""``webhook-worker events purge`` as a subprocess: against a real ``webhook-worker run`` on an
embedded SQLite file, and against PostgreSQL with Redis Streams (the events and delivery ids
written as the service writes them)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from tests.cli.running import Service, running_service
from tests.cli.test_cli import Cli, clean_env, one_line_error
from tests.conftest import REDIS_URL
from tests.queue.support import message
from webhook_worker.cli import app
from webhook_worker.queue.redis_streams import RedisStreamsQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventFilter, EventStore, insert_events
from webhook_worker.storage.records import EventRecord
from webhook_worker.vocabulary import EventStatus


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("purge")) as running:
        yield running


def add_tool(service: Service, tool_id: str) -> None:
    service.create_tool(
        {"id": tool_id, "auth": {"type": "none"}, "delivery_id": {"header": "X-Delivery"}}
    )


def send(service: Service, tool_id: str, delivery_id: str) -> dict[str, Any]:
    response = service.http.post(
        f"/webhooks/{tool_id}", json={"delivery": delivery_id}, headers={"X-Delivery": delivery_id}
    )
    assert response.status_code in (200, 202), response.text
    answer: dict[str, Any] = response.json()
    return answer


def stored(service: Service, tool_id: str, delivery_id: str) -> str:
    """The id of the event a new delivery id made, once it is processed."""
    answer = send(service, tool_id, delivery_id)
    assert answer["status"] == "accepted"
    event_id = str(answer["event_id"])
    service.settled(event_id, "processed")
    return event_id


def test_purge_counts_asks_then_erases_the_delivery(service: Service) -> None:
    cli = service.cli
    add_tool(service, "erase")
    first = stored(service, "erase", "gdpr")
    kept = stored(service, "erase", "keep")

    refused = cli("events", "purge", "--tool", "erase", "--delivery-id", "gdpr")  # no TTY
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert "--yes" in line and "1 event" in line
    assert service.event(first)["id"] == first

    dry = cli.ok("events", "purge", "--tool", "erase", "--delivery-id", "gdpr", "--dry-run")
    assert dry.startswith("would delete 1 event (tool erase, delivery id gdpr")
    assert "nothing changed" in dry
    assert service.event(first)["id"] == first

    done = cli.ok("events", "purge", "--tool", "erase", "--delivery-id", "gdpr", "--yes")
    assert done.strip().splitlines()[-1] == "deleted 1 event"
    assert service.event(first) == {}
    assert service.event(kept)["id"] == kept

    again = stored(service, "erase", "gdpr")  # accepted as new, stored again
    assert again != first
    assert send(service, "erase", "keep") == {"event_id": kept, "status": "duplicate"}

    nothing = cli.ok("events", "purge", "--tool", "erase", "--delivery-id", "absent", "--yes")
    assert nothing.strip() == "deleted 0 events: none match (tool erase, delivery id absent)"


def answering(cli: Cli, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal on stdin, answering its question with ``answer``."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", *args],
            env=cli.env,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        terminal = -1
        os.write(controller, answer.encode() + b"\n")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_on_a_terminal_the_purge_asks_first(service: Service) -> None:
    add_tool(service, "asked")
    event_ids = [stored(service, "asked", f"asked-{n}") for n in range(2)]

    declined = answering(service.cli, "n", "events", "purge", "--tool", "asked")
    assert declined.returncode == 1
    assert "Delete 2 events (tool asked)? This cannot be undone." in declined.stdout
    assert all(service.event(event_id) for event_id in event_ids)

    agreed = answering(service.cli, "y", "events", "purge", "--tool", "asked")
    assert agreed.returncode == 0, agreed.stderr
    assert agreed.stdout.strip().endswith("? This cannot be undone. [y/N]: deleted 2 events")
    assert not any(service.event(event_id) for event_id in event_ids)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["events", "purge"], "say what to purge"),
        (["events", "purge", "--yes", "--dry-run"], "say what to purge"),
        (["events", "purge", "--status", "gone"], "--status"),
        (["events", "purge", "--until", "yesterday"], "--until"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], text: str) -> None:
    # Refused before any settings or database are read, so in-process is faithful (and quick).
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def record(index: int, tool_id: str, delivery_id: str) -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        id=f"01900000-0000-7000-8000-{index:012d}",
        tool_id=tool_id,
        event_type="push",
        delivery_id=delivery_id,
        status=EventStatus.PROCESSED,
        received_at=now,
        processed_at=now,
        headers={},
        body=b'{"secret": "personal data"}',
        payload=None,
        attempt_count=1,
    )


async def test_purge_on_postgresql_forgets_the_delivery_ids_in_redis(
    postgres_db: Database,
    postgres_server_url: str,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    records = [record(n, "pg", f"pg-{n}") for n in range(3)] + [record(9, "pg-other", "pg-0")]
    async with postgres_db.begin() as conn:
        await insert_events(conn, records)
    queue = RedisStreamsQueue(redis_client, redis_prefix, "test", 3600, 60)
    await queue.setup()
    await queue.enqueue([message(r.delivery_id, tool_id=r.tool_id) for r in records])
    keys = [queue.keys.dedupe(r.tool_id, r.delivery_id) for r in records]
    assert await redis_client.exists(*keys) == 4

    cli = Cli(
        clean_env(
            DATABASE_URL=postgres_server_url,
            REDIS_ADDR=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
            REDIS_KEY_PREFIX=redis_prefix,
        )
    )
    dry = cli.ok("events", "purge", "--tool", "pg", "--dry-run")
    assert dry.startswith("would delete 3 events (tool pg)")
    done = cli.ok("events", "purge", "--tool", "pg", "--yes")
    assert done.strip().splitlines()[-1] == "deleted 3 events"

    remaining = await EventStore(postgres_db).list(EventFilter())
    assert [item.tool_id for item in remaining.items] == ["pg-other"]
    assert [bool(await redis_client.exists(key)) for key in keys] == [False] * 3 + [True]
