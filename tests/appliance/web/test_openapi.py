"""The OpenAPI 3.1 document generated from routes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.web.openapi import ERROR_SCHEMA, openapi_document, openapi_route
from appliance.web.routes import Request, Route, StreamRoute, WebSocket
from appliance.web.schema import validate


async def handler(request: Request) -> Any:
    return {}


async def stream(request: Request, socket: WebSocket) -> None:
    return None


MESSAGE = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}

ROUTES: list[Route | StreamRoute] = [
    Route("GET", "/api/v1/rooms/{room_id}/messages", handler, "List messages", "chat",
          response={"type": "array", "items": MESSAGE},
          query={"after": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
          errors=(404,)),
    Route("POST", "/api/v1/rooms/{room_id}/messages", handler, "Post", "chat", request=MESSAGE,
          response=MESSAGE, status=201),
    Route("POST", "/api/v1/session", handler, "Sign in", "session", request=MESSAGE,
          auth=False),
    Route("PUT", "/api/v1/files/{file_id}", handler, "Upload", "files", upload="image/png"),
    StreamRoute("/api/v1/events", stream, "Live events", "chat"),
]  # fmt: skip


@pytest.fixture
def document() -> dict[str, Any]:
    return openapi_document(ROUTES, title="edgebox", version="1.2", server_url="https://box")


def test_header_and_security_schemes(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"] == {"title": "edgebox", "version": "1.2"}
    assert document["servers"] == [{"url": "https://box"}]
    schemes = document["components"]["securitySchemes"]
    assert schemes["cookie"] == {"type": "apiKey", "in": "cookie", "name": "edgebox_session"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA
    assert [tag["name"] for tag in document["tags"]] == ["chat", "session", "files"]
    json.dumps(document)  # serialisable as it is


def test_parameters_from_path_and_query(document: dict[str, Any]) -> None:
    get = document["paths"]["/api/v1/rooms/{room_id}/messages"]["get"]
    params = {(p["name"], p["in"]): p for p in get["parameters"]}
    assert params["room_id", "path"]["required"] is True
    assert params["limit", "query"]["schema"] == {"type": "integer", "minimum": 1}
    assert params["after", "query"]["required"] is False
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "array"
    assert "404" in get["responses"]
    assert "401" in get["responses"]
    assert get["security"] == [{"cookie": []}, {"bearer": []}]
    assert get["operationId"] == "getRoomsRoomIdMessages"


def test_request_bodies_and_errors(document: dict[str, Any]) -> None:
    post = document["paths"]["/api/v1/rooms/{room_id}/messages"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == MESSAGE
    assert set(post["responses"]) >= {"201", "400", "401", "413", "415", "422", "500"}
    error = post["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    upload = document["paths"]["/api/v1/files/{file_id}"]["put"]
    assert "image/png" in upload["requestBody"]["content"]
    assert {"413", "415"} <= set(upload["responses"])


def test_open_routes_switch_security_off(document: dict[str, Any]) -> None:
    sign_in = document["paths"]["/api/v1/session"]["post"]
    assert sign_in["security"] == []
    assert "401" not in sign_in["responses"]


def test_streams_are_listed_with_their_query_token(document: dict[str, Any]) -> None:
    get = document["paths"]["/api/v1/events"]["get"]
    assert "101" in get["responses"]
    assert any(p["name"] == "token" and p["in"] == "query" for p in get["parameters"])


def test_schemas_in_the_document_are_ones_our_validator_runs() -> None:
    document = openapi_document(ROUTES, title="t", version="1")
    validate(ERROR_SCHEMA, {"error": {"code": "x", "message": "m", "message_th": "ท",
                                      "message_en": "e"}})  # fmt: skip
    assert document["paths"]


async def test_openapi_route_documents_itself() -> None:
    route = openapi_route(ROUTES)
    assert (route.method, route.path, route.auth) == ("GET", "/api/v1/openapi.json", False)
    document = await route.handler(None)  # type: ignore[arg-type]
    assert "/api/v1/openapi.json" in document["paths"]
    assert "/api/v1/session" in document["paths"]


def test_operation_ids_are_unique() -> None:
    routes = [
        Route("GET", "/api/v1/a/{x}", handler, "one", "t"),
        Route("GET", "/api/v1/a/{y}/", handler, "two", "t"),
        Route("GET", "/api/v1/a/x", handler, "three", "t"),
    ]
    document = openapi_document(routes, title="t", version="1")
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == 3


def test_other_success_statuses_are_documented() -> None:
    async def handler(request: Request) -> None:
        return None

    route = Route("POST", "/api/v1/things", handler, "Make or find a thing", "things",
                  status=201, also=(200,), response={"type": "object"})  # fmt: skip
    document = openapi_document([route], title="t", version="1")
    responses = document["paths"]["/api/v1/things"]["post"]["responses"]
    assert responses["201"]["content"] == responses["200"]["content"]
