"""destinations: one delivery per event and destination

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 18:40:00

Adds ``event_deliveries`` and a ``destination_id`` to attempts, dead letters and queued
messages, then moves what the previous release recorded onto the new model: a tool's single
``forward`` is the destination ``default``, so every event that was forwarded (or tried to be)
gets its ``default`` delivery, with the status its forward reached, and the attempts and dead
letters of those forwards are marked ``default``. Events stored without forwarding get no
delivery, as before. Nothing is deleted.

Dead letters become unique per (event, destination) instead of per event. The previous
release's workers write dead letters against the old constraint, so stop them before running
this migration (docs/operations.md, "Upgrading to destinations").
"""

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The error classes of a failed forward (worker/retry.py): a dead letter or dead attempt with
# one of them was the forward's; any other was the event's own (transform, payload, poison).
_FORWARD_ERRORS = (
    "timeout",
    "connection_error",
    "http_5xx",
    "http_408",
    "http_429",
    "http_4xx",
    "http_3xx",
    "forbidden_target",
)
_attempts = sa.table(
    "event_attempts",
    sa.column("outcome", sa.String),
    sa.column("error_class", sa.String),
    sa.column("destination_id", sa.String),
)
_dead_letters = sa.table(
    "dead_letters", sa.column("error_class", sa.String), sa.column("destination_id", sa.String)
)
_deliveries = sa.table(
    "event_deliveries",
    sa.column("event_id", sa.String),
    sa.column("status", sa.String),
    sa.column("next_attempt_at", sa.DateTime(timezone=True)),
)
_queue = sa.table(
    "queue_messages", sa.column("event_id", sa.String), sa.column("available_at", sa.Float)
)
log = logging.getLogger("webhook_worker.storage.migrations")


def upgrade() -> None:
    op.create_table(
        "event_deliveries",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("destination_id", sa.String(length=64), nullable=False),
        sa.Column("tool_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_event_deliveries_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", "destination_id", name=op.f("pk_event_deliveries")),
    )
    waiting = sa.text("status IN ('pending', 'retrying', 'paused')")
    op.create_index(
        "ix_event_deliveries_waiting",
        "event_deliveries",
        ["tool_id", "destination_id"],
        postgresql_where=waiting,
        sqlite_where=waiting,
    )
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("destination_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("destination_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("destination_id", sa.String(length=64), server_default="", nullable=False)
        )
        batch_op.drop_constraint("uq_dead_letters_event_id", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_dead_letters_event_id_destination_id"), ["event_id", "destination_id"]
        )

    # The previous release's forwards become the deliveries of the destination `default`.
    a = _attempts.c
    op.execute(
        _attempts.update()
        .where(
            sa.or_(
                a.outcome.in_(["forwarded", "failed"]),
                sa.and_(a.outcome == "dead", a.error_class.in_(_FORWARD_ERRORS)),
            )
        )
        .values(destination_id="default")
    )
    op.execute(
        _dead_letters.update()
        .where(_dead_letters.c.error_class.in_(_FORWARD_ERRORS))
        .values(destination_id="default")
    )
    op.execute(
        "INSERT INTO event_deliveries "
        "(event_id, destination_id, tool_id, status, attempt_count, next_attempt_at, updated_at) "
        "SELECT e.id, 'default', e.tool_id, "
        "CASE "
        "WHEN e.status = 'dead' THEN 'dead' "
        "WHEN e.status = 'retrying' THEN 'retrying' "
        "WHEN e.status = 'pending' THEN 'pending' "
        "WHEN EXISTS (SELECT 1 FROM event_attempts f WHERE f.event_id = e.id "
        "AND f.outcome = 'forwarded') THEN 'delivered' "
        # Processed without a successful forward: the tool stopped forwarding meanwhile.
        "ELSE 'ignored' END, "
        "(SELECT count(*) FROM event_attempts n WHERE n.event_id = e.id "
        "AND n.destination_id = 'default'), "
        "NULL, COALESCE(e.processed_at, e.received_at) "
        "FROM events e WHERE EXISTS (SELECT 1 FROM event_attempts a "
        "WHERE a.event_id = e.id AND a.destination_id = 'default')"
    )
    _schedule_retrying()


def _schedule_retrying() -> None:
    """A retrying delivery's next attempt is when its event's message in the database queue
    falls due (epoch seconds there). With Redis Streams the schedule is in Redis: left unknown."""
    d = _deliveries.c
    retrying = sa.select(d.event_id).where(d.status == "retrying")
    due = op.get_bind().execute(
        sa.select(_queue.c.event_id, sa.func.min(_queue.c.available_at))
        .where(_queue.c.event_id.in_(retrying))
        .group_by(_queue.c.event_id)
    )
    schedule = [
        {"due_event_id": event_id, "due_at": datetime.fromtimestamp(available_at, UTC)}
        for event_id, available_at in due
    ]
    if schedule:
        op.get_bind().execute(
            _deliveries.update()
            .where(d.event_id == sa.bindparam("due_event_id"))
            .values(next_attempt_at=sa.bindparam("due_at")),
            schedule,
        )


# What the previous release has no place for: other destinations' dead letters and queued
# retries, and an event's own dead letter where its `default` delivery has one too (one dead
# letter per event there; the delivery's is kept).
_DROPPED_BY_DOWNGRADE = {
    "dead letters of other destinations than default": (
        "FROM dead_letters WHERE destination_id NOT IN ('', 'default')"
    ),
    "queued retries of other destinations than default": (
        "FROM queue_messages WHERE destination_id IS NOT NULL AND destination_id <> 'default'"
    ),
    "event dead letters beside a default one": (
        "FROM dead_letters WHERE destination_id = '' AND event_id IN "
        "(SELECT event_id FROM dead_letters WHERE destination_id = 'default')"
    ),
}


def downgrade() -> None:
    """Back to a single forward per tool: the ``default`` destination's history stays (its
    attempts and dead letters are the forward's again), and ``event_deliveries`` goes. What
    other destinations had cannot be kept apart: their attempts stay as the event's, and what
    :data:`_DROPPED_BY_DOWNGRADE` lists is deleted, with a warning saying how much."""
    bind = op.get_bind()
    for what, rows in _DROPPED_BY_DOWNGRADE.items():
        count = bind.execute(sa.text(f"SELECT count(*) {rows}")).scalar_one()
        if count:
            log.warning("downgrade to 0001 deletes %d %s", count, what)
            op.execute(f"DELETE {rows}")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_constraint("uq_dead_letters_event_id_destination_id", type_="unique")
        batch_op.create_unique_constraint("uq_dead_letters_event_id", ["event_id"])
        batch_op.drop_column("destination_id")
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.drop_column("destination_id")
    with op.batch_alter_table("event_attempts", schema=None) as batch_op:
        batch_op.drop_column("destination_id")
    op.drop_index("ix_event_deliveries_waiting", table_name="event_deliveries")
    op.drop_table("event_deliveries")
