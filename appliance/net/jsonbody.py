"""Strict JSON (RFC 8259) for HTTP request and response bodies, as both listeners read it.

Python's `json` accepts ``NaN`` and ``Infinity``, which RFC 8259 does not have, and
raises `RecursionError` on deep nesting; a body from the network must get neither
past the parser, so both are a `ValueError` here, which a listener answers with 400.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn


def _refuse_constant(name: str) -> NoReturn:
    # RFC 8259 has no NaN or Infinity; Python's json would accept them.
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """Parse a body as strict RFC 8259 JSON (UTF-8); ValueError otherwise."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def encode_json(value: Any) -> bytes:
    """Encode *value* as compact UTF-8 JSON (no ASCII escapes: Thai stays readable)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
