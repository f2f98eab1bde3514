"""A real ``webhook-worker run`` (embedded SQLite) on a free loopback port, for the tests about
what the HTTP server itself does: uvicorn's settings, headers, connections, timeouts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import eventually_sync, free_port

# What the caller's environment must not decide for the server under test.
_OWN = ("DATABASE_", "REDIS_", "WORKER_", "API_", "HEALTH_", "HTTP_", "ADMIN_TOKEN", "SECRETS_KEY")
_OWN_EXACT = ("TRUSTED_PROXIES", "FORWARDED_ALLOW_IPS", "MAX_PAYLOAD_BYTES")


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 10) -> socket.socket:
        """A raw TCP connection to the API."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def rss_kib(self) -> int:
        """The server process's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def webhook_worker_run(directory: Path, **env: str) -> Iterator[RunningServer]:
    """``webhook-worker run`` with ``env`` added, started and answering ``/health/live``."""
    port = free_port()
    full_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_OWN) and key not in _OWN_EXACT
    }
    full_env.update(
        DATA_DIR=str(directory),
        API_ADDR=f"127.0.0.1:{port}",
        TOOLS_REFRESH_INTERVAL="100ms",
        LOG_LEVEL="info",
        LOG_FORMAT="text",
        **env,
    )
    log = directory / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", "run"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, log)

    def live() -> bool:
        assert process.poll() is None, f"the server exited:\n{server.output()}"
        try:
            return httpx.get(f"{server.base}/health/live", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually_sync(live, 60, "the server to start", interval=0.05, details=server.output)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
