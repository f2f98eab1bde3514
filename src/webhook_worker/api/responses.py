"""JSON responses (orjson) and the error shape ``{"error": "...", "detail": "..."}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from webhook_worker.errors import BadRequestError, UnavailableError, WebhookWorkerError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            # orjson encodes at most 254 levels of nesting but parses up to 1024, so a stored
            # payload can be too deep for it; anything else it refuses is refused again here.
            return dumps_any_depth(content)


def dumps_any_depth(content: Any) -> bytes:
    """``content`` as JSON at any depth: containers by hand with a stack, leaves by orjson."""
    out = bytearray()
    # (True, bytes) is output as it is; (False, value) is a value still to encode.
    pending: list[tuple[bool, Any]] = [(False, content)]
    while pending:
        literal, item = pending.pop()
        if literal:
            out += item
        elif isinstance(item, dict) and item:
            parts: list[tuple[bool, Any]] = []
            for index, (key, value) in enumerate(item.items()):
                name = orjson.dumps(key if isinstance(key, str) else str(key))
                parts += [(True, (b"," if index else b"{") + name + b":"), (False, value)]
            pending += [(True, b"}"), *reversed(parts)]
        elif isinstance(item, list | tuple) and item:
            parts = []
            for index, value in enumerate(item):
                parts += [(True, b"," if index else b"["), (False, value)]
            pending += [(True, b"]"), *reversed(parts)]
        else:
            out += orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS)
    return bytes(out)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer. ``code`` is a stable machine-readable word; ``detail`` says what to do."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def error_response(exc: WebhookWorkerError) -> Response:
    """The answer ``exc`` stands for: its status and code, its message as ``detail``, the
    ``field`` a :class:`BadRequestError` names, and ``Retry-After`` when a dependency is away."""
    if isinstance(exc, UnavailableError):
        # The message carries the driver's reason (host, port, user): for the log, not the
        # caller, who learns only which dependency is away and when to come back.
        away = exc.code.removesuffix("_unavailable") if exc.code.endswith("_unavailable") else ""
        return error(
            exc.status_code,
            exc.code,
            f"the {away or 'service'} is unavailable; retry later",
            headers={"Retry-After": str(exc.retry_after)},
        )
    payload = {"error": exc.code, "detail": exc.detail}
    if isinstance(exc, BadRequestError) and exc.field:
        payload["field"] = exc.field
    return JSONResponse(payload, status_code=exc.status_code)
