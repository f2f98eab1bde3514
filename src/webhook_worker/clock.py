"""Time as the API shows it: UTC, ISO 8601 with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(value: datetime | None) -> str | None:
    """``2024-01-15T10:30:00.123456Z``. Naive values are UTC (SQLite returns them naive)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
