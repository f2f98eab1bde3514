"""The worker's decisions, in pure code: no database, no clock, no metrics, no logs.

- :func:`prepare` (phase 1): what a tool's plan makes of an event's body: store it as
  ``processed``, ``ignored`` or ``dead`` (with its :class:`~webhook_worker.worker.retry.Failure`),
  or deliver it; and what JSON is stored when a transform ran.
- :func:`route` (phase 1): what one destination makes of the event: send it (the destination's
  transform applied), ignore it (its filter) or give up on it (its filter or transform failed).
- :func:`settle` (phase 3): what follows a forward: :class:`Done`, :class:`RetryAfter` a delay
  (with the retried message's new fields), or :class:`Dead`.

The processor calls these, writes what they decided in one transaction, and only then counts,
logs and ends spans, so a phase retried after a database outage decides again from the same
inputs and has told nobody anything yet.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import jmespath.exceptions
import orjson

from webhook_worker.config import RetryPolicy
from webhook_worker.queue.base import Message
from webhook_worker.vocabulary import DeliveryStatus, ErrorClass, EventStatus
from webhook_worker.worker import expressions
from webhook_worker.worker.forwarder import ForwardOutcome
from webhook_worker.worker.plan import Plan, Route
from webhook_worker.worker.retry import Backoff, Failure

_MESSAGE_LIMIT = 1000


UNPARSED: Final = object()
"""Stands for a body nobody needed parsed."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What to store for a new event. ``status`` is ``pending`` when it is to be delivered."""

    status: EventStatus
    payload: Any = None
    """The JSON to store when a transform ran (never None then), else None: the body is kept."""
    failure: Failure | None = None
    """Why the event is ``dead``; None for any other status."""
    document: Any = field(default=UNPARSED, compare=False)
    """What the destinations' filters and transforms read: the payload when the tool's
    transform ran, else the parsed body; UNPARSED when none of them needs it."""


# Shared by every event they fit: the common paths allocate nothing.
TO_FORWARD: Final = Prepared(EventStatus.PENDING)
STORED: Final = Prepared(EventStatus.PROCESSED)
IGNORED: Final = Prepared(EventStatus.IGNORED)


def prepare(plan: Plan, body: bytes) -> Prepared:
    """Run the plan's filter, then its transform, on ``body`` (parsed as JSON only when one of
    them, or a destination's, needs it). A body that is not JSON, a filter or transform that
    fails or builds a value past the bound of :mod:`~webhook_worker.worker.expressions`, or a
    transform that yields null makes the event dead at once: another try would fail the same
    way. (A body that is not JSON when only a destination needs JSON fails that destination
    alone: see :func:`route`.)"""
    kept = TO_FORWARD if plan.forwards else STORED
    routes_need_json = plan.routes_need_json
    if not plan.needs_json and not routes_need_json:
        return kept
    if not plan.needs_json:
        try:
            return Prepared(kept.status, document=orjson.loads(body))
        except orjson.JSONDecodeError:
            return kept
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return dead(
            ErrorClass.INVALID_PAYLOAD,
            "the body is not JSON, which the tool's filter or transform needs",
        )
    applied = _apply(plan.filter, plan.transform, document, len(body), "")
    if applied.failure is not None:
        return Prepared(EventStatus.DEAD, failure=applied.failure)
    if not applied.kept:
        return IGNORED
    if plan.transform is None:
        return Prepared(kept.status, document=document) if routes_need_json else kept
    return Prepared(kept.status, applied.payload, document=applied.payload)


@dataclass(frozen=True, slots=True)
class _Applied:
    """What a filter and a transform made of a document."""

    kept: bool
    payload: Any = None
    """The transform's result; None without a transform."""
    failure: Failure | None = None


_DROPPED: Final = _Applied(False)
_KEPT: Final = _Applied(True)


def _apply(
    filter_: jmespath.parser.ParsedResult | None,
    transform: jmespath.parser.ParsedResult | None,
    document: Any,
    size: int,
    owner: str,
) -> _Applied:
    """Run ``filter_``, then ``transform``, on ``document`` (from a body of ``size`` bytes),
    bounded as :mod:`~webhook_worker.worker.expressions` says. ``owner`` names whose they are
    in a failure's message ("" for the tool's own, "destination's " for a destination's)."""
    limit = expressions.limit_for(size)
    if filter_ is not None:
        try:
            keep = expressions.search(filter_, document, limit)
        except jmespath.exceptions.JMESPathError as exc:
            return _failed(ErrorClass.FILTER_ERROR, f"the {owner}filter failed: {exc}")
        except expressions.TooLarge:
            return _failed(ErrorClass.FILTER_ERROR, _too_large("filter", limit))
        if not truthy(keep):
            return _DROPPED
    if transform is None:
        return _KEPT
    try:
        payload = expressions.search(transform, document, limit)
    except jmespath.exceptions.JMESPathError as exc:
        return _failed(ErrorClass.TRANSFORM_ERROR, f"the {owner}transform failed: {exc}")
    except expressions.TooLarge:
        return _failed(ErrorClass.TRANSFORM_ERROR, _too_large("transform", limit))
    if payload is None:
        return _failed(ErrorClass.TRANSFORM_ERROR, f"the {owner}transform produced null")
    return _Applied(True, payload)


def _failed(error_class: ErrorClass, message: str) -> _Applied:
    return _Applied(False, failure=failure(error_class, message))


@dataclass(frozen=True, slots=True)
class Routed:
    """What one destination makes of an event: ``pending`` (send it), ``ignored`` or
    ``dead``."""

    status: DeliveryStatus
    payload: Any = None
    """What to send when the destination's transform ran; None: what the event stores."""
    failure: Failure | None = None


SEND: Final = Routed(DeliveryStatus.PENDING)
PASS: Final = Routed(DeliveryStatus.IGNORED)


def route(target: Route, body: bytes, prepared: Prepared) -> Routed:
    """Run a destination's filter, then its transform, on what the event stores (``prepared``:
    the tool's transform already applied). A failure of either (or a body that is not JSON)
    gives up on this destination only; another try would fail the same way."""
    if not target.needs_json:
        return SEND
    document = prepared.document
    if document is UNPARSED:
        return Routed(
            DeliveryStatus.DEAD,
            failure=failure(
                ErrorClass.INVALID_PAYLOAD,
                "the body is not JSON, which the destination's filter or transform needs",
            ),
        )
    applied = _apply(target.filter, target.transform, document, len(body), "destination's ")
    if applied.failure is not None:
        return Routed(DeliveryStatus.DEAD, failure=applied.failure)
    if not applied.kept:
        return PASS
    return SEND if target.transform is None else Routed(DeliveryStatus.PENDING, applied.payload)


def _too_large(which: str, limit: int) -> str:
    return (
        f"the {which}'s result exceeded the bound of {limit} bytes (4 times the body, at least "
        f"1 MiB) or of {expressions.MAX_STEPS} steps; it was stopped, so check the expression"
    )


def truthy(value: Any) -> bool:
    """JMESPath truth: false, null and empty strings, lists and objects are false; numbers,
    0 included, are true (unlike Python)."""
    return not (value is None or value is False or value in ("", [], {}))


def failure(error_class: ErrorClass, message: str) -> Failure:
    """A failure with its message on one line and bounded (it is stored and shown in lists)."""
    return Failure(error_class, " ".join(message.split())[:_MESSAGE_LIMIT])


def dead(error_class: ErrorClass, message: str) -> Prepared:
    """Store the event as ``dead``, for this reason."""
    return Prepared(EventStatus.DEAD, failure=failure(error_class, message))


@dataclass(frozen=True, slots=True)
class Done:
    """The forward succeeded (or the tool stopped forwarding meanwhile): ``processed``."""

    status: ClassVar[EventStatus] = EventStatus.PROCESSED


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """A retryable failure with budget left: deliver the message again after ``delay``."""

    delay: float
    """Seconds, already scaled by ``RETRY_TIME_SCALE``."""
    failure: Failure
    attempt: int
    """The retried message's ``attempt``: the failures in its retry series so far."""
    retry_from: float
    """The retried message's ``retry_from``: when its retry series began (epoch seconds)."""
    status: ClassVar[EventStatus] = EventStatus.RETRYING


@dataclass(frozen=True, slots=True)
class Dead:
    """No further attempt: the failure is not retryable or the retries are used up."""

    failure: Failure
    status: ClassVar[EventStatus] = EventStatus.DEAD


Settlement = Done | RetryAfter | Dead
DONE: Final = Done()


def settle(
    outcome: ForwardOutcome | None,
    message: Message,
    now: float,
    policy: RetryPolicy,
    scale: float = 1.0,
    rng: Callable[[], float] = random.random,
) -> Settlement:
    """What follows the forward of ``message`` that ended with ``outcome`` (None: nothing was
    sent because the tool no longer forwards), at epoch second ``now``. Retries are bounded by
    ``policy.max_retries`` and by ``policy.max_elapsed_time`` since the retry series began
    (``message.retry_from``, else when the event was received); ``scale`` and ``rng`` as in
    :class:`~webhook_worker.worker.retry.Backoff`."""
    failed = outcome.failure if outcome is not None else None
    if failed is None:
        return DONE
    failures = message.attempt + 1
    series_start = message.retry_from or message.received_at
    delay = Backoff(policy, scale, rng).next_attempt(failures, now - series_start, failed)
    if delay is None:
        return Dead(failed)
    return RetryAfter(delay, failed, failures, series_start)
