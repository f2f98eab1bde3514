"""Tool definitions in the database. Every change bumps ``metadata.tools_revision`` in the same
transaction, which is how other processes notice it (see tools/cache.py).

Secrets are sealed on the way in and opened on the way out (tools/secrets.py), so callers only
ever see plaintext. A secret that cannot be decrypted (SECRETS_KEY missing or wrong) stays sealed
in what a read returns, with a warning naming SECRETS_KEY: redacted views and edits of other
fields keep working, and the sealed value survives the rewrite. The store the tool cache reads
(:meth:`ToolStore.for_serving`) leaves such a tool out instead, logging why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.config import Settings
from webhook_worker.constants import METADATA_TOOLS_REVISION
from webhook_worker.errors import ConflictError, NotFoundError, ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import metadata_table, tools
from webhook_worker.tools.model import DEFAULT_DESTINATION, Tool
from webhook_worker.tools.secrets import SecretsAtRest, UndecryptableSecretError

log = logging.getLogger(__name__)


class DestinationFlags(NamedTuple):
    """What the gauges show of a destination's configuration."""

    paused: bool
    circuit_breaker: bool


class ToolStore:
    """``ToolStore(db)`` alone keeps secrets as given; the processes build it with
    :meth:`from_settings`, which encrypts with SECRETS_KEY or refuses plaintext secrets in a
    non-embedded database."""

    def __init__(
        self, db: Database, secrets: SecretsAtRest | None = None, *, serving: bool = False
    ) -> None:
        self._db = db
        self._secrets = secrets if secrets is not None else SecretsAtRest()
        self._serving = serving

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> ToolStore:
        """The store for ``settings``: ConfigError when SECRETS_KEY is malformed."""
        return cls(db, SecretsAtRest.from_settings(settings))

    def for_serving(self) -> ToolStore:
        """The same store for the tool cache: a tool whose secrets cannot be decrypted is not
        returned (it would only answer 401, or sign forwards with the ciphertext); an error
        naming SECRETS_KEY is logged instead, and the other tools are served."""
        return ToolStore(self._db, self._secrets, serving=True)

    async def revision(self) -> int:
        async with self._db.connect() as conn:
            value = await conn.scalar(
                select(metadata_table.c.value).where(
                    metadata_table.c.key == METADATA_TOOLS_REVISION
                )
            )
        return int(value or 0)

    async def list_all(self) -> list[dict[str, Any]]:
        """Every tool: ``{"id", "provider", "enabled", "config", "created_at", "updated_at"}``
        rows, secrets decrypted."""
        async with self._db.connect() as conn:
            rows = (await conn.execute(select(tools).order_by(tools.c.id))).mappings().all()
        opened: list[dict[str, Any]] = []
        for row in rows:
            try:
                opened.append(self._open(dict(row)))
            except UndecryptableSecretError as exc:  # only when serving: the tool cannot work
                log.error("tool %r is not served: %s", row["id"], exc)
        return opened

    async def get(self, tool_id: str) -> dict[str, Any]:
        async with self._db.connect() as conn:
            row = (
                (await conn.execute(select(tools).where(tools.c.id == tool_id))).mappings().first()
            )
        if row is None:
            raise NotFoundError(f"no tool {tool_id!r}")
        return self._open(dict(row))

    async def destination_flags(self) -> dict[tuple[str, str], DestinationFlags]:
        """Every destination of every tool, by ``(tool id, destination id)`` (a tool's
        ``forward`` as ``default``): whether it is paused and has a circuit breaker. For the
        gauges at each scrape: read as stored, nothing decrypted (neither ids nor these
        fields are secrets), so it costs one query and logs nothing about SECRETS_KEY."""
        async with self._db.connect() as conn:
            rows = (await conn.execute(select(tools.c.id, tools.c.config))).all()
        flags: dict[tuple[str, str], DestinationFlags] = {}
        for tool_id, config in rows:
            if config.get("forward"):
                flags[(tool_id, DEFAULT_DESTINATION)] = DestinationFlags(False, False)
            for item in config.get("destinations") or ():
                if isinstance(item, Mapping) and isinstance(item.get("id"), str):
                    flags[(tool_id, item["id"])] = DestinationFlags(
                        paused=item.get("paused") is True,
                        circuit_breaker=isinstance(item.get("circuit_breaker"), Mapping),
                    )
        return flags

    def check(self, tool: Tool) -> None:
        """Raise ToolConfigError if ``tool``'s secrets could not be stored (no SECRETS_KEY for a
        non-embedded database), without writing anything."""
        self._secrets.seal(tool.config)

    async def create(self, tool: Tool) -> dict[str, Any]:
        """Insert ``tool``. ToolConfigError when its id is taken or a secret may not be stored."""
        now = datetime.now(UTC)
        row = {
            "id": tool.id,
            "provider": tool.provider,
            "enabled": tool.enabled,
            "config": self._secrets.seal(tool.config),
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._db.begin() as conn:
                await conn.execute(insert(tools).values(**row))
                await _bump(conn)
        except IntegrityError:
            raise ToolConfigError(
                "id", f"a tool {tool.id!r} exists already; update it instead"
            ) from None
        return {**row, "config": dict(tool.config)}

    async def replace(
        self, tool: Tool, *, unchanged_since: datetime | None = None
    ) -> dict[str, Any]:
        """Overwrite ``tool``'s definition; its secrets are encrypted with the current key.
        With ``unchanged_since`` (the ``updated_at`` the change was made from), only if nobody
        changed the tool meanwhile: else ConflictError, and the caller starts again from what
        is stored now."""
        config = self._secrets.seal(tool.config)
        condition = [tools.c.id == tool.id]
        if unchanged_since is not None:
            condition.append(tools.c.updated_at == unchanged_since)
        async with self._db.begin() as conn:
            result = await conn.execute(
                update(tools)
                .where(*condition)
                .values(
                    provider=tool.provider,
                    enabled=tool.enabled,
                    config=config,
                    updated_at=datetime.now(UTC),
                )
            )
            if result.rowcount == 0:
                if unchanged_since is not None and await _exists(conn, tool.id):
                    raise ConflictError(f"tool {tool.id!r} was changed meanwhile")
                raise NotFoundError(f"no tool {tool.id!r}")
            await _bump(conn)
        return await self.get(tool.id)

    async def delete(self, tool_id: str) -> None:
        async with self._db.begin() as conn:
            result = await conn.execute(delete(tools).where(tools.c.id == tool_id))
            if result.rowcount == 0:
                raise NotFoundError(f"no tool {tool_id!r}")
            await _bump(conn)

    async def reencrypt(self) -> int:
        """Bring every stored secret up to SECRETS_KEY's first key: plaintext stored before the
        key was set is encrypted, and secrets encrypted with a key that has moved down the list
        are encrypted again. Returns how many tools were rewritten.

        The definitions do not change, so neither do ``updated_at`` and the tools revision. A tool
        changed meanwhile is left alone: whoever changed it encrypted it.
        Without a key, it only warns about plaintext secrets in a non-embedded database.
        """
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(select(tools.c.id, tools.c.config, tools.c.updated_at))
            ).all()
        if self._secrets.box is None:
            if not self._secrets.plaintext_allowed:
                plain = [row.id for row in rows if self._secrets.has_plaintext(row.config)]
                if plain:
                    log.warning(
                        "%d tools have secrets stored in plaintext (%s): set SECRETS_KEY to "
                        "encrypt them",
                        len(plain),
                        ", ".join(plain),
                    )
            return 0
        rewritten = 0
        for row in rows:
            if not self._secrets.needs_rewrite(row.config):
                continue
            opened = self._secrets.open(row.config)
            if opened.undecryptable:
                continue  # the tool cache reports it; nothing here can fix it
            async with self._db.begin() as conn:
                result = await conn.execute(
                    update(tools)
                    .where(tools.c.id == row.id, tools.c.updated_at == row.updated_at)
                    .values(config=self._secrets.seal(opened.config))
                )
            rewritten += result.rowcount
        if rewritten:
            log.info("encrypted the secrets of %d tools with the first SECRETS_KEY", rewritten)
        return rewritten

    def _open(self, row: Mapping[str, Any]) -> dict[str, Any]:
        opened = self._secrets.open(row["config"])
        if opened.undecryptable:
            error = self._secrets.undecryptable_error(opened.undecryptable)
            if self._serving:
                raise error
            log.warning("tool %r: %s", row["id"], error)
        return {**row, "config": opened.config}


async def _bump(conn: AsyncConnection) -> None:
    await conn.execute(
        update(metadata_table)
        .where(metadata_table.c.key == METADATA_TOOLS_REVISION)
        .values(value=metadata_table.c.value + 1)
    )


async def _exists(conn: AsyncConnection, tool_id: str) -> bool:
    return await conn.scalar(select(tools.c.id).where(tools.c.id == tool_id)) is not None
