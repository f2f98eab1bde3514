"""``webhook-worker send TOOL_ID``: post a webhook signed exactly as the tool's provider would.

:func:`sign_request` is the one place that knows how a sender authenticates for each auth type;
tests and the benchmark import it too. A new scheme adds one function to ``_SIGNERS``; a new
provider one sample to ``_SAMPLES``.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from webhook_worker.auth import hmac_signature, slack, standard_webhooks, stripe_signature
from webhook_worker.cli.common import api_url, console, fail, load_settings, user_errors, with_store
from webhook_worker.cli.plain import plain, plain_json
from webhook_worker.tools.model import AuthConfig, Tool, parse_tool
from webhook_worker.tools.secrets import is_sealed, secret_fields
from webhook_worker.vocabulary import AuthType

# A JMESPath that is only ``a.b.c`` names a place a sample payload can fill in.
_SIMPLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def register(app: typer.Typer) -> None:
    app.command(help="Sign a sample (or given) payload as TOOL_ID's provider would and post it.")(
        send
    )


def sign_request(
    tool: Tool, body: bytes, event_type: str, *, now: float | None = None
) -> dict[str, str]:
    """The headers a genuine sender of ``body`` to ``tool`` would send at Unix time ``now``
    (default: the current time): content type, the auth header(s) signed with the first secret,
    the event-type header and a fresh delivery id when the tool reads them from headers. Raises
    ValueError for an auth type it cannot sign."""
    try:
        signer = _SIGNERS[AuthType(tool.auth.type)]
    except (ValueError, KeyError):
        raise ValueError(f"send cannot sign auth type {tool.auth.type!r}") from None
    when = int(time.time() if now is None else now)
    headers = {"Content-Type": "application/json", **signer(tool.auth, body, when)}
    present = {name.lower() for name in headers}
    # The signer may have set the delivery id already (Standard Webhooks signs webhook-id).
    for name, value in (
        (tool.event_type.header, event_type),
        (tool.delivery_id.header, str(uuid.uuid4())),
    ):
        if name is not None and name.lower() not in present:
            headers[name] = value
    return headers


def _no_auth(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    return {}


def _hmac(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    assert auth.header is not None  # parse_tool requires it for hmac
    signed_time = str(when) if auth.timestamp_header else None
    signature = hmac_signature.sign(
        auth.secrets[0], body, auth.algorithm, auth.encoding, signed_time
    )
    headers = {auth.header: auth.prefix + signature}
    if auth.timestamp_header:
        headers[auth.timestamp_header] = str(when)
    return headers


def _token(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    assert auth.header is not None  # parse_tool requires it for token
    return {auth.header: auth.secrets[0]}


def _bearer(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    return {auth.header or "Authorization": f"Bearer {auth.secrets[0]}"}


def _basic(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    credentials = base64.b64encode(auth.secrets[0].encode()).decode()
    return {auth.header or "Authorization": f"Basic {credentials}"}


def _stripe(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    return {stripe_signature.HEADER: stripe_signature.sign_header(auth.secrets[0], body, when)}


def _slack(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    return {
        slack.TIMESTAMP_HEADER: str(when),
        slack.SIGNATURE_HEADER: slack.sign(auth.secrets[0], body, str(when)),
    }


def _standard_webhooks(auth: AuthConfig, body: bytes, when: int) -> dict[str, str]:
    message_id = f"msg_{uuid.uuid4().hex}"
    id_header, time_header, signature_header = (
        standard_webhooks.ID_HEADERS[0],
        standard_webhooks.TIMESTAMP_HEADERS[0],
        standard_webhooks.SIGNATURE_HEADERS[0],
    )
    return {
        id_header: message_id,
        time_header: str(when),
        signature_header: standard_webhooks.sign(auth.secrets[0], message_id, when, body),
    }


# One signer per AuthType member (tests/auth/test_registry.py checks that none is missing).
_SIGNERS: dict[AuthType, Callable[[AuthConfig, bytes, int], dict[str, str]]] = {
    AuthType.NONE: _no_auth,
    AuthType.HMAC: _hmac,
    AuthType.TOKEN: _token,
    AuthType.BEARER: _bearer,
    AuthType.BASIC: _basic,
    AuthType.STRIPE: _stripe,
    AuthType.SLACK: _slack,
    AuthType.STANDARD_WEBHOOKS: _standard_webhooks,
}


# Per provider: the event type ``send`` uses when not told, and a small payload shaped like that
# provider's (so the preset's body paths find the event type and delivery id). Each sample gets
# the event type, a unique token and the Unix time.
_Sample = Callable[[str, str, int], dict[str, Any]]


def _generic_sample(event_type: str, unique: str, when: int) -> dict[str, Any]:
    return {
        "id": unique,
        "event": event_type,
        "sent_at": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
        "sender": "webhook-worker send",
        "message": f"a sample {event_type!r} webhook",
    }


_SAMPLES: dict[str, tuple[str, _Sample]] = {
    "generic": ("ping", _generic_sample),
    "github": (
        "ping",
        lambda event, unique, when: {
            "zen": "Design for failure.",
            "hook_id": int(unique[:8], 16),
            "repository": {"full_name": "octo/demo", "private": True},
            "sender": {"login": "webhook-worker"},
        },
    ),
    "gitlab": (
        "Push Hook",
        lambda event, unique, when: {
            "object_kind": event.removesuffix(" Hook").lower().replace(" ", "_"),
            "checkout_sha": unique,
            "ref": "refs/heads/main",
            "project": {"path_with_namespace": "group/demo"},
        },
    ),
    "jira": (
        "jira:issue_updated",
        lambda event, unique, when: {
            "timestamp": when * 1000,
            "webhookEvent": event,
            "issue_event_type_name": "issue_generic",
            "issue": {"id": str(int(unique[:6], 16)), "key": "DEMO-1", "fields": {}},
        },
    ),
    "bitbucket": (
        "repo:push",
        lambda event, unique, when: {
            "actor": {"display_name": "webhook-worker"},
            "repository": {"full_name": "team/demo", "uuid": f"{{{uuid.UUID(unique)}}}"},
            "push": {"changes": []},
        },
    ),
    "stripe": (
        "payment_intent.succeeded",
        lambda event, unique, when: {
            "id": f"evt_{unique[:24]}",
            "object": "event",
            "type": event,
            "created": when,
            "livemode": False,
            "data": {"object": {"id": f"pi_{unique[8:32]}", "amount": 2000, "currency": "usd"}},
        },
    ),
    "slack": (
        "app_mention",
        lambda event, unique, when: {
            "type": "event_callback",
            "token": "sample",
            "team_id": "T0SAMPLE",
            "api_app_id": "A0SAMPLE",
            "event_id": f"Ev{unique[:10].upper()}",
            "event_time": when,
            "event": {"type": event, "user": "U0SAMPLE", "text": "hello", "ts": f"{when}.000100"},
        },
    ),
    "shopify": (
        "orders/create",
        lambda event, unique, when: {
            "id": int(unique[:12], 16),
            "email": "buyer@example.com",
            "total_price": "20.00",
            "currency": "USD",
        },
    ),
    "standard_webhooks": (
        "contact.created",
        lambda event, unique, when: {
            "type": event,
            "timestamp": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
            "data": {"id": unique, "email": "someone@example.com"},
        },
    ),
}


def default_event(tool: Tool) -> str:
    """The event type ``send`` uses for ``tool`` unless told: a typical one of its provider."""
    return _SAMPLES.get(tool.provider, _SAMPLES["generic"])[0]


def sample_payload(tool: Tool, event_type: str, *, now: float | None = None) -> bytes:
    """A small JSON body shaped like the tool's provider's, unique so repeated sends are not
    duplicates. When the tool reads its event type or delivery id from a simple body path the
    sample does not already fill, the sample gets them there."""
    unique = uuid.uuid4().hex
    when = int(time.time() if now is None else now)
    build = _SAMPLES.get(tool.provider, _SAMPLES["generic"])[1]
    payload = build(event_type, unique, when)
    for source, value in ((tool.event_type, event_type), (tool.delivery_id, unique)):
        if source.compiled is None or source.compiled.search(payload) is not None:
            continue
        if source.path and _SIMPLE_PATH.match(source.path):
            *parents, leaf = source.path.split(".")
            node = payload
            for name in parents:
                child = node.get(name)
                node[name] = child = child if isinstance(child, dict) else {}
                node = child
            node[leaf] = value
    return json.dumps(payload, indent=2).encode()


def send(
    tool_id: Annotated[str, typer.Argument(metavar="TOOL_ID", help="The tool to send to.")],
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            metavar="PATH",
            help="Send this file's bytes ('-' is stdin), not a sample.",
        ),
    ] = None,
    event: Annotated[
        str | None,
        typer.Option("--event", help="Event type (default: a typical one of the tool's provider)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="The API's base URL (default: from API_ADDR).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 10.0,
) -> None:
    """Post a signed webhook to TOOL_ID; exit 0 when the answer is 2xx."""
    settings = load_settings(quiet_logs=True)
    with user_errors(f"tool {tool_id!r} is stored with an invalid definition"):
        row = with_store(settings, lambda store: store.get(tool_id))
        tool = parse_tool(row["config"])
    if any(is_sealed(value) for _, value, _ in secret_fields(dict(row["config"]))):
        fail(
            f"tool {tool_id!r} has secrets this SECRETS_KEY cannot decrypt; set SECRETS_KEY to "
            "the key the API and workers use",
            1,
        )
    event = event or default_event(tool)
    if file is None:
        body = sample_payload(tool, event)
    else:
        try:
            body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        except OSError as exc:
            fail(f"cannot read {file}: {exc.strerror or exc}", 1)
    try:
        headers = sign_request(tool, body, event)
    except ValueError as exc:
        fail(str(exc), 1)

    target = f"{(url or api_url(settings)).rstrip('/')}/webhooks/{tool_id}"
    auth = tool.auth.type if tool.auth.type != "hmac" else f"hmac-{tool.auth.algorithm}"
    console.print(plain(f"POST {target} ({len(body)} bytes, auth {auth})"))
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {target}: {exc or type(exc).__name__} (is the API running?)", 1)
    style = "green" if response.is_success else "red"
    # The answer is the server's words, not ours: plain text, whoever listens at --url.
    console.print(plain(f"{response.status_code} {response.reason_phrase}", style))
    try:
        console.print(plain_json(response.json()))
    except ValueError:
        if response.text:
            console.print(plain(response.text))
    if not response.is_success:
        raise typer.Exit(1)
