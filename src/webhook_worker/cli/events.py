"""``webhook-worker events``: list, inspect, replay, purge and export stored events, straight
from the database.

Filters, pagination and rules are the management API's (``/api/v1/events``): newest first, and a
cursor to continue where a page ended; a replay to one destination only to a destination the
tool delivers to. ``replay`` puts events back on the queue, and ``purge`` makes the queue forget
the deleted events' delivery ids, so both need the queue as well as the database (Redis when
REDIS_ADDR is set); their ``--dry-run`` only counts, from the database. ``purge`` is in
cli/purge.py, on these options and filters.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from webhook_worker.api.cursor import next_cursor
from webhook_worker.api.views import event_view, page_view
from webhook_worker.cli.common import (
    confirm,
    console,
    errors,
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
from webhook_worker.cli.display import delivered_summary, describe_event, event_status, short_time
from webhook_worker.cli.export import export_events
from webhook_worker.cli.plain import plain
from webhook_worker.clock import parse_time
from webhook_worker.config import Settings, parse_duration
from webhook_worker.errors import BadRequestError, ConflictError, QueueUnavailableError
from webhook_worker.runtime import StartupError, open_runtime
from webhook_worker.storage.events import MAX_PAGE, MAX_SEARCH, EventFilter, EventStore
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.service import ToolService
from webhook_worker.vocabulary import EventStatus

app = typer.Typer(
    help="List, inspect, replay, purge and export stored events.", no_args_is_help=True
)

DESTINATION_OPTION = "--destination"

ToolOpt = Annotated[str | None, typer.Option("--tool", help="Only this tool's events.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Only this event type.")]
StatusOpt = Annotated[
    str | None, typer.Option("--status", help=f"One of {', '.join(tuple(EventStatus))}.")
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Received at or after: ISO 8601 time, or e.g. 2h (ago)."),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Received before: ISO 8601 time, or e.g. 30m.")
]
DeliveryOpt = Annotated[
    str | None, typer.Option("--delivery-id", help="Only the event with this delivery id.")
]
SearchOpt = Annotated[
    str | None,
    typer.Option(
        "--search",
        help="Only events whose body contains this text (case-sensitive; reads every body "
        "the other filters leave: narrow it with --tool, --since, --until).",
    ),
]


@contextmanager
def pipeline_errors() -> Iterator[None]:
    """:func:`user_errors`, plus what sending work through the pipeline again can meet: a
    conflict (409 in the API), a destination the tool does not have (400), an unreachable
    queue or database. One line each, exit 1."""
    with user_errors():
        try:
            yield
        except (ConflictError, BadRequestError) as exc:
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
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    delivery_id: DeliveryOpt = None,
    search: SearchOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_PAGE, help="Events per page.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue after the page that printed it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List events, newest first."""
    where = event_filter(
        tool, event_type, status, since, until, delivery_id=delivery_id, search=search
    )
    settings = load_settings(quiet_logs=True)
    page = read_page(settings, cursor, lambda db, after: EventStore(db).list(where, limit, after))
    if as_json:
        print_json(page_view(page, event_view))
        return
    if not page.items:
        console.print("no events" + (" match" if cursor or where != EventFilter() else " yet"))
        return
    table = Table("id", "tool", "type", "delivery id", "status", "deliveries", "received")
    table.columns[0].no_wrap = True
    for item in page.items:
        table.add_row(
            plain(item.id),
            plain(item.tool_id),
            plain(item.event_type or ""),
            plain(item.delivery_id),
            event_status(item.status),
            delivered_summary(item.deliveries),
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
            ("--delivery-id", delivery_id),
            ("--search", shlex.quote(search) if search else None),
        ]
        print_next_page("webhook-worker events list", filters, limit, more)


@app.command()
def show(
    event_id: Annotated[
        str, typer.Argument(metavar="EVENT_ID", help="The event id (from `events list`).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show one event: headers, payload, each destination's delivery and every attempt."""
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
        str | None,
        typer.Argument(
            metavar="EVENT_ID",
            help="One event (from `events list`); leave out to replay by filter.",
        ),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            DESTINATION_OPTION, help="Only the delivery to this destination (else to every one)."
        ),
    ] = None,
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    delivery_id: DeliveryOpt = None,
    search: SearchOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count the events a replay by filter would send.")
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Replay by filter without asking (required off a terminal)."
        ),
    ] = False,
) -> None:
    """Process one event again from its stored body, whatever its status (a new attempt), or
    every event of a tool matching the filters; to every destination, or to one.

    Replaying `ignored` events evaluates the filters as they are now, so a destination added
    since gets them. Example: webhook-worker events replay --tool github --status ignored
    --destination ci --yes
    """
    filtered = any(value for value in (tool, event_type, status, since, until, delivery_id, search))
    if event_id is not None:
        if filtered or dry_run or yes:
            fail(
                "give either an event ID or filters (--tool, --type, ...), not both; "
                "--dry-run and --yes are for a replay by filter",
                2,
            )
        _replay_one(load_settings(quiet_logs=True), event_id, destination or None)
        return
    if not tool:
        fail(
            "say what to replay: an event ID, or --tool with any of --type, --status, "
            "--since, --until, --delivery-id, --search",
            2,
        )
    where = event_filter(
        tool, event_type, status, since, until, delivery_id=delivery_id, search=search
    )
    settings = load_settings(quiet_logs=True)
    _replay_matching(settings, tool, where, destination or None, dry_run=dry_run, yes=yes)


@app.command()
def export(
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    delivery_id: DeliveryOpt = None,
    search: SearchOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write to this file (else to stdout)."),
    ] = None,
) -> None:
    """Write every event matching the filters to a file or stdout as NDJSON: one event per
    line as `events show --json` shows it, oldest first, as GET /api/v1/events/export does.
    Events received while it runs are left out.

    Example: webhook-worker events export --tool github --since 24h --output github.jsonl
    """
    where = event_filter(
        tool, event_type, status, since, until, delivery_id=delivery_id, search=search
    ).ending_by(datetime.now(UTC))
    settings = load_settings(quiet_logs=True)
    try:
        with user_errors():
            exported = with_database(settings, lambda db: export_events(db, where, output))
    except OSError as exc:
        fail(f"cannot write {output or 'stdout'}: {exc.strerror or exc}", 1)
    errors.print(plain(f"exported {event_count(exported)} to {output or 'stdout'}"), soft_wrap=True)


def event_filter(
    tool: str | None,
    event_type: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    *,
    delivery_id: str | None = None,
    search: str | None = None,
) -> EventFilter:
    """The filter the options name, or exit 2 with the line naming the bad option."""
    if status is not None and status not in tuple(EventStatus):
        fail(f"--status: expected one of {', '.join(tuple(EventStatus))}, got {status!r}", 2)
    if search is not None and len(search) > MAX_SEARCH:
        fail(f"--search: at most {MAX_SEARCH} characters (got {len(search)})", 2)
    return EventFilter(
        tool_id=tool or None,
        event_type=event_type or None,
        status=EventStatus(status) if status is not None else None,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        delivery_id=delivery_id or None,
        search=search or None,
    )


def _replay_one(settings: Settings, event_id: str, destination: str | None) -> None:
    async def requeue() -> None:
        async with open_runtime(settings) as runtime:
            if destination is not None:
                event = await runtime.events.get(event_id)
                await runtime.tool_service.check_destination(
                    event.tool_id, destination, DESTINATION_OPTION
                )
            await runtime.replayer.replay_event(event_id, destination)

    with pipeline_errors():
        run_async(requeue())
    to = f" to destination {destination}" if destination is not None else ""
    console.print(
        plain(
            f"requeued event {event_id}{to}: follow it with `webhook-worker events show {event_id}`"
        ),
        soft_wrap=True,
    )


def _replay_matching(
    settings: Settings,
    tool: str,
    where: EventFilter,
    destination: str | None,
    *,
    dry_run: bool,
    yes: bool,
) -> None:
    """Count, confirm, then requeue. The count and the replay share an end time (now, unless
    --until is earlier), so what is replayed is what was counted and confirmed: events received
    meanwhile are left alone. The queue is opened before anyone is asked anything, so an
    unreachable one is reported first; a dry run needs only the database."""
    described = _event_summary(where, destination)
    where = where.ending_by(datetime.now(UTC))

    async def count(tools: ToolService, events: EventStore) -> int:
        if destination is not None:
            await tools.check_destination(tool, destination, DESTINATION_OPTION)
        return await events.count(where)

    if dry_run:
        with pipeline_errors():
            matched = with_database(
                settings,
                lambda db: count(
                    ToolService(ToolStore.from_settings(db, settings)), EventStore(db)
                ),
            )
        console.print(
            plain(f"would replay {event_count(matched)} ({described}); dry run: nothing changed"),
            soft_wrap=True,
        )
        return

    async def go() -> int:
        async with open_runtime(settings) as runtime:
            matched = await count(runtime.tool_service, runtime.events)
            if matched == 0:
                return 0
            if not yes:
                confirm(
                    f"Replay {event_count(matched)} ({described})?",
                    f"replaying {event_count(matched)} ({described})",
                )
            return await runtime.replayer.replay_matching(where, destination)

    with pipeline_errors():
        requeued = run_async(go())
    if requeued == 0:
        console.print(plain(f"requeued 0: no events match ({described})"), soft_wrap=True)
    else:
        console.print(f"requeued {requeued}", highlight=False)


def event_count(count: int) -> str:
    return f"{count} event{'s' if count != 1 else ''}"


def _event_summary(where: EventFilter, destination: str | None) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (
            ("tool", where.tool_id),
            ("type", where.event_type),
            ("status", where.status),
            ("since", where.since.isoformat() if where.since else None),
            ("until", where.until.isoformat() if where.until else None),
            ("delivery id", where.delivery_id),
            ("body containing", repr(where.search) if where.search else None),
        )
        if value
    ]
    parts.append(f"to destination {destination}" if destination else "to every destination")
    return ", ".join(parts)
