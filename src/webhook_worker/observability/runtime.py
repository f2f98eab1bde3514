"""The process's runtime, mapped onto the metric names dashboards built for the Go seed use:

=====================================  ===============================================
metric                                 what it measures here
=====================================  ===============================================
``webhook_goroutines_total``           asyncio tasks alive in the event loop
``webhook_memory_allocated_bytes``     resident set size of the process (RSS)
``webhook_gc_runs_total``              garbage collections (``gc`` callbacks, all generations)
``webhook_gc_pause_duration_seconds``  time each collection stopped the process
=====================================  ===============================================
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from webhook_worker.observability.metrics import MEMORY_LIMIT

GOROUTINES = Gauge("webhook_goroutines_total", "asyncio tasks alive in the event loop.")
MEMORY = Gauge("webhook_memory_allocated_bytes", "Resident memory of the process (RSS), in bytes.")
GC_RUNS = Counter("webhook_gc_runs_total", "Garbage collections, all generations.")
GC_PAUSE = Histogram(
    "webhook_gc_pause_duration_seconds",
    "How long each garbage collection paused the process.",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_gc_started: float | None = None


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif _gc_started is not None:
        GC_RUNS.inc()
        GC_PAUSE.observe(time.perf_counter() - _gc_started)
        _gc_started = None


def install_gc_hooks() -> None:
    """Count collections from now on (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def resident_bytes() -> int:
    """Current RSS; falls back to the peak where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_limit_bytes() -> int:
    """The cgroup memory limit of this process (containers), 0 when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit_file:
                text = limit_file.read().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            return 0
        limit = int(text)
        # cgroup v1 reports "no limit" as a number near 2**63.
        return 0 if limit >= 2**60 else limit
    return 0


def task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop
        return 0


def refresh() -> None:
    """Update the gauges (called on each scrape, in the event loop)."""
    GOROUTINES.set(task_count())
    MEMORY.set(resident_bytes())
    MEMORY_LIMIT.set(memory_limit_bytes())
