"""``webhook-worker bench``: load the service with signed webhooks and report what it sustains.

The work is in :mod:`webhook_worker.bench`; this module turns options into a run and prints the
report. docs/performance.md has the commands and what each figure means.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.text import Text

from webhook_worker.bench import BenchError, report, runner
from webhook_worker.bench.deployment import MODES
from webhook_worker.bench.load import HOST
from webhook_worker.bench.payloads import NAMES
from webhook_worker.bench.profile import py_spy
from webhook_worker.cli.common import console, errors, fail, load_settings, print_table, run_async
from webhook_worker.cli.plain import plain, printable
from webhook_worker.config import parse_duration


def register(app: typer.Typer) -> None:
    app.command(help="Load the service with signed webhooks; report ingest, latency, throughput.")(
        bench
    )


def bench(
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help=f"Start a deployment: {', '.join(MODES)} (the default unless --url is given).",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help=f"Drive a running API instead, e.g. http://{HOST}:8080."),
    ] = None,
    tool: Annotated[
        str | None,
        typer.Option("--tool", help="With --url: the tool to post to (secret read from the DB)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="With --start postgres*: the database (default DATABASE_URL)."
        ),
    ] = None,
    redis_addr: Annotated[
        str | None,
        typer.Option("--redis-addr", help="With --start postgres-redis (default REDIS_ADDR)."),
    ] = None,
    duration: Annotated[
        float, typer.Option("--duration", help="Seconds of measured load.", min=0.1)
    ] = 10.0,
    events: Annotated[
        int | None,
        typer.Option("--events", help="Send exactly this many requests instead.", min=1),
    ] = None,
    connections: Annotated[
        int, typer.Option("--connections", help="Concurrent keep-alive connections.", min=1)
    ] = 32,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", help="Pace the load at this many requests/s (default: flat out).", min=1
        ),
    ] = None,
    payload: Annotated[
        str,
        typer.Option("--payload", help=f"Body sent: {', '.join(NAMES)}."),
    ] = "github-push",
    warmup: Annotated[
        float, typer.Option("--warmup", help="Seconds of unmeasured load first.", min=0)
    ] = 1.0,
    forward: Annotated[
        bool,
        typer.Option(
            "--forward", help="store_and_forward to a local sink; report until forwarded."
        ),
    ] = False,
    destinations: Annotated[
        int,
        typer.Option(
            "--destinations",
            help="With --forward: deliver each event to N destinations on the sink (1: the "
            "tool's forward, destination default; more: d1..dN).",
            min=1,
        ),
    ] = 1,
    ceiling: Annotated[
        bool, typer.Option("--ceiling/--no-ceiling", help="Measure the bare-handler ceiling too.")
    ] = True,
    pause_worker: Annotated[
        bool,
        typer.Option(
            "--pause-worker",
            help="A burst: stop the worker (SIGSTOP) during the measured load, resume it to "
            "drain. Shows what ingest alone absorbs; needs a separate worker process.",
        ),
    ] = False,
    drain_timeout: Annotated[
        float,
        typer.Option("--drain-timeout", help="Seconds to wait for every event to be stored."),
    ] = 300.0,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Also write the report here.")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", metavar="DIR", help="py-spy the API and worker into DIR."),
    ] = None,
    api_pid: Annotated[
        int | None, typer.Option("--api-pid", help="With --url: the API's pid, for its memory.")
    ] = None,
    worker_pid: Annotated[
        int | None,
        typer.Option("--worker-pid", help="With --url: the worker's pid, for its memory."),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the logs, data, tool and events of a started run."),
    ] = False,
    retention: Annotated[
        str | None,
        typer.Option(
            "--retention",
            metavar="DURATION",
            help="The retention soak: EVENTS_RETENTION of the started processes (e.g. 2m); "
            "samples the database size and compares ingest latency during and between sweeps.",
        ),
    ] = None,
    retention_interval: Annotated[
        str,
        typer.Option(
            "--retention-interval", metavar="DURATION", help="With --retention: RETENTION_INTERVAL."
        ),
    ] = "30s",
    storage_every: Annotated[
        str,
        typer.Option(
            "--storage-every",
            metavar="DURATION",
            help="With --retention: how often to sample the database size.",
        ),
    ] = "30s",
) -> None:
    """Run one benchmark; exit 1 when it could not run or an accepted event was not stored."""
    if payload not in NAMES:
        fail(f"--payload: expected one of {', '.join(NAMES)}, got {payload!r}")
    settings = None
    if url is not None:
        if start is not None:
            fail("--url drives a running deployment and --start starts one: give one of them")
        if tool is None:
            fail("--url needs --tool: the tool whose webhooks to send")
        if forward:
            fail("--forward delivers to a sink the benchmark starts; give --start, not --url")
        _check_loopback(url, "--url")
        settings = load_settings(quiet_logs=True)
    else:
        start = start or "embedded"
        if start not in MODES:
            fail(f"--start: expected one of {', '.join(MODES)}, got {start!r}")
        if tool is not None:
            fail("--tool is for --url; a started deployment gets a tool of its own")
        load_settings(quiet_logs=True)  # the logging set-up; a bad variable stops us here
    if destinations > 1 and not forward:
        fail("--destinations is the fan-out of --forward: add --forward")
    if pause_worker and (start == "embedded" or (url is not None and worker_pid is None)):
        fail(
            "--pause-worker needs a separate worker process: --start postgres-redis or "
            "postgres, or --url with --worker-pid"
        )
    retention_s, interval_s, every_s = _soak(retention, retention_interval, storage_every, url)
    if profile is not None:
        try:
            py_spy()
        except BenchError as exc:
            fail(str(exc))
    pids = tuple((role, pid) for role, pid in (("api", api_pid), ("worker", worker_pid)) if pid)
    options = runner.Options(
        start=None if url is not None else start,
        url=url,
        tool_id=tool,
        settings=settings,
        database_url=database_url,
        redis_addr=redis_addr,
        payload=payload,
        connections=connections,
        duration=duration,
        events=events,
        rate=rate,
        warmup=warmup,
        forward=forward,
        destinations=destinations,
        ceiling=ceiling,
        pause_worker=pause_worker,
        drain_timeout=drain_timeout,
        keep=keep,
        pids=pids,
        profile=profile,
        retention=retention_s,
        retention_interval=interval_s,
        storage_every=every_s,
    )
    try:
        result = run_async(runner.run(options, _progress))
    except BenchError as exc:
        fail(str(exc), 1)
    except asyncio.CancelledError:
        fail("stopped by SIGTERM; the processes it started were stopped", 143)
    print_table(report.table(result))
    hot = report.profile_table(result)
    if hot is not None:
        print_table(hot)
    if json_path is not None:
        report.write_json(result, json_path)
        console.print(plain(f"report written to {json_path}"))
    if not result["end_to_end"]["all_stored"]:
        part = result["end_to_end"]
        fail(
            f"only {part['stored']} of {part['expected']} accepted events were stored within "
            f"--drain-timeout {drain_timeout:g}s",
            1,
        )
    forwarded = result["forward"]
    if forwarded is not None and not forwarded["all_forwarded"]:
        fail(report.undelivered(forwarded, drain_timeout), 1)


def _soak(
    retention: str | None, interval: str, every: str, url: str | None
) -> tuple[float | None, float, float]:
    """The soak's options in seconds: retention (None without ``--retention``), sweep interval,
    storage sampling interval."""
    if retention is None:
        for given, option in ((interval, "--retention-interval"), (every, "--storage-every")):
            if given != "30s":
                fail(f"{option} is part of the retention soak: add --retention")
        return None, 30.0, 30.0
    if url is not None:
        fail("--retention sets EVENTS_RETENTION of the processes the benchmark starts; give "
             "--start, not --url")  # fmt: skip
    retention_s, interval_s, every_s = (
        _positive_duration(option, text)
        for option, text in (
            ("--retention", retention),
            ("--retention-interval", interval),
            ("--storage-every", every),
        )
    )
    return retention_s, interval_s, every_s


def _positive_duration(option: str, text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        fail(f"{option}: {exc} (a duration such as 2m, 30s, 1h)")
    if value <= 0:
        fail(f"{option}: must be more than 0, got {text!r}")
    return value


def _check_loopback(url: str, option: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != HOST:
        fail(f"{option}: the benchmark only sends load to http://{HOST}; got {url!r}")


def _progress(message: str) -> None:
    errors.print(Text.assemble(("bench:", "dim"), " ", printable(message)), soft_wrap=True)
