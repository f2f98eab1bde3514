"""Apply Alembic migrations and check that the schema is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from webhook_worker.errors import SchemaOutOfDateError
from webhook_worker.storage.database import Database

_SCRIPTS = Path(__file__).with_name("migrations")
# Serialises concurrent `migrate` runs (several pods starting at once) on PostgreSQL.
_ADVISORY_LOCK_ID = 0x77_68_77  # "whw"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations shipped"
    return head


async def upgrade(db: Database) -> tuple[str | None, str]:
    """Bring the schema to the newest revision. Idempotent. Returns (before, after)."""
    async with db.begin() as conn:
        return await conn.run_sync(_upgrade)  # type: ignore[no-any-return]


async def current_revision(db: Database) -> str | None:
    async with db.connect() as conn:
        return await conn.run_sync(_current)  # type: ignore[no-any-return]


async def require_current(db: Database) -> None:
    """Raise SchemaOutOfDateError unless the database is at the newest revision."""
    current = await current_revision(db)
    head = head_revision()
    if current != head:
        found = "an empty database" if current is None else f"revision {current}"
        raise SchemaOutOfDateError(
            f"the database schema is behind ({found}, this release needs {head}): "
            "run `webhook-worker migrate` first"
        )


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection) -> tuple[str | None, str]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    before = _current(conn)
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
    return before, head_revision()
