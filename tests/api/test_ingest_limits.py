"""Who spends a tool's ingest rate limit: only requests that pass ``allowed_ips`` and
authentication, through the real app, so nobody without the secret can lock a provider out."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from tests.api.support import Answer, asgi_post, started_app
from tests.support import SECRET
from webhook_worker.config import Settings
from webhook_worker.runtime import Runtime, open_runtime

LIMIT = {"requests": 3, "per": "1h"}


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings(data_dir=tmp_path, worker_consumer_name="test")
    async with open_runtime(settings, migrate_first=True) as opened:
        yield opened


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }


async def post(app: Starlette, client: str = "127.0.0.1", secret: str = SECRET) -> Answer:
    """A signed push with a body of its own (never a duplicate), from ``client``."""
    body = uuid.uuid4().hex.encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in signed(body, secret).items()]
    return await asgi_post(app, "/webhooks/gh", headers, body, client=(client, 40000))


async def test_forged_and_unsigned_requests_do_not_spend_the_limit(runtime: Runtime) -> None:
    await runtime.tool_service.create(
        {"id": "gh", "provider": "github", "auth": {"secret": SECRET}, "rate_limit": LIMIT}
    )
    async with started_app(runtime) as app:
        forged = [await post(app, secret="not the secret") for _ in range(20)]
        unsigned = [
            await asgi_post(app, "/webhooks/gh", [], uuid.uuid4().hex.encode()) for _ in range(20)
        ]
        genuine = [await post(app) for _ in range(4)]
    assert {r.status for r in forged + unsigned} == {401}
    # The limit still holds for authenticated traffic: three pass, the fourth waits.
    assert [r.status for r in genuine] == [202, 202, 202, 429], genuine[0].body
    assert int(genuine[3].headers["retry-after"]) >= 1


async def test_a_refused_address_does_not_spend_the_limit(runtime: Runtime) -> None:
    await runtime.tool_service.create(
        {
            "id": "gh",
            "provider": "github",
            "auth": {"secret": SECRET},
            "rate_limit": LIMIT,
            "allowed_ips": ["192.0.2.0/24"],
        }
    )
    async with started_app(runtime) as app:
        refused = [await post(app, client="198.51.100.9") for _ in range(10)]
        answers = [await post(app, client="192.0.2.10") for _ in range(4)]
    assert {r.status for r in refused} == {403}
    assert refused[0].json()["error"] == "ip_not_allowed"
    assert [r.status for r in answers] == [202, 202, 202, 429]
