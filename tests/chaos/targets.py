"""Forward targets that misbehave at the TCP level, on loopback: one accepts and never answers,
one resets every connection once the request has arrived. (The healthy and the slow target are
:class:`tests.support.Target` served by uvicorn.)"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

_WEBHOOK_ID = re.compile(rb"^webhook-id:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_HEAD_END = b"\r\n\r\n"


class _RawTarget:
    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        """Connections accepted."""
        self.ended = 0
        """Connections that are over (closed by the client, or reset by us)."""
        self.requests: Counter[str] = Counter()
        """How often each event (``webhook-id``) arrived."""
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def open(self) -> int:
        return self.connections - self.ended

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = b""
        while _HEAD_END not in head:
            chunk = await reader.read(65536)
            if not chunk:
                break
            head += chunk
        if match := _WEBHOOK_ID.search(head.split(_HEAD_END, 1)[0]):
            self.requests[match.group(1).decode()] += 1
        return head

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self.ended += 1
            self._writers.discard(writer)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()


class HangingTarget(_RawTarget):
    """Reads the request and never answers; the connection stays open until the client (the
    worker's forward timeout) gives up."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_head(reader)
        while await reader.read(65536):  # the body, then nothing until the client hangs up
            pass


class ResettingTarget(_RawTarget):
    """Reads the request head, then resets the connection (RST, no answer)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_head(reader)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


_T = TypeVar("_T", bound=_RawTarget)


@asynccontextmanager
async def raw_target(target: _T) -> AsyncIterator[_T]:
    server = await asyncio.start_server(target._handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield target
    finally:
        server.close()
        target.close_all()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
