"""The SSRF guard: forward targets in private networks are refused (after DNS resolution)."""

from __future__ import annotations

import pytest

from webhook_worker.worker.target_guard import TargetGuard


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
