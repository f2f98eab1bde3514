"""Data on the operator's terminal, printed as plain text.

Event types, headers, payloads, error messages and tool fields come from webhook senders, from
forward targets or from files: printed as rich markup, a ``[/]`` in one of them ends the command
with a markup error, and a ``[bold red]`` styles the operator's terminal. Printed raw, an
``ESC [2J`` clears the screen, a ``\\r`` rewrites the line already printed and a ``U+202E``
reverses what follows. So every value that is not the CLI's own words goes through this module:
into a :class:`rich.text.Text` (never parsed as markup), with control characters shown escaped
(``\\x1b``, ``\\r``) rather than sent to the terminal. The CLI's own styling stays markup.
"""

from __future__ import annotations

import json
from typing import Any

from rich.highlighter import JSONHighlighter
from rich.text import Text

from webhook_worker.api.responses import dumps_any_depth

_KEPT = "\n\t"  # they only move to the next line or column: nothing printed is overwritten

_ESCAPES: dict[int, str] = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), *range(0x7F, 0xA0))  # C0, DEL and C1 controls
    if chr(code) not in _KEPT
}
_ESCAPES[ord("\r")] = "\\r"
_ESCAPES.update(
    # Bidirectional overrides, embeddings, isolates and marks: they reorder what is shown.
    {code: f"\\u{code:04x}" for code in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F))}
)
_ESCAPES.update({code: f"\\u{code:04x}" for code in range(0x2066, 0x206A)})

# JSON text holds these only inside strings (its encoder escapes the rest of C0 itself), where
# ``\uXXXX`` means the same character: escaping them changes how JSON looks, not what it says.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _ESCAPES if code >= 0x20}

_JSON_HIGHLIGHTER = JSONHighlighter()


def printable(value: object) -> str:
    """``value`` as a string whose control characters are shown escaped (``\\x1b``, ``\\r``),
    so printing it cannot move the cursor, rewrite a line or restyle the terminal."""
    return str(value).translate(_ESCAPES)


def plain(value: object, style: str = "") -> Text:
    """``value`` as text to print: never read as markup, control characters escaped."""
    return Text(printable(value), style=style)


def json_dumps(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON text, non-ASCII kept as it is but with the controls the encoder leaves
    raw (DEL, C1, bidirectional marks) escaped as ``\\uXXXX``: the same JSON, safe to print."""
    try:
        encoded = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    except RecursionError:
        # Nested past what the indenting encoder recurses through (a store_only body keeps any
        # depth): compact, by the API's encoder, which needs no recursion.
        encoded = dumps_any_depth(data).decode()
    return safe_json_text(encoded)


def safe_json_text(encoded: str) -> str:
    """JSON text with the controls encoders leave raw (DEL, C1, bidirectional marks) escaped
    as ``\\uXXXX``: the same JSON, safe to print."""
    return encoded.translate(_JSON_ESCAPES)


def plain_json(data: Any) -> Text:
    """``data`` as indented, highlighted JSON (see :func:`json_dumps`)."""
    text = _JSON_HIGHLIGHTER(json_dumps(data))
    text.no_wrap = True  # as rich's own JSON: long strings run on instead of folding
    text.overflow = None
    return text
