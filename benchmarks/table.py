"""Print a Markdown table of ``webhook-worker bench --json`` reports, one row per report.

    .venv/bin/python benchmarks/table.py benchmarks/results/*.json
    .venv/bin/python benchmarks/table.py --fan-out benchmarks/results/fan-out-*.json

docs/performance.md's tables of measured figures are made with it; ``--fan-out`` gives the
columns of its fan-out table (``--forward --destinations N`` runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    "run",
    "ceiling req/s",
    "ingest accepted/s",
    "ratio",
    "p50 / p95 / p99 ms",
    "end-to-end events/s",
    "forwarded events/s",
    "queue depth max",
    "peak RSS api / worker MiB",
    "CPU µs/event api / worker / machine",
    "client CPU",
    "load avg",
)


def row(report: dict[str, Any], name: str) -> list[str]:
    ingest, ceiling = report["ingest"], report["ceiling"]
    latency = ingest["latency_ms"]
    forward = report["forward"]
    rss = report["rss_peak_mb"]
    options = report["options"]
    paced = f" @{options['rate']:g}/s" if options.get("rate") else ""
    paced += " burst" if options.get("pause_worker") else ""
    paced += " forward" if options.get("forward") else ""
    cpu = report.get("cpu_us_per_event") or {}
    return [
        f"{report['deployment']['mode']}{paced} ({name})",
        f"{ceiling['requests_per_s']:,.0f}" if ceiling else "-",
        f"{ingest['accepted_per_s']:,.0f}",
        f"{report['ratio_to_ceiling']:.2f}" if report["ratio_to_ceiling"] else "-",
        f"{latency['p50']:.1f} / {latency['p95']:.1f} / {latency['p99']:.1f}",
        _rate(report["end_to_end"]),
        _rate(forward) if forward else "-",
        f"{report['queue_depth']['max']:,.0f}",
        f"{rss['api']:.0f} / {rss['worker']:.0f}",
        " / ".join(_number(cpu.get(key)) for key in ("api", "worker", "machine")),
        f"{report['client']['ingest']['cpu_percent_of_one_core']:.0f}%",
        f"{report['machine']['load_average_at_start'][0]:.1f}",
    ]


FAN_OUT_COLUMNS = (
    "run",
    "destinations",
    "ingest accepted/s",
    "forwarded events/s",
    "deliveries/s",
    "drain s",
    "CPU µs/event api / worker / sink / machine",
    "worker CPU µs/delivery",
    "load avg start / end",
)


def fan_out_row(report: dict[str, Any], name: str) -> list[str]:
    forward = report["forward"]
    per_event = report["cpu_us_per_event"]
    per_delivery = report["cpu_us_per_delivery"]
    machine = report["machine"]
    return [
        f"{report['deployment']['mode']} ({name})",
        f"{len(forward['destinations'])}",
        f"{report['ingest']['accepted_per_s']:,.0f}",
        _rate(forward),
        _number(forward["deliveries_per_s"]),
        f"{report['end_to_end']['drain_s']:.1f}",
        " / ".join(_number(per_event.get(key)) for key in ("api", "worker", "sink", "machine")),
        _number(per_delivery.get("worker")),
        f"{machine['load_average_at_start'][0]:.1f} / {machine['load_average_at_end'][0]:.1f}",
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(part: dict[str, Any]) -> str:
    rate = part["events_per_s"]
    complete = part.get("all_stored", part.get("all_forwarded"))
    return (f"{rate:,.0f}" if rate else "-") + ("" if complete else " (LOST)")


def main(args: list[str]) -> None:
    fan_out = args[:1] == ["--fan-out"]
    columns, make_row = (FAN_OUT_COLUMNS, fan_out_row) if fan_out else (COLUMNS, row)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for path in args[1:] if fan_out else args:
        report = json.loads(Path(path).read_text())
        print("| " + " | ".join(make_row(report, Path(path).stem)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
