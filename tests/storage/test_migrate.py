from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from webhook_worker.errors import SchemaOutOfDateError
from webhook_worker.storage import migrate, partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import metadata


async def test_migrate_is_idempotent_and_current(db: Database) -> None:
    before, after = await migrate.upgrade(db)
    assert before == after == migrate.head_revision()
    await migrate.require_current(db)


async def test_empty_database_is_refused_with_advice(tmp_path: object) -> None:
    empty = Database.from_url(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(SchemaOutOfDateError, match="webhook-worker migrate"):
            await migrate.require_current(empty)
    finally:
        await empty.close()


async def test_tables_exist(db: Database) -> None:
    async with db.connect() as conn:
        value = (
            await conn.execute(text("SELECT value FROM metadata WHERE key = 'tools_revision'"))
        ).scalar()
    assert value == 0


async def test_a_schema_newer_than_this_release_is_accepted(db: Database) -> None:
    # A newer release migrated the database during a rolling upgrade: keep serving.
    async with db.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    try:
        await migrate.require_current(db)
        assert await migrate.upgrade(db) == ("from-the-future", "from-the-future")
    finally:
        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :head"),
                {"head": migrate.head_revision()},
            )


async def test_the_migrations_build_the_schema_the_code_declares(db: Database) -> None:
    # A column, index or constraint added to storage/schema.py without a migration (or the
    # other way round) shows here, on both databases. On PostgreSQL the event tables are
    # partitioned (storage/partitions.py): their partitions are not declared, and what a
    # partitioned table cannot have (the unique delivery id, foreign keys to events) is
    # PostgreSQL's only difference, asserted exactly.
    def include(item: Any, name: str | None, kind: str, reflected: bool, _other: Any) -> bool:
        if kind == "table" and not reflected:
            return db.dialect in item.info.get("dialects", (db.dialect,))
        if kind == "table" and reflected and name is not None:
            return not any(name.startswith(f"{table}_") for table, _ in partitions.PARTITIONED)
        return True

    def differences(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(
            sync_conn, opts={"compare_type": True, "include_object": include}
        )
        return list(compare_metadata(context, metadata))

    async with db.connect() as conn:
        found = await conn.run_sync(differences)
    if db.dialect == "postgresql":
        removed = sorted((kind, str(item.name)) for kind, item in found)
        assert removed == [
            ("add_constraint", "uq_events_tool_id_delivery_id"),
            ("add_fk", "fk_event_attempts_event_id_events"),
            ("add_fk", "fk_event_deliveries_event_id_events"),
        ]
    else:
        assert found == []
