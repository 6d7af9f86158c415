"""The base of the generated parameter and result classes (`kinds.py`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Sequence, Tuple, Type, TypeVar, Union

# A sequence of numbers: a list, or a NumPy array (sent without a Python
# loop, see `_wire.ndarray_msgpack`).
Floats = Union[Sequence[float], Any]

M = TypeVar("M", bound="WireModel")


class WireModel:
    """A MessagePack map with named fields, as the workers read it."""

    # Field -> class name of a nested model ("[]Name" for a list of them).
    _nested: ClassVar[Dict[str, str]] = {}
    # (field, value) of a tagged variant.
    _tag: ClassVar[Tuple[str, Any]] = ("", None)

    def to_wire(self) -> Dict[str, Any]:
        """The map to send; fields left at None are left out (the worker's
        default applies)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name.rstrip("_")] = _wire_value(value)
        return out

    @classmethod
    def from_wire(cls: Type[M], data: Any) -> M:
        """The model of a decoded MessagePack map; fields it does not know
        (added by a newer worker) are ignored."""
        from . import kinds

        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a map, got {type(data).__name__}")
        names = {f.name.rstrip("_"): f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values: Dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                continue
            nested = cls._nested.get(key)
            if nested is not None and value is not None:
                many = nested.startswith("[]")
                target = getattr(kinds, nested[2:] if many else nested)
                value = [_model_of(target, v) for v in value] if many else _model_of(target, value)
            values[names[key]] = value
        return cls(**values)


def _model_of(target: Any, value: Any) -> Any:
    """A nested value as its model: a dataclass, or the variant of a union
    its tag names; anything else (a literal) as it is."""
    if isinstance(target, type) and issubclass(target, WireModel):
        return target.from_wire(value)
    for member in getattr(target, "__args__", ()):
        if isinstance(member, type) and issubclass(member, WireModel):
            field, tag = member._tag
            if isinstance(value, dict) and value.get(field) == tag:
                return member.from_wire(value)
    return value


def _wire_value(value: Any) -> Any:
    """Models anywhere in plain values (a dict of lists of models) as maps;
    everything else, NumPy arrays included, as it is."""
    if isinstance(value, WireModel):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [_wire_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire_value(v) for k, v in value.items()}
    return value
