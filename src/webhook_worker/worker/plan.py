"""What the worker does with one event: the tool's mode, filter and transform, with the
per-event-type overrides of ``events`` applied, compiled once per tool version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

    @property
    def needs_json(self) -> bool:
        return self.filter is not None or self.transform is not None

    @property
    def forwards(self) -> bool:
        return self.mode == Mode.STORE_AND_FORWARD and self.forward is not None


class Plans:
    """Plans by (tool, event type); recompiled when the tool cache hands out a new Tool."""

    def __init__(self, default_retry: RetryPolicy) -> None:
        self._default_retry = default_retry
        self._cache: dict[tuple[str, str | None], tuple[Tool, Plan]] = {}
        self._store_only = Plan(Mode.STORE_ONLY, None, None, None, default_retry)

    def for_event(self, tool: Tool | None, event_type: str | None) -> Plan:
        if tool is None:
            # The tool was deleted after ingest accepted the event: keep the event.
            return self._store_only
        key = (tool.id, event_type)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is tool:
            return cached[1]
        plan = self._compile(tool, event_type)
        self._cache[key] = (tool, plan)
        return plan

    def _compile(self, tool: Tool, event_type: str | None) -> Plan:
        config: Mapping[str, Any] = tool.config
        override: Mapping[str, Any] = (config.get("events") or {}).get(event_type or "", {})
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
        )
