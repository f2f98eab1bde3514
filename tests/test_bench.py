"""``webhook-worker bench``: smoke runs that check the harness works end to end (seconds each,
never a timing assertion), and the parts of it that can be checked on their own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from webhook_worker.auth import build_verifier
from webhook_worker.bench.load import LoadPlan, Phase, RequestBuilder, Signing, run_phase
from webhook_worker.bench.observe import Forwarded
from webhook_worker.bench.payloads import NAMES, UNIQUE_LENGTH, payload
from webhook_worker.bench.profile import summarise
from webhook_worker.bench.report import undelivered
from webhook_worker.bench.runner import forward_part
from webhook_worker.tools.model import parse_tool

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--duration", "2", "--connections", "4", "--warmup", "0.5"]
# Longer than the 300 s each `bench` run may take, so its own failure (with output) comes first.
pytestmark = [pytest.mark.bench, pytest.mark.timeout(360)]


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, "-m", "webhook_worker", "bench", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _report(path: Path, completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def _check_complete(report: dict[str, Any], *, ceiling: bool = True) -> None:
    """Every field docs/performance.md describes is there, and nothing accepted was lost."""
    for key in (
        "schema", "command", "argv", "machine", "options", "deployment", "payload", "ceiling",
        "ingest", "ratio_to_ceiling", "end_to_end", "forward", "queue_depth", "rss_peak_mb",
        "cpu_us_per_event", "cpu_us_per_delivery", "samples", "client", "warmup", "profile",
    ):  # fmt: skip
        assert key in report, key
    assert report["command"].startswith("webhook-worker bench ")
    machine = report["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] and machine["python"]
    ingest = report["ingest"]
    assert ingest["accepted"] > 0
    assert ingest["statuses"] == {"202": ingest["accepted"]}
    assert ingest["requests_per_s"] > 0 and ingest["accepted_per_s"] > 0
    assert set(ingest["latency_ms"]) >= {"p50", "p95", "p99", "max"}
    stored = report["end_to_end"]
    assert stored["all_stored"] is True
    assert (
        stored["stored"] == stored["expected"] == ingest["accepted"] + report["warmup"]["accepted"]
    )
    assert stored["events_per_s"] > 0
    assert report["queue_depth"]["samples"], "queue depth was never sampled"
    assert report["rss_peak_mb"]["api"] > 0 and report["rss_peak_mb"]["worker"] > 0
    cpu = report["cpu_us_per_event"]
    assert cpu["api"] >= 0 and cpu["worker"] >= 0, cpu
    # The machine's CPU includes the processes' own (one process for both when embedded).
    assert cpu["machine"] > 0 and cpu["machine"] >= max(cpu["api"], cpu["worker"]), cpu
    assert report["client"]["ingest"]["cpu_s"] >= 0
    if ceiling:
        assert report["ceiling"]["requests_per_s"] > 0
        assert report["ceiling"]["statuses"] == {"202": report["ceiling"]["requests"]}
        assert report["ratio_to_ceiling"] > 0


def test_smoke_embedded(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    completed = _bench("--start", "embedded", *SMOKE, "--json", str(out))
    report = _report(out, completed)
    _check_complete(report)
    assert report["deployment"]["mode"] == "embedded"
    assert report["payload"] == {"name": "github-push", "bytes": 7546, "event_type": "push"}
    assert "ingest" in completed.stdout  # the table


def test_smoke_postgres_redis_cleans_up(
    tmp_path: Path, postgres_server_url: str, redis_prefix: str
) -> None:
    out = tmp_path / "out.json"
    completed = _bench(
        "--start", "postgres-redis", *SMOKE, "--payload", "small", "--pause-worker",
        "--json", str(out),
        DATABASE_URL=postgres_server_url,
        REDIS_ADDR=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
        REDIS_KEY_PREFIX=redis_prefix,
    )  # fmt: skip
    report = _report(out, completed)
    _check_complete(report)
    # The worker was stopped during the load (a burst) and drained everything afterwards.
    assert report["options"]["pause_worker"] is True
    assert "worker paused during the load" in completed.stdout
    deployment = report["deployment"]
    assert deployment["queue"].startswith("redis")
    assert deployment["redis_key_prefix"].startswith(f"{redis_prefix}:bench-")

    async def leftovers() -> tuple[list[bytes], int]:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
        await client.aclose()
        conn = await asyncpg.connect(postgres_server_url)
        rows = await conn.fetchval(
            "SELECT (SELECT count(*) FROM events WHERE tool_id = $1)"
            " + (SELECT count(*) FROM tools WHERE id = $1)",
            deployment["tool_id"],
        )
        await conn.close()
        return keys, int(rows)

    assert asyncio.run(leftovers()) == ([], 0)


def test_smoke_forward_events(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    completed = _bench(
        "--start", "embedded", "--forward", "--events", "50", "--connections", "4",
        "--warmup", "0", "--no-ceiling", "--json", str(out),
    )  # fmt: skip
    report = _report(out, completed)
    _check_complete(report, ceiling=False)
    assert report["ingest"]["requests"] == 50
    assert report["deployment"]["tool_mode"] == "store_and_forward"
    assert report["forward"]["all_forwarded"] is True
    assert report["forward"]["forwarded"] == 50


def test_fan_out_reaches_every_destination(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    completed = _bench(
        "--start", "embedded", "--forward", "--destinations", "3", *SMOKE, "--no-ceiling",
        "--json", str(out),
    )  # fmt: skip
    report = _report(out, completed)
    _check_complete(report, ceiling=False)
    expected = report["end_to_end"]["expected"]
    assert report["deployment"]["destinations"] == ["d1", "d2", "d3"]
    forward = report["forward"]
    assert forward["all_forwarded"] is True
    assert forward["destinations"] == ["d1", "d2", "d3"]
    assert forward["expected"] == forward["forwarded"] == expected
    assert forward["deliveries_expected"] == forward["delivered"] == 3 * expected
    for dest in ("d1", "d2", "d3"):
        counts = forward["per_destination"][dest]
        assert counts["delivered"] == expected and counts["requests"] >= expected, (dest, counts)
    assert forward["events_per_s"] > 0
    assert forward["deliveries_per_s"] == pytest.approx(3 * forward["events_per_s"], abs=0.2)
    per_event, per_delivery = report["cpu_us_per_event"], report["cpu_us_per_delivery"]
    assert per_event["sink"] > 0 and per_delivery["sink"] > 0
    for key in ("api", "worker", "sink", "machine"):
        assert per_delivery[key] == pytest.approx(per_event[key] / 3, abs=0.1), key
    assert "d1 " in completed.stdout and "CPU per delivery" in completed.stdout


def test_a_destination_short_of_events_fails_the_run_naming_it() -> None:
    phase = Phase(accepted=10, first_accept_at=100.0)
    arrived = Forwarded({"d1": 12, "d2": 9, "d3": 12}, {"d1": 12, "d2": 9, "d3": 13}, 102.0)
    forward = forward_part(phase, 12, arrived)
    assert forward["all_forwarded"] is False
    assert forward["forwarded"] == 9
    assert (forward["delivered"], forward["deliveries_expected"]) == (33, 36)
    assert forward["per_destination"]["d3"] == {"delivered": 12, "requests": 13}
    message = undelivered(forward, 300)
    assert message.startswith("only 9 of 12 events reached every destination")
    assert message.endswith(": d2 9")


def test_destinations_are_a_fan_out_of_forward() -> None:
    completed = _bench("--start", "embedded", "--destinations", "3")
    assert completed.returncode == 2
    assert "--destinations is the fan-out of --forward" in completed.stderr


def test_pause_worker_needs_a_worker_process_of_its_own() -> None:
    completed = _bench("--start", "embedded", "--pause-worker")
    assert completed.returncode == 2
    assert "--pause-worker needs a separate worker process" in completed.stderr


def test_only_loopback_is_loaded() -> None:
    completed = _bench("--url", "http://192.0.2.1:8080", "--tool", "gh")
    assert completed.returncode == 2
    assert "only sends load to http://127.0.0.1" in completed.stderr
    plan = LoadPlan(port=9, path="/", payload="small", connections=1, duration=0.1, host="::1")
    with pytest.raises(ValueError, match=r"only sends to 127\.0\.0\.1"):
        asyncio.run(run_phase(plan, 0.1))


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("small", 200, 400), ("github-push", 6500, 8500), ("large", 60_000, 70_000)],
)
def test_payload_sizes_and_unique_bodies(name: str, low: int, high: int) -> None:
    sent = payload(name)
    assert low <= sent.size <= high
    first, second = sent.body(b"a" * UNIQUE_LENGTH), sent.body(b"b" * UNIQUE_LENGTH)
    assert len(first) == len(second) == sent.size and first != second
    json.loads(first)


def test_sample_file_is_the_default_payload() -> None:
    on_disk = json.loads((ROOT / "benchmarks" / "github-push.json").read_text())
    generated = json.loads(payload("github-push").body(on_disk["after"].encode()))
    assert on_disk == generated


@pytest.mark.parametrize(
    "auth",
    [
        {"secret": "s3cret"},
        {"secret": "s3cret", "algorithm": "sha1"},
        {"type": "hmac", "header": "X-Sig", "encoding": "base64", "secret": "k"},
        {"type": "hmac", "header": "X-Sig", "timestamp_header": "X-Time", "secret": "k"},
    ],
)
def test_every_request_is_signed_as_the_provider_would(auth: dict[str, Any]) -> None:
    tool = parse_tool({"id": "gh", "provider": "github", "auth": auth})
    signing = Signing(
        header=tool.auth.header,
        secret=tool.auth.secrets[0],
        algorithm=tool.auth.algorithm,
        encoding=tool.auth.encoding,
        prefix=tool.auth.prefix,
        timestamp_header=tool.auth.timestamp_header,
    )
    plan = LoadPlan(
        port=8080, path="/webhooks/gh", payload="github-push", connections=1, duration=1.0,
        signing=signing, event_header="X-GitHub-Event", delivery_header="X-GitHub-Delivery",
    )  # fmt: skip
    builder = RequestBuilder(plan)
    verifier = build_verifier(tool.auth)
    deliveries = set()
    for _ in range(3):
        head, _, body = builder.build().partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0] == "POST /webhooks/gh HTTP/1.1"
        fields = [line.split(": ", 1) for line in lines[1:]]
        headers = httpx.Headers([(name, value) for name, value in fields])
        assert int(headers["content-length"]) == len(body)
        verifier.verify(headers, body, time.time())
        deliveries.add(headers["x-github-delivery"])
    assert len(deliveries) == 3


def test_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "api.txt"
    raw.write_text(
        "main (webhook_worker/cli/serve.py:40);handle (webhook_worker/api/ingest.py:70);"
        "verify (webhook_worker/auth/hmac_signature.py:50) 30\n"
        "main (webhook_worker/cli/serve.py:40);handle (webhook_worker/api/ingest.py:71) 10\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 40
    assert summary["self"][0] == {
        "function": "verify (webhook_worker/auth/hmac_signature.py)",
        "percent": 75.0,
        "total_percent": 75.0,
    }
    assert summary["ours"][0] == {
        "function": "handle (webhook_worker/api/ingest.py)",
        "total_percent": 100.0,
    }
    assert all("cli/" not in entry["function"] for entry in summary["ours"])


def test_payload_names_are_documented() -> None:
    text = (ROOT / "docs" / "performance.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in text
