"""Stored data reaches the operator's terminal as plain text.

Events, dead letters and tools are stored with values a sender (or a file) chose: rich markup
(``[/]`` ends a command with a markup error, ``[bold red]`` styles the terminal) and terminal
controls (``ESC [2J`` clears the screen, ``\\r`` rewrites the line, a C1 CSI, a bidi override).
The real ``webhook-worker`` command, as a subprocess, must print them literally, visibly escaped,
and exit 0. Its stdout is a pipe, so rich adds no escape sequences of its own: any ESC byte in
the output came from the data.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert

from tests.cli.test_cli import Cli, clean_env, one_line_error
from tests.storage.support import BASE_TIME, event_id, event_record, letter_id, letter_record, seed
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import tools

MARKUP = "[bold red]x[/]"
CLOSE = "[/]"
CONTROLS = "a\x1b[2Jb\rc\x9bd\u202ee"
SHOWN = "a\\x1b[2Jb\\rc\\x9bd\\u202ee"  # CONTROLS as the CLI prints them
RAW = ("\x1b", "\r", "\x9b", "\u202e", "\x07")


def assert_plain(output: str) -> None:
    for char in RAW:
        assert char not in output, f"{char!r} reached the terminal: {output!r}"


async def _seed(url: str) -> None:
    db = Database.from_url(url)
    try:
        await seed(
            db,
            [
                event_record(
                    1,
                    tool_id="evil",
                    event_type=MARKUP,
                    delivery_id=f"{CLOSE}{CONTROLS}",
                    headers={"x-markup": MARKUP, "x-close": CLOSE, "x-controls": CONTROLS},
                    body=f"not json {MARKUP} {CONTROLS}".encode(),
                ),
            ],
            [
                {
                    "event_id": event_id(1),
                    "attempt": 1,
                    "started_at": BASE_TIME,
                    "duration_ms": 1.5,
                    "outcome": "failed",
                    "error_class": "http_4xx",
                    "error": f"target said {CLOSE} \x1b]0;pwned\x07",
                    "http_status": 400,
                }
            ],
            [
                letter_record(
                    1,
                    tool_id="evil",
                    event_type=MARKUP,
                    error=f"{MARKUP} {CONTROLS}",
                    error_class=CLOSE,
                )
            ],
        )
        # A tool row as an older version or a hand edit may have left it: not validated.
        now = datetime.now(UTC)
        async with db.begin() as conn:
            await conn.execute(
                insert(tools).values(
                    id="evil[/]",
                    provider=MARKUP,
                    enabled=False,
                    config={"id": "evil[/]", "provider": MARKUP, "mode": CONTROLS},
                    created_at=now,
                    updated_at=now,
                )
            )
    finally:
        await db.close()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    path = tmp_path_factory.mktemp("plain") / "hostile.db"
    cli = Cli(clean_env(DATABASE_URL=f"sqlite:///{path}"))
    cli.ok("migrate")
    asyncio.run(_seed(f"sqlite+aiosqlite:///{path}"))
    description = json.dumps({"description": f"{MARKUP} {CLOSE} {CONTROLS}"})
    cli.ok("tools", "add", "described", "--json", description)
    return cli


def test_events_list_and_show_print_data_literally(cli: Cli) -> None:
    listed = cli.ok("events", "list")
    assert MARKUP in listed and f"{CLOSE}{SHOWN}" in listed
    assert_plain(listed)

    shown = cli.ok("events", "show", event_id(1))
    for text in (MARKUP, CLOSE, SHOWN, f"not json {MARKUP} {SHOWN}", "\\x1b]0;pwned\\x07"):
        assert text in shown, text
    assert "x-markup" in shown and "x-close" in shown
    assert_plain(shown)


def test_dlq_list_and_show_print_data_literally(cli: Cli) -> None:
    listed = cli.ok("dlq", "list")
    assert MARKUP in listed and CLOSE in listed
    assert_plain(listed)

    shown = cli.ok("dlq", "show", letter_id(1))
    assert f"{MARKUP} {SHOWN}" in shown
    assert f"{CLOSE} (not retryable)" in shown
    assert f"not json {MARKUP} {SHOWN}" in shown  # the event under it
    assert_plain(shown)


def test_tools_list_and_show_print_data_literally(cli: Cli) -> None:
    listed = cli.ok("tools", "list")
    assert "evil[/]" in listed and MARKUP in listed and SHOWN in listed
    assert_plain(listed)

    shown = cli.ok("tools", "show", "described")
    # JSON escapes ESC and CR itself; the C1 CSI and the bidi override it would leave raw.
    assert MARKUP in shown and "\\u001b[2J" in shown and "\\u009bd\\u202ee" in shown
    assert_plain(shown)
    assert_plain(cli.ok("tools", "show", "evil[/]"))

    # --json: the same data, with those escaped as JSON escapes
    scripted = cli.ok("tools", "show", "described", "--json")
    assert json.loads(scripted)["description"] == f"{MARKUP} {CLOSE} {CONTROLS}"
    assert_plain(scripted)
    assert_plain(cli.ok("events", "show", event_id(1), "--json"))


def test_errors_quoting_input_print_it_literally(cli: Cli) -> None:
    line = one_line_error(cli("tools", "add", "bad", "--provider", CLOSE))
    assert line.startswith("error: ") and CLOSE in line
    line = one_line_error(cli("events", "show", f"{MARKUP}{CONTROLS}"))
    assert MARKUP in line
    assert_plain(line)
    line = one_line_error(cli("tools", "add", "bad", "--json", f'{{"provider": "{MARKUP}"'))
    assert "--json" in line
