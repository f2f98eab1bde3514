"""The retention sweep's pacing (storage/pace.py): it rests twice as long as each transaction
took, in the first half of its interval only, so it never falls behind because of its rests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from webhook_worker.storage import pace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.rests: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.rests.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(pace, "monotonic", fake.monotonic)
    monkeypatch.setattr(pace, "sleep", fake.sleep)
    yield fake


async def test_after_each_transaction_the_sweep_rests_twice_as_long(clock: Clock) -> None:
    async with pace.paced():
        clock.now += 0.05
    async with pace.paced():
        clock.now += 0.2
    assert clock.rests == pytest.approx([0.1, 0.4])


async def test_no_rest_after_an_error(clock: Clock) -> None:
    with pytest.raises(RuntimeError):
        async with pace.paced():
            clock.now += 0.05
            raise RuntimeError("the database went away")
    assert clock.rests == []


async def test_a_sweep_rests_only_in_the_first_half_of_its_interval(clock: Clock) -> None:
    sweep = pace.Pace(budget=5.0)  # a sweep every 10 s
    clock.now += 3.0
    async with sweep():
        clock.now += 1.0
    assert clock.rests == pytest.approx([2.0])  # 3 s in: resting
    async with sweep():
        clock.now += 1.0
    assert clock.rests[1:] == pytest.approx([0.0])  # 6 s in: flat out
