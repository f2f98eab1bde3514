"""The benchmark's report: one JSON document (``--json PATH``) and the table printed from it.
docs/performance.md explains every figure."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from webhook_worker.bench.deployment import Deployment
from webhook_worker.bench.load import LoadPlan
from webhook_worker.bench.payloads import payload

SCHEMA = 1
"""Bumped when a field of the JSON changes meaning or goes away."""


def machine_facts() -> dict[str, Any]:
    """What the figures depend on: CPUs, memory, Python, versions, and how busy the box was."""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory_total_mb": _memory_total_mb(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("webhook-worker", "uvicorn", "uvloop")},
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "source": _source(),
    }


def assemble(
    options: dict[str, Any],
    machine: dict[str, Any],
    deployment: Deployment,
    plan: LoadPlan,
    ceiling: dict[str, Any] | None,
    measured: dict[str, Any],
) -> dict[str, Any]:
    ingest = dict(measured["ingest"])
    elapsed = ingest["elapsed"]
    ingest["accepted_per_s"] = round(ingest["accepted"] / elapsed, 1) if elapsed else 0.0
    ceiling_rate = ceiling["requests_per_s"] if ceiling else None
    samples = measured["samples"]
    depths = [s["queue_depth"] for s in samples if s["queue_depth"] is not None]
    sent = payload(plan.payload)
    return {
        "schema": SCHEMA,
        "command": "webhook-worker " + shlex.join(sys.argv[1:]),
        "argv": list(sys.argv),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            **machine,
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        },
        "options": options,
        "deployment": deployment.describe(),
        "payload": {"name": sent.name, "bytes": sent.size, "event_type": sent.event_type},
        "ceiling": ceiling,
        "ingest": ingest,
        "ratio_to_ceiling": (
            round(ingest["accepted_per_s"] / ceiling_rate, 3) if ceiling_rate else None
        ),
        "end_to_end": measured["end_to_end"],
        "forward": measured["forward"],
        "queue_depth": {
            "max": max(depths) if depths else None,
            "last": depths[-1] if depths else None,
            "samples": [{"t": s["t"], "depth": s["queue_depth"]} for s in samples],
        },
        "rss_peak_mb": measured["rss_peak_mb"],
        "cpu_us_per_event": measured["cpu_us_per_event"],
        "cpu_us_per_delivery": measured["cpu_us_per_delivery"],
        "samples": samples,
        "client": {
            "ingest": client_cost(measured["ingest"]),
            "ceiling": client_cost(ceiling) if ceiling else None,
        },
        "warmup": measured["warmup"],
        "profile": measured["profile"],
        "lifecycle": measured.get("lifecycle"),
    }


def undelivered(forward: dict[str, Any], drain_timeout: float) -> str:
    """Why a forward run failed: how many events reached every destination, and what each
    destination that fell short received."""
    short = ", ".join(
        f"{dest} {counts['delivered']}"
        for dest, counts in forward["per_destination"].items()
        if counts["delivered"] < forward["expected"]
    )
    return (
        f"only {forward['forwarded']} of {forward['expected']} events reached every destination "
        f"within --drain-timeout {drain_timeout:g}s; distinct events received by the "
        f"destinations short of that: {short}"
    )


def client_cost(phase: dict[str, Any]) -> dict[str, Any]:
    """The load generator's own CPU: share of one core, and per request."""
    cpu, elapsed, requests = phase["client_cpu_s"], phase["elapsed"], phase["requests"]
    return {
        "cpu_s": cpu,
        "cpu_percent_of_one_core": round(100 * cpu / elapsed, 1) if elapsed else None,
        "cpu_us_per_request": round(1e6 * cpu / requests, 1) if requests else None,
    }


def table(report: dict[str, Any]) -> Table:
    """The report as a two-column table, one section per concern."""
    out = Table(title="webhook-worker bench", show_header=True, title_justify="left")
    out.add_column("measure", style="bold")
    out.add_column("value")
    deployment, options, load = report["deployment"], report["options"], report["ingest"]
    size = report["payload"]
    bound = f"{options['events']} events" if options["events"] else f"{options['duration']:g} s"
    out.add_row("deployment", f"{deployment['mode']}: {deployment['database']}")
    out.add_row("queue", deployment["queue"])
    rate = f", paced at {options['rate']:g} req/s" if options["rate"] else ""
    paused = ", worker paused during the load" if options.get("pause_worker") else ""
    out.add_row(
        "load",
        f"{size['name']} ({size['bytes']} B), {options['connections']} connections, "
        f"{bound}{rate}{paused}",
    )
    out.add_section()
    ceiling = report["ceiling"]
    if ceiling:
        out.add_row("ceiling (bare handler)", f"{ceiling['requests_per_s']:,.0f} req/s")
        out.add_row("ceiling latency", _latency(ceiling["latency_ms"]))
    out.add_row("ingest", f"{load['accepted_per_s']:,.0f} accepted/s ({load['requests']} requests)")
    if report["ratio_to_ceiling"] is not None:
        out.add_row("ingest / ceiling", f"{report['ratio_to_ceiling']:.2f}")
    out.add_row("ingest latency", _latency(load["latency_ms"]))
    statuses = ", ".join(f"{code}: {n}" for code, n in load["statuses"].items()) or "none"
    errors = ", ".join(f"{name}: {n}" for name, n in load["errors"].items())
    out.add_row("status codes", statuses + (f"; no answer: {errors}" if errors else ""))
    out.add_section()
    for key, label, done in (
        ("end_to_end", "stored", "all_stored"),
        ("forward", "forwarded", "all_forwarded"),
    ):
        part = report[key]
        if not part:
            continue
        count = part.get(label, 0)
        verdict = "all" if part[done] else "[red]NOT all[/]"
        rate_text = f"{part['events_per_s']:,.0f} events/s" if part["events_per_s"] else "-"
        seconds = f" over {part['seconds']:.1f} s" if part["seconds"] else ""
        out.add_row(f"end-to-end, {label}", f"{rate_text}{seconds}")
        out.add_row(label, f"{verdict} ({count} of {part['expected']}, warm-up included)")
        if key == "forward":
            _fan_out_rows(out, part)
    out.add_row("drain after load", f"{report['end_to_end']['drain_s']:.1f} s")
    depth = report["queue_depth"]
    out.add_row("queue depth", f"max {_number(depth['max'])}, last {_number(depth['last'])}")
    rss = report["rss_peak_mb"]
    ceiling_rss = f", ceiling {_number(ceiling['rss_peak_mb'])}" if ceiling else ""
    out.add_row(
        "peak RSS (MiB)",
        f"api {_number(rss.get('api'))}, worker {_number(rss.get('worker'))}{ceiling_rss}",
    )
    out.add_row("CPU per event (µs)", _cpu(report["cpu_us_per_event"]))
    if report["cpu_us_per_delivery"] is not None:
        out.add_row("CPU per delivery (µs)", _cpu(report["cpu_us_per_delivery"]))
    lifecycle = report.get("lifecycle")
    if lifecycle:
        _lifecycle_rows(out, lifecycle)
    out.add_section()
    client = report["client"]["ingest"]
    out.add_row(
        "load generator CPU",
        f"{_number(client['cpu_percent_of_one_core'])}% of a core, "
        f"{_number(client['cpu_us_per_request'])} µs/request",
    )
    machine = report["machine"]
    out.add_row(
        "machine",
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"load {machine['load_average_at_start'][0]:.2f} at start",
    )
    return out


def _fan_out_rows(out: Table, part: dict[str, Any]) -> None:
    """Deliveries: one per event and destination; and each destination's own count."""
    rate = f"{part['deliveries_per_s']:,.0f} deliveries/s" if part["deliveries_per_s"] else "-"
    out.add_row(
        "deliveries",
        f"{rate}; {part['delivered']} of {part['deliveries_expected']} to "
        f"{len(part['destinations'])} destination(s)",
    )
    shown = []
    for dest, counts in part["per_destination"].items():
        repeated = counts["requests"] - counts["delivered"]
        shown.append(
            f"{dest} {counts['delivered']}" + (f" (+{repeated} repeats)" if repeated else "")
        )
    out.add_row("per destination", ", ".join(shown))


def _lifecycle_rows(out: Table, part: dict[str, Any]) -> None:
    """The soak: retention, the size series, and ingest latency during and between sweeps."""
    out.add_section()
    out.add_row(
        "retention",
        f"{part['retention_s']:g} s, sweep every {part['retention_interval_s']:g} s; "
        f"{len(part['sweeps'])} sweeps seen",
    )
    series = ", ".join(
        f"{sample['t']:.0f}s {sample['bytes'] / 2**20:,.0f}" for sample in part["storage"]
    )
    out.add_row("database size (MiB)", series or "-")
    size = part["size"]
    if size["growth_after_settle"] is not None:
        out.add_row(
            f"size after {size['settle_s']:g} s",
            f"{size['settled_bytes'] / 2**20:,.0f} MiB then, {size['last_bytes'] / 2**20:,.0f} "
            f"at the end, {size['max_bytes'] / 2**20:,.0f} at most "
            f"({100 * size['growth_after_settle']:+.1f}%)",
        )
    events = ", ".join(f"{sample['t']:.0f}s {sample['events']:,}" for sample in part["storage"])
    out.add_row("events stored", events or "-")
    latency = part["latency_ms"]
    for key, label in (("during_sweeps", "during sweeps"), ("between_sweeps", "between sweeps")):
        window = latency[key]
        shown = (
            f"p50 {window['p50']:.1f} / p99 {window['p99']:.1f} ms ({window['requests']:,} "
            f"requests, {window['seconds']} s)"
            if window["requests"]
            else "no requests"
        )
        out.add_row(f"ingest latency {label}", shown)
    if latency["p99_ratio"] is not None:
        out.add_row("p99 during / between sweeps", f"{latency['p99_ratio']:.2f}")


def _cpu(per_one: dict[str, float | None]) -> str:
    sink = f", sink {_number(per_one['sink'])}" if "sink" in per_one else ""
    return (
        f"api {_number(per_one.get('api'))}, worker {_number(per_one.get('worker'))}{sink}, "
        f"whole machine {_number(per_one.get('machine'))}"
    )


def profile_table(report: dict[str, Any], rows: int = 8) -> Table | None:
    """The functions py-spy most often found running, per process (``--profile``)."""
    profile = report["profile"]
    if not profile:
        return None
    out = Table(title="where the time went (py-spy samples)", title_justify="left")
    out.add_column("process", style="bold")
    out.add_column("function")
    out.add_column("self %", justify="right")
    out.add_column("total %", justify="right")
    for role, summary in profile.items():
        label = f"{role} ({summary['samples']} samples)"
        for entry in summary["self"][:rows]:
            out.add_row(
                label, entry["function"], f"{entry['percent']:.1f}", f"{entry['total_percent']:.1f}"
            )
        for entry in summary["ours"][: rows // 2]:
            out.add_row(f"{role}, our code", entry["function"], "", f"{entry['total_percent']:.1f}")
        out.add_section()
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _latency(latency: dict[str, float]) -> str:
    if not latency:
        return "-"
    return " / ".join(f"{name} {latency[name]:.1f}" for name in ("p50", "p95", "p99")) + " ms"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def _proc_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        return None
    return None


def _memory_total_mb() -> int | None:
    total = _proc_field("/proc/meminfo", "MemTotal")
    return int(total.split()[0]) // 1024 if total else None


def _source() -> dict[str, Any] | None:
    """The git commit the package runs from (and whether the checkout has changes), when it
    runs from a checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=False
            )
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return None
    return {
        "commit": commit,
        "changed_files": len((git("status", "--porcelain") or "").splitlines()),
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
