"""The SSRF guard: forward targets in private networks are refused (after DNS resolution)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest

from tests.support import eventually_sync, free_port, target_server
from webhook_worker.tools.model import ForwardConfig
from webhook_worker.worker.forwarder import Forwarder, ForwardRequest
from webhook_worker.worker.target_guard import (
    ForbiddenTargetError,
    GuardedResolver,
    TargetGuard,
    describe,
    literal_refusal,
)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/x", "loopback"),
        ("http://localhost/x", "loopback"),
        ("http://[::1]/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://172.16.0.1/x", "private"),
        ("http://192.168.1.10/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[fd00:ec2::254]/x", "link-local"),
        ("http://[::ffff:10.0.0.1]/x", "private"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
    ],
)
async def test_private_targets_are_refused_with_the_reason(url: str, kind: str) -> None:
    refusal = await TargetGuard().refusal(url)
    assert refusal is not None
    assert kind in refusal
    assert "ALLOW_PRIVATE_FORWARD" in refusal


async def test_public_addresses_pass() -> None:
    assert await TargetGuard().refusal("https://93.184.215.14/hook") is None
    assert await TargetGuard().refusal("https://[2606:4700:4700::1111]/hook") is None


async def test_allow_private_forward_lets_everything_through() -> None:
    assert await TargetGuard(allow_private=True).refusal("http://127.0.0.1/x") is None


async def test_an_unresolvable_host_is_an_os_error_so_the_forward_is_retried() -> None:
    with pytest.raises(OSError):
        await TargetGuard().refusal("http://no-such-host.invalid/x")


async def test_the_resolver_refuses_a_host_that_resolves_inward() -> None:
    with pytest.raises(ForbiddenTargetError, match="loopback"):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    allowed = await GuardedResolver(allow_private=True).resolve("localhost", 80)
    assert {result["host"] for result in allowed} <= {"127.0.0.1", "::1"}


async def test_a_dns_answer_that_changes_after_the_check_is_refused_at_connect_time() -> None:
    """DNS rebinding: the host passed the URL check (here: a verdict cached while it resolved
    to a public address), then resolves to loopback when the connection is made."""
    guard = TargetGuard()

    async def passed(url: str) -> str | None:
        return None

    guard.refusal = passed  # type: ignore[method-assign]
    async with target_server() as target:
        forwarder = Forwarder(guard)
        try:
            url = target.url.replace("127.0.0.1", "localhost")
            config = ForwardConfig(url, "POST", (), 5.0, None)
            request = ForwardRequest("e1", "t", "push", b"{}", "application/json")
            outcome = await forwarder.send(config, request)
        finally:
            await forwarder.close()
    assert outcome.failure is not None
    assert outcome.failure.error_class == "forbidden_target"
    assert "loopback" in outcome.failure.message
    assert target.requests == []


# Every address that is not globally routable is refused. Pure decisions:
# nothing here sends a packet anywhere.
@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("100.64.0.1", "shared (CGNAT"),
        ("100.100.100.200", "shared (CGNAT"),  # a cloud's metadata service
        ("100.127.255.254", "shared (CGNAT"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("192.0.0.8", "reserved"),
        ("192.88.99.1", "reserved"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("239.255.255.250", "multicast"),
        ("127.0.0.2", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "link-local (cloud metadata)"),
        ("fd12:3456::1", "unique local"),
        ("fc00::1", "unique local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001::1", "Teredo"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("100::1", "discard-only"),
        ("::8.8.8.8", "IPv4-compatible"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:100.100.100.200", "shared (CGNAT"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a9fe:a9fe::1", "6to4 address carrying 169.254.169.254"),
        ("2002:7f00:1::", "loopback"),
        ("2002:6464:64c8::", "shared (CGNAT"),
        ("64:ff9b::a9fe:a9fe", "NAT64 address carrying 169.254.169.254"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b:1::808:808", "local-use NAT64"),
        ("2001:2::1", "not globally routable"),  # benchmarking, from ipaddress's registry
    ],
)
def test_the_guard_refuses_every_address_that_is_not_globally_routable(
    address: str, reason: str
) -> None:
    described = describe(ip_address(address))
    assert described is not None, address
    assert reason in described


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.215.14",
        "100.63.255.255",  # just below the shared range
        "100.128.0.1",  # just above it
        "198.17.255.255",
        "198.20.0.1",
        "223.255.255.254",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",  # mapped, NAT64 and 6to4 forms of public addresses reach them
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_globally_routable_addresses_pass(address: str) -> None:
    assert describe(ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data",
        "http://169.254.169.254/latest",
        "https://10.0.0.5:8443/hook",
        "http://[fd00:ec2::254]/x",
        "http://[2002:a9fe:a9fe::1]/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://0.0.0.0:9000/x",
        "http://0xa9.0xfe.0xa9.0xfe/x",  # 169.254.169.254, as the resolver would read it
        "http://2852039166/x",  # the same, as one number
        "http://127.0.0.1:8080/x",
        "http://[::1]:8080/x",
        "http://2130706433/x",  # 127.0.0.1 as one number
    ],
)
def test_an_ip_literal_the_guard_refuses_is_refused_at_configuration(url: str) -> None:
    refusal = literal_refusal(url, allow_private=False)
    assert refusal is not None
    assert "ALLOW_PRIVATE_FORWARD" in refusal
    assert literal_refusal(url, allow_private=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/x",  # a name: judged when resolved, at each forward
        "https://8.8.8.8/x",
        "https://[2606:4700:4700::1111]/x",
        "http://localhost:8080/x",  # a name, even this one: refused when it resolves inward
    ],
)
def test_names_and_public_literals_pass_configuration(url: str) -> None:
    assert literal_refusal(url, allow_private=False) is None


async def test_the_url_check_before_a_forward_refuses_the_new_ranges() -> None:
    refusal = await TargetGuard().refusal("http://100.100.100.200/latest/meta-data")
    assert refusal is not None
    assert "shared (CGNAT" in refusal


@pytest.mark.slow
def test_the_api_refuses_a_forward_url_the_guard_refuses(tmp_path: Path) -> None:
    """A real `webhook-worker run` without ALLOW_PRIVATE_FORWARD answers 400 naming
    forward.url; nothing is stored, so nothing is ever sent there."""
    port = free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_", "ALLOW_PRIVATE_FORWARD"))
        },
        "DATA_DIR": str(tmp_path),
        "API_ADDR": f"127.0.0.1:{port}",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", "run"], env=env, stdout=log, stderr=log
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def live() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/health/live").status_code == 200
            except httpx.TransportError:
                return False

        eventually_sync(live, 30, "the server to start", interval=0.05, details=log_path.read_text)
        for url in (
            "http://100.100.100.200/latest/meta-data",
            "http://[2002:a9fe:a9fe::]/",
            "http://127.0.0.1:9/",
        ):
            tool = {"id": "inward", "provider": "generic", "forward": {"url": url}}
            answer = httpx.post(f"{base}/api/v1/tools", json=tool)
            assert answer.status_code == 400, answer.text
            assert "forward.url" in answer.text
            assert "ALLOW_PRIVATE_FORWARD" in answer.text
        assert httpx.get(f"{base}/api/v1/tools/inward").status_code == 404
        # A public literal is still accepted (and no event is sent, so nothing goes there).
        tool = {"id": "outward", "provider": "generic", "forward": {"url": "https://8.8.8.8/x"}}
        assert httpx.post(f"{base}/api/v1/tools", json=tool).status_code == 201
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
