"""One benchmark, from start to report.

1. Start the deployment (or attach to one), and the forward sink when asked: the tool then
   delivers every event to each of ``destinations`` destinations, at a path of its own there.
2. The ceiling: the bare handler (servers.py) driven by the same load generator for the same
   duration, so the figures below can be read as a ratio of what this stack does on this
   machine right now.
3. The measured run: warm-up, wait until every warm-up event is stored, then the load; queue
   depth and memory sampled every second.
4. Drain: wait until every accepted event is stored (and has reached every destination), then
   read peak memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from webhook_worker.bench import BenchError, report, storage
from webhook_worker.bench.deployment import (
    Child,
    Deployment,
    attached,
    free_port,
    spawn,
    started,
    stop,
    wait_ready,
)
from webhook_worker.bench.load import LoadPlan, Phase, Signing
from webhook_worker.bench.observe import (
    Forwarded,
    Observer,
    Sample,
    process_memory_mb,
    sample_until,
)
from webhook_worker.bench.payloads import payload
from webhook_worker.bench.profile import Profiler
from webhook_worker.config import Settings, format_duration
from webhook_worker.tools.model import Tool

_RESULT_LIMIT = 256 * 2**20
"""Bytes a line of the load generator may have (asyncio's default is 64 KiB)."""
_COUNT_EVERY = 2.0
"""Seconds between counts of the events table while the queue is not empty."""


@dataclass(frozen=True, slots=True)
class Options:
    start: str | None = "embedded"
    """A mode from deployment.MODES, or None to drive ``url``."""
    url: str | None = None
    tool_id: str | None = None
    settings: Settings | None = None
    """With ``url``: how to reach the running deployment's database."""
    database_url: str | None = None
    redis_addr: str | None = None
    payload: str = "github-push"
    connections: int = 32
    duration: float = 10.0
    events: int | None = None
    rate: float | None = None
    warmup: float = 1.0
    timeout: float = 30.0
    forward: bool = False
    destinations: int = 1
    """With ``forward``: how many destinations the tool delivers each event to."""
    ceiling: bool = True
    pause_worker: bool = False
    """Stop the worker (SIGSTOP) while the measured load runs, resume it (SIGCONT) to drain."""
    drain_timeout: float = 300.0
    keep: bool = False
    pids: tuple[tuple[str, int], ...] = ()
    profile: Path | None = None
    retention: float | None = None
    """The soak: EVENTS_RETENTION (seconds) of the started processes; storage is sampled every
    ``storage_every`` seconds and ingest latency compared during and between sweeps."""
    retention_interval: float = 30.0
    storage_every: float = 30.0


async def run(
    options: Options, on_progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the benchmark; the report (see docs/performance.md for every field)."""
    # SIGTERM stops a run like Ctrl-C does: the processes it started are stopped, not orphaned.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    machine = report.machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="webhook-worker-bench-"))
    succeeded = False
    try:
        async with AsyncExitStack() as stack:
            sink = None
            if options.forward:
                sink = await stack.enter_async_context(_server("sink", workdir))
            deployment = await stack.enter_async_context(
                _deployment(options, workdir, sink.url if sink else None)
            )
            on_progress(f"deployment ready: {deployment.mode} at {deployment.api_url}")
            observer = Observer(deployment, sink, by_metrics=options.retention is not None)
            stack.push_async_callback(observer.close)
            plan = _plan(deployment.tool, deployment.port, options)
            ceiling = None
            if options.ceiling:
                on_progress("measuring the ceiling (bare handler, same stack)")
                ceiling = await _ceiling(plan, deployment.tool, workdir)
            on_progress("measuring the deployment")
            measured = await _measure(plan, deployment, observer, options, workdir)
        forwarded = measured["forward"]
        succeeded = measured["end_to_end"]["all_stored"] and (
            forwarded is None or forwarded["all_forwarded"]
        )
        return report.assemble(options_view(options), machine, deployment, plan, ceiling, measured)
    finally:
        if succeeded and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            on_progress(f"logs kept in {workdir}")


def options_view(options: Options) -> dict[str, Any]:
    view = asdict(options)
    view.pop("settings")
    view["profile"] = str(options.profile) if options.profile else None
    view["pids"] = dict(options.pids)
    view["payload_bytes"] = payload(options.payload).size
    return view


@asynccontextmanager
async def _deployment(
    options: Options, workdir: Path, sink_url: str | None
) -> AsyncIterator[Deployment]:
    if options.start is not None:
        base_env = dict(os.environ)
        if options.retention is not None:
            base_env |= {
                "EVENTS_RETENTION": format_duration(options.retention),
                "RETENTION_INTERVAL": format_duration(options.retention_interval),
            }
        async with started(
            options.start,
            workdir,
            base_env=base_env,
            database_url=options.database_url,
            redis_addr=options.redis_addr,
            sink_url=sink_url,
            destinations=options.destinations,
            keep=options.keep,
        ) as deployment:
            yield deployment
        return
    assert options.url is not None and options.tool_id is not None
    assert options.settings is not None
    yield await attached(
        options.url,
        options.tool_id,
        options.settings,
        pids=dict(options.pids),
    )


@asynccontextmanager
async def _server(role: str, workdir: Path, stdin: bytes | None = None) -> AsyncIterator[Child]:
    port = free_port()
    child = spawn(
        role, ["-m", "webhook_worker.bench.servers", role, str(port)], workdir, stdin=stdin
    )
    child.url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready([f"{child.url}/{'count' if role == 'sink' else 'health/live'}"], [child])
        yield child
    finally:
        await stop(child)


def _plan(tool: Tool, port: int, options: Options) -> LoadPlan:
    auth = tool.auth
    if auth.type not in ("hmac", "none"):
        raise BenchError(
            f"bench signs tools whose auth type is hmac (github, jira, bitbucket, shopify, "
            f"generic) or none; tool {tool.id!r} uses {auth.type!r}"
        )
    signing = Signing(
        header=auth.header if auth.type == "hmac" else None,
        secret=auth.secrets[0] if auth.secrets else "",
        algorithm=auth.algorithm,
        encoding=auth.encoding,
        prefix=auth.prefix,
        timestamp_header=auth.timestamp_header,
    )
    extra: tuple[tuple[str, str], ...] = ()
    if tool.provider == "github":
        extra = (
            ("X-GitHub-Hook-ID", "292929"),
            ("X-GitHub-Hook-Installation-Target-ID", "186853002"),
            ("X-GitHub-Hook-Installation-Target-Type", "repository"),
        )
    return LoadPlan(
        port=port,
        path=f"/webhooks/{tool.id}",
        payload=options.payload,
        connections=options.connections,
        duration=None if options.events is not None else options.duration,
        events=options.events,
        rate=options.rate,
        warmup=options.warmup,
        timeout=options.timeout,
        signing=signing,
        event_header=tool.event_type.header,
        delivery_header=tool.delivery_id.header,
        extra_headers=extra,
        timeline=options.retention is not None,
    )


async def _drive(
    plan: LoadPlan,
    workdir: Path,
    on_warmed: Callable[[Phase], Awaitable[None]] | None = None,
) -> tuple[Phase, Phase]:
    """Run the load generator process: warm-up, ``on_warmed``, then the measured phase."""
    log = (workdir / "load.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhook_worker.bench.load",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        # The result line holds every latency with --retention (a few MB for a long soak).
        limit=_RESULT_LIMIT,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(plan.to_json().encode() + b"\n")
        warmup = Phase(**_line(await process.stdout.readline(), "warmup", workdir))
        if on_warmed is not None:
            await on_warmed(warmup)
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        limit = None if plan.duration is None else plan.duration + plan.timeout + 60
        line = await asyncio.wait_for(process.stdout.readline(), limit)
        result = Phase(**_line(line, "result", workdir))
        await process.wait()
        return warmup, result
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


def _line(line: bytes, key: str, workdir: Path) -> dict[str, Any]:
    if not line:
        tail = (workdir / "load.log").read_text(errors="replace")[-2000:]
        raise BenchError(f"the load generator stopped before its {key} report:\n{tail}")
    data: dict[str, Any] = json.loads(line)[key]
    return data


async def _ceiling(plan: LoadPlan, tool: Tool, workdir: Path) -> dict[str, Any]:
    definition = json.dumps(dict(tool.config)).encode() + b"\n"
    async with _server("ceiling", workdir, stdin=definition) as child:
        # Flat out even when the measured run is paced: the ceiling is a capacity.
        flat_out = replace(plan, port=int(child.url.rsplit(":", 1)[1]), rate=None)
        _, phase = await _drive(flat_out, workdir)
        peak = process_memory_mb(child.pid, "VmHWM")
    return {**asdict(phase), "rss_peak_mb": peak}


async def _measure(
    plan: LoadPlan,
    deployment: Deployment,
    observer: Observer,
    options: Options,
    workdir: Path,
) -> dict[str, Any]:
    baseline = await observer.stored()
    baseline_forwarded = await observer.forwarded()
    samples: list[Sample] = []
    done = asyncio.Event()
    profiler = Profiler(options.profile, deployment.pids)
    sampler: asyncio.Task[None] | None = None
    since = time.time()
    soak = _Soak(deployment, options) if options.retention is not None else None
    cpu_before: dict[str, float | None] = {}

    async def warmed(warmup: Phase) -> None:
        nonlocal sampler, since
        await _settled(deployment, observer, baseline, baseline_forwarded, warmup.accepted, options)
        profiler.start()
        cpu_before.update(observer.cpu_seconds())
        if options.pause_worker:
            os.kill(deployment.pids["worker"], signal.SIGSTOP)
        since = time.time()
        sampler = asyncio.create_task(sample_until(observer, since, done, samples))
        if soak is not None:
            soak.start(since, done)

    try:
        try:
            warmup, result = await _drive(plan, workdir, warmed)
        finally:
            if options.pause_worker:
                os.kill(deployment.pids["worker"], signal.SIGCONT)
        load_ended = time.time()
        expected = warmup.accepted + result.accepted
        stored, forwarded = await _settled(
            deployment, observer, baseline, baseline_forwarded, expected, options
        )
        drained = time.time()
        cpu_after = observer.cpu_seconds()
    finally:
        done.set()
        if sampler is not None:
            await sampler
        if soak is not None:
            await soak.stop()
        # The profile covers the load and the drain: the worker's share is mostly the drain.
        profile = await profiler.stop()
    last_stored = await observer.last_stored_at()
    end_to_end = _rate(result, "all_stored", stored - baseline == expected, last_stored)
    end_to_end.update(
        expected=expected,
        stored=stored - baseline,
        drain_s=round(drained - load_ended, 2),
    )
    forward = None
    cpu_per_delivery = None
    if options.forward:
        forward = forward_part(result, expected, forwarded.since(baseline_forwarded))
        deliveries = result.accepted * len(forward["destinations"])
        cpu_per_delivery = _cpu_per(cpu_before, cpu_after, deliveries)
    samples.append(await observer.sample(since))
    lifecycle = soak.part(result) if soak is not None else None
    return {
        "warmup": _phase_view(warmup),
        "ingest": _phase_view(result),
        "end_to_end": end_to_end,
        "forward": forward,
        "samples": [asdict(sample) for sample in samples],
        "rss_peak_mb": {role: observer.rss_mb(role, "VmHWM") for role in ("api", "worker")},
        "cpu_us_per_event": _cpu_per(cpu_before, cpu_after, result.accepted),
        "cpu_us_per_delivery": cpu_per_delivery,
        "profile": profile,
        "lifecycle": lifecycle,
    }


def _phase_view(phase: Phase) -> dict[str, Any]:
    """A phase for the report: its latencies by the second are summed up in ``lifecycle``."""
    view = asdict(phase)
    view.pop("timeline")
    return view


class _Soak:
    """The retention soak's watchers (bench/storage.py) over the measured load."""

    def __init__(self, deployment: Deployment, options: Options) -> None:
        self._options = options
        self._storage = storage.StorageWatch(deployment)
        self._sweeps = storage.SweepWatch()
        self._samples: list[storage.StorageSample] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, since: float, done: asyncio.Event) -> None:
        self._task = asyncio.create_task(
            storage.watch(
                self._storage, since, done, self._samples, self._sweeps, self._options.storage_every
            )
        )

    async def stop(self) -> None:
        try:
            if self._task is not None:
                await self._task
        finally:
            await self._storage.close()

    def part(self, result: Phase) -> dict[str, Any]:
        assert self._options.retention is not None
        split = storage.latency_split(result.timeline or [], result.started_at, self._sweeps.sweeps)
        return storage.part(
            self._options.retention,
            self._options.retention_interval,
            self._samples,
            self._sweeps,
            split,
        )


def forward_part(result: Phase, expected: int, forwarded: Forwarded) -> dict[str, Any]:
    """The report's ``forward``: whether each of ``expected`` events reached every destination
    (what the sink received since the run began), events/s and deliveries/s until the last one
    arrived, and the counts per destination."""
    complete = forwarded.every_destination >= expected
    part = _rate(result, "all_forwarded", complete, forwarded.last_at)
    fan_out = len(forwarded.distinct)
    per_s = part["events_per_s"]
    part.update(
        deliveries_per_s=round(per_s * fan_out, 1) if per_s is not None else None,
        expected=expected,
        forwarded=forwarded.every_destination,
        destinations=list(forwarded.distinct),
        deliveries_expected=expected * fan_out,
        delivered=sum(forwarded.distinct.values()),
        per_destination={
            dest: {"delivered": delivered, "requests": forwarded.requests[dest]}
            for dest, delivered in forwarded.distinct.items()
        },
    )
    return part


def _cpu_per(
    before: dict[str, float | None], after: dict[str, float | None], count: int
) -> dict[str, float | None]:
    """CPU microseconds per accepted event (or per delivery) over the measured load and its
    drain, per process and for the whole machine (load generator, database, Redis and anything
    else included)."""
    per_one: dict[str, float | None] = {}
    for key, start in before.items():
        end = after.get(key)
        if start is None or end is None or count <= 0:
            per_one[key] = None
        else:
            per_one[key] = round(1e6 * (end - start) / count, 1)
    return per_one


def _rate(result: Phase, key: str, complete: bool, last_at: float | None) -> dict[str, Any]:
    """From the first accepted request to the last event stored (or forwarded)."""
    first = result.first_accept_at
    seconds = (last_at - first) if last_at is not None and first is not None else None
    per_s = result.accepted / seconds if seconds and seconds > 0 else None
    return {
        key: complete,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "events_per_s": round(per_s, 1) if per_s is not None else None,
    }


async def _settled(
    deployment: Deployment,
    observer: Observer,
    baseline: int,
    baseline_forwarded: Forwarded,
    expected: int,
    options: Options,
) -> tuple[int, Forwarded]:
    """Poll until ``expected`` events beyond the baselines are stored (and have reached every
    destination), or the drain timeout passes; the counts last seen. The queue depth is cheap
    to read and is polled often; the events are counted once it is empty, and otherwise every
    few seconds (another tool's traffic may keep the queue busy)."""
    deadline = time.monotonic() + options.drain_timeout
    counted = time.monotonic()
    stored = await observer.stored()
    while True:
        deployment.check_alive()
        forwarded = await observer.forwarded()
        now = time.monotonic()
        if now - counted >= _COUNT_EVERY or await observer.queue_depth() == 0:
            stored, counted = await observer.stored(), now
        done = stored - baseline >= expected and (
            not options.forward or forwarded.since(baseline_forwarded).every_destination >= expected
        )
        if done or now > deadline:
            return stored, forwarded
        await asyncio.sleep(0.1)
