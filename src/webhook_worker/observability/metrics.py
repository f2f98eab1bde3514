"""Prometheus metrics. Names and labels of the ``webhook_*`` series are part of the contract
(SPEC "Metrics"); label values stay bounded: tool ids, event types, statuses, classes."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

_M = TypeVar("_M", Counter, Histogram)


class Children(Generic[_M]):
    """A metric's children by label values, kept at hand: ``labels()`` checks its arguments and
    takes a lock on every call, a cost worth saving on the per-delivery path."""

    _BOUND = 10_000  # label values are bounded already; this only caps a pathological case

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[Hashable, _M] = {}

    def __call__(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            if len(self._children) >= self._BOUND:
                self._children.clear()
            child = self._children[labels] = self._metric.labels(*labels)
        return child


EVENTS_RECEIVED = Counter(
    "webhook_events_received_total",
    "Webhooks accepted and enqueued (202).",
    ["event_type", "tool_id"],
)
EVENTS_DUPLICATE = Counter(
    "webhook_events_duplicate_total",
    "Webhooks answered 200 duplicate: the delivery id was seen within WORKER_IDEMPOTENCY_TTL.",
    ["event_type", "tool_id"],
)
INGEST_REJECTED = Counter(
    "webhook_ingest_rejected_total",
    "Webhooks refused at ingest, by reason (auth, ...).",
    ["tool_id", "reason"],
)
EVENTS_PROCESSED = Counter(
    "webhook_events_processed_total",
    "Events the worker finished, by final status.",
    ["event_type", "tool_id", "status"],
)
PROCESSING_DURATION = Histogram(
    "webhook_event_processing_duration_seconds",
    "Time from the worker receiving an event to its outcome being stored.",
    ["event_type", "tool_id", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("webhook_queue_depth", "Messages in the queue: waiting plus in flight.")
RECLAIMED = Counter(
    "webhook_queue_reclaimed_total",
    "Messages taken over from a consumer that stopped acknowledging (it died or hung).",
)
POISON = Counter(
    "webhook_queue_poison_total",
    "Messages dead-lettered because they were delivered more than WORKER_MAX_DELIVERIES times.",
)
RETRY_ATTEMPTS = Counter(
    "webhook_retry_attempts_total",
    "Retries scheduled, by attempt number and error class.",
    ["attempt", "reason"],
)
DLQ_ENTRIES = Counter(
    "webhook_dlq_entries_total",
    "Events that went to the dead letter queue, by error class.",
    ["event_type", "reason"],
)
DLQ_RETRIES = Counter(
    "webhook_dlq_retries_total",
    "Dead letter retries: status=requeued when one is sent back (by hand, in bulk or "
    "automatically), status=resolved when a retried event then got through.",
    ["status"],
)
FORWARD_DURATION = Histogram(
    "webhook_forward_duration_seconds",
    "Time a forward target took to answer, by tool and status class (2xx, 4xx, 5xx, error).",
    ["tool_id", "status_class"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Deliveries to destinations, by outcome: delivered, retrying (a retryable failure, retried "
    "later), dead, ignored (the destination's filter, or the destination is gone).",
    ["tool_id", "destination_id", "outcome"],
)
DELIVERY_DURATION = Histogram(
    "webhook_delivery_duration_seconds",
    "Time a destination took to answer one delivery attempt.",
    ["tool_id", "destination_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DESTINATION_BACKLOG = Gauge(
    "webhook_destination_backlog",
    "Deliveries to a destination that are not final yet: pending, retrying or paused.",
    ["tool_id", "destination_id"],
)
DESTINATION_CIRCUIT_STATE = Gauge(
    "webhook_destination_circuit_state",
    "A destination's circuit breaker: 0 closed, 1 half-open (its probe is out), 2 open "
    "(nothing is sent until the cooldown ends). Destinations with a circuit_breaker, and any "
    "whose circuit is not closed.",
    ["tool_id", "destination_id"],
)
DESTINATION_PAUSED = Gauge(
    "webhook_destination_paused",
    "1 while a destination is paused (its deliveries wait, status paused), else 0; one series "
    "per destination of every tool.",
    ["tool_id", "destination_id"],
)
FORWARDS_DEFERRED = Counter(
    "webhook_forward_deferred_total",
    "Events sent back to the queue for a moment, untried, because their tool already had as many "
    "forwards in flight and waiting as WORKER_TOOL_CONCURRENCY allows (a slow or hanging target).",
    ["tool_id"],
)
INGEST_DURATION = Histogram(
    "webhook_ingest_request_duration_seconds",
    "Time to answer a webhook, by tool and HTTP status (tool_id is empty for unknown tools).",
    ["tool_id", "status_code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DLQ_DEPTH = Gauge("webhook_dlq_depth", "Dead letters waiting for someone: pending or retrying.")
SCHEDULED_RETRIES = Gauge(
    "webhook_queue_scheduled_retries", "Messages waiting for their retry time (the retry queue)."
)
OLDEST_MESSAGE_AGE = Gauge(
    "webhook_queue_oldest_message_age_seconds",
    "Age of the oldest message still in the queue (0 when it is empty).",
)
HEALTH_CHECKS = Counter(
    "webhook_health_checks_total",
    "Health checks run, by component and result (healthy, degraded, unhealthy).",
    ["component", "status"],
)
HEALTH_CHECK_DURATION = Histogram(
    "webhook_health_check_duration_seconds",
    "Time each health check took.",
    ["component"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5),
)
DB_POOL_IN_USE = Gauge("webhook_database_pool_in_use", "Database connections checked out now.")
DB_POOL_SIZE = Gauge(
    "webhook_database_pool_size", "Database connections the pool may hold (size plus overflow)."
)
MEMORY_LIMIT = Gauge(
    "webhook_memory_limit_bytes",
    "The process's memory limit (cgroup memory.max; 0 when there is none).",
)
RETENTION_DELETED_EVENTS = Counter(
    "webhook_retention_deleted_events_total",
    "Events the retention sweep deleted, row by row or with their partition (for a dropped "
    "partition, the planner's estimate of its rows once it has been analyzed).",
)
RETENTION_DELETED_BYTES = Counter(
    "webhook_retention_deleted_bytes_total",
    "Bytes the retention sweep deleted: the stored size of the events deleted one by one plus "
    "the size on disk of the partitions dropped.",
)
RETENTION_PARTITIONS_DROPPED = Counter(
    "webhook_retention_partitions_dropped_total",
    "Time partitions of the event tables dropped by the retention sweep (PostgreSQL).",
)
RETENTION_SWEEP_DURATION = Histogram(
    "webhook_retention_sweep_duration_seconds",
    "Time one retention sweep took (only the process holding the sweep's lease sweeps).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
RETENTION_SWEEP_FAILURES = Counter(
    "webhook_retention_sweep_failures_total",
    "Retention sweeps that failed (the database away, an error); the next interval tries again.",
)
RETENTION_LAST_SWEEP = Gauge(
    "webhook_retention_last_sweep_timestamp_seconds",
    "When this process last finished a retention sweep successfully (epoch seconds; 0: not "
    "yet). Take the largest over the processes: one of them sweeps each interval.",
)
RETENTION_LONGEST = Gauge(
    "webhook_retention_seconds",
    "The longest retention in effect: EVENTS_RETENTION or a tool's own, 0 when some tool keeps "
    "its events forever.",
)
RETENTION_INTERVAL = Gauge(
    "webhook_retention_interval_seconds", "How often the retention sweep runs (RETENTION_INTERVAL)."
)
OLDEST_EVENT_AGE = Gauge(
    "webhook_oldest_event_age_seconds",
    "Age of the oldest stored event (0 when there is none); events still waiting are kept "
    "whatever their age.",
)
DATABASE_SIZE = Gauge(
    "webhook_database_size_bytes",
    "Size of the database: pg_database_size on PostgreSQL; on SQLite the file, -wal and -shm.",
)

# The per-delivery series, looked up through Children (see above).
FORWARD_DURATION_OF = Children(FORWARD_DURATION)
DELIVERY_DURATION_OF = Children(DELIVERY_DURATION)
DELIVERIES_OF = Children(DELIVERIES)
