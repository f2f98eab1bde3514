"""The worked examples in docs/processing.md do what the page says.

The page marks its examples with HTML comments (invisible when rendered), each followed by a
JSON block where it has one::

    <!-- example NAME tool -->                  a tool definition
    <!-- example NAME payload EVENT_TYPE -->    a body of that event type, for the tool NAME
    <!-- example NAME stored -->                what is stored for the payload before it
    <!-- example NAME stored-as-received -->    the payload before it is stored unchanged
    <!-- example NAME ignored -->               the payload before it is filtered out

Each tool goes through the real validation (``parse_tool``, as when it is saved) and each
payload through the worker's own plan (mode, filter, transform, per-event overrides) and its
own decision (:func:`webhook_worker.worker.decide.prepare`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from webhook_worker.config import RetryPolicy
from webhook_worker.tools.model import Tool, parse_tool
from webhook_worker.vocabulary import EventStatus
from webhook_worker.worker import decide
from webhook_worker.worker.plan import Plan, Plans

DOC = Path(__file__).resolve().parents[1] / "docs" / "processing.md"

_MARKER = re.compile(
    r"<!-- example (?P<name>\S+) (?P<kind>tool|payload|stored-as-received|stored|ignored)"
    r"(?: (?P<event>\S+))? -->"
    r"(?:\s*```json\n(?P<body>.*?)\n```)?",
    re.DOTALL,
)
_NEEDS_BODY = {"tool", "payload", "stored"}
IGNORED = object()
AS_RECEIVED = object()


@dataclass
class Case:
    name: str
    event_type: str
    payload: Any
    expected: Any = None


@dataclass
class Example:
    definition: dict[str, Any]
    cases: list[Case] = field(default_factory=list)


def _examples() -> dict[str, Example]:
    examples: dict[str, Example] = {}
    waiting: dict[str, Case] = {}
    for match in _MARKER.finditer(DOC.read_text(encoding="utf-8")):
        name, kind, body = match["name"], match["kind"], match["body"]
        where = f"docs/processing.md: example {name} {kind}"
        assert (body is not None) == (kind in _NEEDS_BODY), f"{where}: JSON block missing/extra"
        data: Any = json.loads(body) if body is not None else None
        if kind == "tool":
            examples[name] = Example(data)
        elif kind == "payload":
            assert name in examples and name not in waiting, f"{where}: out of order"
            assert match["event"], f"{where}: no event type"
            waiting[name] = Case(name, match["event"], data)
        else:
            case = waiting.pop(name)
            case.expected = {"stored": data, "ignored": IGNORED}.get(kind, AS_RECEIVED)
            examples[name].cases.append(case)
    assert not waiting, f"payloads without an expected outcome: {sorted(waiting)}"
    return examples


EXAMPLES = _examples()
CASES = [case for example in EXAMPLES.values() for case in example.cases]


def test_the_page_has_its_examples() -> None:
    assert set(EXAMPLES) == {"github", "stripe", "jira", "overrides"}
    for name in ("github", "stripe", "jira"):
        outcomes = [case.expected is IGNORED for case in EXAMPLES[name].cases]
        assert False in outcomes and True in outcomes, f"{name}: a kept and an ignored case"


def _plan(case: Case) -> tuple[Tool, Plan]:
    tool = parse_tool(EXAMPLES[case.name].definition)  # raises as saving the tool would
    return tool, Plans(RetryPolicy()).for_event(tool, case.event_type)


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.name}-{c.event_type}-{n}" for n, c in enumerate(CASES)]
)
def test_example(case: Case) -> None:
    tool, plan = _plan(case)
    if tool.event_type.compiled is not None:  # the preset reads the type from the body
        assert tool.event_type.compiled.search(case.payload) == case.event_type

    # What the worker decides for this body (its own code: filter, then transform).
    prepared = decide.prepare(plan, json.dumps(case.payload).encode())
    if case.expected is IGNORED:
        assert prepared.status == EventStatus.IGNORED
        return
    assert prepared.status in (EventStatus.PROCESSED, EventStatus.PENDING), prepared.failure
    if case.expected is AS_RECEIVED:
        assert plan.transform is None
        assert prepared.payload is None  # nothing but the body is stored
    else:
        assert plan.transform is not None
        assert prepared.payload == case.expected


def test_the_override_example_forwards_only_what_it_says() -> None:
    [ping, invoice] = EXAMPLES["overrides"].cases
    assert _plan(ping)[1].mode == "store_only" and not _plan(ping)[1].forwards
    assert _plan(invoice)[1].forwards
    other = Case("overrides", "customer.created", {"livemode": True})
    assert _plan(other)[1].mode == "transform_and_store" and not _plan(other)[1].forwards
