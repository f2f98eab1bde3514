"""``bench --retention``, the retention soak (bench/storage.py): sweeps read from metrics pages,
latency split by sweep, the size verdict, the options, and a short soak end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from webhook_worker.bench.observe import parse_metrics
from webhook_worker.bench.storage import (
    LAST_SWEEP,
    MARGIN,
    SWEEP_DURATION,
    StorageSample,
    Sweep,
    SweepWatch,
    growth,
    latency_split,
)

PAGE = """# HELP webhook_events_processed_total Events the worker finished, by final status.
# TYPE webhook_events_processed_total counter
webhook_events_processed_total{event_type="push",status="processed",tool_id="a"} 3.0
webhook_events_processed_total{event_type="ping",status="ignored",tool_id="a"} 2.0
webhook_events_processed_total{event_type="push",status="processed",tool_id="a-b"} 7.0
webhook_retention_last_sweep_timestamp_seconds 1.7e+09
webhook_queue_depth NaN
"""


def test_metrics_are_summed_over_the_series_with_the_labels_asked() -> None:
    assert parse_metrics(PAGE, tool_id="a") == {"webhook_events_processed_total": 5.0}
    everything = parse_metrics(PAGE)
    assert everything["webhook_events_processed_total"] == 12.0
    assert everything[LAST_SWEEP] == 1.7e9
    assert "webhook_queue_depth" not in everything  # not a number yet


def test_a_sweep_is_seen_when_its_timestamp_moves_with_a_gauge_duration() -> None:
    watch = SweepWatch()
    assert watch.update({}) is None  # no sweep metric (yet)
    assert watch.update({LAST_SWEEP: 100.0, SWEEP_DURATION: 0.5}) == Sweep(100.0, 0.5)
    assert watch.update({LAST_SWEEP: 100.0, SWEEP_DURATION: 0.5}) is None  # the same sweep
    assert watch.update({LAST_SWEEP: 130.0, SWEEP_DURATION: 2.0}) == Sweep(130.0, 2.0)
    assert watch.sweeps == [Sweep(100.0, 0.5), Sweep(130.0, 2.0)]


def test_a_histogram_duration_is_the_growth_of_its_sum_per_sweep() -> None:
    watch = SweepWatch()
    total, count = f"{SWEEP_DURATION}_sum", f"{SWEEP_DURATION}_count"
    watch.update({total: 1.0, count: 1.0})
    sweep = watch.update({LAST_SWEEP: 200.0, total: 4.0, count: 2.0})
    assert sweep == Sweep(200.0, 3.0)


def test_latency_is_split_by_the_seconds_that_overlap_a_sweep() -> None:
    start = 1000.0
    # Ten seconds of load; one sweep ran from 1004.5 to 1005.0, so with the margin seconds
    # 3 to 5 (1003..1006) overlap it.
    timeline = [[1.0, 2.0]] * 10
    timeline[4] = [50.0, 60.0]
    split = latency_split(timeline, start, [Sweep(1005.0, 0.5)])
    assert MARGIN == 1.0
    assert split["during_sweeps"]["seconds"] == 3
    assert split["between_sweeps"]["seconds"] == 7
    assert split["during_sweeps"]["requests"] == 6
    assert split["during_sweeps"]["max"] == 60.0
    assert split["between_sweeps"]["max"] == 2.0
    assert split["p99_ratio"] == 30.0  # 60 ms against 2 ms


def test_without_a_sweep_there_is_no_ratio() -> None:
    split = latency_split([[1.0], [2.0]], 0.0, [])
    assert split["during_sweeps"] == {"requests": 0, "seconds": 0}
    assert split["between_sweeps"]["requests"] == 2
    assert split["p99_ratio"] is None


def test_growth_compares_the_size_once_settled_with_the_end() -> None:
    samples = [StorageSample(t, size, 0, 0) for t, size in ((0, 10), (30, 50), (60, 80), (90, 88))]
    verdict = growth(samples, settle=60)
    assert verdict["settled_bytes"] == 80 and verdict["last_bytes"] == 88
    assert verdict["max_bytes"] == 88
    assert verdict["growth_after_settle"] == 0.1
    assert growth(samples[:2], settle=60)["growth_after_settle"] is None


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, "-m", "webhook_worker", "bench", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retention-interval", "5s"], "--retention-interval is part of the retention soak"),
        (["--storage-every", "5s"], "--storage-every is part of the retention soak"),
        (["--retention", "soon"], "--retention: "),
        (["--retention", "0s"], "--retention: must be more than 0"),
        (
            ["--retention", "2m", "--url", "http://127.0.0.1:9", "--tool", "gh"],
            "give --start, not --url",
        ),
    ],
)
def test_soak_options_are_checked(args: list[str], message: str) -> None:
    completed = _bench(*args)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert message in completed.stderr


@pytest.mark.bench
@pytest.mark.timeout(360)
def test_soak_reports_the_size_series_and_latency_by_sweep(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    completed = _bench(
        "--start", "embedded", "--retention", "2s", "--retention-interval", "1s",
        "--storage-every", "1s", "--duration", "5", "--rate", "50", "--connections", "2",
        "--warmup", "0.5", "--no-ceiling", "--json", str(out),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    lifecycle = report["lifecycle"]
    assert lifecycle["retention_s"] == 2 and lifecycle["retention_interval_s"] == 1
    storage = lifecycle["storage"]
    assert len(storage) >= 4, storage  # one a second over five
    assert all(sample["bytes"] > 0 for sample in storage)
    assert storage[-1]["t"] >= 4.5
    split = lifecycle["latency_ms"]
    seconds = split["during_sweeps"]["seconds"] + split["between_sweeps"]["seconds"]
    assert seconds >= 5
    requests = split["during_sweeps"]["requests"] + split["between_sweeps"]["requests"]
    assert requests == report["ingest"]["requests"]
    assert "timeline" not in report["ingest"]
    assert report["end_to_end"]["all_stored"] is True
    assert "database size (MiB)" in completed.stdout
