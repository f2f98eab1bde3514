"""The start-up lines of ``run``, ``api`` and ``worker``."""

from __future__ import annotations

from webhook_worker.cli.serve import describe_retention
from webhook_worker.config import Settings


def test_the_start_lines_say_how_long_events_are_kept() -> None:
    assert describe_retention(Settings.from_env({})) == (
        "kept 720h (EVENTS_RETENTION; a tool's own retention wins), swept every 10m"
    )
    custom = Settings.from_env({"EVENTS_RETENTION": "30d", "RETENTION_INTERVAL": "1m"})
    assert describe_retention(custom).startswith("kept 720h (EVENTS_RETENTION")
    assert describe_retention(custom).endswith("swept every 1m")
    forever = describe_retention(Settings.from_env({"EVENTS_RETENTION": "0"}))
    assert forever.startswith("kept forever (EVENTS_RETENTION=0")
