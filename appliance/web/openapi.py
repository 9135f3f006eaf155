"""The OpenAPI 3.1 document of the JSON API, built from the same `Route` values the
server routes by, so the document cannot drift from the code.

OpenAPI 3.1 uses JSON Schema 2020-12 as its schema dialect, so the routes' schemas go
in unchanged. Served at ``GET /api/v1/openapi.json`` without sign-in (`openapi_route`):
it describes the API, not anybody's data.

What this is not: a validator (schema.py), or documentation prose (docs/api.md).
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from appliance.web.routes import JSON, Request, Route, StreamRoute

OPENAPI_VERSION: Final = "3.1.0"
OPENAPI_PATH: Final = "/api/v1/openapi.json"

#: The body of every error answer (`routes.ApiError.body`).
ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "message_th", "message_en"],
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable."},
                "message": {"type": "string", "description": "In the caller's language."},
                "message_th": {"type": "string"},
                "message_en": {"type": "string"},
                "field": {"type": "string", "description": "422 only: the failing field."},
            },
        }
    },
}

#: Errors any route may answer, whatever it declares.
_COMMON_ERRORS: Final = (400, 500)
_PARAMETER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": http.HTTPStatus(status).phrase,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.removeprefix("/api/v1")) if w]
    return method.lower() + "".join(word[:1].upper() + word[1:] for word in words)


def _parameters(route: Route | StreamRoute) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAMETER.findall(route.path)
    ]
    for name, schema in route.query.items():
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    return parameters


def _errors(route: Route) -> list[int]:
    statuses = set(_COMMON_ERRORS) | set(route.errors)
    if route.auth:
        statuses |= {401, 403}
    if route.request is not None or route.upload is not None:
        statuses |= {413, 415, 422}
    if route.query:
        # Query parameters are checked against their schemas like bodies are.
        statuses.add(422)
    return sorted(statuses)


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(route.method, route.path),
        "summary": route.summary,
        "tags": [route.tag],
    }
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": dict(route.request)}},
        }
    elif route.upload is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {route.upload: {"schema": {"type": "string", "format": "binary"}}},
        }
    responses: dict[str, Any] = {}
    for status in (route.status, *route.also):
        success: dict[str, Any] = {"description": http.HTTPStatus(status).phrase}
        if route.response is not None:
            success["content"] = {"application/json": {"schema": dict(route.response)}}
        responses[str(status)] = success
    for status in _errors(route):
        responses[str(status)] = _error_response(status)
    operation["responses"] = responses
    # OpenAPI §4.8.10: an empty list switches security off for this operation.
    operation["security"] = [{"cookie": []}, {"bearer": []}] if route.auth else []
    return operation


def _stream_operation(route: StreamRoute) -> dict[str, Any]:
    # OpenAPI cannot describe a WebSocket; the handshake GET is listed so clients
    # find it, with the query-token way of signing in that browsers need.
    parameters = _parameters(route)
    if route.auth:
        parameters.append(
            {
                "name": "token",
                "in": "query",
                "required": False,
                "description": "Session token, for clients that cannot set headers.",
                "schema": {"type": "string"},
            }
        )
    operation: dict[str, Any] = {
        "operationId": _operation_id("stream", route.path),
        "summary": route.summary,
        "description": "WebSocket (RFC 6455): JSON text messages both ways.",
        "tags": [route.tag],
        "responses": {
            "101": {"description": "Switching Protocols: the WebSocket is open"},
            "401": _error_response(401),
            "426": _error_response(426),
        },
        "security": [{"cookie": []}, {"bearer": []}] if route.auth else [],
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def openapi_document(
    routes: Iterable[Route | StreamRoute],
    *,
    title: str,
    version: str,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document describing *routes*."""
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for route in routes:
        if route.tag not in tags:
            tags.append(route.tag)
        item = paths.setdefault(route.path, {})
        if isinstance(route, Route):
            item[route.method.lower()] = _operation(route)
        else:
            item["get"] = _stream_operation(route)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": tag} for tag in tags],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "cookie": {"type": "apiKey", "in": "cookie", "name": "edgebox_session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"cookie": []}, {"bearer": []}],
    }
    if server_url is not None:
        document["servers"] = [{"url": server_url}]
    _unique_operation_ids(paths)
    return document


def _unique_operation_ids(paths: dict[str, dict[str, Any]]) -> None:
    # OpenAPI §4.8.10: operationId is unique in the document; two templates that differ
    # only in parameter names would spell the same one, so later ones get a number.
    seen: dict[str, int] = {}
    for item in paths.values():
        for operation in item.values():
            name = operation["operationId"]
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                operation["operationId"] = f"{name}{seen[name]}"


def openapi_route(
    routes: Sequence[Route | StreamRoute], *, title: str = "edgebox API", version: str = "1"
) -> Route:
    """Return the ``GET /api/v1/openapi.json`` route documenting *routes* and itself."""
    document: dict[str, Any] | None = None

    async def handler(request: Request) -> JSON:
        nonlocal document
        if document is None:  # built once, on first use: the routes never change
            document = openapi_document([*routes, route], title=title, version=version)
        return document

    route = Route(
        method="GET",
        path=OPENAPI_PATH,
        handler=handler,
        summary="This document (OpenAPI 3.1)",
        tag="meta",
        response={"type": "object"},
        auth=False,
    )
    return route
