"""Event types chosen by senders cannot grow /metrics or the worker's plan cache without bound."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import orjson

from tests.support import Service, eventually, running_service
from webhook_worker.config import RetryPolicy, Settings
from webhook_worker.observability.labels import (
    MAX_EVENT_TYPES_PER_TOOL,
    OTHER,
    EventTypeLabels,
)
from webhook_worker.tools.model import parse_tool
from webhook_worker.worker.plan import MAX_PLANS, Plans

WATCHED = "watched"  # named in the tool's `events` overrides: always its own label value


async def _send(service: Service, tool_id: str, kinds: list[str]) -> None:
    async def one(kind: str) -> None:
        body = orjson.dumps({"kind": kind})
        headers = {"X-GitHub-Event": kind, "X-GitHub-Delivery": f"{tool_id}-{kind}"}
        answer = await service.post(body, tool_id, headers=headers)
        assert answer.status_code == 202, answer.text

    for start in range(0, len(kinds), 50):
        await asyncio.gather(*(one(kind) for kind in kinds[start : start + 50]))


def _event_types(text: str, tool_id: str) -> dict[str, set[str]]:
    """Per metric family: the event_type label values of ``tool_id``'s samples."""
    found: dict[str, set[str]] = {}
    marker = f'tool_id="{tool_id}"'
    for line in text.splitlines():
        if line.startswith("#") or marker not in line or 'event_type="' not in line:
            continue
        name = line.split("{", 1)[0]
        value = line.split('event_type="', 1)[1].split('"', 1)[0]
        found.setdefault(name, set()).add(value)
    return found


def _processed(text: str, tool_id: str) -> float:
    marker = f'tool_id="{tool_id}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("webhook_events_processed_total{") and marker in line
    )


async def _all_processed(service: Service, tool_id: str, count: int) -> str:
    async def scrape() -> str | None:
        text = (await service.client.get("/metrics")).text
        return text if _processed(text, tool_id) >= count else None

    return await eventually(scrape, within=60, what=f"{count} events of {tool_id} processed")


async def test_distinct_event_types_fold_into_other_past_the_cap(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, tools_refresh_interval=0.1)
    tool_id = f"card{uuid.uuid4().hex[:8]}"
    async with running_service(settings) as service:
        await service.add_tool(tool_id, events={WATCHED: {"mode": "store_only"}})
        await _send(service, tool_id, [f"made-up-{n}" for n in range(300)] + [WATCHED])
        first = await _all_processed(service, tool_id, 301)

        labels = _event_types(first, tool_id)
        for name in (
            "webhook_events_received_total",
            "webhook_events_processed_total",
            "webhook_event_processing_duration_seconds_count",
        ):
            values = labels[name]
            assert len(values) <= MAX_EVENT_TYPES_PER_TOOL + 2, (name, len(values))
            assert OTHER in values
            assert WATCHED in values
        received = f'webhook_events_received_total{{event_type="{OTHER}",tool_id="{tool_id}"}}'
        assert f"{received} {300 - MAX_EVENT_TYPES_PER_TOOL}.0" in first

        # 300 more made-up types: /metrics does not grow (without the cap: ~700 KB more).
        await _send(service, tool_id, [f"made-up-{n}" for n in range(300, 600)])
        second = await _all_processed(service, tool_id, 601)
        assert len(second) - len(first) < 10_000, (len(first), len(second))
        assert f"{received} {600 - MAX_EVENT_TYPES_PER_TOOL}.0" in second


def test_a_tool_keeps_its_first_event_types_and_its_overrides() -> None:
    labels = EventTypeLabels(cap=3)
    known = {"deploy"}
    assert [labels.label("t", kind, known) for kind in ("a", "b", None, "c", "a")] == [
        "a",
        "b",
        "",
        OTHER,
        "a",
    ]
    assert labels.label("t", "deploy", known) == "deploy"  # past the cap, but named
    assert labels.label("t", "d", known) == OTHER
    assert labels.label("other-tool", "c", None) == "c"  # the cap is per tool


def test_the_plan_cache_holds_one_plan_per_tool_and_override() -> None:
    tool = parse_tool(
        {
            "id": "plans",
            "auth": {"type": "none"},
            "transform": "{a: a}",
            "events": {"deploy": {"transform": "{b: b}"}},
        }
    )
    plans = Plans(RetryPolicy())
    default = plans.for_event(tool, "made-up-0")
    for n in range(10_000):
        assert plans.for_event(tool, f"made-up-{n}") is default
    deploy = plans.for_event(tool, "deploy")
    assert deploy.transform is not None and deploy.transform.expression == "{b: b}"
    assert plans.for_event(tool, None) is default
    assert len(plans) == 2


def test_the_plan_cache_is_bounded_across_tools() -> None:
    base = parse_tool({"id": "t", "auth": {"type": "none"}})
    plans = Plans(RetryPolicy())
    for n in range(MAX_PLANS + 100):
        plans.for_event(dataclasses.replace(base, id=f"t{n}"), "push")
        assert len(plans) <= MAX_PLANS
