"""The Gate Protocol's ordering, run against every implementation (the ``gates`` fixture): per
key, position ``n`` goes only once every position before it has settled; a key without state
is free. The queue gives the positions at enqueue (here :meth:`Gates.assign` stands in)."""

from __future__ import annotations

import pytest

from tests.control.conftest import Gates
from tests.control.test_gate import LEASE, D, T
from webhook_worker.control.base import Control, Gate, Position, WaitReason

ORDERED = Control(ordering_key="customer")


@pytest.fixture
def gate(gates: Gates) -> Gate:
    return gates.gate()


async def goes(gate: Gate, seq: int, key: str = "k", control: Control = ORDERED) -> bool:
    verdict = await gate.acquire(T, D, control, Position(D, key, seq), LEASE)
    if verdict.go:
        assert verdict.slot is None or control.gated
        return True
    assert verdict.reason is WaitReason.ORDERING and 0 < verdict.wait <= 1, verdict
    return False


def settle(*seqs: int, key: str = "k") -> list[tuple[str, Position]]:
    return [(T, Position(D, key, seq)) for seq in seqs]


async def test_only_the_next_position_goes(gates: Gates, gate: Gate) -> None:
    await gates.assign(T, D, "k", 3)
    assert await goes(gate, 1)
    assert not await goes(gate, 2)
    assert not await goes(gate, 3)
    await gate.settle(settle(1))
    assert await goes(gate, 2)
    assert not await goes(gate, 3)
    # Settled positions (a redelivery after a crash) may go: their order was already kept.
    assert await goes(gate, 1)
    assert await gate.waiting_for([(T, D, "k")]) == [2]


async def test_positions_settled_early_are_absorbed_in_order(gates: Gates, gate: Gate) -> None:
    await gates.assign(T, D, "k", 6)
    await gate.settle(settle(3))
    await gate.settle(settle(5, 2))  # one batch, out of order
    assert await gate.waiting_for([(T, D, "k")]) == [1]
    assert await goes(gate, 1)
    assert not await goes(gate, 4)
    await gate.settle(settle(1))
    assert await gate.waiting_for([(T, D, "k")]) == [4]
    assert await goes(gate, 4)
    await gate.settle(settle(4))
    assert await gate.waiting_for([(T, D, "k")]) == [6]
    assert await goes(gate, 6)


async def test_settling_is_idempotent(gates: Gates, gate: Gate) -> None:
    await gates.assign(T, D, "k", 4)
    await gate.settle(settle(1, 1, 3, 3))
    await gate.settle(settle(1, 3))
    assert await gate.waiting_for([(T, D, "k")]) == [2]
    await gate.settle(settle(2, 2))
    assert await gate.waiting_for([(T, D, "k")]) == [4]


async def test_keys_never_hold_each_other_up(gates: Gates, gate: Gate) -> None:
    await gates.assign(T, D, "a", 2)
    await gates.assign(T, D, "b", 2)
    await gates.assign(T, "other", "a", 2)
    await gate.settle(settle(1, key="a"))
    assert await goes(gate, 2, key="a")
    assert not await goes(gate, 2, key="b")
    assert await gate.waiting_for([(T, D, "a"), (T, D, "b"), (T, "other", "a")]) == [2, 1, 1]


async def test_a_key_without_state_is_free(gates: Gates, gate: Gate) -> None:
    assert await goes(gate, 7, key="unknown")
    # Settling a forgotten key creates nothing: it stays free.
    await gate.settle(settle(3, key="unknown"))
    assert await gate.waiting_for([(T, D, "unknown")]) == [0]
    assert await goes(gate, 9, key="unknown")
    assert await gate.waiting_for([]) == []
    # Position 0: the queue has given none yet, nothing to keep in order.
    await gates.assign(T, D, "k", 2)
    assert await goes(gate, 0)


async def test_ordering_is_asked_first_and_a_held_delivery_takes_nothing(
    gates: Gates, gate: Gate
) -> None:
    control = Control(max_in_flight=1, ordering_key="customer")
    await gates.assign(T, D, "k", 2)
    for _ in range(3):
        assert not await goes(gate, 2, control=control)
    verdict = await gate.acquire(T, D, control, Position(D, "k", 1), LEASE)
    assert verdict.go and verdict.slot is not None
