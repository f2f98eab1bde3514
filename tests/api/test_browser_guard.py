"""The management API resists calls a web page in a browser on the same machine could make:
bodies must be declared JSON (415), cross-site requests are refused (403), and without
ADMIN_TOKEN only a Host naming loopback is served (DNS rebinding)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.api.server_process import webhook_worker_run
from tests.support import serving
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime

TOKEN = "browser-guard-t0ken-7c41"
TOOL = {"id": "planted", "auth": {"type": "none"}}

Connect = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def connect(tmp_path: Path) -> Connect:
    @asynccontextmanager
    async def open_api(
        admin_token: str | None = None, client: tuple[str, int] = ("127.0.0.1", 1234)
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(data_dir=tmp_path, admin_token=admin_token)
        async with (
            open_runtime(settings, migrate_first=True) as runtime,
            serving(runtime, client) as http,
        ):
            yield http

    return open_api


async def tool_ids(http: httpx.AsyncClient) -> list[str]:
    answer = await http.get("/api/v1/tools")
    assert answer.status_code == 200, answer.text
    return [tool["id"] for tool in answer.json()["items"]]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_not_declared_json_is_refused_with_415(
    connect: Connect, content_type: str | None
) -> None:
    # What an HTML form or a "simple" fetch() can send to any site without a preflight.
    headers = {"Content-Type": content_type} if content_type else {}
    async with connect() as http:
        answer = await http.post("/api/v1/tools", content=orjson.dumps(TOOL), headers=headers)
        assert answer.status_code == 415, answer.text
        assert answer.json()["error"] == "unsupported_media_type"
        assert "application/json" in answer.json()["detail"]
        retried = await http.post("/api/v1/dlq/retry", content=b"{}", headers=headers)
        assert retried.status_code == 415
        assert await tool_ids(http) == []


async def test_json_bodies_and_bodiless_posts_are_served(connect: Connect) -> None:
    async with connect() as http:
        typed = {"Content-Type": "application/json; charset=utf-8"}
        answer = await http.post("/api/v1/tools", content=orjson.dumps(TOOL), headers=typed)
        assert answer.status_code == 201, answer.text
        assert (await http.post("/api/v1/dlq/retry")).status_code == 200
        assert (await http.delete("/api/v1/tools/planted")).status_code == 204


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file: page
        {"Origin": "http://localhost:3000"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
@pytest.mark.parametrize("token", [None, TOKEN])
async def test_cross_site_requests_are_refused_with_403(
    connect: Connect, headers: dict[str, str], token: str | None
) -> None:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with connect(admin_token=token) as http:
        for method in ("GET", "POST"):
            answer = await http.request(
                method, "/api/v1/tools", json=TOOL, headers={**headers, **auth}
            )
            assert answer.status_code == 403, (method, answer.text)
            assert answer.json()["error"] == "cross_site_request"
        answer = await http.get("/api/v1/tools", headers=auth)
        assert answer.status_code == 200 and answer.json()["items"] == []


async def test_same_origin_requests_are_served(connect: Connect) -> None:
    async with connect() as http:
        for headers in (
            {"Origin": "http://localhost"},
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},  # typed into the address bar
        ):
            answer = await http.get("/api/v1/tools", headers=headers)
            assert answer.status_code == 200, (headers, answer.text)


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:8080", "127.9.8.7:1", "[::1]:8080"],
)
async def test_without_admin_token_a_loopback_host_is_served(connect: Connect, host: str) -> None:
    async with connect() as http:
        answer = await http.get("/api/v1/tools", headers={"Host": host})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "host",
    [
        "rebind.evil.example",
        "rebind.evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::1]evil",
        "localhost:80x",
        "10.0.0.1:8080",
    ],
)
async def test_without_admin_token_another_host_is_refused(connect: Connect, host: str) -> None:
    async with connect() as http:
        answer = await http.get("/api/v1/tools", headers={"Host": host})
        assert answer.status_code == 403, answer.text
        assert "Host" in answer.json()["detail"]
    async with connect(admin_token=TOKEN) as http:  # with a token, any name is fine
        auth = {"Authorization": f"Bearer {TOKEN}", "Host": host}
        assert (await http.get("/api/v1/tools", headers=auth)).status_code == 200


async def test_a_client_named_localhost_is_not_taken_for_loopback(connect: Connect) -> None:
    # Only an address is loopback; "localhost" in the client field comes from a forwarded
    # header or a proxy's say-so, never from the TCP peer.
    async with connect(client=("localhost", 1234)) as http:
        answer = await http.get("/api/v1/tools")
        assert answer.status_code == 403, answer.text


@pytest.mark.slow
def test_the_real_server_refuses_a_rebinding_host_and_a_cross_site_form(tmp_path: Path) -> None:
    with webhook_worker_run(tmp_path) as server, httpx.Client(base_url=server.base) as http:
        rebound = http.get("/api/v1/tools", headers={"Host": f"rebind.evil.example:{server.port}"})
        assert rebound.status_code == 403, rebound.text
        form = http.post(
            "/api/v1/dlq/retry",
            content=b"tool_id=x",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "http://evil.example",
                "Sec-Fetch-Site": "cross-site",
            },
        )
        assert form.status_code == 403, form.text
        plain = http.post("/api/v1/tools", content=orjson.dumps(TOOL))  # no Content-Type
        assert plain.status_code == 415, plain.text
        assert http.get("/api/v1/tools").json()["items"] == []
