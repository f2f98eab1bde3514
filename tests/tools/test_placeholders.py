"""The redaction placeholder ``********`` stands for a stored secret, and only for one: with
nothing stored behind it (a create, ``tools apply`` into a new environment, a secret the stored
tool lacks) it is refused, and so it is for a secret that was sent to another host than the one
the definition's URL now names (a changed ``forward.url`` does not take the old credentials
with it)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from webhook_worker.errors import ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.service import REDACTED, ToolService

SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def tool(tool_id: str = "shop", url: str = "https://example.com/in") -> dict[str, Any]:
    return {
        "id": tool_id,
        "auth": {"type": "hmac", "header": "X-Signature", "secret": "s3cret", "secrets": ["0ld"]},
        "mode": "store_and_forward",
        "forward": {
            "url": url,
            "signing_secret": SIGNING,
            "headers": {"Authorization": "Bearer t0ken", "X-Team": "payments"},
        },
    }


@pytest.fixture
def store(db: Database) -> ToolStore:
    return ToolStore(db)


@pytest.fixture
def service(store: ToolStore) -> ToolService:
    return ToolService(store)


async def stored_config(store: ToolStore, tool_id: str = "shop") -> dict[str, Any]:
    config: dict[str, Any] = (await store.get(tool_id))["config"]
    return config


def with_placeholder(field: str) -> dict[str, Any]:
    definition = tool()
    section, _, name = field.partition(".")
    if name == "secrets":
        definition["auth"]["secrets"] = ["0ld", REDACTED]
    elif name == "headers.Authorization":
        definition["forward"]["headers"]["Authorization"] = REDACTED
    else:
        definition[section][name] = REDACTED
    return definition


PLACEHOLDERS = [
    ("auth.secret", "auth.secret"),
    ("auth.secrets", "auth.secrets[1]"),
    ("forward.signing_secret", "forward.signing_secret"),
    ("forward.headers.Authorization", "forward.headers.Authorization"),
]


def assert_enter_the_secret(error: ToolConfigError, field: str) -> None:
    assert error.field == field
    assert "enter the secret" in error.message
    assert REDACTED in error.message


# Nothing stored behind the placeholder


@pytest.mark.parametrize(("where", "field"), PLACEHOLDERS)
async def test_a_create_with_a_placeholder_is_refused(
    service: ToolService, store: ToolStore, where: str, field: str
) -> None:
    with pytest.raises(ToolConfigError) as caught:
        await service.create(with_placeholder(where))
    assert_enter_the_secret(caught.value, field)
    assert await store.list_all() == []


@pytest.mark.parametrize(("where", "field"), PLACEHOLDERS)
async def test_apply_of_an_exported_tool_into_a_new_environment_is_refused(
    service: ToolService, store: ToolStore, where: str, field: str
) -> None:
    # Exported from elsewhere: redacted, and this database has no such tool.
    with pytest.raises(ToolConfigError) as caught:
        await service.apply([{"id": "other"}, with_placeholder(where)])
    assert_enter_the_secret(caught.value, field)
    assert await store.list_all() == []  # nothing applied


async def test_an_update_with_a_placeholder_for_a_secret_not_stored_is_refused(
    service: ToolService, store: ToolStore
) -> None:
    plain = tool()
    del plain["forward"]["signing_secret"]
    plain["auth"]["secrets"] = []
    await service.create(plain)
    view = await service.get("shop")
    for field, change in [
        ("forward.signing_secret", {"signing_secret": REDACTED}),
        ("forward.headers.X-Api-Key", {"headers": {"X-Api-Key": REDACTED}}),
    ]:
        edited = copy.deepcopy(view)
        edited["forward"].update(change)
        for update in (service.replace("shop", edited), service.apply([edited])):
            with pytest.raises(ToolConfigError) as caught:
                await update
            assert_enter_the_secret(caught.value, field)
        with pytest.raises(ToolConfigError) as caught:
            await service.patch("shop", {"forward": change})
        assert_enter_the_secret(caught.value, field)
    with pytest.raises(ToolConfigError) as caught:
        await service.patch("shop", {"auth": {"secrets": [REDACTED]}})
    assert_enter_the_secret(caught.value, "auth.secrets[0]")
    assert await stored_config(store) == {**plain, "provider": "generic"}


async def test_a_placeholder_in_a_header_that_is_no_credential_is_a_value(
    service: ToolService, store: ToolStore
) -> None:
    # Not a secret field: the text is what the header says.
    definition = tool()
    definition["forward"]["headers"]["X-Team"] = REDACTED
    await service.create(definition)
    assert (await stored_config(store))["forward"]["headers"]["X-Team"] == REDACTED


# The target changed


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/in",
        "http://example.com/in",  # another scheme
        "https://example.com:8443/in",  # another port
    ],
)
async def test_a_patch_to_another_host_needs_the_credentials_again(
    service: ToolService, store: ToolStore, url: str
) -> None:
    await service.create(tool())
    with pytest.raises(ToolConfigError) as caught:
        await service.patch("shop", {"forward": {"url": url}})
    assert caught.value.field == "forward.signing_secret"
    assert "the target changed" in caught.value.message
    assert "enter this secret again" in caught.value.message
    with pytest.raises(ToolConfigError) as caught:
        await service.patch("shop", {"forward": {"url": url, "signing_secret": None}})
    assert caught.value.field == "forward.headers.Authorization"
    assert await stored_config(store) == {**tool(), "provider": "generic"}

    # Given again (or removed), the change goes through; the auth secrets are not the target's.
    new_signing = "whsec_bmV3LXNpZ25pbmctc2VjcmV0"
    await service.patch(
        "shop",
        {
            "forward": {
                "url": url,
                "signing_secret": new_signing,
                "headers": {"Authorization": None},
            }
        },
    )
    stored = await stored_config(store)
    assert stored["forward"] == {
        "url": url,
        "signing_secret": new_signing,
        "headers": {"X-Team": "payments"},
    }
    assert stored["auth"] == tool()["auth"]


async def test_a_put_or_apply_of_the_view_with_another_host_needs_the_credentials_again(
    service: ToolService, store: ToolStore
) -> None:
    await service.create(tool())
    view = await service.get("shop")
    view["forward"]["url"] = "https://attacker.example/in"
    with pytest.raises(ToolConfigError) as caught:
        await service.replace("shop", view)
    assert caught.value.field == "forward.signing_secret"
    assert "the target changed" in caught.value.message
    with pytest.raises(ToolConfigError) as caught:
        await service.apply([view])
    assert caught.value.field == "forward.signing_secret"
    view["forward"]["signing_secret"] = "whsec_bmV3LXNpZ25pbmctc2VjcmV0"
    view["forward"]["headers"]["Authorization"] = "Bearer n3w"
    await service.replace("shop", view)
    assert (await stored_config(store))["forward"]["headers"]["Authorization"] == "Bearer n3w"


async def test_the_same_host_keeps_the_credentials(service: ToolService, store: ToolStore) -> None:
    await service.create(tool())
    await service.patch("shop", {"forward": {"url": "https://EXAMPLE.com:443/other?page=1"}})
    stored = await stored_config(store)
    assert stored["forward"]["signing_secret"] == SIGNING
    assert stored["forward"]["headers"]["Authorization"] == "Bearer t0ken"
    view = await service.get("shop")
    view["forward"]["url"] = "https://example.com/third"
    await service.replace("shop", view)
    assert (await stored_config(store))["forward"]["signing_secret"] == SIGNING
