"""The :class:`~.base.Gate` in Redis, beside the Redis Streams queue.

Every call is one Lua script (:mod:`.redis_scripts`) or one pipeline, so the checks of all
workers on all hosts are serialised by Redis and read one clock (the server's ``TIME``).

Layout (every key under the configured prefix, composed by
:class:`~webhook_worker.constants.RedisKeys`):

- ``gate:{tool}:{dest}`` (hash): the circuit breaker; ``...:slots`` (sorted set of slot ids by
  lease expiry): the deliveries in flight; ``...:sends`` (sorted set by time): the rate window.
- ``circuits`` (hash ``{tool}:{dest}`` -> state): the destinations whose circuit is not closed,
  so :meth:`RedisGate.circuits` reads one key instead of scanning the keyspace.
- ``order:{tool}:{dest}:{key}`` (hash: ``assigned``, written by the queue at enqueue, and
  ``settled``) and its ``:ahead`` sorted set: one ordering key. The gate never creates it: a key
  without state is free.

A Redis error leaves as :class:`~webhook_worker.errors.QueueUnavailableError`, as the queue's
do, so the worker treats a gate outage as the queue outage it is.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis.asyncio as aioredis

from webhook_worker.constants import RedisKeys
from webhook_worker.control.base import (
    ORDERING_IDLE_TTL,
    CircuitChange,
    CircuitState,
    Control,
    Outcome,
    Position,
    Verdict,
    WaitReason,
)
from webhook_worker.control.redis_scripts import ACQUIRE, RELEASE, SETTLE
from webhook_worker.queue.unavailable import redis_address, redis_unavailable

__all__ = ["RedisGate"]

_GO = Verdict(go=True)
_IDLE_TTL_MS = str(math.ceil(ORDERING_IDLE_TTL * 1000))


class RedisGate:
    """:class:`~.base.Gate` on Redis. ``client`` may return bytes or text."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys
        self._where = redis_address(client)
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._settle = client.register_script(SETTLE)

    async def acquire(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        position: Position | None,
        lease: float,
    ) -> Verdict:
        if (position is None or position.seq <= 0) and not control.gated:
            return _GO
        gate = self._keys.gate(tool_id, destination_id)
        keys = [gate, f"{gate}:slots", f"{gate}:sends", self._keys.circuits]
        seq = 0
        if position is not None and position.seq > 0:
            seq = position.seq
            order = self._keys.order(tool_id, position.destination_id, position.key)
            keys += [order, f"{order}:ahead"]
        rate, breaker = control.rate_limit, control.circuit_breaker
        args: list[str | int] = [
            uuid.uuid4().hex,
            repr(float(lease)),
            rate.requests if rate else 0,
            repr(float(rate.per)) if rate else "0",
            control.max_in_flight or 0,
            "1" if breaker else "0",
            repr(float(breaker.cooldown)) if breaker else "0",
            seq,
            _IDLE_TTL_MS,
            _field(tool_id, destination_id),
            "1" if control.gated else "0",
        ]
        with self._unavailable("check a destination's delivery control"):
            go, slot, wait, reason, probe = await self._acquire(keys=keys, args=args)
        if int(go):
            return Verdict(go=True, slot=_text(slot) or None, probe=bool(int(probe)))
        return Verdict(go=False, wait=float(_text(wait)), reason=WaitReason(_text(reason)))

    async def release(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        slot: str | None,
        outcome: Outcome,
    ) -> CircuitChange | None:
        gate = self._keys.gate(tool_id, destination_id)
        breaker = control.circuit_breaker
        if slot is None and breaker is None:
            return None
        args: list[str | int] = [
            slot or "",
            outcome.value,
            "1" if breaker else "0",
            breaker.failure_threshold if breaker else 0,
            _field(tool_id, destination_id),
            "1" if control.rate_limit else "0",
        ]
        with self._unavailable("release a delivery's slot"):
            change = await self._release(
                keys=[gate, f"{gate}:slots", self._keys.circuits, f"{gate}:sends"], args=args
            )
        if not change:
            return None
        before, after = change
        return CircuitChange(CircuitState(int(before)), CircuitState(int(after)))

    async def settle(self, positions: Sequence[tuple[str, Position]]) -> None:
        keys: list[str] = []
        args: list[str | int] = [_IDLE_TTL_MS]
        for tool_id, position in positions:
            if position.seq <= 0:
                continue
            order = self._keys.order(tool_id, position.destination_id, position.key)
            keys += [order, f"{order}:ahead"]
            args.append(position.seq)
        if not keys:
            return
        with self._unavailable("settle ordered deliveries"):
            await self._settle(keys=keys, args=args)

    async def waiting_for(self, keys: Sequence[tuple[str, str, str]]) -> list[int]:
        if not keys:
            return []
        with self._unavailable("read the ordering keys"):
            async with self._client.pipeline(transaction=False) as pipe:
                for tool_id, destination_id, key in keys:
                    pipe.hmget(
                        self._keys.order(tool_id, destination_id, key), "assigned", "settled"
                    )
                states: list[list[Any]] = await pipe.execute()
        # No field at all: no state, the key is free (0). Assigned but nothing settled: 1.
        return [
            0 if assigned is None and settled is None else int(settled or 0) + 1
            for assigned, settled in states
        ]

    async def circuits(self) -> Mapping[tuple[str, str], CircuitState]:
        with self._unavailable("read the circuit breakers"):
            index: dict[Any, Any] = await self._client.hgetall(self._keys.circuits)
        states: dict[tuple[str, str], CircuitState] = {}
        for field, state in index.items():
            tool_id, _, destination_id = _text(field).partition(":")
            states[(tool_id, destination_id)] = CircuitState(int(state))
        return states

    async def forget(self, tool_id: str, destination_id: str) -> None:
        gate = self._keys.gate(tool_id, destination_id)
        with self._unavailable("reset a destination's delivery control"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(gate, f"{gate}:slots", f"{gate}:sends")
                pipe.hdel(self._keys.circuits, _field(tool_id, destination_id))
                await pipe.execute()

    def _unavailable(self, action: str) -> AbstractContextManager[None]:
        return redis_unavailable(self._where, action)


def _field(tool_id: str, destination_id: str) -> str:
    """The destination's field in the circuits index (ids never hold ``:``)."""
    return f"{tool_id}:{destination_id}"


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
