"""The retry policy and error classification (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook_worker.config import RetryPolicy
from webhook_worker.vocabulary import RETRYABLE_ERRORS, ErrorClass
from webhook_worker.worker.retry import Backoff, Failure, http_failure, parse_retry_after

POLICY = RetryPolicy(
    max_retries=5, initial_interval=1, max_interval=10, multiplier=2, max_elapsed_time=60
)
RETRYABLE = Failure("http_5xx", "boom")


@pytest.mark.parametrize(("failures", "base"), [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10)])
@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
def test_delays_grow_exponentially_within_the_jitter_and_the_cap(
    failures: int, base: float, draw: float
) -> None:
    delay = Backoff(POLICY, rng=lambda: draw).delay(failures)
    assert base * 0.8 - 1e-9 <= delay <= min(base * 1.2, 10) + 1e-9
    if draw == 0.5:
        assert delay == pytest.approx(base)


def test_retries_stop_after_max_retries() -> None:
    backoff = Backoff(POLICY, rng=lambda: 0.5)
    assert backoff.next_attempt(5, 0, RETRYABLE) is not None
    assert backoff.next_attempt(6, 0, RETRYABLE) is None


def test_retries_stop_when_the_next_would_pass_max_elapsed_time() -> None:
    backoff = Backoff(POLICY, rng=lambda: 0.5)
    assert backoff.next_attempt(1, 59.5, RETRYABLE) is None
    assert backoff.next_attempt(1, 50, RETRYABLE) == pytest.approx(1)


def test_non_retryable_failures_are_never_retried() -> None:
    assert Backoff(POLICY).next_attempt(1, 0, Failure("http_4xx", "no")) is None


def test_retry_after_wins_but_is_capped_by_max_interval() -> None:
    backoff = Backoff(POLICY, rng=lambda: 0.5)
    assert backoff.next_attempt(1, 0, http_failure(429, "7")) == 7
    assert backoff.next_attempt(1, 0, http_failure(503, "3600")) == 10


def test_the_time_scale_shrinks_every_delay() -> None:
    backoff = Backoff(POLICY, scale=0.001, rng=lambda: 0.5)
    assert backoff.delay(3) == pytest.approx(0.004)
    assert backoff.next_attempt(1, 0, http_failure(429, "5")) == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("status", "error_class", "retryable"),
    [
        (500, "http_5xx", True),
        (503, "http_5xx", True),
        (408, "http_408", True),
        (429, "http_429", True),
        (400, "http_4xx", False),
        (404, "http_4xx", False),
        (422, "http_4xx", False),
        (301, "http_3xx", False),
    ],
)
def test_http_classification(status: int, error_class: str, retryable: bool) -> None:
    failure = http_failure(status)
    assert (failure.error_class, failure.retryable, failure.http_status) == (
        error_class,
        retryable,
        status,
    )


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert http_failure(500, "5").retry_after is None  # only 429 and 503 carry one


def _documented_classes() -> dict[str, bool]:
    """docs/processing.md's table of error classes: class -> retried."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "processing.md").read_text()
    table = text.split("### Which failures are retried", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    return {name.strip().strip("`"): retried.strip() == "yes" for name, retried in rows}


def test_the_documented_error_classes_are_the_vocabulary() -> None:
    documented = _documented_classes()
    assert documented == {c.value: c.retryable for c in ErrorClass if c is not ErrorClass.UNKNOWN}


def test_only_what_a_forward_can_fail_with_is_retryable() -> None:
    # Retryable means another attempt may succeed. A database outage is no attempt: the worker
    # holds the message and retries the write, so it has no error class at all.
    from_forwards = {http_failure(status).error_class for status in range(300, 600)}
    from_forwards |= {ErrorClass.TIMEOUT, ErrorClass.CONNECTION_ERROR}
    assert RETRYABLE_ERRORS.issubset(from_forwards)
    assert "database_unavailable" not in set(ErrorClass)
