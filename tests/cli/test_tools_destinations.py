"""``webhook-worker tools destinations``, as subprocesses, on one migrated SQLite file: each test
works on tools of its own. What is stored is read back with plain SQL (the embedded database
without SECRETS_KEY keeps secrets as given), so a secret the CLI never prints can still be seen
to be kept."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import Cli, clean_env, one_line_error
from webhook_worker.replay import Replayer

SIGNING = "whsec_c2lnbmluZy1zZWNyZXQtb25l"
NEW_SIGNING = "whsec_c2lnbmluZy1zZWNyZXQtdHdv"
TOKEN = "dest-t0ken-value"
PASSWORD = "url-passw0rd"
SECRETS = (SIGNING, NEW_SIGNING, TOKEN, PASSWORD)


class Tools:
    """The CLI, and the tools as the database holds them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cli = Cli(clean_env(DATABASE_URL=f"sqlite:///{path}"))

    def stored(self, tool_id: str) -> dict[str, Any]:
        with closing(sqlite3.connect(self.path)) as db:
            row = db.execute("SELECT config FROM tools WHERE id = ?", (tool_id,)).fetchone()
        assert row is not None, tool_id
        config: dict[str, Any] = json.loads(row[0])
        return config

    def listed(self, tool_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cli.json("tools", "destinations", "list", tool_id)[
            "items"
        ]
        return items


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    found = Tools(tmp_path_factory.mktemp("destinations") / "cli.db")
    found.cli.ok("migrate")
    yield found


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


def test_add_list_update_and_remove(tools: Tools) -> None:
    cli = tools.cli
    cli.ok(
        "tools", "add", "shop", "--mode", "store_and_forward",
        "--forward-url", "https://forward.example.com/in",
    )  # fmt: skip
    outputs = [
        cli.ok(
            "tools", "destinations", "add", "shop", "billing",
            "--url", f"https://bot:{PASSWORD}@billing.example.com/in",
            "--method", "put", "--timeout", "2s", "--signing-secret", SIGNING,
            "--header", f"Authorization=Bearer {TOKEN}", "--header", "X-Team=payments",
            "--filter", "type == 'order'", "--transform", "{id: id}", "--max-retries", "3",
        ),
        cli.ok(
            "tools", "destinations", "add", "shop", "crm",
            "--url", "https://crm.example.com/in", "--disabled",
        ),
    ]  # fmt: skip
    assert "added destination 'billing' to tool 'shop'" in outputs[0]
    assert "https://********:********@billing.example.com/in" in outputs[0]

    listed = tools.listed("shop")
    assert listed == [
        {"id": "default", "source": "forward", "url": "https://forward.example.com/in"},
        {
            "id": "billing",
            "source": "destinations",
            "url": "https://********:********@billing.example.com/in",
            "method": "put",
            "timeout": "2s",
            "signing_secret": "********",
            "headers": {"Authorization": "********", "X-Team": "payments"},
            "filter": "type == 'order'",
            "transform": "{id: id}",
            "retry": {"max_retries": 3},
        },
        {
            "id": "crm",
            "source": "destinations",
            "url": "https://crm.example.com/in",
            "enabled": False,
        },
    ]
    table = cli.ok("tools", "destinations", "list", "shop")
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│")}
    assert "(forward)" in rows["default"] and "forward.example.com" in rows["default"]
    assert "PUT" in rows["billing"] and "type == 'order'" in rows["billing"]
    assert " 3 " in rows["billing"] and "yes" in rows["billing"]
    assert "no" in rows["crm"].split("│")[-2]
    outputs += [table, json.dumps(listed), cli.ok("tools", "show", "shop")]

    outputs.append(
        cli.ok(
            "tools", "destinations", "update", "shop", "billing",
            "--header", "x-team=billing", "--filter", "", "--max-retries", "5", "--disable",
        )
    )  # fmt: skip
    outputs.append(cli.ok("tools", "destinations", "update", "shop", "crm", "--enable"))
    billing, crm = tools.stored("shop")["destinations"]
    assert billing == {
        "id": "billing",
        "url": f"https://bot:{PASSWORD}@billing.example.com/in",
        "method": "put",
        "timeout": "2s",
        "signing_secret": SIGNING,
        "headers": {"Authorization": f"Bearer {TOKEN}", "x-team": "billing"},
        "transform": "{id: id}",
        "retry": {"max_retries": 5},
        "enabled": False,
    }
    assert crm == {"id": "crm", "url": "https://crm.example.com/in", "enabled": True}

    outputs.append(cli.ok("tools", "destinations", "remove", "shop", "crm", "--yes"))
    assert "removed destination 'crm' from tool 'shop'" in outputs[-1]
    assert [item["id"] for item in tools.listed("shop")] == ["default", "billing"]
    assert tools.stored("shop")["destinations"][0]["signing_secret"] == SIGNING
    assert tools.stored("shop")["forward"] == {"url": "https://forward.example.com/in"}
    assert_no_secret(*outputs)


def test_a_destination_moved_to_another_host_needs_its_secrets_again(tools: Tools) -> None:
    cli = tools.cli
    cli.ok(
        "tools", "add", "moving", "--json",
        json.dumps({
            "mode": "store_and_forward",
            "destinations": [{
                "id": "hook", "url": "https://old.example.com/in", "signing_secret": SIGNING,
                "headers": {"Authorization": f"Bearer {TOKEN}"},
            }],
        }),
    )  # fmt: skip
    line = one_line_error(
        cli("tools", "destinations", "update", "moving", "hook", "--url", "https://new.example/in")
    )
    assert "cannot update destination 'hook' of tool 'moving'" in line
    assert "destinations[0].signing_secret: the target changed" in line
    line = one_line_error(
        cli(
            "tools", "destinations", "update", "moving", "hook", "--url", "https://new.example/in",
            "--signing-secret", NEW_SIGNING,
        )
    )  # fmt: skip
    assert "destinations[0].headers.Authorization" in line
    assert tools.stored("moving")["destinations"][0]["url"] == "https://old.example.com/in"
    cli.ok(
        "tools", "destinations", "update", "moving", "hook", "--url", "https://new.example/in",
        "--signing-secret", NEW_SIGNING, "--remove-header", "authorization",
    )  # fmt: skip
    assert tools.stored("moving")["destinations"] == [
        {"id": "hook", "url": "https://new.example/in", "signing_secret": NEW_SIGNING}
    ]


def test_apply_takes_a_yaml_tool_with_two_destinations(tools: Tools, tmp_path: Path) -> None:
    manifest = tmp_path / "tools.yaml"
    manifest.write_text(
        "tools:\n"
        "  - id: fanout\n"
        "    mode: store_and_forward\n"
        "    destinations:\n"
        "      - id: billing\n"
        "        url: https://billing.example.com/in\n"
        f"        signing_secret: {SIGNING}\n"
        "        filter: \"type == 'order'\"\n"
        "      - id: audit\n"
        "        url: https://audit.example.com/in\n"
        f"        headers: {{Authorization: Bearer {TOKEN}}}\n"
        "        retry: {max_retries: 1}\n"
        "        enabled: false\n"
    )
    first = tools.cli.ok("tools", "apply", "-f", str(manifest))
    assert "created   fanout" in first
    shown = tools.cli.json("tools", "show", "fanout")
    assert shown["destinations"] == [
        {
            "id": "billing",
            "url": "https://billing.example.com/in",
            "signing_secret": "********",
            "filter": "type == 'order'",
        },
        {
            "id": "audit",
            "url": "https://audit.example.com/in",
            "headers": {"Authorization": "********"},
            "retry": {"max_retries": 1},
            "enabled": False,
        },
    ]
    table = tools.cli.ok("tools", "destinations", "list", "fanout")
    assert "billing" in table and "audit" in table and "(forward)" not in table
    again = tools.cli.ok("tools", "apply", "-f", str(manifest))
    assert "unchanged fanout" in again
    assert_no_secret(first, json.dumps(shown), table, again)


def test_errors_are_one_line_saying_what_to_do(tools: Tools) -> None:
    cli = tools.cli
    cli.ok("tools", "add", "errs", "--forward-url", "https://forward.example.com/in")
    cli.ok("tools", "destinations", "add", "errs", "one", "--url", "https://one.example.com/")
    destinations = ("tools", "destinations")
    for args, says in [
        (["list", "ghost"], "no tool 'ghost'"),
        (["update", "ghost", "x", "--disable"], "no tool 'ghost'"),
        (
            ["update", "errs", "two", "--disable"],
            "tool 'errs' has no destination 'two' (it has: one)",
        ),
        (
            ["add", "errs", "one", "--url", "https://e.com/"],
            "tool 'errs' already has a destination 'one': change it with "
            "`webhook-worker tools destinations update errs one`",
        ),
        (
            ["add", "errs", "default", "--url", "https://e.com/"],
            "destinations[1].id: 'default' is taken: the tool's `forward` is the destination "
            "'default'",
        ),
        (["update", "errs", "default", "--disable"], "is its `forward`: change it with"),
        (["update", "errs", "one"], "nothing to change"),
        (["update", "errs", "one", "--remove-header", "X-Nope"], "sends no header 'X-Nope'"),
        (["remove", "errs", "one"], "pass --yes"),
        (["add", "errs", "two", "--url", "ftp://e.com/"], "destinations[1].url: expected an http"),
        (["update", "errs", "one", "--method", "GET"], "destinations[0].method"),
    ]:
        line = one_line_error(cli(*destinations, *args))
        assert says in line, (args, line)
    # The value of a malformed --header is not repeated: it may be a credential.
    line = one_line_error(
        cli(*destinations, "add", "errs", "two", "--url", "https://e.com/", "--header", TOKEN)
    )
    assert "expected NAME=VALUE" in line and TOKEN not in line
    # The SSRF guard's check when a tool is written, as for a forward.
    refused = cli(
        *destinations, "add", "errs", "inside", "--url", "http://127.0.0.1:9/",
        ALLOW_PRIVATE_FORWARD="false",
    )  # fmt: skip
    assert "destinations[1].url" in one_line_error(refused)
    assert "ALLOW_PRIVATE_FORWARD=true" in one_line_error(refused)
    assert tools.stored("errs")["destinations"] == [
        {"id": "one", "url": "https://one.example.com/"}
    ]


def test_removing_the_last_destination(tools: Tools) -> None:
    cli = tools.cli
    cli.ok(
        "tools",
        "add",
        "last",
        "--json",
        '{"destinations": [{"id": "only", "url": "https://e.com/"}]}',
    )
    cli.ok("tools", "destinations", "remove", "last", "only", "--yes")
    assert "destinations" not in tools.stored("last")
    assert tools.listed("last") == []
    empty = cli.ok("tools", "destinations", "list", "last")
    assert "has no destinations: add one with `webhook-worker tools destinations add last" in empty

    # What store_and_forward would be left without is refused.
    cli.ok(
        "tools", "destinations", "add", "last", "only", "--url", "https://e.com/",
    )  # fmt: skip
    cli.ok("tools", "update", "last", "--mode", "store_and_forward")
    line = one_line_error(cli("tools", "destinations", "remove", "last", "only", "--yes"))
    assert "cannot remove destination 'only' from tool 'last'" in line
    assert (
        "forward.url: required when mode is store_and_forward, unless the tool has destinations"
        in line
    )
    assert [d["id"] for d in tools.stored("last")["destinations"]] == ["only"]


FAST = {"TOOLS_REFRESH_INTERVAL": "50ms"}  # pause and resume wait one refresh interval


def controlled_tool(tools: Tools, tmp_path: Path, tool_id: str) -> None:
    manifest = tmp_path / f"{tool_id}.json"
    manifest.write_text(
        json.dumps(
            {
                "id": tool_id,
                "destinations": [
                    {
                        "id": "billing",
                        "url": "https://billing.example.com/in",
                        "signing_secret": SIGNING,
                        "rate_limit": {"requests": 20, "per": "1s"},
                        "max_in_flight": 3,
                        "circuit_breaker": {},
                        "ordering_key": "data.id",
                    },
                    {"id": "audit", "url": "https://audit.example.com/in"},
                ],
            }
        )
    )
    tools.cli.ok("tools", "apply", "-f", str(manifest))


def test_pause_stores_the_flag_and_list_shows_it_with_the_controls(
    tools: Tools, tmp_path: Path
) -> None:
    controlled_tool(tools, tmp_path, "paced")
    paused = tools.cli("tools", "destinations", "pause", "paced", "billing", **FAST)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "paused billing of tool paced: no new deliveries start there"
    stored = tools.stored("paced")["destinations"]
    assert stored[0]["paused"] is True
    assert stored[0]["signing_secret"] == SIGNING  # the rest of the definition is kept
    assert "paused" not in stored[1]

    again = tools.cli("tools", "destinations", "pause", "paced", "billing", **FAST)
    assert again.returncode == 0, again.stderr  # idempotent

    assert [item.get("paused", False) for item in tools.listed("paced")] == [True, False]
    table = tools.cli.ok("tools", "destinations", "list", "paced")
    billing = next(line for line in table.splitlines() if "billing" in line)
    assert "rate 20/1s, in flight 3, breaker 5/30s, ordered by data.id" in billing
    assert "paused" in billing
    audit = next(line for line in table.splitlines() if "audit" in line)
    assert "paused" not in audit and "rate" not in audit
    assert_no_secret(table, paused.stdout)


@pytest.mark.xfail(
    not hasattr(Replayer, "release_paused"),
    reason="the requeue of waiting deliveries is Replayer.release_paused (worker side)",
    strict=True,
)
def test_resume_clears_the_flag_and_says_how_many_were_sent(tools: Tools, tmp_path: Path) -> None:
    controlled_tool(tools, tmp_path, "resumed")
    tools.cli.ok("tools", "destinations", "pause", "resumed", "billing")
    resumed = tools.cli("tools", "destinations", "resume", "resumed", "billing", **FAST)
    assert "paused" not in tools.stored("resumed")["destinations"][0]
    assert resumed.returncode == 0, resumed.stderr
    # How many were sent is what Replayer.release_paused answers: none were waiting here.
    assert resumed.stdout.strip() == "resumed billing of tool resumed: no deliveries were waiting"


def test_pause_and_resume_errors_are_one_line(tools: Tools, tmp_path: Path) -> None:
    controlled_tool(tools, tmp_path, "strict")
    tools.cli.ok(
        "tools", "add", "legacy", "--mode", "store_and_forward",
        "--forward-url", "https://legacy.example.com/in",
    )  # fmt: skip
    for action in ("pause", "resume"):
        line = one_line_error(tools.cli("tools", "destinations", action, "nope", "billing", **FAST))
        assert line == "error: no tool 'nope'"
        line = one_line_error(tools.cli("tools", "destinations", action, "strict", "erp", **FAST))
        assert (
            line
            == "error: tool 'strict' has no destination 'erp' (its destinations: billing, audit)"
        )
        line = one_line_error(
            tools.cli("tools", "destinations", action, "legacy", "default", **FAST)
        )
        assert "tool 'legacy' delivers with `forward`, which cannot be paused" in line
        assert "move it into `destinations` (with id 'default')" in line
