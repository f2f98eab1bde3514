"""When to try again: the retry policy, and which failures deserve another try.

Delays grow exponentially with ±20 % jitter (so a burst of failures does not retry in lockstep)
and are bounded twice: by the number of retries and by the time since the event arrived. A
``Retry-After`` from the target wins over the computed delay, capped by ``max_interval``.

Classification (documented in docs/processing.md):

=========================  =========  ==============================================
error class                retryable  cause
=========================  =========  ==============================================
``timeout``                yes        the target did not answer within the timeout
``connection_error``       yes        DNS, refused, reset, TLS failure
``http_5xx``               yes        the target answered 500-599
``http_408``               yes        request timeout
``http_429``               yes        rate limited (``Retry-After`` honoured)
``http_4xx``               no         any other 4xx: the request itself is wrong
``http_3xx``               no         a redirect: forwards do not follow them; fix the URL
``forbidden_target``       no         the target is in a private network (SSRF guard)
``transform_error``        no         the tool's transform failed on this payload
``filter_error``           no         the tool's filter failed on this payload
``invalid_payload``        no         the payload is not what the tool needs (e.g. not JSON)
``poison``                 no         delivered too often without being acknowledged
``storage_error``          no         this event cannot be written (not an outage)
=========================  =========  ==============================================

The database being away is not a failure of an event's and has no class: the worker keeps the
messages unacknowledged and retries the write in place (docs/processing.md, "When the database
is away"), so an outage never uses up an event's retries and never makes an attempt row.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from webhook_worker.config import RetryPolicy
from webhook_worker.vocabulary import RETRYABLE_ERRORS, ErrorClass

JITTER: Final = 0.2


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one attempt, in a form the policy and the metrics can use."""

    error_class: str
    """An :class:`~webhook_worker.vocabulary.ErrorClass` value."""
    message: str
    http_status: int | None = None
    retry_after: float | None = None
    """Seconds the target asked us to wait (429/503 ``Retry-After``)."""

    @property
    def retryable(self) -> bool:
        return self.error_class in RETRYABLE_ERRORS


def http_failure(status: int, retry_after: str | None = None, detail: str = "") -> Failure:
    """Classify a non-2xx answer from a forward target."""
    if status >= 500:
        error_class = ErrorClass.HTTP_5XX
    elif status < 400:
        error_class = ErrorClass.HTTP_3XX  # redirects are not followed: the URL needs fixing
    elif status == 408:
        error_class = ErrorClass.HTTP_408
    elif status == 429:
        error_class = ErrorClass.HTTP_429
    else:
        error_class = ErrorClass.HTTP_4XX
    wait = parse_retry_after(retry_after) if status in (429, 503) else None
    message = f"the target answered HTTP {status}" + (f": {detail}" if detail else "")
    return Failure(error_class, message[:1000], status, wait)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date. None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Backoff:
    """Decides the delay before the next attempt, or that there is none.

    ``scale`` multiplies every delay: 1.0 in production; tests set RETRY_TIME_SCALE (e.g. 0.001)
    so the whole policy runs in milliseconds without mocking time.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        scale: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._scale = scale
        self._rng = rng

    def delay(self, failures: int) -> float:
        """The jittered delay after the ``failures``-th failed attempt (1-based), in seconds."""
        p = self.policy
        base = min(p.initial_interval * p.multiplier ** max(failures - 1, 0), p.max_interval)
        jittered = base * (1 - JITTER + 2 * JITTER * self._rng())
        return min(jittered, p.max_interval) * self._scale

    def next_attempt(self, failures: int, elapsed: float, failure: Failure) -> float | None:
        """Seconds to wait before retrying, or None when the event should be dead-lettered:
        the failure is not retryable, ``max_retries`` retries were made, or the retry would
        land past ``max_elapsed_time`` since the event arrived (``elapsed`` is unscaled)."""
        p = self.policy
        if not failure.retryable or failures > p.max_retries:
            return None
        wait = self.delay(failures)
        if failure.retry_after is not None:
            wait = min(failure.retry_after, p.max_interval) * self._scale
        if elapsed + wait > p.max_elapsed_time * self._scale:
            return None
        return wait
