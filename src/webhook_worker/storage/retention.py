"""The retention sweep: events older than their tool's retention leave the database.

Each tool keeps its events for its ``retention`` (EVENTS_RETENTION when unset; 0 forever).
An event still waiting (status ``pending`` or ``retrying``, which a paused delivery makes it, or
with a dead letter ``pending`` or ``retrying``) is kept, whatever its age, until it settles.

- One process sweeps at a time across the deployment: it holds a lease, a row of the
  ``metadata`` table (:data:`~webhook_worker.constants.METADATA_RETENTION_LEASE`, the epoch
  milliseconds until which it is held), which works the same on both databases and needs no
  Redis. The worker's loop releases it to the end of the interval, so the deployment sweeps
  once per RETENTION_INTERVAL whichever process does it.
- PostgreSQL: the event tables are partitioned by time (storage/partitions.py). The sweep creates
  partitions ahead, and drops a partition once every tool's retention has passed its whole
  range, unless one of its events waits: then its settled rows are deleted and the partition is
  dropped by a later sweep. Tools with a shorter retention than the longest lose their events
  by chunked deletes. The longest retention is left to the drops: its events leave up to one
  partition width (a tenth of it, at most a day) after their time. Rows outside the regular
  partitions (the DEFAULT one, the one the migration made of older data) are deleted by rows.
- SQLite: chunked deletes for every tool, small enough that ingest never waits long behind
  one; then the freed pages go back to the file system (``auto_vacuum=INCREMENTAL``, which new
  files get, storage/database.py) or, in an older file, are reused, so the file stops growing.

Every delete goes through :func:`~webhook_worker.storage.erase.delete_events`, one transaction
per chunk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    ColumnElement,
    Table,
    TableClause,
    and_,
    column,
    delete,
    exists,
    func,
    select,
    table,
    text,
    true,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker import constants as c
from webhook_worker.errors import DatabaseUnavailableError
from webhook_worker.observability import metrics
from webhook_worker.storage import erase, footprint, partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.lease import Lease
from webhook_worker.storage.pace import Pace
from webhook_worker.storage.partitions import Partition
from webhook_worker.storage.schema import dead_letters, event_keys, events
from webhook_worker.storage.vacuum import Vacuum
from webhook_worker.tools.model import Tool
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

log = logging.getLogger(__name__)

SQLITE_CHUNK: Final = 100
"""Events deleted per transaction on SQLite, where one transaction at a time holds the file:
small, so that ingest's next write waits a few milliseconds behind one (storage/pace.py)."""
LEASE: Final = 60.0
"""How long the lease is held before it must be renewed (a process that dies while sweeping
holds up the next sweep at most this long)."""
ID_SLACK: Final = 3_600.0
"""An event's id is made at ingest, the moment of its ``received_at``; ids up to this much newer
than the cutoff are still looked at (a clock step between the two), the rest are pruned."""

WAITING_EVENTS: Final = (EventStatus.PENDING, EventStatus.RETRYING)
WAITING_LETTERS: Final = (DeadLetterStatus.PENDING, DeadLetterStatus.RETRYING)
SETTLED_LETTERS: Final = (DeadLetterStatus.RESOLVED, DeadLetterStatus.DISCARDED)


@dataclass(frozen=True, slots=True)
class Group:
    """Tools whose events share a retention. ``others``: every tool not named in another group
    (tools without their own retention, and events of tools that no longer exist)."""

    retention: float
    tool_ids: tuple[str, ...] = ()
    others: bool = False
    excluded: tuple[str, ...] = ()
    """For ``others``: the tools of the other groups."""

    def matches(self, tool_id: ColumnElement[str]) -> ColumnElement[bool]:
        """The condition on an event's ``tool_id`` that selects this group's events."""
        if self.others:
            return tool_id.not_in(self.excluded) if self.excluded else true()
        return tool_id.in_(self.tool_ids)


@dataclass(frozen=True, slots=True)
class Policy:
    """Each tool's retention, from EVENTS_RETENTION and the tools' own ``retention``."""

    default: float
    by_tool: dict[str, float]
    """Tools whose retention differs from ``default``."""

    @classmethod
    def of(cls, tools: Iterable[Tool], events_retention: float) -> Policy:
        own = {
            tool.id: float(tool.retention)
            for tool in tools
            if tool.retention is not None and tool.retention != events_retention
        }
        return cls(events_retention, own)

    @property
    def longest(self) -> float:
        """The longest retention, 0 when some tool keeps its events forever."""
        retentions = [self.default, *self.by_tool.values()]
        return 0.0 if any(r <= 0 for r in retentions) else max(retentions)

    def groups(self) -> list[Group]:
        """One group per retention that expires (forever groups are left out), the others'
        group first."""
        named: dict[float, list[str]] = {}
        for tool_id, retention in sorted(self.by_tool.items()):
            named.setdefault(retention, []).append(tool_id)
        found = [Group(self.default, others=True, excluded=tuple(sorted(self.by_tool)))]
        found += [Group(retention, tuple(ids)) for retention, ids in named.items()]
        return [group for group in found if group.retention > 0]


@dataclass(slots=True)
class SweepResult:
    """What one sweep did. ``swept`` is False when another process held the lease."""

    swept: bool = False
    events: int = 0
    """Events deleted, row by row or with their partitions (a dropped partition counts the
    planner's estimate of its rows once it has been analyzed)."""
    bytes: int = 0
    """Bytes deleted: the stored size of rows deleted one by one, plus the size on disk of
    dropped partitions."""
    partitions_created: int = 0
    partitions_dropped: int = 0
    partitions_kept: list[str] = field(default_factory=list)
    """Expired partitions kept because an event in them still waits, or their lock was busy."""
    duration: float = 0.0


class Retention:
    """The sweep over one database (see the module docstring)."""

    def __init__(self, db: Database, events_retention: float, interval: float) -> None:
        self._db = db
        self._events_retention = events_retention
        self._interval = interval
        self._lease = Lease(db, c.METADATA_RETENTION_LEASE, LEASE)
        self._vacuum = Vacuum(db)
        self._pace = Pace(0.0)
        """The running sweep's pacing (storage/pace.py): resting in the first half of the
        interval. Partitions created as a worker starts are not paced."""

    @property
    def interval(self) -> float:
        """RETENTION_INTERVAL: how often the worker's loop sweeps."""
        return self._interval

    # -- the sweep ---------------------------------------------------------------------------

    async def prepare(self, tools: Iterable[Tool], now: float | None = None) -> int:
        """Create the partitions ahead (PostgreSQL), as a worker starts: so that events land in
        their own partition from the first batch. Returns how many were created."""
        now = time.time() if now is None else now
        async with self._db.connect() as conn:
            if not await partitions.is_partitioned(conn):
                return 0
        return await self._ensure(Policy.of(tools, self._events_retention), now)

    async def sweep(
        self, tools: Iterable[Tool], now: float | None = None, *, rest: float = 0.0
    ) -> SweepResult:
        """Delete what has expired at ``now`` (epoch seconds; default: the clock), if no other
        process is sweeping. ``rest``: seconds from the start during which no process sweeps
        again (the worker's loop passes RETENTION_INTERVAL). Updates the metrics."""
        started = time.monotonic()
        self._pace = Pace(self._interval / 2)
        wall = time.time()
        now = wall if now is None else now
        if not await self._lease.acquire():
            return SweepResult()
        result = SweepResult(swept=True)
        policy = Policy.of(tools, self._events_retention)
        done = False
        try:
            async with self._db.connect() as conn:
                partitioned = await partitions.is_partitioned(conn)
            if partitioned:
                await self._sweep_partitioned(policy, now, result)
            else:
                for group in policy.groups():
                    await self._delete_rows(group, now - group.retention, result, None)
                await self._vacuum.reclaim(self._lease.keep, self._pace)
            done = True
        finally:
            try:
                await self._lease.release(wall + rest if done else 0.0)
            except DatabaseUnavailableError as exc:  # it runs out by itself
                log.warning("could not release the retention lease: %s", exc)
        result.duration = time.monotonic() - started
        _record(result, policy.longest, wall)
        return result

    async def _sweep_partitioned(self, policy: Policy, now: float, result: SweepResult) -> None:
        result.partitions_created = await self._ensure(policy, now)
        longest = policy.longest
        async with self._db.connect() as conn:
            found = await partitions.list_partitions(conn)
        expired = [
            p
            for p in found
            if longest > 0 and not p.default and p.high is not None and p.high <= now - longest
        ]
        for number, partition in enumerate(expired):
            if not await self._retire(partition, result):
                # Its lock was busy: the next ones' would be too. The next sweep tries again.
                result.partitions_kept += [p.name for p in expired[number + 1 :]]
                break
        # Outside the regular partitions (the DEFAULT one, the migration's legacy one), the
        # longest retention too goes row by row: they are not dropped in its time.
        irregular = [p for p in found if (p.default or p.low is None) and p not in expired]
        for group in policy.groups():
            cutoff = now - group.retention
            if longest > 0 and group.retention >= longest:
                for partition in irregular:
                    await self._delete_rows(group, cutoff, result, partition)
            else:
                await self._delete_rows(group, cutoff, result, None)
        if result.events:
            await self._vacuum_row_tables()

    async def _vacuum_row_tables(self) -> None:
        """VACUUM the tables that lose rows one by one rather than with partitions (the
        delivery id keys, dead letters), so that their space is reused for new rows even where
        autovacuum is off or slow to come round. It takes SHARE UPDATE EXCLUSIVE locks, which
        writes go on beside; SKIP_LOCKED passes over a table another VACUUM holds. The events
        row-deleted inside partitions are left to autovacuum: they are a short retention's,
        and their partition is dropped in its turn."""
        async with self._pace(), self._db.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(
                text(f"VACUUM (SKIP_LOCKED) {c.TABLE_EVENT_KEYS}, {c.TABLE_DEAD_LETTERS}")
            )

    async def _ensure(self, policy: Policy, now: float) -> int:
        """Create the partitions ahead, one transaction (paced) each; returns how many."""
        width = partitions.width_for(policy.longest, self._interval)
        ahead = max(2 * self._interval, 3 * width, 86_400 if width >= 86_400 else 0)
        async with self._db.connect() as conn:
            wanted = partitions.missing(await partitions.list_partitions(conn), now, width, ahead)
        created = 0
        for partition in wanted:
            try:
                async with self._pace(), self._db.begin() as conn:
                    await partitions.create(conn, partition)
            except Exception as exc:
                if not _lock_busy(exc):
                    raise
                log.warning("creating partitions waited too long for a lock; next sweep: %s", exc)
                break
            created += 1
        if created:
            log.info(
                "created %d partitions of %ds up to %s",
                created,
                width,
                datetime.fromtimestamp(wanted[created - 1].high or now, UTC).isoformat(),
            )
        return created

    async def _retire(self, partition: Partition, result: SweepResult) -> bool:
        """Drop an expired partition, or, when something in it waits, delete what has settled
        (it is dropped by a later sweep, once nothing waits). False when its lock was busy."""
        low, high = partitions.id_range(partition)
        letters = _id_range(dead_letters.c.event_id, low, high)
        keys = _id_range(event_keys.c.event_id, low, high)
        async with self._db.connect() as conn:
            waiting = await _waits(conn, partition, letters)
        if not waiting:
            # What lives outside the partition first, in bounded chunks: the settled dead
            # letters and the delivery id keys of its events.
            settled = and_(letters, dead_letters.c.status.in_(SETTLED_LETTERS))
            await self._delete_chunked(dead_letters, dead_letters.c.id, settled)
            await self._delete_chunked(event_keys, event_keys.c.event_id, keys)
            try:
                waiting, size, rows = await self._drop(partition, letters, keys)
            except Exception as exc:
                if not _lock_busy(exc):
                    raise
                log.warning(
                    "dropping partition %s waited too long for a lock; the next sweep tries "
                    "again: %s",
                    partition.name,
                    exc,
                )
                result.partitions_kept.append(partition.name)
                return False
            if not waiting:
                result.partitions_dropped += 1
                result.events += rows
                result.bytes += size
                log.info("dropped partition %s (%d bytes)", partition.name, size)
                return True
        result.partitions_kept.append(partition.name)
        log.info(
            "partition %s has expired, but some of its events still wait: deleting the others",
            partition.name,
        )
        await self._delete_rows(None, math.inf, result, partition)
        return True

    async def _drop(
        self, partition: Partition, letters: ColumnElement[bool], keys: ColumnElement[bool]
    ) -> tuple[bool, int, int]:
        """Drop ``partition`` unless something in it waits: ``(waiting, bytes, rows)``."""
        async with self._pace(), self._db.begin() as conn:
            # Locked first, so that nothing can start waiting between the check and the drop.
            await conn.execute(text(f"SET LOCAL lock_timeout = '{partitions.LOCK_TIMEOUT}'"))
            parents = ", ".join(name for name, _ in partitions.PARTITIONED)
            await conn.execute(text(f"LOCK TABLE {parents} IN ACCESS EXCLUSIVE MODE"))
            if await _waits(conn, partition, letters):
                return True, 0, 0
            size = await partitions.sizes(conn, [partition])
            rows = await _row_estimate(conn, partition)
            # Whatever came since the chunked deletes (a message redelivered meanwhile).
            await conn.execute(delete(event_keys).where(keys))
            await conn.execute(delete(dead_letters).where(letters))
            await partitions.drop(conn, partition)
        return False, size, rows

    async def _delete_chunked(
        self, table: Table, key: ColumnElement[str], where: ColumnElement[bool]
    ) -> None:
        while True:
            await self._lease.keep()
            async with self._pace(), self._db.begin(durable=False) as conn:
                chosen = select(key).where(where).limit(erase.CHUNK).scalar_subquery()
                deleted = await conn.execute(delete(table).where(key.in_(chosen)))
            if deleted.rowcount < erase.CHUNK:
                return

    async def _delete_rows(
        self,
        group: Group | None,
        cutoff: float,
        result: SweepResult,
        partition: Partition | None,
    ) -> None:
        """Delete, in chunks, the settled events of ``group`` (None: every tool) received
        before ``cutoff``, from ``partition`` alone when given."""
        chunk = SQLITE_CHUNK if self._db.is_sqlite else erase.CHUNK
        source = events if partition is None else _partition_table(partition)
        e = source.c
        conditions: list[ColumnElement[bool]] = [
            e.status.not_in(WAITING_EVENTS),
            ~exists().where(
                dead_letters.c.event_id == e.id, dead_letters.c.status.in_(WAITING_LETTERS)
            ),
        ]
        if group is not None:
            conditions.append(group.matches(e.tool_id))
        if math.isfinite(cutoff):
            conditions.append(e.received_at < datetime.fromtimestamp(cutoff, UTC))
            if not self._db.is_sqlite:
                conditions.append(e.id < partitions.id_bound(cutoff + ID_SLACK))
        query = select(e.id).where(*conditions).limit(chunk)
        while True:
            await self._lease.keep()
            async with self._pace(), self._db.begin(durable=False) as conn:
                ids = list((await conn.execute(query)).scalars())
                deleted = await erase.delete_events(conn, ids)
            result.events += deleted.events
            result.bytes += deleted.bytes
            if len(ids) < chunk:
                return

    # -- what the metrics show ---------------------------------------------------------------

    async def observe(self, now: float | None = None) -> tuple[float, int]:
        """Set the age of the oldest stored event and the database's size (storage/footprint.py);
        returns them. Cheap: every worker runs it each interval, whether it swept or not."""
        age = await footprint.oldest_event_age(self._db, now)
        size = await footprint.database_size(self._db)
        metrics.OLDEST_EVENT_AGE.set(age)
        metrics.DATABASE_SIZE.set(size)
        return age, size


def _id_range(
    event_id: ColumnElement[str], low: str | None, high: str | None
) -> ColumnElement[bool]:
    """``event_id`` within ``[low, high)`` (None: unbounded). Event ids compare the same under
    any collation (lower-case hex digits, dashes in the same places), so the default-collated
    ``dead_letters.event_id`` is compared by its index too."""
    bounds = [event_id >= low] if low else []
    if high:
        bounds.append(event_id < high)
    return and_(true(), *bounds)


def _partition_table(partition: Partition) -> TableClause:
    """A partition of ``events`` as a table of its own (its columns are the parent's)."""
    return table(partition.name, *(column(col.name, col.type) for col in events.c))


async def _waits(conn: AsyncConnection, partition: Partition, letters: ColumnElement[bool]) -> bool:
    """Whether an event of ``partition`` still waits (itself, or its dead letter)."""
    table = _partition_table(partition)
    event = await conn.scalar(select(table.c.id).where(table.c.status.in_(WAITING_EVENTS)).limit(1))
    if event is not None:
        return True
    letter = await conn.scalar(
        select(dead_letters.c.id)
        .where(letters, dead_letters.c.status.in_(WAITING_LETTERS))
        .limit(1)
    )
    return letter is not None


async def _row_estimate(conn: AsyncConnection, partition: Partition) -> int:
    """The rows of the partition: the planner's estimate once it has been analyzed (counting a
    large partition would read it all just before dropping it), else counted."""
    estimate = await conn.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": partition.name},
    )
    if estimate is not None and estimate >= 0:
        return int(estimate)
    table = _partition_table(partition)
    return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


def _lock_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL giving up on a lock (lock_timeout) or a deadlock."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        for candidate in (seen, orig, getattr(orig, "__cause__", None)):
            if getattr(candidate, "sqlstate", None) in ("55P03", "40P01"):
                return True
        if isinstance(seen, DBAPIError) and "lock timeout" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _record(result: SweepResult, longest: float, finished: float) -> None:
    metrics.RETENTION_DELETED_EVENTS.inc(result.events)
    metrics.RETENTION_DELETED_BYTES.inc(result.bytes)
    metrics.RETENTION_PARTITIONS_DROPPED.inc(result.partitions_dropped)
    metrics.RETENTION_SWEEP_DURATION.observe(result.duration)
    metrics.RETENTION_LAST_SWEEP.set(finished)
    metrics.RETENTION_LONGEST.set(longest)
