"""What every sub-command shares: settings, one-line errors, running a coroutine."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from webhook_worker.api.cursor import decode_cursor
from webhook_worker.cli.plain import json_dumps, plain, printable
from webhook_worker.config import Settings
from webhook_worker.errors import (
    ConfigError,
    DatabaseUnavailableError,
    NotFoundError,
    ToolConfigError,
)
from webhook_worker.observability.logging import configure
from webhook_worker.runtime import database
from webhook_worker.storage.database import Database
from webhook_worker.storage.rows import Page
from webhook_worker.storage.tools import ToolStore

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line (no traceback) and exit. ``message`` is printed as plain text: it often
    quotes a value given on the command line, read from a file or stored."""
    errors.print(Text.assemble(("error:", "bold red"), " ", printable(message)), soft_wrap=True)
    sys.exit(code)


def confirm(question: str, refused: str) -> None:
    """Ask ``question`` on a terminal (no aborts); off one, fail with "not ``refused`` without
    confirmation" (a script must say --yes)."""
    if not sys.stdin.isatty():
        fail(f"not {refused} without confirmation: pass --yes", 1)
    typer.confirm(printable(question), abort=True)


def load_settings(*, quiet_logs: bool = False) -> Settings:
    """Settings from the environment, or exit 2 with the one line naming the bad variable."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(f"bad configuration: {exc}")
    configure(
        "warning" if quiet_logs and settings.log_level == "info" else settings.log_level,
        settings.log_format,
    )
    return settings


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


@contextmanager
def user_errors(doing: str | None = None) -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit 1."""
    try:
        yield
    except ToolConfigError as exc:
        # One line even when the detail has several (JMESPath errors draw a caret).
        detail = " ".join(str(exc).split())
        fail(f"{doing}: {detail}" if doing else detail, 1)
    except NotFoundError as exc:
        fail(str(exc), 1)
    except DatabaseUnavailableError as exc:
        fail(str(exc), 1)


def with_database(settings: Settings, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``action`` on the configured database (reachable and migrated)."""

    async def go() -> T:
        async with database(settings) as db:
            return await action(db)

    return run_async(go())


def with_store(settings: Settings, action: Callable[[ToolStore], Awaitable[T]]) -> T:
    """Run ``action`` on the tool store of the configured (migrated) database. Secrets are
    encrypted with SECRETS_KEY on the way in and decrypted on the way out."""
    return with_database(settings, lambda db: action(ToolStore.from_settings(db, settings)))


def read_page(
    settings: Settings,
    cursor: str | None,
    read: Callable[[Database, str | None], Awaitable[Page[T]]],
) -> Page[T]:
    """The page of a list command that follows the page which printed ``cursor`` (the first
    without one); ``read`` gets the position the cursor stands for. User errors end the
    command with one line; a malformed ``--cursor`` with exit code 2."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        fail(f"--{exc}", 2)
    with user_errors():
        return with_database(settings, lambda db: read(db, after))


def print_table(table: Table) -> None:
    """A table; piped to a file or another program it is as wide as it needs (nothing cut)."""
    if console.is_terminal:
        console.print(table)
        return
    needed = console.measure(table, options=console.options.update_width(10_000)).maximum
    Console(width=max(console.width, needed)).print(table)


def api_url(settings: Settings) -> str:
    """``http://host:port`` of the API this configuration serves (API_ADDR)."""
    host, port = settings.api_addr
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def print_json(data: Any) -> None:
    """Plain JSON on stdout for scripts (no colours, no wrapping; the same data with controls
    escaped, as everything the CLI prints)."""
    sys.stdout.write(json_dumps(data) + "\n")


def read_document(path: str) -> Any:
    """A JSON or YAML file (``-`` is stdin), or exit with one line saying what is wrong."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {name}: {getattr(exc, 'strerror', None) or exc}", 1)
    if path.endswith(".json"):
        return parse_json_text(text, name)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        fail(f"{name} is not valid YAML or JSON: {_yaml_problem(exc)}", 1)


def parse_json_text(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{name} is not valid JSON: {exc}", 1)


class _Loader(yaml.SafeLoader):
    """Safe YAML that keeps ``2024-01-15`` a string: tool fields are JSON types only."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).splitlines()[0]


def print_next_page(
    command: str, filters: list[tuple[str, str | None]], limit: int, cursor: str
) -> None:
    """The command line that prints the next page, with the same filters."""
    again = [command, *(f"{option} {value}" for option, value in filters if value)]
    if limit != 50:
        again.append(f"--limit {limit}")
    again.append(f"--cursor {cursor}")
    console.print(plain(f"more: {' '.join(again)}"), soft_wrap=True)
