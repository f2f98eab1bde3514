"""The production queue: one Redis stream read through one consumer group.

Layout (every key under the configured prefix):

- ``{prefix}:events``: the stream; each entry is one :class:`Message`. Entries are deleted when
  acknowledged, so the stream holds exactly the waiting and the pending messages and needs no
  MAXLEN (a length cap would silently drop messages a worker still owes).
- ``{prefix}:delivery:{tool_id}:{delivery_id}``: the first event id for that delivery, for the
  idempotency TTL. Written in the same Lua script as the stream entry, so of two concurrent
  requests with the same delivery id exactly one is enqueued.
- ``{prefix}:replay:{tool_id}:{replay_key}``: the same, for a message's replay key (a hash of
  a body signed without an id or timestamp), set by the same script.
- ``{prefix}:order:{tool_id}:{destination_id}:{key}``: per ordering key, ``assigned``, the
  last position given. The enqueue script gives a new message the next one of each of its
  keys and writes it into the entry, so positions follow the stream's order of acceptance
  and a duplicate uses none. Forgotten after ORDERING_IDLE_TTL without use.
- ``{prefix}:events:malformed``: entries that could not be decoded, set aside for a human.
- ``{prefix}:retry`` (sorted set, score = due time) and ``{prefix}:retry:{event_id}`` (hash of
  the entry's fields): messages waiting for a retry. A worker moves due ones back into the
  stream with one Lua script, so a retry survives any worker restart and happens exactly once.

Needs Redis 7.0 or newer (``SET ... NX GET`` and the deleted ids of ``XAUTOCLAIM``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from webhook_worker.config import Settings
from webhook_worker.constants import (
    FIELD_MALFORMED_ERROR,
    FIELD_MALFORMED_SOURCE_ID,
    FIELD_ORDERING,
    REDIS_GROUP,
    RedisKeys,
    retry_member,
)
from webhook_worker.control.base import ORDERING_IDLE_TTL
from webhook_worker.queue.base import Delivery, EnqueueResult, Message
from webhook_worker.queue.positions import template
from webhook_worker.queue.redis_codec import decode, encode, pairs
from webhook_worker.queue.redis_connection import connect
from webhook_worker.queue.redis_scripts import ENQUEUE, PROMOTE_DUE, RENEW
from webhook_worker.queue.unavailable import redis_address, redis_unavailable

logger = logging.getLogger(__name__)

_ORDERING_TTL_MS = round(ORDERING_IDLE_TTL * 1000)

_FORGET_CHUNK = 1000
"""Keys per UNLINK when forgetting delivery ids: one command never blocks Redis for long."""

MALFORMED_MAXLEN = 10_000
"""Approximate cap of the malformed stream: nothing there is pending, and a producer bug must not
fill Redis with copies."""


class RedisStreamsQueue:
    """:class:`~webhook_worker.queue.base.Queue` on a Redis stream and consumer group.

    ``client`` must return bytes (``decode_responses=False``, RESP2 replies, as built by
    :func:`~webhook_worker.queue.redis_connection.connect`). Call :meth:`setup` once before use,
    or build the queue with :meth:`open`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        consumer_name: str,
        idempotency_ttl: float,
        reclaim_idle: float,
        *,
        owns_client: bool = False,
    ) -> None:
        kwargs: Mapping[str, Any] = client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError("RedisStreamsQueue needs a client with decode_responses=False")
        self._client = client
        self._owns_client = owns_client
        self._consumer = consumer_name
        self._ttl = max(1, math.ceil(idempotency_ttl))
        self._reclaim_idle_ms = max(0, round(reclaim_idle * 1000))
        self._keys = RedisKeys(key_prefix)
        self._stream = self._keys.stream
        self._malformed = self._keys.malformed
        self._retry = self._keys.retry
        self._where = redis_address(client)
        socket_timeout = kwargs.get("socket_timeout")
        # A BLOCK as long as the socket timeout would end in a timeout error on an idle stream.
        self._max_block = (
            None if socket_timeout is None else max(socket_timeout - 1.0, socket_timeout / 2)
        )
        self._enqueue_script = client.register_script(ENQUEUE)
        self._promote_script = client.register_script(PROMOTE_DUE)
        self._renew_script = client.register_script(RENEW)

    @classmethod
    async def open(cls, settings: Settings) -> RedisStreamsQueue:
        """Connect to ``settings.redis_addr``, create the consumer group, own the client."""
        queue = cls(
            connect(settings),
            settings.redis_key_prefix,
            settings.worker_consumer_name,
            settings.worker_idempotency_ttl,
            settings.worker_reclaim_idle,
            owns_client=True,
        )
        try:
            await queue.setup()
        except BaseException:
            await queue.close()
            raise
        return queue

    @property
    def keys(self) -> RedisKeys:
        """The Redis keys this queue uses."""
        return self._keys

    @property
    def stream_key(self) -> str:
        """The Redis key of the events stream."""
        return self._stream

    async def setup(self) -> None:
        """Create the stream and the consumer group if they do not exist yet (idempotent)."""
        with self._unavailable("create the consumer group"):
            try:
                await self._client.xgroup_create(self._stream, REDIS_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def enqueue(self, messages: Sequence[Message]) -> list[EnqueueResult]:
        """Add ``messages`` in order, in one round trip, skipping known delivery ids and replay
        keys; each message added gets the next seq of each of its ordering positions (a
        duplicate gets none)."""
        if not messages:
            return []
        keys = [self._stream]
        args: list[bytes | str | int] = [self._ttl, _ORDERING_TTL_MS, FIELD_ORDERING]
        dedupe = self._keys.dedupe
        for message in messages:
            keys.append(dedupe(message.tool_id, message.delivery_id))
            fields = encode(message, ordering=False)
            dedupe_keys = 1
            if message.replay_key is not None:
                keys.append(self._keys.replay(message.tool_id, message.replay_key))
                dedupe_keys = 2
            ordering = message.ordering
            args += [message.event_id, dedupe_keys, len(ordering), len(fields), *fields]
            if ordering:
                # The script gives the seqs and writes the field from these pieces.
                order = self._keys.order
                keys += [order(message.tool_id, p.destination_id, p.key) for p in ordering]
                args += template(ordering)
        with self._unavailable("enqueue"):
            reply = await self._enqueue_script(keys=keys, args=args)
        return [
            EnqueueResult(_text(reply[i + 1]), duplicate=reply[i] == 1)
            for i in range(0, len(reply), 2)
        ]

    async def requeue(self, messages: Sequence[Message]) -> None:
        """Add messages of events already accepted (replays, dead-letter retries): no
        de-duplication, since their delivery ids are known on purpose."""
        if not messages:
            return
        with self._unavailable("requeue"):
            async with self._client.pipeline(transaction=True) as pipe:
                for message in messages:
                    pipe.xadd(self._stream, dict(pairs(encode(message))))
                await pipe.execute()

    async def receive(self, count: int, block: float) -> list[Delivery]:
        """Up to ``count`` messages never handed out before, waiting up to ``block`` seconds."""
        if self._max_block is not None:
            block = min(block, self._max_block)
        block_ms = round(block * 1000)
        with self._unavailable("receive"):
            try:
                reply = await self._read(count, block_ms)
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                # The stream or group vanished (Redis restarted without persistence, or someone
                # deleted the key): recreate it rather than failing every poll from now on.
                logger.warning("consumer group missing on %s, recreating it", self._stream)
                await self.setup()
                reply = await self._read(count, block_ms)
        entries = [entry for _stream, stream_entries in reply or () for entry in stream_entries]
        return await self._deliveries(entries, {}, first_time=True)

    async def reclaim(self, count: int) -> list[Delivery]:
        """Take over up to ``count`` messages left unacknowledged longer than the reclaim idle
        time by any consumer. ``deliveries`` says how often each was handed out, this time
        included, so the caller can dead-letter a message that keeps killing workers."""
        claimed: list[tuple[bytes, dict[bytes, bytes] | None]] = []
        deleted: list[bytes] = []
        cursor: bytes | str = "0-0"
        with self._unavailable("reclaim"):
            while len(claimed) < count:
                try:
                    reply = await self._client.xautoclaim(
                        self._stream,
                        REDIS_GROUP,
                        self._consumer,
                        self._reclaim_idle_ms,
                        cursor,
                        count=count - len(claimed),
                    )
                except ResponseError as exc:
                    if not _is_nogroup(exc):
                        raise
                    await self.setup()
                    return []
                cursor = reply[0]
                claimed += reply[1]
                if len(reply) > 2:
                    deleted += reply[2]
                if _text(cursor) == "0-0":
                    break
            counts = await self._delivery_counts([entry_id for entry_id, _ in claimed])
            if deleted:
                # Redis 7 already dropped these from the pending list; the XACK makes sure.
                await self._client.xack(self._stream, REDIS_GROUP, *deleted)
        return await self._deliveries(claimed, counts, first_time=False)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge and delete the entries, atomically and in one round trip."""
        if not deliveries:
            return
        ids = [delivery.receipt for delivery in deliveries]
        with self._unavailable("acknowledge"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(self._stream, REDIS_GROUP, *ids)
                pipe.xdel(self._stream, *ids)
                await pipe.execute()

    async def renew(self, deliveries: Sequence[Delivery]) -> int:
        """Reset the idle time of entries this consumer still holds, so that a long forward is
        not taken for a dead worker's message and reclaimed by another worker. Returns how
        many are pending for another consumer now."""
        if not deliveries:
            return 0
        with self._unavailable("renew pending entries"):
            return int(
                await self._renew_script(
                    keys=[self._stream],
                    args=[REDIS_GROUP, self._consumer, *(d.receipt for d in deliveries)],
                )
            )

    async def depth(self) -> int:
        """Entries in the stream: waiting plus pending, since acknowledged entries are deleted."""
        with self._unavailable("measure the queue"):
            return int(await self._client.xlen(self._stream))

    async def pending_count(self) -> int:
        """Entries handed out to some consumer and not yet acknowledged."""
        with self._unavailable("count pending messages"):
            try:
                summary = await self._client.xpending(self._stream, REDIS_GROUP)
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                return 0
        return int(summary["pending"])

    async def retry_later(self, deliveries: Sequence[tuple[Delivery, float]]) -> None:
        """Acknowledge each delivery and schedule its message ``delay`` seconds from now, in
        one MULTI: the message is either still pending or safely scheduled, never lost. One
        receipt may come several times (an event split into its destinations' retries)."""
        if not deliveries:
            return
        now = time.time()
        with self._unavailable("schedule a retry"):
            async with self._client.pipeline(transaction=True) as pipe:
                for delivery, delay in deliveries:
                    message = delivery.message
                    member = retry_member(message.event_id, message.destination_id)
                    holder = self._keys.retry_hash(member)
                    pipe.delete(holder)
                    pipe.hset(holder, mapping=dict(pairs(encode(message))))
                    pipe.zadd(self._retry, {member: now + delay})
                ids = list(dict.fromkeys(delivery.receipt for delivery, _ in deliveries))
                pipe.xack(self._stream, REDIS_GROUP, *ids)
                pipe.xdel(self._stream, *ids)
                await pipe.execute()

    async def promote_due(self, limit: int = 500) -> int:
        """Move retries whose time has come back into the stream. Returns how many moved."""
        with self._unavailable("promote due retries"):
            moved = await self._promote_script(
                keys=[self._retry, self._stream],
                args=[time.time(), limit, self._keys.retry_hash_prefix],
            )
        return int(moved)

    async def oldest_age(self) -> float:
        """From the id of the first stream entry (its milliseconds part is when it was added)."""
        with self._unavailable("read the oldest entry"):
            first = await self._client.xrange(self._stream, count=1)
        if not first:
            return 0.0
        added_ms = int(str(_text(first[0][0] or b"0")).split("-", 1)[0])
        return max(0.0, time.time() - added_ms / 1000)

    async def scheduled_count(self) -> int:
        """Messages waiting for a retry."""
        with self._unavailable("count scheduled retries"):
            return int(await self._client.zcard(self._retry))

    async def housekeeping(self) -> None:
        """Nothing to do: delivery-id keys expire by TTL and acknowledged entries are deleted."""

    async def forget_delivery_ids(
        self, keys: Sequence[tuple[str, str]], replay_keys: Sequence[tuple[str, str]] = ()
    ) -> None:
        """UNLINK the delivery-id and replay keys, a thousand per command."""
        names = [self._keys.dedupe(tool_id, delivery_id) for tool_id, delivery_id in keys]
        names += [self._keys.replay(tool_id, key) for tool_id, key in replay_keys]
        with self._unavailable("forget delivery ids"):
            for start in range(0, len(names), _FORGET_CHUNK):
                await self._client.unlink(*names[start : start + _FORGET_CHUNK])

    async def ping(self) -> None:
        """Raise QueueUnavailableError unless Redis answers a PING."""
        with self._unavailable("answer a ping"):
            await self._client.ping()

    async def close(self) -> None:
        """Close the client if this queue created it (see :meth:`open`)."""
        if self._owns_client:
            await self._client.aclose()

    async def _read(self, count: int, block_ms: int) -> Any:
        return await self._client.xreadgroup(
            REDIS_GROUP,
            self._consumer,
            {self._stream: ">"},
            count=count,
            block=block_ms if block_ms > 0 else None,
        )

    async def _delivery_counts(self, entry_ids: Sequence[bytes]) -> dict[str, int]:
        """Delivery counts of entries this consumer just claimed, read from the pending list.

        The id range may hold other entries of this consumer, so page until every id is seen.
        """
        if not entry_ids:
            return {}
        wanted = {_text(entry_id) for entry_id in entry_ids}
        start, high = _text(entry_ids[0]), _text(entry_ids[-1])
        page = max(100, len(wanted))
        counts: dict[str, int] = {}
        while True:
            rows = await self._client.xpending_range(
                self._stream, REDIS_GROUP, start, high, page, consumername=self._consumer
            )
            for row in rows:
                entry_id = _text(row["message_id"])
                if entry_id in wanted:
                    counts[entry_id] = int(row["times_delivered"])
            if len(rows) < page or wanted.issubset(counts):
                return counts
            start = "(" + _text(rows[-1]["message_id"])

    async def _deliveries(
        self,
        entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]],
        counts: Mapping[str, int],
        *,
        first_time: bool,
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:
                gone.append(entry_id)
                continue
            try:
                message = decode(fields)
            except (KeyError, ValueError) as exc:
                await self._set_aside(entry_id, fields, exc)
                continue
            # A reclaimed entry missing from the pending list was taken by another consumer
            # meanwhile; it was still handed out at least twice (once before, once to us).
            receipt = _text(entry_id)
            times = counts.get(receipt, 1 if first_time else 2)
            deliveries.append(Delivery(message, receipt, times))
        if gone:
            with self._unavailable("acknowledge deleted entries"):
                await self._client.xack(self._stream, REDIS_GROUP, *gone)
        return deliveries

    async def _set_aside(self, entry_id: bytes, fields: dict[bytes, bytes], exc: Exception) -> None:
        """Move an undecodable entry to the malformed stream, so it neither crashes the worker
        nor comes back forever."""
        reason = f"{type(exc).__name__}: {exc}"
        logger.error(
            "malformed entry %s in %s moved to %s: %s",
            _text(entry_id),
            self._stream,
            self._malformed,
            reason,
        )
        copy: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
        copy[FIELD_MALFORMED_SOURCE_ID] = entry_id
        copy[FIELD_MALFORMED_ERROR] = reason.encode()
        with self._unavailable("set aside a malformed entry"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(self._malformed, copy, maxlen=MALFORMED_MAXLEN, approximate=True)
                pipe.xack(self._stream, REDIS_GROUP, entry_id)
                pipe.xdel(self._stream, entry_id)
                await pipe.execute()

    def _unavailable(self, action: str) -> AbstractContextManager[None]:
        return redis_unavailable(self._where, action)


def _is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
