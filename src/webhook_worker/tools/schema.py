"""The tool definition, declared once: every field a tool's JSON (or YAML) may hold.

These pydantic models are the single source of the tool's fields, their types, defaults and
descriptions. From them come the validation messages (:func:`validate_definition`), the JSON
Schema in ``/openapi.json`` (api/openapi.py) and the field table in docs/tools.md
(tools/reference.py). A new field is declared here and appears in all three.

The fields that hold secrets are marked :class:`~webhook_worker.tools.fields.Secret`: from the
marks, tools/secret_paths.py knows what to encrypt at rest and redact in every view.

They describe a definition as written. What spans fields (what a provider preset fills in, which
auth types need a header, which modes need a forward or a transform) is decided in
tools/model.py, which turns a validated definition into the frozen, compiled Tool the hot paths
use. Validation runs when a tool is created, changed or loaded, never per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from webhook_worker.config import RetryPolicy
from webhook_worker.credentials import is_credential_header
from webhook_worker.tools.control_schema import (
    CircuitBreakerDefinition,
    DestinationRateLimitDefinition,
)
from webhook_worker.tools.fields import (
    DESTINATION_ID_RULE,
    DestinationId,
    Duration,
    Expression,
    ForwardHeaders,
    HeaderName,
    HeaderNames,
    Identifier,
    Kind,
    Method,
    Network,
    PositiveDuration,
    Provider,
    Secret,
    SecretList,
    SigningSecret,
    Url,
    refuse,
)
from webhook_worker.tools.messages import config_error
from webhook_worker.tools.section import Section
from webhook_worker.vocabulary import AuthType, Mode

_RETRY: Final = RetryPolicy()
MAX_DESTINATIONS: Final = 32
"""A bound on one tool's fan-out: each destination is a request per event, with its own retries."""


class AuthDefinition(Section):
    """How an incoming request proves it comes from the provider. A field the tool leaves out
    is taken from its provider preset, as long as the tool keeps the preset's ``type``."""

    shape = 'an object such as {"type": "hmac", "secret": "..."}'

    type: AuthType = Field(
        AuthType.NONE,
        description="The scheme; default: the preset's (`none` for `generic`). `stripe`, "
        "`slack` and `standard_webhooks` read their provider's fixed headers.",
    )
    secret: Annotated[StrictStr, Secret()] | None = Field(
        None,
        description="The shared secret or token. Required by every type but `none`.",
        json_schema_extra={"minLength": 1},
    )
    secrets: Annotated[SecretList, Secret()] | None = Field(
        None,
        description="More secrets, for rotation: a request matching any one is accepted "
        "(`secret` comes first). A Standard Webhooks secret is base64, optionally after "
        "`whsec_`.",
    )
    header: HeaderName | None = Field(
        None,
        description="The header carrying the signature or token: required by `hmac` and "
        "`token`; for `bearer` and `basic`, used instead of `Authorization`; refused by the "
        "fixed-header types.",
    )
    algorithm: Literal["sha256", "sha1", "sha512"] = Field(
        "sha256", description="`hmac`: the digest."
    )
    encoding: Literal["hex", "base64"] = Field("hex", description="`hmac`: how it is written.")
    prefix: StrictStr = Field(
        "", description="`hmac`: text before the signature.", examples=["sha256="]
    )
    tolerance: PositiveDuration | None = Field(
        None,
        description="How far a signed timestamp may be off; default 5m. For the schemes that "
        "sign one, and `hmac` with `timestamp_header`.",
    )
    timestamp_header: HeaderName | None = Field(
        None,
        description="`hmac` only: a header with a Unix timestamp; the signed content is then "
        "`{timestamp}.{body}`.",
    )


class FieldSourceDefinition(Section):
    """Where a value is read from: one of a header list or a JMESPath into the JSON body."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})
    shape = '{"header": "X-Name"}, {"header": ["X-Name", "X-Fallback"]} or {"path": "<JMESPath>"}'
    unknown_is_shape_error = True

    header: HeaderNames | None = Field(
        None, description="The first of these headers the request has."
    )
    path: Expression | None = Field(None, description="A JMESPath into the JSON body.")

    @model_validator(mode="after")
    def _one_of_them(self) -> FieldSourceDefinition:
        if len(self.model_fields_set) != 1 or (self.header is None and self.path is None):
            refuse(f"expected {self.shape}")
        return self


def _header_shorthand(value: Any) -> Any:
    return {"header": value} if isinstance(value, str) else value


Source = Annotated[
    FieldSourceDefinition,
    BeforeValidator(_header_shorthand, json_schema_input_type=HeaderName | FieldSourceDefinition),
    Kind("header name, or object"),
]
"""A header name alone is short for ``{"header": name}``."""


class EventOverride(Section):
    """What changes for one event type. A key given as null clears the tool's value."""

    mode: Mode | None = Field(None, description="Default: the tool's `mode`.")
    filter: Expression | None = Field(None, description="Default: the tool's `filter`.")
    transform: Expression | None = Field(None, description="Default: the tool's `transform`.")

    @field_validator("mode")
    @classmethod
    def _a_mode(cls, mode: Mode | None) -> Mode:
        if mode is None:
            refuse(f"expected one of {', '.join(Mode)}")
        return mode


Overrides = Annotated[dict[str, EventOverride], Kind("object: event type to overrides")]


class ForwardDefinition(Section):
    """Where ``store_and_forward`` sends each event, signed when ``signing_secret`` is set.

    (``signing_secret`` comes before ``headers``: secrets are listed in declaration order.)"""

    shape = 'an object such as {"url": "https://..."}'

    url: Annotated[Url, Secret(in_url=True, sent_to="url")] = Field(
        description="The http:// or https:// URL events are sent to. A user and password in "
        "it, and the values of query parameters named like credentials (`api_key`, `token`, "
        "`sig`...), are secrets; they are not carried over to another host."
    )
    method: Method = Field("POST", description="The HTTP method (any case).")
    signing_secret: Annotated[SigningSecret, Secret(sent_to="url")] | None = Field(
        None,
        description="Signs each forward with Standard Webhooks headers (`webhook-id`, "
        "`webhook-timestamp`, `webhook-signature`): `whsec_` and base64. Not carried over to "
        "another host.",
    )
    headers: Annotated[ForwardHeaders, Secret(only=is_credential_header, sent_to="url")] | None = (
        Field(
            None,
            description="Extra request headers. Values of credential headers (names with "
            "authorization, token, secret, key, signature or cookie) are secrets, not carried "
            "over to another host.",
        )
    )
    timeout: PositiveDuration = Field(10.0, description="How long one attempt may take.")


class RetryDefinition(Section):
    """A retry policy (the tool's or a destination's). A field left out takes the built-in
    default shown."""

    shape = 'an object such as {"max_retries": 5}'

    max_retries: StrictInt = Field(
        _RETRY.max_retries, ge=0, description="Retries after the first attempt."
    )
    initial_interval: Duration = Field(
        _RETRY.initial_interval, description="The wait before the first retry."
    )
    max_interval: Duration = Field(
        _RETRY.max_interval, description="The longest wait, also for `Retry-After`."
    )
    multiplier: StrictFloat = Field(
        _RETRY.multiplier, ge=1, description="Each wait is the previous one times this."
    )
    max_elapsed_time: Duration = Field(
        _RETRY.max_elapsed_time,
        description="No retry starts later than this after the event was received.",
    )


class _DestinationId(Section):
    """A destination's id, in a base of its own so that it comes before the forward's fields
    (pydantic lists a base's fields first) in the docs table and the JSON Schema."""

    id: DestinationId = Field(
        description=f"{DESTINATION_ID_RULE}; unique within the tool. Names the destination "
        "in deliveries, dead letters, metrics and `/api/v1/tools/{id}/destinations/{dest}`; "
        "`default` is the tool's `forward`."
    )


class DestinationDefinition(ForwardDefinition, _DestinationId):
    """One target of the tool's fan-out, delivered to independently of the others: its own
    filter, transform, retries, dead letters and delivery control (rate limit, deliveries in
    flight, circuit breaker, ordering, pause). The request itself (``url``, ``method``,
    ``headers``, ``timeout``, ``signing_secret``) is declared as a forward's, secrets included.
    The tool's ``forward`` has no delivery control: it is declared as a destination to get it."""

    shape = 'an object such as {"id": "billing", "url": "https://..."}'

    filter: Expression | None = Field(
        None,
        description="Events for which it is false or null are not delivered here (the "
        "delivery is `ignored`); the other destinations are not affected.",
    )
    transform: Expression | None = Field(
        None, description="Its result is sent to this destination in place of the payload."
    )
    retry: RetryDefinition | None = Field(
        None,
        description="This destination's retry policy; unset: the tool's `retry`, then `RETRY_*`.",
    )
    enabled: StrictBool = Field(True, description="`false`: nothing is delivered here.")
    rate_limit: DestinationRateLimitDefinition | None = Field(
        None,
        description="At most `requests` deliveries per `per` here, across every worker; "
        "unset: no limit.",
    )
    max_in_flight: StrictInt | None = Field(
        None,
        ge=1,
        description="At most this many requests to it at once, across every worker; the "
        "others wait in the queue. Unset: no limit.",
    )
    circuit_breaker: CircuitBreakerDefinition | None = Field(
        None,
        description="Stop sending while it keeps failing, then probe it; unset: no breaker.",
    )
    ordering_key: Expression | None = Field(
        None,
        description="A JMESPath into the event body: events with the same value are delivered "
        "here one at a time, in the order received; other values are not held up. Null: the "
        "event is unordered.",
        examples=["data.customer_id"],
    )
    paused: StrictBool = Field(
        False,
        description="`true`: deliveries wait (status `paused`), neither sent nor "
        "dead-lettered, until it is resumed; then they go in the order received.",
    )


class RateLimitDefinition(Section):
    """At most ``requests`` webhooks per ``per``; bursts up to ``requests``."""

    shape = '{"requests": 100, "per": "1s"}'
    unknown_is_shape_error = True

    requests: StrictInt = Field(
        ge=1, description="How many webhooks are accepted per `per`; more are answered 429."
    )
    per: PositiveDuration = Field(1.0, description="The window.")


ServerTime = Annotated[Any, Kind("time")]
"""``created_at`` and ``updated_at``: whatever a client sends back is ignored."""


class ToolDefinition(Section):
    """A tool as it is created, replaced or applied (``POST /api/v1/tools``, ``tools apply``)."""

    shape = "a JSON object"

    id: Identifier = Field(
        description="1-128 letters, digits, '.', '_' or '-', starting with a letter or digit. "
        "The tool's address (`POST /webhooks/{id}`) and its `tool_id` in events and metrics; "
        "on `PUT /api/v1/tools/{id}` the URL's.",
    )
    provider: Provider = Field(
        "generic",
        description="The provider preset: it fills in what `auth`, `event_type` and "
        "`delivery_id` leave out (docs/providers.md).",
    )
    enabled: StrictBool = Field(True, description="`false`: ingest answers 403.")
    description: StrictStr = Field("", description="Free text for people.")
    auth: AuthDefinition | None = Field(
        None, description="How a request proves who sent it; default: the preset's."
    )
    allowed_ips: list[Network] | None = Field(
        None,
        description="Client addresses allowed to post; unset allows any. Behind a proxy, "
        "`X-Forwarded-For` counts only from `TRUSTED_PROXIES`.",
        examples=[["10.0.0.0/8"]],
    )
    event_type: Source | None = Field(
        None,
        description="Where the event type is read; default: the preset's, `null` for none.",
    )
    delivery_id: Source | None = Field(
        None,
        description="Where the delivery id (the de-duplication key) is read; default: the "
        "preset's. Without one, the SHA-256 of the body is the key.",
    )
    mode: Mode = Field(
        Mode.STORE_ONLY,
        description="What the worker does with each event: store it, store and forward it "
        "(needs `forward` or `destinations`), or store the result of `transform` (needs "
        "`transform`). With `destinations`, it only says what is stored.",
    )
    events: Overrides | None = Field(
        None,
        description="Overrides of `mode`, `filter` and `transform` per event type.",
        examples=[{"push": {"mode": "store_only"}}],
    )
    filter: Expression | None = Field(
        None,
        description="Events for which it is false or null are stored as `ignored` and not "
        "forwarded.",
    )
    transform: Expression | None = Field(
        None,
        description="Its result is stored (and forwarded) in place of the payload; the "
        "body as received is kept too.",
    )
    forward: ForwardDefinition | None = Field(
        None,
        description="Where `store_and_forward` sends events: the destination with id `default`.",
    )
    destinations: list[DestinationDefinition] | None = Field(
        None,
        max_length=MAX_DESTINATIONS,
        description="Where each event is delivered, whatever the `mode`: every destination "
        "independently, with its own filter, transform, retries and dead letters (the event "
        f"is stored once). At most {MAX_DESTINATIONS}, a bound on the requests one event "
        "makes; ids unique within the tool.",
    )
    retry: RetryDefinition | None = Field(
        None, description="Overrides of the retry policy; unset: `RETRY_*`."
    )
    rate_limit: RateLimitDefinition | None = Field(
        None, description="Requests above it are answered 429; unset: no limit."
    )
    retention: Duration | None = Field(
        None,
        description="How long this tool's events are kept (e.g. `30d`, `72h`); `0` keeps "
        "them forever; unset: `EVENTS_RETENTION`. Events still retrying, paused or with a "
        "pending dead letter are kept until they settle.",
        examples=["30d"],
    )
    created_at: ServerTime = Field(
        None,
        description="Set by the server; ignored when sent back.",
        json_schema_extra={"readOnly": True},
    )
    updated_at: ServerTime = Field(
        None,
        description="Set by the server; ignored when sent back.",
        json_schema_extra={"readOnly": True},
    )


SERVER_FIELDS: Final = frozenset({"created_at", "updated_at"})
"""Fields a view carries and the server sets: ignored in a definition, never stored."""

_TIME: Final[dict[str, Any]] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]
}


class ToolView(ToolDefinition):
    """A stored tool as the API shows it: its definition with every secret redacted, and when
    it was created and last changed."""

    created_at: ServerTime = Field(
        description="When the tool was created.", json_schema_extra={"readOnly": True, **_TIME}
    )
    updated_at: ServerTime = Field(
        description="When the tool was last changed.",
        json_schema_extra={"readOnly": True, **_TIME},
    )


def validate_definition(data: Mapping[str, Any], tool_id: str | None = None) -> ToolDefinition:
    """``data`` validated field by field; ``tool_id`` (from a URL) replaces its id. Raises
    ToolConfigError naming the first bad field."""
    if tool_id is not None:
        data = {**data, "id": tool_id}
    try:
        return ToolDefinition.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, ToolDefinition) from None


__all__ = [
    "MAX_DESTINATIONS",
    "SERVER_FIELDS",
    "AuthDefinition",
    "CircuitBreakerDefinition",
    "DestinationDefinition",
    "DestinationRateLimitDefinition",
    "EventOverride",
    "FieldSourceDefinition",
    "ForwardDefinition",
    "RateLimitDefinition",
    "RetryDefinition",
    "Section",
    "ToolDefinition",
    "ToolView",
    "validate_definition",
]
