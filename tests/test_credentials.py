"""One rule decides which headers carry credentials: ingest does not store them with the event,
and tool definitions encrypt and redact them among ``forward.headers``. Both must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support import running_service
from webhook_worker.config import Settings
from webhook_worker.credentials import (
    is_credential_header,
    is_credential_query,
    redact_url,
    url_credentials,
)
from webhook_worker.tools.secrets import SecretBox, SecretsAtRest, is_sealed
from webhook_worker.tools.service import REDACTED, redact

# Header name -> whether it carries a credential. The first two are the names the two old lists
# disagreed on; the rest cover every word of the rule and some everyday headers.
HEADERS: dict[str, bool] = {
    "X-Access-Key": True,
    "X-Request-Id": False,
    "Authorization": True,
    "Proxy-Authorization": True,
    "X-Auth-User": True,
    "X-Auth": True,  # outside the first word list, as X-Password was
    "Cookie": True,
    "X-Session-Token": True,
    "X-Webhook-Secret": True,
    "X-Signature-Ed25519": True,
    "X-Password": True,
    "X-Api-Key": True,
    "X-Shopify-Hmac-Sha256": True,
    "X-Client-Credentials": True,
    "User-Agent": False,
    "X-Team": False,
    "X-Github-Delivery": False,
    "Accept-Language": False,
    # Routing and de-duplication metadata that happens to end in "Key".
    "Idempotency-Key": False,
    "X-Event-Key": False,
}
CREDENTIALS = sorted(name for name, secret in HEADERS.items() if secret)
PLAIN = sorted(name for name, secret in HEADERS.items() if not secret)


@pytest.mark.parametrize(("name", "secret"), sorted(HEADERS.items()))
def test_the_rule_ignores_case(name: str, secret: bool) -> None:
    assert is_credential_header(name) is secret
    assert is_credential_header(name.lower()) is secret
    assert is_credential_header(name.upper()) is secret


async def test_ingest_stores_exactly_the_headers_that_carry_no_credential(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with running_service(settings) as service:
        await service.runtime.tool_service.create({"id": "open", "auth": {"type": "none"}})
        sent = {name: f"value-of-{name}" for name in HEADERS}
        response = await service.post(b"{}", tool_id="open", headers=sent, sign=False)
        assert response.status_code == 202, response.text
        stored = (await service.stored(response.json()["event_id"]))["headers"]
    leaked = {name.lower() for name in CREDENTIALS} & set(stored)
    assert leaked == set()
    for name in PLAIN:
        assert stored[name.lower()] == f"value-of-{name}"


async def test_ingest_still_drops_the_tools_own_auth_header(tmp_path: Path) -> None:
    # "X-Shared" names no credential word: it is dropped because the tool reads its token there.
    settings = Settings(data_dir=tmp_path)
    async with running_service(settings) as service:
        await service.runtime.tool_service.create(
            {"id": "tok", "auth": {"type": "token", "header": "X-Shared", "secret": "s3cret"}}
        )
        response = await service.post(
            b"{}", tool_id="tok", headers={"X-Shared": "s3cret", "X-Team": "a"}, sign=False
        )
        assert response.status_code == 202, response.text
        stored = (await service.stored(response.json()["event_id"]))["headers"]
    assert "x-shared" not in stored
    assert stored["x-team"] == "a"


def forwarding(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "id": "fwd",
        "mode": "store_and_forward",
        "forward": {"url": "http://127.0.0.1:9/hook", "headers": headers},
    }


def test_forward_headers_are_encrypted_and_redacted_by_the_same_rule() -> None:
    definition = forwarding({name: f"value-of-{name}" for name in HEADERS})
    sealed = SecretsAtRest(SecretBox([Fernet.generate_key().decode()])).seal(definition)
    redacted = redact(definition)
    for name, secret in HEADERS.items():
        assert is_sealed(sealed["forward"]["headers"][name]) is secret, name
        shown = redacted["forward"]["headers"][name]
        assert shown == (REDACTED if secret else f"value-of-{name}"), name


# URLs: the same rule for query parameter names, and the userinfo.


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        *[(name, True) for name in ("key", "api_key", "apikey", "token", "access_token")],
        *[(name, True) for name in ("secret", "client_secret", "password", "signature", "sig")],
        *[(name, True) for name in ("X-Goog-Signature", "AWSAccessKeyId", "pwd", "auth")],
        *[(name, False) for name in ("page", "id", "format", "user", "expires", "q")],
    ],
)
def test_query_parameters_named_like_credentials(name: str, secret: bool) -> None:
    assert is_credential_query(name) is secret
    assert is_credential_query(name.upper()) is secret


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://example.com/in", "https://example.com/in"),
        ("https://u:p%40ss@example.com:8443/in", "https://REDACTED:REDACTED@example.com:8443/in"),
        ("https://t0ken@example.com/", "https://REDACTED@example.com/"),
        (
            "https://example.com/in?api_key=k3y&page=2&access_token=t0k&Sig=s1g",
            "https://example.com/in?api_key=REDACTED&page=2&access_token=REDACTED&Sig=REDACTED",
        ),
        ("https://example.com/in?api%5Fkey=k3y", "https://example.com/in?api%5Fkey=REDACTED"),
        ("https://example.com/in?token=&key", "https://example.com/in?token=&key"),
        ("https://example.com/a@b?page=1#key=x", "https://example.com/a@b?page=1#key=x"),
        ("http://[::1]:8080/x?token=t#frag", "http://[::1]:8080/x?token=REDACTED#frag"),
    ],
)
def test_credentials_in_urls_are_redacted_as_opentelemetry_asks(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_url(url, "********") == redacted.replace("REDACTED", "********")


def test_each_credential_of_a_url_is_named() -> None:
    url = "https://u:p@e.com/?token=a&token=b&key=c"
    found = [(c.key, url[c.start : c.end], c.what) for c in url_credentials(url)]
    assert found == [
        ("userinfo", "u:p", "the user and password"),
        ("query token 0", "a", "query parameter 'token'"),
        ("query token 1", "b", "query parameter 'token'"),
        ("query key 0", "c", "query parameter 'key'"),
    ]
