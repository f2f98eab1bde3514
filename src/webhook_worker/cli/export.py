"""What ``webhook-worker events export`` writes: the NDJSON of ``GET /api/v1/events/export``
(api/export.py), read from the database in batches and written as each arrives, with a progress
bar on stderr.

A file is written under a temporary name beside it and renamed when complete, readable by its
owner only (events hold whatever providers sent): an export that fails leaves no file that
looks whole.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from webhook_worker.api.export import ndjson_chunk
from webhook_worker.cli.common import errors
from webhook_worker.cli.plain import safe_json_text
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import EventFilter, EventStore

Write = Callable[[bytes], object]


async def export_events(db: Database, where: EventFilter, output: Path | None) -> int:
    """Write every event matching ``where`` to ``output`` (stdout when None); returns how
    many. The total for the progress bar is counted first."""
    store = EventStore(db)
    total = await store.count(where)
    written = 0
    progress = Progress(
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        disable=not errors.is_terminal,
    )
    with _sink(output) as write, progress:
        task = progress.add_task("export", total=total)
        async for batch in store.batches(where):
            write(ndjson_chunk(batch))
            written += len(batch)
            progress.update(task, completed=written)
    return written


@contextmanager
def _sink(output: Path | None) -> Iterator[Write]:
    if output is None:
        yield _stdout_writer(sys.stdout.buffer, sys.stdout.isatty())
        sys.stdout.flush()
        return
    partial = output.with_name(output.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(descriptor, "wb") as file:
            yield file.write
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _stdout_writer(stream: BinaryIO, terminal: bool) -> Write:
    if not terminal:
        return stream.write

    def write(chunk: bytes) -> None:
        # The same JSON with the controls a terminal would act on escaped (cli/plain.py).
        stream.write(safe_json_text(chunk.decode()).encode())

    return write
