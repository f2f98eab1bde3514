"""The SSRF guard: forward targets in private networks are refused (after DNS resolution)."""

from __future__ import annotations

import pytest

from tests.support import target_server
from webhook_worker.tools.model import ForwardConfig
from webhook_worker.worker.forwarder import Forwarder, ForwardRequest
from webhook_worker.worker.target_guard import ForbiddenTargetError, GuardedResolver, TargetGuard


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
