"""No secret and no signature ever leaves the process: logs (at debug level), API answers,
metrics and CLI output of a real run are searched for them."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import eventually_sync, free_port

SECRET = "super-secret-hmac-key-4c1d"
TOKEN = "admin-token-9f8e7d"

pytestmark = pytest.mark.slow  # a real `webhook-worker run` process


def test_secrets_and_signatures_appear_nowhere(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
        "DATA_DIR": str(tmp_path),
        "API_ADDR": f"127.0.0.1:{port}",
        "ADMIN_TOKEN": TOKEN,
        "LOG_LEVEL": "debug",
        "ALLOW_PRIVATE_FORWARD": "true",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", "run"], env=env, stdout=log, stderr=log
        )
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def live() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/health/live").status_code == 200
            except httpx.TransportError:
                return False

        eventually_sync(live, 30, "the server to start", interval=0.05, details=log_path.read_text)
        tool = {
            "id": "leaky",
            "provider": "github",
            "auth": {"secret": SECRET},
            "forward": {
                "url": f"{base}/nowhere",
                "headers": {"Authorization": f"Bearer {SECRET}x"},
            },
        }
        outputs = [httpx.post(f"{base}/api/v1/tools", json=tool, headers=headers).text]
        body = b'{"zen": "Keep it logically awesome."}'
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        for sent in (signature, "sha256=" + "0" * 64):
            answer = httpx.post(
                f"{base}/webhooks/leaky",
                content=body,
                headers={
                    "X-Hub-Signature-256": sent,
                    "X-GitHub-Event": "ping",
                    "X-GitHub-Delivery": sent[-8:],
                },
            )
            outputs.append(answer.text)

        def stored() -> httpx.Response | None:
            events = httpx.get(f"{base}/api/v1/events", headers=headers)
            return events if events.json()["items"] else None

        events = eventually_sync(stored, 30, "the event to be stored", interval=0.05)
        outputs += [
            events.text,
            httpx.get(f"{base}/api/v1/tools/leaky", headers=headers).text,
            httpx.get(f"{base}/metrics").text,
            httpx.get(f"{base}/health").text,
        ]
        cli = subprocess.run(
            [sys.executable, "-m", "webhook_worker", "tools", "show", "leaky", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs += [cli.stdout, cli.stderr]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    outputs.append(log_path.read_text())
    everything = "\n".join(outputs)
    assert "leaky" in everything and "debug" in everything.lower()  # the search had material
    for secret in (SECRET, signature.split("=", 1)[1], TOKEN):
        assert secret not in everything, f"{secret[:6]}... leaked"
