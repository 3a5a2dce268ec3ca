"""Handler input and output models (docs/decisions/013).

A handler whose value parameter or return annotation is a dataclass or a pydantic model (or a list or
``X | None`` of one, or any annotation with one inside) gets and returns instances of it. On the wire
a model travels as its plain form (dicts, lists, strings, numbers: what JSON holds) through the
serde: dataclasses via msgspec (``to_builtins`` / ``convert``: nested dataclasses, lists, dicts,
optionals, datetimes as RFC 3339 strings, enums by value, checked field by field), pydantic models via
pydantic itself (``model_dump(mode="json")`` / ``TypeAdapter.validate_python``). pydantic is never
imported here: a pydantic model can only be annotated by a program that imported pydantic already.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from processor._errors import SerdeError


def _pydantic() -> Any:
    return sys.modules.get("pydantic")


def _is_pydantic_model(tp: Any) -> bool:
    pyd = _pydantic()
    return pyd is not None and isinstance(tp, type) and issubclass(tp, pyd.BaseModel)


def _is_model_class(tp: Any) -> bool:
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_pydantic_model(tp))


def _models_in(annotation: Any) -> list[type]:
    """The model classes an annotation mentions (``list[Order]`` → [Order])."""
    if _is_model_class(annotation):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """How a value of one annotation leaves its plain form. ``annotation`` None: it does not (the
    value is handed over as the serde decoded it, as for every annotation without a model)."""

    annotation: Any = None
    pydantic: bool = False

    @property
    def typed(self) -> bool:
        return self.annotation is not None

    def load(self, plain: Any) -> Any:
        """The model value of `plain`; SerdeError naming the field that does not fit."""
        if self.annotation is None:
            return plain
        if self.pydantic:
            pyd = _pydantic()
            try:
                return pyd.TypeAdapter(self.annotation).validate_python(plain)
            except pyd.ValidationError as e:
                raise SerdeError(f"not a valid {_name(self.annotation)}: {e}") from None
        try:
            return msgspec.convert(plain, self.annotation)
        except msgspec.ValidationError as e:
            raise SerdeError(f"not a valid {_name(self.annotation)}: {e}") from None


PLAIN = Shape()


def shape_of(annotation: Any) -> Shape:
    """The shape of values annotated `annotation` (PLAIN when it mentions no model)."""
    if annotation is None or annotation is inspect.Parameter.empty:
        return PLAIN
    models = _models_in(annotation)
    if not models:
        return PLAIN
    return Shape(annotation=annotation, pydantic=any(_is_pydantic_model(m) for m in models))


def dump(value: Any) -> Any:
    """The plain form of a model value (a model, or a list or tuple of them); anything else as is."""
    if value is None or isinstance(value, str | int | float | bool | bytes | dict):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return msgspec.to_builtins(value)
        except (TypeError, msgspec.EncodeError) as e:
            raise SerdeError(f"cannot serialize {type(value).__name__}: {e}") from None
    if _is_pydantic_model(type(value)):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple) and value and _is_model_class(type(value[0])):
        return [dump(v) for v in value]
    return value


def handler_shapes(fn: Callable[..., Any]) -> tuple[Shape, Shape]:
    """The shapes of a handler's value parameter (its second) and of its result, from its type hints.
    Hints that cannot be resolved (a name defined inside a function, under postponed evaluation)
    count as no model."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return PLAIN, PLAIN
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: use what is already a type
        hints = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if not isinstance(v, str)}
    value = hints.get(params[1].name) if len(params) > 1 else None
    return shape_of(value), shape_of(hints.get("return"))


def _name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)
