"""The one base of every clinic.yaml section (tasks/config.py, tasks/list_settings.py,
tasks/report_settings.py, the triggers in tasks/triggers/definition.py): unknown keys refused,
values frozen, and a YAML true/false never taken for a number.

YAML reads ``true``, ``yes`` and ``on`` as a boolean, which pydantic takes for the number 1 (or
0): ``size_cap: true`` was a list of one subscriber, ``overlap_minutes: yes`` a one-minute sync
overlap, ``businesses: [true]`` the business with id 1. A field that wants a number (and is not
true/false itself) refuses a boolean, in a list too, saying so.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

_NUMBERS = (int, float)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _true_or_false_is_no_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not isinstance(value, bool | list | tuple):
            return value
        wants = _wants(field.annotation)
        if isinstance(value, bool) and wants.number and not wants.boolean:
            raise PydanticCustomError("not_a_number", "a number, not true/false")
        if isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value):
            item = _wants(_item(field.annotation))
            if item.number and not item.boolean:
                raise PydanticCustomError(
                    "not_a_number", "a list of numbers or names, not true/false"
                )
        return value


class _Wants(typing.NamedTuple):
    number: bool
    boolean: bool


def _wants(annotation: Any) -> _Wants:
    """Whether a field of this type takes a number, and whether it takes true/false."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _wants(args[0])
    if origin in (Union, types.UnionType):
        parts = [_wants(a) for a in args]
        return _Wants(any(p.number for p in parts), any(p.boolean for p in parts))
    if origin is Literal:
        return _Wants(
            any(isinstance(a, _NUMBERS) and not isinstance(a, bool) for a in args),
            any(isinstance(a, bool) for a in args),
        )
    if annotation is bool:
        return _Wants(False, True)
    return _Wants(annotation in _NUMBERS, False)


def _item(annotation: Any) -> Any:
    """The item type of a list or tuple field (``tuple[int | str, ...]``, optional or not)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _item(args[0])
    if origin in (Union, types.UnionType):
        items = [_item(a) for a in args if a is not type(None)]
        return items[0] if len(items) == 1 else None
    if origin in (list, tuple) and args:
        return args[0]
    return None
