"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 06:20:00.203845
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("error_class", sa.String(length=64), nullable=False),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("event_id", name=op.f("uq_dead_letters_event_id")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dead_letters_status_created_at"), ["status", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_dead_letters_tool_id_created_at"),
            ["tool_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "delivery_ids",
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tool_id", "delivery_id", name=op.f("pk_delivery_ids")),
    )
    with op.batch_alter_table("delivery_ids", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_delivery_ids_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=True),
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "headers",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=True,
        ),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("tool_id", "delivery_id", name=op.f("uq_events_tool_id_delivery_id")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_received_at"), ["received_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_events_status_received_at"), ["status", "received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_events_tool_id_received_at"), ["tool_id", "received_at"], unique=False
        )

    op.create_table(
        "metadata",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_metadata")),
    )
    op.bulk_insert(
        sa.table("metadata", sa.column("key", sa.String), sa.column("value", sa.BigInteger)),
        [{"key": "tools_revision", "value": 0}],
    )
    op.create_table(
        "queue_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=True),
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("headers", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("traceparent", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_from", sa.Double(), nullable=True),
        sa.Column("available_at", sa.Double(), nullable=False),
        sa.Column("locked_by", sa.String(length=255), nullable=True),
        sa.Column("locked_until", sa.Double(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_messages")),
    )
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_queue_messages_locked_until_id"), ["locked_until", "id"], unique=False
        )

    op.create_table(
        "tools",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tools")),
    )
    op.create_table(
        "event_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_event_attempts_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_attempts")),
    )
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_event_attempts_event_id_attempt"), ["event_id", "attempt"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_attempts_event_id_attempt"))

    op.drop_table("event_attempts")
    op.drop_table("tools")
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_queue_messages_locked_until_id"))

    op.drop_table("queue_messages")
    op.drop_table("metadata")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_tool_id_received_at"))
        batch_op.drop_index(batch_op.f("ix_events_status_received_at"))
        batch_op.drop_index(batch_op.f("ix_events_received_at"))

    op.drop_table("events")
    with op.batch_alter_table("delivery_ids", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_ids_expires_at"))

    op.drop_table("delivery_ids")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dead_letters_tool_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_dead_letters_status_created_at"))

    op.drop_table("dead_letters")
