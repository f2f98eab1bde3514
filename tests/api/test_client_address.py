"""The client address is the TCP peer, on the real server: uvicorn's own proxy-header handling
must not rewrite it from ``X-Forwarded-For`` (not even with ``FORWARDED_ALLOW_IPS=*``, a common
container setting); only the tool check with TRUSTED_PROXIES reads that header."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.server_process import webhook_worker_run
from tests.support import eventually_sync

pytestmark = pytest.mark.slow  # real server processes

FORGED = "203.0.113.9"  # the one address the tool allows, claimed by a loopback client


@pytest.mark.parametrize(
    ("env", "forwarded_counts"),
    [
        ({}, False),  # uvicorn would trust loopback peers by default
        ({"FORWARDED_ALLOW_IPS": "*"}, False),
        ({"TRUSTED_PROXIES": "127.0.0.1/32"}, True),  # the project's own rule still applies
    ],
    ids=["default", "forwarded-allow-ips-star", "trusted-proxies"],
)
def test_x_forwarded_for_counts_only_from_trusted_proxies(
    tmp_path: Path, env: dict[str, str], forwarded_counts: bool
) -> None:
    with webhook_worker_run(tmp_path, **env) as server, httpx.Client(base_url=server.base) as http:
        tool = {"id": "walled", "auth": {"type": "none"}, "allowed_ips": [FORGED]}
        created = http.post("/api/v1/tools", json=tool)
        assert created.status_code == 201, created.text

        def known() -> httpx.Response | None:
            answer = http.post("/webhooks/walled", content=b"{}")
            return answer if answer.status_code != 404 else None

        plain = eventually_sync(known, 10, "the tool to reach the ingest cache")
        assert plain.status_code == 403 and plain.json()["error"] == "ip_not_allowed"

        forged = http.post("/webhooks/walled", content=b"{}", headers={"X-Forwarded-For": FORGED})
        if forwarded_counts:
            assert forged.status_code == 202, forged.text
        else:
            assert forged.status_code == 403, forged.text
            assert forged.json()["error"] == "ip_not_allowed"

        # The management API (no ADMIN_TOKEN: loopback peers only) judges the peer alone: a
        # header naming another address changes nothing either way.
        listed = http.get("/api/v1/tools", headers={"X-Forwarded-For": "198.51.100.7"})
        assert listed.status_code == 200, listed.text
