"""The value types a tool definition is built from: durations, header names, JMESPath
expressions, CIDRs, URLs, secrets.

Each is an ``Annotated`` type carrying three things: its validator (which refuses with a message
that says what to write instead), its JSON Schema (for /openapi.json) and a :class:`Kind` (the
word the docs table uses for it). tools/schema.py declares the tool's fields with them, and
marks the fields that hold secrets with :class:`Secret`. A validator refuses with
:func:`refuse`; a message never contains a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Final, Literal, NoReturn
from urllib.parse import urlsplit

import jmespath
import jmespath.exceptions
import jmespath.parser
from pydantic import BeforeValidator, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from webhook_worker.auth import standard_webhooks
from webhook_worker.config import parse_duration
from webhook_worker.tools.presets import PRESETS

REFUSED: Final = "tool_config"
"""The pydantic error type of every refusal below: its message is shown as it is."""

MAX_SOURCE_HEADERS: Final = 8
HEADER_PATTERN: Final = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
"""An HTTP header name (RFC 9110 token)."""
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RULE: Final = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
DESTINATION_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DESTINATION_ID_RULE: Final = (
    "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)

_HEADER = re.compile(HEADER_PATTERN)
_ID = re.compile(ID_PATTERN)
_DESTINATION_ID = re.compile(DESTINATION_ID_PATTERN)
# C0 controls but horizontal tab (RFC 9110 lets a field value hold it), and DEL: a CR or LF in a
# header value or URL would end the line it is written on and start a header of its own.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NO_CONTROL_PATTERN: Final = r"^[^\u0000-\u0008\u000a-\u001f\u007f]*$"
"""The same rule for the JSON Schema (ECMA-262 escapes)."""
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_DURATION_HINT = "expected a duration such as 500ms, 30s, 5m or 30d"
_WHSEC_HOWTO = (
    "expected a Standard Webhooks secret: whsec_ followed by base64 "
    '(make one with: python -c "import base64, os; '
    "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
)


@dataclass(frozen=True, slots=True)
class Kind:
    """What the docs table calls a field's type (``duration``, ``JMESPath``...)."""

    label: str


@dataclass(frozen=True, slots=True)
class Secret:
    """Marks a declared field as holding a secret. tools/secret_paths.py finds the marked fields
    in the declaration, and from there their values are encrypted at rest (tools/secrets.py),
    redacted in every view and restored from the ``********`` placeholder (tools/service.py):
    marking a field is all a new secret needs.

    A string is one secret; a list, each of its strings; an object, each of its string values
    (those whose key ``only`` accepts, when given).
    """

    only: Callable[[str], bool] | None = None
    """For an object: which keys' values are secrets (for headers, the credential rule)."""
    in_url: bool = False
    """The value is a URL: only the credentials written into it are secret (credentials.py)."""
    sent_to: str | None = None
    """The field of the same section whose URL the secret is sent to. When that URL's origin
    (scheme, host, port) changes, the stored secret is not carried over: it must be given again."""


def choices(values: Iterable[str]) -> str:
    """A closed set of words as the docs table shows them: backquoted, joined with "or"."""
    words = [f"`{value}`" for value in values]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def refuse(message: str) -> NoReturn:
    """Refuse a value with ``message`` as the whole explanation (no pydantic wording added)."""
    raise PydanticCustomError(REFUSED, message)


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        refuse(f"required: {ID_RULE}")
    return value


def _destination_id(value: Any) -> str:
    if not isinstance(value, str) or not _DESTINATION_ID.fullmatch(value):
        refuse(f"required: {DESTINATION_ID_RULE}")
    return value


def _provider(value: Any) -> str:
    if not isinstance(value, str) or value not in PRESETS:
        refuse(f"unknown provider {value!r} (known: {', '.join(PRESETS)})")
    return value


def _header_name(value: Any) -> str:
    if not isinstance(value, str) or not _HEADER.fullmatch(value):
        refuse(f"{value!r} is not a valid header name")
    return value


def _header_names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_SOURCE_HEADERS:
        refuse(f"expected a header name or a list of 1 to {MAX_SOURCE_HEADERS} header names")
    return tuple(_header_name(name) for name in names)


def _forward_headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        refuse("expected an object of header names to strings")
    for name, text in value.items():
        _header_name(name)
        if not isinstance(text, str):
            # Only the name: the value may be a credential.
            refuse(f"the value of header {name!r} must be a string")
        if _CONTROL.search(text):
            refuse(f"the value of header {name!r} must not contain control characters (CR, LF...)")
    return dict(value)


def _secret_list(value: Any) -> list[str]:
    # A string here ("hunter2", one YAML dash away) must not become one secret per character.
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        refuse("expected a list of non-empty strings")
    return list(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        refuse(_DURATION_HINT)
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            refuse(str(exc))
    else:
        seconds = float(value)
    if seconds < 0:
        refuse("must not be negative")
    if not math.isfinite(seconds):
        refuse(_DURATION_HINT)
    return seconds


def _positive_seconds(value: Any) -> float:
    seconds = _seconds(value)
    if seconds <= 0:
        refuse("must be positive, such as 30s")
    return seconds


def _expression(value: Any) -> jmespath.parser.ParsedResult:
    if not isinstance(value, str) or not value.strip():
        refuse("expected a JMESPath expression")
    try:
        return jmespath.compile(value)
    except jmespath.exceptions.JMESPathError as exc:
        detail = " ".join(str(exc).split())  # the library's message spans lines
        refuse(f"invalid JMESPath expression: {detail}")


def _network(value: Any) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        refuse('expected a CIDR such as "10.0.0.0/8"')
    try:
        return ip_network(value, strict=False)
    except ValueError as exc:
        refuse(str(exc))


def _url(value: Any) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # an unbalanced "[" in the host
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # Not the value itself: a URL may carry a password or an API key.
        refuse("expected an http:// or https:// URL")
    if _URL_UNSAFE.search(value):
        # urlsplit drops CR, LF and tab without a word; the value would keep them.
        refuse("must not contain spaces or control characters (percent-encode them)")
    return str(value)


def _signing_secret(value: Any) -> str:
    if not isinstance(value, str) or not value:
        refuse("expected a non-empty string")
    try:
        standard_webhooks.decode_secret(value)
    except ValueError:
        refuse(_WHSEC_HOWTO)  # never the secret itself
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


_DURATION_SCHEMA: Final = {
    "anyOf": [
        {"type": "string", "examples": ["500ms", "30s", "5m", "24h"]},
        {"type": "number", "minimum": 0},
    ]
}
_HEADER_SCHEMA: Final = {"type": "string", "pattern": HEADER_PATTERN}

Identifier = Annotated[
    str,
    PlainValidator(_identifier),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
    Kind("id"),
]
DestinationId = Annotated[
    str,
    PlainValidator(_destination_id),
    WithJsonSchema({"type": "string", "pattern": DESTINATION_ID_PATTERN}),
    Kind("id"),
]
"""Shorter than a tool's: it is a label of metrics and a part of URLs beside the tool's id."""
Provider = Annotated[
    str,
    PlainValidator(_provider),
    WithJsonSchema({"type": "string", "enum": list(PRESETS)}),
    Kind(choices(PRESETS)),
]
HeaderName = Annotated[
    str, PlainValidator(_header_name), WithJsonSchema(_HEADER_SCHEMA), Kind("header name")
]
HeaderNames = Annotated[
    tuple[str, ...],
    PlainValidator(_header_names),
    PlainSerializer(list),
    WithJsonSchema(
        {
            "anyOf": [
                _HEADER_SCHEMA,
                {
                    "type": "array",
                    "items": _HEADER_SCHEMA,
                    "minItems": 1,
                    "maxItems": MAX_SOURCE_HEADERS,
                },
            ]
        }
    ),
    Kind("header name, or a list of them"),
]
ForwardHeaders = Annotated[
    dict[str, str],
    PlainValidator(_forward_headers),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": _HEADER_SCHEMA,
            "additionalProperties": {"type": "string", "pattern": _NO_CONTROL_PATTERN},
        }
    ),
    Kind("object: header name to string"),
]
SecretList = Annotated[
    list[str],
    PlainValidator(_secret_list),
    WithJsonSchema({"type": "array", "items": {"type": "string", "minLength": 1}}),
    Kind("list of strings"),
]
Duration = Annotated[
    float, PlainValidator(_seconds), WithJsonSchema(_DURATION_SCHEMA), Kind("duration")
]
PositiveDuration = Annotated[
    float,
    PlainValidator(_positive_seconds),
    WithJsonSchema(
        {
            "anyOf": [
                _DURATION_SCHEMA["anyOf"][0],
                {"type": "number", "exclusiveMinimum": 0},
            ]
        }
    ),
    Kind("duration"),
]
Expression = Annotated[
    jmespath.parser.ParsedResult,
    PlainValidator(_expression),
    PlainSerializer(lambda parsed: parsed.expression, return_type=str),
    WithJsonSchema({"type": "string", "minLength": 1}),
    Kind("JMESPath"),
]
"""Compiled when the tool is validated; the hot paths only evaluate it."""
Network = Annotated[
    IPv4Network | IPv6Network,
    PlainValidator(_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10.0.0.0/8", "2001:db8::/32"]}),
    Kind("CIDR"),
]
Url = Annotated[
    str,
    PlainValidator(_url),
    WithJsonSchema({"type": "string", "examples": ["https://example.com/hooks"]}),
    Kind("http(s) URL"),
]
SigningSecret = Annotated[
    str,
    PlainValidator(_signing_secret),
    WithJsonSchema({"type": "string", "minLength": 1, "examples": ["whsec_c2VjcmV0LWtleQ=="]}),
    Kind("secret (whsec_...)"),
]
Method = Annotated[
    Literal["POST", "PUT", "PATCH"],
    BeforeValidator(_upper),
    # Any case is accepted ("put" is PUT), and the schema says so.
    WithJsonSchema(
        {"type": "string", "pattern": "^([Pp][Oo][Ss][Tt]|[Pp][Uu][Tt]|[Pp][Aa][Tt][Cc][Hh])$"}
    ),
    Kind(choices(["POST", "PUT", "PATCH"])),
]
