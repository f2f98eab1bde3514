"""Per-tool admission of forwards (pure logic, on a fake clock)."""

from __future__ import annotations

import pytest

from webhook_worker.worker.lanes import Admission, ToolLanes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_healthy_tool_starts_limit_and_queues_the_rest_of_a_burst() -> None:
    lanes: ToolLanes[int] = ToolLanes(2, slow_after=1.0, clock=Clock())
    admitted = [lanes.admit("t", n) for n in range(10)]
    assert admitted == [Admission.START] * 2 + [Admission.WAIT] * 8
    assert (lanes.in_flight("t"), lanes.waiting("t")) == (2, 8)
    assert lanes.shed() == []


def test_a_slow_tool_keeps_limit_waiting_and_defers_the_rest() -> None:
    clock = Clock()
    lanes: ToolLanes[int] = ToolLanes(2, slow_after=1.0, clock=clock)
    for n in range(6):
        lanes.admit("slow", n)
    clock.now += 1.5  # the two forwards in flight have hung for 1.5 s
    # The newest waiting beyond the limit are shed; new arrivals are deferred.
    assert lanes.shed() == [5, 4]
    assert lanes.admit("slow", 6) is Admission.DEFER
    assert (lanes.in_flight("slow"), lanes.waiting("slow")) == (2, 2)
    # Another tool is not affected.
    assert lanes.admit("fast", 100) is Admission.START


def test_finishing_hands_out_the_waiting_in_order_then_frees_the_lane() -> None:
    clock = Clock()
    lanes: ToolLanes[int] = ToolLanes(2, slow_after=1.0, clock=clock)
    for n in range(4):
        lanes.admit("t", n)
    assert lanes.finish("t", 0) == 2
    assert lanes.finish("t", 1) == 3
    assert (lanes.in_flight("t"), lanes.waiting("t")) == (2, 0)
    assert lanes.finish("t", 2) is None
    assert lanes.finish("t", 3) is None
    assert (lanes.in_flight("t"), lanes.waiting("t")) == (0, 0)
    assert lanes.admit("t", 9) is Admission.START


def test_a_lane_is_slow_by_its_oldest_forward_in_flight() -> None:
    clock = Clock()
    lanes: ToolLanes[int] = ToolLanes(1, slow_after=1.0, clock=clock)
    lanes.admit("t", 0)
    lanes.admit("t", 1)
    clock.now += 2
    assert lanes.admit("t", 2) is Admission.DEFER
    # Item 0 ends; item 1 starts now, so the lane is healthy again and takes a line.
    assert lanes.finish("t", 0) == 1
    assert lanes.admit("t", 3) is Admission.WAIT
    assert lanes.admit("t", 4) is Admission.WAIT


def test_a_lane_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ToolLanes(0)


def test_lanes_sharing_a_limit_each_get_an_equal_part_of_it() -> None:
    lanes: ToolLanes[int] = ToolLanes(6, slow_after=1.0, clock=Clock())
    for lane in ("t/a", "t/b", "t/c"):
        admitted = [lanes.admit(lane, n, share=3) for n in range(4)]
        assert admitted == [Admission.START] * 2 + [Admission.WAIT] * 2
    assert [lanes.in_flight(lane) for lane in ("t/a", "t/b", "t/c")] == [2, 2, 2]
    # More lanes than the limit: each still keeps one.
    assert lanes.admit("u/x", 0, share=10) is Admission.START
    assert lanes.admit("u/x", 1, share=10) is Admission.WAIT
