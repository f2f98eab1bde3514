"""The verifier and signer registries cover every auth type, and nothing else gets in.

An auth type without a verifier must never mean "accept everything": the registry is checked to
be exhaustive over :class:`~webhook_worker.vocabulary.AuthType`, and a type outside it raises.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

import httpx
import pytest

from webhook_worker.auth import AuthError, build_verifier
from webhook_worker.auth.base import NoAuth, verifiers
from webhook_worker.cli.send import sign_request
from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.model import AuthConfig, parse_tool
from webhook_worker.vocabulary import AuthType

BODY = b'{"action": "opened"}'

# One valid ``auth`` definition per type: the test below fails when a new type has none.
AUTH_OF: dict[AuthType, dict[str, Any]] = {
    AuthType.NONE: {"type": "none"},
    AuthType.TOKEN: {"type": "token", "header": "X-Gitlab-Token", "secret": "t0ken"},
    AuthType.HMAC: {"type": "hmac", "header": "X-Signature", "secret": "s3cret"},
    AuthType.BASIC: {"type": "basic", "secret": "user:pa:ss"},
    AuthType.BEARER: {"type": "bearer", "secret": "t0ken"},
    AuthType.STRIPE: {"type": "stripe", "secret": "whsec_stripe"},
    AuthType.SLACK: {"type": "slack", "secret": "slack-signing-secret"},
    AuthType.STANDARD_WEBHOOKS: {
        "type": "standard_webhooks",
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    },
}


def test_every_auth_type_has_a_verifier_and_a_sample_definition() -> None:
    assert set(verifiers()) == set(AuthType)
    assert set(AUTH_OF) == set(AuthType)


def test_none_is_the_only_type_that_accepts_anything() -> None:
    assert verifiers()[AuthType.NONE] is NoAuth
    for kind in AuthType:
        verifier = build_verifier(parse_tool({"id": "t", "auth": AUTH_OF[kind]}).auth)
        if kind is AuthType.NONE:
            assert isinstance(verifier, NoAuth)
            continue
        assert not isinstance(verifier, NoAuth), kind
        with pytest.raises(AuthError):
            verifier.verify(httpx.Headers({}), BODY, time.time())


@pytest.mark.parametrize("kind", ["kerberos", "", "HMAC", "None"])
def test_an_unknown_auth_type_raises_instead_of_accepting(kind: str) -> None:
    with pytest.raises(ToolConfigError, match=r"^auth\.type: ") as raised:
        # Outside AuthType on purpose (the cast smuggles it past mypy): the registry must refuse it.
        build_verifier(AuthConfig(type=cast(AuthType, kind), secrets=("s",)))
    assert raised.value.field == "auth.type"


@pytest.mark.parametrize("kind", list(AuthType))
def test_send_signs_every_auth_type_so_its_verifier_accepts(kind: AuthType) -> None:
    tool = parse_tool({"id": "t", "auth": AUTH_OF[kind]})
    headers = sign_request(tool, BODY, "push")
    build_verifier(tool.auth).verify(httpx.Headers(headers), BODY, time.time())


def test_send_refuses_an_unknown_auth_type() -> None:
    tool = parse_tool({"id": "t", "auth": AUTH_OF[AuthType.NONE]})
    # Outside AuthType on purpose (the cast smuggles it past mypy): sign_request must refuse it.
    unknown = dataclasses.replace(tool, auth=AuthConfig(type=cast(AuthType, "kerberos")))
    with pytest.raises(ValueError, match="kerberos"):
        sign_request(unknown, BODY, "push")
