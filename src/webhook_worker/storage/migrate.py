"""Apply Alembic migrations and check that the schema is current."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from webhook_worker.errors import SchemaOutOfDateError
from webhook_worker.storage.database import Database

log = logging.getLogger(__name__)

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
        return await conn.run_sync(_upgrade)


async def current_revision(db: Database) -> str | None:
    async with db.connect() as conn:
        return await conn.run_sync(_current)


async def require_current(db: Database) -> None:
    """Raise SchemaOutOfDateError when the database is behind this release.

    A schema *ahead* of this release (a newer release migrated it during a rolling upgrade) is
    accepted with a warning: migrations add before they remove, so the previous release keeps
    working until its processes are replaced.
    """
    current = await current_revision(db)
    head = head_revision()
    if current == head:
        return
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if current is not None and current not in known:
        log.warning(
            "the database schema (revision %s) is newer than this release (%s); "
            "upgrade this process",
            current,
            head,
        )
        return
    found = "an empty database" if current is None else f"revision {current}"
    raise SchemaOutOfDateError(
        f"the database schema is behind ({found}, this release needs {head}): "
        "run `webhook-worker migrate` first"
    )


def _is_newer(revision: str | None) -> bool:
    """A revision this release does not know: written by a newer release."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return revision is not None and revision not in {s.revision for s in scripts.walk_revisions()}


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Connection) -> tuple[str | None, str]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    before = _current(conn)
    if _is_newer(before):
        assert before is not None
        log.warning(
            "the database schema (revision %s) is newer than this release; nothing to do", before
        )
        return before, before
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
    return before, head_revision()
