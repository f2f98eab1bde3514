"""``webhook_destination_paused`` and ``webhook_destination_circuit_state`` on SQLite and
PostgreSQL, set at each scrape: paused from the stored tools (every destination of every tool),
circuit state from the gate (which reports only circuits that are not closed); the series of a
destination that is gone are dropped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY

from webhook_worker.control.base import (
    CircuitChange,
    CircuitState,
    Control,
    Outcome,
    Position,
    Verdict,
)
from webhook_worker.observability.health import Gauges
from webhook_worker.queue.database import DatabaseQueue
from webhook_worker.storage.database import Database
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.service import ToolService


def value(metric: str, tool_id: str, destination_id: str) -> float | None:
    """The series as /metrics would serve it (None: there is none)."""
    labels = {"tool_id": tool_id, "destination_id": destination_id}
    return REGISTRY.get_sample_value(metric, labels)


def paused(tool_id: str, destination_id: str) -> float | None:
    return value("webhook_destination_paused", tool_id, destination_id)


def circuit(tool_id: str, destination_id: str) -> float | None:
    return value("webhook_destination_circuit_state", tool_id, destination_id)


class CircuitsOnly:
    """A gate that only answers :meth:`circuits` (all the gauges ask of it), with what a test
    sets: the mapping from the gate's answer to the gauge is what is tested here."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], CircuitState] = {}

    async def circuits(self) -> Mapping[tuple[str, str], CircuitState]:
        return dict(self.states)

    async def acquire(
        self, tool_id: str, destination_id: str, control: Control, position: Position | None,
        lease: float,
    ) -> Verdict:  # fmt: skip
        raise NotImplementedError

    async def release(
        self, tool_id: str, destination_id: str, control: Control, slot: str | None,
        outcome: Outcome,
    ) -> CircuitChange | None:  # fmt: skip
        raise NotImplementedError

    async def settle(self, positions: Sequence[tuple[str, Position]]) -> None:
        raise NotImplementedError

    async def waiting_for(self, keys: Sequence[tuple[str, str, str]]) -> list[int]:
        raise NotImplementedError

    async def forget(self, tool_id: str, destination_id: str) -> None:
        raise NotImplementedError


def shop(**billing: Any) -> dict[str, Any]:
    return {
        "id": "shop",
        "destinations": [
            {"id": "billing", "url": "https://billing.example.com/in", **billing},
            {"id": "crm", "url": "https://crm.example.com/in", "circuit_breaker": {}},
        ],
    }


async def test_paused_and_circuit_state_per_destination(db: Database) -> None:
    service = ToolService(ToolStore(db))
    await service.create(shop())
    await service.create(
        {"id": "legacy", "mode": "store_and_forward", "forward": {"url": "https://e.com/in"}}
    )
    await service.set_paused("shop", "billing", True)
    gate = CircuitsOnly()
    gate.states = {("shop", "crm"): CircuitState.OPEN}
    gauges = Gauges(db, DatabaseQueue(db, "c", 3600, 30), gate=gate)

    await gauges.refresh()
    assert (paused("shop", "billing"), paused("shop", "crm")) == (1, 0)
    assert paused("legacy", "default") == 0
    assert circuit("shop", "crm") == 2
    assert circuit("shop", "billing") is None  # no breaker, and the gate says nothing of it

    await service.set_paused("shop", "billing", False)
    gate.states = {("shop", "crm"): CircuitState.HALF_OPEN}
    await gauges.refresh()
    assert (paused("shop", "billing"), circuit("shop", "crm")) == (0, 1)

    gate.states = {}  # closed again: the gate no longer lists it
    await gauges.refresh()
    assert circuit("shop", "crm") == 0


async def test_a_removed_destination_loses_its_series(db: Database) -> None:
    service = ToolService(ToolStore(db))
    await service.create(shop(paused=True))
    gate = CircuitsOnly()
    gate.states = {("shop", "crm"): CircuitState.OPEN, ("gone", "x"): CircuitState.OPEN}
    gauges = Gauges(db, DatabaseQueue(db, "c", 3600, 30), gate=gate)
    await gauges.refresh()
    assert (paused("shop", "billing"), circuit("shop", "crm")) == (1, 2)
    assert circuit("gone", "x") is None  # the gate's state of a destination that is gone

    await service.patch("shop", {"destinations": None})
    await gauges.refresh()
    assert (paused("shop", "billing"), paused("shop", "crm")) == (None, None)
    assert circuit("shop", "crm") is None


async def test_without_a_gate_every_breaker_reads_closed(db: Database) -> None:
    await ToolService(ToolStore(db)).create(shop())
    await Gauges(db, DatabaseQueue(db, "c", 3600, 30)).refresh()
    assert circuit("shop", "crm") == 0
    assert paused("shop", "crm") == 0
