"""``webhook-worker events purge``: delete the events a filter matches, with everything stored
about them, after showing how many (registered on the ``events`` app by cli/__init__.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from webhook_worker.cli.common import (
    confirm,
    console,
    fail,
    load_settings,
    run_async,
    with_database,
)
from webhook_worker.cli.events import (
    DeliveryOpt,
    SearchOpt,
    SinceOpt,
    StatusOpt,
    ToolOpt,
    TypeOpt,
    UntilOpt,
    event_count,
    event_filter,
    pipeline_errors,
)
from webhook_worker.cli.plain import plain
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage import purge as purging
from webhook_worker.storage.erase import Deleted
from webhook_worker.storage.events import EventFilter


def purge(
    tool: ToolOpt = None,
    event_type: TypeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    delivery_id: DeliveryOpt = None,
    search: SearchOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count the events a purge would delete.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete without asking (required off a terminal).")
    ] = False,
) -> None:
    """Delete every event matching the filters (at least one), with its attempts, deliveries,
    dead letters and de-duplication key: a delivery id erased is accepted as new when sent
    again. Counts first and asks; shows a progress bar while deleting.

    Example (erase one delivery): webhook-worker events purge --tool github --delivery-id
    72d3162e-cc78-11e3-81ab-4c9367dc0958 --yes
    """
    where = event_filter(
        tool, event_type, status, since, until, delivery_id=delivery_id, search=search
    )
    if where == EventFilter():
        fail(
            "say what to purge: at least one of --tool, --type, --status, --since, --until, "
            "--delivery-id, --search",
            2,
        )
    settings = load_settings(quiet_logs=True)
    described = _purge_summary(where)
    if dry_run:
        with pipeline_errors():
            matched = with_database(settings, lambda db: purging.count(db, where))
        console.print(
            plain(f"would delete {event_count(matched)} ({described}); dry run: nothing changed"),
            soft_wrap=True,
        )
        return
    _purge_matching(settings, where, described, yes)


def _purge_matching(settings: Settings, where: EventFilter, described: str, yes: bool) -> None:
    """Count, confirm, then delete in chunks with a progress bar. The count and the purge share
    an end time (now, unless --until is earlier), so what is deleted is what was confirmed:
    events received meanwhile are left alone. The queue (which forgets the delivery ids) is
    opened before anyone is asked anything, so an unreachable one is reported first."""
    where = where.ending_by(datetime.now(UTC))
    progress = Progress(
        TextColumn("deleting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    deleted = 0
    started = False

    async def go() -> int:
        nonlocal deleted, started
        async with open_runtime(settings) as runtime:
            total = await purging.count(runtime.db, where)
            if total == 0:
                return 0
            if not yes:
                confirm(
                    f"Delete {event_count(total)} ({described})? This cannot be undone.",
                    f"deleting {event_count(total)} ({described})",
                )
            started = True
            with progress:
                task = progress.add_task("delete", total=total)

                async def chunk_done(chunk: Deleted) -> None:
                    nonlocal deleted
                    await runtime.queue.forget_delivery_ids(chunk.keys, chunk.replay_keys)
                    deleted += chunk.events
                    progress.update(task, completed=deleted)

                await runtime.tools.load()  # whose bodies ingest keeps replay keys of
                await purging.purge(runtime.db, where, chunk_done, runtime.tools.replay_keys)
            return total

    try:
        with pipeline_errors():
            total = run_async(go())
    except BaseException:
        if started:  # what was deleted before the error stays deleted: say how much
            console.print(f"deleted {event_count(deleted)} before stopping", highlight=False)
        raise
    if total == 0:
        console.print(plain(f"deleted 0 events: none match ({described})"), soft_wrap=True)
    else:
        console.print(f"deleted {event_count(deleted)}", highlight=False)


def _purge_summary(where: EventFilter) -> str:
    parts = [
        f"{name} {value!r}" if name == "search" else f"{name} {value}"
        for name, value in (
            ("tool", where.tool_id),
            ("type", where.event_type),
            ("status", where.status),
            ("delivery id", where.delivery_id),
            ("search", where.search),
            ("since", where.since.isoformat() if where.since else None),
            ("until", where.until.isoformat() if where.until else None),
        )
        if value
    ]
    return ", ".join(parts)
