"""``webhook-worker events``: list, inspect and replay stored events, straight from the database.

Filters and pagination are the management API's (``GET /api/v1/events``): newest first, and a
cursor to continue where a page ended. ``replay`` puts an event back on the queue, so it needs
the queue as well as the database (Redis when REDIS_ADDR is set).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from webhook_worker.api.cursor import next_cursor
from webhook_worker.api.views import event_view, page_view
from webhook_worker.cli.common import (
    console,
    fail,
    load_settings,
    print_json,
    print_next_page,
    print_table,
    read_page,
    run_async,
    user_errors,
    with_database,
)
from webhook_worker.cli.plain import plain, plain_json
from webhook_worker.clock import iso, parse_time
from webhook_worker.config import parse_duration
from webhook_worker.errors import ConflictError, QueueUnavailableError
from webhook_worker.runtime import StartupError, open_runtime
from webhook_worker.storage.events import MAX_PAGE, EventFilter, EventStore
from webhook_worker.storage.rows import EventRow
from webhook_worker.vocabulary import EventStatus

app = typer.Typer(help="List, inspect and replay stored events.", no_args_is_help=True)

_STATUS_STYLES: dict[str, str] = {
    EventStatus.PROCESSED: "green",
    EventStatus.PENDING: "cyan",
    EventStatus.IGNORED: "dim",
    EventStatus.RETRYING: "yellow",
    EventStatus.DEAD: "red",
}


@contextmanager
def pipeline_errors() -> Iterator[None]:
    """:func:`user_errors`, plus what sending work through the pipeline again can meet: a
    conflict (409 in the API), an unreachable queue or database. One line each, exit 1."""
    with user_errors():
        try:
            yield
        except ConflictError as exc:
            fail(str(exc), 1)
        except QueueUnavailableError as exc:
            fail(f"the queue is unavailable: {_one_line(exc)}", 1)
        except StartupError as exc:
            fail(_one_line(exc), 1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def parse_when(raw: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: an ISO 8601 time, or a duration meaning that long ago (``2h``)."""
    if raw is None or not raw.strip():
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        try:
            ago = parse_duration(raw)
        except ValueError:
            fail(f"{option}: {exc}, or a duration ago such as 30m or 24h", 2)
        return datetime.now(UTC) - timedelta(seconds=ago)


@app.command("list")
def list_events(
    tool: Annotated[str | None, typer.Option("--tool", help="Only this tool's events.")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"One of {', '.join(tuple(EventStatus))}.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Received at or after: ISO 8601 time, or e.g. 2h (ago)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Received before: ISO 8601 time, or e.g. 30m.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_PAGE, help="Events per page.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue after the page that printed it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List events, newest first."""
    if status is not None and status not in tuple(EventStatus):
        fail(f"--status: expected one of {', '.join(tuple(EventStatus))}, got {status!r}", 2)
    where = EventFilter(
        tool_id=tool or None,
        event_type=event_type or None,
        status=EventStatus(status) if status is not None else None,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
    )
    settings = load_settings(quiet_logs=True)
    page = read_page(settings, cursor, lambda db, after: EventStore(db).list(where, limit, after))
    if as_json:
        print_json(page_view(page, event_view))
        return
    if not page.items:
        console.print("no events" + (" match" if cursor or where != EventFilter() else " yet"))
        return
    table = Table("id", "tool", "type", "delivery id", "status", "received")
    table.columns[0].no_wrap = True
    for item in page.items:
        table.add_row(
            plain(item.id),
            plain(item.tool_id),
            plain(item.event_type or ""),
            plain(item.delivery_id),
            _styled(item.status),
            short_time(item.received_at),
        )
    print_table(table)
    if more := next_cursor(page):
        filters = [
            ("--tool", tool),
            ("--type", event_type),
            ("--status", status),
            ("--since", since),
            ("--until", until),
        ]
        print_next_page("webhook-worker events list", filters, limit, more)


@app.command()
def show(
    event_id: Annotated[
        str, typer.Argument(metavar="EVENT_ID", help="The event id (from `events list`).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show one event: headers, payload and every processing attempt."""
    settings = load_settings(quiet_logs=True)

    with user_errors():
        event = with_database(settings, lambda db: EventStore(db).get(event_id))
    if as_json:
        print_json(event_view(event))
        return
    console.print(describe_event(event))


@app.command()
def replay(
    event_id: Annotated[
        str, typer.Argument(metavar="EVENT_ID", help="The event id (from `events list`).")
    ],
) -> None:
    """Process an event again from its stored body, whatever its status (a new attempt)."""
    settings = load_settings(quiet_logs=True)

    async def requeue() -> None:
        async with open_runtime(settings) as runtime:
            await runtime.replayer.replay_event(event_id)

    with pipeline_errors():
        run_async(requeue())
    console.print(
        plain(f"requeued event {event_id}: follow it with `webhook-worker events show {event_id}`"),
        soft_wrap=True,
    )


def describe_event(event: EventRow) -> Group:
    """An event for a terminal: summary, headers, payload (and raw payload), attempts. Every
    stored value is plain text (see :mod:`webhook_worker.cli.plain`)."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in (
        ("id", event.id),
        ("tool", event.tool_id),
        ("type", event.event_type or "-"),
        ("delivery id", event.delivery_id),
        ("status", _styled(event.status)),
        ("received", iso(event.received_at) or "-"),
        ("processed", iso(event.processed_at) or "-"),
    ):
        summary.add_row(label, value if isinstance(value, Text) else plain(value))

    headers = Table("header", "value", box=None, show_edge=False)
    for name, value in sorted(event.headers.items()):
        headers.add_row(plain(name), plain(value))

    attempts = Table("#", "started", "ms", "outcome", "http", "error class", "error")
    for attempt in event.attempts:
        attempts.add_row(
            str(attempt.attempt),
            iso(attempt.started_at) or "",
            f"{attempt.duration_ms:.1f}",
            plain(attempt.outcome),
            str(attempt.http_status or ""),
            plain(attempt.error_class or ""),
            plain(attempt.error or ""),
        )

    shown = event_view(event)  # payload and raw payload by the API's rule
    parts: list[Any] = [
        summary,
        Panel(headers, title="headers", title_align="left"),
        Panel(_body(shown["payload"]), title="payload", title_align="left"),
    ]
    if "raw_payload" in shown:
        parts.append(Panel(_body(shown["raw_payload"]), title="raw payload", title_align="left"))
    parts.append(attempts if event.attempts else "no attempts recorded yet")
    return Group(*parts)


def _styled(status: EventStatus) -> Text:
    return plain(status, _STATUS_STYLES.get(status, ""))


def _body(value: Any) -> RenderableType:
    return plain(value) if isinstance(value, str) else plain_json(value)


def short_time(value: datetime) -> str:
    """``2024-01-15 10:30:00Z`` (to the second, for tables)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
