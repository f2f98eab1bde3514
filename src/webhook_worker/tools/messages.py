"""From pydantic's ValidationError to the ToolConfigError the API and CLI show.

The first error becomes ``ToolConfigError(field, message)``: the field as a dotted path
(``forward.url``, ``events.push.transform``; a position in a list of sections is kept, as in
``destinations[1].url``, while one in a list of values is left out, so ``auth.secrets``), the
message in the project's words, with what the declaration knows (the known fields, an example,
the field's description) and without pydantic's boilerplate or links. A message never repeats a
value unless it is a short word from a closed set (an unknown mode, say), so no secret is echoed.
"""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Final, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from webhook_worker.errors import ToolConfigError
from webhook_worker.tools.fields import REFUSED

_TYPES: Final = {
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "list_type": "expected a list",
    "dict_type": "expected an object",
}
_CHOICE_ECHO_LIMIT: Final = 40


def config_error(exc: ValidationError, root: type[BaseModel]) -> ToolConfigError:
    """The ToolConfigError for the first of ``exc``'s errors, ``root`` being the model that was
    validated (its declaration supplies known fields, examples and descriptions)."""
    errors = exc.errors(include_url=False)
    # A misspelt field name explains the errors that follow from it (a required field missing).
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(error["loc"])
    return ToolConfigError(_field_name(loc, root) or "tool", _message(error, loc, root))


def _field_name(loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    """``loc`` as the field the messages name: ``destinations[1].url``, ``auth.secrets``. A
    position is kept in a list of sections (each an object of its own), not in a list of
    values."""
    name = ""
    for number, part in enumerate(loc):
        if isinstance(part, int):
            if _walk(root, loc[: number + 1])[1] is not None:
                name += f"[{part}]"
        elif part != "[key]":
            name += f".{part}" if name else part
    return name


def _message(error: ErrorDetails, loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == REFUSED:
        return error["msg"]
    if kind == "extra_forbidden":
        section = _walk(root, loc[:-1])[1]
        known = sorted(section.model_fields) if section is not None else []
        return f"unknown field (known: {', '.join(known)})" if known else "unknown field"
    info = _walk(root, loc)[0]
    if kind == "missing":
        about = _first_sentence(info.description) if info and info.description else ""
        return f"required: {about}" if about else "required"
    if kind in ("enum", "literal_error"):
        value = error["input"]
        got = (
            f", got {value!r}"
            if isinstance(value, str) and len(value) <= _CHOICE_ECHO_LIMIT
            else ""
        )
        return f"expected one of {ctx['expected']}{got}"
    if kind == "too_long":
        return f"expected at most {ctx['max_length']} items, got {ctx['actual_length']}"
    if kind in ("greater_than_equal", "greater_than"):
        number = "a whole number" if isinstance(error["input"], int) else "a number"
        bound = ctx.get("ge", ctx.get("gt"))
        return f"expected {number} {'>=' if 'ge' in ctx else '>'} {bound:g}"
    if kind in _TYPES:
        examples = info.examples if info is not None else None
        example = f" such as {json.dumps(examples[0])}" if examples else ""
        return _TYPES[kind] + example
    text = error["msg"]
    return "expected" + text.removeprefix("Input should be") if text.startswith("Input") else text


def _walk(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[FieldInfo | None, type[BaseModel] | None]:
    """The field ``loc`` names, and the model ``loc`` ends in (if it ends in one)."""
    annotation: Any = root
    info: FieldInfo | None = None
    for part in loc:
        annotation = unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(str(part))
            if info is None:
                return None, None
            annotation = info.annotation
        elif get_origin(annotation) is dict:  # the part is a key: on to the value type
            annotation = get_args(annotation)[1]
        elif get_origin(annotation) is list and isinstance(part, int):  # on to the item type
            annotation = get_args(annotation)[0]
        else:  # inside a value (a list position, a header name...)
            return info, None
    annotation = unwrap(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return info, annotation if is_model else None


def unwrap(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and from ``X | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _first_sentence(text: str) -> str:
    sentence = text.split(". ", 1)[0].rstrip(".")
    return sentence[:1].lower() + sentence[1:] if sentence[1:2].islower() else sentence
