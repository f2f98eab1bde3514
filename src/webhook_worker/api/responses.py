"""JSON responses (orjson) and the error shape ``{"error": "...", "detail": "..."}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer. ``code`` is a stable machine-readable word; ``detail`` says what to do."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)
