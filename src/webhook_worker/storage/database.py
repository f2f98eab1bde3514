"""The database connection: one async engine for PostgreSQL (asyncpg) or SQLite (aiosqlite).

This is where the driver's errors enter the package, so it is where they are translated: an
error that means "the database cannot be reached right now" (refused, lost or timed-out
connections) leaves :meth:`Database.begin`, :meth:`Database.connect` and :meth:`Database.ping` as
:class:`~webhook_worker.errors.DatabaseUnavailableError`, which callers retry or answer 503 to.
Any other error (a bad statement, a constraint) passes unchanged: that is a bug or bad data, and
retrying it would not help.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final
from weakref import WeakKeyDictionary

import orjson
from sqlalchemy import Insert, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError, DatabaseUnavailableError, WebhookWorkerError

_DURABLE = "webhook_worker_durable"
"""Execution option (and connection info key): whether commits wait for the disk."""
SQLITE_BUSY_TIMEOUT: Final = 30.0
"""Seconds a transaction on SQLite waits for the file before it is "unavailable"."""


def _is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means "the database cannot be reached right now" (worth retrying),
    rather than "this statement is wrong"."""
    if isinstance(exc, WebhookWorkerError):
        return False
    if isinstance(exc, DBAPIError):
        # A statement prepared before a migration changed its table: the driver has dropped
        # its prepared statements, and the same statement succeeds when tried again.
        if type(exc.orig).__name__ == "InvalidCachedStatementError":
            return True
        # A row routed to the DEFAULT partition while a partition for its range was being
        # attached (storage/partitions.py; ATTACH lets writes go on): tried again, it goes to
        # the new partition. Not bad data: the event must not be dead-lettered for it.
        if "violates partition constraint" in str(exc.orig):
            return True
        return exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))
    return isinstance(exc, (OSError, ConnectionError, TimeoutError))


def _unavailable(exc: BaseException) -> DatabaseUnavailableError:
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return DatabaseUnavailableError(f"the database is unavailable: {reason}"[:500])


@asynccontextmanager
async def _translated(
    opening: AbstractAsyncContextManager[AsyncConnection], turns: Turns | None = None
) -> AsyncIterator[AsyncConnection]:
    """``opening`` (an engine's connect() or begin()), with driver errors translated; on
    SQLite, in this process's turn (``turns``)."""
    async with turns.turn() if turns is not None else nullcontext():
        try:
            async with opening as conn:
                yield conn
        except Exception as exc:
            if _is_unavailable(exc):
                raise _unavailable(exc) from exc
            raise


_HOLDING: ContextVar[frozenset[int]] = ContextVar(
    "webhook_worker_sqlite_turns", default=frozenset()
)
"""The :class:`Turns` (by id) whose turn the current task holds, or the task that started it."""


class Turns:
    """The transactions of one process on one SQLite file, one at a time, in the order they
    began.

    SQLite lets one transaction at a time use the file (every one here begins IMMEDIATE, reads
    too: see :func:`_configure_sqlite`). A connection that finds the file taken waits in
    SQLite's busy handler, which sleeps 1 to 100 ms between its tries and so misses the moment
    the file is free: a writer that begins its transactions back to back (the retention sweep's
    chunks, a busy worker) could keep the API's queue writes waiting for hundreds of
    milliseconds. Here they queue on an asyncio lock instead (first come, first served), and
    each is woken the moment the previous one ends. Other processes on the same file still meet
    in the busy handler.

    A task that holds the turn (or one it started meanwhile) opening another connection does
    not wait for itself: that connection meets the first in SQLite, as it would without this.
    """

    def __init__(self, timeout: float = SQLITE_BUSY_TIMEOUT) -> None:
        self._timeout = timeout
        self._locks: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            WeakKeyDictionary()
        )

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        holding = _HOLDING.get()
        if id(self) in holding:
            yield
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        try:
            async with asyncio.timeout(self._timeout):
                await lock.acquire()
        except TimeoutError:
            raise DatabaseUnavailableError(
                f"the database is unavailable: the SQLite file stayed busy for "
                f"{self._timeout:.0f} s (this process's other transactions held it)"
            ) from None
        token = _HOLDING.set(holding | {id(self)})
        try:
            yield
        finally:
            _HOLDING.reset(token)
            lock.release()


class Database:
    """Owns the engine. ``dialect`` is ``"postgresql"`` or ``"sqlite"``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self.relaxed_commits = False
        """Set when the queue lives in this SQLite database (embedded mode): then
        ``begin(durable=False)`` commits without waiting for the disk. See :meth:`begin`."""
        self._relaxed = engine.execution_options(**{_DURABLE: False})
        self._turns = Turns() if self.dialect == "sqlite" else None
        self.file_warning: str | None = None
        """For an SQLite file: what is wrong with the permissions around it (a directory open
        to other users), for the process to log at start. See :func:`_private_files`."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls.from_url(
            settings.sqlalchemy_url(),
            pool_size=settings.database_pool_size,
            ssl_mode=settings.database_ssl_mode,
        )

    @classmethod
    def from_url(cls, url: str, pool_size: int = 10, ssl_mode: str = "disable") -> Database:
        if url.startswith("sqlite"):
            # The file; a query (``?timeout=...``) is the driver's options, not part of it.
            path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
            file_warning = None
            if path and path != ":memory:":
                file_warning = _private_files(Path(path))
            engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=60,
                hide_parameters=True,
                json_serializer=json_text,
            )
            _configure_sqlite(engine)
            db = cls(engine)
            db.file_warning = file_warning
            return db
        else:
            connect_args: dict[str, Any] = {
                "server_settings": {"application_name": "webhook-worker"}
            }
            tls = _ssl_context(ssl_mode)
            if tls is not None:
                connect_args["ssl"] = tls
            engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_recycle=1800,
                connect_args=connect_args,
                # Errors must not print bound values: tool configs hold (encrypted) secrets.
                hide_parameters=True,
                json_serializer=json_text,
            )
        return cls(engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with db.connect() as conn`` (no transaction until a statement runs; on
        SQLite the connection waits for this process's other transactions: :class:`Turns`)."""
        return _translated(self.engine.connect(), self._turns)

    def connect_aside(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection that does not take a turn on SQLite (:class:`Turns`), for what runs
        beside the transactions rather than as one: a WAL checkpoint."""
        return _translated(self.engine.connect())

    def begin(self, durable: bool = True) -> AbstractAsyncContextManager[AsyncConnection]:
        """``async with db.begin() as conn``: one transaction, committed on exit.

        ``durable=False`` is for the worker's own bookkeeping (leases, stored events, outcomes,
        acknowledgements). With :attr:`relaxed_commits` such a commit on SQLite does not wait
        for the disk (``synchronous=NORMAL``). That is safe because the queue is in the same
        file: a power loss can only roll back the newest transactions, never an earlier one
        while keeping a later, and every durable commit (an accepted event) syncs all that came
        before it. What rolls back is done again: the message comes back with it.
        """
        if durable or not self.relaxed_commits:
            return _translated(self.engine.begin(), self._turns)
        return _translated(self._relaxed.begin(), self._turns)

    async def ping(self) -> float:
        """Round-trip a trivial query; returns its duration in milliseconds."""
        started = time.perf_counter()
        async with self.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    def pool_status(self) -> dict[str, int]:
        """``open_connections`` checked out now; ``capacity`` the most the pool hands out."""
        pool: Any = self.engine.pool
        checked_out = pool.checkedout() if hasattr(pool, "checkedout") else 0
        size = pool.size() if hasattr(pool, "size") else 0
        overflow = max(getattr(pool, "_max_overflow", 0), 0)
        return {"open_connections": int(checked_out), "capacity": int(size) + int(overflow)}

    async def close(self) -> None:
        await self.engine.dispose()


_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The database file and the files SQLite keeps beside it (all hold event data and secrets)."""


def _private_files(path: Path) -> str | None:
    """Make the SQLite file at ``path`` readable by this user only; return a warning when the
    directory it is in is open to others.

    Without SECRETS_KEY the file holds tool secrets in plaintext, and always the events. A
    directory this creates is 0700 and a file 0600 (whatever the umask: it can only take bits
    away). SQLite creates the -wal and -shm files itself, with the mode of the database file,
    so creating that file 0600 before SQLite opens it covers them too. Files an older release
    left readable by others are the service's own and are tightened to 0600 (when this user
    owns them); a directory that already exists may be the user's (a home, a mounted volume),
    so it is never changed: the returned warning says how to fix it.
    """
    directory = path.parent
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for suffix in _SQLITE_SUFFIXES:
            existing = path.with_name(path.name + suffix)
            if not existing.exists():
                continue
            status = existing.stat()
            # Only our own files: another user's (an operator reading the service's file
            # through its group) is theirs to set.
            if status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) & 0o077:
                existing.chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"DATA_DIR: cannot create {path}: {exc}") from None
    mode = stat.S_IMODE(directory.stat().st_mode)
    if not mode & 0o077:
        return None
    return (
        f"DATA_DIR {directory} is open to other users (mode {mode:03o}) and holds the database "
        f"with every event and, without SECRETS_KEY, tool secrets in plaintext: run "
        f"chmod 700 {directory}"
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL; every transaction BEGIN IMMEDIATE, so that one that reads and then writes never
    fails with "database is locked" when it tries to upgrade (transactions queue instead: on
    :class:`Turns` within the process, on busy_timeout between processes)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Only a new file takes it (before its first table): the retention sweep then gives the
        # pages of deleted events back to the file system (storage/retention.py).
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        # Measured with `webhook-worker bench --start embedded` (docs/performance.md): a larger
        # page cache and memory-mapped reads, and WAL checkpoints every ~40 MB rather than 4 MB.
        cursor.execute("PRAGMA cache_size=-16384")
        cursor.execute("PRAGMA mmap_size=67108864")
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        durable = conn.get_execution_options().get(_DURABLE, True)
        if conn.info.get(_DURABLE, True) != durable:
            conn.exec_driver_sql("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            conn.info[_DURABLE] = durable
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _ssl_context(mode: str) -> ssl.SSLContext | str | None:
    if mode == "disable":
        return None
    if mode in ("allow", "prefer", "require"):
        return mode
    context = ssl.create_default_context()
    if mode == "verify-ca":
        context.check_hostname = False
    return context


def upsert(dialect: str, table: Table, keys: Sequence[str], changed: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE SET`` the ``changed`` columns to the new row's
    values, for either dialect (execute it with the rows as parameters)."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table)
    new = statement.excluded
    updated: Insert = statement.on_conflict_do_update(
        index_elements=[table.c[key] for key in keys],
        set_={column: new[column] for column in changed},
    )
    return updated


def json_text(value: Any) -> str:
    """JSON columns through orjson (several times faster than the standard library here); an
    ``orjson.Fragment`` (JSON already encoded, such as stored headers) goes in as it is. Values
    nested deeper than orjson goes (254 levels) go through the standard library."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)
