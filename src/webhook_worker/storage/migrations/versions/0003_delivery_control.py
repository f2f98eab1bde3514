"""delivery control: rate limits, deliveries in flight, circuit breakers, ordering

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:10:00

Adds the tables the database queue keeps a destination's delivery control in (the Redis queue
keeps the same in Redis) and an ``ordering`` column to events and queued messages: the positions
an event holds in the order of each destination with an ``ordering_key``. Nothing existing
changes: events and messages of before have no positions (they are unordered).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "destination_gates",
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("circuit", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("opened_at", sa.Double(), nullable=True),
        sa.Column("probe_slot", sa.String(length=64), nullable=True),
        sa.Column("probe_expires_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("tool_id", "destination_id", name=op.f("pk_destination_gates")),
    )
    op.create_table(
        "destination_slots",
        sa.Column("slot", sa.String(length=64), nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("slot", name=op.f("pk_destination_slots")),
    )
    op.create_index(
        op.f("ix_destination_slots_tool_id_destination_id_expires_at"),
        "destination_slots",
        ["tool_id", "destination_id", "expires_at"],
    )
    op.create_table(
        "destination_sends",
        sa.Column("id", _Serial, autoincrement=True, nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("slot", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destination_sends")),
    )
    op.create_index(
        op.f("ix_destination_sends_tool_id_destination_id_at"),
        "destination_sends",
        ["tool_id", "destination_id", "at"],
    )
    op.create_table(
        "ordering_keys",
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("assigned", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("settled", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("used_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tool_id", "destination_id", "key", name=op.f("pk_ordering_keys")),
    )
    op.create_index(op.f("ix_ordering_keys_used_at"), "ordering_keys", ["used_at"])
    op.create_table(
        "ordering_settled",
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tool_id", "destination_id", "key", "seq", name=op.f("pk_ordering_settled")
        ),
    )
    # Plain ALTER TABLE on both databases: a batch (copy and rename) of ``events`` on SQLite
    # would drop the old table, and with it, by cascade, every attempt and delivery.
    op.add_column("events", sa.Column("ordering", sa.Text(), nullable=True))
    op.add_column("queue_messages", sa.Column("ordering", sa.Text(), nullable=True))


def downgrade() -> None:
    """Ordering positions and the control state are dropped: events go out unordered and
    without limits, as the previous release sends them."""
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later), not a batch: see upgrade().
    op.execute("ALTER TABLE queue_messages DROP COLUMN ordering")
    op.execute("ALTER TABLE events DROP COLUMN ordering")
    op.drop_table("ordering_settled")
    op.drop_index(op.f("ix_ordering_keys_used_at"), table_name="ordering_keys")
    op.drop_table("ordering_keys")
    op.drop_index(
        op.f("ix_destination_sends_tool_id_destination_id_at"), table_name="destination_sends"
    )
    op.drop_table("destination_sends")
    op.drop_index(
        op.f("ix_destination_slots_tool_id_destination_id_expires_at"),
        table_name="destination_slots",
    )
    op.drop_table("destination_slots")
    op.drop_table("destination_gates")
