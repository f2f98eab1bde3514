"""Per-tool admission of forwards (pure logic)."""

from __future__ import annotations

import pytest

from webhook_worker.worker.lanes import Admission, ToolLanes


def test_a_tool_gets_limit_in_flight_then_limit_waiting_then_deferrals() -> None:
    lanes: ToolLanes[int] = ToolLanes(2)
    assert [lanes.admit("slow", n) for n in range(6)] == [
        Admission.START,
        Admission.START,
        Admission.WAIT,
        Admission.WAIT,
        Admission.DEFER,
        Admission.DEFER,
    ]
    assert (lanes.in_flight("slow"), lanes.waiting("slow")) == (2, 2)
    # Another tool is not affected by the full lane.
    assert lanes.admit("fast", 100) is Admission.START


def test_finishing_hands_out_the_waiting_in_order_then_frees_the_lane() -> None:
    lanes: ToolLanes[int] = ToolLanes(2)
    for n in range(4):
        lanes.admit("t", n)
    assert lanes.finish("t") == 2
    assert lanes.finish("t") == 3
    assert (lanes.in_flight("t"), lanes.waiting("t")) == (2, 0)
    assert lanes.finish("t") is None
    assert lanes.finish("t") is None
    assert (lanes.in_flight("t"), lanes.waiting("t")) == (0, 0)
    assert lanes.admit("t", 9) is Admission.START


def test_a_lane_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ToolLanes(0)
