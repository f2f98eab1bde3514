"""Structured logs (structlog): JSON lines by default, readable console lines for development.

Standard-library loggers (ours, uvicorn's, alembic's) go through the same renderer, so every line
of a process has one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


_CHATTY_LIBRARIES = (
    "aiosqlite",
    "asyncpg",
    "sqlalchemy",
    "httpx",
    "aiohttp",
    "httpcore",
    "hpack",
    "redis",
    "urllib3",
    "opentelemetry",
)


def configure(level: str = "info", fmt: str = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        # ``extra={"event_id": ..., "trace_id": ...}`` on a stdlib call becomes JSON fields.
        structlog.stdlib.ExtraAdder(),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One access line per webhook is noise at thousands per second; debug shows them.
    logging.getLogger("uvicorn.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
    logging.getLogger("alembic").setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
    # Libraries whose debug lines carry SQL parameters or request details (tool configs with
    # secrets, signature headers): LOG_LEVEL=debug is for this service's own detail only.
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(_LEVELS[level], logging.WARNING))
