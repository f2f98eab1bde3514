"""What the management API and the CLI do with tools: validate, store, redact, merge.

Secrets never leave through here: every view is redacted, and a redacted placeholder sent back
in an update keeps the stored secret (so a client can GET, edit and PUT a tool).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from webhook_worker.clock import iso
from webhook_worker.credentials import is_credential_header
from webhook_worker.errors import NotFoundError
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import Tool, parse_tool

REDACTED: Final = "********"


class ToolService:
    def __init__(
        self, store: ToolStore, after_change: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._store = store
        # The process's own tool cache reloads at once; other processes poll the revision.
        self._after_change = after_change

    async def _changed(self) -> None:
        if self._after_change is not None:
            await self._after_change()

    async def list_all(self) -> list[dict[str, Any]]:
        return [view(row) for row in await self._store.list_all()]

    async def get(self, tool_id: str) -> dict[str, Any]:
        return view(await self._store.get(tool_id))

    async def create(self, data: Mapping[str, Any]) -> dict[str, Any]:
        row = await self._store.create(parse_tool(data))
        await self._changed()
        return view(row)

    async def replace(self, tool_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: ``data`` is the whole new definition (redacted secrets keep their value)."""
        stored = (await self._store.get(tool_id))["config"]
        merged = restore_secrets(dict(data), stored)
        row = await self._store.replace(parse_tool(merged, tool_id=tool_id))
        await self._changed()
        return view(row)

    async def patch(self, tool_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH: a JSON merge patch (RFC 7386) on the stored definition."""
        stored = (await self._store.get(tool_id))["config"]
        merged = restore_secrets(merge_patch(stored, changes), stored)
        row = await self._store.replace(parse_tool(merged, tool_id=tool_id))
        await self._changed()
        return view(row)

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
            candidate = restore_secrets(dict(definition), stored) if stored else dict(definition)
            tool = parse_tool(candidate)
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


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API/CLI shape of a stored tool: its definition, redacted, plus timestamps."""
    result = redact(row["config"])
    result["enabled"] = row["enabled"]
    result["created_at"] = iso(row["created_at"])
    result["updated_at"] = iso(row["updated_at"])
    return result


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(config))
    auth = result.get("auth")
    if isinstance(auth, dict):
        if "secret" in auth:
            auth["secret"] = REDACTED
        if isinstance(auth.get("secrets"), list):
            auth["secrets"] = [REDACTED for _ in auth["secrets"]]
    forward = result.get("forward")
    if isinstance(forward, dict):
        if forward.get("signing_secret"):
            forward["signing_secret"] = REDACTED
        headers = forward.get("headers")
        if isinstance(headers, dict):
            forward["headers"] = {
                name: REDACTED if is_credential_header(name) else value
                for name, value in headers.items()
            }
    return result


def restore_secrets(config: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every redacted placeholder replaced by the stored value it
    stands for."""
    config = copy.deepcopy(config)
    auth, old_auth = config.get("auth"), stored.get("auth") or {}
    if isinstance(auth, dict):
        if auth.get("secret") == REDACTED and "secret" in old_auth:
            auth["secret"] = old_auth["secret"]
        secrets, old_secrets = auth.get("secrets"), old_auth.get("secrets") or []
        if isinstance(secrets, list):
            auth["secrets"] = [
                old_secrets[i] if s == REDACTED and i < len(old_secrets) else s
                for i, s in enumerate(secrets)
            ]
    forward, old_forward = config.get("forward"), stored.get("forward") or {}
    if isinstance(forward, dict):
        if forward.get("signing_secret") == REDACTED:
            forward["signing_secret"] = old_forward.get("signing_secret")
        headers, old_headers = forward.get("headers"), old_forward.get("headers") or {}
        if isinstance(headers, dict):
            for name, value in headers.items():
                if value == REDACTED and name in old_headers:
                    headers[name] = old_headers[name]
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
