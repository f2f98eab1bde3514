"""ToolService.set_paused on both databases: the stored ``paused`` flag of one destination,
written like every other tool change (revision bumped, secrets kept), idempotent, and never
overwriting a change made meanwhile."""

from __future__ import annotations

from typing import Any

import pytest

from webhook_worker.errors import ConflictError, NotFoundError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import DestinationFlags, ToolStore
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.service import ToolService

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def shop() -> dict[str, Any]:
    return {
        "id": "shop",
        "destinations": [
            {"id": "billing", "url": "https://billing.example.com/in", "signing_secret": SIGNING},
            {"id": "crm", "url": "https://crm.example.com/in", "circuit_breaker": {}},
        ],
    }


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db)


@pytest.fixture
def changes() -> list[str]:
    return []


@pytest.fixture
def service(store: ToolStore, changes: list[str]) -> ToolService:
    async def changed() -> None:
        changes.append("changed")

    return ToolService(store, changed)


async def destinations(store: ToolStore) -> list[dict[str, Any]]:
    config: dict[str, Any] = (await store.get("shop"))["config"]
    return list(config["destinations"])


async def test_pause_and_resume_change_the_stored_flag(
    service: ToolService, store: ToolStore, changes: list[str]
) -> None:
    await service.create(shop())
    changes.clear()
    before = await store.revision()

    assert await service.set_paused("shop", "crm", True) is True
    billing, crm = await destinations(store)
    assert crm["paused"] is True and "paused" not in billing
    assert billing["signing_secret"] == SIGNING  # the secrets are kept
    assert parse_tool((await store.get("shop"))["config"]).destinations[1].paused
    assert await store.revision() == before + 1  # every process reloads it
    assert changes == ["changed"]  # and this one at once

    assert await service.set_paused("shop", "crm", False) is True
    assert "paused" not in (await destinations(store))[1]
    assert await store.revision() == before + 2


async def test_pausing_twice_changes_nothing_the_second_time(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(shop())
    assert await service.set_paused("shop", "billing", True) is True
    revision = await store.revision()
    assert await service.set_paused("shop", "billing", True) is False
    assert await service.set_paused("shop", "crm", False) is False
    assert await store.revision() == revision


async def test_unknown_tool_or_destination_is_not_found(service: ToolService) -> None:
    await service.create(shop())
    with pytest.raises(NotFoundError, match="no tool 'nope'"):
        await service.set_paused("nope", "billing", True)
    with pytest.raises(
        NotFoundError,
        match=r"tool 'shop' has no destination 'erp' \(its destinations: billing, crm\)",
    ):
        await service.set_paused("shop", "erp", True)


async def test_the_forward_cannot_be_paused(service: ToolService, store: ToolStore) -> None:
    await service.create(
        {"id": "legacy", "mode": "store_and_forward", "forward": {"url": "https://e.com/in"}}
    )
    with pytest.raises(ConflictError) as caught:
        await service.set_paused("legacy", "default", True)
    assert "delivers with `forward`" in str(caught.value)
    assert "move it into `destinations` (with id 'default')" in str(caught.value)
    assert "paused" not in (await store.get("legacy"))["config"]["forward"]


class _EditsFirst(ToolStore):
    """A store on which another writer changes the tool between the first read and write."""

    edited = False

    async def get(self, tool_id: str) -> dict[str, Any]:
        row = await super().get(tool_id)
        if not self.edited:
            self.edited = True
            await super().replace(parse_tool({**row["config"], "description": "meanwhile"}))
        return row


async def test_a_change_made_meanwhile_is_kept(db: Database) -> None:
    store = _EditsFirst(db)
    service = ToolService(store)
    await service.create(shop())
    assert await service.set_paused("shop", "billing", True) is True
    config = (await ToolStore(db).get("shop"))["config"]
    assert config["description"] == "meanwhile"
    assert config["destinations"][0]["paused"] is True


async def test_a_stale_replace_is_refused(service: ToolService, store: ToolStore) -> None:
    await service.create(shop())
    read = await store.get("shop")
    await service.patch("shop", {"description": "newer"})
    with pytest.raises(ConflictError, match="was changed meanwhile"):
        await store.replace(parse_tool(read["config"]), unchanged_since=read["updated_at"])
    with pytest.raises(NotFoundError):
        await store.replace(
            parse_tool({**read["config"], "id": "gone"}), unchanged_since=read["updated_at"]
        )


async def test_destination_flags_cover_every_destination(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(shop())
    await service.create(
        {"id": "legacy", "mode": "store_and_forward", "forward": {"url": "https://e.com/in"}}
    )
    await service.set_paused("shop", "billing", True)
    assert await store.destination_flags() == {
        ("shop", "billing"): DestinationFlags(paused=True, circuit_breaker=False),
        ("shop", "crm"): DestinationFlags(paused=False, circuit_breaker=True),
        ("legacy", "default"): DestinationFlags(paused=False, circuit_breaker=False),
    }


class _PausedFirst(ToolStore):
    """A store on which a pause lands between a patch's first read and its write."""

    paused = False

    async def get(self, tool_id: str) -> dict[str, Any]:
        row = await super().get(tool_id)
        if not self.paused:
            self.paused = True
            config = {**row["config"]}
            config["destinations"] = [{**config["destinations"][0], "paused": True}]
            await super().replace(parse_tool(config))
        return row


async def test_a_patch_does_not_undo_a_pause_made_meanwhile(db: Database) -> None:
    await ToolService(ToolStore(db)).create(shop())
    changed = await ToolService(_PausedFirst(db)).patch("shop", {"description": "edited"})
    assert changed["description"] == "edited"
    assert changed["destinations"][0]["paused"] is True
    config = (await ToolStore(db).get("shop"))["config"]
    assert config["destinations"][0]["paused"] is True
