"""Helpers the tests share: polling with a deadline, free ports, a private redis-server, the
real ``webhook-worker`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
import uvicorn

from webhook_worker.api.app import create_app
from webhook_worker.api.views import event_view
from webhook_worker.config import Settings
from webhook_worker.errors import NotFoundError
from webhook_worker.runtime import Runtime, open_runtime

T = TypeVar("T")


class _Deadline:
    """What :func:`eventually` and :func:`eventually_sync` share: when to give up, and the
    failure that says what was awaited (with ``details()``, e.g. the processes' logs)."""

    def __init__(self, within: float, what: str, details: Callable[[], str] | None) -> None:
        self.within = within
        self.what = what
        self.details = details
        self.end = time.monotonic() + within

    def check(self) -> None:
        """Fail the test if the deadline has passed."""
        if time.monotonic() > self.end:
            extra = f"\n{self.details()}" if self.details else ""
            pytest.fail(f"timed out after {self.within:g}s waiting for {self.what}{extra}")


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    within: float = 5.0,
    what: str = "condition",
    *,
    interval: float = 0.01,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` every ``interval`` seconds until it returns something truthy (which is
    returned), failing after ``within`` seconds (with ``details()`` appended). The one way the
    tests wait for something: never a fixed sleep."""
    deadline = _Deadline(within, what, details)
    while True:
        result = await check()
        if result:
            return result
        deadline.check()
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T | None],
    within: float = 5.0,
    what: str = "condition",
    *,
    interval: float = 0.01,
    details: Callable[[], str] | None = None,
) -> T:
    """:func:`eventually` for code without an event loop (CLI tests, starting servers)."""
    deadline = _Deadline(within, what, details)
    while True:
        result = check()
        if result:
            return result
        deadline.check()
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway redis-server on a free port, with a password; with ``persistent`` it keeps an
    append-only file (fsync always), so a restart keeps the stream."""

    password = "s3cret"

    def __init__(self, directory: Path, persistent: bool = False) -> None:
        self.persistent = persistent
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--requirepass", self.password,
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        process = self.process
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} exited with {process.returncode}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            eventually_sync(answers, within=10, what=f"redis-server on port {self.port} to start")
        finally:
            client.close()

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown, only what the append-only file already holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class Processes:
    """Starts ``webhook-worker`` sub-commands (the virtualenv's console script) with a shared
    environment, each logging to a file of its own; stops them all."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.log_files: dict[int, Path] = {}
        self.executable = Path(sys.executable).with_name("webhook-worker")
        if not self.executable.exists():
            pytest.fail(f"{self.executable} is missing: install the project (make test does)")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.executable), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        path = self.logs / f"{args[0]}-{len(self.started)}.log"
        with path.open("wb") as log:
            process = subprocess.Popen(
                [str(self.executable), *args],
                env={**self.env, **extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        self.log_files[process.pid] = path
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        return self.log_files[process.pid]

    def exit_code(self, process: subprocess.Popen[bytes], within: float = 30) -> int | str:
        """The exit code; a process that does not exit is asked (SIGUSR1) to log where each of
        its tasks waits, so the failure shows why."""
        try:
            return process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
            return f"still running after {within}s"

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.logs.glob("*.log"))

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@asynccontextmanager
async def serving(
    runtime: Runtime, client: tuple[str, int] = ("127.0.0.1", 4000)
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app on ``runtime``, lifespan running, behind an HTTP client (``client`` is the
    peer address the app sees)."""
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app, client=client)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://localhost") as http,
    ):
        yield http


@dataclass
class Received:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Target:
    """A real HTTP server on loopback standing in for a forward target. ``answers`` is consumed
    in order, one ``(status, headers)`` per request; when it runs out every answer is 200."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(
            Received(
                time.monotonic(),
                scope["method"],
                scope["path"],
                {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                body,
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        status, headers = self.answer(body)
        raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b"target says %d" % status})

    def answer(self, body: bytes) -> tuple[int, dict[str, str]]:
        """What to answer a request with this body: the next of ``answers``, else 200."""
        return self.answers.pop(0) if self.answers else (200, {})


@asynccontextmanager
async def uvicorn_serving_app(app: Any, **config: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port, in this event loop, for the ``with``
    block; yields the base URL. ``config`` goes to uvicorn.Config (``lifespan="off"``,
    ``http="h11"``, ...)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            pytest.fail("uvicorn stopped before it started")
        return server.started

    try:
        await eventually(started, within=15, what=f"uvicorn to start on port {port}")
    except BaseException:
        server.should_exit = True
        raise
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def target_server(target: Target | None = None) -> AsyncIterator[Target]:
    """A :class:`Target` (a new one unless given) served on a free loopback port for the
    ``with`` block; its ``url`` is set."""
    target = target or Target()
    async with uvicorn_serving_app(target, lifespan="off") as base:
        target.url = f"{base}/hook"
        yield target


SECRET = "It's a Secret to Everybody"


class Service:
    """The app on a runtime, with a worker running beside it, and an HTTP client."""

    def __init__(self, runtime: Runtime, client: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.client = client

    async def add_tool(self, tool_id: str = "gh", **fields: Any) -> None:
        definition = {"id": tool_id, "provider": "github", "auth": {"secret": SECRET}, **fields}
        await self.runtime.tool_service.create(definition)
        await self.runtime.tools.load()

    async def post(
        self,
        body: bytes,
        tool_id: str = "gh",
        headers: dict[str, str] | None = None,
        sign: bool = True,
    ) -> httpx.Response:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if sign:
            digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            sent["X-Hub-Signature-256"] = f"sha256={digest}"
        return await self.client.post(f"/webhooks/{tool_id}", content=body, headers=sent)

    async def stored(self, event_id: str) -> dict[str, Any]:
        async def lookup() -> dict[str, Any] | None:
            try:
                return event_view(await self.runtime.events.get(event_id))
            except NotFoundError:
                return None

        return await eventually(lookup, within=15, what=f"event {event_id} to be stored")

    async def settled(self, event_id: str, *statuses: str, within: float = 15) -> dict[str, Any]:
        """The event once its status is one of ``statuses`` (default: any final one)."""
        wanted = statuses or ("processed", "ignored", "dead")

        async def lookup() -> dict[str, Any] | None:
            try:
                event = event_view(await self.runtime.events.get(event_id))
            except NotFoundError:
                return None
            return event if event["status"] in wanted else None

        return await eventually(lookup, within=within, what=f"event {event_id} to be {wanted}")


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    """Migrate, open the runtime, serve the app and run a worker beside it."""
    async with open_runtime(settings, migrate_first=True) as runtime, serving(runtime) as client:
        worker = runtime.worker()
        task = asyncio.create_task(worker.run())
        try:
            yield Service(runtime, client)
        finally:
            worker.stop()
            await stopped(task)


async def stopped(task: asyncio.Task[None], within: float = 15) -> None:
    """Wait for a stopping worker; if it hangs, fail with every task's stack to show where."""
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        stacks = []
        for other in asyncio.all_tasks():
            frames = other.get_stack(limit=8)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            stacks.append(f"{other.get_name()}: {where}")
        task.cancel()
        pytest.fail(f"the worker did not stop within {within}s:\n" + "\n".join(stacks))
    task.result()
