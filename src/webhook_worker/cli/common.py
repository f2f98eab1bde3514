"""What every sub-command shares: settings, one-line errors, running a coroutine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from rich.console import Console

from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError
from webhook_worker.observability.logging import configure

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line (no traceback) and exit."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def load_settings(*, quiet_logs: bool = False) -> Settings:
    """Settings from the environment, or exit 2 with the one line naming the bad variable."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(f"bad configuration: {exc}")
    configure(
        "warning" if quiet_logs and settings.log_level == "info" else settings.log_level,
        settings.log_format,
    )
    return settings


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
