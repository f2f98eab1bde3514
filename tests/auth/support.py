"""Helpers the auth tests share: a verifier from a tool definition, and a plain header lookup
that takes any text (unlike HTTP clients, which refuse some values before a verifier sees them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook_worker.auth import Verifier, build_verifier
from webhook_worker.tools.model import parse_tool


class AnyHeaders:
    """Case-insensitive, like Starlette's headers, over arbitrary strings."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = {name.lower(): value for name, value in values.items()}

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())


def verifier(provider: str = "generic", **auth: Any) -> Verifier:
    """The verifier a tool of ``provider`` with these ``auth`` fields gets."""
    return build_verifier(parse_tool({"id": "t", "provider": provider, "auth": auth}).auth)


def check(v: Verifier, headers: Mapping[str, str], body: bytes, now: float) -> None:
    v.verify(AnyHeaders(headers), body, now)
