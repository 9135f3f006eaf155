"""Which route answers a request: path templates, the request target, query checks.

A route's path is a template of literal segments and ``{name}`` parameters; the
`Router` matches a method and a percent-decoded path against all of them, a literal
segment beating a parameter at the same place, and refuses with the statuses RFC 9110
names: 404 for no such path, 405 with ``Allow`` for a path without that method
(§15.5.5-6), 426 for a plain GET on a WebSocket stream. `parse_target` takes a request
target apart (RFC 9112 §3.2) and `check_query` holds its parameters to the route's
schemas.

What this is not: the routes themselves (each capability's Route list) or what is
done with a request once it is routed (`appliance.web.server`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from appliance.web.responses import not_found, unprocessable
from appliance.web.routes import ApiError, Route, Schema, StreamRoute
from appliance.web.schema import SchemaError, validate


def _template(path: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    """Split a path template into segments (None for ``{name}``) and parameter names."""
    if not path.startswith("/"):
        raise ValueError(f"route path must start with /: {path!r}")
    segments: list[str | None] = []
    names: list[str] = []
    for segment in path.split("/")[1:]:
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not name.isidentifier() or name in names:
                raise ValueError(f"bad path parameter {segment!r} in {path!r}")
            segments.append(None)
            names.append(name)
        else:
            segments.append(segment)
    return tuple(segments), tuple(names)


@dataclass(frozen=True)
class _Entry:
    route: Route | StreamRoute
    segments: tuple[str | None, ...]
    names: tuple[str, ...]

    def match(self, path: Sequence[str]) -> dict[str, str] | None:
        if len(path) != len(self.segments):
            return None
        values = []
        for want, have in zip(self.segments, path, strict=True):
            if want is None:
                if not have:
                    return None  # a parameter is never empty
                values.append(have)
            elif want != have:
                return None
        return dict(zip(self.names, values, strict=True))

    @property
    def specificity(self) -> tuple[bool, ...]:
        # A literal segment beats a parameter at the same place: /rooms/new before
        # /rooms/{room_id}, whatever order the routes were listed in.
        return tuple(segment is None for segment in self.segments)


class Router:
    """Finds the route for a method and a (percent-decoded, split) path."""

    def __init__(self, routes: Iterable[Route | StreamRoute]) -> None:
        self.routes: list[_Entry] = []
        self.streams: list[_Entry] = []
        seen: set[tuple[str, tuple[str | None, ...]]] = set()
        for route in routes:
            segments, names = _template(route.path)
            method = route.method if isinstance(route, Route) else "STREAM"
            if (method, segments) in seen:
                raise ValueError(f"two routes for {method} {route.path}")
            seen.add((method, segments))
            entry = _Entry(route, segments, names)
            (self.routes if isinstance(route, Route) else self.streams).append(entry)

    def match(self, method: str, path: Sequence[str]) -> tuple[Route, dict[str, str]]:
        """Return the route and its parameters; raise 404/405/426 `ApiError`s."""
        lookup = "GET" if method == "HEAD" else method
        allowed: set[str] = set()
        best: tuple[tuple[bool, ...], Route, dict[str, str]] | None = None
        for entry in self.routes:
            params = entry.match(path)
            if params is None:
                continue
            assert isinstance(entry.route, Route)
            allowed.add(entry.route.method)
            if entry.route.method == lookup and (best is None or entry.specificity < best[0]):
                best = (entry.specificity, entry.route, params)
        if best is not None:
            return best[1], best[2]
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here",
                f"ใช้ {method} กับที่อยู่นี้ไม่ได้",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        if lookup == "GET" and self.match_stream(path) is not None:
            raise ApiError(
                426,
                "upgrade_required",
                "This address is a WebSocket stream",
                "ที่อยู่นี้ใช้ได้กับ WebSocket เท่านั้น",
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        raise not_found()

    def match_stream(self, path: Sequence[str]) -> tuple[StreamRoute, dict[str, str]] | None:
        best: tuple[tuple[bool, ...], StreamRoute, dict[str, str]] | None = None
        for entry in self.streams:
            params = entry.match(path)
            if params is not None and (best is None or entry.specificity < best[0]):
                assert isinstance(entry.route, StreamRoute)
                best = (entry.specificity, entry.route, params)
        return None if best is None else (best[1], best[2])


@dataclass(frozen=True)
class Target:
    """A request target (RFC 9112 §3.2) taken apart."""

    path: str
    segments: tuple[str, ...]
    query: dict[str, str]


def parse_target(raw: bytes) -> Target:
    """Split and percent-decode a request target; 400 `ApiError` if it is not one."""
    bad = ApiError(400, "bad_target", "The request address is malformed",
                   "ที่อยู่ของคำขอไม่ถูกต้อง")  # fmt: skip
    try:
        # h11 has already refused bytes outside the RFC 9112 target grammar.
        parts = urlsplit(raw.decode("ascii"))
        if not parts.path.startswith("/"):
            raise bad
        # Split before decoding, so an encoded "/" (%2F) stays inside its segment.
        segments = tuple(unquote(segment, errors="strict") for segment in parts.path.split("/")[1:])
        pairs = parse_qsl(parts.query, keep_blank_values=True, errors="strict", max_num_fields=100)
    except (UnicodeError, ValueError):
        raise bad from None
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)  # the first of repeated parameters counts
    return Target("/" + "/".join(segments), segments, query)


def check_query(schemas: Mapping[str, Schema], query: Mapping[str, str]) -> None:
    """Check query parameters against their schemas; a 422 `ApiError` names the bad one.

    Query values are text; a parameter whose schema says integer, number or boolean
    must be spelled as one, and its value is checked as that type. Handlers still
    receive the text.
    """
    for name, schema in schemas.items():
        if name not in query:
            continue
        text = query[name]
        value: Any = text
        types = schema.get("type")
        names = {types} if isinstance(types, str) else set(types or ())
        try:
            if "integer" in names and text.lstrip("-").isascii() and text.lstrip("-").isdigit():
                value = int(text)
            elif "number" in names and text:
                value = float(text)
            elif "boolean" in names and text in ("true", "false"):
                value = text == "true"
        except ValueError:
            value = text
        try:
            validate(schema, value, f"query.{name}")
        except SchemaError as exc:
            raise unprocessable(exc) from None
