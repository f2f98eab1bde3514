"""Destinations on the command line: ``events show``/``list`` with each delivery, ``events
replay`` of one destination or all and in bulk by filter, and ``dlq`` by destination; as
subprocesses against a real ``webhook-worker run`` on an embedded SQLite file whose tools
deliver to a local HTTP target (``POST /<tool>-<destination>`` answers 400 until a test fixes
it). Each test uses tools of its own; what is asserted comes from the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.cli.running import Service, running_service
from tests.cli.test_cli import one_line_error
from tests.support import eventually_sync
from webhook_worker.cli import app


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("deliveries")) as running:
        yield running


def destination(service: Service, tool_id: str, dest_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": dest_id, "url": f"{service.target.url}/{tool_id}-{dest_id}", **fields}


def fan_out(service: Service, tool_id: str, *destinations: dict[str, Any]) -> None:
    service.create_tool(
        {
            "id": tool_id,
            "auth": {"type": "none"},
            "event_type": {"header": "X-Event"},
            "destinations": list(destinations),
        }
    )


def statuses(event: dict[str, Any]) -> dict[str, str]:
    return {d["destination_id"]: d["status"] for d in event["deliveries"]}


def received(service: Service, tool_id: str, dest_id: str) -> int:
    return len(service.target.received(f"{tool_id}-{dest_id}"))


def wait_for(service: Service, tool_id: str, dest_id: str, count: int) -> None:
    eventually_sync(
        lambda: received(service, tool_id, dest_id) == count,
        within=15,
        what=f"{count} requests to {tool_id}-{dest_id}",
        interval=0.05,
    )


def row(text: str, first: str) -> str:
    """The line of a printed table whose first cell is ``first``."""
    [line] = [line for line in text.splitlines() if line.strip("│┃ ").startswith(first + " ")]
    return line


def test_show_list_and_dead_letters_name_each_destination(service: Service) -> None:
    cli = service.cli
    service.target.statuses["shown-ok"] = 200  # shown-down keeps answering 400
    fan_out(
        service,
        "shown",
        destination(service, "shown", "ok"),
        destination(service, "shown", "down"),
        destination(service, "shown", "picky", filter="kind == 'rare'"),
    )
    event_id = service.post("shown", {"kind": "common"})
    service.settled(event_id, "dead")

    event = cli.json("events", "show", event_id)
    assert statuses(event) == {"ok": "delivered", "down": "dead", "picky": "ignored"}
    by_destination = {d["destination_id"]: d for d in event["deliveries"]}
    assert by_destination["down"]["attempt_count"] == 1
    down_attempts = by_destination["down"]["attempts"]
    assert [(a["destination_id"], a["http_status"]) for a in down_attempts] == [("down", 400)]
    assert {a["destination_id"] for a in event["attempts"]} >= {"ok", "down"}

    shown = cli.ok("events", "show", event_id)
    assert "delivered" in row(shown, "ok")
    assert "ignored" in row(shown, "picky")
    down = row(shown, "down")
    assert "dead" in down and " 1 " in down
    attempts = [line for line in shown.splitlines() if "http_4xx" in line]
    assert len(attempts) == 1 and "down" in attempts[0] and "400" in attempts[0]

    listed = cli.ok("events", "list", "--tool", "shown")
    assert "deliveries" in listed and "1/2 delivered" in row(listed, event_id)

    letters = cli.json("dlq", "list", "--destination", "down")["items"]
    assert [(item["event_id"], item["destination_id"]) for item in letters] == [(event_id, "down")]
    assert cli.json("dlq", "list", "--tool", "shown", "--destination", "ok")["items"] == []
    table = cli.ok("dlq", "list", "--tool", "shown")
    assert "destination" in table and "down" in row(table, letters[0]["id"])
    described = cli.ok("dlq", "show", letters[0]["id"]).splitlines()
    [named] = [line for line in described if line.startswith("destination ")]  # the summary
    assert named.split() == ["destination", "down"]


def test_replay_one_destination_then_all_and_refuse_an_unknown_one(service: Service) -> None:
    cli = service.cli
    service.target.statuses["again-a"] = service.target.statuses["again-b"] = 200
    fan_out(
        service, "again", destination(service, "again", "a"), destination(service, "again", "b")
    )
    event_id = service.post("again", {"again": 1})
    service.settled(event_id, "processed")

    said = cli.ok("events", "replay", event_id, "--destination", "b")
    assert f"requeued event {event_id} to destination b" in said
    wait_for(service, "again", "b", 2)
    said = cli.ok("events", "replay", event_id)
    assert f"requeued event {event_id}:" in said
    wait_for(service, "again", "a", 2)
    wait_for(service, "again", "b", 3)
    assert received(service, "again", "a") == 2  # the one-destination replay did not send here

    unknown = cli("events", "replay", event_id, "--destination", "nope")
    assert unknown.returncode == 1
    assert one_line_error(unknown) == (
        "error: --destination: tool 'again' has no destination 'nope' (its destinations: a, b)"
    )


def test_bulk_replay_counts_asks_and_reaches_a_destination_added_since(
    service: Service,
) -> None:
    cli = service.cli
    for name in ("bulk-a", "bulk-b"):
        service.target.statuses[name] = 200
    first = destination(service, "bulk", "a", filter="kind == 'a'")
    fan_out(service, "bulk", first)
    dropped = [service.post("bulk", {"kind": "b", "n": n}) for n in range(2)]
    kept = service.post("bulk", {"kind": "a"})
    for event_id in dropped:
        service.settled(event_id, "ignored", attempts=0)
    service.settled(kept, "processed")
    added = destination(service, "bulk", "b", filter="kind == 'b'")
    response = service.http.patch("/api/v1/tools/bulk", json={"destinations": [first, added]})
    assert response.status_code == 200, response.text

    counted = cli.ok("events", "replay", "--tool", "bulk", "--status", "ignored", "--dry-run")
    assert counted.strip() == (
        "would replay 2 events (tool bulk, status ignored, to every destination); "
        "dry run: nothing changed"
    )
    refused = cli("events", "replay", "--tool", "bulk", "--status", "ignored")  # no TTY
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert "--yes" in line and "2 events" in line
    assert {cli.json("events", "show", e)["status"] for e in dropped} == {"ignored"}
    assert received(service, "bulk", "b") == 0

    unknown = cli("events", "replay", "--tool", "bulk", "--destination", "c", "--yes")
    assert unknown.returncode == 1
    assert "--destination: tool 'bulk' has no destination 'c'" in one_line_error(unknown)

    done = cli.ok(
        "events", "replay", "--tool", "bulk", "--status", "ignored", "--destination", "b", "--yes"
    )
    assert done.strip().splitlines()[-1] == "requeued 2"
    wait_for(service, "bulk", "b", 2)
    for event_id in dropped:
        event = service.settled(event_id, "processed")
        assert statuses(event) == {"a": "ignored", "b": "delivered"}
    assert received(service, "bulk", "a") == 1  # only the event it wanted, once


def test_dlq_retry_by_destination_counts_first_and_leaves_the_others(service: Service) -> None:
    cli = service.cli
    fan_out(service, "mend", destination(service, "mend", "x"), destination(service, "mend", "y"))
    events = [service.post("mend", {"mend": n}) for n in range(2)]
    for event_id in events:
        service.settled(event_id, "dead", attempts=2)
    service.dead_letters("mend", 4)
    service.target.statuses["mend-x"] = 200

    counted = cli.ok("dlq", "retry", "--tool", "mend", "--destination", "x", "--dry-run")
    assert counted.strip() == (
        "would retry 2 pending dead letters (tool mend, destination x); dry run: nothing changed"
    )
    letters = cli.json("dlq", "list", "--tool", "mend")["items"]
    assert {item["status"] for item in letters} == {"pending"}

    done = cli.ok("dlq", "retry", "--tool", "mend", "--destination", "x", "--yes")
    assert done.strip().splitlines()[-1] == "requeued 2"
    wait_for(service, "mend", "x", 4)
    for event_id in events:

        def retried(event_id: str = event_id) -> bool:
            return statuses(cli.json("events", "show", event_id)) == {
                "x": "delivered",
                "y": "dead",
            }

        eventually_sync(retried, within=15, what=f"{event_id} delivered to x", interval=0.1)
    by_destination = {
        item["destination_id"]: item["status"]
        for item in cli.json("dlq", "list", "--tool", "mend")["items"]
    }
    assert by_destination == {"x": "resolved", "y": "pending"}
    assert received(service, "mend", "y") == 2  # the failing destination was not sent again


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["events", "replay"], "--tool"),
        (["events", "replay", "some-id", "--tool", "x"], "not both"),
        (["events", "replay", "some-id", "--dry-run"], "not both"),
        (["events", "replay", "--tool", "x", "--status", "gone"], "--status"),
        (["events", "replay", "--tool", "x", "--since", "yesterday"], "--since"),
        (["dlq", "retry", "some-id", "--destination", "x"], "not both"),
        (["dlq", "retry", "some-id", "--dry-run"], "not both"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], text: str) -> None:
    # Refused before any settings or database are read, so in-process is faithful (and quick).
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
