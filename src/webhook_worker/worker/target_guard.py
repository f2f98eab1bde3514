"""Refuses forward targets that are not on the public internet (SSRF guard).

A tool's ``forward.url`` is chosen by whoever manages tools, but the request comes from the
worker, which may reach databases, admin ports and cloud metadata services that the outside
cannot. So a target whose host is or resolves to an address that is not globally routable is
refused, unless ALLOW_PRIVATE_FORWARD=true: loopback, private, shared (CGNAT, where one cloud's
metadata service lives), link-local (cloud metadata at 169.254.169.254 included), documentation,
benchmarking, multicast, broadcast, reserved, unspecified, site-local and unique local
addresses. IPv6 forms that carry an IPv4 address are judged by the address they reach: an
IPv4-mapped address and a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address are refused when the
IPv4 address inside is; Teredo and the deprecated IPv4-compatible form are refused outright.
:func:`describe` is that decision, in pure code; docs/security.md has the table. Redirects are
never followed, so a public target cannot bounce the request inward.

Three checks: :func:`literal_refusal` refuses an IP literal in a URL when the tool is
written (by the tool service, under the writing process's ALLOW_PRIVATE_FORWARD);
:meth:`TargetGuard.refusal` judges a URL before the request (a clear error naming the
address), with verdicts cached per host for a short while; and
:class:`GuardedResolver`, the HTTP client's resolver, judges the addresses the connection is
actually made to, so a DNS answer that changes between the check and the connection (DNS
rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

CACHE_SECONDS = 30.0

Address = IPv4Address | IPv6Address

# Checked in order, so the more specific ranges name the reason (RFC 6890's registries).
_IPV4_RANGES: Final = tuple(
    (IPv4Network(network), kind)
    for network, kind in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared (CGNAT, cloud metadata)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_IPV6_RANGES: Final = tuple(
    (IPv6Network(network), kind)
    for network, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        # AWS's IPv6 metadata endpoint is a unique local address: name it for what it is.
        ("fd00:ec2::254/128", "link-local (cloud metadata)"),
        ("fe80::/10", "link-local"),
        ("fc00::/7", "private (unique local)"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("2001::/32", "Teredo"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
    )
)
_MAPPED: Final = IPv6Network("::ffff:0:0/96")
_NAT64: Final = IPv6Network("64:ff9b::/96")


def describe(address: Address) -> str | None:
    """Why forwarding to ``address`` is refused (a phrase such as "a private address"), or None
    when it is globally routable. Pure: the decision the guard makes on every address."""
    inner = _embedded(address)
    if inner is not None:
        form, carried = inner
        reason = describe(carried)
        return None if reason is None else f"{form} address carrying {carried}, {reason}"
    ranges = _IPV4_RANGES if isinstance(address, IPv4Address) else _IPV6_RANGES
    for network, kind in ranges:
        if address in network:
            return f"a {kind} address"
    # ipaddress's registry catches what the table above leaves out (and later assignments).
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def _embedded(address: Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address reaches through (mapped, NAT64, 6to4), with the form."""
    if isinstance(address, IPv4Address):
        return None
    if address in _MAPPED:
        return "an IPv4-mapped", IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return "a NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "a 6to4", address.sixtofour
    return None


def literal_refusal(url: str, allow_private: bool) -> str | None:
    """Why a tool may not be configured to forward to ``url``: its host is an IP literal that
    forwarding refuses (loopback included). None for host names: they are judged when resolved,
    at each forward."""
    if allow_private:
        return None
    address = _literal(urlsplit(url).hostname or "")
    if address is None:
        return None
    reason = describe(address)
    if reason is None:
        return None
    return f"{address} is {reason}; forwarding there is refused unless ALLOW_PRIVATE_FORWARD=true"


def _literal(host: str) -> Address | None:
    try:
        return ip_address(host)
    except ValueError:
        pass
    try:
        # The forms the resolver also reads as IPv4: "2130706433", "0x7f.1", "10.1"...
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class TargetGuard:
    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._verdicts: dict[str, tuple[float, str | None]] = {}

    async def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be forwarded to, or None when it may. DNS failures raise
        OSError (a connection error: the forward is retried)."""
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host = parts.hostname or ""
        cached = self._verdicts.get(host)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        verdict = _judge(host, await _addresses(host, parts.port))
        self._verdicts[host] = (time.monotonic() + CACHE_SECONDS, verdict)
        return verdict


class ForbiddenTargetError(OSError):
    """A target resolved to an address forwarding may not reach."""


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses the host if any address it resolves to
    is one the guard forbids: the check happens on the addresses actually connected to."""

    def __init__(self, allow_private: bool = False) -> None:
        self._allow_private = allow_private
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if not self._allow_private:
            verdict = _judge(host, [ip_address(result["host"]) for result in results])
            if verdict is not None:
                raise ForbiddenTargetError(verdict)
        return results

    async def close(self) -> None:
        await self._resolver.close()


async def _addresses(host: str, port: int | None) -> list[Address]:
    try:
        return [ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    return [ip_address(info[4][0]) for info in infos]


def _judge(host: str, addresses: list[Address]) -> str | None:
    for address in addresses:
        reason = describe(address)
        if reason is not None:
            return (
                f"{host} resolves to {address}, {reason}; forwarding there is refused "
                "unless ALLOW_PRIVATE_FORWARD=true"
            )
    return None
