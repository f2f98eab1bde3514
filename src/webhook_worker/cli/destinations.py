"""``webhook-worker tools destinations``: list, add, update, remove, pause and resume a tool's
destinations.

Each command changes the tool's ``destinations`` through ToolService, as ``tools update`` does:
the same store, the same validation, the same error lines. It starts from the tool's redacted
view, so the secrets of the destinations it leaves alone go back as placeholders and are
restored by their destination's id; only secrets given on the command line are new, and nothing
printed holds one.

``pause`` and ``resume`` change only the destination's ``paused`` flag (ToolService.set_paused),
and return, like the API's, once every process has re-read its tools; ``resume`` then sends
what waited, so it needs the queue as well as the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from webhook_worker.cli.common import (
    confirm,
    console,
    fail,
    load_settings,
    print_json,
    print_table,
    run_async,
    user_errors,
    with_store,
)
from webhook_worker.cli.display import control_summary
from webhook_worker.cli.events import pipeline_errors
from webhook_worker.cli.plain import plain
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import DEFAULT_DESTINATION
from webhook_worker.tools.service import ToolService, picked_up_after

app = typer.Typer(
    help="List, add, change, remove, pause and resume a tool's destinations (each delivered "
    "independently).",
    no_args_is_help=True,
)

ToolArg = Annotated[str, typer.Argument(metavar="TOOL_ID", help="The tool.")]
DestArg = Annotated[str, typer.Argument(metavar="DEST_ID", help="The destination's id.")]
MethodOpt = Annotated[
    str | None, typer.Option("--method", help="POST (the default), PUT or PATCH.")
]
HeaderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--header", metavar="NAME=VALUE", help="A request header to send; repeat for more."
    ),
]
TimeoutOpt = Annotated[
    str | None, typer.Option("--timeout", help="How long one attempt may take, e.g. 10s.")
]
MaxRetriesOpt = Annotated[
    int | None,
    typer.Option("--max-retries", min=0, help="Retries after the first attempt."),
]


@app.command("list")
def list_destinations(
    tool_id: ToolArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List a tool's destinations; its `forward` shows as `default` (secrets redacted)."""
    settings = load_settings(quiet_logs=True)
    view = _tool_view(settings, tool_id)
    items: list[dict[str, Any]] = []
    forward = view.get("forward")
    if isinstance(forward, Mapping):
        items.append({"id": DEFAULT_DESTINATION, "source": "forward", **forward})
    items += [{"id": item.get("id"), "source": "destinations", **item} for item in _declared(view)]
    if as_json:
        print_json({"items": items})
        return
    if not items:
        console.print(
            plain(
                f"tool {tool_id!r} has no destinations: add one with "
                f"`webhook-worker tools destinations add {tool_id} ID --url URL`"
            ),
            soft_wrap=True,
        )
        return
    table = Table("id", "url", "method", "filter", "transform", "max retries", "control", "enabled")
    table.columns[0].no_wrap = True
    for item in items:
        retry = item.get("retry")
        table.add_row(
            plain(item["id"] + (" (forward)" if item["source"] == "forward" else "")),
            plain(item.get("url", "")),
            plain(str(item.get("method", "POST")).upper()),
            plain(item.get("filter") or ""),
            plain(item.get("transform") or ""),
            plain(retry.get("max_retries", "") if isinstance(retry, Mapping) else ""),
            plain(control_summary(item)),
            _state(item),
        )
    print_table(table)


@app.command()
def add(
    tool_id: ToolArg,
    dest_id: DestArg,
    url: Annotated[str, typer.Option("--url", help="Where events are sent: http(s) URL.")],
    method: MethodOpt = None,
    header: HeaderOpt = None,
    timeout: TimeoutOpt = None,
    signing_secret: Annotated[
        str | None,
        typer.Option("--signing-secret", help="Sign each request (Standard Webhooks, whsec_...)."),
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", help="JMESPath: events for which it is false are not sent."),
    ] = None,
    transform: Annotated[
        str | None, typer.Option("--transform", help="JMESPath: what is sent instead.")
    ] = None,
    max_retries: MaxRetriesOpt = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Add it disabled: nothing is delivered yet.")
    ] = False,
) -> None:
    """Add a destination. Example: tools destinations add shop billing --url https://..."""
    settings = load_settings(quiet_logs=True)
    given = {
        "url": url,
        "method": method,
        "headers": _headers(header) or None,
        "timeout": timeout,
        "signing_secret": signing_secret,
        "filter": filter_,
        "transform": transform,
        "retry": None if max_retries is None else {"max_retries": max_retries},
        "enabled": False if disabled else None,
    }
    destination = {"id": dest_id, **{k: v for k, v in given.items() if v not in (None, "")}}
    view = _tool_view(settings, tool_id)
    declared = _declared(view)
    if any(item.get("id") == dest_id for item in declared):
        fail(
            f"tool {tool_id!r} already has a destination {dest_id!r}: change it with "
            f"`webhook-worker tools destinations update {tool_id} {dest_id}`",
            1,
        )
    changed = _write(
        settings,
        tool_id,
        [*declared, destination],
        f"cannot add destination {dest_id!r} to tool {tool_id!r}",
    )
    console.print(
        plain(f"added destination {dest_id!r} to tool {tool_id!r} ({_url(changed, dest_id)})"),
        soft_wrap=True,
    )


@app.command()
def update(
    tool_id: ToolArg,
    dest_id: DestArg,
    url: Annotated[
        str | None, typer.Option("--url", help="Where events are sent: http(s) URL.")
    ] = None,
    method: MethodOpt = None,
    header: HeaderOpt = None,
    remove_header: Annotated[
        list[str] | None,
        typer.Option("--remove-header", metavar="NAME", help="A header to stop sending."),
    ] = None,
    timeout: TimeoutOpt = None,
    signing_secret: Annotated[
        str | None,
        typer.Option("--signing-secret", help="A new signing secret; '' stops signing."),
    ] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help="A new JMESPath filter; '' removes it.")
    ] = None,
    transform: Annotated[
        str | None, typer.Option("--transform", help="A new JMESPath transform; '' removes it.")
    ] = None,
    max_retries: MaxRetriesOpt = None,
    enabled: Annotated[
        bool | None,
        typer.Option("--enable/--disable", help="Deliver to it, or stop delivering to it."),
    ] = None,
) -> None:
    """Change a destination: only the options given change (headers are added or replaced one
    by one). A new --url on another host needs its secrets again."""
    settings = load_settings(quiet_logs=True)
    new_headers = _headers(header)
    view = _tool_view(settings, tool_id)
    declared = _declared(view)
    position = _position(tool_id, dest_id, view)
    current = dict(declared[position])
    for key, value in (
        ("url", url),
        ("method", method),
        ("timeout", timeout),
        ("signing_secret", signing_secret),
        ("filter", filter_),
        ("transform", transform),
    ):
        if value == "":
            current.pop(key, None)
        elif value is not None:
            current[key] = value
    headers = dict(current.get("headers") or {})
    for name in remove_header or []:
        if _without(headers, name) == headers:
            fail(f"destination {dest_id!r} sends no header {name!r}", 1)
        headers = _without(headers, name)
    for name, value in new_headers.items():
        headers = {**_without(headers, name), name: value}
    if headers:
        current["headers"] = headers
    else:
        current.pop("headers", None)
    if max_retries is not None:
        current["retry"] = {**(current.get("retry") or {}), "max_retries": max_retries}
    if enabled is not None:
        current["enabled"] = enabled
    if current == declared[position]:
        fail("nothing to change: pass options such as --url, --header or --disable", 2)
    declared[position] = current
    changed = _write(
        settings, tool_id, declared, f"cannot update destination {dest_id!r} of tool {tool_id!r}"
    )
    console.print(
        plain(f"updated destination {dest_id!r} of tool {tool_id!r} ({_url(changed, dest_id)})"),
        soft_wrap=True,
    )


@app.command()
def remove(
    tool_id: ToolArg,
    dest_id: DestArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a destination: events are no longer delivered to it."""
    settings = load_settings(quiet_logs=True)
    view = _tool_view(settings, tool_id)
    declared = _declared(view)
    del declared[_position(tool_id, dest_id, view)]
    if not yes:
        confirm(
            f"Remove destination {dest_id!r} of tool {tool_id!r}?",
            f"removing destination {dest_id!r}",
        )
    _write(
        settings, tool_id, declared, f"cannot remove destination {dest_id!r} from tool {tool_id!r}"
    )
    console.print(plain(f"removed destination {dest_id!r} from tool {tool_id!r}"))


@app.command()
def pause(tool_id: ToolArg, dest_id: DestArg) -> None:
    """Pause a destination: its deliveries wait (status paused), neither sent nor
    dead-lettered, until `resume`. Returns once every worker has re-read its tools
    (TOOLS_REFRESH_INTERVAL): from then on no new delivery starts there."""
    settings = load_settings(quiet_logs=True)

    async def go(store: ToolStore) -> None:
        service = ToolService(store, allow_private_forward=settings.allow_private_forward)
        await service.set_paused(tool_id, dest_id, True)
        await asyncio.sleep(picked_up_after(settings.tools_refresh_interval))

    with pipeline_errors():
        with_store(settings, go)
    console.print(
        plain(f"paused {dest_id} of tool {tool_id}: no new deliveries start there"),
        soft_wrap=True,
    )


@app.command()
def resume(tool_id: ToolArg, dest_id: DestArg) -> None:
    """Resume a paused destination and send the deliveries that waited, oldest first (once
    every worker has re-read its tools, so that none parks them again)."""
    settings = load_settings(quiet_logs=True)

    async def go() -> int:
        async with open_runtime(settings) as runtime:
            await runtime.tool_service.set_paused(tool_id, dest_id, False)
            await asyncio.sleep(picked_up_after(settings.tools_refresh_interval))
            requeued: int = await runtime.replayer.release_paused(tool_id, dest_id)
            return requeued

    with pipeline_errors():
        requeued = run_async(go())
    sent = (
        "no deliveries were waiting"
        if requeued == 0
        else f"{requeued} waiting {'delivery' if requeued == 1 else 'deliveries'} sent again"
    )
    console.print(plain(f"resumed {dest_id} of tool {tool_id}: {sent}"), soft_wrap=True)


def _state(item: Mapping[str, Any]) -> str:
    """The ``enabled`` cell: whether it is delivered to, and whether it is paused."""
    if not item.get("enabled", True):
        return "[red]no[/]"
    return "[magenta]paused[/]" if item.get("paused") is True else "yes"


def _tool_view(settings: Settings, tool_id: str) -> dict[str, Any]:
    """The tool as ``tools show`` prints it (secrets redacted); exit 1 when there is none."""
    with user_errors():
        return with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).get(tool_id),
        )


def _write(
    settings: Settings, tool_id: str, destinations: list[dict[str, Any]], doing: str
) -> dict[str, Any]:
    """Store ``destinations`` as the tool's whole list (none: the field is removed), as
    ``tools update`` changes a tool: a merge patch through ToolService, whose placeholders keep
    the stored secrets."""
    with user_errors(doing):
        return with_store(
            settings,
            lambda store: ToolService(
                store, allow_private_forward=settings.allow_private_forward
            ).patch(tool_id, {"destinations": destinations or None}),
        )


def _declared(view: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(item) for item in view.get("destinations") or []]


def _position(tool_id: str, dest_id: str, view: Mapping[str, Any]) -> int:
    """Where destination ``dest_id`` is in the tool's list; exit 1 with why when it is not."""
    declared = _declared(view)
    for position, item in enumerate(declared):
        if item.get("id") == dest_id:
            return position
    if dest_id == DEFAULT_DESTINATION and view.get("forward") is not None:
        fail(
            f"destination {dest_id!r} of tool {tool_id!r} is its `forward`: change it with "
            f"`webhook-worker tools update {tool_id}` (--forward-url, or --json "
            "'{\"forward\": ...}')",
            1,
        )
    known = ", ".join(str(item.get("id")) for item in declared) or "none"
    fail(f"tool {tool_id!r} has no destination {dest_id!r} (it has: {known})", 1)


def _headers(pairs: list[str] | None) -> dict[str, str]:
    """``--header NAME=VALUE`` options as headers."""
    headers: dict[str, str] = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            # Not the option's text: it may hold a credential.
            fail("--header: expected NAME=VALUE, such as --header 'Authorization=Bearer ...'", 2)
        headers[name] = value
    return headers


def _without(headers: Mapping[str, str], name: str) -> dict[str, str]:
    """``headers`` without ``name`` in any case (header names are case-insensitive)."""
    return {known: value for known, value in headers.items() if known.lower() != name.lower()}


def _url(view: Mapping[str, Any], dest_id: str) -> str:
    """The destination's URL as the (redacted) view shows it."""
    return next(str(item.get("url")) for item in _declared(view) if item.get("id") == dest_id)
