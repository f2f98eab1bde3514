"""Replays of body-only signatures (GitHub, Shopify, Bitbucket style) through the real app,
queue and worker on every backend: the same signed body under a new delivery id and event type
is the first event's duplicate."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.support import SECRET, Service, running_service
from webhook_worker.config import Settings
from webhook_worker.storage.events import EventFilter


@pytest.fixture
async def service(backend_settings: Settings) -> AsyncIterator[Service]:
    async with running_service(backend_settings) as running:
        yield running


async def test_a_captured_request_under_a_new_delivery_id_is_a_duplicate(
    service: Service,
) -> None:
    await service.add_tool()  # github: HMAC of the body, delivery id and event type unsigned
    body = orjson.dumps({"ref": "refs/heads/main", "after": uuid.uuid4().hex})
    first = await service.post(
        body, headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "delivery-1"}
    )
    assert first.status_code == 202, first.text
    event_id = first.json()["event_id"]

    replayed = await service.post(
        body, headers={"X-GitHub-Event": "release", "X-GitHub-Delivery": "delivery-2"}
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"event_id": event_id, "status": "duplicate"}
    # The replayer's own retry, under its delivery id, is the first event's duplicate too.
    again = await service.post(
        body, headers={"X-GitHub-Event": "release", "X-GitHub-Delivery": "delivery-2"}
    )
    assert again.json() == {"event_id": event_id, "status": "duplicate"}

    event = await service.settled(event_id)
    assert (event["event_type"], event["delivery_id"]) == ("push", "delivery-1")
    assert await service.runtime.events.count(EventFilter(tool_id="gh")) == 1

    # Another body is another event, as before.
    other = await service.post(
        body + b" ", headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": "delivery-3"}
    )
    assert other.status_code == 202


async def test_a_replay_with_the_signature_written_differently_is_a_duplicate(
    service: Service,
) -> None:
    # The signature's text may vary while it stays valid (hex case here): the key is what it
    # decodes to, so a replayer cannot mint a new key by rewriting it.
    await service.add_tool()
    body = orjson.dumps({"ref": "refs/heads/main", "after": uuid.uuid4().hex})
    first = await service.post(body, headers={"X-GitHub-Delivery": "delivery-1"})
    assert first.status_code == 202, first.text
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest().upper()
    replayed = await service.post(
        body,
        headers={"X-GitHub-Delivery": "delivery-2", "X-Hub-Signature-256": f"sha256={digest}"},
        sign=False,
    )
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"event_id": first.json()["event_id"], "status": "duplicate"}


async def test_token_schemes_have_no_replay_key(service: Service) -> None:
    # A token is sent as it is: whoever captured a request can send any body with it, so a body
    # hash would stop nothing; identical bodies under new delivery ids stay separate events.
    await service.add_tool("lab", provider="gitlab", auth={"secret": "gitlab-token"})
    body = b'{"object_kind": "push"}'
    answers = [
        await service.post(
            body,
            tool_id="lab",
            sign=False,
            headers={"X-Gitlab-Token": "gitlab-token", "X-Gitlab-Event": "Push Hook",
                     "Idempotency-Key": key},
        )
        for key in ("k-1", "k-2")
    ]  # fmt: skip
    assert [a.status_code for a in answers] == [202, 202]
