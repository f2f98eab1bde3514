"""The in-process copy of every tool, kept current by polling the tools revision.

Ingest looks tools up here (a dict lookup, no database round trip). A change made by any process
bumps the revision; every process sees it within TOOLS_REFRESH_INTERVAL and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from webhook_worker.auth import Verifier, build_verifier
from webhook_worker.auth.base import SignsBodyAlone
from webhook_worker.errors import ToolConfigError
from webhook_worker.storage.tools import ToolStore
from webhook_worker.tools.model import Tool, parse_tool

log = logging.getLogger(__name__)

MISS_RELOAD_INTERVAL = 0.5
"""Seconds between database checks triggered by requests for unknown tools (bounds the load a
flood of requests for made-up tool ids can cause)."""


@dataclass(frozen=True, slots=True)
class LiveTool:
    """A tool ready for the hot path: validated, with its verifier built."""

    tool: Tool
    verifier: Verifier


class ToolCache:
    def __init__(self, store: ToolStore, refresh_interval: float) -> None:
        self._store = store
        self._interval = refresh_interval
        self._tools: dict[str, LiveTool] = {}
        self._revision: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._miss_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._last_miss_reload = -MISS_RELOAD_INTERVAL
        self._checked_at = 0.0
        """Wall-clock time at which the last successful :meth:`load` started."""

    def get(self, tool_id: str) -> LiveTool | None:
        return self._tools.get(tool_id)

    def replay_keys(self, tool_id: str, body: bytes) -> tuple[str, ...]:
        """The replay keys ingest may have remembered for ``body`` sent to this tool
        (:class:`~webhook_worker.auth.base.SignsBodyAlone`); none for a scheme that signs more
        than the body, or a tool this cache does not hold."""
        live = self._tools.get(tool_id)
        if live is None or not isinstance(live.verifier, SignsBodyAlone):
            return ()
        return live.verifier.replay_keys(body)

    async def find(self, tool_id: str) -> LiveTool | None:
        """Like :meth:`get`, but a miss checks the database for a newer revision first (at most
        every MISS_RELOAD_INTERVAL), so a tool added a moment ago by another process or the CLI
        is found at once rather than after the next refresh."""
        live = self._tools.get(tool_id)
        if live is not None:
            return live
        now = time.monotonic()
        if now - self._last_miss_reload < MISS_RELOAD_INTERVAL:
            return None
        async with self._miss_lock:
            if now - self._last_miss_reload >= MISS_RELOAD_INTERVAL:
                self._last_miss_reload = time.monotonic()
                try:
                    await self.load()
                except Exception as exc:  # the database is away: unknown stays unknown
                    log.debug("tool reload on a miss failed: %r", exc)
        return self._tools.get(tool_id)

    async def as_of(self, tool_id: str, when: float) -> LiveTool | None:
        """The tool as configured at wall-clock time ``when`` or later: a miss reloads unless
        the cache was checked after ``when``. The worker asks this for an event accepted at
        ``when`` (its tool existed then), so a tool added a moment ago is never taken for a
        missing one. Raises when the database is down."""
        live = self._tools.get(tool_id)
        if live is not None or self._checked_at > when:
            return live
        async with self._miss_lock:
            if self._checked_at <= when:
                await self.load()
        return self._tools.get(tool_id)

    def all(self) -> list[Tool]:
        """Every tool served (the retention sweep reads each one's ``retention``)."""
        return [live.tool for live in self._tools.values()]

    def __len__(self) -> int:
        return len(self._tools)

    async def load(self) -> None:
        """Read the revision and, if it moved, every tool. Raises when the database is down."""
        started = time.time()
        revision = await self._store.revision()
        if revision == self._revision:
            self._checked_at = started
            return
        tools: dict[str, LiveTool] = {}
        for row in await self._store.list_all():
            try:
                tool = parse_tool(row["config"])
                live = LiveTool(tool, build_verifier(tool.auth))
            except ToolConfigError as exc:
                # Stored by an older release with looser rules: keep the others working.
                log.error("tool %r is invalid and is not served: %s", row["id"], exc)
                continue
            tools[tool.id] = live
        self._tools = tools
        self._revision = revision
        self._checked_at = started
        log.info("loaded %d tools (revision %d)", len(tools), revision)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name="tool-cache-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._closing.set()
            # The loop ends on _closing; a cancel alone could be taken for a database error.
            done, _ = await asyncio.wait({self._task}, timeout=self._interval + 10)
            if not done:
                self._task.cancel()
            self._task = None

    async def _refresh_forever(self) -> None:
        failing = False
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=self._interval)
                return
            try:
                await self.load()
            except Exception as exc:  # keep serving the last good copy while the database is away
                if not failing:
                    log.warning("cannot refresh tools, serving the cached copy: %r", exc)
                failing = True
            else:
                if failing:
                    log.info("tool refresh works again")
                failing = False
