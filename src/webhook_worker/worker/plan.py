"""What the worker does with one event: the tool's mode, filter and transform, with the
per-event-type overrides of ``events`` applied, compiled once per tool version."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jmespath
import jmespath.parser

from webhook_worker.config import RetryPolicy
from webhook_worker.tools.model import ForwardConfig, Tool
from webhook_worker.vocabulary import Mode


@dataclass(frozen=True, slots=True)
class Plan:
    mode: Mode
    filter: jmespath.parser.ParsedResult | None
    transform: jmespath.parser.ParsedResult | None
    forward: ForwardConfig | None
    retry: RetryPolicy
    overrides: Container[str] = ()
    """The event types the tool's ``events`` names (they keep their own metric label)."""

    @property
    def needs_json(self) -> bool:
        return self.filter is not None or self.transform is not None

    @property
    def forwards(self) -> bool:
        return self.mode == Mode.STORE_AND_FORWARD and self.forward is not None


MAX_PLANS: Final = 4096
"""Plans kept at most: a safety bound over tools deleted while the process runs (the plans of
the tools that exist are bounded by what they declare)."""


class Plans:
    """Plans by (tool, overridden event type); recompiled when the tool cache hands out a new
    Tool. An event type without an override gets the tool's own plan, so a sender's made-up
    event types share one entry and the cache holds at most one plan per tool and override."""

    def __init__(self, default_retry: RetryPolicy) -> None:
        self._default_retry = default_retry
        self._cache: dict[tuple[str, str | None], tuple[Tool, Plan]] = {}
        self._store_only = Plan(Mode.STORE_ONLY, None, None, None, default_retry)

    def __len__(self) -> int:
        return len(self._cache)

    def for_event(self, tool: Tool | None, event_type: str | None) -> Plan:
        if tool is None:
            # The tool was deleted after ingest accepted the event: keep the event.
            return self._store_only
        overrides = tool.config.get("events")
        name = event_type or ""
        key = (tool.id, name if overrides and name in overrides else None)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is tool:
            return cached[1]
        if len(self._cache) >= MAX_PLANS:
            self._cache.clear()
        plan = self._compile(tool, key[1])
        self._cache[key] = (tool, plan)
        return plan

    def _compile(self, tool: Tool, event_type: str | None) -> Plan:
        config: Mapping[str, Any] = tool.config
        overrides: Mapping[str, Any] = config.get("events") or {}
        override: Mapping[str, Any] = (
            overrides.get(event_type, {}) if event_type is not None else {}
        )
        # An override's key wins even when it is null: {"transform": null} stores the raw body.
        mode = Mode(override.get("mode", tool.mode))  # validated when the tool was saved
        filter_text = override["filter"] if "filter" in override else config.get("filter")
        transform_text = (
            override["transform"] if "transform" in override else config.get("transform")
        )
        return Plan(
            mode=mode,
            filter=jmespath.compile(filter_text) if filter_text else None,
            transform=jmespath.compile(transform_text) if transform_text else None,
            forward=tool.forward,
            retry=tool.retry or self._default_retry,
            overrides=overrides,
        )
