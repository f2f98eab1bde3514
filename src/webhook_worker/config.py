"""Settings from the environment.

Every variable is read once at start into a frozen :class:`Settings`. A malformed value raises
:class:`ConfigError` with one line naming the variable, which the CLI prints before exiting 2.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import quote

from cryptography.fernet import Fernet

from webhook_worker.constants import EMBEDDED_DB_FILENAME
from webhook_worker.errors import ConfigError

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
T = TypeVar("T")

SECRETS_KEY_HOWTO: Final = (
    "make one with: python -c "
    '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)

ADMIN_TOKEN_MIN_LENGTH: Final = 16
# Values people leave in place of a real token (the shipped manifests use REPLACE-ME). Compared
# case-insensitively; anything this guessable is refused however long it is.
_PLACEHOLDER_TOKENS: Final = frozenset(
    {
        "replace-me",
        "replace_me",
        "replaceme",
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "admin",
        "token",
        "password",
        "x",
        "test",
        "example",
        "admin-token",
        "your-admin-token",
        "your-token-here",
    }
)
_ADMIN_TOKEN_HOWTO: Final = "set a long random one, e.g. ADMIN_TOKEN=$(openssl rand -hex 32)"  # noqa: S105 (how to make one, not one)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``500ms``, ``1m30s``, ``24h``) into seconds.

    A bare number is taken as seconds. Raises ValueError on anything else.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        return _non_negative(float(text))
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 5m, 24h or 30d")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of ``seconds`` (inverse of :func:`parse_duration`)."""
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


def parse_size(text: str) -> int:
    """Parse a byte size such as ``5242880``, ``5MiB`` or ``512KB``."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 5MiB, 512KB or 1048576")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


def parse_address(text: str, default_host: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``:port`` (Go style), returning ``(host, port)``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not an address such as 127.0.0.1:8080 or :8088")
    host = host.strip("[]") or default_host
    return host, int(port)


def parse_secrets_key(text: str) -> tuple[str, ...]:
    """SECRETS_KEY: one or more Fernet keys, comma-separated. The first encrypts; every one
    decrypts, so a new key goes first and the old one stays behind it until nothing uses it.

    Raises ValueError saying how to make a key. The message never repeats the key itself.
    """
    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    if not keys:
        raise ValueError(f"no key given; {SECRETS_KEY_HOWTO}")
    for position, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:  # bad base64 (binascii.Error is a ValueError) or not 32 bytes
            which = f"key {position} of {len(keys)}" if len(keys) > 1 else "the value"
            raise ValueError(
                f"{which} is not a Fernet key (32 url-safe base64-encoded bytes); "
                f"{SECRETS_KEY_HOWTO}"
            ) from None
    return keys


def check_admin_token(token: str) -> str:
    """``token`` when it is fit to guard the management API; ValueError for a known placeholder
    or one shorter than 16 characters. The message never repeats the token."""
    lowered = token.lower()
    # One character repeated ("xxxxxxxxxxxxxxxx") is as guessable as a placeholder.
    if lowered in _PLACEHOLDER_TOKENS or lowered.startswith("replace-me") or len(set(token)) == 1:
        raise ValueError(f"the value is a placeholder, not a token; {_ADMIN_TOKEN_HOWTO}")
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        raise ValueError(
            f"too short ({len(token)} characters, at least {ADMIN_TOKEN_MIN_LENGTH} needed); "
            f"{_ADMIN_TOKEN_HOWTO}"
        )
    return token


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart failed work is retried (exponential, with jitter)."""

    max_retries: int = 5
    initial_interval: float = 1.0
    max_interval: float = 300.0
    multiplier: float = 2.0
    max_elapsed_time: float = 1800.0


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """When a component of ``/health`` is degraded or unhealthy (docs/operations.md)."""

    check_timeout: float = 2.0
    database_slow: float = 0.25
    redis_slow: float = 0.1
    queue_degraded_depth: int = 1000
    queue_unhealthy_depth: int = 100_000
    memory_degraded_percent: float = 80.0
    memory_unhealthy_percent: float = 95.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What the HTTP listeners allow a client before any authentication (docs/security.md)."""

    max_connections: int = 1000
    """Open connections per listener; a connection beyond them is answered 503 and closed."""
    idle_timeout: float = 5.0
    """A connection with no request under way (new, or between keep-alive requests) is closed."""
    header_timeout: float = 10.0
    """The request line and headers must arrive within this, once their first byte has."""
    body_timeout: float = 60.0
    """The body must arrive within this once the headers have (5 MiB in 60 s is ~85 KiB/s)."""
    max_header_bytes: int = 64 * 1024
    """Request line and headers together; more is answered 431 and the connection closed."""
    max_headers: int = 100


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the processes read from the environment. See docs/configuration.md."""

    database_url: str | None = field(default=None, repr=False)
    database_host: str | None = None
    database_port: int = 5432
    database_name: str = "devops_mcp"
    database_user: str | None = None
    database_password: str | None = field(default=None, repr=False)
    database_ssl_mode: str = "disable"
    database_pool_size: int = 10
    data_dir: Path = Path("./data")

    redis_addr: str | None = None
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_db: int = 0
    redis_tls_enabled: bool = False
    redis_key_prefix: str = "webhook-worker"

    api_addr: tuple[str, int] = ("127.0.0.1", 8080)
    health_endpoint: tuple[str, int] = ("0.0.0.0", 8088)
    admin_token: str | None = field(default=None, repr=False)
    # Never in a repr: Settings may end up in a log line or a traceback.
    secrets_key: str | None = field(default=None, repr=False)
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    max_payload_bytes: int = 5 * 1024 * 1024
    allow_private_forward: bool = False
    http: HttpLimits = HttpLimits()

    worker_consumer_name: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"
    )
    worker_concurrency: int = 1000
    worker_tool_concurrency: int = 64
    worker_batch_size: int = 500
    worker_idempotency_ttl: float = 24 * 3600.0
    worker_reclaim_idle: float = 60.0
    worker_max_deliveries: int = 10
    worker_shutdown_timeout: float = 30.0
    tools_refresh_interval: float = 2.0

    retry: RetryPolicy = RetryPolicy()
    retry_time_scale: float = 1.0
    """Multiplies every retry delay; for tests (RETRY_TIME_SCALE=0.001), never production."""
    dlq_auto_retry_interval: float = 300.0
    dlq_auto_retry_max: int = 3
    events_retention: float = 720 * 3600.0
    """How long events are kept (a tool's ``retention`` overrides it); 0 keeps them forever."""
    retention_interval: float = 600.0
    """How often the retention sweep runs (one process at a time across the deployment)."""

    health: HealthThresholds = HealthThresholds()

    log_level: str = "info"
    log_format: str = "json"

    @property
    def uses_redis(self) -> bool:
        return self.redis_addr is not None

    @property
    def is_embedded(self) -> bool:
        """True when the database is the SQLite file (no PostgreSQL configured)."""
        return self.sqlalchemy_url().startswith("sqlite")

    def sqlalchemy_url(self) -> str:
        """Async SQLAlchemy URL: DATABASE_URL, else DATABASE_HOST parts, else embedded SQLite."""
        if self.database_url:
            return _async_url(self.database_url)
        if self.database_host:
            credentials = ""
            if self.database_user:
                credentials = quote(self.database_user, safe="")
                if self.database_password:
                    credentials += ":" + quote(self.database_password, safe="")
                credentials += "@"
            return (
                f"postgresql+asyncpg://{credentials}{self.database_host}:{self.database_port}"
                f"/{quote(self.database_name, safe='')}"
            )
        return f"sqlite+aiosqlite:///{(self.data_dir / EMBEDDED_DB_FILENAME).resolve()}"

    def describe_database(self) -> str:
        """Where the data lives, without credentials (for start-up messages)."""
        url = self.sqlalchemy_url()
        if url.startswith("sqlite"):
            return f"SQLite {url.split(':///', 1)[1]}"
        rest = url.split("://", 1)[1]
        return "PostgreSQL " + rest.rsplit("@", 1)[-1]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default: ``os.environ``)."""
        env = _Env(os.environ if environ is None else environ)
        defaults = cls()
        retry_defaults = RetryPolicy()
        health = HealthThresholds()
        http = HttpLimits()
        settings = cls(
            database_url=env.text("DATABASE_URL"),
            database_host=env.text("DATABASE_HOST"),
            database_port=env.integer("DATABASE_PORT", defaults.database_port, low=1, high=65535),
            database_name=env.text("DATABASE_NAME") or defaults.database_name,
            database_user=env.text("DATABASE_USER"),
            database_password=env.text("DATABASE_PASSWORD"),
            database_ssl_mode=env.choice(
                "DATABASE_SSL_MODE",
                defaults.database_ssl_mode,
                ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
            ),
            database_pool_size=env.integer(
                "DATABASE_POOL_SIZE", defaults.database_pool_size, low=1
            ),
            data_dir=Path(env.text("DATA_DIR") or defaults.data_dir),
            redis_addr=env.checked(
                "REDIS_ADDR", None, lambda v: (parse_address(v, "127.0.0.1"), v)[1]
            ),
            redis_username=env.text("REDIS_USERNAME"),
            redis_password=env.text("REDIS_PASSWORD"),
            redis_db=env.integer("REDIS_DB", defaults.redis_db, low=0),
            redis_tls_enabled=env.boolean("REDIS_TLS_ENABLED", defaults.redis_tls_enabled),
            redis_key_prefix=env.text("REDIS_KEY_PREFIX") or defaults.redis_key_prefix,
            api_addr=env.checked(
                "API_ADDR", defaults.api_addr, lambda v: parse_address(v, "0.0.0.0")
            ),
            health_endpoint=env.checked(
                "HEALTH_ENDPOINT", defaults.health_endpoint, lambda v: parse_address(v, "0.0.0.0")
            ),
            admin_token=env.checked("ADMIN_TOKEN", None, check_admin_token),
            secrets_key=env.checked("SECRETS_KEY", None, _secrets_key),
            trusted_proxies=env.checked("TRUSTED_PROXIES", (), _parse_networks),
            allow_private_forward=env.boolean(
                "ALLOW_PRIVATE_FORWARD", defaults.allow_private_forward
            ),
            max_payload_bytes=env.checked(
                "MAX_PAYLOAD_BYTES", defaults.max_payload_bytes, _positive_size
            ),
            http=HttpLimits(
                max_connections=env.integer("HTTP_MAX_CONNECTIONS", http.max_connections, low=1),
                idle_timeout=env.duration("HTTP_IDLE_TIMEOUT", http.idle_timeout, 0.1),
                header_timeout=env.duration("HTTP_HEADER_TIMEOUT", http.header_timeout, 0.1),
                body_timeout=env.duration("HTTP_BODY_TIMEOUT", http.body_timeout, 0.1),
            ),
            worker_consumer_name=env.text("WORKER_CONSUMER_NAME") or defaults.worker_consumer_name,
            worker_concurrency=env.integer(
                "WORKER_CONCURRENCY", defaults.worker_concurrency, low=1
            ),
            worker_tool_concurrency=env.integer(
                "WORKER_TOOL_CONCURRENCY", defaults.worker_tool_concurrency, low=1
            ),
            worker_batch_size=env.integer("WORKER_BATCH_SIZE", defaults.worker_batch_size, low=1),
            worker_idempotency_ttl=env.duration(
                "WORKER_IDEMPOTENCY_TTL", defaults.worker_idempotency_ttl, minimum=1.0
            ),
            worker_reclaim_idle=env.duration(
                "WORKER_RECLAIM_IDLE", defaults.worker_reclaim_idle, minimum=0.1
            ),
            worker_max_deliveries=env.integer(
                "WORKER_MAX_DELIVERIES", defaults.worker_max_deliveries, low=1
            ),
            worker_shutdown_timeout=env.duration(
                "WORKER_SHUTDOWN_TIMEOUT", defaults.worker_shutdown_timeout
            ),
            tools_refresh_interval=env.duration(
                "TOOLS_REFRESH_INTERVAL", defaults.tools_refresh_interval, minimum=0.05
            ),
            retry=RetryPolicy(
                max_retries=env.integer("RETRY_MAX_RETRIES", retry_defaults.max_retries, low=0),
                initial_interval=env.duration(
                    "RETRY_INITIAL_INTERVAL", retry_defaults.initial_interval
                ),
                max_interval=env.duration("RETRY_MAX_INTERVAL", retry_defaults.max_interval),
                multiplier=env.number("RETRY_MULTIPLIER", retry_defaults.multiplier, low=1.0),
                max_elapsed_time=env.duration(
                    "RETRY_MAX_ELAPSED_TIME", retry_defaults.max_elapsed_time
                ),
            ),
            retry_time_scale=env.number("RETRY_TIME_SCALE", defaults.retry_time_scale, low=0.0),
            dlq_auto_retry_interval=env.duration(
                "DLQ_AUTO_RETRY_INTERVAL", defaults.dlq_auto_retry_interval, minimum=1.0
            ),
            dlq_auto_retry_max=env.integer(
                "DLQ_AUTO_RETRY_MAX", defaults.dlq_auto_retry_max, low=0
            ),
            events_retention=env.duration("EVENTS_RETENTION", defaults.events_retention),
            retention_interval=env.duration(
                "RETENTION_INTERVAL", defaults.retention_interval, minimum=0.1
            ),
            health=HealthThresholds(
                check_timeout=env.duration("HEALTH_CHECK_TIMEOUT", health.check_timeout, 0.01),
                database_slow=env.duration("HEALTH_DATABASE_SLOW", health.database_slow),
                redis_slow=env.duration("HEALTH_REDIS_SLOW", health.redis_slow),
                queue_degraded_depth=env.integer(
                    "HEALTH_QUEUE_DEGRADED_DEPTH", health.queue_degraded_depth, low=1
                ),
                queue_unhealthy_depth=env.integer(
                    "HEALTH_QUEUE_UNHEALTHY_DEPTH", health.queue_unhealthy_depth, low=1
                ),
                memory_degraded_percent=env.number(
                    "HEALTH_MEMORY_DEGRADED_PERCENT", health.memory_degraded_percent, low=1
                ),
                memory_unhealthy_percent=env.number(
                    "HEALTH_MEMORY_UNHEALTHY_PERCENT", health.memory_unhealthy_percent, low=1
                ),
            ),
            log_level=env.choice(
                "LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "warn", "error")
            ),
            log_format=env.choice("LOG_FORMAT", defaults.log_format, ("json", "console", "text")),
        )
        if settings.database_url and not settings.database_url.startswith(
            ("postgresql", "postgres:", "sqlite")
        ):
            raise ConfigError(
                "DATABASE_URL: expected postgresql://user:pass@host:5432/db or sqlite:///path, "
                f"got scheme {settings.database_url.split(':', 1)[0]!r}"
            )
        return settings


def _async_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"DATABASE_URL: {url.split('@')[-1]!r} is not a URL")
    base = scheme.split("+", 1)[0]
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    return url


def _parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _secrets_key(text: str) -> str:
    return ",".join(parse_secrets_key(text))


def _positive_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise ValueError("must be positive")
    return size


class _Env:
    """Typed access to environment variables, turning every bad value into a ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def checked(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def integer(
        self, name: str, default: int, low: int | None = None, high: int | None = None
    ) -> int:
        def parse(raw: str) -> int:
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"expected a whole number, got {raw!r}") from None
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f">= {low}" if high is None else f"between {low} and {high}"
                raise ValueError(f"must be {bounds}, got {value}")
            return value

        return self.checked(name, default, parse)

    def number(self, name: str, default: float, low: float | None = None) -> float:
        def parse(raw: str) -> float:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
            if low is not None and value < low:
                raise ValueError(f"must be >= {low}, got {value}")
            return value

        return self.checked(name, default, parse)

    def duration(self, name: str, default: float, minimum: float = 0.0) -> float:
        def parse(raw: str) -> float:
            value = parse_duration(raw)
            if value < minimum:
                raise ValueError(f"must be at least {format_duration(minimum)}, got {raw!r}")
            return value

        return self.checked(name, default, parse)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"expected true or false, got {raw!r}")

        return self.checked(name, default, parse)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            if raw.lower() not in choices:
                raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
            return raw.lower()

        return self.checked(name, default, parse)
