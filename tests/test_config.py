"""Settings from the environment: durations, sizes, addresses, and one clear error per bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webhook_worker.config import Settings, format_duration, parse_duration, parse_size
from webhook_worker.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1),
        ("5m", 300),
        ("24h", 86400),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("30", 30),
        ("30d", 30 * 86400),
        ("1d12h", 36 * 3600),
    ],
)
def test_go_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1w", "5 m", "m5", "-1s", "1s5", "abc"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.5, 1, 90, 300, 5400, 86400])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "size"), [("5MiB", 5 * 1024**2), ("512KB", 512_000), ("10", 10)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_are_the_embedded_mode() -> None:
    settings = Settings.from_env({})
    assert settings.is_embedded
    assert not settings.uses_redis
    assert settings.api_addr == ("127.0.0.1", 8080)
    assert settings.health_endpoint == ("0.0.0.0", 8088)
    assert settings.max_payload_bytes == 5 * 1024 * 1024
    assert settings.worker_idempotency_ttl == 86400
    assert settings.retry.max_retries == 5
    assert settings.retry.max_elapsed_time == 1800


def test_database_parts_build_a_postgres_url_and_database_url_wins() -> None:
    parts = {
        "DATABASE_HOST": "db",
        "DATABASE_USER": "u",
        "DATABASE_PASSWORD": "p@ss",
        "DATABASE_NAME": "x",
    }
    assert Settings.from_env(parts).sqlalchemy_url() == "postgresql+asyncpg://u:p%40ss@db:5432/x"
    both = {**parts, "DATABASE_URL": "postgresql://other/y"}
    assert Settings.from_env(both).sqlalchemy_url() == "postgresql+asyncpg://other/y"
    assert "p@ss" not in Settings.from_env(parts).describe_database()


def test_data_dir_places_the_sqlite_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert settings.sqlalchemy_url() == f"sqlite+aiosqlite:///{tmp_path / 'webhook-worker.db'}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_DB", "x"),
        ("REDIS_ADDR", "localhost"),
        ("API_ADDR", "8080"),
        ("DATABASE_PORT", "0"),
        ("WORKER_IDEMPOTENCY_TTL", "1w"),
        ("RETRY_MULTIPLIER", "0.5"),
        ("MAX_PAYLOAD_BYTES", "lots"),
        ("LOG_LEVEL", "loud"),
        ("REDIS_TLS_ENABLED", "maybe"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("DATABASE_URL", "mysql://x/y"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


@pytest.mark.parametrize(
    "token",
    [
        "REPLACE-ME",
        "replace-me",
        "changeme",
        "CHANGEME",
        "secret",
        "admin",
        "token",
        "password",
        "x",
        "x" * 40,  # one character repeated, however long
    ],
)
def test_a_placeholder_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ADMIN_TOKEN": token})
    message = str(caught.value)
    assert message.startswith("ADMIN_TOKEN:") and "\n" not in message
    assert "placeholder" in message and "openssl rand" in message


@pytest.mark.parametrize("token", ["s3cr3t-t0k3n", "abcdefghijklmno"])
def test_a_short_admin_token_is_refused_without_being_repeated(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ADMIN_TOKEN": token})
    message = str(caught.value)
    assert message.startswith("ADMIN_TOKEN:") and "\n" not in message
    assert "16" in message and token not in message


def test_a_long_random_admin_token_is_accepted() -> None:
    token = "9f86d081884c7d659a2feaa0c55ad015"
    assert Settings.from_env({"ADMIN_TOKEN": token}).admin_token == token
    assert Settings.from_env({"ADMIN_TOKEN": "abcdefghijklmnop"}).admin_token == "abcdefghijklmnop"
    assert Settings.from_env({}).admin_token is None


@pytest.mark.slow  # a real process, if a short-lived one
@pytest.mark.parametrize("token", ["REPLACE-ME", "t1ny-t0k"])
def test_the_cli_refuses_to_start_with_a_bad_admin_token(tmp_path: Path, token: str) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "ADMIN_TOKEN", "API_"))
    }
    env.update(DATA_DIR=str(tmp_path), ADMIN_TOKEN=token, API_ADDR="127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "webhook_worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "ADMIN_TOKEN" in lines[0], lines
    assert token not in lines[0]


def test_http_limits_have_defaults_and_variables() -> None:
    defaults = Settings.from_env({}).http
    assert (defaults.max_connections, defaults.idle_timeout) == (1000, 5.0)
    assert (defaults.header_timeout, defaults.body_timeout) == (10.0, 60.0)
    assert (defaults.max_header_bytes, defaults.max_headers) == (64 * 1024, 100)
    limits = Settings.from_env(
        {
            "HTTP_MAX_CONNECTIONS": "50",
            "HTTP_IDLE_TIMEOUT": "500ms",
            "HTTP_HEADER_TIMEOUT": "2s",
            "HTTP_BODY_TIMEOUT": "2m",
        }
    ).http
    assert (limits.max_connections, limits.idle_timeout) == (50, 0.5)
    assert (limits.header_timeout, limits.body_timeout) == (2.0, 120.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_IDLE_TIMEOUT", "forever"),
        ("HTTP_HEADER_TIMEOUT", "0s"),
        ("HTTP_BODY_TIMEOUT", "-1s"),
    ],
)
def test_a_bad_http_limit_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}:")
