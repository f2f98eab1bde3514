"""Tool definitions in the database. Every change bumps ``metadata.tools_revision`` in the same
transaction, which is how other processes notice it (see tools/cache.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from webhook_worker.constants import METADATA_TOOLS_REVISION
from webhook_worker.errors import NotFoundError, ToolConfigError
from webhook_worker.storage.database import Database
from webhook_worker.storage.schema import metadata_table, tools
from webhook_worker.tools.model import Tool


class ToolStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def revision(self) -> int:
        async with self._db.connect() as conn:
            value = await conn.scalar(
                select(metadata_table.c.value).where(
                    metadata_table.c.key == METADATA_TOOLS_REVISION
                )
            )
        return int(value or 0)

    async def list_all(self) -> list[dict[str, Any]]:
        """Every tool as stored: ``{"config": {...}, "created_at", "updated_at"}`` rows."""
        async with self._db.connect() as conn:
            rows = (await conn.execute(select(tools).order_by(tools.c.id))).mappings().all()
        return [dict(row) for row in rows]

    async def get(self, tool_id: str) -> dict[str, Any]:
        async with self._db.connect() as conn:
            row = (
                (await conn.execute(select(tools).where(tools.c.id == tool_id))).mappings().first()
            )
        if row is None:
            raise NotFoundError(f"no tool {tool_id!r}")
        return dict(row)

    async def create(self, tool: Tool) -> dict[str, Any]:
        now = datetime.now(UTC)
        row = {
            "id": tool.id,
            "provider": tool.provider,
            "enabled": tool.enabled,
            "config": dict(tool.config),
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
        return row

    async def replace(self, tool: Tool) -> dict[str, Any]:
        async with self._db.begin() as conn:
            result = await conn.execute(
                update(tools)
                .where(tools.c.id == tool.id)
                .values(
                    provider=tool.provider,
                    enabled=tool.enabled,
                    config=dict(tool.config),
                    updated_at=datetime.now(UTC),
                )
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no tool {tool.id!r}")
            await _bump(conn)
        return await self.get(tool.id)

    async def delete(self, tool_id: str) -> None:
        async with self._db.begin() as conn:
            result = await conn.execute(delete(tools).where(tools.c.id == tool_id))
            if result.rowcount == 0:
                raise NotFoundError(f"no tool {tool_id!r}")
            await _bump(conn)


async def _bump(conn: AsyncConnection) -> None:
    await conn.execute(
        update(metadata_table)
        .where(metadata_table.c.key == METADATA_TOOLS_REVISION)
        .values(value=metadata_table.c.value + 1)
    )
