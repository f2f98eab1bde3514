"""The Gate Protocol's circuit breaker, run against every implementation (the ``gates``
fixture): consecutive failures open it, it waits out its cooldown, one probe at a time goes,
and the probe's answer closes or reopens it."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.control.conftest import Gates
from tests.control.test_gate import LEASE, D, T, go, waits
from tests.support import eventually
from webhook_worker.control.base import (
    CircuitBreaker,
    CircuitChange,
    CircuitState,
    Control,
    Gate,
    Outcome,
    Verdict,
    WaitReason,
)

COOLDOWN = 0.3
CONTROL = Control(circuit_breaker=CircuitBreaker(failure_threshold=3, cooldown=COOLDOWN))
LONG = Control(circuit_breaker=CircuitBreaker(failure_threshold=3, cooldown=30))
"""For tests that must still be in the cooldown after several calls, however slow."""
CLOSED, HALF_OPEN, OPEN = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN


@pytest.fixture
def gate(gates: Gates) -> Gate:
    return gates.gate()


async def fail(gate: Gate, times: int, control: Control = CONTROL) -> list[CircuitChange | None]:
    """Let ``times`` deliveries go at once, then have them all fail at once."""
    held = [await go(gate, control) for _ in range(times)]
    return list(
        await asyncio.gather(*(gate.release(T, D, control, v.slot, Outcome.FAILURE) for v in held))
    )


async def opened(gate: Gate) -> Verdict:
    """Open the circuit; the first refusal's hint is the cooldown's remainder."""
    started = time.monotonic()
    await fail(gate, 3)
    verdict = await waits(gate, CONTROL, WaitReason.CIRCUIT_OPEN)
    assert COOLDOWN - (time.monotonic() - started) - 0.02 <= verdict.wait <= COOLDOWN
    return verdict


async def half_open(gate: Gate, lease: float = LEASE) -> Verdict:
    """Open the circuit, wait out the cooldown (the hint says how long: that is what is
    checked) and take the probe."""
    verdict = await opened(gate)
    await asyncio.sleep(verdict.wait + 0.02)
    probe = await gate.acquire(T, D, CONTROL, None, lease)
    assert probe.go and probe.probe and probe.slot, probe
    return probe


async def test_threshold_failures_open_it_and_exactly_one_release_says_so(gates: Gates) -> None:
    one, two = gates.gate(), gates.gate()
    held = [await go(one, CONTROL) for _ in range(6)]
    changes = await asyncio.gather(
        *(
            (one if i % 2 else two).release(T, D, CONTROL, v.slot, Outcome.FAILURE)
            for i, v in enumerate(held)
        )
    )
    assert [c for c in changes if c is not None] == [CircuitChange(CLOSED, OPEN)]
    assert await one.circuits() == {(T, D): OPEN}


async def test_failures_must_be_consecutive(gate: Gate) -> None:
    assert await fail(gate, 2) == [None, None]
    ok = await go(gate, CONTROL)
    assert await gate.release(T, D, CONTROL, ok.slot, Outcome.SUCCESS) is None
    assert await fail(gate, 2) == [None, None]
    assert await gate.circuits() == {}
    unsent = await go(gate, CONTROL)
    # UNSENT says nothing about the target: neither a failure nor a success.
    assert await gate.release(T, D, CONTROL, unsent.slot, Outcome.UNSENT) is None
    assert await fail(gate, 1) == [CircuitChange(CLOSED, OPEN)]


async def test_open_it_waits_for_the_cooldown_and_ignores_late_answers(gate: Gate) -> None:
    late = await go(gate, LONG)
    await fail(gate, 3, LONG)
    for _ in range(3):
        verdict = await waits(gate, LONG, WaitReason.CIRCUIT_OPEN)
        assert verdict.wait <= 30
    # A request let go before it opened answers now: it changes nothing.
    assert await gate.release(T, D, LONG, late.slot, Outcome.FAILURE) is None
    assert await gate.release(T, D, LONG, late.slot, Outcome.SUCCESS) is None
    assert await gate.circuits() == {(T, D): OPEN}


async def test_after_the_cooldown_exactly_one_probe_goes(gates: Gates) -> None:
    gate = gates.gate()
    await fail(gate, 3)
    verdict = await waits(gate, CONTROL, WaitReason.CIRCUIT_OPEN)
    await asyncio.sleep(verdict.wait + 0.02)
    others = [gates.gate() for _ in range(8)]
    verdicts = await asyncio.gather(*(g.acquire(T, D, CONTROL, None, LEASE) for g in others))
    probes = [v for v in verdicts if v.go]
    assert len(probes) == 1 and probes[0].probe, verdicts
    waiting = [v for v in verdicts if not v.go]
    assert {v.reason for v in waiting} == {WaitReason.PROBE}
    assert all(0 < v.wait <= 1.0 for v in waiting)
    assert await gate.circuits() == {(T, D): HALF_OPEN}


async def test_probe_success_closes_it(gate: Gate) -> None:
    probe = await half_open(gate)
    await waits(gate, CONTROL, WaitReason.PROBE)
    change = await gate.release(T, D, CONTROL, probe.slot, Outcome.SUCCESS)
    assert change == CircuitChange(HALF_OPEN, CLOSED)
    assert await gate.circuits() == {}
    again = await go(gate, CONTROL)
    assert not again.probe
    # Closed afresh: it takes the full threshold to open it again.
    await gate.release(T, D, CONTROL, again.slot, Outcome.FAILURE)
    assert sorted(await fail(gate, 2), key=repr) == [CircuitChange(CLOSED, OPEN), None]


async def test_probe_failure_reopens_it_for_another_cooldown(gate: Gate) -> None:
    probe = await half_open(gate)
    started = time.monotonic()
    change = await gate.release(T, D, CONTROL, probe.slot, Outcome.FAILURE)
    assert change == CircuitChange(HALF_OPEN, OPEN)
    verdict = await waits(gate, CONTROL, WaitReason.CIRCUIT_OPEN)
    assert COOLDOWN - (time.monotonic() - started) - 0.02 <= verdict.wait <= COOLDOWN
    assert await gate.circuits() == {(T, D): OPEN}


async def test_an_expired_probe_is_replaced(gate: Gate) -> None:
    """The probe's worker died: once its lease runs out another delivery probes."""
    lost = await half_open(gate, lease=1.0)
    verdict = await waits(gate, CONTROL, WaitReason.PROBE)
    assert verdict.wait <= 1.0

    async def new_probe() -> Verdict | None:
        verdict = await gate.acquire(T, D, CONTROL, None, LEASE)
        return verdict if verdict.go else None

    probe = await eventually(new_probe, within=5, what="the lost probe's lease to run out")
    assert probe.probe and probe.slot != lost.slot
    # The lost probe's late answer is no longer the probe's: it decides nothing.
    assert await gate.release(T, D, CONTROL, lost.slot, Outcome.SUCCESS) is None
    assert await gate.circuits() == {(T, D): HALF_OPEN}
    change = await gate.release(T, D, CONTROL, probe.slot, Outcome.SUCCESS)
    assert change == CircuitChange(HALF_OPEN, CLOSED)


async def test_an_unsent_probe_makes_room_for_the_next(gate: Gate) -> None:
    probe = await half_open(gate)
    assert await gate.release(T, D, CONTROL, probe.slot, Outcome.UNSENT) is None
    assert await gate.circuits() == {(T, D): HALF_OPEN}
    following = await go(gate, CONTROL)
    assert following.probe


async def test_circuits_lists_only_the_circuits_not_closed(gates: Gates) -> None:
    gate = gates.gate()
    control = Control(circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=COOLDOWN))
    for destination in ("open", "half", "closed", "failing"):
        held = await gate.acquire(T, destination, control, None, LEASE)
        if destination != "closed":
            outcome = Outcome.FAILURE
            await gate.release(T, destination, control, held.slot, outcome)
    await gate.forget(T, "failing")  # forgotten: closed again
    assert await gate.circuits() == {(T, "open"): OPEN, (T, "half"): OPEN}

    async def probing() -> Verdict | None:
        verdict = await gate.acquire(T, "half", control, None, LEASE)
        return verdict if verdict.go else None

    await eventually(probing, within=5, what="the cooldown to end")
    assert await gates.gate().circuits() == {(T, "open"): OPEN, (T, "half"): HALF_OPEN}
