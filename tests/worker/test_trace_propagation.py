"""With tracing off, a caller's W3C ``traceparent`` still travels: ingest keeps a valid one with
the event and the forward sends it unchanged. An invalid one is dropped, never forwarded."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from tests.support import Service, Target, running_service, target_server
from webhook_worker.config import Settings
from webhook_worker.observability import tracing

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def forward_once(service: Service, target: Target, headers: dict[str, str]) -> str:
    """Send one event through a forwarding tool; the ``traceparent`` its forward carried."""
    event_id = await send(service, headers)
    await service.settled(event_id, "processed")
    [request] = [r for r in target.requests if r.headers["webhook-id"] == event_id]
    return request.headers.get("traceparent", "")


async def send(service: Service, headers: dict[str, str]) -> str:
    response = await service.post(
        orjson.dumps({"id": uuid.uuid4().hex}), tool_id="fwd", headers=headers, sign=False
    )
    assert response.status_code == 202, response.text
    return str(response.json()["event_id"])


async def add_tool(service: Service, target: Target) -> None:
    await service.runtime.tool_service.create(
        {"id": "fwd", "auth": {"type": "none"}, "mode": "store_and_forward",
         "forward": {"url": target.url, "timeout": "2s"}}
    )  # fmt: skip


async def test_the_callers_traceparent_reaches_the_target_unchanged(
    backend_settings: Settings,
) -> None:
    assert not tracing.enabled()
    async with target_server() as target, running_service(backend_settings) as service:
        await add_tool(service, target)
        assert await forward_once(service, target, {"traceparent": CALLER}) == CALLER


INVALID = [
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper-case hex
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # a version other than 00
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",  # short trace id
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
    "not a traceparent",
    "",
]


async def test_no_traceparent_or_an_invalid_one_is_not_forwarded(tmp_path: Path) -> None:
    assert not tracing.enabled()
    settings = Settings(data_dir=tmp_path, allow_private_forward=True)
    async with target_server() as target, running_service(settings) as service:
        await add_tool(service, target)
        assert await forward_once(service, target, {}) == ""
        for invalid in INVALID:
            assert await forward_once(service, target, {"traceparent": invalid}) == "", invalid
        # The same service still passes a valid one on: the empty answers are not a fluke.
        assert await forward_once(service, target, {"traceparent": CALLER}) == CALLER
