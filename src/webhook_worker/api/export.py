"""``GET /api/v1/events/export``: every event a filter matches, as NDJSON.

One event per line, as ``GET /api/v1/events/{id}`` shows it, oldest first. The events are read
in keyset batches (:meth:`~webhook_worker.storage.events.EventStore.batches`) and written out as
each arrives, so memory holds one batch whatever the export's size. The export ends at the time
it started: events received meanwhile are left for the next one. ``webhook-worker events
export`` writes the same lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from webhook_worker.api.responses import dumps_any_depth
from webhook_worker.api.views import event_view
from webhook_worker.storage.events import EventFilter, EventStore
from webhook_worker.storage.rows import EventRow

MEDIA_TYPE = "application/x-ndjson"


def ndjson_line(view: dict[str, Any]) -> bytes:
    """One line of an export: ``view`` as compact JSON (at any depth, as every answer of the
    API), then a newline."""
    try:
        encoded = orjson.dumps(view, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        encoded = dumps_any_depth(view)  # a stored payload nested deeper than orjson encodes
    return encoded + b"\n"


def ndjson_chunk(batch: Iterable[EventRow]) -> bytes:
    """The lines of a batch of events, as one write."""
    return b"".join(ndjson_line(event_view(event)) for event in batch)


async def export_response(store: EventStore, where: EventFilter) -> StreamingResponse:
    """The streaming answer. The first batch is read before the answer starts, so a database
    that cannot be reached is a 503 rather than a 200 cut short."""
    batches = store.batches(where)
    first = await anext(batches, None)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield ndjson_chunk(first)
                async for batch in batches:
                    yield ndjson_chunk(batch)
        finally:
            await batches.aclose()  # also when the client leaves half way

    return StreamingResponse(chunks(), media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store"})
