"""Refuses forward targets inside the network the worker runs in (SSRF guard).

A tool's ``forward.url`` is chosen by whoever manages tools, but the request comes from the
worker, which may reach databases, admin ports and cloud metadata services that the outside
cannot. So a target whose host is or resolves to a loopback, private, link-local (cloud
metadata at 169.254.169.254 included), multicast, reserved or unspecified address is refused,
unless ALLOW_PRIVATE_FORWARD=true. Redirects are never followed, so a public target cannot
bounce the request inward.

Two checks: :meth:`TargetGuard.refusal` judges a URL before the request (IP literals, and a
clear error naming the address), with verdicts cached per host for a short while; and
:class:`GuardedResolver`, the HTTP client's resolver, judges the addresses the connection is
actually made to, so a DNS answer that changes between the check and the connection (DNS
rebinding) is refused too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

CACHE_SECONDS = 30.0
# Cloud metadata endpoints that are not link-local (AWS's IPv6 one is a unique local address).
_METADATA = {ip_address("fd00:ec2::254")}


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


async def _addresses(host: str, port: int | None) -> list[IPv4Address | IPv6Address]:
    try:
        return [ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    return [ip_address(info[4][0]) for info in infos]


def _judge(host: str, addresses: list[IPv4Address | IPv6Address]) -> str | None:
    for address in addresses:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        kind = _kind(address)
        if kind is not None:
            return (
                f"{host} resolves to {address}, a {kind} address; forwarding there is refused "
                "unless ALLOW_PRIVATE_FORWARD=true"
            )
    return None


def _kind(address: IPv4Address | IPv6Address) -> str | None:
    if address in _METADATA or address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    return None
