"""Where a tool definition's secrets are: found from the declaration, never by shape.

tools/schema.py marks each field that holds a secret with :class:`~webhook_worker.tools.fields.
Secret`. :data:`SECRET_PATHS` lists the marked fields, and :func:`secret_spots` finds the secrets
they hold in a definition (a plain mapping, as stored). Encryption at rest (tools/secrets.py) and
redaction (tools/service.py) both walk these spots, so a field marked secret is encrypted,
redacted and restored from its placeholder without more code; a list or an object elsewhere in
the definition is never taken for secrets because of what it looks like.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from webhook_worker.credentials import url_credentials
from webhook_worker.tools.fields import Secret
from webhook_worker.tools.reference import declared_fields
from webhook_worker.tools.schema import ToolDefinition

ITEM_ID: Final = "id"
"""The field naming an item of a declared list (``destinations[].id``): a secret in an item is
matched to the stored one by it, wherever the item has moved in the list."""
REDACTED: Final = "********"
"""What every view shows in place of a secret; sent back, it stands for the stored secret."""
_SEALED: Final = "enc:v1:"  # tools/secrets.py PREFIX: a sealed value is a secret whatever its key


@dataclass(frozen=True, slots=True)
class SecretPath:
    """A declared secret field: ``path`` from the definition's root (``*`` for a key the user
    chooses, as in ``events.*``; ``[]`` for any item of a list, as in ``destinations[]``) and
    its marker."""

    path: tuple[str, ...]
    secret: Secret


@dataclass(frozen=True, slots=True)
class Spot:
    """One secret found in a definition."""

    field: str
    """The field, for messages: ``auth.secret``, ``auth.secrets[1]``, ``destinations[2].url``..."""
    key: str
    """Names the spot within the definition, so a placeholder finds the stored secret: the
    field, with a list's items named by their id (``destinations['billing'].url``)."""
    value: str
    shown: str
    """What views show in its place (``********``, or ``********:********`` for a URL's user and
    password). A value equal to it is a placeholder."""
    what: str
    """The secret for people: "this secret", "the user and password in the URL"..."""
    put: Callable[[str], None]
    """Replaces the value in the definition (the caller's copy)."""
    section: Mapping[str, Any]
    """The object the field is in, for :meth:`target`."""
    secret: Secret
    sent_to: str | None
    """The field whose URL the secret is sent to (``forward.url``, ``destinations[2].url``),
    if it is sent."""

    @property
    def is_placeholder(self) -> bool:
        return self.value == self.shown

    def target(self) -> tuple[str, str, int | None] | None:
        """The origin (scheme, host, port) of the URL this secret is sent to, if it is sent."""
        if self.secret.sent_to is None:
            return None
        return origin(self.section.get(self.secret.sent_to))


def declared_secrets(model: type[BaseModel] = ToolDefinition) -> tuple[SecretPath, ...]:
    """Every field of ``model`` (nested sections included) that is marked :class:`Secret`."""
    found: list[SecretPath] = []
    for dotted, info in declared_fields(model):
        secret = _marker(info)
        if secret is not None:
            path = [step for part in dotted.split(".") for step in _steps(part)]
            found.append(SecretPath(tuple(path), secret))
    return tuple(found)


def _steps(part: str) -> tuple[str, ...]:
    """``destinations[]`` is two steps: the field, then any item of its list."""
    return (part.removesuffix("[]"), "[]") if part.endswith("[]") else (part,)


def secret_spots(
    config: Mapping[str, Any], paths: tuple[SecretPath, ...] | None = None
) -> Iterator[Spot]:
    """Each non-empty secret string ``config`` holds in a declared secret field. A spot's
    ``put`` changes ``config`` in place, so pass a copy the caller may change; the spots of one
    URL come right to left, so putting one leaves the others where they were."""
    for declared in SECRET_PATHS if paths is None else paths:
        yield from _walk(config, declared.path, _Place("", ""), declared)


def origin(url: Any) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of ``url``, the default port filled in; None when not a URL."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a walk is: the field so far for messages, and the same as the key of a spot."""

    field: str
    key: str

    def child(self, name: str) -> _Place:
        """The place of field (or key) ``name`` of the object here."""
        return _Place(_join(self.field, name), _join(self.key, name))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(node: Any, path: tuple[str, ...], place: _Place, declared: SecretPath) -> Iterator[Spot]:
    head, rest = path[0], path[1:]
    if head == "[]":
        for index, item in enumerate(node if isinstance(node, list) else []):
            name = item.get(ITEM_ID) if isinstance(item, dict) else None
            # Without an id (a definition validation will refuse), the position: never a key
            # that a stored item, which has an id, could match.
            named = f"[{name!r}]" if isinstance(name, str) else f"[{index}]"
            item_place = _Place(f"{place.field}[{index}]", place.key + named)
            yield from _walk(item, rest, item_place, declared)
    elif not isinstance(node, dict):
        return
    elif head == "*":
        for key, child in node.items():
            yield from _walk(child, rest, place.child(key), declared)
    elif rest:
        yield from _walk(node.get(head), rest, place.child(head), declared)
    else:
        yield from _leaf(node, head, place, declared.secret)


def _leaf(section: dict[str, Any], name: str, place: _Place, secret: Secret) -> Iterator[Spot]:
    value, at = section.get(name), place.child(name)
    sent_to = None if secret.sent_to is None else place.child(secret.sent_to).field

    def whole(spot: _Place, text: str, put: Callable[[str], None]) -> Spot:
        return Spot(
            spot.field, spot.key, text, REDACTED, "this secret", put, section, secret, sent_to
        )

    if isinstance(value, str) and secret.in_url:
        yield from _url_spots(section, name, at, secret, sent_to)
    elif isinstance(value, str):
        if value:  # also a string where a list is declared: hidden whole rather than shown
            yield whole(at, value, _setter(section, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) and item:
                spot = _Place(f"{at.field}[{index}]", f"{at.key}[{index}]")
                yield whole(spot, item, _setter(value, index))
    elif isinstance(value, dict):
        for key, item in list(value.items()):
            if not isinstance(item, str) or not item:
                continue
            # A value sealed under an earlier, broader rule is still a secret to open.
            if secret.only is None or secret.only(key) or item.startswith(_SEALED):
                yield whole(at.child(key), item, _setter(value, key))


def _url_spots(
    section: dict[str, Any], name: str, at: _Place, secret: Secret, sent_to: str | None
) -> Iterator[Spot]:
    url: str = section[name]
    for credential in reversed(url_credentials(url)):
        text = url[credential.start : credential.end]

        def put(new: str, start: int = credential.start, end: int = credential.end) -> None:
            current = section[name]
            section[name] = current[:start] + new + current[end:]

        yield Spot(
            at.field,
            f"{at.key} {credential.key}",
            text,
            credential.masked(text, REDACTED),
            f"{credential.what} in the URL",
            put,
            section,
            secret,
            sent_to,
        )


def _setter(container: Any, key: Any) -> Callable[[str], None]:
    def put(new: str) -> None:
        container[key] = new

    return put


def _marker(info: FieldInfo) -> Secret | None:
    for item in info.metadata:
        if isinstance(item, Secret):
            return item
    return _annotated_marker(info.annotation)


def _annotated_marker(annotation: Any) -> Secret | None:
    """The marker inside ``Annotated[X, ..., Secret()]``, also within ``... | None``."""
    origin_ = get_origin(annotation)
    if origin_ is Annotated:
        return next((item for item in get_args(annotation)[1:] if isinstance(item, Secret)), None)
    if origin_ in (Union, types.UnionType):
        for option in get_args(annotation):
            found = _annotated_marker(option)
            if found is not None:
                return found
    return None


SECRET_PATHS: Final = declared_secrets()
"""The secret fields of a tool definition (``auth.secret``, ``forward.headers``...)."""
