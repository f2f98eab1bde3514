"""``/api/v1`` through the real Starlette app and runtime, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.storage.support import event_id as time_ordered_id
from tests.support import eventually, serving
from webhook_worker.cli.send import sign_request
from webhook_worker.config import Settings
from webhook_worker.replay import Replayer
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage import events as stored_events
from webhook_worker.storage.records import AttemptRecord, EventRecord
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.service import PICKUP_MARGIN

ADMIN_TOKEN = "adm1n-t0ken-4f9c2e81"
SECRET = "hmac-s3cret-value"
BASE_TIME = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
SECRETS_KEY = Fernet.generate_key().decode()  # PostgreSQL stores secrets only encrypted


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: Runtime


Connect = Callable[..., AbstractAsyncContextManager[Api]]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    request.getfixturevalue("postgres_db")  # migrated and emptied for this test
    url: str = request.getfixturevalue("postgres_server_url")
    return url


@pytest.fixture
def connect(database_url: str) -> Connect:
    """``async with connect(admin_token=..., client=...) as api``: the app, lifespan running."""

    @asynccontextmanager
    async def open_api(
        admin_token: str | None = None, client: tuple[str, int] = ("127.0.0.1", 1234)
    ) -> AsyncIterator[Api]:
        settings = Settings(
            database_url=database_url,
            admin_token=admin_token,
            secrets_key=SECRETS_KEY,
            tools_refresh_interval=0.05,
            worker_reclaim_idle=1.0,
        )
        async with (
            open_runtime(settings, migrate_first=True) as runtime,
            serving(runtime, client) as http,
        ):
            yield Api(http, runtime)

    return open_api


@pytest.fixture
async def api(connect: Connect) -> AsyncIterator[Api]:
    async with connect() as opened:
        yield opened


def hmac_tool(tool_id: str = "demo", **fields: Any) -> dict[str, Any]:
    return {
        "id": tool_id,
        "auth": {"type": "hmac", "header": "X-Signature", "prefix": "sha256=", "secret": SECRET},
        **fields,
    }


# Tools


async def test_tools_crud(api: Api) -> None:
    http = api.client
    assert (await http.get("/api/v1/tools")).json() == {"items": [], "next_cursor": None}

    created = await http.post("/api/v1/tools", json=hmac_tool(description="first"))
    assert created.status_code == 201
    body = created.json()
    assert body["id"] == "demo"
    assert body["description"] == "first"
    assert body["created_at"] and body["updated_at"]

    listed = await http.get("/api/v1/tools")
    assert listed.status_code == 200
    assert [tool["id"] for tool in listed.json()["items"]] == ["demo"]
    assert listed.json()["next_cursor"] is None

    fetched = await http.get("/api/v1/tools/demo")
    assert fetched.status_code == 200
    assert fetched.json() == body

    view = fetched.json()
    view["description"] = "replaced"
    replaced = await http.put("/api/v1/tools/demo", json=view)
    assert replaced.status_code == 200
    assert replaced.json()["description"] == "replaced"

    patched = await http.patch("/api/v1/tools/demo", json={"enabled": False, "description": None})
    assert patched.status_code == 200
    assert patched.json()["enabled"] is False
    assert "description" not in patched.json()

    # the secret survived GET -> PUT and PATCH without ever being sent back
    stored = await ToolStore.from_settings(api.runtime.db, api.runtime.settings).get("demo")
    assert stored["config"]["auth"]["secret"] == SECRET

    deleted = await http.delete("/api/v1/tools/demo")
    assert deleted.status_code == 204
    assert deleted.content == b""
    for method in ("GET", "DELETE"):
        missing = await http.request(method, "/api/v1/tools/demo")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
    assert (await http.put("/api/v1/tools/demo", json=hmac_tool())).status_code == 404
    assert (await http.patch("/api/v1/tools/demo", json={"enabled": True})).status_code == 404


async def test_creating_an_existing_tool_is_a_400_naming_id(api: Api) -> None:
    assert (await api.client.post("/api/v1/tools", json=hmac_tool())).status_code == 201
    again = await api.client.post("/api/v1/tools", json=hmac_tool())
    assert again.status_code == 400
    assert again.json()["field"] == "id"


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"id": "x", "provider": "nope"}, "provider"),
        ({"id": "x", "event_type": {"path": "a.[b"}}, "event_type.path"),
        ({"id": "x", "filter": "a[?"}, "filter"),
        ({"id": "x", "mode": "store_and_forward", "forward": {"url": "nope"}}, "forward.url"),
        ({"id": "x", "retry": {"max_interval": "forever"}}, "retry.max_interval"),
        ({"id": "x", "auth": {"type": "hmac", "header": "X-Sig"}}, "auth.secret"),
        ({"id": "x", "colour": "red"}, "colour"),
        ({"id": "not ok"}, "id"),
    ],
)
async def test_invalid_tool_is_a_400_naming_the_field(
    api: Api, definition: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/api/v1/tools", json=definition)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["field"] == field
    assert field in body["detail"]
    assert (await api.client.get("/api/v1/tools")).json()["items"] == []


async def test_invalid_update_is_a_400_and_changes_nothing(api: Api) -> None:
    await api.client.post("/api/v1/tools", json=hmac_tool())
    for method in ("PUT", "PATCH"):
        response = await api.client.request(
            method, "/api/v1/tools/demo", json={**hmac_tool(), "transform": "{a: }"}
        )
        assert response.status_code == 400
        assert response.json()["field"] == "transform"
    assert "transform" not in (await api.client.get("/api/v1/tools/demo")).json()


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
async def test_a_body_that_is_not_a_json_object_is_a_400(api: Api, body: bytes) -> None:
    response = await api.client.post(
        "/api/v1/tools", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_secrets_are_redacted_in_every_response(api: Api) -> None:
    secrets = [SECRET, "0ld-secret", "whsec_fwd", "fwd-api-key"]
    definition = hmac_tool(
        mode="store_and_forward",
        forward={
            "url": "https://example.com/in",
            "signing_secret": "whsec_fwd",
            "headers": {"X-Api-Key": "fwd-api-key"},
        },
    )
    definition["auth"]["secrets"] = ["0ld-secret"]
    responses = [await api.client.post("/api/v1/tools", json=definition)]
    responses.append(await api.client.get("/api/v1/tools"))
    responses.append(await api.client.get("/api/v1/tools/demo"))
    responses.append(await api.client.put("/api/v1/tools/demo", json=responses[-1].json()))
    responses.append(await api.client.patch("/api/v1/tools/demo", json={"description": "d"}))
    for response in responses:
        assert response.status_code in (200, 201)
        for secret in secrets:
            assert secret not in response.text
    assert responses[2].json()["auth"]["secret"] == "********"
    store = ToolStore.from_settings(api.runtime.db, api.runtime.settings)
    stored = (await store.get("demo"))["config"]
    assert stored["auth"]["secrets"] == ["0ld-secret"]
    assert stored["forward"]["signing_secret"] == "whsec_fwd"
    assert stored["forward"]["headers"]["X-Api-Key"] == "fwd-api-key"


@pytest.mark.parametrize(
    ("auth", "field", "says"),
    [
        ({"secrets": "hunter2"}, "auth.secrets", "expected a list of non-empty strings"),
        ({"secrets": [SECRET, ""]}, "auth.secrets", "expected a list of non-empty strings"),
        ({"secret": "********"}, "auth.secret", "enter the secret"),
        ({"secrets": ["********"]}, "auth.secrets[0]", "enter the secret"),
    ],
)
async def test_secrets_that_are_not_secrets_are_a_400_naming_the_field(
    api: Api, auth: dict[str, Any], field: str, says: str
) -> None:
    definition = hmac_tool()
    definition["auth"].update(auth)
    response = await api.client.post("/api/v1/tools", json=definition)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert says in response.json()["detail"]
    assert "hunter2" not in response.text
    assert (await api.client.get("/api/v1/tools")).json()["items"] == []


async def test_a_new_forward_host_needs_the_credentials_again(api: Api) -> None:
    definition = hmac_tool(
        mode="store_and_forward",
        forward={
            "url": "https://u:p4ssw0rd@example.com/in?api_key=k3y-value",
            "headers": {"X-Api-Key": "fwd-api-key"},
        },
    )
    created = await api.client.post("/api/v1/tools", json=definition)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["forward"]["url"] == "https://********:********@example.com/in?api_key=********"
    for text in ("p4ssw0rd", "k3y-value", "fwd-api-key"):
        assert text not in created.text
    moved: dict[str, dict[str, Any]] = {"forward": {"url": "https://elsewhere.example/in"}}
    patched = await api.client.patch("/api/v1/tools/demo", json=moved)
    assert patched.status_code == 400, patched.text
    assert patched.json()["field"] == "forward.headers.X-Api-Key"
    assert "the target changed" in patched.json()["detail"]
    view["forward"]["url"] = view["forward"]["url"].replace("example.com", "elsewhere.example")
    put = await api.client.put("/api/v1/tools/demo", json=view)
    assert put.status_code == 400, put.text
    assert put.json()["field"] == "forward.url"
    moved["forward"]["headers"] = {"X-Api-Key": "n3w-key"}
    assert (await api.client.patch("/api/v1/tools/demo", json=moved)).status_code == 200
    stored = await ToolStore.from_settings(api.runtime.db, api.runtime.settings).get("demo")
    assert stored["config"]["forward"]["headers"] == {"X-Api-Key": "n3w-key"}


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"id": "demo\n"}, "id"),
        (
            {"id": "x", "forward": {"url": "https://e.com", "headers": {"X-A": "1\r\nX-B: 2"}}},
            "forward.headers",
        ),
        ({"id": "x", "forward": {"url": "https://e.com/\r\nX-B: 2"}}, "forward.url"),
    ],
)
async def test_newlines_in_ids_headers_and_urls_are_a_400(
    api: Api, definition: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/api/v1/tools", json=definition)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


# Access


async def test_admin_token_is_required_when_set(connect: Connect) -> None:
    async with connect(admin_token=ADMIN_TOKEN, client=("203.0.113.5", 1)) as api:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": ADMIN_TOKEN},
        ):
            for path in ("/api/v1/tools", "/api/v1/events"):
                denied = await api.client.get(path, headers=headers)
                assert denied.status_code == 401
                assert denied.json()["error"] == "unauthorized"
                assert denied.headers["www-authenticate"] == "Bearer"
        allowed = await api.client.get(
            "/api/v1/tools", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert allowed.status_code == 200
        assert allowed.json() == {"items": [], "next_cursor": None}


async def test_admin_token_applies_to_loopback_clients_too(connect: Connect) -> None:
    async with connect(admin_token=ADMIN_TOKEN) as api:
        assert (await api.client.get("/api/v1/tools")).status_code == 401
        created = await api.client.post(
            "/api/v1/tools", json={"id": "x"}, headers={"Authorization": f"bearer {ADMIN_TOKEN}"}
        )
        assert created.status_code == 201


async def test_without_admin_token_only_loopback_is_served(connect: Connect) -> None:
    async with connect(client=("203.0.113.5", 1)) as api:
        for method, path in (
            ("GET", "/api/v1/tools"),
            ("POST", "/api/v1/tools"),
            ("GET", "/api/v1/tools/demo"),
            ("GET", "/api/v1/events"),
        ):
            response = await api.client.request(method, path)
            assert response.status_code == 403
            assert "ADMIN_TOKEN" in response.json()["detail"]
        # ingest is not management: it answers (404 for a tool that does not exist)
        assert (await api.client.post("/webhooks/nope", content=b"{}")).status_code == 404
    async with connect(client=("::1", 1)) as api:
        assert (await api.client.get("/api/v1/tools")).status_code == 200


# Events


def event_row(index: int, **fields: Any) -> dict[str, Any]:
    """An event whose id sorts by ``index`` (ids are UUIDv7: time-ordered)."""
    received = BASE_TIME + timedelta(minutes=index)
    row = {
        "id": time_ordered_id(index),
        "tool_id": "demo",
        "event_type": "push",
        "delivery_id": f"delivery-{index}",
        "status": "processed",
        "received_at": received,
        "processed_at": received + timedelta(seconds=1),
        "headers": {"content-type": "application/json", "x-event": "push"},
        "body": json.dumps({"n": index}).encode(),
        "payload": None,
        "attempt_count": 1,
    }
    row.update(fields)
    return row


async def insert(api: Api, rows: list[dict[str, Any]]) -> None:
    async with api.runtime.db.begin() as conn:
        await stored_events.insert_events(conn, [EventRecord(**row) for row in rows])


async def insert_attempts(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await stored_events.insert_attempts(conn, [AttemptRecord(**row) for row in rows])


async def test_events_pagination_with_cursor(api: Api) -> None:
    await insert(api, [event_row(i) for i in range(7)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/api/v1/events", params=params)
        assert response.status_code == 200
        page = response.json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 3
    assert pages == 3
    assert seen == [event_row(i)["id"] for i in reversed(range(7))]  # newest first, no repeats


async def test_an_exact_last_page_has_no_cursor(api: Api) -> None:
    await insert(api, [event_row(i) for i in range(3)])
    page = (await api.client.get("/api/v1/events", params={"limit": "3"})).json()
    assert len(page["items"]) == 3
    assert page["next_cursor"] is None


async def test_events_filters(api: Api) -> None:
    await insert(
        api,
        [
            event_row(0),
            event_row(1, tool_id="other"),
            event_row(2, event_type="issues"),
            event_row(3, status="dead"),
            event_row(4, event_type=None),
            event_row(5),
        ],
    )

    async def ids(**params: str) -> list[int]:
        response = await api.client.get("/api/v1/events", params=params)
        assert response.status_code == 200, response.text
        return [int(item["id"].rsplit("-", 1)[1]) for item in response.json()["items"]]

    assert await ids() == [5, 4, 3, 2, 1, 0]
    assert await ids(tool_id="other") == [1]
    assert await ids(tool_id="demo", event_type="push") == [5, 3, 0]
    assert await ids(status="dead") == [3]
    assert await ids(status="processed", event_type="issues") == [2]
    assert await ids(since="2024-01-15T10:03:00Z") == [5, 4, 3]
    assert await ids(until="2024-01-15T10:02:00Z") == [1, 0]
    assert await ids(since="2024-01-15T12:01:00+02:00", until="2024-01-15T10:04:00") == [3, 2, 1]
    assert await ids(tool_id="", event_type="") == [5, 4, 3, 2, 1, 0]  # empty means no filter
    assert await ids(tool_id="nobody") == []


async def test_event_show_has_payload_headers_and_attempts(api: Api) -> None:
    row = event_row(1, payload={"summary": "transformed"}, status="processed", attempt_count=2)
    await insert(api, [row])
    started = BASE_TIME + timedelta(minutes=1, seconds=1)
    async with api.runtime.db.begin() as conn:
        await insert_attempts(
            conn,
            [
                {
                    "event_id": row["id"],
                    "attempt": 1,
                    "started_at": started,
                    "duration_ms": 12.3456,
                    "outcome": "retry",
                    "error_class": "http_5xx",
                    "error": "forward answered 503",
                    "http_status": 503,
                    "destination_id": "default",
                },
                {
                    "event_id": row["id"],
                    "attempt": 2,
                    "started_at": started + timedelta(seconds=2),
                    "duration_ms": 4.0,
                    "outcome": "forwarded",
                    "error_class": None,
                    "error": None,
                    "http_status": 200,
                    "destination_id": "default",
                },
            ],
        )
    response = await api.client.get(f"/api/v1/events/{row['id']}")
    assert response.status_code == 200
    event = response.json()
    assert event["id"] == row["id"]
    assert event["tool_id"] == "demo"
    assert event["event_type"] == "push"
    assert event["delivery_id"] == "delivery-1"
    assert event["status"] == "processed"
    assert event["received_at"] == "2024-01-15T10:01:00Z"
    assert event["processed_at"] == "2024-01-15T10:01:01Z"
    assert event["headers"] == {"content-type": "application/json", "x-event": "push"}
    assert event["payload"] == {"summary": "transformed"}
    assert event["raw_payload"] == {"n": 1}
    assert event["attempts"] == [
        {
            "attempt": 1,
            "started_at": "2024-01-15T10:01:01Z",
            "duration_ms": 12.346,
            "outcome": "retry",
            "error_class": "http_5xx",
            "error": "forward answered 503",
            "http_status": 503,
            "destination_id": "default",
        },
        {
            "attempt": 2,
            "started_at": "2024-01-15T10:01:03Z",
            "duration_ms": 4.0,
            "outcome": "forwarded",
            "error_class": None,
            "error": None,
            "http_status": 200,
            "destination_id": "default",
        },
    ]
    listed = (await api.client.get("/api/v1/events")).json()["items"]
    assert listed == [event]

    missing = await api.client.get("/api/v1/events/01900000-0000-7000-8000-999999999999")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2024-13-01T00:00:00Z"}, "since"),
        ({"until": "15/01/2024"}, "until"),
        ({"status": "done"}, "status"),
    ],
)
async def test_bad_event_query_is_a_400(api: Api, params: dict[str, str], field: str) -> None:
    response = await api.client.get("/api/v1/events", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["field"] == field
    assert field in body["detail"]


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/dlq"])
@pytest.mark.parametrize("cursor", ["not-ours", "a=b", "Zm9v"])
async def test_a_cursor_this_api_did_not_return_is_a_400_naming_cursor(
    api: Api, path: str, cursor: str
) -> None:
    response = await api.client.get(path, params={"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_request",
        "detail": "cursor: not a cursor this API returned",
        "field": "cursor",
    }


async def test_a_webhook_flows_through_ingest_and_worker_into_the_api(api: Api) -> None:
    """The whole path: a signed POST, the worker stores it, the API shows it."""
    http = api.client
    definition = hmac_tool(event_type={"header": "X-Event"}, delivery_id={"path": "id"})
    assert (await http.post("/api/v1/tools", json=definition)).status_code == 201
    tool = parse_tool(definition)
    body = b'{"id": "d-42", "hello": "world"}'
    accepted = await http.post(
        "/webhooks/demo", content=body, headers=sign_request(tool, body, "push")
    )
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["event_id"]
    forged = await http.post(
        "/webhooks/demo", content=body, headers={"X-Signature": "sha256=" + "0" * 64}
    )
    assert forged.status_code == 401

    async def stored() -> Any:
        response = await http.get(f"/api/v1/events/{event_id}")
        assert response.status_code in (200, 404), response.text
        return response.json() if response.status_code == 200 else None

    worker = api.runtime.worker()
    running = asyncio.create_task(worker.run())
    try:
        event = await eventually(stored, within=10, what="the event to be stored")
    finally:
        worker.stop()
        await running
    assert event["status"] == "processed"
    assert event["event_type"] == "push"
    assert event["delivery_id"] == "d-42"
    assert event["payload"] == {"id": "d-42", "hello": "world"}
    assert "raw_payload" not in event
    assert "x-signature" not in event["headers"]
    assert event["headers"]["x-event"] == "push"
    assert [attempt["attempt"] for attempt in event["attempts"]] == [1]
    page = (await http.get("/api/v1/events", params={"tool_id": "demo"})).json()
    assert [item["id"] for item in page["items"]] == [event_id]


@pytest.mark.parametrize("token", [None, "s3cret-admin-token"])
async def test_the_startup_log_says_whether_the_management_api_is_loopback_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, token: str | None
) -> None:
    settings = Settings(data_dir=tmp_path, admin_token=token)
    with caplog.at_level("INFO"):
        async with open_runtime(settings, migrate_first=True) as runtime, serving(runtime):
            pass
    warnings = [r.getMessage() for r in caplog.records if "ADMIN_TOKEN" in r.getMessage()]
    if token is None:
        assert len(warnings) == 1 and "loopback clients only" in warnings[0]
    else:
        assert warnings == []
        assert all(token not in r.getMessage() for r in caplog.records)


# Pause and resume of a destination


def shop_tool() -> dict[str, Any]:
    return {
        "id": "shop",
        "destinations": [
            {"id": "billing", "url": "https://billing.example.com/in"},
            {"id": "crm", "url": "https://crm.example.com/in"},
        ],
    }


def paused_flags(api: Api) -> list[bool]:
    """What this process's tool cache (the one its workers read) says of each destination."""
    live = api.runtime.tools.get("shop")
    assert live is not None
    return [destination.paused for destination in live.tool.destinations]


async def test_pause_answers_once_every_worker_must_have_seen_it(api: Api) -> None:
    http = api.client
    assert (await http.post("/api/v1/tools", json=shop_tool())).status_code == 201
    started = time.monotonic()
    paused = await http.post("/api/v1/tools/shop/destinations/crm/pause")
    elapsed = time.monotonic() - started
    assert paused.status_code == 200
    assert paused.json() == {"tool_id": "shop", "destination_id": "crm", "paused": True}
    # Not before every process's next tool refresh has had time to happen.
    assert elapsed >= api.runtime.settings.tools_refresh_interval + PICKUP_MARGIN
    assert paused_flags(api) == [False, True]
    shown = (await http.get("/api/v1/tools/shop")).json()
    assert [d.get("paused", False) for d in shown["destinations"]] == [False, True]

    again = await http.post("/api/v1/tools/shop/destinations/crm/pause")
    assert again.status_code == 200
    assert again.json() == paused.json()
    assert paused_flags(api) == [False, True]


@pytest.mark.xfail(
    not hasattr(Replayer, "release_paused"),
    reason="the requeue of waiting deliveries is Replayer.release_paused (worker side)",
    strict=True,
)
async def test_resume_stores_the_flag_and_answers_how_many_were_requeued(api: Api) -> None:
    http = api.client
    assert (await http.post("/api/v1/tools", json=shop_tool())).status_code == 201
    assert (await http.post("/api/v1/tools/shop/destinations/crm/pause")).status_code == 200
    resumed = await http.post("/api/v1/tools/shop/destinations/crm/resume")
    assert paused_flags(api) == [False, False]  # stored before the waiting ones are released
    assert resumed.status_code == 200
    # "requeued" is what Replayer.release_paused answers: nothing was waiting here.
    assert resumed.json() == {
        "tool_id": "shop",
        "destination_id": "crm",
        "paused": False,
        "requeued": 0,
    }
    again = await http.post("/api/v1/tools/shop/destinations/crm/resume")
    assert again.status_code == 200
    assert again.json()["paused"] is False


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_pause_and_resume_name_what_is_wrong(api: Api, action: str) -> None:
    http = api.client
    assert (await http.post("/api/v1/tools", json=shop_tool())).status_code == 201
    legacy = {"id": "legacy", "mode": "store_and_forward", "forward": {"url": "https://e.com/in"}}
    assert (await http.post("/api/v1/tools", json=legacy)).status_code == 201

    no_tool = await http.post(f"/api/v1/tools/nope/destinations/crm/{action}")
    assert no_tool.status_code == 404
    assert no_tool.json()["detail"] == "no tool 'nope'"
    no_destination = await http.post(f"/api/v1/tools/shop/destinations/erp/{action}")
    assert no_destination.status_code == 404
    assert no_destination.json()["detail"] == (
        "tool 'shop' has no destination 'erp' (its destinations: billing, crm)"
    )
    forward = await http.post(f"/api/v1/tools/legacy/destinations/default/{action}")
    assert forward.status_code == 409
    assert forward.json()["error"] == "conflict"
    assert "move it into `destinations`" in forward.json()["detail"]
    assert paused_flags(api) == [False, False]


async def test_pause_needs_the_admin_token(connect: Connect) -> None:
    async with connect(admin_token=ADMIN_TOKEN) as api:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = await api.client.post("/api/v1/tools", json=shop_tool(), headers=headers)
        assert created.status_code == 201
        for action in ("pause", "resume"):
            denied = await api.client.post(f"/api/v1/tools/shop/destinations/crm/{action}")
            assert denied.status_code == 401
        assert paused_flags(api) == [False, False]
