"""A tool's ``allowed_ips`` through the real app: the client address is the peer, or, when the
peer is one of TRUSTED_PROXIES, the first untrusted hop of ``X-Forwarded-For`` from the right."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import cast

import httpx
import pytest

from tests.support import serving
from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError
from webhook_worker.runtime import open_runtime

TRUSTED = ("10.0.0.0/24", "fd00::/8")
ALLOWED = ["203.0.113.0/24", "192.0.2.10/32", "2001:db8::/32"]
INSIDE = "203.0.113.7"
OUTSIDE = "198.51.100.9"
PROXY = "10.0.0.2"


class Ingest:
    """An embedded database with TRUSTED_PROXIES set and two tools: ``ips`` (with allowed_ips)
    and ``open`` (without). :meth:`post` serves the real app to one peer address."""

    def __init__(self, tmp_path: Path) -> None:
        environ = {"TRUSTED_PROXIES": ", ".join(TRUSTED), "DATA_DIR": str(tmp_path)}
        self.settings = replace(Settings.from_env(environ), worker_consumer_name="test")
        assert self.settings.trusted_proxies == tuple(ip_network(cidr) for cidr in TRUSTED)

    async def create_tools(self) -> None:
        async with open_runtime(self.settings, migrate_first=True) as runtime:
            await runtime.tool_service.create(
                {"id": "ips", "auth": {"type": "none"}, "allowed_ips": ALLOWED}
            )
            await runtime.tool_service.create({"id": "open", "auth": {"type": "none"}})

    async def post(
        self,
        peer: str,
        forwarded: str | bytes | Sequence[str] | None = None,
        tool_id: str = "ips",
    ) -> httpx.Response:
        headers: list[tuple[str, str | bytes]] = []
        if isinstance(forwarded, str | bytes):
            headers.append(("X-Forwarded-For", forwarded))
        elif forwarded is not None:  # several header lines, as some proxies send them
            headers.extend(("X-Forwarded-For", line) for line in forwarded)
        # A runtime per request: the app's lifespan closes the ingest batcher when it ends.
        async with (
            open_runtime(self.settings) as runtime,
            serving(runtime, client=(peer, 40000)) as client,
        ):
            body = uuid.uuid4().bytes  # never a duplicate of an earlier request
            # httpx types header values as all str or all bytes, but encodes each value on its
            # own (bytes as given): the cases mix them to send raw bytes.
            sent = cast(Sequence[tuple[str, str]], headers)
            return await client.post(f"/webhooks/{tool_id}", content=body, headers=sent)

    async def queued(self) -> int:
        async with open_runtime(self.settings) as runtime:
            return await runtime.queue.depth()


@pytest.fixture
async def ingest(tmp_path: Path) -> Ingest:
    opened = Ingest(tmp_path)
    await opened.create_tools()
    return opened


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "ip_not_allowed"
    assert set(response.json()) == {"error", "detail"}


def assert_accepted(response: httpx.Response) -> None:
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"


@pytest.mark.parametrize("peer", [INSIDE, "203.0.113.255", "192.0.2.10", "2001:db8::5"])
async def test_a_client_inside_allowed_ips_is_accepted(ingest: Ingest, peer: str) -> None:
    assert_accepted(await ingest.post(peer))


@pytest.mark.parametrize(
    "peer", [OUTSIDE, "192.0.2.11", "203.0.114.1", "2001:db9::1", "127.0.0.1", "::1", PROXY]
)
async def test_a_client_outside_allowed_ips_is_403(ingest: Ingest, peer: str) -> None:
    assert_refused(await ingest.post(peer))
    assert await ingest.queued() == 0


async def test_a_tool_without_allowed_ips_takes_any_client(ingest: Ingest) -> None:
    for peer in (OUTSIDE, "2001:db9::1"):
        assert_accepted(await ingest.post(peer, tool_id="open", forwarded="not an address"))


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(ingest: Ingest) -> None:
    # A spoofing attempt: the client claims an allowed address.
    assert_refused(await ingest.post(OUTSIDE, forwarded=INSIDE))
    assert_refused(await ingest.post(OUTSIDE, forwarded=f"{INSIDE}, {PROXY}"))
    # ...and the header cannot take away what the peer address grants either.
    assert_accepted(await ingest.post(INSIDE, forwarded=OUTSIDE))
    assert_accepted(await ingest.post(INSIDE, forwarded="garbage"))


async def test_forwarded_for_from_a_trusted_proxy_is_honoured(ingest: Ingest) -> None:
    assert_accepted(await ingest.post(PROXY, forwarded=INSIDE))
    assert_refused(await ingest.post(PROXY, forwarded=OUTSIDE))
    # A proxy's own address is not the client's: without the header the proxy is the client.
    assert_refused(await ingest.post(PROXY))


async def test_the_chain_is_walked_from_the_right_past_trusted_hops(ingest: Ingest) -> None:
    # client -> proxy 10.0.0.3 -> proxy 10.0.0.2 (the peer): the client is the first untrusted
    # hop from the right; whatever the client itself put on the left does not count.
    assert_accepted(await ingest.post(PROXY, forwarded=f"{OUTSIDE}, {INSIDE}, 10.0.0.3"))
    assert_refused(await ingest.post(PROXY, forwarded=f"{INSIDE}, {OUTSIDE}, 10.0.0.3"))
    assert_refused(await ingest.post(PROXY, forwarded=f"{INSIDE},{OUTSIDE}"))
    assert_accepted(await ingest.post(PROXY, forwarded=f"  {OUTSIDE} ,{INSIDE} ,10.0.0.9  "))


async def test_ipv6_clients_and_proxies(ingest: Ingest) -> None:
    assert_accepted(await ingest.post("fd00::1", forwarded="2001:db8::7"))
    assert_accepted(await ingest.post("fd00::1", forwarded=f"2001:db8::7, {PROXY}, fd00::2"))
    assert_refused(await ingest.post("fd00::1", forwarded="2001:db9::7"))
    assert_accepted(await ingest.post("fd00::1", forwarded=INSIDE))  # v4 client, v6 proxy
    assert_refused(await ingest.post("2001:db9::1", forwarded="2001:db8::7"))  # not a proxy


@pytest.mark.parametrize(
    "forwarded",
    [
        "not-an-ip",
        f"{INSIDE}, garbage",
        f"garbage, {INSIDE}",  # the malformed hop is left of the client: never looked at
        "203.0.113.999",
        f"{INSIDE}:443",
        "[2001:db8::7]",
        f"{INSIDE},,",
        ",",
        "\u00e9t\u00e9".encode("latin-1"),
        "x" * 5000,
    ],
)
async def test_malformed_forwarded_for_is_403_not_500(
    ingest: Ingest, forwarded: str | bytes
) -> None:
    response = await ingest.post(PROXY, forwarded=forwarded)
    if forwarded == f"garbage, {INSIDE}":
        assert_accepted(response)
    else:
        assert_refused(response)


async def test_a_second_forwarded_for_line_from_the_proxy_is_not_bypassed(
    ingest: Ingest,
) -> None:
    # The client sends "X-Forwarded-For: <allowed address>"; a proxy that adds its own line
    # (rather than appending to the client's) puts the real client address in a second line.
    # The lines form one list (RFC 9110 5.3); its right end is what the proxy saw.
    assert_refused(await ingest.post(PROXY, forwarded=[INSIDE, OUTSIDE]))


async def test_ipv4_mapped_peers_match_ipv4_networks(ingest: Ingest) -> None:
    assert_accepted(await ingest.post(f"::ffff:{INSIDE}"))
    assert_accepted(await ingest.post(f"::ffff:{PROXY}", forwarded=INSIDE))


def test_a_bad_trusted_proxies_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^TRUSTED_PROXIES: "):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/24, proxy.internal"})
