"""A real ``webhook-worker run`` on an embedded SQLite file, for the CLI tests, with a local
HTTP target: the service runs as a subprocess (what the CLI meets in production), and waiting
polls its management API with a deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.test_cli import Cli, clean_env
from tests.support import eventually_sync, free_port


@dataclass
class Target:
    """A forward target on loopback: ``POST /<tool id>`` answers ``statuses[tool id]`` (400
    until a test "fixes" it) and is recorded."""

    url: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, tool_id: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [r for r in self.requests if r[0] == tool_id]


def serve_target() -> tuple[Target, ThreadingHTTPServer]:
    target = Target()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the forwarder's pooled client expects

        def do_POST(self) -> None:
            tool_id = self.path.strip("/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with target.lock:
                target.requests.append(
                    (tool_id, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = target.statuses.get(tool_id, 400)
            answer = b"target says %d" % status
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    target.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return target, server


@dataclass
class Service:
    cli: Cli
    url: str
    target: Target
    http: httpx.Client

    def create_tool(self, definition: dict[str, Any]) -> None:
        response = self.http.post("/api/v1/tools", json=definition)
        assert response.status_code == 201, response.text

    def add_tool(self, tool_id: str) -> None:
        """A tool that forwards to ``/<tool id>`` of the target (400 until a test fixes it)."""
        definition = {
            "id": tool_id,
            "auth": {"type": "none"},
            "event_type": {"header": "X-Event"},
            "mode": "store_and_forward",
            "forward": {"url": f"{self.target.url}/{tool_id}", "timeout": "2s"},
        }
        self.create_tool(definition)

    def post(self, tool_id: str, body: dict[str, Any], event: str = "push") -> str:
        response = self.http.post(f"/webhooks/{tool_id}", json=body, headers={"X-Event": event})
        assert response.status_code == 202, response.text
        return str(response.json()["event_id"])

    def event(self, event_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/events/{event_id}")
        return response.json() if response.status_code == 200 else {}

    def settled(self, event_id: str, status: str, attempts: int = 1) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            event = self.event(event_id)
            done = event.get("status") == status and len(event["attempts"]) >= attempts
            return event if done else None

        return eventually_sync(
            check, within=15, what=f"event {event_id} to be {status}", interval=0.05
        )

    def dead_letters(self, tool_id: str, count: int) -> list[dict[str, Any]]:
        """The tool's dead letters (newest first), once there are ``count``."""

        def check() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = self.http.get(
                "/api/v1/dlq", params={"tool_id": tool_id}
            ).json()["items"]
            return items if len(items) >= count else None

        return eventually_sync(
            check, within=15, what=f"{count} dead letters of {tool_id}", interval=0.05
        )


@contextmanager
def running_service(directory: Path) -> Iterator[Service]:
    """``webhook-worker run`` on a SQLite file in ``directory``, with a loopback target, until
    the block ends (then stopped with SIGTERM)."""
    port = free_port()
    env = clean_env(
        DATA_DIR=str(directory / "data"),
        API_ADDR=f"127.0.0.1:{port}",
        TOOLS_REFRESH_INTERVAL="100ms",
        RETRY_TIME_SCALE="0.001",
        ALLOW_PRIVATE_FORWARD="true",
        DLQ_AUTO_RETRY_MAX="0",  # nothing retries behind the tests' backs
    )
    cli = Cli(env)
    cli.ok("migrate")
    target, target_server = serve_target()
    log_path = directory / "run.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook_worker", "run"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=5)

    def live() -> bool:
        if process.poll() is not None:
            pytest.fail(f"`run` exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return http.get("/health/live").status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually_sync(
            live, within=30, what="`webhook-worker run` to answer /health/live", interval=0.05
        )
        yield Service(cli, url, target, http)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        http.close()
        log.close()
        target_server.shutdown()
        target_server.server_close()
