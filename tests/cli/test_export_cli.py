"""``webhook-worker events export`` and the ``--search``/``--delivery-id`` options, run as the
real command on a SQLite file."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import Cli, clean_env, one_line_error
from tests.storage.support import BASE_TIME, event_record, seed
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import MAX_SEARCH


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command on a migrated SQLite file of its own."""
    command = Cli(clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}"))
    command.ok("migrate")
    return command


def seeded(cli: Cli, records: list[dict[str, Any]]) -> Cli:
    """``cli`` with ``records`` written into its database."""

    async def write() -> None:
        url = cli.env["DATABASE_URL"].replace("sqlite://", "sqlite+aiosqlite://", 1)
        db = Database.from_url(url)
        try:
            for start in range(0, len(records), 1000):
                await seed(db, records[start : start + 1000])
        finally:
            await db.close()

    asyncio.run(write())
    return cli


def indexes(items: list[dict[str, Any]]) -> list[int]:
    return [int(item["id"].rsplit("-", 1)[1]) for item in items]


def ndjson(text: str) -> list[dict[str, Any]]:
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_export_writes_every_matching_event_to_a_file(cli: Cli, tmp_path: Path) -> None:
    records = [event_record(i, tool_id="other" if i % 4 == 0 else "demo") for i in range(1103)]
    records[5]["body"] = b'\xff{"not": "utf-8"}'
    seeded(cli, records)
    output = tmp_path / "demo.jsonl"
    result = cli("events", "export", "--tool", "demo", "--output", str(output))
    assert result.returncode == 0, result.stderr
    expected = [i for i in range(1103) if i % 4 != 0]
    assert f"exported {len(expected)} events to {output}" in result.stderr
    assert result.stdout == ""
    exported = ndjson(output.read_text())
    assert indexes(exported) == expected  # oldest first
    for item in (exported[0], exported[3], exported[-1]):
        assert item == cli.json("events", "show", item["id"])
    assert exported[3]["payload"] == '\ufffd{"not": "utf-8"}'  # event 5, as the API shows it
    assert stat.S_IMODE(output.stat().st_mode) == 0o600  # events hold what providers sent
    assert not list(tmp_path.glob("*.partial"))


def test_export_to_stdout_applies_the_filters(cli: Cli) -> None:
    seeded(
        cli,
        [
            event_record(0, body=b'{"order": "needle"}'),
            event_record(1, body=b'{"order": "Needle"}'),
            event_record(2, body=b'{"order": "needle"}', tool_id="other"),
            event_record(3, body=b'{"discount": "100%"}'),
            event_record(4, body=b'{"order": "needle"}'),
        ],
    )

    def exported(*options: str) -> list[int]:
        result = cli("events", "export", *options)
        assert result.returncode == 0, result.stderr
        found = indexes(ndjson(result.stdout))
        assert f"exported {len(found)} event" in result.stderr
        assert "to stdout" in result.stderr
        return found

    assert exported() == [0, 1, 2, 3, 4]
    assert exported("--search", "needle") == [0, 2, 4]
    assert exported("--search", "needle", "--tool", "demo") == [0, 4]
    assert exported("--search", "100%") == [3]
    assert exported("--delivery-id", "delivery-1") == [1]
    since = (BASE_TIME + timedelta(minutes=1)).isoformat()
    until = (BASE_TIME + timedelta(minutes=4)).isoformat()
    assert exported("--since", since, "--until", until, "--search", "needle") == [2]
    assert exported("--search", "haystack") == []


def test_list_and_replay_take_search_and_delivery_id(cli: Cli) -> None:
    seeded(
        cli,
        [
            event_record(0, body=b'{"customer": "cus_42"}'),
            event_record(1, body=b'{"customer": "cus_7"}'),
            event_record(2, body=b'{"customer": "cus_42"}', tool_id="other"),
        ],
    )
    assert indexes(cli.json("events", "list", "--search", "cus_42")["items"]) == [2, 0]
    listed = cli.json("events", "list", "--search", "cus_42", "--tool", "demo")
    assert indexes(listed["items"]) == [0]
    assert indexes(cli.json("events", "list", "--delivery-id", "delivery-1")["items"]) == [1]
    table = cli.ok("events", "list", "--search", "cus_42", "--limit", "1")
    assert "--search cus_42" in table  # the next page keeps the filter
    counted = cli.ok("events", "replay", "--tool", "demo", "--search", "cus_", "--dry-run")
    assert "would replay 2 events" in counted
    assert "body containing 'cus_'" in counted


def test_bad_export_options_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    too_long = cli("events", "export", "--search", "x" * (MAX_SEARCH + 1))
    assert f"--search: at most {MAX_SEARCH} characters" in one_line_error(too_long)
    assert too_long.returncode == 2
    assert "--status" in one_line_error(cli("events", "export", "--status", "done"))
    missing = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    unwritable = cli("events", "export", "--output", str(missing))
    assert "cannot write" in one_line_error(unwritable)
    assert unwritable.returncode == 1
