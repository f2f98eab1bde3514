"""Signed timestamps: parse them strictly, and refuse those outside the tool's tolerance.

A signature over a timestamp stops an attacker replaying a captured request later; the window
bounds how late (and how early) a request may arrive.
"""

from __future__ import annotations

from webhook_worker.auth.base import AuthError

DEFAULT_TOLERANCE = 300.0
"""Seconds; what Stripe, Slack and Standard Webhooks all use."""

_MAX_DIGITS = 12  # Unix seconds have 10 digits until the year 2286.


def parse(value: str, where: str) -> int:
    """Whole Unix seconds; AuthError for anything else (signs, fractions, non-ASCII digits)."""
    if not value or len(value) > _MAX_DIGITS or not (value.isascii() and value.isdigit()):
        raise AuthError(f"{where} must be a Unix time in whole seconds")
    return int(value)


def check(
    timestamp: int, now: float, tolerance: float, where: str, *, allow_future: bool = False
) -> None:
    """Raise AuthError when ``timestamp`` is more than ``tolerance`` seconds before ``now`` or,
    unless ``allow_future``, more than ``tolerance`` seconds after it."""
    if timestamp < now - tolerance:
        raise AuthError(
            f"{where} is more than {tolerance:g} s old: a replay, or the sender's clock is off"
        )
    if not allow_future and timestamp > now + tolerance:
        raise AuthError(f"{where} is more than {tolerance:g} s in the future: check the clocks")
