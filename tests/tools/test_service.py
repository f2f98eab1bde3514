"""ToolService on both databases: redaction, secrets surviving edits, merge patch, apply."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook_worker.errors import NotFoundError, ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.service import REDACTED, ToolService

SECRETS = ("primary-s3cret", "rotated-0ld", "rotated-0lder", "whsec_forward", "Bearer fwd-t0ken")


def full_tool(tool_id: str = "shop") -> dict[str, Any]:
    return {
        "id": tool_id,
        "description": "orders",
        "auth": {
            "type": "hmac",
            "header": "X-Signature",
            "secret": "primary-s3cret",
            "secrets": ["rotated-0ld", "rotated-0lder"],
        },
        "mode": "store_and_forward",
        "forward": {
            "url": "https://example.com/in",
            "signing_secret": "whsec_forward",
            "headers": {"Authorization": "Bearer fwd-t0ken", "X-Team": "payments"},
        },
    }


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db)


@pytest.fixture
def service(store: ToolStore) -> ToolService:
    return ToolService(store)


def assert_no_secret(view: Any) -> None:
    text = json.dumps(view)
    for secret in SECRETS:
        assert secret not in text


async def stored_config(store: ToolStore, tool_id: str = "shop") -> dict[str, Any]:
    config: dict[str, Any] = (await store.get(tool_id))["config"]
    return config


async def test_every_view_is_redacted(service: ToolService) -> None:
    created = await service.create(full_tool())
    views = [created, await service.get("shop"), *await service.list_all()]
    for view in views:
        assert_no_secret(view)
        assert view["auth"]["secret"] == REDACTED
        assert view["auth"]["secrets"] == [REDACTED, REDACTED]
        assert view["forward"]["signing_secret"] == REDACTED
        assert view["forward"]["headers"] == {"Authorization": REDACTED, "X-Team": "payments"}
        assert view["forward"]["url"] == "https://example.com/in"
        assert view["id"] == "shop"
        assert view["created_at"] and view["updated_at"]


async def test_the_store_keeps_the_real_secrets(service: ToolService, store: ToolStore) -> None:
    await service.create(full_tool())
    config = await stored_config(store)
    assert config["auth"]["secret"] == "primary-s3cret"
    assert config["auth"]["secrets"] == ["rotated-0ld", "rotated-0lder"]
    assert config["forward"]["signing_secret"] == "whsec_forward"
    assert config["forward"]["headers"]["Authorization"] == "Bearer fwd-t0ken"


async def test_put_of_a_redacted_view_keeps_the_secrets(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(full_tool())
    view = await service.get("shop")
    view["description"] = "orders and refunds"
    replaced = await service.replace("shop", view)
    assert_no_secret(replaced)
    assert replaced["description"] == "orders and refunds"
    assert await stored_config(store) == {
        **full_tool(),
        "provider": "generic",
        "enabled": True,  # the view says it, so the definition now does
        "description": "orders and refunds",
    }


async def test_put_replaces_the_whole_definition(service: ToolService, store: ToolStore) -> None:
    await service.create(full_tool())
    await service.replace("shop", {"auth": {"type": "token", "header": "X-T", "secret": "new"}})
    assert await stored_config(store) == {
        "id": "shop",
        "provider": "generic",
        "auth": {"type": "token", "header": "X-T", "secret": "new"},
    }


async def test_patch_with_placeholders_keeps_the_secrets(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(full_tool())
    patched = await service.patch(
        "shop",
        {
            "auth": {"secret": REDACTED, "secrets": [REDACTED, REDACTED]},
            "forward": {"signing_secret": REDACTED, "headers": {"Authorization": REDACTED}},
            "description": "patched",
        },
    )
    assert_no_secret(patched)
    assert await stored_config(store) == {
        **full_tool(),
        "provider": "generic",
        "description": "patched",
    }


async def test_patch_can_change_a_secret(service: ToolService, store: ToolStore) -> None:
    await service.create(full_tool())
    await service.patch("shop", {"auth": {"secret": "brand-new"}})
    config = await stored_config(store)
    assert config["auth"]["secret"] == "brand-new"
    assert config["auth"]["secrets"] == ["rotated-0ld", "rotated-0lder"]


async def test_merge_patch_null_removes_fields(service: ToolService, store: ToolStore) -> None:
    await service.create(full_tool())
    view = await service.patch(
        "shop",
        {"description": None, "mode": None, "forward": None, "auth": {"secrets": None}},
    )
    assert "forward" not in view and "description" not in view and "mode" not in view
    config = await stored_config(store)
    assert config == {
        "id": "shop",
        "provider": "generic",
        "auth": {"type": "hmac", "header": "X-Signature", "secret": "primary-s3cret"},
    }


async def test_patch_that_makes_the_tool_invalid_changes_nothing(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(full_tool())
    with pytest.raises(ToolConfigError) as caught:
        await service.patch("shop", {"forward": None})  # store_and_forward needs it
    assert caught.value.field == "forward.url"
    assert await stored_config(store) == {**full_tool(), "provider": "generic"}


async def test_patch_and_enabled_flag(service: ToolService, store: ToolStore) -> None:
    await service.create({"id": "demo"})
    assert (await service.patch("demo", {"enabled": False}))["enabled"] is False
    assert (await store.get("demo"))["enabled"] is False


async def test_unknown_tools_are_not_found(service: ToolService) -> None:
    for call in (
        service.get("ghost"),
        service.patch("ghost", {"enabled": False}),
        service.replace("ghost", {"id": "ghost"}),
        service.delete("ghost"),
    ):
        with pytest.raises(NotFoundError, match="ghost"):
            await call


async def test_create_twice_names_the_id(service: ToolService) -> None:
    await service.create({"id": "demo"})
    with pytest.raises(ToolConfigError) as caught:
        await service.create({"id": "demo"})
    assert caught.value.field == "id"


async def test_delete(service: ToolService) -> None:
    await service.create({"id": "demo"})
    await service.delete("demo")
    assert await service.list_all() == []


async def test_every_change_bumps_the_revision(service: ToolService, store: ToolStore) -> None:
    before = await store.revision()
    await service.create({"id": "demo"})
    await service.patch("demo", {"description": "x"})
    await service.delete("demo")
    assert await store.revision() == before + 3


async def test_apply_creates_updates_and_leaves_unchanged(
    service: ToolService, store: ToolStore
) -> None:
    assert await service.apply([full_tool("a"), {"id": "b"}]) == [
        ("a", "created"),
        ("b", "created"),
    ]
    revision = await store.revision()
    assert await service.apply([full_tool("a"), {"id": "b"}]) == [
        ("a", "unchanged"),
        ("b", "unchanged"),
    ]
    assert await store.revision() == revision  # nothing was written
    changed = {"id": "b", "description": "now described"}
    assert await service.apply([full_tool("a"), changed, {"id": "c"}]) == [
        ("a", "unchanged"),
        ("b", "updated"),
        ("c", "created"),
    ]
    assert (await stored_config(store, "b"))["description"] == "now described"


async def test_apply_of_an_exported_redacted_view_is_unchanged(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(full_tool())
    exported = await service.get("shop")
    assert (await stored_config(store))["auth"]["secret"] == "primary-s3cret"
    assert await service.apply([exported]) == [("shop", "unchanged")]


async def test_apply_validates_everything_before_writing(
    service: ToolService, store: ToolStore
) -> None:
    await service.create({"id": "existing"})
    with pytest.raises(ToolConfigError) as caught:
        await service.apply(
            [
                {"id": "new-one"},
                {"id": "existing", "description": "changed"},
                {"id": "broken", "filter": "a[?"},
            ]
        )
    assert caught.value.field == "filter"
    assert [row["id"] for row in await store.list_all()] == ["existing"]
    assert "description" not in await stored_config(store, "existing")


async def test_apply_with_placeholders_keeps_the_secrets(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(full_tool())
    definition = full_tool()
    definition["auth"].update(secret=REDACTED, secrets=[REDACTED, REDACTED])
    definition["forward"]["signing_secret"] = REDACTED
    assert await service.apply([definition]) == [("shop", "unchanged")]
    assert await stored_config(store) == {**full_tool(), "provider": "generic"}


async def test_merge_patch_nulls_inside_a_new_object_are_dropped(
    service: ToolService, store: ToolStore
) -> None:
    await service.create({"id": "demo"})
    await service.patch("demo", {"event_type": {"header": "X-Event", "path": None}})
    assert (await stored_config(store, "demo"))["event_type"] == {"header": "X-Event"}
