"""How "the queue's backend cannot be reached" is said, once for everything that keeps state
beside a queue (the queues themselves and the delivery control gate): a Redis error or an
unreachable database becomes :class:`QueueUnavailableError`, whose message names the setting to
check; anything else is a bug and passes unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from webhook_worker.errors import DatabaseUnavailableError, QueueUnavailableError


def redis_address(client: Any) -> str:
    """``host:port`` of a redis-py client, for messages."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


@contextmanager
def redis_unavailable(where: str, action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise QueueUnavailableError(
            f"Redis at {where} could not {action} ({type(exc).__name__}: {exc}); "
            "check that Redis is running and REDIS_ADDR and its credentials are right"
        ) from exc


@contextmanager
def database_unavailable(subject: str, action: str) -> Iterator[None]:
    """``subject``: what was asked (``database queue``, ``delivery control``)."""
    try:
        yield
    except DatabaseUnavailableError as exc:
        raise QueueUnavailableError(
            f"{subject}: cannot {action}, the database did not answer "
            f"({exc.__cause__ or exc}); check that it is running and DATABASE_URL points at it"
        ) from exc
