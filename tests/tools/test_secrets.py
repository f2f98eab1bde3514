"""Tool secrets at rest on SQLite and PostgreSQL: encrypted with SECRETS_KEY, readable back only
with it, refused in plaintext outside the embedded database, and never shown or logged."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import text

from tests.cli.test_cli import Cli, clean_env, one_line_error
from tests.support import serving
from webhook_worker.config import Settings
from webhook_worker.constants import METADATA_TOOLS_REVISION
from webhook_worker.errors import ConfigError, ToolConfigError
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.secrets import PREFIX, SecretBox, SecretsAtRest
from webhook_worker.tools.service import ToolService

KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()
SIGNING = "hmac-s3cret-at-rest"
OLDER = "0lder-s3cret"
FORWARD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FORWARD_TOKEN = "fwd-t0ken-value"
SECRETS = (SIGNING, OLDER, FORWARD, FORWARD_TOKEN)
_SEALED = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_=-]+")


def tool(tool_id: str = "shop", **fields: Any) -> dict[str, Any]:
    """An hmac tool with every kind of secret: two auth secrets, a forward signing secret and a
    sensitive forward header (beside one that is not)."""
    return {
        "id": tool_id,
        "auth": {
            "type": "hmac",
            "header": "X-Signature",
            "prefix": "sha256=",
            "secret": SIGNING,
            "secrets": [OLDER],
        },
        "forward": {
            "url": "https://example.com/in",
            "signing_secret": FORWARD,
            "headers": {"Authorization": f"Bearer {FORWARD_TOKEN}", "X-Team": "payments"},
        },
        **fields,
    }


def settings(db: Database, key: str | None = None, **extra: Any) -> Settings:
    """Settings for the database behind the ``db`` fixture (which migrated and emptied it)."""
    return Settings(
        database_url=db.engine.url.render_as_string(hide_password=False),
        secrets_key=key,
        tools_refresh_interval=0.05,
        worker_consumer_name="test",
        **extra,
    )


def service(db: Database, key: str | None = None) -> ToolService:
    return ToolService(ToolStore.from_settings(db, settings(db, key)))


async def raw_config(db: Database, tool_id: str = "shop") -> str:
    """The ``tools.config`` column as the database holds it, read with plain SQL."""
    async with db.connect() as conn:
        value = await conn.scalar(text("SELECT config FROM tools WHERE id = :id"), {"id": tool_id})
    return value if isinstance(value, str) else json.dumps(value)


async def updated_and_revision(db: Database, tool_id: str = "shop") -> tuple[Any, int]:
    """The tool's ``updated_at`` and the tools revision other processes poll."""
    async with db.connect() as conn:
        updated = await conn.scalar(
            text("SELECT updated_at FROM tools WHERE id = :id"), {"id": tool_id}
        )
        revision = await conn.scalar(
            text("SELECT value FROM metadata WHERE key = :key"), {"key": METADATA_TOOLS_REVISION}
        )
    return updated, int(revision)


def sealed_values(raw: str) -> list[str]:
    return _SEALED.findall(raw)


def opens_with(key: str, sealed: str) -> bool:
    try:
        Fernet(key).decrypt(sealed[len(PREFIX) :])
    except InvalidToken:
        return False
    return True


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


def signed(body: bytes, secret: str = SIGNING) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": f"sha256={digest}"}


@asynccontextmanager
async def app(runtime_settings: Settings) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    async with open_runtime(runtime_settings) as runtime, serving(runtime) as client:
        yield runtime, client


# Sealing (pure)


def test_sealing_is_idempotent_and_opening_reverses_it() -> None:
    at_rest = SecretsAtRest(SecretBox([KEY]))
    definition = tool()
    definition["forward"]["headers"]["X-Api-Key"] = ""  # empty: nothing to hide
    given = copy.deepcopy(definition)
    sealed = at_rest.seal(definition)
    assert at_rest.seal(sealed) == sealed  # already sealed with the first key: left as it is
    assert sealed["forward"]["headers"]["X-Team"] == "payments"
    assert sealed["forward"]["headers"]["X-Api-Key"] == ""
    assert sealed["auth"]["header"] == "X-Signature"
    assert_no_secret(json.dumps(sealed))
    assert at_rest.open(sealed).config == definition
    assert at_rest.open(definition).config == definition  # plaintext reads as it is
    assert definition == given  # sealing works on a copy
    assert not at_rest.needs_rewrite(sealed) and at_rest.needs_rewrite(definition)


def test_without_a_key_sealed_values_may_be_kept_but_plaintext_is_refused() -> None:
    sealed = SecretsAtRest(SecretBox([KEY])).seal(tool())
    refusing = SecretsAtRest(None, plaintext_allowed=False)
    assert refusing.seal(sealed) == sealed
    assert refusing.open(sealed).undecryptable == (
        "auth.secret",
        "auth.secrets[0]",
        "forward.signing_secret",
        "forward.headers.Authorization",
    )
    with pytest.raises(ToolConfigError, match="SECRETS_KEY"):
        refusing.seal(tool())


# At rest


async def test_the_column_never_holds_a_secret_when_a_key_is_set(db: Database) -> None:
    tools = service(db, KEY)
    await tools.create(tool())
    raw = await raw_config(db)
    assert_no_secret(raw)
    assert len(sealed_values(raw)) == 4  # two auth secrets, signing secret, Authorization
    assert all(opens_with(KEY, value) for value in sealed_values(raw))
    assert "payments" in raw and "X-Signature" in raw  # only the secrets are encrypted

    await tools.patch("shop", {"description": "edited", "auth": {"secrets": ["n3w-older"]}})
    assert "n3w-older" not in await raw_config(db)
    view = await tools.get("shop")
    view["description"] = "replaced"
    await tools.replace("shop", view)
    await tools.apply([{**tool(), "description": "applied"}])
    raw = await raw_config(db)
    assert_no_secret(raw)
    assert "applied" in raw

    # ...and everything that reads through the store sees plaintext
    stored = (await ToolStore.from_settings(db, settings(db, KEY)).get("shop"))["config"]
    assert stored["auth"]["secrets"] == [OLDER]
    assert stored["forward"]["signing_secret"] == FORWARD
    assert stored["forward"]["headers"] == {
        "Authorization": f"Bearer {FORWARD_TOKEN}",
        "X-Team": "payments",
    }


async def test_stored_secrets_work_through_the_app(db: Database) -> None:
    async with app(settings(db, KEY)) as (_, client):
        created = await client.post("/api/v1/tools", json=tool(forward=None))
        assert created.status_code == 201, created.text
        body = b'{"order": 1}'
        accepted = await client.post("/webhooks/shop", content=body, headers=signed(body))
        older = await client.post("/webhooks/shop", content=b"{}", headers=signed(b"{}", OLDER))
        forged = await client.post("/webhooks/shop", content=body, headers=signed(body, "x"))
    assert accepted.status_code == 202, accepted.text
    assert older.status_code == 202, older.text
    assert forged.status_code == 401
    assert_no_secret(await raw_config(db))


async def test_the_embedded_database_without_a_key_stores_plaintext(sqlite_db: Database) -> None:
    await service(sqlite_db).create(tool())
    raw = await raw_config(sqlite_db)
    assert SIGNING in raw and FORWARD in raw and PREFIX not in raw
    async with app(settings(sqlite_db)) as (_, client):
        response = await client.post("/webhooks/shop", content=b"{}", headers=signed(b"{}"))
    assert response.status_code == 202


# PostgreSQL without SECRETS_KEY


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (tool(), "auth.secret"),
        ({"id": "t", "auth": {"type": "bearer", "secrets": ["a", "b"]}}, "auth.secrets[0]"),
        (tool(auth={"type": "none"}), "forward.signing_secret"),
        (
            {"id": "t", "forward": {"url": "https://x.example", "headers": {"X-Api-Key": "k"}}},
            "forward.headers.X-Api-Key",
        ),
    ],
)
async def test_postgresql_without_a_key_refuses_secrets(
    postgres_db: Database, definition: dict[str, Any], field: str
) -> None:
    tools = service(postgres_db)
    with pytest.raises(ToolConfigError) as caught:
        await tools.create(definition)
    assert caught.value.field == field
    assert "SECRETS_KEY" in str(caught.value)
    assert "Fernet.generate_key()" in str(caught.value)
    assert await tools.list_all() == []


async def test_apply_on_postgresql_without_a_key_writes_nothing_when_one_has_secrets(
    postgres_db: Database,
) -> None:
    tools = service(postgres_db)
    plain = {"id": "plain", "auth": {"type": "none"}}
    with pytest.raises(ToolConfigError) as caught:
        await tools.apply([plain, tool()])
    assert caught.value.field == "auth.secret"
    assert await tools.list_all() == []


async def test_postgresql_without_a_key_takes_tools_without_secrets(postgres_db: Database) -> None:
    async with app(settings(postgres_db)) as (_, client):
        plain = {"id": "plain", "forward": {"url": "https://x.example", "headers": {"X-Team": "a"}}}
        assert (await client.post("/api/v1/tools", json=plain)).status_code == 201
        refused = await client.patch("/api/v1/tools/plain", json={"auth": tool()["auth"]})
        assert refused.status_code == 400
        assert refused.json()["field"] == "auth.secret"
        assert "SECRETS_KEY" in refused.json()["detail"]
        assert_no_secret(refused.text)
        shown = (await client.get("/api/v1/tools/plain")).json()
        assert "auth" not in shown  # the refused change left nothing behind
        response = await client.post("/webhooks/plain", content=b"{}")
    assert response.status_code == 202


def test_the_cli_refuses_secrets_on_postgresql_without_a_key(postgres_db: Database) -> None:
    cli = Cli(clean_env(DATABASE_URL=settings(postgres_db).database_url or ""))
    line = one_line_error(
        cli("tools", "add", "t", "--auth-type", "token", "--header", "X-T", "--secret", SIGNING)
    )
    assert "SECRETS_KEY" in line and "Fernet.generate_key()" in line and "auth.secret" in line
    assert SIGNING not in line
    cli.ok("tools", "add", "plain")
    assert [item["id"] for item in cli.json("tools", "list")["items"]] == ["plain"]


# Wrong or missing key


async def test_a_tool_the_key_cannot_open_is_skipped_and_the_others_served(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await service(db, KEY).create(tool("locked", forward=None))
    await service(db, KEY).create({"id": "open", "auth": {"type": "none"}})
    sealed = await raw_config(db, "locked")
    caplog.set_level(logging.DEBUG)
    async with app(settings(db, OTHER_KEY)) as (runtime, client):
        assert runtime.tools.get("locked") is None
        assert runtime.tools.get("open") is not None
        refused = await client.post("/webhooks/locked", content=b"{}", headers=signed(b"{}"))
        served = await client.post("/webhooks/open", content=b"{}")
        # the management views are redacted, so they work without the secrets
        listed = await client.get("/api/v1/tools")
        shown = await client.get("/api/v1/tools/locked")
        edited = await client.patch("/api/v1/tools/locked", json={"description": "kept"})
    assert refused.status_code == 404
    assert served.status_code == 202
    assert [item["id"] for item in listed.json()["items"]] == ["locked", "open"]
    assert shown.status_code == 200 and shown.json()["auth"]["secret"] == "********"
    assert edited.status_code == 200, edited.text
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "'locked' is not served" in r.getMessage()
    ]
    assert errors and "SECRETS_KEY" in errors[0] and "auth.secret" in errors[0]
    assert_no_secret(caplog.text)
    # the edit kept the secrets it could not read: the right key still opens them
    assert sealed_values(await raw_config(db, "locked")) == sealed_values(sealed)
    async with app(settings(db, KEY)) as (runtime, client):
        response = await client.post("/webhooks/locked", content=b"{}", headers=signed(b"{}"))
    assert response.status_code == 202


async def test_an_encrypted_secret_without_any_key_names_secrets_key(
    sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await service(sqlite_db, KEY).create(tool("locked"))
    caplog.set_level(logging.WARNING)
    async with app(settings(sqlite_db)) as (runtime, _):
        assert runtime.tools.get("locked") is None
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "locked" in error and "SECRETS_KEY is not set" in error


def test_the_cli_shows_a_tool_it_cannot_decrypt_and_says_why(sqlite_db: Database) -> None:
    url = settings(sqlite_db).database_url or ""
    Cli(clean_env(DATABASE_URL=url, SECRETS_KEY=KEY)).ok(
        "tools", "add", "locked", "--auth-type", "token", "--header", "X-T", "--secret", SIGNING
    )
    wrong = Cli(clean_env(DATABASE_URL=url, SECRETS_KEY=OTHER_KEY))
    shown = wrong("tools", "show", "locked", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["auth"]["secret"] == "********"
    assert "SECRETS_KEY" in shown.stderr
    sent = wrong("send", "locked", "--url", "http://127.0.0.1:9")
    assert sent.returncode != 0 and "SECRETS_KEY" in sent.stderr
    assert_no_secret(shown.stdout + shown.stderr, sent.stdout + sent.stderr)


# Rotation


async def test_rotation_old_key_second_still_decrypts_and_saving_uses_the_new(
    db: Database,
) -> None:
    await service(db, OTHER_KEY).create(tool())
    before = sealed_values(await raw_config(db))
    assert all(opens_with(OTHER_KEY, value) for value in before)

    rotated = service(db, f"{KEY}, {OTHER_KEY}")  # the new key first, the old one behind it
    stored = (await ToolStore.from_settings(db, settings(db, f"{KEY},{OTHER_KEY}")).get("shop"))[
        "config"
    ]
    assert stored["auth"]["secret"] == SIGNING
    assert sealed_values(await raw_config(db)) == before  # reading changes nothing

    await rotated.patch("shop", {"description": "re-saved"})
    after = sealed_values(await raw_config(db))
    assert len(after) == 4
    assert all(opens_with(KEY, value) and not opens_with(OTHER_KEY, value) for value in after)
    only_new = ToolStore.from_settings(db, settings(db, KEY))
    assert (await only_new.get("shop"))["config"]["forward"]["signing_secret"] == FORWARD


async def test_starting_with_a_new_first_key_reencrypts_without_an_edit(db: Database) -> None:
    await service(db, OTHER_KEY).create(tool())
    await service(db, OTHER_KEY).create({"id": "plain", "auth": {"type": "none"}})
    updated, revision = await updated_and_revision(db)
    async with app(settings(db, f"{KEY},{OTHER_KEY}")) as (runtime, client):
        assert runtime.tools.get("shop") is not None
        response = await client.post("/webhooks/shop", content=b"{}", headers=signed(b"{}"))
    assert response.status_code == 202
    after = sealed_values(await raw_config(db))
    assert len(after) == 4 and all(not opens_with(OTHER_KEY, value) for value in after)
    assert await updated_and_revision(db) == (
        updated,
        revision,
    )  # the definition itself did not change
    async with app(settings(db, KEY)) as (runtime, _):  # the old key can go now
        assert runtime.tools.get("shop") is not None


async def test_plaintext_from_before_the_key_is_encrypted_at_start(db: Database) -> None:
    await ToolService(ToolStore(db)).create(tool())  # as an older release stored it
    assert SIGNING in await raw_config(db)
    async with app(settings(db, KEY)) as (runtime, _):
        assert runtime.tools.get("shop") is not None
    raw = await raw_config(db)
    assert_no_secret(raw)
    assert all(opens_with(KEY, value) for value in sealed_values(raw))


async def test_postgresql_warns_at_start_about_plaintext_secrets(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await ToolService(ToolStore(postgres_db)).create(tool())  # as an older release stored it
    caplog.set_level(logging.WARNING)
    async with app(settings(postgres_db)) as (runtime, _):
        assert runtime.tools.get("shop") is not None  # still served: plaintext is readable
    assert any("SECRETS_KEY" in r.getMessage() and "shop" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog.text)


# SECRETS_KEY itself


@pytest.mark.parametrize(
    ("value", "says", "hidden"),
    [
        ("not-a-fernet-key", "the value is not a Fernet key", "not-a-fernet-key"),
        (KEY[:-4], "the value is not a Fernet key", KEY[:-4]),
        (f"{KEY},{OTHER_KEY[:20]}", "key 2 of 2 is not a Fernet key", OTHER_KEY[:20]),
        (" , ", "no key given", None),
    ],
)
def test_a_bad_secrets_key_is_a_config_error(value: str, says: str, hidden: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SECRETS_KEY": value})
    message = str(caught.value)
    assert message.startswith("SECRETS_KEY: ") and says in message
    assert "Fernet.generate_key().decode()" in message
    assert KEY not in message
    if hidden is not None:
        assert hidden not in message  # a key, even a broken one, is never repeated


async def test_a_bad_secrets_key_stops_a_process_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^SECRETS_KEY: "):
        async with open_runtime(Settings(data_dir=tmp_path, secrets_key="nope")):
            pass
    with pytest.raises(ConfigError, match=r"^SECRETS_KEY: "):
        SecretBox.from_setting("nope")
    result = Cli(clean_env(DATA_DIR=str(tmp_path), SECRETS_KEY="nope"))("tools", "list")
    assert result.returncode == 2 and "SECRETS_KEY" in one_line_error(result)


def test_good_keys_are_accepted_and_never_shown() -> None:
    parsed = Settings.from_env({"SECRETS_KEY": f" {KEY} , {OTHER_KEY} "})
    assert parsed.secrets_key == f"{KEY},{OTHER_KEY}"
    assert KEY not in repr(parsed)


# Views


async def test_api_views_and_logs_never_contain_a_secret(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with app(settings(db, KEY)) as (_, client):
        responses = [await client.post("/api/v1/tools", json=tool())]
        responses.append(await client.get("/api/v1/tools"))
        responses.append(await client.get("/api/v1/tools/shop"))
        responses.append(await client.put("/api/v1/tools/shop", json=responses[-1].json()))
        responses.append(await client.patch("/api/v1/tools/shop", json={"description": "d"}))
        responses.append(await client.get("/api/v1/tools/shop"))
    for response in responses:
        assert response.status_code in (200, 201), response.text
        assert PREFIX not in response.text  # not even the ciphertext
    assert_no_secret(*(r.text for r in responses), caplog.text)
    assert responses[-1].json()["forward"]["headers"]["X-Team"] == "payments"


def test_cli_views_never_contain_a_secret(db: Database, tmp_path: Path) -> None:
    cli = Cli(clean_env(DATABASE_URL=settings(db).database_url or "", SECRETS_KEY=KEY))
    manifest = tmp_path / "tools.json"
    manifest.write_text(json.dumps([tool("applied")]))
    outputs = [
        cli("tools", "add", "t", "--auth-type", "token", "--header", "X-T", "--secret", SIGNING),
        cli("tools", "apply", "-f", str(manifest)),
        cli("tools", "update", "t", "--add-secret", OLDER),
        cli("tools", "show", "t"),
        cli("tools", "show", "applied", "--json"),
        cli("tools", "list"),
        cli("tools", "list", "--json"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout, result.stderr)
    assert json.loads(outputs[4].stdout)["forward"]["signing_secret"] == "********"
