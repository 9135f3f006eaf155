"""A small JSON Schema validator: the subset the API's routes use, nothing more.

The server checks every request body against its route's schema before the handler
runs (routes.py), so handlers may trust types and shapes. Supported keywords
(JSON Schema 2020-12 meaning, the dialect of OpenAPI 3.1): ``type`` (a name or a list,
incl. "null"), ``properties``, ``required``, ``additionalProperties`` (bool or schema),
``enum``, ``const``, ``minLength``/``maxLength`` (in Unicode code points, §6.3.1),
``minimum``/``maximum``, ``pattern`` (unanchored, §6.3.3), ``items``, ``minItems``/
``maxItems``, ``format: date-time`` (RFC 3339 §5.6), ``oneOf``/``anyOf``. Annotation
keywords (``description``, ``title``, ``examples``, ``default``) are ignored; any other
keyword is an error in the *schema*, so a typo cannot silently switch a check off.

Errors name the failing place as a path from the body's root, e.g.
``$.members[2].address``, so the 422 answer says which field is wrong.

What this is not: a complete JSON Schema implementation ($ref, if/then, dependent*,
unevaluated* are absent), nor the jsonschema library.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

_ANNOTATIONS: Final = frozenset(
    {"description", "title", "examples", "default", "deprecated", "readOnly", "writeOnly"}
)
_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "pattern",
        "items",
        "minItems",
        "maxItems",
        "format",
        "oneOf",
        "anyOf",
    }
)
_TYPES: Final = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})

# RFC 3339 §5.6 date-time; "T"/"Z" may be lower case there (§5.6 NOTE).
_DATE_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


class SchemaError(ValueError):
    """The instance does not match: *path* says where, *message* says why (English)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class InvalidSchema(Exception):
    """The schema itself uses a keyword or value this validator does not understand."""


def validate(schema: Mapping[str, Any], instance: Any, path: str = "$") -> None:
    """Raise `SchemaError` if *instance* (parsed JSON) does not match *schema*."""
    _check(schema, instance, path)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    if name not in _TYPES:
        raise InvalidSchema(f"unknown type {name!r}")
    actual = _type_name(value)
    if name == "number":
        return actual in ("integer", "number")
    if name == "integer":
        # 2020-12 §6.1.1: a number with a zero fractional part is an integer (1.0).
        return actual == "integer" or (
            actual == "number" and math.isfinite(value) and float(value).is_integer()
        )
    return actual == name


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_quote(key)}]"


def _quote(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidSchema(f"bad pattern {pattern!r}: {exc}") from None


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, and 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return (type(a) is type(b) and a == b) or (_is_number(a) and _is_number(b) and a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(schema: Mapping[str, Any], value: Any, path: str) -> None:
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise InvalidSchema(f"unsupported keyword(s) {sorted(unknown)} at {path}")

    if "type" in schema:
        wanted = schema["type"]
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(_is_type(value, name) for name in names):
            raise SchemaError(path, f"must be {' or '.join(names)}, not {_type_name(value)}")
    if "const" in schema and not _equal(value, schema["const"]):
        raise SchemaError(path, f"must be {_describe(schema['const'])}")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        options = ", ".join(_describe(option) for option in schema["enum"])
        raise SchemaError(path, f"must be one of {options}")

    if isinstance(value, str):
        _check_string(schema, value, path)
    elif _is_number(value):
        _check_number(schema, value, path)
    elif isinstance(value, list):
        _check_array(schema, value, path)
    elif isinstance(value, dict):
        _check_object(schema, value, path)

    if "anyOf" in schema and not any(_matches(option, value, path) for option in schema["anyOf"]):
        raise SchemaError(path, "matches none of the allowed forms")
    if "oneOf" in schema:
        matching = sum(1 for option in schema["oneOf"] if _matches(option, value, path))
        if matching != 1:
            raise SchemaError(
                path,
                "matches none of the allowed forms"
                if matching == 0
                else "matches more than one of the exclusive forms",
            )


def _matches(schema: Mapping[str, Any], value: Any, path: str) -> bool:
    try:
        _check(schema, value, path)
    except SchemaError:
        return False
    return True


def _check_string(schema: Mapping[str, Any], value: str, path: str) -> None:
    # len() counts code points, which is what §6.3.1 asks; a Thai vowel or tone mark
    # is a code point of its own and counts as one.
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SchemaError(path, f"must be at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaError(path, f"must be at most {schema['maxLength']} characters")
    if "pattern" in schema and _compile(schema["pattern"]).search(value) is None:
        raise SchemaError(path, f"must match the pattern {schema['pattern']}")
    if schema.get("format") == "date-time" and not _is_date_time(value):
        raise SchemaError(path, "must be a date and time like 2026-01-31T09:30:00Z")


def _is_date_time(value: str) -> bool:
    if not _DATE_TIME.fullmatch(value):
        return False
    try:
        # Catches month 13, 31 February, hour 25; fromisoformat wants upper-case T/Z.
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        # A leap second (:60, RFC 3339 §5.7) is valid but datetime cannot hold it.
        return value[17:19] == "60"
    return True


def _check_number(schema: Mapping[str, Any], value: float, path: str) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        raise SchemaError(path, f"must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise SchemaError(path, f"must be at most {schema['maximum']}")


def _check_array(schema: Mapping[str, Any], value: Sequence[Any], path: str) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaError(path, f"must have at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaError(path, f"must have at most {schema['maxItems']} items")
    items = schema.get("items")
    if items is False and value:
        raise SchemaError(path, "must be empty")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _check(items, item, _child(path, index))


def _check_object(schema: Mapping[str, Any], value: Mapping[str, Any], path: str) -> None:
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaError(_child(path, name), "is required")
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(properties[name], item, _child(path, name))
        elif extra is False:
            raise SchemaError(_child(path, name), "is not an allowed field")
        elif isinstance(extra, Mapping):
            _check(extra, item, _child(path, name))
