"""The :class:`~.base.Gate` in the database, beside the database queue.

Every call is one transaction. A destination's checks are serialised by its row in
``destination_gates``: created on first use (``ON CONFLICT DO NOTHING``), then locked with
``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite every write transaction starts with ``BEGIN
IMMEDIATE`` (:mod:`webhook_worker.storage.database`), which already serialises them. The
destination's slots and rate window are counted, and pruned, under that lock. The clock is
read once the lock is held, so decisions are taken in the order of their times.

Lock order, so that no two transactions wait for each other: an ordering key's row, then the
destination's gate row, then its slots. Settling locks only ordering rows, in sorted order.

Times are this host's ``time.time()``: hosts that share a database should keep their clocks in
sync (NTP), as they already must for the queue's leases.

A database outage leaves as :class:`~webhook_worker.errors.QueueUnavailableError`, as the
database queue's does, so the worker treats a gate outage as the queue outage it is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.control.base import (
    CircuitChange,
    CircuitState,
    Control,
    Outcome,
    Position,
    Verdict,
    WaitReason,
)
from webhook_worker.queue.unavailable import database_unavailable
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import (
    destination_gates,
    destination_sends,
    destination_slots,
    ordering_keys,
    ordering_settled,
)

__all__ = ["DatabaseGate"]

ORDERING_WAIT = 0.25
"""Seconds an ordered delivery waits before asking again: a fallback, the worker watches
:meth:`DatabaseGate.waiting_for` to know when the key moves."""
IN_FLIGHT_WAIT = 0.1
"""Seconds before asking again when every slot is held: a slot frees when a delivery ends,
which cannot be predicted (or at the earliest lease expiry, when sooner)."""

_GO = Verdict(go=True)
_NO_DISK_WAIT = text("SET LOCAL synchronous_commit TO OFF")
_g, _s, _r = destination_gates, destination_slots, destination_sends
_k, _a = ordering_keys, ordering_settled


class DatabaseGate:
    """:class:`~.base.Gate` on PostgreSQL or SQLite (the tables of migration 0003)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._postgres = db.dialect == "postgresql"
        self._insert: Any = postgresql.insert if self._postgres else sqlite.insert

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction whose commit does not wait for the disk.

        The gate's rows are soft state: a database crash that loses its newest commits loses
        a few slots (as if their leases had run out), rate-window entries or failure counts,
        never an event. Waiting for the disk would double the cost of every delivery. On
        SQLite ``durable=False`` does the same when the queue shares the file.
        """
        async with self._db.begin(durable=False) as conn:
            if self._postgres:
                await conn.execute(_NO_DISK_WAIT)
            yield conn

    async def acquire(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        position: Position | None,
        lease: float,
    ) -> Verdict:
        ordered = position is not None and position.seq > 0
        if not ordered and not control.gated:
            return _GO
        with _unavailable("check a destination's delivery control"):
            async with self._transaction() as conn:
                if position is not None and ordered:
                    settled = await self._touch_key(conn, tool_id, position)
                    if settled is not None and position.seq > settled + 1:
                        return Verdict(go=False, wait=ORDERING_WAIT, reason=WaitReason.ORDERING)
                if not control.gated:
                    return _GO
                gate = await self._lock(conn, tool_id, destination_id)
                return await self._check(conn, tool_id, destination_id, control, gate, lease)

    async def release(
        self,
        tool_id: str,
        destination_id: str,
        control: Control,
        slot: str | None,
        outcome: Outcome,
    ) -> CircuitChange | None:
        breaker = control.circuit_breaker
        if slot is None and breaker is None:
            return None
        with _unavailable("release a delivery's slot"):
            async with self._transaction() as conn:
                if slot is not None and control.rate_limit is not None:
                    await conn.execute(
                        update(_r)
                        .where(*_sends_of(tool_id, destination_id), _r.c.slot == slot)
                        .values(at=time.time())
                    )
                if breaker is None:
                    await conn.execute(delete(_s).where(_s.c.slot == slot))
                    return None
                gate = await self._lock(conn, tool_id, destination_id)
                if slot is not None:
                    await conn.execute(delete(_s).where(_s.c.slot == slot))
                values, change = _after_release(
                    gate, slot, outcome, breaker.failure_threshold, time.time()
                )
                if values:
                    await conn.execute(
                        update(_g).where(*_gate_is(tool_id, destination_id)).values(**values)
                    )
                return change

    async def settle(self, positions: Sequence[tuple[str, Position]]) -> None:
        # Sorted, so two settling transactions lock shared keys in the same order.
        items = sorted(
            {(tool_id, p.destination_id, p.key, p.seq) for tool_id, p in positions if p.seq > 0}
        )
        if not items:
            return
        with _unavailable("settle ordered deliveries"):
            async with self._transaction() as conn:
                now = time.time()
                for tool_id, destination_id, key, seq in items:
                    await self._settle_one(conn, tool_id, destination_id, key, seq, now)

    async def waiting_for(self, keys: Sequence[tuple[str, str, str]]) -> list[int]:
        if not keys:
            return []
        answers: list[int] = []
        with _unavailable("read the ordering keys"):
            async with self._db.connect() as conn:
                for tool_id, destination_id, key in keys:
                    settled = await conn.scalar(
                        select(_k.c.settled).where(*_key_is(tool_id, destination_id, key))
                    )
                    answers.append(0 if settled is None else int(settled) + 1)
        return answers

    async def circuits(self) -> Mapping[tuple[str, str], CircuitState]:
        statement = select(_g.c.tool_id, _g.c.destination_id, _g.c.circuit).where(
            _g.c.circuit != int(CircuitState.CLOSED)
        )
        with _unavailable("read the circuit breakers"):
            async with self._db.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return {(row.tool_id, row.destination_id): CircuitState(row.circuit) for row in rows}

    async def forget(self, tool_id: str, destination_id: str) -> None:
        with _unavailable("reset a destination's delivery control"):
            async with self._transaction() as conn:
                await conn.execute(delete(_g).where(*_gate_is(tool_id, destination_id)))
                await conn.execute(delete(_s).where(*_slots_of(tool_id, destination_id)))
                await conn.execute(delete(_r).where(*_sends_of(tool_id, destination_id)))

    async def _touch_key(
        self, conn: AsyncConnection, tool_id: str, position: Position
    ) -> int | None:
        """The key's settled position (None: no state, the key is free), refreshing its idle
        time. The UPDATE also locks the row until the checks are done."""
        statement = (
            update(_k)
            .where(*_key_is(tool_id, position.destination_id, position.key))
            .values(used_at=time.time())
            .returning(_k.c.settled)
        )
        settled = (await conn.execute(statement)).scalar()
        return None if settled is None else int(settled)

    async def _lock(self, conn: AsyncConnection, tool_id: str, destination_id: str) -> Row[Any]:
        """The destination's gate row, created if missing, locked until the commit."""
        statement = select(_g).where(*_gate_is(tool_id, destination_id)).with_for_update()
        row = (await conn.execute(statement)).first()
        if row is None:
            await conn.execute(
                self._insert(_g)
                .values(tool_id=tool_id, destination_id=destination_id)
                .on_conflict_do_nothing()
            )
            row = (await conn.execute(statement)).one()
        return row

    async def _check(
        self,
        conn: AsyncConnection,
        tool_id: str,
        destination_id: str,
        control: Control,
        gate: Row[Any],
        lease: float,
    ) -> Verdict:
        """Circuit, deliveries in flight, rate, under the gate row's lock; on go, take all."""
        now = time.time()
        breaker = control.circuit_breaker
        probe = False
        if breaker is not None:
            if gate.circuit == CircuitState.OPEN:
                left = (gate.opened_at or 0.0) + breaker.cooldown - now
                if left > 0:
                    return _wait(left, WaitReason.CIRCUIT_OPEN)
                probe = True
            elif gate.circuit == CircuitState.HALF_OPEN:
                left = (gate.probe_expires_at or 0.0) - now if gate.probe_slot else 0.0
                if left > 0:
                    return _wait(min(left, 1.0), WaitReason.PROBE)
                probe = True
        holds = control.max_in_flight is not None or breaker is not None
        slot = uuid.uuid4().hex
        if holds:
            slots = _slots_of(tool_id, destination_id)
            await conn.execute(delete(_s).where(*slots, _s.c.expires_at <= now))
            if control.max_in_flight is not None:
                held, earliest = (
                    await conn.execute(
                        select(func.count(), func.min(_s.c.expires_at)).where(*slots)
                    )
                ).one()
                if held >= control.max_in_flight:
                    return _wait(min(IN_FLIGHT_WAIT, earliest - now), WaitReason.MAX_IN_FLIGHT)
        rate = control.rate_limit
        if rate is not None:
            sends = _sends_of(tool_id, destination_id)
            await conn.execute(delete(_r).where(*sends, _r.c.at <= now - rate.per))
            count, oldest = (
                await conn.execute(select(func.count(), func.min(_r.c.at)).where(*sends))
            ).one()
            if count >= rate.requests:
                # All still in flight: none leaves before ``per`` after it ends (not known yet).
                left = rate.per if oldest > now else oldest + rate.per - now
                return _wait(left, WaitReason.RATE_LIMIT)
            # Counted from now until `per` after it ends (``at`` is its lease expiry while in
            # flight, its end once released): it reaches the target in between, so no window
            # at the target holds more than ``requests``.
            await conn.execute(
                insert(_r).values(
                    tool_id=tool_id, destination_id=destination_id, at=now + lease, slot=slot
                )
            )
        if not holds:
            return _GO if rate is None else Verdict(go=True, slot=slot)
        await conn.execute(
            insert(_s).values(
                slot=slot, tool_id=tool_id, destination_id=destination_id, expires_at=now + lease
            )
        )
        if probe:
            await conn.execute(
                update(_g)
                .where(*_gate_is(tool_id, destination_id))
                .values(
                    circuit=int(CircuitState.HALF_OPEN),
                    probe_slot=slot,
                    probe_expires_at=now + lease,
                )
            )
        return Verdict(go=True, slot=slot, probe=probe)

    async def _settle_one(
        self,
        conn: AsyncConnection,
        tool_id: str,
        destination_id: str,
        key: str,
        seq: int,
        now: float,
    ) -> None:
        where = _key_is(tool_id, destination_id, key)
        settled = await conn.scalar(select(_k.c.settled).where(*where).with_for_update())
        if settled is None:
            return  # no state: the key was forgotten and starts free
        touched: dict[str, Any] = {"used_at": now}
        ahead = [_a.c.tool_id == tool_id, _a.c.destination_id == destination_id, _a.c.key == key]
        if seq == settled + 1:
            reached = seq
            later = await conn.scalars(
                select(_a.c.seq).where(*ahead, _a.c.seq > seq).order_by(_a.c.seq)
            )
            for early in later:
                if early != reached + 1:
                    break
                reached = early
            if reached > seq:
                await conn.execute(delete(_a).where(*ahead, _a.c.seq <= reached))
            touched["settled"] = reached
        elif seq > settled + 1:
            await conn.execute(
                self._insert(_a)
                .values(tool_id=tool_id, destination_id=destination_id, key=key, seq=seq)
                .on_conflict_do_nothing()
            )
        await conn.execute(update(_k).where(*where).values(**touched))


def _after_release(
    gate: Row[Any], slot: str | None, outcome: Outcome, threshold: int, now: float
) -> tuple[dict[str, Any], CircuitChange | None]:
    """The gate row's new values and the circuit's change, for one delivery's outcome."""
    state = CircuitState(gate.circuit)
    is_probe = slot is not None and gate.probe_slot == slot
    closed, opened = CircuitState.CLOSED, CircuitState.OPEN
    reopen = {
        "circuit": int(opened),
        "opened_at": now,
        "failures": 0,
        "probe_slot": None,
        "probe_expires_at": None,
    }
    if outcome is Outcome.UNSENT:
        # Says nothing about the target; a probe that never went leaves room for the next one.
        return ({"probe_slot": None, "probe_expires_at": None} if is_probe else {}), None
    if outcome is Outcome.SUCCESS:
        if state is CircuitState.HALF_OPEN and is_probe:
            values = {**reopen, "circuit": int(closed), "opened_at": None}
            return values, CircuitChange(state, closed)
        return ({"failures": 0} if gate.failures else {}), None
    if state is CircuitState.HALF_OPEN:
        return (reopen, CircuitChange(state, opened)) if is_probe else ({}, None)
    if state is CircuitState.OPEN:
        return {}, None  # a late answer to a request let go before the circuit opened
    if gate.failures + 1 >= threshold:
        return reopen, CircuitChange(state, opened)
    return {"failures": gate.failures + 1}, None


def _wait(seconds: float, reason: WaitReason) -> Verdict:
    return Verdict(go=False, wait=max(seconds, 0.001), reason=reason)


def _gate_is(tool_id: str, destination_id: str) -> list[Any]:
    return [_g.c.tool_id == tool_id, _g.c.destination_id == destination_id]


def _slots_of(tool_id: str, destination_id: str) -> list[Any]:
    return [_s.c.tool_id == tool_id, _s.c.destination_id == destination_id]


def _sends_of(tool_id: str, destination_id: str) -> list[Any]:
    return [_r.c.tool_id == tool_id, _r.c.destination_id == destination_id]


def _key_is(tool_id: str, destination_id: str, key: str) -> list[Any]:
    return [_k.c.tool_id == tool_id, _k.c.destination_id == destination_id, _k.c.key == key]


def _unavailable(action: str) -> AbstractContextManager[None]:
    return database_unavailable("delivery control", action)
