"""Checks parameters against a kind's JSON Schema (from `kinds.json`)
before sending, naming the field at fault the way the workers do:
``sigma: expected a number, got a string ("0.2")``. Covers what
`tandem kinds --json-schema` uses: types, required and unknown fields,
bounds, lengths, constants and tagged variants. The rules that tie fields
together stay with the worker, which answers `BAD_PARAMS`.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from ._wire import _is_ndarray


class SchemaError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def check(schema: Dict[str, Any], value: Any) -> None:
    """Raises `SchemaError` naming the first field that breaks `schema`."""
    _check(schema, value, "", schema.get("$defs", {}))


def _got(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)})"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, (list, tuple)) or _is_ndarray(value):
        return "an array"
    return f"a {type(value).__name__}"


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _type_ok(t: str, value: Any, schema: Dict[str, Any]) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if t == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int) or type(value).__module__ == "numpy" and "int" in type(value).__name__:
            return True
        return False
    if t == "number":
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, float)) or type(value).__module__ == "numpy" and (
            "float" in type(value).__name__ or "int" in type(value).__name__
        )
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        if schema.get("x-msgpack") == "bin" and isinstance(value, (bytes, bytearray)):
            return True
        return isinstance(value, (list, tuple)) or _is_ndarray(value)
    if t == "object":
        return isinstance(value, dict)
    return True


_EXPECTED = {
    "null": "nil",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "a map",
}


def _check(schema: Dict[str, Any], value: Any, path: str, defs: Dict[str, Any]) -> None:
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        if "properties" in schema:
            merged = json.loads(json.dumps(target))
            merged.setdefault("properties", {}).update(schema["properties"])
            merged["required"] = list(merged.get("required", [])) + list(schema.get("required", []))
            schema = merged
        else:
            schema = target
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                _check(option, value, path, defs)
                return
            except SchemaError as err:
                errors.append(err)
        raise errors[0]
    if "oneOf" in schema:
        _check_variant(schema["oneOf"], value, path, defs)
        return
    if "const" in schema and value != schema["const"]:
        raise SchemaError(path, f"expected {json.dumps(schema['const'])}, got {_got(value)}")
    types = schema.get("type")
    if types is not None:
        options = types if isinstance(types, list) else [types]
        if not any(_type_ok(t, value, schema) for t in options):
            wanted = " or ".join(_EXPECTED.get(str(t), str(t)) for t in options)
            raise SchemaError(path, f"expected {wanted}, got {_got(value)}")
        if value is None:
            return
    _check_bounds(schema, value, path)
    if isinstance(value, dict) and "properties" in schema:
        _check_object(schema, value, path, defs)
    elif (isinstance(value, (list, tuple)) or _is_ndarray(value)) and "items" in schema:
        _check_items(schema["items"], value, path, defs)


def _check_variant(variants: List[Dict[str, Any]], value: Any, path: str, defs: Dict[str, Any]) -> None:
    if all("const" in v for v in variants):
        allowed = [v["const"] for v in variants]
        if value not in allowed:
            names = ", ".join(json.dumps(a) for a in allowed)
            raise SchemaError(path, f"{json.dumps(value) if isinstance(value, str) else _got(value)} is not one of {names}")
        return
    tags: List[Tuple[str, Any, Dict[str, Any]]] = []
    for v in variants:
        for field, s in v.get("properties", {}).items():
            if "const" in s:
                tags.append((field, s["const"], v))
                break
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a map, got {_got(value)}")
    field = tags[0][0] if tags else ""
    if field not in value:
        raise SchemaError(_join(path, field), "required field is missing")
    for _, tag, v in tags:
        if value[field] == tag:
            _check(v, value, path, defs)
            return
    names = ", ".join(json.dumps(t) for _, t, _ in tags)
    raise SchemaError(_join(path, field), f"{json.dumps(value[field])} is not one of {names}")


def _check_bounds(schema: Dict[str, Any], value: Any, path: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(path, f"must be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(path, f"must be at most {schema['maximum']}, got {value}")
        if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
            raise SchemaError(path, f"must be more than {schema['exclusiveMinimum']}, got {value}")
    if isinstance(value, (list, tuple)) or _is_ndarray(value):
        n = len(value)
        if "minItems" in schema and n < schema["minItems"]:
            raise SchemaError(path, f"must hold at least {schema['minItems']} items, got {n}")
        if "maxItems" in schema and n > schema["maxItems"]:
            raise SchemaError(path, f"must hold at most {schema['maxItems']} items, got {n}")


def _check_object(schema: Dict[str, Any], value: Dict[Any, Any], path: str, defs: Dict[str, Any]) -> None:
    properties: Dict[str, Any] = schema["properties"]
    for field in schema.get("required", []):
        if field not in value:
            raise SchemaError(_join(path, field), "required field is missing")
    for field, item in value.items():
        if field not in properties:
            known = ", ".join(properties)
            raise SchemaError(_join(path, str(field)), f"unknown field; the fields are {known}")
        _check(properties[field], item, _join(path, field), defs)


def _check_items(items: Dict[str, Any], value: Any, path: str, defs: Dict[str, Any]) -> None:
    if _is_ndarray(value):
        kind = value.dtype.kind
        wanted = items.get("type")
        if wanted == "number" and kind not in "fiu":
            raise SchemaError(path, f"expected an array of numbers, got a NumPy array of {value.dtype}")
        if wanted == "integer" and kind not in "iu":
            raise SchemaError(path, f"expected an array of integers, got a NumPy array of {value.dtype}")
        return
    for i, item in enumerate(value):
        _check(items, item, f"{path}[{i}]", defs)


def field_of(err: SchemaError) -> Optional[str]:
    return err.path or None
