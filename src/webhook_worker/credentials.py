"""The one rule for "this header carries a credential", and its sibling for URLs.

Two places ask it and must agree: ingest (such headers of an incoming webhook are not stored with
the event, so they are never shown or logged) and the tool definitions (such ``forward.headers``
values are encrypted at rest and redacted in every view). A header counts as a credential when
its name contains any of :data:`CREDENTIAL_WORDS`, whatever its case.

The rule leans towards hiding: any name with ``key`` in it is caught. Hiding a harmless header
costs a little context; storing or showing a credential cannot be undone. The exceptions are the
few ``*-Key`` headers that providers use for routing and de-duplication (:data:`NOT_CREDENTIALS`):
they carry no secret, and an event without them could not be replayed faithfully.

A URL carries credentials in its userinfo (``https://user:password@host/``) and in the values of
query parameters named by the same rule (``?api_key=...``, ``?access_token=...``), plus a few
short names of signed URLs (:data:`QUERY_CREDENTIAL_NAMES`). :func:`url_credentials` finds them;
tool definitions encrypt and redact them, and :func:`redact_url` hides them on trace spans.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

CREDENTIAL_WORDS: Final = (
    "auth",  # authorization, proxy-authorization, x-auth-token, ...
    "cookie",
    "token",
    "secret",
    "signature",
    "password",
    "key",  # api-key, x-access-key, ...
    "hmac",
    "credential",
)
"""Lower-case parts of a header name that mark its value as a credential."""

NOT_CREDENTIALS: Final = frozenset(
    {
        "idempotency-key",  # GitLab's delivery id, and a common de-duplication header
        "x-event-key",  # Bitbucket's event type
    }
)
"""Lower-case names that contain a credential word but are public metadata of the webhook."""


# Cached by name: ingest asks about every header of every request, and senders repeat the same
# few names, so a lookup is a dictionary hit. The bound keeps odd names from growing it forever.
@functools.lru_cache(maxsize=4096)
def is_credential_header(name: str) -> bool:
    """True when the header ``name`` (any case) carries a credential, a token or a signature."""
    lowered = name.lower()
    if lowered in NOT_CREDENTIALS:
        return False
    return any(word in lowered for word in CREDENTIAL_WORDS)


QUERY_CREDENTIAL_NAMES: Final = frozenset({"sig", "pass", "passwd", "pwd"})
"""Lower-case query parameter names that carry a credential without a word of the header rule
(``sig``: Azure shared access signatures)."""


def is_credential_query(name: str) -> bool:
    """True when the URL query parameter ``name`` (any case, decoded) carries a credential."""
    return is_credential_header(name) or name.lower() in QUERY_CREDENTIAL_NAMES


@dataclass(frozen=True, slots=True)
class UrlCredential:
    """One credential written into a URL: ``url[start:end]``, as written (percent-encoded)."""

    start: int
    end: int
    key: str
    """Names it within the URL: ``userinfo``, or ``query <name> <n>`` for the n-th such name."""
    what: str
    """Names it for people: "the user and password", "query parameter 'api_key'"."""

    def masked(self, text: str, mask: str) -> str:
        """``mask`` in place of ``text`` (this credential's text): ``mask:mask`` for a user and
        password, as OpenTelemetry's ``REDACTED:REDACTED@``."""
        return f"{mask}:{mask}" if self.key == "userinfo" and ":" in text else mask


def url_credentials(url: str) -> list[UrlCredential]:
    """The credentials written into ``url``, left to right: its userinfo and the non-empty values
    of its credential query parameters (:func:`is_credential_query`)."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return []
    netloc_start = scheme_end + 3
    ends = (url.find(mark, netloc_start) for mark in "/?#")
    netloc_end = min((end for end in ends if end >= 0), default=len(url))
    found: list[UrlCredential] = []
    at = url.rfind("@", netloc_start, netloc_end)
    if at > netloc_start:
        found.append(UrlCredential(netloc_start, at, "userinfo", "the user and password"))
    fragment = url.find("#", netloc_end)
    query_end = fragment if fragment >= 0 else len(url)
    query_start = url.find("?", netloc_end, query_end)
    if query_start < 0:
        return found
    seen: dict[str, int] = {}
    position = query_start + 1
    for pair in url[query_start + 1 : query_end].split("&"):
        equals = pair.find("=")
        if equals > 0 and equals < len(pair) - 1:
            name = unquote_plus(pair[:equals])
            if is_credential_query(name):
                index = seen[name] = seen.get(name, -1) + 1
                start = position + equals + 1
                found.append(
                    UrlCredential(
                        start,
                        position + len(pair),
                        f"query {name} {index}",
                        f"query parameter {name!r}",
                    )
                )
        position += len(pair) + 1
    return found


def redact_url(url: str, mask: str = "REDACTED") -> str:
    """``url`` with each credential in it replaced by ``mask`` (by default as OpenTelemetry's
    semantic conventions ask of ``url.full``)."""
    for credential in reversed(url_credentials(url)):
        text = url[credential.start : credential.end]
        url = url[: credential.start] + credential.masked(text, mask) + url[credential.end :]
    return url


_URL_IN_TEXT: Final = re.compile(r"https?://[^\s'\"<>]+", re.IGNORECASE)


def redact_urls_in(text: str, mask: str = "REDACTED") -> str:
    """``text`` (an HTTP client's error message, say) with the credentials of every URL in it
    replaced by ``mask``."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(), mask), text)
