"""``--profile DIR``: py-spy samples the API and worker processes from the start of the
measured load until every event is stored (the drain is where a worker's time shows).

Each process gets ``DIR/<role>.txt`` in py-spy's raw (collapsed stack) format, which
speedscope.app and flamegraph tools read; the report lists the functions with the most samples
on top of the stack, and this package's own functions by samples anywhere in the stack. py-spy
samples without stopping the process (``--nonblocking``) and skips idle threads, so an event
loop waiting on its sockets costs no samples: 100% is one core busy for the whole time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from webhook_worker.bench import BenchError

RATE: Final = 100
"""Samples per second."""
TOP: Final = 15
_LINE = re.compile(r":\d+\)$")
_OURS = "webhook_worker/"
# Frames every sample of a process passes through: not where the time goes.
_ENTRY_POINTS = ("webhook_worker/cli/", "webhook_worker/__main__")


def py_spy() -> str:
    """The py-spy executable (beside this Python first), or BenchError saying how to get it."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy: pip install py-spy")
    return found


class Profiler:
    def __init__(self, directory: Path | None, pids: dict[str, int]) -> None:
        self._directory = directory
        # ``run`` is API and worker in one process: one profile.
        self._targets = (
            {"run": pids["api"]}
            if pids.get("api") and pids.get("api") == pids.get("worker")
            else dict(pids)
        )
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._summary: dict[str, Any] | None = None
        self._executable = py_spy() if directory is not None else ""

    def start(self) -> None:
        if self._directory is None:
            return
        self._directory.mkdir(parents=True, exist_ok=True)
        for role, pid in self._targets.items():
            self._running[role] = subprocess.Popen(
                [
                    self._executable,
                    "record",
                    "--pid", str(pid),
                    "--rate", str(RATE),
                    "--format", "raw",
                    "--nonblocking",
                    "--output", str(self._directory / f"{role}.txt"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=(self._directory / f"{role}.py-spy.log").open("wb"),
            )  # fmt: skip

    async def stop(self) -> dict[str, Any] | None:
        """Stop sampling (py-spy writes its file on SIGINT); the summary per role."""
        if self._directory is None or self._summary is not None or not self._running:
            return self._summary
        for process in self._running.values():
            process.send_signal(signal.SIGINT)
        for process in self._running.values():
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
        self._summary = {role: summarise(self._directory / f"{role}.txt") for role in self._running}
        return self._summary


def summarise(path: Path) -> dict[str, Any]:
    """Samples in a collapsed-stack file; the functions most often on top of the stack
    (``self``, with how often they are anywhere in it), and this package's functions most often
    anywhere in it (``ours``: where in our code the time goes, callees included)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"file": str(path), "samples": 0, "self": [], "ours": []}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count

    def percent(count: int) -> float:
        return round(100 * count / total, 1) if total else 0.0

    return {
        "file": str(path),
        "samples": total,
        "self": [
            {"function": name, "percent": percent(n), "total_percent": percent(anywhere[name])}
            for name, n in own.most_common(TOP)
        ],
        "ours": [
            {"function": name, "total_percent": percent(n)}
            for name, n in anywhere.most_common()
            if _OURS in name and not any(entry in name for entry in _ENTRY_POINTS)
        ][:TOP],
    }
