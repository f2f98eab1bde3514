"""What the worker does with one event: the tool's mode, filter and transform, with the
per-event-type overrides of ``events`` applied, and the destinations it is delivered to, each
with its own filter, transform and retry policy; compiled once per tool version."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jmespath
import jmespath.parser

from webhook_worker.config import RetryPolicy
from webhook_worker.tools.model import (
    DEFAULT_DESTINATION,
    NO_CONTROL,
    Control,
    Destination,
    ForwardConfig,
    Tool,
)
from webhook_worker.vocabulary import Mode


@dataclass(frozen=True, slots=True)
class Route:
    """One destination of an event: where it goes and what this destination does first."""

    id: str
    forward: ForwardConfig
    filter: jmespath.parser.ParsedResult | None
    transform: jmespath.parser.ParsedResult | None
    retry: RetryPolicy
    """The destination's own policy, else the tool's, else the global one."""
    control: Control = NO_CONTROL
    paused: bool = False

    @property
    def needs_json(self) -> bool:
        return self.filter is not None or self.transform is not None


@dataclass(frozen=True, slots=True)
class Plan:
    mode: Mode
    filter: jmespath.parser.ParsedResult | None
    transform: jmespath.parser.ParsedResult | None
    routes: tuple[Route, ...]
    """The enabled destinations, in the tool's order: its ``forward`` first (as ``default``,
    when the mode is ``store_and_forward``), then ``destinations``."""
    retry: RetryPolicy
    overrides: Container[str] = ()
    """The event types the tool's ``events`` names (they keep their own metric label)."""
    routes_need_json: bool = field(init=False)
    """A destination has a filter or a transform (worked out once, not per event)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes_need_json", any(r.needs_json for r in self.routes))

    @property
    def needs_json(self) -> bool:
        return self.filter is not None or self.transform is not None

    @property
    def forwards(self) -> bool:
        return bool(self.routes)

    def route(self, destination_id: str) -> Route | None:
        """The destination with this id, if the plan delivers to it."""
        for route in self.routes:
            if route.id == destination_id:
                return route
        return None


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
        self._store_only = Plan(Mode.STORE_ONLY, None, None, (), default_retry)

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
        retry = tool.retry or self._default_retry
        routes = [
            self._route(destination, retry)
            for destination in tool.destinations
            if destination.enabled
        ]
        if mode == Mode.STORE_AND_FORWARD and tool.forward is not None:
            routes.insert(0, Route(DEFAULT_DESTINATION, tool.forward, None, None, retry))
        return Plan(
            mode=mode,
            filter=_compiled(filter_text),
            transform=_compiled(transform_text),
            routes=tuple(routes),
            retry=retry,
            overrides=overrides,
        )

    @staticmethod
    def _route(destination: Destination, tool_retry: RetryPolicy) -> Route:
        return Route(
            destination.id,
            destination.forward,
            _compiled(destination.filter),
            _compiled(destination.transform),
            destination.retry or tool_retry,
            destination.control,
            destination.paused,
        )


def _compiled(expression: str | None) -> jmespath.parser.ParsedResult | None:
    return jmespath.compile(expression) if expression else None
