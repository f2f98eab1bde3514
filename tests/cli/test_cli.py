"""The real ``webhook-worker`` command, run as a subprocess on a SQLite file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import eventually_sync, free_port

SECRET = "cli-s3cret-value"
# Variables the settings read: the tests set what they need and nothing leaks in from outside.
_SETTINGS_PREFIXES = ("DATABASE_", "REDIS_", "WORKER_", "RETRY_", "TOOLS_", "LOG_", "OTEL_")
_SETTINGS_NAMES = {
    "API_ADDR",
    "HEALTH_ENDPOINT",
    "ADMIN_TOKEN",
    "SECRETS_KEY",
    "TRUSTED_PROXIES",
    "MAX_PAYLOAD_BYTES",
    "DATA_DIR",
}


def clean_env(**values: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _SETTINGS_NAMES and not name.startswith(_SETTINGS_PREFIXES)
    }
    env.update(COLUMNS="200", **values)
    return env


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, stdin: str | None = None, **extra_env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "webhook_worker", *args],
            env={**self.env, **extra_env},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one line on stderr and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def migrated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file `webhook-worker migrate` made once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "migrated.db"
    Cli(clean_env(DATABASE_URL=f"sqlite:///{path}")).ok("migrate")
    return path


@pytest.fixture
def cli(tmp_path: Path, migrated_file: Path) -> Cli:
    """A CLI on a migrated SQLite file of its own."""
    path = tmp_path / "cli.db"
    for suffix in ("", "-wal", "-shm"):  # normally only the file: SQLite checkpoints on close
        source = migrated_file.with_name(migrated_file.name + suffix)
        if source.exists():
            shutil.copyfile(source, path.with_name(path.name + suffix))
    return Cli(clean_env(DATABASE_URL=f"sqlite:///{path}"))


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    cli = Cli(clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'm.db'}"))
    first = cli.ok("migrate")
    assert "from empty to revision" in first
    assert "m.db" in first
    second = cli.ok("migrate")
    assert "already current" in second


def test_tools_round_trip(cli: Cli, tmp_path: Path) -> None:
    added = cli.ok(
        "tools", "add", "demo",
        "--auth-type", "hmac", "--header", "X-Signature", "--prefix", "sha256=",
        "--secret", SECRET, "--event-type-header", "X-Event",
    )  # fmt: skip
    assert "demo" in added
    assert "/webhooks/demo" in added

    listed = cli.json("tools", "list")
    assert [tool["id"] for tool in listed["items"]] == ["demo"]
    assert listed["next_cursor"] is None
    shown = cli.json("tools", "show", "demo")
    assert shown["auth"] == {
        "type": "hmac",
        "header": "X-Signature",
        "prefix": "sha256=",
        "secret": "********",
    }
    assert shown["event_type"] == {"header": "X-Event"}
    assert shown["enabled"] is True

    cli.ok("tools", "update", "demo", "--disable", "--event-type-path", "action")
    shown = cli.json("tools", "show", "demo")
    assert shown["enabled"] is False
    assert shown["event_type"] == {"path": "action"}
    assert shown["auth"]["secret"] == "********"
    cli.ok("tools", "update", "demo", "--enable", "--json", '{"description": "x", "mode": null}')
    shown = cli.json("tools", "show", "demo")
    assert shown["enabled"] is True
    assert shown["description"] == "x"

    table = cli.ok("tools", "list")
    assert "demo" in table and "hmac" in table and "store_only" in table
    human = cli.ok("tools", "show", "demo")
    assert '"X-Signature"' in human

    for output in (added, table, human, json.dumps(listed)):
        assert SECRET not in output

    refused = cli("tools", "remove", "demo")
    assert "--yes" in one_line_error(refused)
    assert cli.json("tools", "show", "demo")["id"] == "demo"
    assert "removed" in cli.ok("tools", "remove", "demo", "--yes")
    assert "no tool 'demo'" in one_line_error(cli("tools", "show", "demo"))
    assert "no tool 'demo'" in one_line_error(cli("tools", "remove", "demo", "--yes"))
    assert cli.json("tools", "list")["items"] == []


def test_apply_reports_each_tool_and_keeps_secrets(cli: Cli, tmp_path: Path) -> None:
    manifest = tmp_path / "tools.yaml"
    manifest.write_text(
        "tools:\n"
        "  - id: github\n"
        "    provider: github\n"
        f"    auth: {{secret: {SECRET}}}\n"
        "  - id: plain\n"
        "    description: 2024-01-15\n"
    )
    first = cli.ok("tools", "apply", "-f", str(manifest))
    assert "created   github" in first and "created   plain" in first
    second = cli.ok("tools", "apply", "-f", str(manifest))
    assert "unchanged github" in second and "unchanged plain" in second
    # an exported view (secrets redacted) applied back keeps the stored secret
    exported = cli.json("tools", "show", "github")
    exported["description"] = "from an export"
    (tmp_path / "export.json").write_text(json.dumps([exported]))
    third = cli.ok("tools", "apply", "-f", str(tmp_path / "export.json"))
    assert "updated   github" in third
    assert cli.json("tools", "show", "plain")["description"] == "2024-01-15"  # a string
    for output in (first, second, third):
        assert SECRET not in output
    # from stdin, as a bare list
    fourth = cli.ok("tools", "apply", "-f", "-", stdin='[{"id": "piped"}]')
    assert "created   piped" in fourth


def test_add_merges_file_json_and_flags(cli: Cli, tmp_path: Path) -> None:
    definition = tmp_path / "tool.yaml"
    definition.write_text(
        "provider: github\n"
        "description: from the file\n"
        "auth: {secret: file-secret}\n"
        "delivery_id: {path: id}\n"
    )
    cli.ok(
        "tools", "add", "gh", "-f", str(definition),
        "--json", '{"description": "from --json", "mode": "store_only"}',
        "--secret", "flag-secret", "--secret", "older-secret", "--delivery-id-header", "X-Id",
    )  # fmt: skip
    shown = cli.json("tools", "show", "gh")
    assert shown["provider"] == "github"
    assert shown["description"] == "from --json"
    assert shown["auth"] == {"secrets": ["********", "********"]}
    assert shown["delivery_id"] == {"header": "X-Id"}
    mismatch = cli("tools", "add", "other", "--json", '{"id": "gh2"}')
    assert "'gh2'" in one_line_error(mismatch)


def test_invalid_tool_is_one_line_naming_the_field(cli: Cli) -> None:
    for args, named in (
        (["--provider", "nope"], "provider"),
        (["--auth-type", "hmac", "--header", "X-Sig"], "auth.secret"),
        (["--mode", "store_and_forward", "--forward-url", "ftp://x"], "forward.url"),
        (["--event-type-path", "a.[b"], "event_type.path"),
        (["--json", '{"retry": {"max_interval": "soon"}}'], "retry.max_interval"),
        (["--json", "{not json"], "--json"),
    ):
        assert named in one_line_error(cli("tools", "add", "bad", *args)), args
    assert cli.json("tools", "list")["items"] == []


def test_invalid_apply_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    manifest = tmp_path / "tools.yaml"
    manifest.write_text("- id: fine\n- id: broken\n  filter: 'a[?'\n")
    line = one_line_error(cli("tools", "apply", "-f", str(manifest)))
    assert "nothing applied" in line and "broken" in line and "filter" in line
    manifest.write_text("- id: twice\n- id: twice\n")
    assert "more than once" in one_line_error(cli("tools", "apply", "-f", str(manifest)))
    manifest.write_text("tools: [\n")
    assert "YAML" in one_line_error(cli("tools", "apply", "-f", str(manifest)))
    missing = one_line_error(cli("tools", "apply", "-f", str(tmp_path / "nope.yaml")))
    assert "cannot read" in missing
    assert cli.json("tools", "list")["items"] == []


def test_update_errors(cli: Cli) -> None:
    assert "no tool 'ghost'" in one_line_error(cli("tools", "update", "ghost", "--disable"))
    cli.ok("tools", "add", "demo")
    assert "nothing to change" in one_line_error(cli("tools", "update", "demo"))
    line = one_line_error(cli("tools", "update", "demo", "--mode", "transform_and_store"))
    assert "transform" in line
    assert "mode" not in cli.json("tools", "show", "demo")


def test_bad_environment_variable_is_one_line_and_exit_2(cli: Cli) -> None:
    for command in (["tools", "list"], ["events", "list"], ["migrate"]):
        result = cli(*command, REDIS_DB="x")
        line = one_line_error(result)
        assert result.returncode == 2
        assert "REDIS_DB" in line


def test_schema_less_database_says_to_migrate(tmp_path: Path) -> None:
    cli = Cli(clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}"))
    for command in (["tools", "list"], ["events", "list"], ["tools", "add", "demo"]):
        assert "webhook-worker migrate" in one_line_error(cli(*command))


def test_unreachable_database_is_one_line_naming_it() -> None:
    port = free_port()
    cli = Cli(clean_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/nowhere"))
    for command in (["tools", "list"], ["events", "show", "x"], ["send", "demo"]):
        line = one_line_error(cli(*command))
        assert "cannot reach the database" in line and f"127.0.0.1:{port}" in line


def test_events_commands_on_an_empty_database(cli: Cli) -> None:
    assert cli.json("events", "list") == {"items": [], "next_cursor": None}
    assert "no events" in cli.ok("events", "list")
    assert "no event 'nope'" in one_line_error(cli("events", "show", "nope"))
    assert "--status" in one_line_error(cli("events", "list", "--status", "done"))
    assert "--since" in one_line_error(cli("events", "list", "--since", "yesterday"))
    assert cli.json("events", "list", "--since", "2h", "--until", "2024-01-15T10:00:00Z") == {
        "items": [],
        "next_cursor": None,
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Cli, str, subprocess.Popen[bytes]]]:
    """``webhook-worker run`` on the embedded default (DATA_DIR), with an hmac tool ``demo``."""
    port = free_port()
    env = clean_env(
        DATA_DIR=str(tmp_path / "data"),
        API_ADDR=f"127.0.0.1:{port}",
        TOOLS_REFRESH_INTERVAL="100ms",
    )
    cli = Cli(env)
    cli.ok("migrate")
    cli.ok(
        "tools", "add", "demo", "--auth-type", "hmac", "--header", "X-Signature",
        "--prefix", "sha256=", "--secret", SECRET, "--event-type-header", "X-Event",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook_worker", "run"], env=env, stdout=log, stderr=log
    )

    def live() -> bool:
        if process.poll() is not None:
            pytest.fail(f"`run` exited with {process.returncode}: {read(tmp_path / 'run.log')}")
        try:
            return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually_sync(
            live, within=30, what="`webhook-worker run` to answer /health/live", interval=0.05
        )
        yield cli, url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def read(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def test_send_end_to_end(server: tuple[Cli, str, subprocess.Popen[bytes]]) -> None:
    cli, url, process = server
    sent = cli.ok("send", "demo", "--event", "push")
    assert "202" in sent
    assert SECRET not in sent

    def stored() -> list[Any] | None:
        items: list[Any] = cli.json("events", "list", "--tool", "demo")["items"]
        return items or None

    items = eventually_sync(
        stored, within=30, what="the sent event in `events list`", interval=0.05
    )
    assert len(items) == 1
    event = cli.json("events", "show", items[0]["id"])
    assert event["status"] == "processed"
    assert event["event_type"] == "push"
    assert event["payload"]["event"] == "push"
    assert event["payload"]["sender"] == "webhook-worker send"
    assert "x-signature" not in event["headers"]
    assert [attempt["attempt"] for attempt in event["attempts"]] == [1]
    assert items[0]["id"] in cli.ok("events", "show", items[0]["id"])

    again = cli.ok("send", "demo", "--url", url)  # a fresh sample: not a duplicate
    assert "202" in again and "accepted" in again

    def both_stored() -> list[Any] | None:
        items: list[Any] = cli.json("events", "list")["items"]
        return items if len(items) == 2 else None

    newest, oldest = eventually_sync(both_stored, within=30, what="the second event", interval=0.05)
    assert oldest["id"] == event["id"]
    first_page = cli.ok("events", "list", "--limit", "1")
    assert newest["id"] in first_page and oldest["id"] not in first_page
    hint = first_page.strip().splitlines()[-1]
    assert hint.startswith("more: webhook-worker events list --limit 1 --cursor ")
    page = cli.json("events", "list", "--limit", "1", "--cursor", hint.rsplit(" ", 1)[1])
    assert [item["id"] for item in page["items"]] == [oldest["id"]]
    assert page["next_cursor"] is None

    assert "no tool 'ghost'" in one_line_error(cli("send", "ghost"))

    cli.ok("tools", "update", "demo", "--disable")

    def refused() -> subprocess.CompletedProcess[str] | None:
        result = cli("send", "demo")
        return result if result.returncode != 0 else None

    result = eventually_sync(
        refused, within=30, what="the running server to see the tool disabled", interval=0.05
    )
    assert result.returncode == 1
    assert "403" in result.stdout

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
