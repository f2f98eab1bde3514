"""How events and their deliveries look on a terminal: the tables and panels ``events`` and
``dlq`` print. The JSON they print with ``--json`` is the API's (:mod:`webhook_worker.api.views`);
this is its human form, every stored value plain text (see :mod:`webhook_worker.cli.plain`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from webhook_worker.api.views import event_view
from webhook_worker.cli.plain import plain, plain_json
from webhook_worker.clock import iso
from webhook_worker.config import format_duration
from webhook_worker.storage.rows import DeliveryRow, EventRow
from webhook_worker.tools.control_schema import DEFAULT_COOLDOWN, DEFAULT_FAILURE_THRESHOLD
from webhook_worker.vocabulary import DeliveryStatus, EventStatus

_EVENT_STYLES: dict[str, str] = {
    EventStatus.PROCESSED: "green",
    EventStatus.PENDING: "cyan",
    EventStatus.IGNORED: "dim",
    EventStatus.RETRYING: "yellow",
    EventStatus.DEAD: "red",
}
_DELIVERY_STYLES: dict[str, str] = {
    DeliveryStatus.DELIVERED: "green",
    DeliveryStatus.PENDING: "cyan",
    DeliveryStatus.IGNORED: "dim",
    DeliveryStatus.RETRYING: "yellow",
    DeliveryStatus.PAUSED: "magenta",
    DeliveryStatus.DEAD: "red",
}


def event_status(status: EventStatus) -> Text:
    return plain(status, _EVENT_STYLES.get(status, ""))


def delivery_status(status: DeliveryStatus) -> Text:
    return plain(status, _DELIVERY_STYLES.get(status, ""))


def delivered_summary(deliveries: tuple[DeliveryRow, ...]) -> Text:
    """``2/3 delivered``: of the deliveries the destinations' filters kept (``ignored`` ones
    are not counted), how many got through; empty for an event that went nowhere."""
    owed = [d for d in deliveries if d.status != DeliveryStatus.IGNORED]
    if not owed:
        return Text("")
    done = sum(1 for d in owed if d.status == DeliveryStatus.DELIVERED)
    return Text(f"{done}/{len(owed)} delivered", style="green" if done == len(owed) else "")


def describe_event(event: EventRow) -> Group:
    """An event for a terminal: summary, headers, payload (and raw payload), deliveries,
    attempts. Every stored value is plain text (see :mod:`webhook_worker.cli.plain`)."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in (
        ("id", event.id),
        ("tool", event.tool_id),
        ("type", event.event_type or "-"),
        ("delivery id", event.delivery_id),
        ("status", event_status(event.status)),
        ("received", iso(event.received_at) or "-"),
        ("processed", iso(event.processed_at) or "-"),
    ):
        summary.add_row(label, value if isinstance(value, Text) else plain(value))

    headers = Table("header", "value", box=None, show_edge=False)
    for name, value in sorted(event.headers.items()):
        headers.add_row(plain(name), plain(value))

    deliveries = Table("destination", "status", "attempts", "next attempt", "updated")
    for delivery in event.deliveries:
        retrying = delivery.status == DeliveryStatus.RETRYING
        deliveries.add_row(
            plain(delivery.destination_id),
            delivery_status(delivery.status),
            str(delivery.attempt_count),
            (iso(delivery.next_attempt_at) or "") if retrying else "",
            iso(delivery.updated_at) or "",
        )

    attempts = Table("#", "destination", "started", "ms", "outcome", "http", "error class", "error")
    for attempt in event.attempts:
        attempts.add_row(
            str(attempt.attempt),
            plain(attempt.destination_id or ""),
            iso(attempt.started_at) or "",
            f"{attempt.duration_ms:.1f}",
            plain(attempt.outcome),
            str(attempt.http_status or ""),
            plain(attempt.error_class or ""),
            plain(attempt.error or ""),
        )

    shown = event_view(event)  # payload and raw payload by the API's rule
    parts: list[Any] = [
        summary,
        Panel(headers, title="headers", title_align="left"),
        Panel(_body(shown["payload"]), title="payload", title_align="left"),
    ]
    if "raw_payload" in shown:
        parts.append(Panel(_body(shown["raw_payload"]), title="raw payload", title_align="left"))
    if event.deliveries:
        parts.append(deliveries)
    parts.append(attempts if event.attempts else "no attempts recorded yet")
    return Group(*parts)


def _body(value: Any) -> RenderableType:
    return plain(value) if isinstance(value, str) else plain_json(value)


def short_time(value: datetime) -> str:
    """``2024-01-15 10:30:00Z`` (to the second, for tables)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def control_summary(destination: Mapping[str, Any]) -> str:
    """A destination's delivery control in one cell, from its (redacted) definition:
    ``rate 20/1s, in flight 3, breaker 5/30s, ordered by data.id``; empty without any."""
    parts: list[str] = []
    rate = destination.get("rate_limit")
    if isinstance(rate, Mapping):
        parts.append(f"rate {rate.get('requests')}/{_duration(rate.get('per', 1.0))}")
    if destination.get("max_in_flight") is not None:
        parts.append(f"in flight {destination['max_in_flight']}")
    breaker = destination.get("circuit_breaker")
    if isinstance(breaker, Mapping):
        threshold = breaker.get("failure_threshold", DEFAULT_FAILURE_THRESHOLD)
        parts.append(f"breaker {threshold}/{_duration(breaker.get('cooldown', DEFAULT_COOLDOWN))}")
    if destination.get("ordering_key"):
        parts.append(f"ordered by {destination['ordering_key']}")
    return ", ".join(parts)


def _duration(value: Any) -> str:
    """A duration as the definition spells it (``"1s"``), or a number of seconds as one."""
    return format_duration(value) if isinstance(value, int | float) else str(value)
