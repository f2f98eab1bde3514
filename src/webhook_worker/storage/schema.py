"""The tables, in SQLAlchemy Core. Alembic migrations in ``migrations/`` create them.

Times the API shows are timezone-aware timestamps; times only the queue machinery reads
(``available_at``, ``locked_until``, ``expires_at``) are epoch seconds, which compare the same way
on PostgreSQL and SQLite.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from webhook_worker import constants as c

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSONB on PostgreSQL, so operators can query payloads and headers in SQL; JSON text on SQLite.
_Json = JSON().with_variant(JSONB(), "postgresql")
# An autoincrementing BIGINT on PostgreSQL that stays INTEGER PRIMARY KEY (rowid) on SQLite.
_Serial = BigInteger().with_variant(Integer(), "sqlite")

tools = Table(
    c.TABLE_TOOLS,
    metadata,
    Column("id", String(128), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("config", _Json, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    c.TABLE_EVENTS,
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tool_id", String(128), nullable=False),
    Column("event_type", String(255), nullable=True),
    Column("delivery_id", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    Column("headers", _Json, nullable=False),
    Column("body", LargeBinary, nullable=False),
    # The stored JSON when it differs from the body (after a transform); NULL means "the body".
    Column("payload", _Json, nullable=True),
    Column("attempt_count", Integer, nullable=False, default=0),
    # The event's ordering positions (JSON text ``[[destination_id, key, position], ...]``),
    # NULL when no destination orders it: a replay or a paused delivery sent again keeps them.
    Column("ordering", Text, nullable=True),
    UniqueConstraint("tool_id", "delivery_id"),
    Index(None, "received_at"),
    Index(None, "tool_id", "received_at"),
    Index(None, "status", "received_at"),
)

attempts = Table(
    c.TABLE_ATTEMPTS,
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("event_id", String(36), ForeignKey(events.c.id, ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("error_class", String(64), nullable=True),
    Column("error", Text, nullable=True),
    Column("http_status", Integer, nullable=True),
    # The destination this attempt delivered to; NULL for what happened to the event itself
    # (stored, ignored by the tool's filter, its transform failed).
    Column("destination_id", String(64), nullable=True),
    Index(None, "event_id", "attempt"),
)

# One row per event and destination: that destination's delivery of the event, with its own
# status, attempts and schedule. The event's own status is worked out from these rows.
deliveries = Table(
    c.TABLE_EVENT_DELIVERIES,
    metadata,
    Column("event_id", String(36), ForeignKey(events.c.id, ondelete="CASCADE"), primary_key=True),
    Column("destination_id", String(64), primary_key=True),
    Column("tool_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt_count", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
# Only the deliveries still waiting (a small share of the table once events settle): the
# backlog of each destination (storage/backlog.py) is read from it on every metrics scrape.
_WAITING = ("pending", "retrying", "paused")
Index(
    "ix_event_deliveries_waiting",
    deliveries.c.tool_id,
    deliveries.c.destination_id,
    postgresql_where=deliveries.c.status.in_(_WAITING),
    sqlite_where=deliveries.c.status.in_(_WAITING),
)

dead_letters = Table(
    c.TABLE_DEAD_LETTERS,
    metadata,
    Column("id", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False),
    # The destination whose delivery failed; '' (None in every view) when the event itself
    # failed (its tool's transform, an invalid payload, poison). Not NULL, so that the pair is
    # unique on every database: one dead letter per delivery.
    Column("destination_id", String(64), nullable=False, default="", server_default=""),
    Column("tool_id", String(128), nullable=False),
    Column("event_type", String(255), nullable=True),
    Column("error", Text, nullable=False),
    Column("error_class", String(64), nullable=False),
    Column("retryable", Boolean, nullable=False, default=False),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_retry_at", DateTime(timezone=True), nullable=True),
    Column("next_retry_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("event_id", "destination_id"),
    Index(None, "status", "created_at"),
    Index(None, "tool_id", "created_at"),
)

# The database queue (used when REDIS_ADDR is unset). A row is one message; it is deleted when
# acknowledged. A worker leases rows by setting locked_by/locked_until; a lease that runs out
# (the worker died) makes the row available again, and ``deliveries`` counts the leases.
queue_messages = Table(
    c.TABLE_QUEUE,
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("tool_id", String(128), nullable=False),
    Column("event_type", String(255), nullable=True),
    Column("delivery_id", String(255), nullable=False),
    Column("received_at", Double, nullable=False),
    Column("headers", LargeBinary, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("traceparent", String(64), nullable=True),
    Column("attempt", Integer, nullable=False, default=0, server_default="0"),
    Column("retry_from", Double, nullable=True),
    Column("destination_id", String(64), nullable=True),
    Column("ordering", Text, nullable=True),
    Column("available_at", Double, nullable=False),
    Column("locked_by", String(255), nullable=True),
    Column("locked_until", Double, nullable=True),
    Column("deliveries", Integer, nullable=False, default=0),
    Index(None, "locked_until", "id"),
)

# Delivery control on the database queue (Redis keeps the same under {prefix}:gate and
# {prefix}:order). Times are epoch seconds. A destination's row in destination_gates is locked
# while its control is checked, so its slots and sends are counted under that lock.
destination_gates = Table(
    c.TABLE_DESTINATION_GATES,
    metadata,
    Column("tool_id", String(128), primary_key=True),
    Column("destination_id", String(64), primary_key=True),
    Column("circuit", Integer, nullable=False, default=0, server_default="0"),
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
    Column("opened_at", Double, nullable=True),
    Column("probe_slot", String(64), nullable=True),
    Column("probe_expires_at", Double, nullable=True),
)

destination_slots = Table(
    c.TABLE_DESTINATION_SLOTS,
    metadata,
    Column("slot", String(64), primary_key=True),
    Column("tool_id", String(128), nullable=False),
    Column("destination_id", String(64), nullable=False),
    Column("expires_at", Double, nullable=False),
    Index(None, "tool_id", "destination_id", "expires_at"),
)

destination_sends = Table(
    c.TABLE_DESTINATION_SENDS,
    metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("tool_id", String(128), nullable=False),
    Column("destination_id", String(64), nullable=False),
    # Its lease expiry while the request is in flight, its end once released.
    Column("at", Double, nullable=False),
    Column("slot", String(64), nullable=True),
    Index(None, "tool_id", "destination_id", "at"),
)

ordering_keys = Table(
    c.TABLE_ORDERING_KEYS,
    metadata,
    Column("tool_id", String(128), primary_key=True),
    Column("destination_id", String(64), primary_key=True),
    Column("key", Text, primary_key=True),
    # The last position the queue gave an event of this key, and the last up to which every
    # position has settled.
    Column("assigned", BigInteger, nullable=False, default=0, server_default="0"),
    Column("settled", BigInteger, nullable=False, default=0, server_default="0"),
    Column("used_at", Double, nullable=False),
    Index(None, "used_at"),
)

ordering_settled = Table(
    c.TABLE_ORDERING_SETTLED,
    metadata,
    Column("tool_id", String(128), primary_key=True),
    Column("destination_id", String(64), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
)

# On PostgreSQL, the unique delivery id of each tool's events: ``events`` is partitioned there
# (storage/partitions.py) and a partitioned table's unique constraints must include its partition
# key. The worker inserts an event only when its key is new (storage/events.py); deleting an event
# deletes its key. SQLite keeps the unique constraint on ``events`` instead and has no such table.
event_keys = Table(
    c.TABLE_EVENT_KEYS,
    metadata,
    Column("tool_id", String(128), primary_key=True),
    Column("delivery_id", String(255), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Index(None, "event_id"),
    info={"dialects": ("postgresql",)},
)

# Delivery ids seen at ingest on the database queue (Redis keeps them as keys with a TTL).
delivery_ids = Table(
    c.TABLE_DELIVERY_IDS,
    metadata,
    Column("tool_id", String(128), primary_key=True),
    Column("delivery_id", String(255), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("expires_at", Double, nullable=False),
    Index(None, "expires_at"),
)

metadata_table = Table(
    c.TABLE_METADATA,
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
