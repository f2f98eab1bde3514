"""The opaque ``cursor`` of list pages: the keyset position a page ends at (the id of its last
item), url-safe base64 so clients treat it as a token rather than build one.

The API and the CLI read and write cursors only through here; storage deals in ids
(:attr:`webhook_worker.storage.rows.Page.after`).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from webhook_worker.storage.rows import Page

_CURSOR = re.compile(r"[A-Za-z0-9_-]+")


def encode_cursor(position: str) -> str:
    """The cursor standing for the id ``position``."""
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor stands for; ValueError naming ``cursor`` for anything this API did not
    hand out (every id is a UUID, so anything else is not one of ours)."""
    try:
        # fullmatch: "$" would let a trailing newline through, which base64 then ignores.
        if not _CURSOR.fullmatch(cursor):
            raise ValueError
        position = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return str(uuid.UUID(position))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor: not a cursor this API returned") from None


def next_cursor(page: Page[Any]) -> str | None:
    """The cursor of the page after ``page``; None when ``page`` is the last."""
    return None if page.after is None else encode_cursor(page.after)
