"""Building the Redis client every process shares, from :class:`Settings`.

The timeouts are chosen so that a Redis that is down or unreachable turns into an error within a
few seconds (ingest answers 503, the worker backs off) instead of a request that hangs.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from webhook_worker.config import Settings, parse_address
from webhook_worker.errors import ConfigError

CONNECT_TIMEOUT = 2.0
"""Seconds to establish a TCP (and TLS) connection."""
SOCKET_TIMEOUT = 5.0
"""Seconds to wait for any reply. Blocking reads must wait less than this (the queue clamps)."""
HEALTH_CHECK_INTERVAL = 10
"""A connection idle this many seconds is PINGed before reuse, so a dead one is noticed first."""
RETRIES = 2
"""Reconnect attempts after a connection error or timeout before the error reaches the caller.

Kept small: the callers (ingest, worker loop) have their own back-off, and a long retry chain here
is what makes a dead Redis look like a hang.
"""


def connect(settings: Settings) -> aioredis.Redis:
    """A client for ``settings.redis_addr`` (``host:port``), with credentials, db and TLS.

    No connection is made until the first command. Responses are left as bytes: message bodies
    are arbitrary bytes and must not be decoded.
    """
    if settings.redis_addr is None:
        raise ConfigError("REDIS_ADDR: not set; expected host:port such as 127.0.0.1:6379")
    try:
        host, port = parse_address(settings.redis_addr, "127.0.0.1")
    except ValueError as exc:
        raise ConfigError(f"REDIS_ADDR: {exc}") from None
    client: aioredis.Redis = aioredis.Redis(
        host=host,
        port=port,
        username=settings.redis_username,
        password=settings.redis_password,
        db=settings.redis_db,
        ssl=settings.redis_tls_enabled,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.25), retries=RETRIES),
        decode_responses=False,
    )
    return client
