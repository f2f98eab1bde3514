"""The Gate Protocol's promises on rate limits and deliveries in flight, written once and run
against every implementation (the ``gates`` fixture): Redis, SQLite and PostgreSQL. The
circuit breaker and ordering have their own modules beside this one.

Real time with small windows; what waits for something polls with a deadline.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.control.conftest import Gates
from tests.support import eventually
from webhook_worker.control.base import (
    CircuitBreaker,
    CircuitState,
    Control,
    Gate,
    Outcome,
    Position,
    Verdict,
    WaitReason,
)
from webhook_worker.errors import QueueUnavailableError
from webhook_worker.tools.model import RateLimit

T, D = "shop", "billing"
LEASE = 30.0


@pytest.fixture
def gate(gates: Gates) -> Gate:
    return gates.gate()


async def go(gate: Gate, control: Control, lease: float = LEASE) -> Verdict:
    verdict = await gate.acquire(T, D, control, None, lease)
    assert verdict.go, verdict
    return verdict


async def waits(gate: Gate, control: Control, reason: WaitReason) -> Verdict:
    verdict = await gate.acquire(T, D, control, None, LEASE)
    assert not verdict.go and verdict.reason is reason, verdict
    assert verdict.wait > 0
    return verdict


# Rate limit.


@pytest.mark.timeout(30)
async def test_rate_limit_never_lets_more_go_in_any_window(gates: Gates) -> None:
    requests, per = 4, 0.5
    control = Control(rate_limit=RateLimit(requests=requests, per=per))
    # (asked, answered): the gate decided somewhere between the two.
    let_go: list[tuple[float, float]] = []
    end = time.monotonic() + 1.5

    async def hammer(gate: Gate) -> None:
        while time.monotonic() < end:
            asked = time.monotonic()
            verdict = await gate.acquire(T, D, control, None, LEASE)
            if verdict.go:
                let_go.append((asked, time.monotonic()))
                # An instant request: it counts until ``per`` after this release.
                await gate.release(T, D, control, verdict.slot, Outcome.SUCCESS)
            else:
                assert verdict.reason is WaitReason.RATE_LIMIT
                assert 0 < verdict.wait <= per
                await asyncio.sleep(verdict.wait)

    await asyncio.gather(*(hammer(gates.gate()) for _ in range(8)))

    # Requests surely decided within less than ``per`` of each other: never more than allowed.
    for start, _ in let_go:
        inside = [1 for asked, answered in let_go if asked >= start and answered < start + per]
        assert len(inside) <= requests, sorted(let_go)
    # The hints let the hammering reach the limit: about ``requests`` per window, 4 windows.
    assert len(let_go) >= 2 * requests, sorted(let_go)


async def test_rate_limit_hint_says_when_the_oldest_request_leaves_the_window(
    gate: Gate,
) -> None:
    """A request counts until ``per`` after it ended; the hint says when the oldest leaves."""
    per = 0.5
    control = Control(rate_limit=RateLimit(requests=2, per=per))
    first = time.monotonic()
    for _ in range(2):
        slot = (await go(gate, control)).slot
        await gate.release(T, D, control, slot, Outcome.SUCCESS)
    verdict = await waits(gate, control, WaitReason.RATE_LIMIT)
    elapsed = time.monotonic() - first
    assert per - elapsed - 0.05 <= verdict.wait <= per
    # Nothing leaves the window before the hint; waiting for it is enough (give the clocks of
    # client and server a few ms).
    await asyncio.sleep(verdict.wait + 0.02)
    await go(gate, control)


async def test_a_wait_takes_nothing(gate: Gate) -> None:
    control = Control(rate_limit=RateLimit(requests=1, per=1.0), max_in_flight=2)
    slot = (await go(gate, control)).slot
    await gate.release(T, D, control, slot, Outcome.SUCCESS)
    # Had a refusal taken a slot, the next would wait for MAX_IN_FLIGHT instead.
    for _ in range(5):
        await waits(gate, control, WaitReason.RATE_LIMIT)
    # Nor were the refusals counted: the next goes as soon as the window moves.
    await eventually(lambda: _goes(gate, control), within=5, what="the rate window to move")


# Deliveries in flight.


async def test_max_in_flight_holds_among_concurrent_acquirers(gates: Gates) -> None:
    limit = 3
    control = Control(max_in_flight=limit)
    in_flight = most = done = 0

    async def deliver(gate: Gate) -> None:
        nonlocal in_flight, most, done
        while done < 18:
            verdict = await gate.acquire(T, D, control, None, LEASE)
            if not verdict.go:
                assert verdict.reason is WaitReason.MAX_IN_FLIGHT and 0 < verdict.wait <= 0.2
                await asyncio.sleep(verdict.wait)
                continue
            in_flight += 1
            most = max(most, in_flight)
            # The request: long enough for the others to fill the slots on any backend.
            await asyncio.sleep(0.1)
            in_flight -= 1
            done += 1
            await gate.release(T, D, control, verdict.slot, Outcome.SUCCESS)

    await asyncio.wait_for(asyncio.gather(*(deliver(gates.gate()) for _ in range(8))), 30)
    assert most == limit


async def test_a_slot_frees_on_release(gate: Gate) -> None:
    control = Control(max_in_flight=2)
    first = await go(gate, control)
    await go(gate, control)
    await waits(gate, control, WaitReason.MAX_IN_FLIGHT)
    assert await gate.release(T, D, control, first.slot, Outcome.FAILURE) is None
    await go(gate, control)
    await waits(gate, control, WaitReason.MAX_IN_FLIGHT)


async def test_a_slot_frees_when_its_lease_runs_out(gate: Gate) -> None:
    """A worker that died never releases: its slot comes back after the lease."""
    control = Control(max_in_flight=1)
    lease = 0.4
    started = time.monotonic()
    await go(gate, control, lease)
    verdict = await waits(gate, control, WaitReason.MAX_IN_FLIGHT)
    assert verdict.wait <= lease
    await eventually(lambda: _goes(gate, control), within=5, what="the lease to run out")
    assert time.monotonic() - started >= lease - 0.05


async def test_an_uncontrolled_destination_always_goes_and_holds_nothing(gate: Gate) -> None:
    for _ in range(5):
        assert await gate.acquire(T, D, Control(), None, LEASE) == Verdict(go=True)
    assert await gate.release(T, D, Control(), None, Outcome.FAILURE) is None


async def test_destinations_are_limited_separately(gate: Gate) -> None:
    control = Control(max_in_flight=1)
    await go(gate, control)
    assert (await gate.acquire(T, "other", control, None, LEASE)).go
    assert (await gate.acquire("tool2", D, control, None, LEASE)).go


# State shared by every process.


async def test_two_gates_share_the_state(gates: Gates) -> None:
    """Two gates with their own connections, as in two worker processes or hosts."""
    one, two = gates.gate(), gates.gate()
    control = Control(
        max_in_flight=1, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60)
    )
    held = await go(one, control)
    await waits(two, control, WaitReason.MAX_IN_FLIGHT)
    change = await one.release(T, D, control, held.slot, Outcome.FAILURE)
    assert change is not None
    assert await two.circuits() == {(T, D): CircuitState.OPEN}
    await waits(two, control, WaitReason.CIRCUIT_OPEN)

    rate = Control(rate_limit=RateLimit(requests=1, per=60))
    assert (await one.acquire(T, "rated", rate, None, LEASE)).go
    assert not (await two.acquire(T, "rated", rate, None, LEASE)).go

    await gates.assign(T, D, "k", 2)
    await one.settle([(T, Position(D, "k", 1))])
    assert await two.waiting_for([(T, D, "k")]) == [2]


# Forget.


async def test_forget_starts_a_destination_afresh_but_keeps_ordering(gates: Gates) -> None:
    gate = gates.gate()
    control = Control(
        rate_limit=RateLimit(requests=1, per=60),
        max_in_flight=1,
        circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60),
    )
    held = await go(gate, control)
    await gate.release(T, D, control, held.slot, Outcome.FAILURE)
    await go(gate, Control(max_in_flight=1))  # a slot held
    await gates.assign(T, D, "k", 3)
    await gate.settle([(T, Position(D, "k", 1))])

    await gate.forget(T, D)

    assert await gate.circuits() == {}
    await go(gate, control)
    assert await gate.waiting_for([(T, D, "k")]) == [2]


# Outages.


async def test_an_unreachable_backend_is_a_queue_outage(gates: Gates) -> None:
    gate = gates.unreachable()
    control = Control(max_in_flight=1)
    with pytest.raises(QueueUnavailableError) as caught:
        await gate.acquire(T, D, control, None, LEASE)
    assert ("REDIS_ADDR" if gates.name == "redis" else "DATABASE_URL") in str(caught.value)
    with pytest.raises(QueueUnavailableError):
        await gate.release(T, D, control, "slot", Outcome.SUCCESS)
    with pytest.raises(QueueUnavailableError):
        await gate.circuits()


async def _goes(gate: Gate, control: Control) -> bool:
    return (await gate.acquire(T, D, control, None, LEASE)).go


async def test_a_request_in_flight_counts_in_the_window_until_per_after_it_ends(
    gate: Gate,
) -> None:
    """It may reach the target at any moment until it ends: the window holds it until ``per``
    after its release, however long it took (a slow target never sees a burst)."""
    per = 0.3
    control = Control(rate_limit=RateLimit(requests=1, per=per))
    slot = (await go(gate, control)).slot
    # Longer than ``per`` in flight: still counted.
    await asyncio.sleep(per + 0.1)
    in_flight = await waits(gate, control, WaitReason.RATE_LIMIT)
    assert in_flight.wait <= per  # nothing to go by but the window itself
    await gate.release(T, D, control, slot, Outcome.SUCCESS)
    released = time.monotonic()
    # Counted from its end: not let go again before ``per`` has passed since.
    await waits(gate, control, WaitReason.RATE_LIMIT)
    await eventually(lambda: _goes(gate, control), within=5, what="the request to leave")
    assert time.monotonic() - released >= per - 0.02
