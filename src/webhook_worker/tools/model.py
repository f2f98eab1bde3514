"""The tool model and its validation.

:func:`parse_tool` turns a JSON/YAML mapping into a frozen :class:`Tool`, or raises
ToolConfigError naming the first bad field. Expressions are compiled here, once, so the ingest
and worker hot paths only evaluate them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Final
from urllib.parse import urlsplit

import jmespath
import jmespath.exceptions
import jmespath.parser

from webhook_worker.auth import slack, standard_webhooks, stripe_signature
from webhook_worker.config import RetryPolicy, parse_duration
from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.presets import PRESETS, Preset

PROVIDERS: Final = tuple(PRESETS)
MODES: Final = ("store_only", "store_and_forward", "transform_and_store")
AUTH_TYPES: Final = (
    "none",
    "token",
    "hmac",
    "basic",
    "bearer",
    "stripe",
    "slack",
    "standard_webhooks",
)
# Schemes whose header names are fixed by the provider (``auth.header`` does not apply), with the
# headers that carry their signatures, lower-cased as Tool.secret_headers reports them.
FIXED_HEADER_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    "stripe": (stripe_signature.HEADER.lower(),),
    "slack": (slack.SIGNATURE_HEADER.lower(),),
    "standard_webhooks": standard_webhooks.SIGNATURE_HEADERS,
}
HMAC_ALGORITHMS: Final = ("sha256", "sha1", "sha512")
ENCODINGS: Final = ("hex", "base64")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MAX_SOURCE_HEADERS = 8
_TOP_LEVEL: Final = frozenset(
    {
        "id",
        "provider",
        "enabled",
        "description",
        "auth",
        "allowed_ips",
        "event_type",
        "delivery_id",
        "mode",
        "events",
        "filter",
        "transform",
        "forward",
        "retry",
        "rate_limit",
    }
)
_SERVER_FIELDS: Final = frozenset({"created_at", "updated_at"})


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How an incoming request proves it comes from the provider."""

    type: str = "none"
    secrets: tuple[str, ...] = ()
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    tolerance: float | None = None
    """Seconds a signed timestamp may be off; None means the scheme's default (300)."""
    timestamp_header: str | None = None
    """hmac only: a header with a Unix timestamp; the signed content is ``{timestamp}.{body}``."""


@dataclass(frozen=True, slots=True)
class FieldSource:
    """Where a value is read from: the first of ``headers`` the request has, or a JMESPath into
    the JSON body."""

    headers: tuple[str, ...] = ()
    path: str | None = None
    compiled: jmespath.parser.ParsedResult | None = field(default=None, compare=False)

    @property
    def header(self) -> str | None:
        """The first header name: the one a sender sets. None when read from the body."""
        return self.headers[0] if self.headers else None

    @property
    def needs_body(self) -> bool:
        return self.compiled is not None


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    signing_secret: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` webhooks per ``per`` seconds (bursts up to ``requests``)."""

    requests: int
    per: float


@dataclass(frozen=True, slots=True)
class Tool:
    """One integration. ``config`` keeps the definition as given (secrets included)."""

    id: str
    provider: str
    enabled: bool
    auth: AuthConfig
    allowed_ips: tuple[IPv4Network | IPv6Network, ...]
    event_type: FieldSource
    delivery_id: FieldSource
    mode: str
    config: Mapping[str, Any]
    forward: ForwardConfig | None = None
    retry: RetryPolicy | None = None
    description: str = ""
    rate_limit: RateLimit | None = None

    @property
    def secret_headers(self) -> frozenset[str]:
        """Lower-cased header names that carry this tool's credentials (never stored)."""
        names = set(FIXED_HEADER_SCHEMES.get(self.auth.type, ()))
        if self.auth.header:
            names.add(self.auth.header.lower())
        return frozenset(names)


def parse_tool(data: Mapping[str, Any], tool_id: str | None = None) -> Tool:
    """Validate a tool definition. ``tool_id`` (from the URL) wins over ``data["id"]``."""
    if not isinstance(data, Mapping):
        raise ToolConfigError("tool", "expected a JSON object")
    unknown = sorted(set(data) - _TOP_LEVEL - _SERVER_FIELDS)
    if unknown:
        raise ToolConfigError(unknown[0], f"unknown field (known: {', '.join(sorted(_TOP_LEVEL))})")
    identifier = tool_id if tool_id is not None else data.get("id")
    if not isinstance(identifier, str) or not _ID.match(identifier):
        raise ToolConfigError(
            "id",
            "required: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    provider = data.get("provider", "generic")
    if provider not in PRESETS:
        raise ToolConfigError(
            "provider", f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})"
        )
    preset = PRESETS[provider]
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ToolConfigError("enabled", "expected true or false")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ToolConfigError("description", "expected a string")

    mode = data.get("mode", "store_only")
    if mode not in MODES:
        raise ToolConfigError("mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    forward = _forward(data.get("forward"))
    if mode == "store_and_forward" and forward is None:
        raise ToolConfigError("forward.url", "required when mode is store_and_forward")

    for name in ("filter", "transform"):
        if data.get(name) is not None:
            _compile(name, data[name])
    if mode == "transform_and_store" and not data.get("transform"):
        raise ToolConfigError("transform", "required when mode is transform_and_store")
    _events(data.get("events"))

    canonical = dict(data)
    canonical.pop("created_at", None)
    canonical.pop("updated_at", None)
    canonical["id"] = identifier
    canonical["provider"] = provider
    return Tool(
        id=identifier,
        provider=provider,
        enabled=enabled,
        auth=_auth(data.get("auth"), preset),
        allowed_ips=_networks(data.get("allowed_ips")),
        event_type=_source("event_type", data.get("event_type", preset.event_type)),
        delivery_id=_source("delivery_id", data.get("delivery_id", preset.delivery_id)),
        mode=mode,
        config=canonical,
        forward=forward,
        retry=_retry(data.get("retry")),
        description=description,
        rate_limit=_rate_limit(data.get("rate_limit")),
    )


_AUTH_FIELDS: Final = frozenset(
    {
        "type",
        "secret",
        "secrets",
        "header",
        "algorithm",
        "encoding",
        "prefix",
        "tolerance",
        "timestamp_header",
    }
)


def _auth(raw: Any, preset: Preset) -> AuthConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ToolConfigError(
            "auth", 'expected an object such as {"type": "hmac", "secret": "..."}'
        )
    unknown = sorted(set(raw) - _AUTH_FIELDS)
    if unknown:
        raise ToolConfigError(
            f"auth.{unknown[0]}", f"unknown field (known: {', '.join(sorted(_AUTH_FIELDS))})"
        )
    base = _preset_auth(raw, preset)
    merged = {**base, **raw} if raw.get("type", base.get("type")) == base.get("type") else dict(raw)
    kind = merged.get("type", "none")
    if kind not in AUTH_TYPES:
        raise ToolConfigError("auth.type", f"expected one of {', '.join(AUTH_TYPES)}, got {kind!r}")

    secrets: list[str] = []
    if "secret" in merged:
        secrets.append(merged["secret"])
    secrets.extend(merged.get("secrets") or [])
    if not all(isinstance(s, str) and s for s in secrets):
        raise ToolConfigError("auth.secrets", "every secret must be a non-empty string")
    if kind != "none" and not secrets:
        raise ToolConfigError("auth.secret", f"required for auth type {kind!r}")
    if kind == "standard_webhooks":
        for secret in secrets:
            try:
                standard_webhooks.decode_secret(secret)
            except ValueError:
                # The message must not echo the secret.
                raise ToolConfigError(
                    "auth.secrets",
                    "a Standard Webhooks secret is base64, optionally after 'whsec_' "
                    "(copy it as the sender shows it)",
                ) from None

    header = merged.get("header")
    if kind in ("hmac", "token") and not header:
        raise ToolConfigError("auth.header", f"required for auth type {kind!r}")
    if kind in FIXED_HEADER_SCHEMES and header is not None:
        raise ToolConfigError(
            "auth.header", f"auth type {kind!r} reads fixed headers; remove auth.header"
        )
    _header_name("auth.header", header)
    timestamp_header = merged.get("timestamp_header")
    if timestamp_header is not None and kind != "hmac":
        raise ToolConfigError("auth.timestamp_header", "only auth type 'hmac' uses it")
    _header_name("auth.timestamp_header", timestamp_header)
    algorithm = merged.get("algorithm", "sha256")
    if algorithm not in HMAC_ALGORITHMS:
        raise ToolConfigError("auth.algorithm", f"expected one of {', '.join(HMAC_ALGORITHMS)}")
    encoding = merged.get("encoding", "hex")
    if encoding not in ENCODINGS:
        raise ToolConfigError("auth.encoding", f"expected one of {', '.join(ENCODINGS)}")
    prefix = merged.get("prefix", "")
    if not isinstance(prefix, str):
        raise ToolConfigError("auth.prefix", "expected a string such as 'sha256='")
    tolerance = None
    if merged.get("tolerance") is not None:
        tolerance = _duration("auth.tolerance", merged["tolerance"])
        if tolerance <= 0:
            raise ToolConfigError("auth.tolerance", "must be positive, such as 5m")
    return AuthConfig(
        type=kind,
        secrets=tuple(secrets),
        header=header,
        algorithm=algorithm,
        encoding=encoding,
        prefix=prefix,
        tolerance=tolerance,
        timestamp_header=timestamp_header,
    )


def auth_type_of(data: Mapping[str, Any]) -> str:
    """The auth type a definition resolves to (its own, else its preset's) without validating
    anything: for summaries of redacted views, whose placeholder secrets would not validate."""
    preset = PRESETS.get(str(data.get("provider", "generic")), PRESETS["generic"])
    raw = data.get("auth")
    auth: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return str(auth.get("type", _preset_auth(auth, preset).get("type", "none")))


def _preset_auth(raw: Mapping[str, Any], preset: Preset) -> dict[str, Any]:
    """The preset's auth fields this tool starts from."""
    if (
        preset.auth_without_secret is not None
        and "type" not in raw
        and not raw.get("secret")
        and not raw.get("secrets")
    ):
        return dict(preset.auth_without_secret)
    base = dict(preset.auth)
    algorithm = raw.get("algorithm")
    if isinstance(algorithm, str) and "header" not in raw:
        base.update(preset.auth_by_algorithm.get(algorithm, {}))
    return base


def _header_name(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _HEADER.fullmatch(value)):
        raise ToolConfigError(name, f"{value!r} is not a valid header name")


def _source(name: str, raw: Any) -> FieldSource:
    if raw is None:
        return FieldSource()
    if isinstance(raw, str):
        raw = {"header": raw}
    if not isinstance(raw, Mapping) or set(raw) - {"header", "path"} or len(raw) != 1:
        raise ToolConfigError(
            name,
            'expected {"header": "X-Name"}, {"header": ["X-Name", "X-Fallback"]} '
            'or {"path": "<JMESPath>"}',
        )
    if "header" in raw:
        headers = raw["header"]
        names = [headers] if isinstance(headers, str) else headers
        if not isinstance(names, list) or not names or len(names) > _MAX_SOURCE_HEADERS:
            raise ToolConfigError(
                f"{name}.header",
                f"expected a header name or a list of 1 to {_MAX_SOURCE_HEADERS} header names",
            )
        for header in names:
            _header_name(f"{name}.header", header)
        return FieldSource(headers=tuple(names))
    return FieldSource(path=raw["path"], compiled=_compile(f"{name}.path", raw["path"]))


def _compile(name: str, expression: Any) -> jmespath.parser.ParsedResult:
    if not isinstance(expression, str) or not expression.strip():
        raise ToolConfigError(name, "expected a JMESPath expression")
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        detail = " ".join(str(exc).split())  # the library's message spans lines
        raise ToolConfigError(name, f"invalid JMESPath expression: {detail}") from None


def _events(raw: Any) -> None:
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise ToolConfigError(
            "events", 'expected an object such as {"push": {"mode": "store_only"}}'
        )
    for event_type, override in raw.items():
        where = f"events.{event_type}"
        if not isinstance(override, Mapping):
            raise ToolConfigError(where, "expected an object")
        unknown = sorted(set(override) - {"mode", "transform", "filter"})
        if unknown:
            raise ToolConfigError(
                f"{where}.{unknown[0]}", "unknown field (known: filter, mode, transform)"
            )
        if "mode" in override and override["mode"] not in MODES:
            raise ToolConfigError(f"{where}.mode", f"expected one of {', '.join(MODES)}")
        for name in ("transform", "filter"):
            if override.get(name) is not None:
                _compile(f"{where}.{name}", override[name])


def _forward(raw: Any) -> ForwardConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ToolConfigError("forward", 'expected an object such as {"url": "https://..."}')
    unknown = sorted(set(raw) - {"url", "method", "headers", "timeout", "signing_secret"})
    if unknown:
        raise ToolConfigError(f"forward.{unknown[0]}", "unknown field")
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolConfigError("forward.url", f"expected an http:// or https:// URL, got {url!r}")
    method = str(raw.get("method", "POST")).upper()
    if method not in ("POST", "PUT", "PATCH"):
        raise ToolConfigError("forward.method", "expected POST, PUT or PATCH")
    headers = raw.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and _HEADER.match(k) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ToolConfigError("forward.headers", "expected an object of header names to strings")
    timeout = _duration("forward.timeout", raw.get("timeout", "10s"))
    if timeout <= 0:
        raise ToolConfigError("forward.timeout", "must be positive")
    secret = raw.get("signing_secret")
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ToolConfigError("forward.signing_secret", "expected a non-empty string")
        try:
            standard_webhooks.decode_secret(secret)
        except ValueError:
            raise ToolConfigError(
                "forward.signing_secret",
                "expected a Standard Webhooks secret: whsec_ followed by base64 "
                '(make one with: python -c "import base64, os; '
                "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")",
            ) from None
    return ForwardConfig(str(url), method, tuple(headers.items()), timeout, secret)


def _rate_limit(raw: Any) -> RateLimit | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"requests", "per"}:
        raise ToolConfigError("rate_limit", 'expected {"requests": 100, "per": "1s"}')
    requests = raw.get("requests")
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise ToolConfigError("rate_limit.requests", "expected a whole number >= 1")
    per = _duration("rate_limit.per", raw.get("per", "1s"))
    if per <= 0:
        raise ToolConfigError("rate_limit.per", "must be positive")
    return RateLimit(requests, per)


def _retry(raw: Any) -> RetryPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ToolConfigError("retry", 'expected an object such as {"max_retries": 5}')
    defaults = RetryPolicy()
    known = {"max_retries", "initial_interval", "max_interval", "multiplier", "max_elapsed_time"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ToolConfigError(
            f"retry.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})"
        )
    max_retries = raw.get("max_retries", defaults.max_retries)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ToolConfigError("retry.max_retries", "expected a whole number >= 0")
    multiplier = raw.get("multiplier", defaults.multiplier)
    if not isinstance(multiplier, int | float) or multiplier < 1:
        raise ToolConfigError("retry.multiplier", "expected a number >= 1")
    return RetryPolicy(
        max_retries=max_retries,
        initial_interval=_duration(
            "retry.initial_interval", raw.get("initial_interval", defaults.initial_interval)
        ),
        max_interval=_duration(
            "retry.max_interval", raw.get("max_interval", defaults.max_interval)
        ),
        multiplier=float(multiplier),
        max_elapsed_time=_duration(
            "retry.max_elapsed_time", raw.get("max_elapsed_time", defaults.max_elapsed_time)
        ),
    )


def _duration(name: str, raw: Any) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        if raw < 0:
            raise ToolConfigError(name, "must not be negative")
        return float(raw)
    if not isinstance(raw, str):
        raise ToolConfigError(name, "expected a duration such as 500ms, 30s or 5m")
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ToolConfigError(name, str(exc)) from None


def _networks(raw: Any) -> tuple[IPv4Network | IPv6Network, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ToolConfigError("allowed_ips", 'expected a list of CIDRs such as ["10.0.0.0/8"]')
    try:
        return tuple(ip_network(str(item), strict=False) for item in raw)
    except ValueError as exc:
        raise ToolConfigError("allowed_ips", str(exc)) from None
