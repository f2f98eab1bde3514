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

The destinations example is a YAML file for ``tools apply -f``, read as that command reads it,
with what each destination makes of each payload::

    <!-- destinations NAME tools -->                 a YAML list of tool definitions
    <!-- destinations NAME payload EVENT_TYPE -->    a body, for the first tool of NAME
    <!-- destinations NAME sent DEST -->             what DEST is sent for the payload before it
    <!-- destinations NAME sent-as-received DEST --> DEST is sent that payload as received
    <!-- destinations NAME ignored DEST -->          DEST's filter drops that payload

and every destination of the tool has one of the last three for every payload
(:func:`webhook_worker.worker.decide.route`, after ``prepare``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from webhook_worker.cli.common import read_document
from webhook_worker.config import RetryPolicy
from webhook_worker.tools.model import Tool, parse_tool
from webhook_worker.vocabulary import DeliveryStatus, EventStatus
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


_DESTINATIONS_MARKER = re.compile(
    r"<!-- destinations (?P<name>\S+) (?P<kind>tools|payload|sent-as-received|sent|ignored)"
    r"(?: (?P<arg>\S+))? -->"
    r"(?:\s*```(?:json|yaml)\n(?P<body>.*?)\n```)?",
    re.DOTALL,
)


@dataclass
class Delivered:
    event_type: str
    payload: Any
    expected: dict[str, Any] = field(default_factory=dict)
    """By destination id: the JSON it is sent, AS_RECEIVED or IGNORED."""


@dataclass
class FanOut:
    tools: list[dict[str, Any]]
    cases: list[Delivered] = field(default_factory=list)


def _fan_outs(tmp: Path) -> dict[str, FanOut]:
    found: dict[str, FanOut] = {}
    for match in _DESTINATIONS_MARKER.finditer(DOC.read_text(encoding="utf-8")):
        name, kind, arg, body = match["name"], match["kind"], match["arg"], match["body"]
        where = f"docs/processing.md: destinations {name} {kind} {arg or ''}"
        assert (body is not None) == (kind in ("tools", "payload", "sent")), f"{where}: block?"
        if kind == "tools":
            # Read as `webhook-worker tools apply -f FILE` reads it.
            path = tmp / f"{name}.yaml"
            path.write_text(body, encoding="utf-8")
            tools = read_document(str(path))
            assert isinstance(tools, list) and tools, f"{where}: expected a list of tools"
            found[name] = FanOut(tools)
        elif kind == "payload":
            assert arg, f"{where}: no event type"
            found[name].cases.append(Delivered(arg, json.loads(body)))
        else:
            assert arg and found[name].cases, f"{where}: no destination, or no payload before"
            expected = found[name].cases[-1].expected
            assert arg not in expected, f"{where}: said twice"
            expected[arg] = {"sent": json.loads(body) if body else None, "ignored": IGNORED}.get(
                kind, AS_RECEIVED
            )
    return found


def test_the_destinations_example_does_what_the_page_says(tmp_path: Path) -> None:
    fan_outs = _fan_outs(tmp_path)
    assert set(fan_outs) == {"github-fanout"}
    for name, example in fan_outs.items():
        tools = [parse_tool(definition) for definition in example.tools]  # as `tools apply`
        tool = tools[0]
        assert example.cases, f"{name}: no payloads"
        for case in example.cases:
            plan = Plans(RetryPolicy()).for_event(tool, case.event_type)
            assert sorted(case.expected) == sorted(r.id for r in plan.routes), case.event_type
            body = json.dumps(case.payload).encode()
            prepared = decide.prepare(plan, body)
            assert prepared.status == EventStatus.PENDING, prepared.failure
            for route in plan.routes:
                routed = decide.route(route, body, prepared)
                expected = case.expected[route.id]
                where = f"{case.event_type} to {route.id}"
                if expected is IGNORED:
                    assert routed.status == DeliveryStatus.IGNORED, where
                    continue
                assert routed.status == DeliveryStatus.PENDING, (where, routed.failure)
                if expected is AS_RECEIVED:
                    assert routed.payload is None and prepared.payload is None, where
                else:
                    assert routed.payload == expected, where
        sent = {d for case in example.cases for d, e in case.expected.items() if e is not IGNORED}
        dropped = {d for case in example.cases for d, e in case.expected.items() if e is IGNORED}
        assert sent == {r.id for r in plan.routes}, f"{name}: a destination never sent anything"
        assert dropped, f"{name}: no destination's filter is shown dropping anything"
