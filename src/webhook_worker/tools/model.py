"""The compiled tool the hot paths use, and :func:`parse_tool`, which builds it.

tools/schema.py declares what a definition may hold and validates it field by field; here the
rules that span fields are applied (a provider preset fills in what the tool leaves out; the
auth type decides which secrets and headers are needed; a mode may need a forward or a
transform; destination ids are unique) and the result is frozen into a :class:`Tool`.
Expressions are compiled once, while validating, so the ingest and worker hot paths only
evaluate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Final

import jmespath.parser

from webhook_worker.auth import slack, standard_webhooks, stripe_signature
from webhook_worker.config import RetryPolicy
from webhook_worker.credentials import redact_url
from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.presets import PRESETS, Preset
from webhook_worker.tools.schema import (
    SERVER_FIELDS,
    AuthDefinition,
    DestinationDefinition,
    FieldSourceDefinition,
    ForwardDefinition,
    RateLimitDefinition,
    RetryDefinition,
    validate_definition,
)
from webhook_worker.vocabulary import AuthType, Mode

DEFAULT_DESTINATION: Final = "default"
"""The id of the destination a tool's `forward` is (with mode store_and_forward)."""
PROVIDERS: Final = tuple(PRESETS)
MODES: Final = tuple(Mode)
AUTH_TYPES: Final = tuple(AuthType)
# Schemes whose header names are fixed by the provider (``auth.header`` does not apply), with the
# headers that carry their signatures, lower-cased as Tool.secret_headers reports them.
FIXED_HEADER_SCHEMES: Final[dict[str, tuple[str, ...]]] = {
    AuthType.STRIPE: (stripe_signature.HEADER.lower(),),
    AuthType.SLACK: (slack.SIGNATURE_HEADER.lower(),),
    AuthType.STANDARD_WEBHOOKS: standard_webhooks.SIGNATURE_HEADERS,
}
_NEEDS_HEADER: Final = frozenset({AuthType.HMAC, AuthType.TOKEN})
_AUTH_DEFAULTS: Final = AuthDefinition.model_validate({})
"""What a field neither the tool nor its preset sets is (the declared defaults)."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How an incoming request proves it comes from the provider."""

    type: AuthType = AuthType.NONE
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
    redacted_url: str = field(init=False, compare=False)
    """``url`` with its credentials (user and password, credential query values) as
    ``REDACTED``: what spans (``url.full``) and logs may show. Worked out once, here."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "redacted_url", redact_url(self.url))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` webhooks per ``per`` seconds (bursts up to ``requests``)."""

    requests: int
    per: float


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    failure_threshold: int
    cooldown: float
    """Seconds the circuit stays open before the probe."""


@dataclass(frozen=True, slots=True)
class Control:
    """A destination's delivery control, as configured (each part optional)."""

    rate_limit: RateLimit | None = None
    """At most ``requests`` deliveries let go per ``per`` seconds, in any such window."""
    max_in_flight: int | None = None
    """Deliveries in flight at once, across every worker."""
    circuit_breaker: CircuitBreaker | None = None
    ordering_key: str | None = None
    """JMESPath text evaluated (at ingest) on the event body; null: the event is unordered."""

    @property
    def gated(self) -> bool:
        """Deliveries must ask the gate before they go (ordering is asked per event: only
        events that carry a position for this destination are ordered)."""
        return (
            self.rate_limit is not None
            or self.max_in_flight is not None
            or self.circuit_breaker is not None
        )


NO_CONTROL: Final = Control()
"""A destination without limits: nothing to ask before a delivery."""


@dataclass(frozen=True, slots=True)
class Destination:
    """One target of a tool's fan-out, delivered to independently of the others."""

    id: str
    forward: ForwardConfig
    filter: str | None = None
    """JMESPath text, validated when the tool was parsed."""
    transform: str | None = None
    """JMESPath text, validated when the tool was parsed."""
    retry: RetryPolicy | None = None
    """This destination's own policy; None: the tool's, then the global one."""
    enabled: bool = True
    control: Control = NO_CONTROL
    """Rate limit, deliveries in flight, circuit breaker and ordering key (each optional)."""
    paused: bool = False
    """Deliveries wait (``paused``) until the destination is resumed."""


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
    mode: Mode
    config: Mapping[str, Any]
    forward: ForwardConfig | None = None
    retry: RetryPolicy | None = None
    description: str = ""
    rate_limit: RateLimit | None = None
    destinations: tuple[Destination, ...] = ()
    """The declared destinations, in the order given. ``forward`` is not among them: it is the
    destination ``default`` (DEFAULT_DESTINATION), kept where it always was."""
    retention: float | None = None
    """Seconds this tool's events are kept; 0 forever; None: EVENTS_RETENTION."""

    @property
    def secret_headers(self) -> frozenset[str]:
        """Lower-cased header names that carry this tool's credentials (never stored)."""
        names = set(FIXED_HEADER_SCHEMES.get(self.auth.type, ()))
        if self.auth.header:
            names.add(self.auth.header.lower())
        return frozenset(names)


def parse_tool(data: Mapping[str, Any], tool_id: str | None = None) -> Tool:
    """Validate a tool definition. ``tool_id`` (from the URL) wins over ``data["id"]``. Raises
    ToolConfigError naming the first bad field."""
    if not isinstance(data, Mapping):
        raise ToolConfigError("tool", "expected a JSON object")
    definition = validate_definition(data, tool_id)
    mode = definition.mode
    destinations = _destinations(definition.destinations or [], definition.forward is not None)
    if mode == Mode.STORE_AND_FORWARD and definition.forward is None and not destinations:
        raise ToolConfigError(
            "forward.url", f"required when mode is {mode}, unless the tool has destinations"
        )
    if mode == Mode.TRANSFORM_AND_STORE and definition.transform is None:
        raise ToolConfigError("transform", f"required when mode is {mode}")
    preset = PRESETS[definition.provider]
    given = definition.model_fields_set

    canonical = {name: value for name, value in data.items() if name not in SERVER_FIELDS}
    canonical["id"] = definition.id
    canonical["provider"] = definition.provider
    return Tool(
        id=definition.id,
        provider=definition.provider,
        enabled=definition.enabled,
        auth=_auth(definition.auth, preset),
        allowed_ips=tuple(definition.allowed_ips or ()),
        event_type=_source(definition.event_type if "event_type" in given else preset.event_type),
        delivery_id=_source(
            definition.delivery_id if "delivery_id" in given else preset.delivery_id
        ),
        mode=mode,
        config=canonical,
        forward=_forward(definition.forward),
        retry=_retry(definition.retry),
        description=definition.description,
        rate_limit=_rate_limit(definition.rate_limit),
        destinations=destinations,
        retention=definition.retention,
    )


def _auth(definition: AuthDefinition | None, preset: Preset) -> AuthConfig:
    given = (
        {}
        if definition is None
        else {name: getattr(definition, name) for name in definition.model_fields_set}
    )
    base = _preset_auth(given, preset)
    # The preset's fields apply only while the tool keeps the preset's scheme.
    keeps_scheme = given.get("type", base.get("type")) == base.get("type")
    merged = {**base, **given} if keeps_scheme else given
    kind = AuthType(merged.get("type", _AUTH_DEFAULTS.type))

    secrets: list[Any] = [merged["secret"]] if "secret" in merged else []
    secrets.extend(merged.get("secrets") or [])
    if not all(isinstance(secret, str) and secret for secret in secrets):
        raise ToolConfigError("auth.secrets", "every secret must be a non-empty string")
    if kind != AuthType.NONE and not secrets:
        raise ToolConfigError("auth.secret", f"required for auth type {str(kind)!r}")
    if kind == AuthType.STANDARD_WEBHOOKS:
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
    if kind in _NEEDS_HEADER and not header:
        raise ToolConfigError("auth.header", f"required for auth type {str(kind)!r}")
    if kind in FIXED_HEADER_SCHEMES and header is not None:
        raise ToolConfigError(
            "auth.header", f"auth type {str(kind)!r} reads fixed headers; remove auth.header"
        )
    timestamp_header = merged.get("timestamp_header")
    if timestamp_header is not None and kind != AuthType.HMAC:
        raise ToolConfigError("auth.timestamp_header", "only auth type 'hmac' uses it")
    return AuthConfig(
        type=kind,
        secrets=tuple(secrets),
        header=header,
        algorithm=merged.get("algorithm", _AUTH_DEFAULTS.algorithm),
        encoding=merged.get("encoding", _AUTH_DEFAULTS.encoding),
        prefix=merged.get("prefix", _AUTH_DEFAULTS.prefix),
        tolerance=merged.get("tolerance"),
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


def _source(source: FieldSourceDefinition | Mapping[str, Any] | None) -> FieldSource:
    """A tool's own (validated) source, or its preset's (a plain mapping, validated here)."""
    if isinstance(source, Mapping):
        source = FieldSourceDefinition.model_validate(source)
    if source is None:
        return FieldSource()
    if source.header is not None:
        return FieldSource(headers=source.header)
    assert source.path is not None  # FieldSourceDefinition holds exactly one of them
    return FieldSource(path=source.path.expression, compiled=source.path)


def _destinations(
    definitions: list[DestinationDefinition], has_forward: bool
) -> tuple[Destination, ...]:
    """The compiled destinations; ToolConfigError naming ``destinations[i].id`` when an id is
    taken (by an earlier destination, or ``default`` by the tool's forward)."""
    first: dict[str, int] = {}
    for index, definition in enumerate(definitions):
        field = f"destinations[{index}].id"
        if definition.id in first:
            raise ToolConfigError(
                field,
                f"{definition.id!r} is already the id of destinations[{first[definition.id]}]; "
                "ids must be unique within the tool",
            )
        if definition.id == DEFAULT_DESTINATION and has_forward:
            raise ToolConfigError(
                field,
                f"{DEFAULT_DESTINATION!r} is taken: the tool's `forward` is the destination "
                f"{DEFAULT_DESTINATION!r}; choose another id, or remove `forward`",
            )
        first[definition.id] = index
    return tuple(
        Destination(
            id=definition.id,
            forward=_request(definition),
            filter=None if definition.filter is None else definition.filter.expression,
            transform=None if definition.transform is None else definition.transform.expression,
            retry=_retry(definition.retry),
            enabled=definition.enabled,
            control=_control(definition),
            paused=definition.paused,
        )
        for definition in definitions
    )


def _control(definition: DestinationDefinition) -> Control:
    """The destination's delivery control; the shared NO_CONTROL when it declares none, so
    that an unlimited destination costs nothing to check."""
    rate = definition.rate_limit
    breaker = definition.circuit_breaker
    control = Control(
        rate_limit=None if rate is None else RateLimit(rate.requests, rate.per),
        max_in_flight=definition.max_in_flight,
        circuit_breaker=(
            None if breaker is None else CircuitBreaker(breaker.failure_threshold, breaker.cooldown)
        ),
        ordering_key=None
        if definition.ordering_key is None
        else definition.ordering_key.expression,
    )
    return NO_CONTROL if control == NO_CONTROL else control


def _forward(forward: ForwardDefinition | None) -> ForwardConfig | None:
    return None if forward is None else _request(forward)


def _request(forward: ForwardDefinition) -> ForwardConfig:
    """Where and how one request is sent: a forward's, or a destination's."""
    return ForwardConfig(
        url=forward.url,
        method=forward.method,
        headers=tuple((forward.headers or {}).items()),
        timeout=forward.timeout,
        signing_secret=forward.signing_secret,
    )


def _retry(retry: RetryDefinition | None) -> RetryPolicy | None:
    if retry is None:
        return None
    return RetryPolicy(
        max_retries=retry.max_retries,
        initial_interval=retry.initial_interval,
        max_interval=retry.max_interval,
        multiplier=float(retry.multiplier),
        max_elapsed_time=retry.max_elapsed_time,
    )


def _rate_limit(rate_limit: RateLimitDefinition | None) -> RateLimit | None:
    return None if rate_limit is None else RateLimit(rate_limit.requests, rate_limit.per)
