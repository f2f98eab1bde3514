"""``webhook-worker dlq``: list, inspect, retry and discard dead letters, straight from the
database.

Filters, pagination and rules are the management API's (``/api/v1/dlq``): newest first, a
cursor to continue where a page ended; only ``pending`` or ``discarded`` dead letters can be
retried one by one, and a bulk retry takes the ``pending`` ones. A dead letter of a delivery
names its destination, and retrying it sends that delivery alone. Retrying puts events back on
the queue, so ``retry`` needs the queue as well as the database (Redis when REDIS_ADDR is set);
``retry --dry-run`` only counts, from the database.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from webhook_worker.api.cursor import next_cursor
from webhook_worker.api.views import dead_letter_view, page_view
from webhook_worker.cli.common import (
    confirm,
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
from webhook_worker.cli.display import describe_event, short_time
from webhook_worker.cli.events import parse_when, pipeline_errors
from webhook_worker.cli.plain import plain
from webhook_worker.clock import iso
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import (
    DeadLetterFilter,
    DeadLetterStore,
)
from webhook_worker.storage.events import MAX_PAGE, EventStore
from webhook_worker.storage.rows import DeadLetterRow, EventRow
from webhook_worker.vocabulary import DeadLetterStatus

app = typer.Typer(help="List, inspect, retry and discard dead letters.", no_args_is_help=True)

BULK_CHUNK = 100
"""Dead letters requeued per call in a bulk retry: small enough for the bar to move."""

_STATUS_STYLES: dict[str, str] = {
    DeadLetterStatus.PENDING: "red",
    DeadLetterStatus.RETRYING: "yellow",
    DeadLetterStatus.RESOLVED: "green",
    DeadLetterStatus.DISCARDED: "dim",
}

ToolOpt = Annotated[str | None, typer.Option("--tool", help="Only this tool's dead letters.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Only this event type.")]
ClassOpt = Annotated[
    str | None,
    typer.Option("--class", help="Only this error class (e.g. http_4xx, timeout)."),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Created at or after: ISO 8601 time, or e.g. 2h (ago)."),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Created before: ISO 8601 time, or e.g. 30m.")
]
DestinationOpt = Annotated[
    str | None,
    typer.Option("--destination", help="Only the dead letters of this destination's deliveries."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="The dead letter id (from `dlq list`).")]


@app.command("list")
def list_dead_letters(
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    error_class: ClassOpt = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"One of {', '.join(tuple(DeadLetterStatus))}.")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    destination: DestinationOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_PAGE, help="Dead letters per page.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue after the page that printed it.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters, newest first."""
    if status is not None and status not in tuple(DeadLetterStatus):
        fail(f"--status: expected one of {', '.join(tuple(DeadLetterStatus))}, got {status!r}", 2)
    where = _filter(tool, event_type, error_class, since, until, destination, status=status)
    settings = load_settings(quiet_logs=True)
    page = read_page(
        settings, cursor, lambda db, after: DeadLetterStore(db).list(where, limit, after)
    )
    if as_json:
        print_json(page_view(page, dead_letter_view))
        return
    if not page.items:
        console.print(
            "no dead letters" + (" match" if cursor or where != DeadLetterFilter() else " yet")
        )
        return
    table = Table(
        "id",
        "event id",
        "tool",
        "destination",
        "type",
        "error class",
        "retries",
        "status",
        "created",
    )
    table.columns[0].no_wrap = True  # what `dlq show` and `dlq retry` take: never cut
    for item in page.items:
        table.add_row(
            plain(item.id),
            plain(item.event_id),
            plain(item.tool_id),
            plain(item.destination_id or ""),
            plain(item.event_type or ""),
            plain(item.error_class or ""),
            str(item.retry_count),
            _styled(item.status),
            short_time(item.created_at),
        )
    print_table(table)
    if more := next_cursor(page):
        filters = [
            ("--tool", tool),
            ("--type", event_type),
            ("--class", error_class),
            ("--status", status),
            ("--since", since),
            ("--until", until),
            ("--destination", destination),
        ]
        print_next_page("webhook-worker dlq list", filters, limit, more)


@app.command()
def show(dead_letter_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show a dead letter with its event: payload, headers and every attempt."""
    settings = load_settings(quiet_logs=True)

    async def load(db: Database) -> tuple[DeadLetterRow, EventRow]:
        letter = await DeadLetterStore(db).get(dead_letter_id)
        return letter, await EventStore(db).get(letter.event_id)

    with user_errors():
        letter, event = with_database(settings, load)
    if as_json:
        print_json(dead_letter_view(letter, event))
        return
    console.print(_describe(letter, event))


@app.command()
def retry(
    dead_letter_id: Annotated[
        str | None,
        typer.Argument(metavar="ID", help="One dead letter; leave out to retry by filter."),
    ] = None,
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    error_class: ClassOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    destination: DestinationOpt = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every pending dead letter (no filter).")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Count the pending dead letters a retry would send."),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Retry by filter without asking (required off a terminal)."
        ),
    ] = False,
) -> None:
    """Retry one dead letter by ID, or every pending one matching the filters.

    Example: webhook-worker dlq retry --tool github --destination ci --class http_5xx --yes
    """
    filtered = any(value for value in (tool, event_type, error_class, since, until, destination))
    if dead_letter_id is not None:
        if filtered or every or dry_run:
            fail(
                "give either a dead letter ID or filters (--tool, --type, ...), not both; "
                "--dry-run is for a retry by filter",
                2,
            )
        _retry_one(load_settings(quiet_logs=True), dead_letter_id)
        return
    if not filtered and not every:
        fail(
            "say what to retry: a dead letter ID, filters (--tool, --type, --class, --since, "
            "--until, --destination), or --all",
            2,
        )
    where = _filter(tool, event_type, error_class, since, until, destination)
    settings = load_settings(quiet_logs=True)
    if dry_run:
        _count_matching(settings, where)
    else:
        _retry_matching(settings, where, yes)


@app.command()
def discard(dead_letter_id: IdArg) -> None:
    """Mark a dead letter discarded (no automatic retry; `dlq retry ID` still can)."""
    settings = load_settings(quiet_logs=True)

    with user_errors():
        letter = with_database(settings, lambda db: DeadLetterStore(db).discard(dead_letter_id))
    console.print(plain(f"discarded dead letter {letter.id} (event {letter.event_id})"))


def _retry_one(settings: Settings, dead_letter_id: str) -> None:
    async def go() -> DeadLetterRow:
        async with open_runtime(settings) as runtime:
            return await runtime.replayer.retry_dead_letter(dead_letter_id)

    with pipeline_errors():
        event_id = run_async(go()).event_id
    console.print(
        plain(
            f"requeued dead letter {dead_letter_id} (event {event_id}): follow it with "
            f"`webhook-worker events show {event_id}`"
        ),
        soft_wrap=True,
    )


def _count_matching(settings: Settings, where: DeadLetterFilter) -> None:
    """What a bulk retry would send round, counted the way it counts (pending ones only)."""
    pending = replace(where, status=DeadLetterStatus.PENDING)
    with user_errors():
        matched = with_database(settings, lambda db: DeadLetterStore(db).count(pending))
    console.print(
        plain(f"would retry {_pending(matched)} ({_summary(where)}); dry run: nothing changed"),
        soft_wrap=True,
    )


def _pending(count: int) -> str:
    return f"{count} pending dead letter{'s' if count != 1 else ''}"


def _retry_matching(settings: Settings, where: DeadLetterFilter, yes: bool) -> None:
    """Count, confirm, then requeue in chunks with a progress bar.

    The queue is opened first, so an unreachable one is reported before anyone is asked
    anything. At most the number counted up front is requeued: a retried dead letter that
    fails again at once is ``pending`` again, and without the cap a fast-failing target would
    keep this loop sending the same events round and round.
    """
    progress = Progress(
        TextColumn("requeueing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    requeued = 0
    started = False

    async def go() -> int:
        nonlocal requeued, started
        async with open_runtime(settings) as runtime:
            total = await runtime.replayer.count_matching(where)
            if total == 0:
                return 0
            described = f"{_pending(total)} ({_summary(where)})"
            if not yes:
                confirm(f"Retry {described}?", f"retrying {described}")
            started = True
            started_at = datetime.now(UTC)
            replayer = runtime.replayer
            with progress:
                task = progress.add_task("requeue", total=total)
                while requeued < total:
                    chunk = await replayer.retry_matching(
                        where, min(BULK_CHUNK, total - requeued), before=started_at
                    )
                    if chunk == 0:
                        break
                    requeued += chunk
                    progress.update(task, completed=requeued)
            return total

    try:
        with pipeline_errors():
            total = run_async(go())
    except BaseException:
        if started:  # what was requeued before the error stays requeued: say how much
            console.print(f"requeued {requeued} before stopping", highlight=False)
        raise
    if total == 0:
        console.print("requeued 0: no pending dead letters match", highlight=False)
    else:
        console.print(f"requeued {requeued}", highlight=False)


def _filter(
    tool: str | None,
    event_type: str | None,
    error_class: str | None,
    since: str | None,
    until: str | None,
    destination: str | None,
    status: str | None = None,
) -> DeadLetterFilter:
    return DeadLetterFilter(
        tool_id=tool or None,
        event_type=event_type or None,
        error_class=error_class or None,
        status=DeadLetterStatus(status) if status is not None else None,
        since=parse_when(since, "--since"),
        until=parse_when(until, "--until"),
        destination_id=destination or None,
    )


def _summary(where: DeadLetterFilter) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (
            ("tool", where.tool_id),
            ("destination", where.destination_id),
            ("type", where.event_type),
            ("class", where.error_class),
            ("since", where.since.isoformat() if where.since else None),
            ("until", where.until.isoformat() if where.until else None),
        )
        if value
    ]
    return ", ".join(parts) or "all"


def _styled(status: str) -> Text:
    return plain(status, _STATUS_STYLES.get(status, ""))


def _describe(letter: DeadLetterRow, event: EventRow) -> Group:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    retryable = "retryable" if letter.retryable else "not retryable"
    for label, value in (
        ("dead letter", letter.id),
        ("destination", letter.destination_id or "- (the event itself failed)"),
        ("status", _styled(letter.status)),
        ("error class", f"{letter.error_class} ({retryable})"),
        ("error", letter.error or "-"),
        ("retries", str(letter.retry_count)),
        ("created", iso(letter.created_at) or "-"),
        ("last retry", iso(letter.last_retry_at) or "-"),
        ("next auto retry", iso(letter.next_retry_at) or "-"),
    ):
        summary.add_row(label, value if isinstance(value, Text) else plain(value))
    return Group(summary, "", "[bold]event[/]", describe_event(event))
