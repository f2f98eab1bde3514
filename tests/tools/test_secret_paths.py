"""Which values of a tool definition are secrets comes from the declaration (tools/schema.py marks
them ``Secret``), never from what a value looks like: redaction and encryption at rest walk the
declared fields, and a field marked secret is redacted and encrypted without more code."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from cryptography.fernet import Fernet
from pydantic import Field, StrictStr

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools import secret_paths
from webhook_worker.tools.fields import Secret
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.reference import declared_fields
from webhook_worker.tools.schema import AuthDefinition, ToolDefinition
from webhook_worker.tools.secret_paths import (
    ITEM_ID,
    SECRET_PATHS,
    declared_secrets,
    secret_spots,
)
from webhook_worker.tools.secrets import PREFIX, SecretBox, SecretsAtRest, is_sealed
from webhook_worker.tools.service import REDACTED, redact

BOX = SecretsAtRest(SecretBox([Fernet.generate_key().decode()]))
HMAC = {"type": "hmac", "header": "X-Signature"}


def test_the_declared_secret_fields() -> None:
    assert [".".join(declared.path) for declared in SECRET_PATHS] == [
        "auth.secret",
        "auth.secrets",
        "forward.url",
        "forward.signing_secret",
        "forward.headers",
        "destinations.[].url",
        "destinations.[].signing_secret",
        "destinations.[].headers",
    ]


def test_every_item_of_a_declared_list_is_named_by_its_id() -> None:
    # A placeholder in a list's item finds the stored secret through the item's id: each list of
    # sections must require one.
    fields = dict(declared_fields())
    lists = {path.split("[]")[0] for path in fields if "[]." in path}
    assert lists == {"destinations"}
    for name in lists:
        assert fields[f"{name}[].{ITEM_ID}"].is_required(), name


@pytest.mark.parametrize("secrets", ["hunter2", [""], ["ok", ""], ["ok", 5], [["nested"]], {}])
def test_auth_secrets_must_be_a_list_of_non_empty_strings(secrets: Any) -> None:
    # A string used to become one secret per character, shown and stored in the clear.
    with pytest.raises(ToolConfigError) as caught:
        parse_tool({"id": "t", "auth": {**HMAC, "secret": "s3cret", "secrets": secrets}})
    assert caught.value.field == "auth.secrets"
    assert caught.value.message == "expected a list of non-empty strings"


def test_a_declared_secret_of_the_wrong_shape_is_still_hidden_and_sealed() -> None:
    # Written before validation refused it (or by hand into the database): the declaration, not
    # the shape, says it is a secret, so it is hidden whole rather than shown.
    definition = {"id": "t", "auth": {**HMAC, "secret": "s3cret", "secrets": "hunter2"}}
    redacted = redact(definition)
    assert redacted["auth"]["secrets"] == REDACTED
    assert "hunter2" not in json.dumps(redacted)
    sealed = BOX.seal(definition)
    assert is_sealed(sealed["auth"]["secrets"])
    assert BOX.open(sealed).config == definition


def test_lists_and_objects_outside_the_declared_fields_are_not_secrets() -> None:
    definition = {
        "id": "t",
        "description": "token",
        "allowed_ips": ["10.0.0.0/8"],
        "event_type": {"header": ["X-Secret-Event", "X-Token-Kind"]},
        "events": {"secret": {"mode": "store_only"}},
        "forward": {"url": "https://example.com/in", "headers": {"X-Team": "payments"}},
    }
    assert list(secret_spots(definition)) == []
    assert redact(definition) == definition
    assert BOX.seal(definition) == definition


class WithApiToken(ToolDefinition):
    """A definition with one more secret field, as a later change would add it."""

    api_token: Annotated[StrictStr, Secret()] | None = Field(None, description="A token.")


class AuthWithPepper(AuthDefinition):
    pepper: Annotated[list[StrictStr], Secret()] | None = Field(None, description="More.")


class WithPepper(ToolDefinition):
    auth: AuthWithPepper | None = Field(None, description="Auth with a pepper.")


@pytest.mark.parametrize(
    ("model", "definition", "path"),
    [
        (WithApiToken, {"id": "t", "api_token": "t0ken-value"}, ("api_token",)),
        (WithPepper, {"id": "t", "auth": {"pepper": ["t0ken-value"]}}, ("auth", "pepper")),
    ],
)
def test_a_field_marked_secret_is_redacted_and_encrypted_without_more_code(
    monkeypatch: pytest.MonkeyPatch,
    model: type[ToolDefinition],
    definition: dict[str, Any],
    path: tuple[str, ...],
) -> None:
    model.model_validate(definition)  # a valid definition of the extended declaration
    assert path in [declared.path for declared in declared_secrets(model)]
    # What adding the field to ToolDefinition does: the declared secret paths include it.
    monkeypatch.setattr(secret_paths, "SECRET_PATHS", declared_secrets(model))
    redacted = json.dumps(redact(definition))
    assert "t0ken-value" not in redacted and REDACTED in redacted
    sealed = BOX.seal(definition)
    assert "t0ken-value" not in json.dumps(sealed) and PREFIX in json.dumps(sealed)
    assert BOX.open(sealed).config == definition
