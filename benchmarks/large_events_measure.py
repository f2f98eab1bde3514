"""Time the event list and search of the API against a database loaded by large_events.py.

    .venv/bin/python benchmarks/large_events_measure.py \\
        --database-url postgresql://postgres@127.0.0.1/large --plans benchmarks/results/plans.txt

It starts a real ``webhook-worker api`` on a free loopback port against that database (no
worker: nothing is ingested meanwhile), then over HTTP with one keep-alive connection, after a
warm-up, times each request ``--repeat`` times (default 20) and prints the median, p95 and the
spread (min-max):

- ``GET /api/v1/events?limit=50``: the first page;
- a page ``--depth`` events deep (default 1,000,000): its cursor is the one the API hands out
  for the page ending at that event (api/cursor.py: the cursor is the id a page ends at; the
  script checks that following ``next_cursor`` gives the same cursors);
- the same two with ``tool_id=`` (the biggest tool and the smallest);
- ``?search=TOKEN`` with ``since`` 24 hours ago, and with a one-hour window (when this build
  has ``search``).

``--plans FILE`` writes ``EXPLAIN (ANALYZE, BUFFERS)`` of every SQL statement behind these
pages: they are captured from the same storage code the API runs (EventStore.list), in this
process, and explained with their parameters.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import event, text

from webhook_worker.api.cursor import encode_cursor
from webhook_worker.config import Settings
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventFilter, EventStore

HOST = "127.0.0.1"
SLOW_REPEAT = 3
TOKEN = "zebra-quartz-4711"  # noqa: S105 (a search term, not a password)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def api(database_url: str) -> Iterator[str]:
    """``webhook-worker api`` on a free loopback port, stopped at the end."""
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "API_ADDR", "ADMIN_TOKEN"))
    }
    env |= {
        "DATABASE_URL": database_url,
        "API_ADDR": f"{HOST}:{port}",
        "SECRETS_KEY": env.get("SECRETS_KEY") or Fernet.generate_key().decode(),
        "LOG_LEVEL": "warning",
    }
    handle, name = tempfile.mkstemp(prefix="large-events-api-", suffix=".log")
    os.close(handle)
    with open(name, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", "api"], env=env, stdout=log, stderr=log
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                sys.exit(f"the API exited with {process.returncode}; see {name}")
            try:
                if httpx.get(f"{url}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"the API did not answer within 60 s; see {name}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def timed(client: httpx.Client, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    """``repeat`` timings (ms) of one request after an unmeasured one (three timings when that
    one took over a second: a search that reads the whole range)."""
    began = time.perf_counter()
    response = client.get(path, params=params)
    if response.status_code != 200:
        return {"status": response.status_code, "error": response.text[:300]}
    if time.perf_counter() - began > 1.0:
        repeat = min(repeat, SLOW_REPEAT)
    found = len(response.json()["items"])
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(path, params=params)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    times.sort()
    return {
        "repeat": repeat,
        "items": found,
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[math.ceil(0.95 * len(times)) - 1], 1),  # nearest rank
        "min_ms": round(times[0], 1),
        "max_ms": round(times[-1], 1),
    }


async def positions(db: Database, depth: int, tools: list[str]) -> dict[str | None, str]:
    """The id ``depth`` events from the newest, overall and within each of ``tools`` (half
    way through a tool with fewer)."""
    found: dict[str | None, str] = {}
    async with db.connect() as conn:
        for tool in (None, *tools):
            where = "" if tool is None else "WHERE tool_id = :tool"
            offset = depth
            if tool is not None:
                count = await conn.scalar(
                    text("SELECT count(*) FROM event_keys WHERE tool_id = :tool"), {"tool": tool}
                )
                offset = min(depth, max(1, int(count or 0) // 2))
            deep = f"SELECT id FROM events {where} ORDER BY id DESC OFFSET :depth LIMIT 1"  # noqa: S608
            found[tool] = await conn.scalar(
                text(deep),
                {"tool": tool, "depth": offset - 1},
            )
    return found


async def tools_by_size(db: Database) -> list[str]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT tool_id FROM event_keys GROUP BY tool_id ORDER BY count(*) DESC")
        )
        return [row[0] for row in rows]


async def explain(db: Database, cases: list[tuple[str, EventFilter, str | None]]) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement EventStore.list runs for each case."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    store = EventStore(db)
    lines = []
    for label, where, after in cases:
        event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
        try:
            await store.list(where, 50, after)
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
        statements, captured[:] = list(captured), []
        async with db.connect() as conn:
            for statement, parameters in statements:
                plan = await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement, tuple(parameters)
                )
                shown = repr(parameters) if len(parameters) <= 4 else f"{len(parameters)} ids"
                lines += [f"== {label}", _short(statement.strip()), f"-- parameters: {shown}"]
                lines += [row[0] for row in plan] + [""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--depth", type=int, default=1_000_000)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--plans", type=Path, help="write the query plans to this file")
    args = parser.parse_args()
    settings = Settings.from_env({"DATABASE_URL": args.database_url})

    def database() -> Database:
        # One per asyncio.run: a pool's connections belong to the loop that opened them.
        return Database.from_url(settings.sqlalchemy_url(), pool_size=2)

    async def prepare() -> tuple[list[str], dict[str | None, str]]:
        db = database()
        try:
            tools = await tools_by_size(db)
            chosen = [tools[0], tools[-1]]
            return chosen, await positions(db, args.depth, chosen)
        finally:
            await db.close()

    async def plans(filters: list[tuple[str, EventFilter, str | None]]) -> list[str]:
        db = database()
        try:
            return await explain(db, filters)
        finally:
            await db.close()

    chosen, deep = asyncio.run(prepare())
    now = datetime.now(UTC)
    day_ago = (now - timedelta(hours=24)).isoformat()
    hour_ago = (now - timedelta(hours=1)).isoformat()
    cases: list[tuple[str, dict[str, Any]]] = [("first page", {"limit": 50})]
    cases.append((f"page {args.depth:,} deep", {"limit": 50, "cursor": encode_cursor(deep[None])}))
    for tool in chosen:
        cases.append((f"tool_id={tool}, first page", {"limit": 50, "tool_id": tool}))
        if deep.get(tool):
            cases.append(
                (
                    f"tool_id={tool}, a page deep in the tool",
                    {"limit": 50, "tool_id": tool, "cursor": encode_cursor(deep[tool])},
                )
            )
    cases.append(("search, since 24 h ago", {"limit": 50, "search": args.token, "since": day_ago}))
    cases.append(("search, a 1 h window", {"limit": 50, "search": args.token, "since": hour_ago}))
    absent = {"limit": 50, "search": "no-body-has-this", "since": day_ago}
    cases.append(("search, since 24 h ago, no match (whole day read)", absent))
    results = {}
    with api(args.database_url) as url, httpx.Client(base_url=url, timeout=600) as client:
        _check_cursors(client)
        for label, params in cases:
            results[label] = timed(client, "/api/v1/events", params, args.repeat)
            print(f"{label:<55} {_show(results[label])}", flush=True)
    if args.plans is not None:
        filters: list[tuple[str, EventFilter, str | None]] = [
            ("first page", EventFilter(), None),
            (f"page {args.depth:,} deep", EventFilter(), deep[None]),
            (f"tool_id={chosen[-1]}, first page", EventFilter(tool_id=chosen[-1]), None),
        ]
        if "error" not in results["search, since 24 h ago"]:
            day, hour = now - timedelta(hours=24), now - timedelta(hours=1)
            filters += [
                ("search, since 24 h ago", EventFilter(search=args.token, since=day), None),
                ("search, a 1 h window", EventFilter(search=args.token, since=hour), None),
                (
                    "search, since 24 h ago, no match",
                    EventFilter(search="no-body-has-this", since=day),
                    None,
                ),
            ]
        lines = asyncio.run(plans(filters))
        args.plans.parent.mkdir(parents=True, exist_ok=True)
        args.plans.write_text("\n".join(lines) + "\n")
        print(f"plans written to {args.plans}")


def _short(statement: str) -> str:
    """A statement with its long ``IN ($1, ... $50)`` list shortened."""
    head, found, rest = statement.partition(" IN (")
    if not found:
        return statement
    return f"{head} IN (${rest.count('$')} ids){rest[rest.index(')') + 1 :]}"


def _check_cursors(client: httpx.Client) -> None:
    """The cursor the API hands out is the id the page ends at (what ``positions`` relies on)."""
    page = client.get("/api/v1/events", params={"limit": 5}).json()
    assert page["next_cursor"] == encode_cursor(page["items"][-1]["id"]), page["next_cursor"]


def _show(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"HTTP {result['status']}: {result['error']}"
    return (
        f"median {result['median_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  "
        f"(min {result['min_ms']:.1f}, max {result['max_ms']:.1f}; {result['repeat']} runs, "
        f"{result['items']} items)"
    )


if __name__ == "__main__":
    main()
