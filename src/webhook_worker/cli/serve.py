"""``run``, ``api``, ``worker`` and ``migrate``: the long-running processes.

SIGTERM and SIGINT stop them gracefully: the API stops accepting, requests in flight finish and
their events are enqueued; the worker stops reading, finishes and acknowledges its batches; the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator

import typer
import uvicorn
from starlette.types import ASGIApp

from webhook_worker.api import listener
from webhook_worker.api.app import create_app, health_app
from webhook_worker.cli.common import console, load_settings, run_async
from webhook_worker.cli.plain import plain
from webhook_worker.config import Settings, format_duration
from webhook_worker.observability import tracing
from webhook_worker.runtime import apply_migrations, open_runtime

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command(help="API and worker in one process (embedded SQLite unless configured).")(run)
    app.command(help="The HTTP API only: ingest and management.")(api)
    app.command(help="A worker only; serves health and metrics on HEALTH_ENDPOINT.")(worker)
    app.command(help="Apply database migrations (idempotent).")(migrate)


def run() -> None:
    settings = load_settings()
    run_async(_serve(settings, with_api=True, with_worker=True, migrate_first=True))


def api() -> None:
    settings = load_settings()
    run_async(_serve(settings, with_api=True, with_worker=False, migrate_first=False))


def worker() -> None:
    settings = load_settings()
    run_async(_serve(settings, with_api=False, with_worker=True, migrate_first=False))


def migrate() -> None:
    settings = load_settings()
    before, after = run_async(apply_migrations(settings))
    where = settings.describe_database()
    if before == after:
        console.print(plain(f"schema already current at revision {after} ({where})"))
    else:
        console.print(plain(f"migrated {where} from {before or 'empty'} to revision {after}"))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns SIGTERM/SIGINT and stops API
    and worker in order (uvicorn would re-raise the signal afterwards and exit non-zero)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: ASGIApp, address: tuple[str, int], settings: Settings) -> _Server:
    host, port = address
    return _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=int(settings.worker_shutdown_timeout),
            server_header=False,
            # The client is the TCP peer: X-Forwarded-For counts only where the application
            # says so (TRUSTED_PROXIES, api/ingest.py), never here, whatever
            # FORWARDED_ALLOW_IPS says.
            proxy_headers=False,
            http=listener.protocol(settings.http),
            # The listener closes idle connections itself, to the millisecond; uvicorn's own
            # keep-alive timer (whole seconds) must not close them sooner.
            timeout_keep_alive=max(1, math.ceil(settings.http.idle_timeout)),
        )
    )


async def _serve(
    settings: Settings, *, with_api: bool, with_worker: bool, migrate_first: bool
) -> None:
    role = "worker" if not with_api else "api" if not with_worker else "run"
    tracing.configure(os.environ, os.environ.get("OTEL_SERVICE_NAME") or f"webhook-worker-{role}")
    try:
        await _serve_roles(settings, with_api, with_worker, migrate_first)
    finally:
        tracing.shutdown()


async def _serve_roles(
    settings: Settings, with_api: bool, with_worker: bool, migrate_first: bool
) -> None:
    async with open_runtime(settings, migrate_first=migrate_first) as runtime:
        consumer = runtime.worker() if with_worker else None
        if with_api:
            server = _server(create_app(runtime), settings.api_addr, settings)
        else:
            server = _server(health_app(runtime), settings.health_endpoint, settings)
            # The API's lifespan starts the tool refresh; without it a worker-only process
            # would go on with the tools as they were when it started (a pause, an edited
            # destination never seen).
            runtime.tools.start()

        def stop() -> None:
            server.should_exit = True
            if consumer is not None:
                consumer.stop()

        _on_signals(stop)
        tasks = [asyncio.create_task(server.serve(), name="http")]
        if consumer is not None:
            tasks.append(asyncio.create_task(consumer.run(), name="worker"))
        announcer = asyncio.create_task(_announce(server, settings, with_api, with_worker))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    stop()
            await asyncio.gather(*tasks)
        finally:
            announcer.cancel()
            if not with_api:
                await runtime.tools.close()


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)
    loop.add_signal_handler(signal.SIGUSR1, _log_tasks)


def describe_retention(settings: Settings) -> str:
    """How long events are kept, for the start-up lines."""
    interval = format_duration(settings.retention_interval)
    if settings.events_retention <= 0:
        return (
            f"kept forever (EVENTS_RETENTION=0; a tool's own retention still applies), "
            f"swept every {interval}"
        )
    kept = format_duration(settings.events_retention)
    return f"kept {kept} (EVENTS_RETENTION; a tool's own retention wins), swept every {interval}"


def _log_tasks() -> None:
    """SIGUSR1: log where every asyncio task is waiting (for a process that seems stuck)."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=12)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.warning("task %s: %s", task.get_name(), where or "(not started)")


async def _announce(
    server: uvicorn.Server, settings: Settings, with_api: bool, with_worker: bool
) -> None:
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    queue = f"Redis {settings.redis_addr}" if settings.uses_redis else "the database"
    roles = " + ".join(role for role, on in (("API", with_api), ("worker", with_worker)) if on)
    host, port = settings.api_addr if with_api else settings.health_endpoint
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    console.print(  # paths and addresses as given: plain text (see cli/plain.py)
        plain(
            f"webhook-worker {roles} listening on http://{shown}:{port}\n"
            f"  database: {settings.describe_database()}\n  queue:    {queue}\n"
            f"  events:   {describe_retention(settings)}"
        ),
        soft_wrap=True,
    )
    if with_api:
        console.print(
            "Next, in another terminal:\n"
            "  webhook-worker tools add demo --auth-type hmac --header X-Signature "
            "--prefix sha256= --secret s3cret\n"
            "  webhook-worker send demo\n"
            "  webhook-worker events list",
            highlight=False,
            soft_wrap=True,
        )
