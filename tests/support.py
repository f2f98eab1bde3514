"""Helpers the tests share: polling with a deadline, free ports, a private redis-server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis

from webhook_worker.api.app import create_app
from webhook_worker.runtime import Runtime

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], within: float = 5.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


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
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


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
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        yield http
