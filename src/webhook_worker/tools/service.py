"""What the management API and the CLI do with tools: validate, store, redact, merge.

Secrets never leave through here: every view is redacted (the fields tools/schema.py declares
secret, found by tools/secret_paths.py), and a redacted placeholder sent back in an update keeps
the stored secret (so a client can GET, edit and PUT a tool). A placeholder with no stored secret
behind it is refused, not stored as the secret; so is one for a secret that was sent to another
host than the definition's URL now names.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from webhook_worker.clock import iso
from webhook_worker.errors import BadRequestError, ConflictError, NotFoundError, ToolConfigError
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import DEFAULT_DESTINATION, Tool, parse_tool
from webhook_worker.tools.secret_paths import REDACTED as REDACTED  # re-exported: the placeholder
from webhook_worker.tools.secret_paths import secret_spots
from webhook_worker.worker.target_guard import literal_refusal

PICKUP_MARGIN = 0.25
"""Seconds past TOOLS_REFRESH_INTERVAL for the slowest process's reload to finish."""
_WRITE_ATTEMPTS = 5
"""How often a read-modify-write (a patch, a pause) starts again when the tool changed under
it."""


class ToolService:
    def __init__(
        self,
        store: ToolStore,
        after_change: Callable[[], Awaitable[None]] | None = None,
        *,
        allow_private_forward: bool = False,
    ) -> None:
        self._store = store
        # The process's own tool cache reloads at once; other processes poll the revision.
        self._after_change = after_change
        self._allow_private_forward = allow_private_forward

    def _checked(self, tool: Tool) -> Tool:
        """``tool``, unless its forward or one of its destinations sends to an IP literal the
        SSRF guard refuses (without ALLOW_PRIVATE_FORWARD): refused when it is written, where
        the writer can fix it, rather than at each forward. Host names are judged when
        resolved, at each forward. Stored tools are not checked again when loaded: an event for
        one is stored, and its forward refused (never a 404 that would lose it)."""
        targets = [("forward.url", tool.forward)] if tool.forward is not None else []
        targets += [
            (f"destinations[{index}].url", destination.forward)
            for index, destination in enumerate(tool.destinations)
        ]
        for field, forward in targets:
            refusal = literal_refusal(forward.url, self._allow_private_forward)
            if refusal is not None:
                raise ToolConfigError(field, refusal)
        return tool

    async def _changed(self) -> None:
        if self._after_change is not None:
            await self._after_change()

    async def list_all(self) -> list[dict[str, Any]]:
        return [view(row) for row in await self._store.list_all()]

    async def get(self, tool_id: str) -> dict[str, Any]:
        return view(await self._store.get(tool_id))

    async def check_destination(
        self, tool_id: str, destination_id: str, field: str = "destination_id"
    ) -> None:
        """Raise BadRequestError naming ``field`` unless the tool delivers to
        ``destination_id``: a replay there would only be recorded as ``ignored``. The API and
        the CLI refuse by this one rule, in the same words."""
        known = destination_ids(await self.get(tool_id))
        if destination_id not in known:
            listed = ", ".join(known) if known else "none"
            raise BadRequestError(
                f"{field}: tool {tool_id!r} has no destination {destination_id!r} "
                f"(its destinations: {listed})",
                field,
            )

    async def set_paused(self, tool_id: str, destination_id: str, paused: bool) -> bool:
        """Pause or resume one destination: its ``paused`` in the stored definition changes
        (the tools revision moves, so every process reloads it within
        TOOLS_REFRESH_INTERVAL). Returns whether anything changed: pausing a paused
        destination is not an error. Raises NotFoundError for an unknown tool or destination,
        ConflictError for the destination a tool's ``forward`` is (it has no ``paused``).

        The change is made from the definition as read and written only if nobody changed the
        tool meanwhile; otherwise it is made again from the new definition, so a concurrent
        edit is never overwritten with what was read before it."""
        for _ in range(_WRITE_ATTEMPTS):
            row = await self._store.get(tool_id)
            config = copy.deepcopy(dict(row["config"]))
            declared: list[dict[str, Any]] = config.get("destinations") or []
            position = next(
                (i for i, item in enumerate(declared) if item.get("id") == destination_id), None
            )
            if position is None:
                if destination_id == DEFAULT_DESTINATION and config.get("forward"):
                    raise ConflictError(
                        f"tool {tool_id!r} delivers with `forward`, which cannot be paused: "
                        f"move it into `destinations` (with id {DEFAULT_DESTINATION!r}) to "
                        "pause it"
                    )
                ids = [DEFAULT_DESTINATION] if config.get("forward") else []
                known = ", ".join([*ids, *(str(item.get("id")) for item in declared)]) or "none"
                raise NotFoundError(
                    f"tool {tool_id!r} has no destination {destination_id!r} "
                    f"(its destinations: {known})"
                )
            if declared[position].get("paused", False) is paused:
                return False
            if paused:
                declared[position]["paused"] = True
            else:
                declared[position].pop("paused", None)  # the default, as if never paused
            try:
                await self._store.replace(
                    parse_tool(config, tool_id=tool_id), unchanged_since=row["updated_at"]
                )
            except ConflictError:
                continue  # changed meanwhile: again, from what is stored now
            await self._changed()
            return True
        raise ConflictError(
            f"tool {tool_id!r} kept changing while destination {destination_id!r} was being "
            f"{'paused' if paused else 'resumed'}; try again"
        )

    async def create(self, data: Mapping[str, Any]) -> dict[str, Any]:
        row = await self._store.create(self._checked(parse_tool(restore_secrets(dict(data), None))))
        await self._changed()
        return view(row)

    async def replace(self, tool_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: ``data`` is the whole new definition (redacted secrets keep their value)."""
        stored = (await self._store.get(tool_id))["config"]
        merged = restore_secrets(dict(data), stored)
        row = await self._store.replace(self._checked(parse_tool(merged, tool_id=tool_id)))
        await self._changed()
        return view(row)

    async def patch(self, tool_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH: a JSON merge patch (RFC 7386) on the stored definition. Applied to the
        definition as stored when it is written: if the tool changed between the read and the
        write (a pause, say), the patch is applied again to the new definition."""
        for _ in range(_WRITE_ATTEMPTS):
            row = await self._store.get(tool_id)
            stored = row["config"]
            # On the redacted definition: a secret the patch leaves alone is a placeholder, and
            # so is refused like one when the patch moves the URL it is sent to to another host.
            merged = restore_secrets(merge_patch(redact(stored), changes), stored)
            tool = self._checked(parse_tool(merged, tool_id=tool_id))
            try:
                written = await self._store.replace(tool, unchanged_since=row["updated_at"])
            except ConflictError:
                continue
            await self._changed()
            return view(written)
        raise ConflictError(f"tool {tool_id!r} kept changing while it was being updated; try again")

    async def delete(self, tool_id: str) -> None:
        await self._store.delete(tool_id)
        await self._changed()

    async def apply(self, definitions: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """Create or replace each definition. Validates them all before writing any.
        Returns ``(tool_id, "created" | "updated" | "unchanged")`` per definition."""
        # An exported (redacted) definition gets its stored secrets back before validation.
        plans: list[tuple[Tool, Mapping[str, Any] | None]] = []
        for definition in definitions:
            tool_id = definition.get("id")
            stored: Mapping[str, Any] | None = None
            if isinstance(tool_id, str):
                try:
                    stored = (await self._store.get(tool_id))["config"]
                except NotFoundError:
                    stored = None
            tool = self._checked(parse_tool(restore_secrets(dict(definition), stored)))
            self._store.check(tool)
            plans.append((tool, stored))
        outcomes: list[tuple[str, str]] = []
        for tool, stored in plans:
            if stored is None:
                await self._store.create(tool)
                outcomes.append((tool.id, "created"))
            elif {"enabled": True, **tool.config} == {"enabled": True, **stored}:
                outcomes.append((tool.id, "unchanged"))
            else:
                await self._store.replace(tool)
                outcomes.append((tool.id, "updated"))
        await self._changed()
        return outcomes


def picked_up_after(refresh_interval: float) -> float:
    """Seconds after a tool change by which every process has re-read its tools (they poll
    the revision every ``refresh_interval``, TOOLS_REFRESH_INTERVAL): what a pause waits
    before it may say that no new delivery starts, and a resume before it releases the
    deliveries that waited (a worker still seeing the pause would park them again)."""
    return refresh_interval + PICKUP_MARGIN


def destination_ids(tool: Mapping[str, Any]) -> list[str]:
    """The enabled destinations of a tool's view: its ``forward`` (``default``) first."""
    ids = [DEFAULT_DESTINATION] if tool.get("forward") else []
    for destination in tool.get("destinations") or ():
        if destination.get("enabled", True):
            ids.append(destination["id"])
    return ids


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API/CLI shape of a stored tool: its definition, redacted, plus timestamps."""
    result = redact(row["config"])
    result["enabled"] = row["enabled"]
    result["created_at"] = iso(row["created_at"])
    result["updated_at"] = iso(row["updated_at"])
    return result


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each secret replaced by ``********``."""
    result = copy.deepcopy(dict(config))
    for spot in secret_spots(result):
        spot.put(spot.shown)
    return result


def restore_secrets(config: dict[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``config`` with every redacted placeholder replaced by the secret it stands for
    in ``stored`` (None: nothing is stored). Raises ToolConfigError naming the field when nothing
    is stored behind a placeholder, or when the secret was for another host than the one its URL
    now names (a credential must not follow a changed ``forward.url`` or destination ``url``
    without being given again). A destination's secrets are found by its ``id``, wherever it
    now is in the list."""
    config = copy.deepcopy(config)
    known = {spot.key: spot for spot in secret_spots(copy.deepcopy(dict(stored or {})))}
    for spot in secret_spots(config):
        if not spot.is_placeholder:
            continue
        old = known.get(spot.key)
        if old is None:
            raise ToolConfigError(
                spot.field,
                f"{REDACTED} stands for a stored secret and none is stored for {spot.what}: "
                "enter the secret itself",
            )
        if spot.target() != old.target():
            raise ToolConfigError(
                spot.field,
                f"the target changed ({spot.sent_to} names another host than before), so "
                f"{REDACTED} no longer stands for the stored secret: enter {spot.what} again "
                "for the new target, or remove it",
            )
        spot.put(old.value)
    return config


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386: objects merge recursively, ``null`` removes a field, anything else replaces."""
    result = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            current = result.get(key)
            result[key] = merge_patch(current if isinstance(current, Mapping) else {}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result
