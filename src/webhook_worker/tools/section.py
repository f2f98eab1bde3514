"""The base of every part of a tool definition (tools/schema.py, tools/control_schema.py): an
object whose unknown fields are refused, with a message that shows its shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from webhook_worker.tools.fields import refuse


class Section(BaseModel):
    """A part of a tool definition: an object whose unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    shape: ClassVar[str] = "an object"
    """What the section looks like, for the message when it is not an object."""
    unknown_is_shape_error: ClassVar[bool] = False
    """Refuse unknown fields by showing the shape (small sections) instead of naming them."""

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping) or (
            cls.unknown_is_shape_error and set(data) - set(cls.model_fields)
        ):
            refuse(f"expected {cls.shape}")
        return dict(data)


__all__ = ["Section"]
