"""``webhook-worker tools``: add, list, show, update, remove and apply tool definitions.

The commands work on the database directly (no API process needed). Flags build a tool for the
common cases; ``--file`` (JSON or YAML) and ``--json`` take a whole definition, and flags given
beside them win. Secrets are accepted but never printed: every view is the redacted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from webhook_worker.cli.common import (
    api_url,
    confirm,
    console,
    fail,
    load_settings,
    parse_json_text,
    print_json,
    print_table,
    read_document,
    user_errors,
    with_store,
)
from webhook_worker.cli.plain import plain, plain_json, printable
from webhook_worker.config import Settings
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import AUTH_TYPES, auth_type_of, parse_tool
from webhook_worker.tools.presets import PRESETS
from webhook_worker.tools.service import ToolService, merge_patch

T = TypeVar("T")

app = typer.Typer(
    help="Add, list, show, update and remove tools (one per provider integration).",
    no_args_is_help=True,
)


# Options shared by ``add`` and ``update``.

ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help=f"Preset: {', '.join(PRESETS)}.")
]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret", metavar="SECRET", help="Shared secret; repeat for rotation (the first signs)."
    ),
]
AuthTypeOpt = Annotated[
    str | None, typer.Option("--auth-type", help=f"One of {', '.join(AUTH_TYPES)}.")
]
HeaderOpt = Annotated[
    str | None, typer.Option("--header", help="Header carrying the signature or token.")
]
AlgorithmOpt = Annotated[
    str | None, typer.Option("--algorithm", help="HMAC digest: sha256, sha1 or sha512.")
]
EncodingOpt = Annotated[str | None, typer.Option("--encoding", help="hex or base64.")]
PrefixOpt = Annotated[
    str | None, typer.Option("--prefix", help="Signature prefix, e.g. 'sha256='.")
]
EventHeaderOpt = Annotated[
    str | None, typer.Option("--event-type-header", help="Header naming the event type.")
]
EventPathOpt = Annotated[
    str | None, typer.Option("--event-type-path", help="JMESPath to the event type in the body.")
]
DeliveryHeaderOpt = Annotated[
    str | None, typer.Option("--delivery-id-header", help="Header with the delivery id.")
]
DeliveryPathOpt = Annotated[
    str | None, typer.Option("--delivery-id-path", help="JMESPath to the delivery id.")
]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="store_only, store_and_forward or transform_and_store."),
]
ForwardOpt = Annotated[
    str | None, typer.Option("--forward-url", help="Where store_and_forward sends events.")
]
FileOpt = Annotated[
    str | None,
    typer.Option(
        "--file", "-f", metavar="PATH", help="A JSON or YAML tool definition ('-' reads stdin)."
    ),
]
JsonOpt = Annotated[str | None, typer.Option("--json", help="An inline JSON tool definition.")]


def _flag_patch(
    *,
    provider: str | None,
    secret: list[str] | None,
    auth_type: str | None,
    header: str | None,
    algorithm: str | None,
    encoding: str | None,
    prefix: str | None,
    event_type_header: str | None,
    event_type_path: str | None,
    delivery_id_header: str | None,
    delivery_id_path: str | None,
    mode: str | None,
    forward_url: str | None,
    enabled: bool | None,
) -> dict[str, Any]:
    """The flags as a JSON merge patch (``None`` removes, so one source replaces another)."""
    patch: dict[str, Any] = {}
    if provider is not None:
        patch["provider"] = provider
    if enabled is not None:
        patch["enabled"] = enabled
    if mode is not None:
        patch["mode"] = mode
    if forward_url is not None:
        patch["forward"] = {"url": forward_url}
    auth: dict[str, Any] = {}
    if secret:
        # One secret reads best as "secret"; several (rotation) as "secrets". Either replaces
        # whatever the definition had.
        auth.update(
            {"secret": secret[0], "secrets": None}
            if len(secret) == 1
            else {"secret": None, "secrets": list(secret)}
        )
    for key, value in (
        ("type", auth_type),
        ("header", header),
        ("algorithm", algorithm),
        ("encoding", encoding),
        ("prefix", prefix),
    ):
        if value is not None:
            auth[key] = value
    if auth:
        patch["auth"] = auth
    for name, by_header, by_path in (
        ("event_type", event_type_header, event_type_path),
        ("delivery_id", delivery_id_header, delivery_id_path),
    ):
        flag = name.replace("_", "-")
        if by_header is not None and by_path is not None:
            fail(f"use either --{flag}-header or --{flag}-path, not both", 2)
        if by_header is not None:
            patch[name] = {"header": by_header, "path": None}
        elif by_path is not None:
            patch[name] = {"path": by_path, "header": None}
    return patch


def _combine(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """One merge patch doing what ``first`` then ``second`` do (a null in ``second`` stays)."""
    combined = dict(first)
    for key, value in second.items():
        if isinstance(value, Mapping) and isinstance(combined.get(key), Mapping):
            combined[key] = _combine(combined[key], value)
        else:
            combined[key] = value
    return combined


def _definition(
    tool_id: str, file: str | None, inline: str | None, *, patch: bool = False
) -> dict[str, Any]:
    """``--file`` then ``--json`` over it; the TOOL_ID argument must agree with both. As a
    ``patch`` (for ``update``), nulls are kept: they remove stored fields."""
    result: dict[str, Any] = {}
    for source, data in (
        (file, read_document(file) if file else None),
        ("--json", parse_json_text(inline, "--json") if inline is not None else None),
    ):
        if source is None or data is None:
            continue
        if not isinstance(data, Mapping):
            fail(f"{source} must hold one tool definition (an object)", 1)
        if "id" in data and data["id"] != tool_id:
            fail(f"{source} defines tool {data['id']!r} but the command names {tool_id!r}", 1)
        result = _combine(result, data) if patch else merge_patch(result, data)
    return result


@app.command()
def add(
    tool_id: Annotated[
        str, typer.Argument(metavar="TOOL_ID", help="URL-safe id: POST /webhooks/TOOL_ID.")
    ],
    provider: ProviderOpt = None,
    secret: SecretOpt = None,
    auth_type: AuthTypeOpt = None,
    header: HeaderOpt = None,
    algorithm: AlgorithmOpt = None,
    encoding: EncodingOpt = None,
    prefix: PrefixOpt = None,
    event_type_header: EventHeaderOpt = None,
    event_type_path: EventPathOpt = None,
    delivery_id_header: DeliveryHeaderOpt = None,
    delivery_id_path: DeliveryPathOpt = None,
    mode: ModeOpt = None,
    forward_url: ForwardOpt = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it disabled (403 at ingest).")
    ] = False,
    file: FileOpt = None,
    json_text: JsonOpt = None,
) -> None:
    """Add a tool. Example: tools add demo --auth-type hmac --header X-Signature --secret s3cret"""
    settings = load_settings(quiet_logs=True)
    definition = merge_patch(
        _definition(tool_id, file, json_text),
        _flag_patch(
            provider=provider,
            secret=secret,
            auth_type=auth_type,
            header=header,
            algorithm=algorithm,
            encoding=encoding,
            prefix=prefix,
            event_type_header=event_type_header,
            event_type_path=event_type_path,
            delivery_id_header=delivery_id_header,
            delivery_id_path=delivery_id_path,
            mode=mode,
            forward_url=forward_url,
            enabled=False if disabled else None,
        ),
    )
    definition["id"] = tool_id
    with user_errors(f"cannot add tool {tool_id!r}"):
        parse_tool(definition)  # invalid input fails before the database is opened
        view = with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).create(definition),
        )
    console.print(plain(f"added tool {tool_id!r} ({_summary(view)})"))
    console.print(
        plain(
            f"  webhooks go to POST {api_url(settings)}/webhooks/{tool_id}\n"
            f"  try it: webhook-worker send {tool_id}"
        )
    )


@app.command()
def update(
    tool_id: Annotated[str, typer.Argument(metavar="TOOL_ID", help="The tool to change.")],
    provider: ProviderOpt = None,
    secret: SecretOpt = None,
    add_secret: Annotated[
        str | None,
        typer.Option(
            "--add-secret",
            help="Rotation: sign with this new secret and keep accepting the current ones.",
        ),
    ] = None,
    auth_type: AuthTypeOpt = None,
    header: HeaderOpt = None,
    algorithm: AlgorithmOpt = None,
    encoding: EncodingOpt = None,
    prefix: PrefixOpt = None,
    event_type_header: EventHeaderOpt = None,
    event_type_path: EventPathOpt = None,
    delivery_id_header: DeliveryHeaderOpt = None,
    delivery_id_path: DeliveryPathOpt = None,
    mode: ModeOpt = None,
    forward_url: ForwardOpt = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Accept or refuse (403) webhooks.")
    ] = None,
    file: FileOpt = None,
    json_text: JsonOpt = None,
) -> None:
    """Change a tool: the flags, --file and --json are a merge patch (null removes a field)."""
    settings = load_settings(quiet_logs=True)
    if secret and add_secret:
        fail("use either --secret (replace) or --add-secret (rotate), not both", 2)
    patch = _definition(tool_id, file, json_text, patch=True)
    patch.pop("id", None)
    patch = _combine(
        patch,
        _flag_patch(
            provider=provider,
            secret=secret,
            auth_type=auth_type,
            header=header,
            algorithm=algorithm,
            encoding=encoding,
            prefix=prefix,
            event_type_header=event_type_header,
            event_type_path=event_type_path,
            delivery_id_header=delivery_id_header,
            delivery_id_path=delivery_id_path,
            mode=mode,
            forward_url=forward_url,
            enabled=enabled,
        ),
    )
    if not patch and add_secret is None:
        fail("nothing to change: pass flags such as --disable, or --file / --json", 2)

    async def change(store: ToolStore) -> dict[str, Any]:
        stored = (await store.get(tool_id))["config"]
        changes = patch
        if add_secret is not None:
            auth = stored.get("auth") or {}
            current = ([auth["secret"]] if "secret" in auth else []) + list(
                auth.get("secrets") or []
            )
            rotated = {"secret": None, "secrets": [add_secret, *current]}
            changes = _combine(changes, {"auth": rotated})
        return await _service(settings, store).patch(tool_id, changes)

    with user_errors(f"cannot update tool {tool_id!r}"):
        view = with_store(settings, change)
    console.print(plain(f"updated tool {tool_id!r} ({_summary(view)})"))


@app.command("list")
def list_tools(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List every tool."""
    settings = load_settings(quiet_logs=True)
    with user_errors():
        views = [
            _id_first(v)
            for v in with_store(
                settings,
                lambda s: ToolService(
                    s, allow_private_forward=settings.allow_private_forward
                ).list_all(),
            )
        ]
    if as_json:
        print_json({"items": views, "next_cursor": None})
        return
    if not views:
        console.print("no tools yet: add one with `webhook-worker tools add ID ...`")
        return
    table = Table("id", "provider", "auth type", "mode", "enabled", "updated")
    table.columns[0].no_wrap = table.columns[-1].no_wrap = True
    for view in views:
        table.add_row(
            plain(view["id"]),
            plain(view.get("provider", "generic")),
            plain(_auth_type(view)),
            plain(view.get("mode", "store_only")),
            "yes" if view.get("enabled", True) else "[red]no[/]",
            plain(_short_time(view.get("updated_at"))),
        )
    print_table(table)


@app.command()
def show(
    tool_id: Annotated[str, typer.Argument(metavar="TOOL_ID", help="The tool to show.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show a tool's definition (secrets redacted)."""
    settings = load_settings(quiet_logs=True)
    with user_errors():
        view = _id_first(
            with_store(
                settings,
                lambda store: ToolService(
                    store, allow_private_forward=settings.allow_private_forward
                ).get(tool_id),
            )
        )
    if as_json:
        print_json(view)
    else:
        console.print(plain_json(view))


@app.command()
def remove(
    tool_id: Annotated[str, typer.Argument(metavar="TOOL_ID", help="The tool to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a tool (its stored events stay)."""
    settings = load_settings(quiet_logs=True)
    with user_errors():
        with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).get(tool_id),
        )
    if not yes:
        confirm(f"Remove tool {tool_id!r}? Its webhooks will get 404", f"removing tool {tool_id!r}")
    with user_errors():
        with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).delete(tool_id),
        )
    console.print(plain(f"removed tool {tool_id!r}"))


@app.command()
def apply(
    file: Annotated[
        str,
        typer.Option(
            "--file",
            "-f",
            metavar="PATH",
            help="YAML/JSON: a list of tools or {tools: [...]} ('-' is stdin).",
        ),
    ],
) -> None:
    """Create or update every tool in a file; nothing is written unless all are valid."""
    settings = load_settings(quiet_logs=True)
    definitions = _definitions(read_document(file), file)
    seen: set[str] = set()
    for number, definition in enumerate(definitions, 1):
        label = f"tool #{number}" + (
            f" ({definition['id']!r})" if isinstance(definition.get("id"), str) else ""
        )
        with user_errors(f"nothing applied: {label}"):
            tool = parse_tool(definition)
        if tool.id in seen:
            fail(f"nothing applied: {label} is defined more than once in {file}", 1)
        seen.add(tool.id)
    with user_errors("nothing applied"):
        outcomes = with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).apply(definitions),
        )
    styles = {"created": "green", "updated": "yellow", "unchanged": "dim"}
    for tool_id, outcome in outcomes:
        console.print(
            Text.assemble((f"{outcome:<9}", styles.get(outcome, "")), " ", printable(tool_id))
        )
    counts = {name: sum(1 for _, o in outcomes if o == name) for name in styles}
    console.print(
        f"{len(outcomes)} tools: " + ", ".join(f"{n} {name}" for name, n in counts.items()),
        highlight=False,
    )


def _definitions(document: Any, file: str) -> list[dict[str, Any]]:
    if isinstance(document, Mapping) and "tools" in document:
        document = document["tools"]
    elif isinstance(document, Mapping) and "id" in document:
        document = [document]
    if not isinstance(document, list) or not document:
        fail(f"{file}: expected a list of tools or {{tools: [...]}}", 1)
    for number, item in enumerate(document, 1):
        if not isinstance(item, Mapping):
            fail(f"{file}: tool #{number} is not an object", 1)
    return [dict(item) for item in document]


def _id_first(view: dict[str, Any]) -> dict[str, Any]:
    return {"id": view.get("id"), **view}


def _summary(view: Mapping[str, Any]) -> str:
    parts = [view.get("provider", "generic"), f"auth {_auth_type(view)}"]
    parts.append(view.get("mode", "store_only"))
    if not view.get("enabled", True):
        parts.append("disabled")
    return ", ".join(parts)


def _auth_type(view: Mapping[str, Any]) -> str:
    return auth_type_of(view)


def _short_time(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:  # SQLite returns naive UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _service(settings: Settings, store: ToolStore) -> ToolService:
    """The tool service with this process's ALLOW_PRIVATE_FORWARD (literal forward targets)."""
    return ToolService(store, allow_private_forward=settings.allow_private_forward)
