"""POST /webhooks/{tool_id} end to end: through the real app, queue and worker, on every backend."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from tests.support import SECRET, Service, eventually, running_service, serving
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.events import EventFilter


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    async with running_service(backend_settings) as running:
        yield running


def push(delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {"ref": "refs/heads/main", "after": uuid.uuid4().hex, "pusher": {"name": "x"}}
    )
    return body, {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery or str(uuid.uuid4())}


async def test_accepted_event_is_stored_with_type_delivery_and_headers(service: Service) -> None:
    await service.add_tool()
    body, headers = push()
    response = await service.post(body, headers={**headers, "User-Agent": "GitHub-Hookshot/1"})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "accepted"

    event = await service.stored(answer["event_id"])
    assert event["tool_id"] == "gh"
    assert event["event_type"] == "push"
    assert event["delivery_id"] == headers["X-GitHub-Delivery"]
    assert event["status"] == "processed"
    assert event["payload"] == orjson.loads(body)
    assert event["processed_at"] is not None
    assert event["headers"]["user-agent"] == "GitHub-Hookshot/1"
    assert "x-hub-signature-256" not in event["headers"]
    assert [a["outcome"] for a in event["attempts"]] == ["stored"]


async def test_alias_route_accepts_too(service: Service) -> None:
    await service.add_tool()
    body, headers = push()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = await service.client.post(
        "/api/webhooks/tools/gh",
        content=body,
        headers={**headers, "X-Hub-Signature-256": f"sha256={digest}"},
    )
    assert response.status_code == 202


async def test_repeated_delivery_id_is_a_duplicate_and_stored_once(service: Service) -> None:
    await service.add_tool()
    body, headers = push()
    first = await service.post(body, headers=headers)
    again = await service.post(body, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}
    await service.stored(first.json()["event_id"])
    assert await service.runtime.events.count(EventFilter(tool_id="gh")) == 1


async def test_concurrent_requests_with_one_delivery_id_accept_one(
    service: Service,
) -> None:
    await service.add_tool()
    body, headers = push()
    responses = await asyncio.gather(*(service.post(body, headers=headers) for _ in range(20)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [202]
    assert len({r.json()["event_id"] for r in responses}) == 1


async def test_without_a_delivery_id_the_body_hash_deduplicates(service: Service) -> None:
    await service.add_tool("plain", provider="generic", auth={"type": "none"})
    body = b'{"hello": "world"}'
    first = await service.post(body, tool_id="plain", sign=False)
    again = await service.post(body, tool_id="plain", sign=False)
    assert (first.status_code, again.status_code) == (202, 200)
    event = await service.stored(first.json()["event_id"])
    assert event["delivery_id"] == hashlib.sha256(body).hexdigest()
    assert event["event_type"] is None


async def test_event_type_and_delivery_id_from_body_paths(service: Service) -> None:
    await service.add_tool(
        "paths",
        provider="generic",
        auth={"type": "token", "header": "X-Token", "secret": "tok"},
        event_type={"path": "event.kind"},
        delivery_id={"path": "meta.id"},
    )
    body = orjson.dumps({"event": {"kind": "order.paid"}, "meta": {"id": 42}})
    response = await service.post(body, tool_id="paths", headers={"X-Token": "tok"}, sign=False)
    assert response.status_code == 202, response.text
    event = await service.stored(response.json()["event_id"])
    assert (event["event_type"], event["delivery_id"]) == ("order.paid", "42")
    assert "x-token" not in event["headers"]


async def test_non_json_and_non_utf8_bodies_are_stored_as_received(service: Service) -> None:
    await service.add_tool("raw", provider="generic", auth={"type": "none"})
    body = b"\xff\xfe not json \x00"
    response = await service.post(body, tool_id="raw", sign=False)
    assert response.status_code == 202
    event = await service.stored(response.json()["event_id"])
    assert event["payload"] == body.decode("utf-8", errors="replace")


async def test_unknown_tool_is_404(service: Service) -> None:
    response = await service.post(b"{}", tool_id="nope")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_tool"


async def test_disabled_tool_is_403(service: Service) -> None:
    await service.add_tool(enabled=False)
    body, headers = push()
    response = await service.post(body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == "tool_disabled"


@pytest.mark.parametrize(
    "signature",
    [None, "sha256=" + "0" * 64, "sha256=zz", "md5=abc", "sha1=" + "0" * 40],
)
async def test_bad_or_missing_signature_is_401(service: Service, signature: str | None) -> None:
    await service.add_tool()
    body, headers = push()
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    response = await service.post(body, headers=headers, sign=False)
    assert response.status_code == 401
    assert set(response.json()) == {"error", "detail"}
    assert await service.runtime.queue.depth() == 0


async def test_tampered_body_is_401(service: Service) -> None:
    await service.add_tool()
    body, headers = push()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers["X-Hub-Signature-256"] = f"sha256={digest}"
    response = await service.post(body + b" ", headers=headers, sign=False)
    assert response.status_code == 401


async def test_rotated_secrets_each_verify(service: Service) -> None:
    await service.add_tool(auth={"secrets": ["old-secret", SECRET]})
    body, headers = push()
    assert (await service.post(body, headers=headers)).status_code == 202


async def test_body_over_the_limit_is_413_and_at_the_limit_is_accepted(
    backend_settings: Settings,
) -> None:
    settings = replace(backend_settings, max_payload_bytes=1024)
    async with open_runtime(settings, migrate_first=True) as runtime:
        await runtime.tool_service.create({"id": "small", "auth": {"type": "none"}})
        async with serving(runtime) as client:
            at_limit = await client.post("/webhooks/small", content=b"a" * 1024)
            over = await client.post("/webhooks/small", content=b"b" * 1025)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"c" * 512

            streamed = await client.post("/webhooks/small", content=chunks())
    assert at_limit.status_code == 202
    assert over.status_code == 413
    assert over.json()["error"] == "payload_too_large"
    assert streamed.status_code == 413


async def test_tool_changes_reach_another_process_without_restart(service: Service) -> None:
    # A second runtime on the same database stands in for another API process.
    async with open_runtime(service.runtime.settings) as other:
        other.tools.start()
        try:
            await service.runtime.tool_service.create({"id": "late", "auth": {"type": "none"}})
            await eventually(
                lambda: _async(other.tools.get("late") is not None), within=5, what="the new tool"
            )
            await service.runtime.tool_service.patch("late", {"enabled": False})
            await eventually(
                lambda: _async(not other.tools.get("late").tool.enabled),  # type: ignore[union-attr]
                within=5,
                what="the disabled flag",
            )
            await service.runtime.tool_service.delete("late")
            await eventually(
                lambda: _async(other.tools.get("late") is None), within=5, what="removal"
            )
        finally:
            await other.tools.close()


async def _async(value: bool) -> bool:
    return value


async def test_a_tool_added_elsewhere_is_served_on_the_first_request(service: Service) -> None:
    # As when `webhook-worker tools add` runs beside a running API: no waiting for a refresh.
    async with open_runtime(service.runtime.settings) as other:
        await other.tool_service.create({"id": "fresh", "auth": {"type": "none"}})
    response = await service.post(b'{"a": 1}', tool_id="fresh", sign=False)
    assert response.status_code == 202, response.text


async def test_a_tool_rate_limit_answers_429_with_retry_after(service: Service) -> None:
    await service.add_tool(
        "limited",
        provider="generic",
        auth={"type": "none"},
        rate_limit={"requests": 2, "per": "1h"},
    )
    await service.add_tool("free", provider="generic", auth={"type": "none"})
    answers = [
        await service.post(uuid.uuid4().bytes, tool_id="limited", sign=False) for _ in range(3)
    ]
    assert [r.status_code for r in answers] == [202, 202, 429]
    assert answers[2].json()["error"] == "rate_limited"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 1800
    assert (await service.post(b"{}", tool_id="free", sign=False)).status_code == 202
