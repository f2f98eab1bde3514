"""The field table of docs/tools.md, generated from the declaration in tools/schema.py.

``python -m webhook_worker.tools.reference`` prints the table; ``--write docs/tools.md``
replaces the table between the page's markers. tests/tools/test_schema.py fails when the
committed table differs from the generated one, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from webhook_worker.config import format_duration
from webhook_worker.tools.fields import Kind, choices
from webhook_worker.tools.messages import unwrap
from webhook_worker.tools.schema import ToolDefinition

BEGIN: Final = (
    "<!-- tool fields: generated from src/webhook_worker/tools/schema.py by "
    "`python -m webhook_worker.tools.reference --write docs/tools.md`; do not edit by hand -->"
)
END: Final = "<!-- end of tool fields -->"
_SCALARS: Final = {bool: "boolean", str: "string", int: "integer", float: "number"}


def declared_fields(
    model: type[BaseModel] = ToolDefinition, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """Every declared field as ``(dotted path, field)``, a section's fields right after the
    field that holds it; ``*`` stands for a key chosen by the user (``events.*.mode``), ``[]``
    for any item of a list (``destinations[].url``)."""
    for name, info in model.model_fields.items():
        path = prefix + name
        yield path, info
        section, holder = _section(info.annotation)
        if section is not None:
            yield from declared_fields(section, f"{path}{holder}.")


def markdown_table(model: type[BaseModel] = ToolDefinition) -> str:
    """The field table, one row per declared field."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for path, info in declared_fields(model):
        kind = _label(info.metadata) or _kind(info.annotation)
        rows.append(
            f"| `{path}` | {_cell(kind)} | {_default(info, kind)} | "
            f"{_cell(info.description or '')} |"
        )
    return "\n".join(rows) + "\n"


def with_table(page: str) -> str:
    """``page`` with the text between its markers replaced by the current table."""
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    return page[:start] + "\n\n" + markdown_table() + "\n" + page[end:]


def _section(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds (itself, as the values of a mapping or as the items of a list),
    and what stands for the one in the path: ``""``, ``.*`` or ``[]``."""
    annotation = unwrap(annotation)
    holder = {dict: ".*", list: "[]"}.get(get_origin(annotation), "")
    if holder:
        annotation = unwrap(get_args(annotation)[-1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, holder
    return None, ""


def _label(metadata: Sequence[Any]) -> str | None:
    return next((item.label for item in metadata if isinstance(item, Kind)), None)


def _kind(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _label(args[1:]) or _kind(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_kind(arg) for arg in args if arg is not type(None))
    if origin is Literal:
        return choices(args)
    if origin is list:
        return f"list of {_kind(args[0])}"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "object"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return choices(member.value for member in annotation)
    return _SCALARS.get(annotation, getattr(annotation, "__name__", "any"))


def _default(info: FieldInfo, kind: str) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if kind == "duration":
        return f"`{format_duration(value)}`"
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`" if not isinstance(value, str) or not value else f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table, or with ``--write PAGE`` put it between PAGE's markers."""
    parser = argparse.ArgumentParser(prog="python -m webhook_worker.tools.reference")
    parser.add_argument("--write", type=Path, metavar="PAGE", help="update PAGE in place")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown_table(), end="")
        return
    page = args.write.read_text(encoding="utf-8")
    args.write.write_text(with_table(page), encoding="utf-8")


if __name__ == "__main__":
    main()
