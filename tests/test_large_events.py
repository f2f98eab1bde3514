"""benchmarks/large_events.py and large_events_measure.py at a small size: the rows they make
are what ingest would have made (UUIDv7 ids of the received time, one event key each, nothing
in the DEFAULT partitions), and the measurement runs against them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import RUN_ID, _admin, _postgres_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.bench, pytest.mark.timeout(300)]


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"webhook_worker_test_{RUN_ID}_large"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    yield f"{_postgres_server()}/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


def test_loads_events_as_ingest_makes_them_and_measures_them(empty_database: str) -> None:
    out = _run("large_events.py", "--database-url", empty_database, "--events", "20000",
               "--chunk", "7000")  # fmt: skip
    assert "loaded 20,000 events" in out
    assert "bodies with the rare token: 2" in out  # 1 in 10,000
    rows = asyncio.run(_fetch(empty_database, "SELECT id, received_at, tool_id, body FROM events"))
    assert len(rows) == 20_000
    for row in rows[:500]:
        made = uuid.UUID(row["id"])
        assert made.version == 7 and str(made) == row["id"]
        millis = int(row["id"].replace("-", "")[:12], 16)
        assert abs(millis - row["received_at"].astimezone(UTC).timestamp() * 1000) < 1
        assert 900 <= len(row["body"]) <= 2200
    shares = Counter(row["tool_id"] for row in rows)
    assert sorted(shares.values()) == [400, 1600, 3000, 5000, 10000]
    counts = asyncio.run(
        _fetch(
            empty_database,
            "SELECT (SELECT count(*) FROM event_keys) AS keys, "
            "(SELECT count(*) FROM event_deliveries) AS deliveries, "
            "(SELECT count(*) FROM event_attempts) AS attempts, "
            "(SELECT count(*) FROM events_default) + (SELECT count(*) FROM event_attempts_default)"
            " + (SELECT count(*) FROM event_deliveries_default) AS stray, "
            "(SELECT count(*) FROM pg_class WHERE relname = 'events_legacy') AS legacy",
        )
    )[0]
    assert counts["keys"] == counts["deliveries"] == 20_000
    assert counts["attempts"] == 22_000  # one in ten has a failed attempt first
    assert counts["stray"] == 0 and counts["legacy"] == 0

    measured = _run("large_events_measure.py", "--database-url", empty_database, "--repeat", "3",
                    "--depth", "5000")  # fmt: skip
    assert "first page" in measured and "page 5,000 deep" in measured
    first = next(line for line in measured.splitlines() if line.startswith("first page"))
    assert "50 items" in first
