"""``sign_request`` signs as each auth scheme's sender would: the real verifiers accept it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from webhook_worker.auth import AuthError, build_verifier
from webhook_worker.cli.send import sample_payload, sign_request
from webhook_worker.tools.model import Tool, parse_tool

BODY = b'{"action": "opened", "number": 7}'


def tool(auth: dict[str, Any] | None = None, **fields: Any) -> Tool:
    return parse_tool({"id": "demo", **({"auth": auth} if auth else {}), **fields})


def verify(parsed: Tool, headers: dict[str, str], body: bytes = BODY) -> None:
    build_verifier(parsed.auth).verify(httpx.Headers(headers), body, time.time())


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "hmac", "header": "X-Signature", "secret": "s3cret"},
        {"type": "hmac", "header": "X-Signature", "prefix": "sha256=", "secret": "s3cret"},
        {"type": "hmac", "header": "X-Sig", "algorithm": "sha1", "prefix": "sha1=", "secret": "k1"},
        {"type": "hmac", "header": "X-Sig", "algorithm": "sha512", "encoding": "base64",
         "secret": "longer-secret"},
        {"type": "token", "header": "X-Gitlab-Token", "secret": "t0ken"},
        {"type": "bearer", "secret": "t0ken"},
        {"type": "bearer", "header": "X-Auth", "secret": "t0ken"},
        {"type": "basic", "secret": "user:pa:ss"},
    ],
)  # fmt: skip
def test_every_scheme_verifies_and_a_changed_body_does_not(auth: dict[str, Any]) -> None:
    parsed = tool(auth)
    headers = sign_request(parsed, BODY, "push")
    verify(parsed, headers)
    if auth["type"] == "hmac":
        assert auth["secret"] not in json.dumps(headers)
        with pytest.raises(AuthError):
            verify(parsed, headers, BODY + b" ")


def test_hmac_header_is_prefix_and_digest_of_the_exact_bytes() -> None:
    parsed = tool({"type": "hmac", "header": "X-Signature", "prefix": "sha256=", "secret": "k"})
    headers = sign_request(parsed, b"hello", "push")
    expected = hmac.new(b"k", b"hello", hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == f"sha256={expected}"
    assert headers["Content-Type"] == "application/json"
    b64 = tool({"type": "hmac", "header": "X-S", "encoding": "base64", "secret": "k"})
    digest = hmac.new(b"k", b"hello", hashlib.sha256).digest()
    assert sign_request(b64, b"hello", "push")["X-S"] == base64.b64encode(digest).decode()


def test_rotation_signs_with_the_first_secret() -> None:
    parsed = tool({"type": "hmac", "header": "X-Sig", "secret": "new", "secrets": ["old"]})
    headers = sign_request(parsed, BODY, "push")
    only_new = dataclasses.replace(parsed.auth, secrets=("new",))
    build_verifier(only_new).verify(httpx.Headers(headers), BODY, time.time())
    only_old = dataclasses.replace(parsed.auth, secrets=("old",))
    with pytest.raises(AuthError):
        build_verifier(only_old).verify(httpx.Headers(headers), BODY, time.time())


def test_no_auth_sends_no_credentials() -> None:
    headers = sign_request(tool(), BODY, "push")
    assert headers == {"Content-Type": "application/json"}


def test_github_preset_headers() -> None:
    parsed = tool({"secret": "gh-s3cret"}, provider="github")
    first = sign_request(parsed, BODY, "pull_request")
    second = sign_request(parsed, BODY, "pull_request")
    verify(parsed, first)
    assert first["X-Hub-Signature-256"].startswith("sha256=")
    assert first["X-GitHub-Event"] == "pull_request"
    assert first["X-GitHub-Delivery"] != second["X-GitHub-Delivery"]  # never a duplicate


def test_event_type_and_delivery_id_read_from_the_body_get_no_header() -> None:
    parsed = tool(event_type={"path": "action"}, delivery_id={"path": "id"})
    assert sign_request(parsed, BODY, "push") == {"Content-Type": "application/json"}


def test_an_unknown_scheme_is_refused_clearly() -> None:
    parsed = tool({"type": "token", "header": "X-T", "secret": "t"})
    future = dataclasses.replace(parsed, auth=dataclasses.replace(parsed.auth, type="stripe"))
    with pytest.raises(ValueError, match="stripe"):
        sign_request(future, BODY, "push")


def test_sample_payload_is_unique_json() -> None:
    parsed = tool()
    first, second = (json.loads(sample_payload(parsed, "ping")) for _ in range(2))
    assert first["id"] != second["id"]
    assert first["event"] == "ping"


def test_sample_payload_fills_the_paths_the_tool_reads() -> None:
    parsed = tool(event_type={"path": "meta.kind"}, delivery_id={"path": "meta.delivery"})
    payload = json.loads(sample_payload(parsed, "order.created"))
    assert payload["meta"]["kind"] == "order.created"
    assert payload["meta"]["delivery"] == payload["id"]
    assert parsed.event_type.compiled is not None
    assert parsed.event_type.compiled.search(payload) == "order.created"
