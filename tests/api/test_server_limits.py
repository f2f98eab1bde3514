"""What a client meets before any authentication, on a real ``webhook-worker run`` spoken to over
raw sockets: header size and count caps, idle and trickle timeouts, the connection cap. And the
cap on the headers ingest stores with an event."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server_process import RunningServer, webhook_worker_run
from tests.support import eventually_sync, serving
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime

TIMEOUT = 1.0  # HTTP_IDLE_TIMEOUT, HTTP_HEADER_TIMEOUT and HTTP_BODY_TIMEOUT of the server
HEAD = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    seconds = f"{TIMEOUT:g}s"
    with webhook_worker_run(
        tmp_path_factory.mktemp("limits"),
        HTTP_IDLE_TIMEOUT=seconds,
        HTTP_HEADER_TIMEOUT=seconds,
        HTTP_BODY_TIMEOUT=seconds,
    ) as running:
        yield running


def answer_and_close(sock: socket.socket, within: float) -> tuple[bytes, bool, float]:
    """Everything the server sends until it closes the connection: (bytes, closed, seconds
    waited). ``closed`` is False when the server neither closed nor reset within ``within``."""
    started = time.monotonic()
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False, time.monotonic() - started
    except ConnectionResetError:
        pass
    return received, True, time.monotonic() - started


def one_answer(sock: socket.socket) -> bytes:
    """One complete answer (by its Content-Length) on a connection that stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["one endless header", "endless header lines"])
def test_oversized_headers_are_refused_early_without_growing_the_server(
    server: RunningServer, shape: str
) -> None:
    before = server.rss_kib()
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    chunk = b"a" * 64 * 1024 if shape == "one endless header" else line * 64
    sent, answered = 0, False
    with server.connect() as sock:
        sock.sendall(b"POST /webhooks/nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        try:
            # Up to 32 MiB of headers that never end, unless the server answers first.
            while sent < 32 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answered = True
                    break
            else:
                answered = bool(select.select([sock], [], [], 3)[0])
        except (BrokenPipeError, ConnectionResetError):
            answered = True  # cut off while sending
        received, closed, _ = answer_and_close(sock, 5) if answered else (b"", False, 0.0)
    assert answered and closed, f"no answer after {sent} bytes of headers"
    # The server stops reading at 64 KiB; what the kernel's socket buffers took in meanwhile
    # (a few MiB on loopback) is counted as sent too.
    assert sent <= 16 * 1024 * 1024, f"{sent} bytes of headers went in before an answer"
    # 431 when it arrives before the close (a reset may overtake it: the client was still
    # sending, and a socket closed with unread data is reset).
    assert received == b"" or received.startswith(b"HTTP/1.1 431 "), received[:200]
    grown = server.rss_kib() - before
    assert grown < 16 * 1024, f"the server grew by {grown} KiB"


@pytest.mark.slow
def test_too_many_header_lines_are_refused_with_431(server: RunningServer) -> None:
    extra = b"".join(b"X-Many-%d: v\r\n" % i for i in range(150))
    with server.connect() as sock:
        sock.sendall(HEAD + extra + b"\r\n")
        received, closed, _ = answer_and_close(sock, 5)
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b'"error":"headers_too_large"' in received
    assert closed
    # Within the limit, the same request is served.
    with server.connect() as sock:
        sock.sendall(HEAD + extra[: extra.index(b"X-Many-90:")] + b"\r\n")
        assert one_answer(sock).startswith(b"HTTP/1.1 200 ")


@pytest.mark.slow
def test_an_idle_connection_is_closed_after_the_idle_timeout(server: RunningServer) -> None:
    with server.connect() as sock:  # never sends anything
        received, closed, waited = answer_and_close(sock, TIMEOUT + 5)
    assert closed, "a silent connection stayed open"
    assert received == b""
    assert waited >= TIMEOUT * 0.8

    with server.connect() as sock:  # one request, then silence on the kept-alive connection
        sock.sendall(HEAD + b"\r\n")
        assert one_answer(sock).startswith(b"HTTP/1.1 200 ")
        received, closed, waited = answer_and_close(sock, TIMEOUT + 5)
    assert closed and received == b"", "an idle kept-alive connection stayed open"


def trickle(sock: socket.socket, pieces: Iterator[bytes], within: float) -> bool:
    """Send ``pieces`` a little at a time (the pace is what is tested) until the server closes
    the connection; False if it is still open after ``within`` seconds."""
    deadline = time.monotonic() + within
    try:
        for piece in pieces:
            sock.sendall(piece)
            if select.select([sock], [], [], 0.2)[0]:
                return True
            if time.monotonic() > deadline:
                return False
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


@pytest.mark.slow
def test_headers_that_trickle_in_are_cut_off_with_408(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(HEAD + b"X-Slow: ")
        started = time.monotonic()
        assert trickle(sock, forever(b"a"), within=TIMEOUT + 5), "trickled headers never cut"
        received, closed, _ = answer_and_close(sock, 5)
        elapsed = time.monotonic() - started
    assert closed
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert TIMEOUT * 0.8 <= elapsed < TIMEOUT + 5


@pytest.mark.slow
def test_a_body_that_trickles_in_is_cut_off_quietly(server: RunningServer) -> None:
    for path in (b"/api/v1/tools", b"/webhooks/nowhere"):
        with server.connect() as sock:
            sock.sendall(
                b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            assert trickle(sock, forever(b" "), within=TIMEOUT + 5), f"{path!r}: never cut"
            received, closed, _ = answer_and_close(sock, 5)
        assert closed
        # The management API waits for the whole body: 408. Ingest answers an unknown tool at
        # once (404) without reading the body, and the rest is then cut off all the same.
        expected = b"HTTP/1.1 408 " if path.startswith(b"/api/") else b"HTTP/1.1 404 "
        assert received.startswith(expected), received[:200]
    # A client cut off is not an error of the service: no traceback for it.
    assert "Traceback" not in server.output()
    assert "unexpectedly" not in server.output()


@pytest.mark.slow
def test_connections_over_the_cap_are_answered_503_and_closed(tmp_path: Path) -> None:
    cap = 4
    with webhook_worker_run(tmp_path, HTTP_MAX_CONNECTIONS=str(cap)) as server:
        held = [server.connect() for _ in range(cap)]
        try:
            for sock in held:  # each one served, so each is surely counted
                sock.sendall(HEAD + b"\r\n")
                assert one_answer(sock).startswith(b"HTTP/1.1 200 ")
            with server.connect() as extra:
                received, closed, _ = answer_and_close(extra, 5)
            assert closed
            assert received.startswith(b"HTTP/1.1 503 "), received[:200]
            assert b"HTTP_MAX_CONNECTIONS" in received
            held.pop().close()

            def served_again() -> bool:
                try:
                    return httpx.get(f"{server.base}/health/live", timeout=5).status_code == 200
                except httpx.TransportError:
                    return False

            eventually_sync(served_again, 10, "a connection to be served below the cap")
        finally:
            for sock in held:
                sock.close()


async def test_headers_stored_with_an_event_are_capped(tmp_path: Path) -> None:
    # In process, past the listener's own 64 KiB cap: ingest bounds what it stores (256 KiB).
    async with open_runtime(Settings(data_dir=tmp_path), migrate_first=True) as runtime:
        await runtime.tool_service.create({"id": "open", "auth": {"type": "none"}})
        async with serving(runtime) as client:
            padded = {f"X-Pad-{i}": "a" * 10_000 for i in range(30)}  # ~300 KB stored
            refused = await client.post("/webhooks/open", content=b"{}", headers=padded)
            fewer = dict(list(padded.items())[:20])  # ~200 KB stored
            accepted = await client.post("/webhooks/open", content=b"{}", headers=fewer)
    assert refused.status_code == 431, refused.text
    assert refused.json()["error"] == "headers_too_large"
    assert accepted.status_code == 202, accepted.text
