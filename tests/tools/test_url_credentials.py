"""Credentials written into ``forward.url`` (``user:password@``, ``?api_key=...``) are secrets
like the others: redacted in every view, encrypted at rest (in place, so the stored URL still
names its host), restored from the placeholder only for the same host, and hidden on spans."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from tests.cli.test_cli import Cli, clean_env
from webhook_worker.credentials import redact_urls_in
from webhook_worker.errors import ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.secrets import PREFIX, SecretBox, SecretsAtRest
from webhook_worker.tools.service import REDACTED, ToolService
from webhook_worker.worker.forwarder import Forwarder, ForwardRequest
from webhook_worker.worker.target_guard import TargetGuard

KEY = Fernet.generate_key().decode()
PASSWORD = "hook-p4ssw0rd"
API_KEY = "k3y-0f-the-api"
URL = f"https://hook-user:{PASSWORD}@example.com/in?api_key={API_KEY}&page=2"
SHOWN = f"https://{REDACTED}:{REDACTED}@example.com/in?api_key={REDACTED}&page=2"


def tool(url: str = URL, tool_id: str = "shop") -> dict[str, Any]:
    return {"id": tool_id, "mode": "store_and_forward", "forward": {"url": url}}


def assert_hidden(*outputs: str) -> None:
    for output in outputs:
        assert PASSWORD not in output and API_KEY not in output and "hook-user" not in output


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db, SecretsAtRest(SecretBox([KEY])))


@pytest.fixture
def service(store: ToolStore) -> ToolService:
    return ToolService(store)


async def raw_config(db: Database, tool_id: str = "shop") -> str:
    async with db.connect() as conn:
        value = await conn.scalar(text("SELECT config FROM tools WHERE id = :id"), {"id": tool_id})
    return value if isinstance(value, str) else json.dumps(value)


async def test_every_view_redacts_them_and_the_column_holds_them_encrypted(
    db: Database, service: ToolService, store: ToolStore
) -> None:
    views = [await service.create(tool()), await service.get("shop"), *await service.list_all()]
    for view in views:
        assert view["forward"]["url"] == SHOWN
        assert_hidden(json.dumps(view))
    raw = await raw_config(db)
    assert_hidden(raw)
    assert raw.count(PREFIX) == 2 and "example.com/in" in raw and "page=2" in raw
    assert (await store.get("shop"))["config"]["forward"]["url"] == URL
    assert parse_tool((await store.get("shop"))["config"]).forward.url == URL  # type: ignore[union-attr]


async def test_the_view_sent_back_keeps_them(service: ToolService, store: ToolStore) -> None:
    await service.create(tool())
    view = await service.get("shop")
    view["description"] = "edited"
    assert_hidden(json.dumps(await service.replace("shop", view)))
    await service.patch("shop", {"description": "patched"})
    assert await service.apply([await service.get("shop")]) == [("shop", "unchanged")]
    # Another path on the same host: the placeholders still stand for them.
    await service.patch("shop", {"forward": {"url": SHOWN.replace("/in?", "/v2?")}})
    assert (await store.get("shop"))["config"]["forward"]["url"] == URL.replace("/in?", "/v2?")


async def test_a_placeholder_needs_a_stored_credential_for_the_same_host(
    service: ToolService, store: ToolStore
) -> None:
    with pytest.raises(ToolConfigError) as caught:
        await service.create(tool(SHOWN))
    assert caught.value.field == "forward.url"
    assert "enter the secret" in caught.value.message
    await service.create(tool())
    with pytest.raises(ToolConfigError) as caught:
        await service.patch(
            "shop", {"forward": {"url": SHOWN.replace("example.com", "attacker.example")}}
        )
    assert caught.value.field == "forward.url"
    assert "the target changed" in caught.value.message
    assert "query parameter 'api_key'" in caught.value.message
    assert (await store.get("shop"))["config"]["forward"]["url"] == URL


def test_a_shared_database_without_secrets_key_refuses_them() -> None:
    with pytest.raises(ToolConfigError, match="SECRETS_KEY") as caught:
        SecretsAtRest(None, plaintext_allowed=False).seal(parse_tool(tool()).config)
    assert caught.value.field == "forward.url"
    assert_hidden(str(caught.value))
    plain = tool("https://example.com/in?page=2")
    assert SecretsAtRest(None, plaintext_allowed=False).seal(plain) == plain


def test_the_compiled_tool_keeps_a_url_for_spans_and_logs() -> None:
    forward = parse_tool(tool()).forward
    assert forward is not None
    assert forward.url == URL
    assert forward.redacted_url == (
        "https://REDACTED:REDACTED@example.com/in?api_key=REDACTED&page=2"
    )


@pytest.mark.parametrize("url", [f"ftp://u:{PASSWORD}@example.com/", f"https://u:{PASSWORD}@/x"])
def test_a_refused_url_is_not_repeated_in_the_message(url: str) -> None:
    with pytest.raises(ToolConfigError) as caught:
        parse_tool(tool(url))
    assert caught.value.field == "forward.url"
    assert PASSWORD not in str(caught.value)


def test_cli_views_redact_them(tmp_path: Path) -> None:
    cli = Cli(clean_env(DATA_DIR=str(tmp_path), SECRETS_KEY=KEY))
    manifest = tmp_path / "tools.json"
    manifest.write_text(json.dumps([tool()]))
    assert cli("migrate").returncode == 0
    outputs = [
        cli("tools", "apply", "-f", str(manifest)),
        cli("tools", "add", "t", "--mode", "store_and_forward", "--forward-url", URL),
        cli("tools", "show", "shop"),
        cli("tools", "show", "shop", "--json"),
        cli("tools", "list"),
        cli("tools", "list", "--json"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert_hidden(result.stdout, result.stderr)
    assert json.loads(outputs[3].stdout)["forward"]["url"] == SHOWN


async def test_a_failed_forward_does_not_repeat_them() -> None:
    # The HTTP client's message for a malformed answer quotes the URL; the attempt's error (kept
    # with the event, shown by the API, logged) must not carry the API key with it.
    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(malformed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    forwarder = Forwarder(TargetGuard(allow_private=True))
    try:
        url = URL.replace("https://", "http://").replace("example.com", f"127.0.0.1:{port}")
        config = parse_tool(tool(url)).forward
        assert config is not None
        outcome = await forwarder.send(config, ForwardRequest("ev", "shop", None, b"{}", "a/b"))
    finally:
        await forwarder.close()
        server.close()
        await server.wait_closed()
    assert outcome.failure is not None
    assert "Bad Header" in outcome.failure.message  # the client's own words are kept
    assert_hidden(outcome.failure.message)


def test_urls_in_a_message_are_redacted() -> None:
    message = f"400, message='Invalid', url='{URL}', after http://e.com/?token=t0k"
    assert redact_urls_in(message) == (
        "400, message='Invalid', url='https://REDACTED:REDACTED@example.com/in?api_key=REDACTED"
        "&page=2', after http://e.com/?token=REDACTED"
    )
