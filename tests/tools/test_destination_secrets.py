"""The secrets of a tool's destinations are a forward's: encrypted at rest with SECRETS_KEY,
redacted in every view, kept when a redacted view comes back, refused as a placeholder with
nothing stored behind it, and not carried over to another host. A destination is matched to the
stored one by its ``id``, wherever it now is in the list."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.tools.test_secrets import opens_with, raw_config, sealed_values, service, settings
from webhook_worker.errors import ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.service import REDACTED, ToolService

KEY = Fernet.generate_key().decode()
BILLING_SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BILLING_TOKEN = "b1lling-t0ken"
CRM_SIGNING = "whsec_Y3JtLXNpZ25pbmctc2VjcmV0"
CRM_PASSWORD = "crm-passw0rd"
CRM_KEY = "crm-api-k3y"
SECRETS = (BILLING_SIGNING, BILLING_TOKEN, CRM_SIGNING, CRM_PASSWORD, CRM_KEY)


def billing(url: str = "https://billing.example.com/in") -> dict[str, Any]:
    return {
        "id": "billing",
        "url": url,
        "signing_secret": BILLING_SIGNING,
        "headers": {"Authorization": f"Bearer {BILLING_TOKEN}", "X-Team": "payments"},
    }


def crm() -> dict[str, Any]:
    return {
        "id": "crm",
        "url": f"https://bot:{CRM_PASSWORD}@crm.example.com/in?api_key={CRM_KEY}&page=1",
        "signing_secret": CRM_SIGNING,
    }


def tool(*destinations: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "shop",
        "mode": "store_and_forward",
        "destinations": list(destinations) or [billing(), crm()],
    }


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db)


@pytest.fixture
def tools(store: ToolStore) -> ToolService:
    return ToolService(store)


async def stored_destinations(store: ToolStore) -> list[dict[str, Any]]:
    config: dict[str, Any] = (await store.get("shop"))["config"]
    destinations: list[dict[str, Any]] = config["destinations"]
    return destinations


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output


# Views


async def test_every_view_redacts_each_destination(tools: ToolService) -> None:
    views = [await tools.create(tool()), await tools.get("shop"), *await tools.list_all()]
    for view in views:
        assert_no_secret(json.dumps(view))
        first, second = view["destinations"]
        assert first == {
            "id": "billing",
            "url": "https://billing.example.com/in",
            "signing_secret": REDACTED,
            "headers": {"Authorization": REDACTED, "X-Team": "payments"},
        }
        assert second == {
            "id": "crm",
            "url": f"https://{REDACTED}:{REDACTED}@crm.example.com/in?api_key={REDACTED}&page=1",
            "signing_secret": REDACTED,
        }


async def test_the_store_keeps_the_real_secrets(tools: ToolService, store: ToolStore) -> None:
    await tools.create(tool())
    assert await stored_destinations(store) == [billing(), crm()]


# At rest


async def test_the_column_holds_them_encrypted_when_a_key_is_set(db: Database) -> None:
    with_key = service(db, KEY)
    await with_key.create(tool())
    raw = await raw_config(db)
    assert_no_secret(raw)
    # billing: signing secret, Authorization; crm: password, api_key, signing secret
    assert len(sealed_values(raw)) == 5
    assert all(opens_with(KEY, value) for value in sealed_values(raw))
    assert "payments" in raw and "billing.example.com" in raw and "crm.example.com" in raw
    # Everything that reads through the store sees plaintext.
    stored = (await ToolStore.from_settings(db, settings(db, KEY)).get("shop"))["config"]
    assert stored["destinations"] == [billing(), crm()]


async def test_a_shared_database_without_a_key_refuses_them(postgres_db: Database) -> None:
    without_key = service(postgres_db)
    with pytest.raises(ToolConfigError) as caught:
        await without_key.create(tool(billing()))
    assert caught.value.field == "destinations[0].signing_secret"
    assert "SECRETS_KEY is required" in caught.value.message
    await without_key.create(tool({"id": "plain", "url": "https://e.com/in"}))


# A redacted view sent back


async def test_put_patch_and_apply_of_the_view_keep_the_secrets(
    tools: ToolService, store: ToolStore
) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    view["description"] = "put"
    assert_no_secret(json.dumps(await tools.replace("shop", view)))
    assert await stored_destinations(store) == [billing(), crm()]
    await tools.patch("shop", {"destinations": view["destinations"], "description": "patched"})
    assert await stored_destinations(store) == [billing(), crm()]
    view["description"] = "applied"
    assert await tools.apply([view]) == [("shop", "updated")]
    assert await stored_destinations(store) == [billing(), crm()]


async def test_secrets_follow_the_destination_s_id_not_its_position(
    tools: ToolService, store: ToolStore
) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    reordered = [
        {"id": "new", "url": "https://new.example.com/in"},
        view["destinations"][1],
        view["destinations"][0],
    ]
    await tools.patch("shop", {"destinations": reordered})
    assert await stored_destinations(store) == [reordered[0], crm(), billing()]


async def test_a_destination_may_change_its_own_secret(
    tools: ToolService, store: ToolStore
) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    view["destinations"][0]["headers"]["Authorization"] = "Bearer n3w"
    await tools.replace("shop", view)
    first, second = await stored_destinations(store)
    assert first == {**billing(), "headers": {"Authorization": "Bearer n3w", "X-Team": "payments"}}
    assert second == crm()


# A placeholder with nothing stored behind it


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"signing_secret": REDACTED}, "destinations[1].signing_secret"),
        ({"headers": {"X-Api-Key": REDACTED}}, "destinations[1].headers.X-Api-Key"),
        ({"url": f"https://{REDACTED}:{REDACTED}@new.example.com/"}, "destinations[1].url"),
    ],
)
async def test_a_placeholder_for_a_destination_not_stored_is_refused(
    tools: ToolService, store: ToolStore, change: dict[str, Any], field: str
) -> None:
    definition = tool(billing(), {"id": "new", "url": "https://new.example.com/", **change})
    with pytest.raises(ToolConfigError) as caught:
        await tools.create(definition)
    assert caught.value.field == field
    assert "enter the secret itself" in caught.value.message
    with pytest.raises(ToolConfigError) as caught:
        await tools.apply([definition])  # an export applied into a new environment
    assert caught.value.field == field
    assert await store.list_all() == []

    # Stored, but without that destination (or under another id): still nothing behind it.
    await tools.create(tool(billing()))
    for write in (
        tools.replace("shop", definition),
        tools.apply([definition]),
        tools.patch("shop", {"destinations": definition["destinations"]}),
    ):
        with pytest.raises(ToolConfigError) as caught:
            await write
        assert caught.value.field == field
    assert await stored_destinations(store) == [billing()]


async def test_a_renamed_destination_needs_its_secrets_again(
    tools: ToolService, store: ToolStore
) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    view["destinations"][0]["id"] = "invoices"
    with pytest.raises(ToolConfigError) as caught:
        await tools.replace("shop", view)
    assert caught.value.field == "destinations[0].signing_secret"
    assert "none is stored" in caught.value.message
    assert await stored_destinations(store) == [billing(), crm()]


# The target changed


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/in",
        "http://billing.example.com/in",  # another scheme
        "https://billing.example.com:8443/in",  # another port
    ],
)
async def test_a_destination_moved_to_another_host_needs_its_secrets_again(
    tools: ToolService, store: ToolStore, url: str
) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    moved = copy.deepcopy(view)
    moved["destinations"][0]["url"] = url
    for write in (
        tools.replace("shop", moved),
        tools.apply([moved]),
        tools.patch("shop", {"destinations": moved["destinations"]}),
    ):
        with pytest.raises(ToolConfigError) as caught:
            await write
        assert caught.value.field == "destinations[0].signing_secret"
        assert "the target changed (destinations[0].url names another host" in (
            caught.value.message
        )
    del moved["destinations"][0]["signing_secret"]
    with pytest.raises(ToolConfigError) as caught:
        await tools.replace("shop", moved)
    assert caught.value.field == "destinations[0].headers.Authorization"
    assert await stored_destinations(store) == [billing(), crm()]

    # Given again (or removed), the change goes through; the other destination keeps its own.
    moved["destinations"][0]["headers"] = {"Authorization": "Bearer n3w", "X-Team": "payments"}
    await tools.replace("shop", moved)
    first, second = await stored_destinations(store)
    assert first == {
        "id": "billing",
        "url": url,
        "headers": {"Authorization": "Bearer n3w", "X-Team": "payments"},
    }
    assert second == crm()


async def test_the_same_host_keeps_the_secrets(tools: ToolService, store: ToolStore) -> None:
    await tools.create(tool())
    view = await tools.get("shop")
    view["destinations"][0]["url"] = "https://BILLING.example.com:443/other"
    await tools.replace("shop", view)
    first, _ = await stored_destinations(store)
    assert first == {**billing(), "url": "https://BILLING.example.com:443/other"}
