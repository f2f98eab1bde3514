"""Very deep JSON bodies (1,000 levels): refused at ingest when the tool reads fields from the
body, stored as bytes and shown without a crash (API and CLI) when it does not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.support import Service, running_service
from webhook_worker.api.ingest import MAX_JSON_DEPTH
from webhook_worker.config import Settings

DEEP = b'{"type": "push", "data": ' + b"[" * 1000 + b"]" * 1000 + b"}"
COMPACT = DEEP.replace(b" ", b"")


def nested(levels: int) -> bytes:
    return b'{"type": "push", "data": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    async with running_service(backend_settings) as running:
        yield running


async def test_a_tool_reading_the_body_refuses_deep_json_with_a_clear_422(
    service: Service,
) -> None:
    await service.add_tool("typed", provider="generic", event_type={"path": "type"})
    refused = await service.post(DEEP, tool_id="typed", sign=False)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "payload_too_deep"
    assert str(MAX_JSON_DEPTH) in refused.json()["detail"]

    beyond_orjson = await service.post(b"[" * 1100 + b"]" * 1100, tool_id="typed", sign=False)
    assert beyond_orjson.status_code == 422

    # At the limit it is accepted, and the event type is read as before.
    accepted = await service.post(nested(MAX_JSON_DEPTH), tool_id="typed", sign=False)
    assert accepted.status_code == 202, accepted.text
    event = await service.settled(accepted.json()["event_id"])
    assert (event["event_type"], event["status"]) == ("push", "processed")
    assert (
        await service.post(nested(MAX_JSON_DEPTH + 1), tool_id="typed", sign=False)
    ).status_code == 422


async def test_a_store_only_tool_stores_deep_json_and_shows_it(
    service: Service,
) -> None:
    await service.add_tool("raw", provider="generic")
    accepted = await service.post(DEEP, tool_id="raw", sign=False)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    assert (await service.settled(event_id))["status"] == "processed"

    shown = await service.client.get(f"/api/v1/events/{event_id}")
    assert shown.status_code == 200
    # Compared as text: comparing the parsed documents would recurse too deep for Python.
    assert b'"payload":' + COMPACT in shown.content

    settings = service.runtime.settings
    if settings.database_url is None:  # the embedded file: the CLI reads it too
        env = {"DATA_DIR": str(settings.data_dir), "PATH": "/usr/bin:/bin"}
        for extra in ([], ["--json"]):
            run = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "webhook_worker", "events", "show", event_id, *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert run.returncode == 0, run.stderr[-2000:]
            assert "[[[[" in run.stdout
        assert '"payload":' + COMPACT.decode() in run.stdout
