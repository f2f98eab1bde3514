"""``webhook-worker dlq`` and ``events replay``, as subprocesses, against a real ``webhook-worker
run`` on an embedded SQLite file whose tools forward to a local HTTP target answering 400.

One server for the module (starting processes is what costs time here); each test uses tools
of its own, so tests do not see each other's dead letters. Waiting polls the management API
with a deadline; what is asserted comes from the CLI.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.cli.running import Service, running_service
from tests.cli.test_cli import Cli, one_line_error
from tests.support import free_port
from webhook_worker.cli import app


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("dlq")) as running:
        yield running


def outcomes(event: dict[str, Any]) -> list[str]:
    return [attempt["outcome"] for attempt in event["attempts"]]


def run_all(cli: Cli, *commands: list[str], **env: str) -> list[subprocess.CompletedProcess[str]]:
    """Several independent commands at once (each is a process of its own)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: cli(*args, **env), commands))


def test_list_filters_pages_and_show(service: Service) -> None:
    cli = service.cli
    for tool_id in ("list-a", "list-b"):
        service.add_tool(tool_id)
    push = service.post("list-a", {"list": 1}, event="push")
    issue = service.post("list-a", {"list": 2}, event="issues")
    service.post("list-b", {"list": 3})
    service.dead_letters("list-a", 2)
    service.dead_letters("list-b", 1)

    listed = cli.json("dlq", "list", "--tool", "list-a")
    assert listed["next_cursor"] is None
    assert {item["event_id"] for item in listed["items"]} == {issue, push}
    for item in listed["items"]:
        assert (item["tool_id"], item["error_class"], item["status"]) == (
            "list-a",
            "http_4xx",
            "pending",
        )
        assert item["retry_count"] == 0 and "400" in item["error"]
    narrowed = cli.json(
        "dlq", "list", "--tool", "list-a", "--type", "issues", "--class", "http_4xx"
    )
    assert [item["event_id"] for item in narrowed["items"]] == [issue]
    assert cli.json("dlq", "list", "--tool", "list-b", "--status", "resolved")["items"] == []

    newest, oldest = listed["items"]  # newest dead letter first
    page = cli.ok("dlq", "list", "--tool", "list-a", "--limit", "1")
    assert newest["id"] in page and newest["event_id"] in page
    assert "http_4xx" in page and "pending" in page
    assert oldest["id"] not in page
    hint = page.strip().splitlines()[-1]
    assert hint.startswith("more: webhook-worker dlq list --tool list-a --limit 1 --cursor ")
    rest = cli.json("dlq", "list", "--tool", "list-a", "--limit", "1", "--cursor", hint.split()[-1])
    assert [item["id"] for item in rest["items"]] == [oldest["id"]]

    [pushed] = [item for item in listed["items"] if item["event_id"] == push]
    shown = cli.json("dlq", "show", pushed["id"])
    assert shown["id"] == pushed["id"] and shown["event_id"] == push
    event = shown["event"]
    assert event["id"] == push and event["status"] == "dead"
    assert event["payload"] == {"list": 1}
    assert event["headers"]["x-event"] == "push"
    assert [(a["outcome"], a["http_status"], a["error_class"]) for a in event["attempts"]] == [
        ("dead", 400, "http_4xx")
    ]
    human = cli.ok("dlq", "show", pushed["id"])
    for expected in (pushed["id"], push, "http_4xx", "not retryable", "payload", "x-event"):
        assert expected in human


def test_retry_one_after_the_target_is_fixed(service: Service) -> None:
    cli = service.cli
    service.add_tool("fixed")
    event_id = service.post("fixed", {"fixed": 1})
    [letter] = service.dead_letters("fixed", 1)

    service.target.statuses["fixed"] = 200
    said = cli.ok("dlq", "retry", letter["id"])
    assert f"requeued dead letter {letter['id']}" in said and event_id in said
    service.settled(event_id, "processed", attempts=2)

    event = cli.json("events", "show", event_id)
    assert event["status"] == "processed"
    assert outcomes(event) == ["dead", "forwarded"]
    assert len(service.target.received("fixed")) == 2
    shown = cli.json("dlq", "show", letter["id"])
    assert (shown["status"], shown["retry_count"]) == ("resolved", 1)
    # Resolved is final: a second retry is a conflict, not a second delivery.
    again = cli("dlq", "retry", letter["id"])
    assert again.returncode == 1
    assert "resolved" in one_line_error(again)


def test_bulk_retry_by_filter_asks_first_then_requeues(service: Service) -> None:
    cli = service.cli
    service.add_tool("bulk")
    service.add_tool("bulk-other")
    pushes = [service.post("bulk", {"bulk": n}, event="push") for n in range(2)]
    ping = service.post("bulk", {"bulk": "ping"}, event="ping")
    other = service.post("bulk-other", {"bulk": "other"}, event="push")
    service.dead_letters("bulk", 3)
    service.dead_letters("bulk-other", 1)
    service.target.statuses["bulk"] = service.target.statuses["bulk-other"] = 200

    refused = cli("dlq", "retry", "--tool", "bulk", "--type", "push")  # stdin is not a TTY
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert "--yes" in line and "2 pending dead letters" in line
    assert all(item["status"] == "pending" for item in service.dead_letters("bulk", 3))

    done = cli.ok("dlq", "retry", "--tool", "bulk", "--type", "push", "--yes")
    assert done.strip().splitlines()[-1] == "requeued 2"
    for event_id in pushes:
        assert outcomes(service.settled(event_id, "processed", attempts=2)) == [
            "dead",
            "forwarded",
        ]
    # Outside the filter: untouched.
    assert service.event(ping)["status"] == "dead"
    assert service.event(other)["status"] == "dead"
    assert not service.target.received("bulk-other")[1:]


def test_discard_and_bulk_retry_skips_discarded(service: Service) -> None:
    cli = service.cli
    service.add_tool("gone")
    event_id = service.post("gone", {"gone": 1})
    [letter] = service.dead_letters("gone", 1)

    said = cli.ok("dlq", "discard", letter["id"])
    assert f"discarded dead letter {letter['id']}" in said and event_id in said
    [discarded] = cli.json("dlq", "list", "--tool", "gone", "--status", "discarded")["items"]
    assert discarded["id"] == letter["id"]
    skipped = cli.ok("dlq", "retry", "--tool", "gone", "--yes")
    assert skipped.startswith("requeued 0")
    assert service.event(event_id)["status"] == "dead"


def test_events_replay_makes_a_new_attempt(service: Service) -> None:
    service.add_tool("again")
    service.target.statuses["again"] = 200
    event_id = service.post("again", {"again": 1})
    service.settled(event_id, "processed")

    said = service.cli.ok("events", "replay", event_id)
    assert f"requeued event {event_id}" in said
    event = service.settled(event_id, "processed", attempts=2)
    assert outcomes(event) == ["forwarded", "forwarded"]
    forwards = service.target.received("again")
    assert len(forwards) == 2
    assert {headers["webhook-id"] for _, headers, _ in forwards} == {event_id}


def test_unknown_ids_are_one_line_and_exit_1(service: Service) -> None:
    results = run_all(
        service.cli,
        ["dlq", "show", "nope"],
        ["dlq", "retry", "nope"],
        ["dlq", "discard", "nope"],
        ["events", "replay", "nope"],
    )
    expected = ["no dead letter 'nope'"] * 3 + ["no event 'nope'"]
    for result, text in zip(results, expected, strict=True):
        assert text in one_line_error(result), result.args
        assert result.returncode == 1, result.args


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["dlq", "retry"], "--all"),
        (["dlq", "retry", "some-id", "--tool", "x"], "not both"),
        (["dlq", "retry", "some-id", "--all"], "not both"),
        (["dlq", "list", "--status", "gone"], "--status"),
        (["dlq", "list", "--since", "yesterday"], "--since"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], text: str) -> None:
    # Refused before any settings or database are read, so in-process is faithful (and quick).
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unreachable_queue_or_database_is_one_line(service: Service) -> None:
    closed = free_port()
    no_redis = run_all(
        service.cli,
        ["dlq", "retry", "some-id"],
        ["dlq", "retry", "--all", "--yes"],
        ["events", "replay", "some-id"],
        REDIS_ADDR=f"127.0.0.1:{closed}",
    )
    for result in no_redis:
        line = one_line_error(result)
        assert "cannot reach Redis" in line and str(closed) in line, result.args
        assert result.returncode == 1
    no_database = service.cli(
        "dlq", "list", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/nowhere"
    )
    line = one_line_error(no_database)
    assert "cannot reach the database" in line and str(closed) in line
