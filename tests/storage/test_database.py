"""The SQLite engine's commit modes: accepted events always wait for the disk; the worker's own
bookkeeping may skip the fsync only when the queue lives in the same file (embedded mode)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime
from webhook_worker.storage.database import Database

FULL, NORMAL = 2, 1


async def synchronous(db: Database, durable: bool) -> int:
    async with db.begin(durable=durable) as conn:
        return int((await conn.execute(text("PRAGMA synchronous"))).scalar_one())


async def test_relaxed_commits_apply_only_to_non_durable_transactions(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", pool_size=1)
    try:
        # Off by default: every transaction waits for the disk.
        assert await synchronous(db, durable=False) == FULL
        db.relaxed_commits = True
        # One pooled connection switches back and forth with the kind of transaction.
        assert await synchronous(db, durable=False) == NORMAL
        assert await synchronous(db, durable=True) == FULL
        assert await synchronous(db, durable=False) == NORMAL
    finally:
        await db.close()


async def test_embedded_mode_relaxes_the_worker_and_redis_mode_does_not(
    tmp_path: Path, redis_prefix: str
) -> None:
    async with open_runtime(Settings(data_dir=tmp_path / "embedded"), migrate_first=True) as rt:
        assert rt.db.relaxed_commits is True
        assert await synchronous(rt.db, durable=True) == FULL
    with_redis = Settings(
        data_dir=tmp_path / "redis", redis_addr="127.0.0.1:6379", redis_key_prefix=redis_prefix
    )
    async with open_runtime(with_redis, migrate_first=True) as rt:
        # The queue is elsewhere: a lost local commit could follow an acknowledgement in Redis.
        assert rt.db.relaxed_commits is False
        assert await synchronous(rt.db, durable=False) == FULL
