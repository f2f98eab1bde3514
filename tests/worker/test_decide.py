"""The worker's decisions (pure logic): what to store for an event, what follows a forward."""

from __future__ import annotations

import tracemalloc
from typing import Any, TypedDict

import jmespath
import orjson
import pytest

from webhook_worker.config import RetryPolicy
from webhook_worker.queue.base import Message
from webhook_worker.tools.model import parse_tool
from webhook_worker.vocabulary import DeliveryStatus, ErrorClass, EventStatus, Mode
from webhook_worker.worker import decide
from webhook_worker.worker.forwarder import ForwardOutcome
from webhook_worker.worker.plan import Plan, Plans
from webhook_worker.worker.retry import Failure, http_failure

POLICY = RetryPolicy(
    max_retries=3, initial_interval=1, max_interval=10, multiplier=2, max_elapsed_time=60
)
RECEIVED = 1_700_000_000.0


def plan(
    filter: str | None = None, transform: str | None = None, mode: Mode = Mode.STORE_ONLY
) -> Plan:
    return Plan(
        mode,
        jmespath.compile(filter) if filter else None,
        jmespath.compile(transform) if transform else None,
        (),
        POLICY,
    )


def body(document: Any) -> bytes:
    return orjson.dumps(document)


# prepare ---------------------------------------------------------------------------------


def test_without_filter_or_transform_the_body_is_kept_unread() -> None:
    assert decide.prepare(plan(), b"not json at all") is decide.STORED


def test_a_forwarding_plan_forwards() -> None:
    tool = parse_tool(
        {
            "id": "fwd",
            "auth": {"type": "none"},
            "mode": "store_and_forward",
            "forward": {"url": "http://127.0.0.1:9/hook"},
            "transform": "{id: id}",
        }
    )
    forwarding = Plans(POLICY).for_event(tool, None)
    assert decide.prepare(forwarding, body({"id": 1})) == decide.Prepared(
        EventStatus.PENDING, {"id": 1}
    )


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (0, True),  # JMESPath: numbers are true, 0 included
        (1, True),
        ("x", True),
        ([0], True),
        ({"a": None}, True),
        (True, True),
        (False, False),
        (None, False),
        ("", False),
        ([], False),
        ({}, False),
    ],
)
def test_the_filter_follows_jmespath_truth(value: Any, kept: bool) -> None:
    prepared = decide.prepare(plan(filter="n"), body({"n": value}))
    assert prepared is (decide.STORED if kept else decide.IGNORED)


def test_a_missing_field_filters_the_event_out() -> None:
    assert decide.prepare(plan(filter="action == 'opened'"), body({})) is decide.IGNORED


def test_the_transform_result_is_the_stored_payload() -> None:
    prepared = decide.prepare(plan(transform="{repo: repository.name}"), body(_PUSH))
    assert prepared == decide.Prepared(EventStatus.PROCESSED, {"repo": "ww"})


def test_the_filter_runs_before_the_transform() -> None:
    shaping = plan(filter="action != 'deleted'", transform="repository")
    assert decide.prepare(shaping, body({**_PUSH, "action": "deleted"})) is decide.IGNORED
    assert decide.prepare(shaping, body(_PUSH)).payload == {"name": "ww"}


def test_a_transform_yielding_null_is_dead() -> None:
    prepared = decide.prepare(plan(transform="nothing.here"), body(_PUSH))
    assert prepared.status == EventStatus.DEAD
    assert prepared.failure == Failure(ErrorClass.TRANSFORM_ERROR, "the transform produced null")
    assert prepared.payload is None


class _Shaping(TypedDict, total=False):
    filter: str
    transform: str


@pytest.mark.parametrize("needs", [{"filter": "a"}, {"transform": "a"}])
def test_a_body_that_is_not_json_is_dead_when_json_is_needed(needs: _Shaping) -> None:
    prepared = decide.prepare(plan(**needs), b"\xff not json")
    assert prepared.status == EventStatus.DEAD
    assert prepared.failure is not None
    assert prepared.failure.error_class == ErrorClass.INVALID_PAYLOAD
    assert not prepared.failure.retryable


def test_a_failing_filter_or_transform_is_dead_with_its_class() -> None:
    # abs() of a string is a JMESPath type error at search time, not at compile time.
    filtered = decide.prepare(plan(filter="abs(name)"), body({"name": "x"}))
    transformed = decide.prepare(plan(transform="abs(name)"), body({"name": "x"}))
    assert filtered.failure is not None and transformed.failure is not None
    assert filtered.failure.error_class == ErrorClass.FILTER_ERROR
    assert transformed.failure.error_class == ErrorClass.TRANSFORM_ERROR
    assert filtered.failure.message.startswith("the filter failed: ")


def test_failure_messages_are_one_bounded_line() -> None:
    failure = decide.failure(ErrorClass.POISON, "one\n  two\tthree " + "x" * 2000)
    assert failure.message.startswith("one two three x")
    assert len(failure.message) == 1000


_PUSH = {"action": "opened", "repository": {"name": "ww"}}


# Expressions that build enormous values from a small body.
def _doubling(step: str, times: int) -> str:
    return "|".join([step] * times)


def test_a_transform_doubling_its_result_is_dead_with_a_clear_message() -> None:
    # Shared in memory, so JMESPath itself returns at once; the stored JSON would be 2**40
    # elements.
    prepared = decide.prepare(plan(transform=_doubling("[@,@]", 40)), body(_PUSH))
    status = prepared.status  # alone: a failed assertion must not print the payload
    assert status == EventStatus.DEAD
    assert prepared.failure is not None
    assert prepared.failure.error_class == ErrorClass.TRANSFORM_ERROR
    assert "the transform's result exceeded the bound" in prepared.failure.message
    assert not prepared.failure.retryable
    assert prepared.payload is None


@pytest.mark.parametrize(
    ("which", "expression", "document"),
    [
        ("transform", _doubling("[@,@]", 60), _PUSH),
        ("transform", f"to_string({_doubling('[@,@]', 60)})", _PUSH),
        ("transform", _doubling("join('', [@,@])", 60), "ab"),  # a string, really doubled
        ("transform", _doubling("[@,@][]", 60), [1]),  # flattened: lists really doubled
        ("transform", f"length([{_doubling('[@,@]', 60)}][*][*][*][*][*][*][*][*][*])", [1]),
        (
            "transform",  # two chains built apart: == would compare 2**60 leaves
            f"[{_doubling('[@,@]', 60)}, {_doubling('[@,@]', 60)}] | [0] == [1]",
            _PUSH,
        ),
        ("transform", f"map(&to_string([{_doubling('[@,@]', 14)}]), [*][*])", [list(range(5000))]),
        ("filter", f"length(to_string({_doubling('[@,@]', 60)})) > `0`", _PUSH),
    ],
)
@pytest.mark.timeout(60)
def test_explosive_expressions_are_refused_quickly_and_in_little_memory(
    which: str, expression: str, document: Any
) -> None:
    # Unbounded, these take hours and gigabytes: the test's timeout is the time bound, the
    # traced peak below the memory bound (no timed assertion: the machine's speed varies).
    shaping: _Shaping = {"filter": expression} if which == "filter" else {"transform": expression}
    prepared = decide.prepare(plan(**shaping), body(document))
    tracemalloc.start()  # slows it down: a second run for the memory
    try:
        decide.prepare(plan(**shaping), body(document))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assert prepared.status == EventStatus.DEAD
    assert prepared.failure is not None
    expected = ErrorClass.FILTER_ERROR if which == "filter" else ErrorClass.TRANSFORM_ERROR
    assert prepared.failure.error_class == expected
    assert f"the {which}'s result exceeded the bound" in prepared.failure.message


@pytest.mark.parametrize(
    ("expression", "document"),
    [
        ("[@,@]", {"blob": "x" * 100_000}),  # twice a 100 KB body: within the bound
        (
            "items[*].{id: id, all: @}",
            {"items": [{"id": n, "tags": ["a"] * 20} for n in range(500)]},
        ),
        ("sort_by(items, &id)[-1].id", {"items": [{"id": n} for n in range(2000)]}),
        (
            "items[?id > `5`].tags[] | join(',', @)",
            {"items": [{"id": n, "tags": ["t"]} for n in range(9)]},
        ),
        ("{a: a, b: [a, a][], c: to_string(a), d: a[1:]}", {"a": [1, 2, 3]}),
        ("*.x", {"p": {"x": 1}, "q": {"x": 2}}),
    ],
)
def test_ordinary_expressions_give_what_jmespath_gives(expression: str, document: Any) -> None:
    prepared = decide.prepare(plan(transform=expression), body(document))
    assert prepared.status == EventStatus.PROCESSED, prepared.failure
    assert prepared.payload == jmespath.search(expression, document)


# settle ----------------------------------------------------------------------------------


def message(attempt: int = 0, retry_from: float | None = None) -> Message:
    return Message(
        event_id="e",
        tool_id="t",
        event_type=None,
        delivery_id="d",
        received_at=RECEIVED,
        headers=b"{}",
        body=b"{}",
        attempt=attempt,
        retry_from=retry_from,
    )


def failed(failure: Failure) -> ForwardOutcome:
    return ForwardOutcome(12.0, failure.http_status, failure)


def settle(outcome: ForwardOutcome | None, msg: Message, elapsed: float = 0.0) -> decide.Settlement:
    start = msg.retry_from or msg.received_at
    return decide.settle(outcome, msg, start + elapsed, POLICY, rng=lambda: 0.5)


def test_a_2xx_or_no_forward_is_done() -> None:
    assert settle(ForwardOutcome(3.0, 200, None), message()) is decide.DONE
    assert settle(None, message()) is decide.DONE
    assert decide.DONE.status == EventStatus.PROCESSED


def test_a_retryable_failure_is_retried_with_the_next_message_fields() -> None:
    failure = http_failure(503)
    settled = settle(failed(failure), message(), elapsed=2.0)
    assert settled == decide.RetryAfter(1.0, failure, attempt=1, retry_from=RECEIVED)
    assert settled.status == EventStatus.RETRYING


def test_retries_keep_their_series_start() -> None:
    # A dead letter retried by hand started a new series at retry_from.
    settled = settle(failed(http_failure(500)), message(attempt=2, retry_from=RECEIVED + 500))
    assert settled == decide.RetryAfter(4.0, http_failure(500), 3, RECEIVED + 500)


def test_a_non_retryable_failure_is_dead_at_once() -> None:
    failure = http_failure(404)
    assert settle(failed(failure), message()) == decide.Dead(failure)
    assert decide.Dead(failure).status == EventStatus.DEAD


def test_retries_exhausted_is_dead() -> None:
    failure = http_failure(500)
    assert isinstance(settle(failed(failure), message(attempt=2)), decide.RetryAfter)
    assert settle(failed(failure), message(attempt=3)) == decide.Dead(failure)


def test_a_retry_past_max_elapsed_time_is_dead() -> None:
    failure = Failure(ErrorClass.TIMEOUT, "no answer")
    assert isinstance(settle(failed(failure), message(), elapsed=58.9), decide.RetryAfter)
    assert settle(failed(failure), message(), elapsed=59.5) == decide.Dead(failure)


def test_retry_after_wins_over_the_backoff_capped_by_max_interval() -> None:
    soon = http_failure(429, "7")
    late = http_failure(429, "3600")
    assert settle(failed(soon), message()) == decide.RetryAfter(7.0, soon, 1, RECEIVED)
    assert settle(failed(late), message()) == decide.RetryAfter(10.0, late, 1, RECEIVED)


def test_the_time_scale_shrinks_delays_and_the_elapsed_bound() -> None:
    failure = http_failure(500)
    fast = decide.settle(failed(failure), message(), RECEIVED + 0.05, POLICY, 0.001, lambda: 0.5)
    assert isinstance(fast, decide.RetryAfter)
    assert fast.delay == pytest.approx(0.001)
    assert fast == decide.RetryAfter(fast.delay, failure, 1, RECEIVED)
    late = decide.settle(failed(failure), message(), RECEIVED + 0.0595, POLICY, 0.001)
    assert late == decide.Dead(failure)


def fan_out_plan(tool_transform: str | None = None, **destination: Any) -> Plan:
    tool = parse_tool(
        {
            "id": "fan",
            "transform": tool_transform,
            "mode": "transform_and_store" if tool_transform else "store_only",
            "destinations": [{"id": "d", "url": "http://127.0.0.1:9/hook", **destination}],
        }
    )
    return Plans(POLICY).for_event(tool, None)


def routed(plan: Plan, document: Any) -> decide.Routed:
    raw = body(document)
    return decide.route(plan.routes[0], raw, decide.prepare(plan, raw))


def test_a_destination_decides_on_what_the_tool_stores() -> None:
    plan = fan_out_plan("{n: n}", filter="n > `1`", transform="{twice: [n, n]}")
    assert routed(plan, {"n": 2, "x": 0}) == decide.Routed(
        DeliveryStatus.PENDING, {"twice": [2, 2]}
    )
    assert routed(plan, {"n": 1}) == decide.PASS
    assert routed(fan_out_plan(), {"n": 1}) is decide.SEND  # nothing to evaluate


def test_a_destination_that_cannot_decide_gives_up_on_itself_only() -> None:
    failing = routed(fan_out_plan(transform="missing"), {"n": 1})
    assert failing.status == DeliveryStatus.DEAD and failing.failure is not None
    assert failing.failure == Failure(
        ErrorClass.TRANSFORM_ERROR, "the destination's transform produced null"
    )
    plan = fan_out_plan(filter="n")
    not_json = decide.route(plan.routes[0], b"not json", decide.prepare(plan, b"not json"))
    assert decide.prepare(plan, b"not json").status == EventStatus.PENDING  # the event is kept
    assert not_json.failure is not None
    assert not_json.failure.error_class == ErrorClass.INVALID_PAYLOAD
