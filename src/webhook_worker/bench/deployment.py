"""The deployment under load: started by the benchmark, or one already running.

A started deployment is the real thing: ``webhook-worker run`` (embedded), or ``webhook-worker
api`` plus one ``webhook-worker worker``, as processes on free loopback ports, with a fresh
SQLite directory or a private Redis key prefix. Its tool (GitHub preset, random secret; for a
forward benchmark, one or several destinations on the sink) is created in the database before
the processes start, so every process has it from the first request. At the end the processes
get SIGTERM (then SIGKILL), and the tool, its events and the Redis keys are removed again
(``keep`` leaves them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import delete

from webhook_worker.bench import BenchError
from webhook_worker.bench.servers import SINK_PREFIX
from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError, NotFoundError
from webhook_worker.queue import redis_connection
from webhook_worker.runtime import database
from webhook_worker.storage.schema import dead_letters, delivery_ids, events, queue_messages
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import DEFAULT_DESTINATION, Tool, parse_tool
from webhook_worker.tools.secrets import is_sealed, secret_fields
from webhook_worker.tools.service import ToolService
from webhook_worker.vocabulary import Mode

MODES: Final = ("embedded", "postgres-redis", "postgres")
_START_WITHIN: Final = 60.0
_STOP_WITHIN: Final = 15.0
# Variables the benchmark sets itself for the processes it starts.
_OWNED_PREFIXES: Final = ("API_ADDR", "HEALTH_ENDPOINT", "DATA_DIR", "WORKER_CONSUMER_NAME")


@dataclass
class Child:
    """A process the benchmark started, with its output in ``log``."""

    role: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    """Where it serves, for the helper servers."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Deployment:
    mode: str
    """``embedded``, ``postgres-redis``, ``postgres``, or ``url`` for one already running."""
    api_url: str
    tool: Tool
    settings: Settings
    """How the benchmark reaches the deployment's database."""
    pids: dict[str, int] = field(default_factory=dict)
    """``{"api": pid, "worker": pid}``; the same pid twice for ``run``."""
    children: list[Child] = field(default_factory=list)
    metrics_url: str | None = None
    """The worker's ``/metrics`` (the ``run`` process's on the API port when embedded); None
    for a deployment already running."""

    @property
    def port(self) -> int:
        return urlsplit(self.api_url).port or 80

    @property
    def destinations(self) -> tuple[str, ...]:
        """The ids of the destinations the tool delivers to: its ``forward`` (``default``)
        when it is ``store_and_forward``, then its enabled ``destinations``."""
        tool = self.tool
        forward = (
            (DEFAULT_DESTINATION,) if tool.mode == Mode.STORE_AND_FORWARD and tool.forward else ()
        )
        return forward + tuple(dest.id for dest in tool.destinations if dest.enabled)

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "mode": self.mode,
            "api_url": self.api_url,
            "database": settings.describe_database(),
            "queue": f"redis {settings.redis_addr}" if settings.uses_redis else "database",
            "redis_key_prefix": settings.redis_key_prefix if settings.uses_redis else None,
            "tool_id": self.tool.id,
            "tool_mode": self.tool.mode,
            "destinations": list(self.destinations),
            "pids": dict(self.pids),
        }

    def check_alive(self) -> None:
        """BenchError with the log's tail when a started process has exited."""
        check_alive(self.children)


def check_alive(children: list[Child]) -> None:
    for child in children:
        code = child.process.poll()
        if code is not None:
            raise BenchError(
                f"{child.role} (pid {child.pid}) exited with {code}; its log {child.log} "
                f"ends:\n{child.tail()}"
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_environment(
    mode: str,
    base: Mapping[str, str],
    workdir: Path,
    database_url: str | None = None,
    redis_addr: str | None = None,
) -> dict[str, str]:
    """The environment of a started deployment's processes: ``base`` (tuning variables such as
    WORKER_CONCURRENCY pass through) with the database, queue and addresses of ``mode``."""
    env = {key: value for key, value in base.items() if not key.startswith(_OWNED_PREFIXES)}
    if mode == "embedded" or database_url:
        env = {key: value for key, value in env.items() if not key.startswith("DATABASE_")}
    if mode != "postgres-redis":
        env.pop("REDIS_ADDR", None)
    if mode == "embedded":
        env["DATA_DIR"] = str(workdir / "data")
        return env
    if database_url:
        env["DATABASE_URL"] = database_url
    if mode == "postgres-redis":
        if redis_addr:
            env["REDIS_ADDR"] = redis_addr
        if not env.get("REDIS_ADDR"):
            raise BenchError("--start postgres-redis needs Redis: set REDIS_ADDR or --redis-addr")
        # Private keys under the configured prefix, removed at the end.
        base_prefix = env.get("REDIS_KEY_PREFIX") or "webhook-worker"
        env["REDIS_KEY_PREFIX"] = f"{base_prefix}:bench-{secrets.token_hex(4)}"
    # Tools with secrets are encrypted at rest outside the embedded database.
    env.setdefault("SECRETS_KEY", Fernet.generate_key().decode())
    return env


def tool_definition(sink_url: str | None = None, destinations: int = 1) -> dict[str, Any]:
    """The benchmark's own tool: GitHub preset, a random secret, and with ``sink_url`` a
    ``store_and_forward`` tool delivering to the sink at a path per destination (see
    :func:`destination_ids`)."""
    definition: dict[str, Any] = {
        "id": f"bench-{secrets.token_hex(4)}",
        "provider": "github",
        "description": "created by webhook-worker bench; removed when it ends",
        "auth": {"secret": secrets.token_urlsafe(24)},
    }
    if sink_url is None:
        return definition
    definition["mode"] = "store_and_forward"
    targets = {
        dest: {"url": f"{sink_url}{SINK_PREFIX}{dest}", "timeout": "10s"}
        for dest in destination_ids(destinations)
    }
    if destinations == 1:
        definition["forward"] = targets[DEFAULT_DESTINATION]
    else:
        definition["destinations"] = [{"id": dest, **target} for dest, target in targets.items()]
    return definition


def destination_ids(count: int) -> tuple[str, ...]:
    """One destination is the tool's ``forward`` (the destination ``default``), so a run with
    one destination measures what the single forward always did; several are ``d1``..``dN``."""
    if count == 1:
        return (DEFAULT_DESTINATION,)
    return tuple(f"d{n}" for n in range(1, count + 1))


def _settings(env: Mapping[str, str]) -> Settings:
    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        raise BenchError(f"bad configuration: {exc}") from None


@asynccontextmanager
async def started(
    mode: str,
    workdir: Path,
    *,
    base_env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    redis_addr: str | None = None,
    sink_url: str | None = None,
    destinations: int = 1,
    keep: bool = False,
) -> AsyncIterator[Deployment]:
    """Start a deployment of ``mode`` (one of :data:`MODES`) for the ``async with`` block;
    with ``sink_url``, its tool delivers to ``destinations`` destinations there."""
    env = child_environment(
        mode, os.environ if base_env is None else base_env, workdir, database_url, redis_addr
    )
    if sink_url is not None:
        env["ALLOW_PRIVATE_FORWARD"] = "true"  # the sink is on loopback, which is refused else
    settings = _settings(env)
    if mode != "embedded" and settings.is_embedded:
        raise BenchError(
            f"--start {mode} needs PostgreSQL: set DATABASE_URL (or DATABASE_HOST) or pass "
            "--database-url"
        )
    definition = tool_definition(sink_url, destinations)
    tool = parse_tool(definition)
    async with database(settings, migrate_first=True) as db:
        await ToolService(
            ToolStore.from_settings(db, settings),
            allow_private_forward=settings.allow_private_forward,
        ).create(definition)
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(mode, api_url, tool, settings)
    ready = [f"{api_url}/health/live"]
    try:
        if mode == "embedded":
            run = _spawn("run", env | {"API_ADDR": f"127.0.0.1:{api_port}"}, logs)
            deployment.children.append(run)
            deployment.pids = {"api": run.pid, "worker": run.pid}
            deployment.metrics_url = f"{api_url}/metrics"
        else:
            api = _spawn("api", env | {"API_ADDR": f"127.0.0.1:{api_port}"}, logs)
            deployment.children.append(api)
            health_port = free_port()
            worker_env = env | {
                "HEALTH_ENDPOINT": f"127.0.0.1:{health_port}",
                "WORKER_CONSUMER_NAME": f"bench-{secrets.token_hex(4)}",
            }
            worker = _spawn("worker", worker_env, logs)
            deployment.children.append(worker)
            deployment.pids = {"api": api.pid, "worker": worker.pid}
            ready.append(f"http://127.0.0.1:{health_port}/health/live")
            deployment.metrics_url = f"http://127.0.0.1:{health_port}/metrics"
        await wait_ready(ready, deployment.children)
        yield deployment
    finally:
        await asyncio.gather(*(stop(child) for child in deployment.children))
        if not keep and mode != "embedded":
            await _clean_up(settings, tool.id)


async def attached(
    url: str,
    tool_id: str,
    settings: Settings,
    *,
    pids: Mapping[str, int] | None = None,
) -> Deployment:
    """A deployment already running at ``url`` (whose database ``settings`` reach), driving its
    tool ``tool_id`` with the secret read from that database, as ``webhook-worker send`` does."""
    try:
        async with database(settings) as db:
            row = await ToolStore.from_settings(db, settings).get(tool_id)
    except NotFoundError:
        raise BenchError(f"no tool {tool_id!r} in {settings.describe_database()}") from None
    if any(is_sealed(value) for _, value, _ in secret_fields(dict(row["config"]))):
        raise BenchError(
            f"tool {tool_id!r} has secrets this SECRETS_KEY cannot decrypt; set SECRETS_KEY to "
            "the key the API and workers use"
        )
    tool = parse_tool(row["config"])
    base = url.rstrip("/")
    deployment = Deployment("url", base, tool, settings)
    deployment.pids = dict(pids or {})
    await wait_ready([f"{base}/health/live"], [])
    return deployment


def _spawn(role: str, env: Mapping[str, str], logs: Path) -> Child:
    return spawn(role, ["-m", "webhook_worker", role], logs, env)


def spawn(
    role: str,
    args: list[str],
    logs: Path,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> Child:
    """Start ``python args...`` with its output in ``logs/<role>.log`` (and ``stdin`` written
    to it, then closed)."""
    log = logs / f"{role}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, *args],
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    return Child(role, process, log)


async def stop(child: Child, within: float = _STOP_WITHIN) -> int | None:
    """SIGTERM, then SIGKILL after ``within`` seconds; the exit code."""
    process = child.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, within)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
    return process.returncode


async def wait_ready(urls: list[str], children: list[Child]) -> None:
    """Wait until every URL answers 200 (one of ``children`` exiting ends the wait)."""
    deadline = time.monotonic() + _START_WITHIN
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls:
            while True:
                check_alive(children)
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"{url} did not answer 200 within {_START_WITHIN:g}s")
                await asyncio.sleep(0.1)


async def _clean_up(settings: Settings, tool_id: str) -> None:
    """Remove what the benchmark's tool left: its events (attempts go with them), dead letters,
    queue rows and delivery ids, the tool itself, and the private Redis keys."""
    async with database(settings) as db:
        async with db.begin() as conn:
            for table in (dead_letters, queue_messages, delivery_ids, events):
                await conn.execute(delete(table).where(table.c.tool_id == tool_id))
        with contextlib.suppress(NotFoundError):
            await ToolStore.from_settings(db, settings).delete(tool_id)
    if settings.uses_redis:
        client = redis_connection.connect(settings)
        try:
            doomed = [key async for key in client.scan_iter(f"{settings.redis_key_prefix}:*", 1000)]
            for start in range(0, len(doomed), 1000):
                await client.delete(*doomed[start : start + 1000])
        finally:
            await client.aclose()
