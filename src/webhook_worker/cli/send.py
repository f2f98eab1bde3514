"""``webhook-worker send TOOL_ID``: post a webhook signed exactly as the tool's provider would.

:func:`sign_request` is the one place that knows how a sender authenticates for each auth type;
tests and the benchmark import it too. A new scheme adds one function to ``_SIGNERS``.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from webhook_worker.auth.hmac_signature import sign
from webhook_worker.cli.common import api_url, console, fail, load_settings, user_errors, with_store
from webhook_worker.tools.model import AuthConfig, Tool, parse_tool

# A JMESPath that is only ``a.b.c`` names a place a sample payload can fill in.
_SIMPLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def register(app: typer.Typer) -> None:
    app.command(help="Sign a sample (or given) payload as TOOL_ID's provider would and post it.")(
        send
    )


def sign_request(tool: Tool, body: bytes, event_type: str) -> dict[str, str]:
    """The headers a genuine sender of ``body`` to ``tool`` would send: content type, the auth
    header(s) signed with the first secret, the event-type header and a fresh delivery id when
    the tool reads them from headers. Raises ValueError for an auth type it cannot sign."""
    signer = _SIGNERS.get(tool.auth.type)
    if signer is None:
        raise ValueError(f"send cannot sign auth type {tool.auth.type!r} yet")
    headers = {"Content-Type": "application/json", **signer(tool.auth, body)}
    if tool.event_type.header:
        headers[tool.event_type.header] = event_type
    if tool.delivery_id.header:
        headers[tool.delivery_id.header] = str(uuid.uuid4())
    return headers


def _no_auth(auth: AuthConfig, body: bytes) -> dict[str, str]:
    return {}


def _hmac(auth: AuthConfig, body: bytes) -> dict[str, str]:
    assert auth.header is not None  # parse_tool requires it for hmac
    signature = sign(auth.secrets[0], body, auth.algorithm, auth.encoding)
    return {auth.header: auth.prefix + signature}


def _token(auth: AuthConfig, body: bytes) -> dict[str, str]:
    assert auth.header is not None  # parse_tool requires it for token
    return {auth.header: auth.secrets[0]}


def _bearer(auth: AuthConfig, body: bytes) -> dict[str, str]:
    return {auth.header or "Authorization": f"Bearer {auth.secrets[0]}"}


def _basic(auth: AuthConfig, body: bytes) -> dict[str, str]:
    credentials = base64.b64encode(auth.secrets[0].encode()).decode()
    return {auth.header or "Authorization": f"Basic {credentials}"}


_SIGNERS: dict[str, Callable[[AuthConfig, bytes], dict[str, str]]] = {
    "none": _no_auth,
    "hmac": _hmac,
    "token": _token,
    "bearer": _bearer,
    "basic": _basic,
}


def sample_payload(tool: Tool, event_type: str) -> bytes:
    """A small JSON body with a unique id, so repeated sends are not duplicates. When the tool
    reads its event type or delivery id from a simple body path, the sample has them there."""
    payload: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event": event_type,
        "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "sender": "webhook-worker send",
        "message": f"a sample {event_type!r} webhook for tool {tool.id!r}",
    }
    for source, value in ((tool.event_type, event_type), (tool.delivery_id, payload["id"])):
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
        str, typer.Option("--event", help="Event type, when the tool reads it from a header.")
    ] = "ping",
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
    console.print(f"POST {target} ({len(body)} bytes, auth {auth})", highlight=False)
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {target}: {exc or type(exc).__name__} (is the API running?)", 1)
    style = "green" if response.is_success else "red"
    console.print(f"[{style}]{response.status_code} {response.reason_phrase}[/]", highlight=False)
    try:
        console.print_json(data=response.json())
    except ValueError:
        if response.text:
            console.print(response.text, highlight=False, markup=False)
    if not response.is_success:
        raise typer.Exit(1)
