"""Whatever headers and body arrive, the ingest path answers cleanly, and what it extracts is
what the tool's configuration says.

Requests go straight into the ASGI app (so header lists can hold duplicates, any bytes, huge
values and a Content-Length that is not a number, which HTTP servers would refuse before the app
sees them) on the embedded SQLite backend. Each tool reads its event type and delivery id a
different way: headers (one or several names, as GitHub and GitLab), JMESPath into the JSON body
(Stripe, Slack, a generic tool), or both (Standard Webhooks). About half of the requests carry a
valid credential, so they reach extraction.

The properties: the answer is 202/200 with the documented JSON, 200 with a handshake's challenge,
or a 4xx with a JSON error; nothing raises. An accepted event is queued with its body exactly as
sent, and an event type and delivery id equal to an independent reading of the tool's rules:
the first named header that has a value (its first line when repeated), or the JMESPath result
when a scalar; NUL removed, at most 255 characters, never empty; the delivery id falling back to
the body's SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmespath
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.applications import Starlette

from tests.api.support import asgi_post, started_app
from webhook_worker.api.ingest import MAX_JSON_DEPTH
from webhook_worker.auth import slack, standard_webhooks, stripe_signature
from webhook_worker.config import Settings
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.schema import queue_messages

SECRET = "prop-s3cret"
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MAX_BYTES = 256 * 1024
EXAMPLES = 1000

Sign = Callable[[bytes, int], list[tuple[str, str]]]


def _github(body: bytes, now: int) -> list[tuple[str, str]]:
    return [("x-hub-signature-256", "sha256=" + _hex_hmac(body))]


def _standard_webhooks(body: bytes, now: int) -> list[tuple[str, str]]:
    message_id = "msg_" + hashlib.sha256(body).hexdigest()[:16]
    return [
        ("webhook-id", message_id),
        ("webhook-timestamp", str(now)),
        ("webhook-signature", standard_webhooks.sign(SW_SECRET, message_id, now, body)),
    ]


def _hex_hmac(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ToolCase:
    definition: dict[str, Any]
    event_type: tuple[str, ...] | str
    """Header names (in order) or a JMESPath expression."""
    delivery_id: tuple[str, ...] | str
    sign: Sign
    auth_headers: tuple[str, ...]
    """Header names the credential travels in (a random line with one of these names before the
    credential's own may make the request fail verification)."""
    handshake: bool = False


TOOLS: dict[str, ToolCase] = {
    "gh": ToolCase(
        {"provider": "github", "auth": {"secret": SECRET}},
        ("x-github-event",),
        ("x-github-delivery",),
        _github,
        ("x-hub-signature-256",),
    ),
    "gl": ToolCase(
        {"provider": "gitlab", "auth": {"secret": SECRET}},
        ("x-gitlab-event",),
        ("idempotency-key", "x-gitlab-event-uuid"),
        lambda body, now: [("x-gitlab-token", SECRET)],
        ("x-gitlab-token",),
    ),
    "stripe": ToolCase(
        {"provider": "stripe", "auth": {"secret": SECRET}},
        "type",
        "id",
        lambda body, now: [("stripe-signature", stripe_signature.sign_header(SECRET, body, now))],
        ("stripe-signature",),
    ),
    "slack": ToolCase(
        {"provider": "slack", "auth": {"secret": SECRET}},
        "event.type || type",
        "event_id",
        lambda body, now: [
            ("x-slack-request-timestamp", str(now)),
            ("x-slack-signature", slack.sign(SECRET, body, str(now))),
        ],
        ("x-slack-request-timestamp", "x-slack-signature"),
        handshake=True,
    ),
    "sw": ToolCase(
        {"provider": "standard_webhooks", "auth": {"secret": SW_SECRET}},
        "type",
        ("webhook-id", "svix-id"),
        lambda body, now: _standard_webhooks(body, now),
        ("webhook-id", "webhook-timestamp", "webhook-signature", "svix-id"),
    ),
    "paths": ToolCase(
        {
            "auth": {"type": "none"},
            "event_type": {"path": "event.kind"},
            "delivery_id": {"path": "meta.id"},
        },
        "event.kind",
        "meta.id",
        lambda body, now: [],
        (),
    ),
    "hdrs": ToolCase(
        {
            "auth": {"type": "none"},
            "event_type": {"header": ["X-Event", "X-Kind"]},
            "delivery_id": {"header": ["X-Delivery", "Idempotency-Key"]},
        },
        ("x-event", "x-kind"),
        ("x-delivery", "idempotency-key"),
        lambda body, now: [],
        (),
    ),
}

# Every header name an extraction or a credential reads, plus ones the ingest handler itself
# looks at, and arbitrary ones.
NAMES = sorted(
    {
        name
        for case in TOOLS.values()
        for group in (case.event_type, case.delivery_id, case.auth_headers)
        if isinstance(group, tuple)
        for name in group
    }
    | {"content-length", "content-type", "transfer-encoding", "x-forwarded-for", "traceparent"}
)
HEADER_NAMES = st.one_of(
    st.sampled_from(NAMES).map(str.encode),
    st.binary(min_size=1, max_size=20).map(bytes.lower),
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b" ", b"\x00", b"push", b"\xff\xfe", b"12", b"\xb2", b"-1", b"1e9"]),
    st.integers(0, 3).map(lambda n: b"v" * (64 * 1024 + n)),  # huge, and just over 64 KiB
)
# What the handler itself parses: digits int() refuses ("²" passes str.isdigit), signs, spaces.
CONTENT_LENGTHS = st.one_of(
    st.sampled_from([b"\xb2", b"\xd9\xa3", b"-5", b" 12", b"0", b"1" * 40, b"262145", b"9" * 25]),
    st.integers(0, 300_000).map(lambda n: str(n).encode()),
)
RAW_HEADERS = st.builds(
    lambda lines, declared: lines + declared,
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12),
    st.lists(st.tuples(st.just(b"content-length"), CONTENT_LENGTHS), max_size=1),
)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.just("x" * 300),
    st.just("a\x00b"),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "id", "event", "event_id", "kind", "meta", "challenge", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
HANDSHAKES = st.builds(
    lambda challenge, extra: {"type": "url_verification", "challenge": challenge, **extra},
    st.one_of(st.text(max_size=1100), st.integers(-(10**6), 10**6), st.none()),
    st.dictionaries(st.sampled_from(["token", "event_id"]), st.text(max_size=10), max_size=2),
)
BODIES = st.one_of(
    JSON_VALUES.map(orjson.dumps),
    HANDSHAKES.map(orjson.dumps),
    st.binary(max_size=500),
    st.sampled_from(
        [
            b"",
            b"\xff\xfe\xfd",
            b"[" * 100_000,  # far deeper than any JSON parser goes
            b"[" * 2000 + b"]" * 2000,
            b'{"id": 1e400, "type": "x"}',
            b'{"id": 123456789012345678901234567890, "type": -0.0}',
            b'{"meta": {"id": "' + b"d" * 70_000 + b'"}}',
        ]
    ),
)


def first_value(headers: list[tuple[bytes, bytes]], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` whose first line has a value (what Headers.get sees)."""
    for name in names:
        lines = [value for key, value in headers if key == name.encode()]
        if lines and lines[0]:
            return lines[0].decode("latin-1")
    return None


def from_body(body: bytes, path: str) -> Any:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return jmespath.search(path, document)


def expected_field(
    source: tuple[str, ...] | str, headers: list[tuple[bytes, bytes]], body: bytes
) -> str | None:
    value = first_value(headers, source) if isinstance(source, tuple) else from_body(body, source)
    if value is None or isinstance(value, dict | list):
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.replace("\x00", "")[:255] or None


def handshake_challenge(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("type") != "url_verification":
        return None
    challenge = document.get("challenge")
    return challenge if isinstance(challenge, str) and 0 < len(challenge) <= 1024 else None


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[Starlette, Runtime]]:
    settings = Settings(data_dir=tmp_path, max_payload_bytes=MAX_BYTES)
    async with open_runtime(settings, migrate_first=True) as runtime:
        for tool_id, case in TOOLS.items():
            await runtime.tool_service.create({"id": tool_id, **case.definition})
        async with started_app(runtime) as started:
            yield started, runtime


async def queued(runtime: Runtime, event_id: str) -> dict[str, Any]:
    async with runtime.db.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(queue_messages).where(queue_messages.c.event_id == event_id)
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tool_id=st.sampled_from(sorted(TOOLS)),
    headers=RAW_HEADERS,
    body=BODIES,
    sign=st.booleans(),
    chunked=st.booleans(),
)
async def test_any_request_gets_a_clean_answer_and_a_faithful_extraction(
    app: tuple[Starlette, Runtime],
    tool_id: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    sign: bool,
    chunked: bool,
) -> None:
    starlette_app, runtime = app
    case = TOOLS[tool_id]
    now = int(time.time())
    sent = list(headers)
    if sign:
        sent += [(name.encode(), value.encode()) for name, value in case.sign(body, now)]
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] if chunked else body
    answer = await asgi_post(starlette_app, f"/webhooks/{tool_id}", sent, chunks or b"")

    event(f"answer {answer.status}")  # shown by --hypothesis-show-statistics
    # 422 only for a body nested past the limit, which needs that many opening brackets.
    too_deep = answer.status == 422 and answer.json()["error"] == "payload_too_deep"
    assert not too_deep or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    # 431 only when the headers to store with the event pass its cap (256 KiB of JSON, where
    # an escaped byte takes up to six): the generator sends a dozen values of over 64 KiB.
    too_many_header_bytes = answer.status == 431 and answer.json()["error"] == "headers_too_large"
    assert not too_many_header_bytes or sum(len(value) for _, value in sent) > 256 * 1024 // 6
    assert answer.status in {200, 202, 401, 413} or too_deep or too_many_header_bytes, (
        answer.status,
        answer.body[:300],
    )
    challenge = handshake_challenge(body) if case.handshake else None
    if answer.status == 200 and challenge is not None:
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.body == challenge.encode()
        return
    assert answer.headers["content-type"] == "application/json"
    reply = answer.json()
    if answer.status >= 400:
        assert set(reply) == {"error", "detail"}
        assert reply["error"] and reply["detail"]
        # A request carrying its valid credential, and no other line under those names, is
        # never refused for its credentials.
        clean = not any(name.decode("latin-1") in case.auth_headers for name, _ in headers)
        if sign and clean and answer.status == 401:
            pytest.fail(f"a validly signed request was refused: {reply}")
        return

    assert reply["status"] == ("accepted" if answer.status == 202 else "duplicate")
    if answer.status == 200:
        return
    message = await queued(runtime, reply["event_id"])
    assert message["body"] == body
    assert message["event_type"] == expected_field(case.event_type, sent, body)
    assert message["delivery_id"] == (
        expected_field(case.delivery_id, sent, body) or hashlib.sha256(body).hexdigest()
    )
    stored_headers = orjson.loads(message["headers"])
    for secret_header in case.auth_headers:
        if "signature" in secret_header or "token" in secret_header:
            assert secret_header not in stored_headers
