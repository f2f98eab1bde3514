"""lifecycle: time partitions of the event tables on PostgreSQL, event_keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 01:00:00

On PostgreSQL, ``events``, ``event_attempts`` and ``event_deliveries`` become tables partitioned
by range of the event id (storage/partitions.py), so that retention drops whole partitions:

1. Each existing table is renamed ``{table}_legacy``; its event id column takes the "C"
   collation (byte order, the order of UUIDv7 text), which rebuilds the indexes on it; the
   foreign keys to ``events`` go (a partitioned table deletes its dependants itself).
2. The partitioned table is created in its place, with the same columns and the index names
   the code declares, and the legacy table is attached as its partition for everything before
   the next UTC midnight (ATTACH scans it once to check the range; ``event_attempts_legacy``
   gets the new primary key ``(event_id, id)`` built).
3. A DEFAULT partition of each, and the partitions of the next two days, are created.
4. ``event_keys`` takes over the unique ``(tool_id, delivery_id)`` of events (a unique
   constraint on a partitioned table would have to include the partition key) and is filled
   from the existing events.

Everything runs in one transaction holding ACCESS EXCLUSIVE locks on the three tables: ingest
goes on (the API only writes the queue) but the worker's writes and event reads wait until it
commits. docs/operations.md ("Data lifecycle") says how long that takes for a given size and how
to do it with the service running. SQLite is not partitioned: nothing changes there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DAY = 86_400
# (table, partition key, primary key of the partitioned table)
_TABLES = (
    ("events", "id", "id"),
    ("event_attempts", "event_id", "event_id, id"),
    ("event_deliveries", "event_id", "event_id, destination_id"),
)
_INDEXES = {
    "events": (
        "CREATE INDEX ix_events_received_at ON events (received_at)",
        "CREATE INDEX ix_events_status_received_at ON events (status, received_at)",
        "CREATE INDEX ix_events_tool_id_received_at ON events (tool_id, received_at)",
    ),
    "event_attempts": (
        "CREATE INDEX ix_event_attempts_event_id_attempt ON event_attempts (event_id, attempt)",
    ),
    "event_deliveries": (
        "CREATE INDEX ix_event_deliveries_waiting ON event_deliveries (tool_id, destination_id) "
        "WHERE status IN ('pending', 'retrying', 'paused')",
    ),
}


def _bound(at: float) -> str:
    digits = f"{int(at * 1000):012x}"
    return f"{digits[:8]}-{digits[8:]}-0000-0000-000000000000"


def _partition_name(table: str, low: float) -> str:
    return f"{table}_p{time.strftime('%Y%m%d_%H%M%S', time.gmtime(low))}"


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    cutover = (math.floor(time.time() / _DAY) + 1) * _DAY
    for table, column, key in _TABLES:
        _make_legacy(conn, table, column)
        conn.execute(
            text(
                f"CREATE TABLE {table} (LIKE {table}_legacy INCLUDING DEFAULTS) "
                f"PARTITION BY RANGE ({column})"
            )
        )
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({key})"))
        for statement in _INDEXES[table]:
            conn.execute(text(statement))
        conn.execute(
            text(
                f"ALTER TABLE {table} ATTACH PARTITION {table}_legacy "
                f"FOR VALUES FROM (MINVALUE) TO ('{_bound(cutover)}')"
            )
        )
        conn.execute(text(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT"))
        for day in (0, 1):
            low = cutover + day * _DAY
            conn.execute(
                text(
                    f"CREATE TABLE {_partition_name(table, low)} PARTITION OF {table} "
                    f"FOR VALUES FROM ('{_bound(low)}') TO ('{_bound(low + _DAY)}')"
                )
            )
    # The sequence of attempt ids belonged to the column that is now the legacy partition's: it
    # would go when that partition is dropped.
    conn.execute(text("ALTER SEQUENCE event_attempts_id_seq OWNED BY event_attempts.id"))
    conn.execute(
        text(
            "CREATE TABLE event_keys (tool_id VARCHAR(128) NOT NULL, "
            'delivery_id VARCHAR(255) NOT NULL, event_id VARCHAR(36) COLLATE "C" NOT NULL, '
            "CONSTRAINT pk_event_keys PRIMARY KEY (tool_id, delivery_id))"
        )
    )
    conn.execute(
        text(
            "INSERT INTO event_keys (tool_id, delivery_id, event_id) "
            "SELECT tool_id, delivery_id, id FROM events_legacy"
        )
    )
    conn.execute(text("CREATE INDEX ix_event_keys_event_id ON event_keys (event_id)"))


def _make_legacy(conn: Connection, table: str, column: str) -> None:
    """Rename ``table`` to ``{table}_legacy`` with its constraints and indexes, drop what the
    partitioned table cannot carry, and give its event id the "C" collation."""
    legacy = f"{table}_legacy"
    for name, kind in conn.execute(
        text(
            "SELECT conname, contype::text FROM pg_constraint WHERE conrelid = to_regclass(:table) "
            "AND contype IN ('f', 'p', 'u')"
        ),
        {"table": table},
    ).all():
        if (
            kind == "f"
            or (kind == "u" and table == "events")
            or (kind == "p" and table == "event_attempts")
        ):
            # Foreign keys to events; the unique delivery id (event_keys has it now); the
            # attempts' key (id), which the partitioned table widens to (event_id, id).
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
    conn.execute(text(f"ALTER TABLE {table} RENAME TO {legacy}"))
    for (name,) in conn.execute(
        text("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t)"),
        {"t": legacy},
    ).all():
        renamed = name.replace(f"_{table}", f"_{legacy}", 1)
        conn.execute(text(f'ALTER TABLE {legacy} RENAME CONSTRAINT "{name}" TO "{renamed}"'))
    for (name,) in conn.execute(
        text(
            "SELECT indexrelid::regclass::text FROM pg_index "
            "WHERE indrelid = to_regclass(:t) AND NOT indisprimary AND NOT indisunique"
        ),
        {"t": legacy},
    ).all():
        renamed = name.replace(f"_{table}", f"_{legacy}", 1)
        conn.execute(text(f'ALTER INDEX "{name}" RENAME TO "{renamed}"'))
    conn.execute(text(f'ALTER TABLE {legacy} ALTER COLUMN {column} TYPE VARCHAR(36) COLLATE "C"'))


def downgrade() -> None:
    """Back to one table each (every row copied), with the unique delivery id and the foreign
    keys of before; event_keys goes."""
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.execute(text("DROP TABLE event_keys"))
    for table, _column, _key in _TABLES:
        conn.execute(text(f"CREATE TABLE {table}_flat (LIKE {table} INCLUDING DEFAULTS)"))
        conn.execute(text(f"INSERT INTO {table}_flat SELECT * FROM {table}"))  # noqa: S608
    conn.execute(text("ALTER SEQUENCE event_attempts_id_seq OWNED BY NONE"))
    for table, _column, _key in reversed(_TABLES):
        conn.execute(text(f"DROP TABLE {table}"))
    for table, _column, key in _TABLES:
        conn.execute(text(f"ALTER TABLE {table}_flat RENAME TO {table}"))
        primary = "id" if table == "event_attempts" else key
        conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({primary})"))
        for statement in _INDEXES[table]:
            conn.execute(text(statement))
    conn.execute(text("ALTER SEQUENCE event_attempts_id_seq OWNED BY event_attempts.id"))
    conn.execute(
        text(
            "ALTER TABLE events ADD CONSTRAINT uq_events_tool_id_delivery_id "
            "UNIQUE (tool_id, delivery_id)"
        )
    )
    for table in ("event_attempts", "event_deliveries"):
        conn.execute(
            text(
                f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_event_id_events "
                f"FOREIGN KEY (event_id) REFERENCES events (id) ON DELETE CASCADE"
            )
        )
