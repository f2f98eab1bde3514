"""Tool secrets at rest: encrypted with SECRETS_KEY in the database, plaintext everywhere else.

A tool definition carries secrets in the fields tools/schema.py marks secret (``auth.secret``,
``auth.secrets[*]``, ``forward.signing_secret``, the ``forward.headers`` values whose names carry
a credential, the credentials written into ``forward.url``, and the same three in each of
``destinations``): tools/secret_paths.py finds them, for this module and for tools/service.py's
redaction alike. :class:`SecretsAtRest` seals them before the tool store writes a definition and
opens them after it reads one, so every other module sees plaintext. In a URL only the
credential is sealed, in place (``https://enc:v1:...@host/``), so the stored URL still names its
host.

A sealed value is ``enc:v1:<Fernet token>``. The prefix makes encrypted and plain values easy to
tell apart: plaintext written by an older release, or by the embedded mode without a key, is
read as it is and encrypted the next time the tool is written; sealing a sealed value again
does not wrap it twice. docs/security.md describes key generation and rotation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhook_worker.config import SECRETS_KEY_HOWTO, Settings, parse_secrets_key
from webhook_worker.errors import ConfigError, ToolConfigError
from webhook_worker.tools.secret_paths import secret_spots

PREFIX: Final = "enc:v1:"
"""Marks an encrypted value. A new format would be ``enc:v2:``; readers keep accepting v1."""


class UndecryptableSecretError(ToolConfigError):
    """A stored secret is encrypted and SECRETS_KEY cannot decrypt it (no key, or not the key
    that encrypted it). ``field`` names the secret; the message never contains it."""


class SecretBox:
    """Fernet encryption with SECRETS_KEY's keys: the first encrypts, each decrypts."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._current = Fernet(keys[0])
        self._all = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def from_setting(cls, text: str) -> SecretBox:
        """The box for a SECRETS_KEY value; ConfigError naming SECRETS_KEY when it is bad."""
        try:
            return cls(parse_secrets_key(text))
        except ValueError as exc:
            raise ConfigError(f"SECRETS_KEY: {exc}") from None

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self._current.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, sealed: str) -> str:
        """The plaintext of an ``enc:v1:`` value. Raises InvalidToken when no key opens it."""
        return self._all.decrypt(_token(sealed)).decode()

    def is_current(self, sealed: str) -> bool:
        """True when the first key (the one that encrypts now) opens ``sealed``."""
        try:
            self._current.decrypt(_token(sealed))
        except InvalidToken:
            return False
        return True


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class Opened:
    """A definition as read back: ``config`` in plaintext, except the secrets named in
    ``undecryptable``, which are left sealed (still ``enc:v1:...``)."""

    config: dict[str, Any]
    undecryptable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecretsAtRest:
    """What happens to a definition's secrets on their way into and out of the database.

    With a ``box`` (SECRETS_KEY set) every secret is encrypted. Without one, secrets are stored
    as given when ``plaintext_allowed`` (the embedded SQLite file, where the file is then the
    secret), and refused otherwise (a shared database must never hold them in the clear).
    """

    box: SecretBox | None = None
    plaintext_allowed: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretsAtRest:
        """SECRETS_KEY's box; plaintext only for the embedded database. ConfigError when
        SECRETS_KEY is malformed."""
        box = SecretBox.from_setting(settings.secrets_key) if settings.secrets_key else None
        return cls(box=box, plaintext_allowed=settings.is_embedded)

    def seal(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``config`` ready to store: every plaintext secret encrypted with the first
        key, and every sealed one kept as it is (sealing twice changes nothing). Raises
        ToolConfigError on the first secret that may not be stored in plaintext."""
        sealed = copy.deepcopy(dict(config))
        for field, value, put in secret_fields(sealed):
            if is_sealed(value):
                # Reads open every secret the keys can open, so a sealed one here is one they
                # could not: kept as it is, a rewrite of the tool does not lose it.
                continue
            if self.box is not None:
                put(self.box.encrypt(value))
            elif not self.plaintext_allowed:
                raise ToolConfigError(
                    field,
                    "SECRETS_KEY is required to store a secret in a non-embedded database "
                    f"(PostgreSQL): {SECRETS_KEY_HOWTO}, and set SECRETS_KEY to it on every "
                    "process",
                )
        return sealed

    def open(self, config: Mapping[str, Any]) -> Opened:
        """A copy of ``config`` with every secret decrypted. Secrets that cannot be decrypted are
        listed in the result rather than raised: a redacted view does not need them."""
        opened = copy.deepcopy(dict(config))
        failed: list[str] = []
        for field, value, put in secret_fields(opened):
            if not is_sealed(value):
                continue
            if self.box is None:
                failed.append(field)
                continue
            try:
                put(self.box.decrypt(value))
            except InvalidToken:
                failed.append(field)
        return Opened(opened, tuple(failed))

    def needs_rewrite(self, config: Mapping[str, Any]) -> bool:
        """True when :meth:`seal` would change what is stored: a plaintext secret while a key is
        set, or one encrypted with a key that is no longer first."""
        if self.box is None:
            return False
        return any(
            not is_sealed(value) or not self.box.is_current(value)
            for _, value, _ in secret_fields(config)
        )

    def has_plaintext(self, config: Mapping[str, Any]) -> bool:
        return any(not is_sealed(value) for _, value, _ in secret_fields(config))

    def undecryptable_error(self, fields: Sequence[str]) -> UndecryptableSecretError:
        """The error for a definition whose ``fields`` cannot be decrypted, saying why."""
        if self.box is None:
            reason = "it is encrypted and SECRETS_KEY is not set; set it to the key it was "
        else:
            reason = "no key in SECRETS_KEY decrypts it; add the key it was "
        return UndecryptableSecretError(
            fields[0],
            f"cannot be decrypted: {reason}encrypted with"
            + (f" (also affects: {', '.join(fields[1:])})" if len(fields) > 1 else ""),
        )


def secret_fields(
    config: Mapping[str, Any],
) -> Iterator[tuple[str, str, Callable[[str], None]]]:
    """Each non-empty secret string in ``config``'s declared secret fields: ``(field name,
    value, setter)``. The setter replaces the value in place (so ``config`` must be a copy the
    caller may change)."""
    for spot in secret_spots(config):
        yield spot.field, spot.value, spot.put


def _token(sealed: str) -> bytes:
    if not is_sealed(sealed):
        raise InvalidToken
    return sealed[len(PREFIX) :].encode("ascii", errors="replace")
