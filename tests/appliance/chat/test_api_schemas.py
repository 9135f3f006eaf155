"""The chat API keeps its schemas apart from its handlers (appliance/chat/api/).

Every JSON Schema an endpoint declares (request, response, query) is a value of
``appliance.chat.api.schemas``, so the contract the OpenAPI document publishes is read
in one place, and that module is data: it imports no handler, store or I/O code.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from appliance.chat.api import chat_routes, schemas
from appliance.web.routes import Route


def named(schema: Any) -> bool:
    return any(schema is value for value in vars(schemas).values())


def test_every_declared_schema_lives_in_the_schemas_module() -> None:
    routes = chat_routes(None)  # type: ignore[arg-type]  # declaring routes calls no Chat
    assert len(routes) > 40
    for r in routes:
        where = f"{getattr(r, 'method', 'WS')} {r.path}"
        if isinstance(r, Route):
            assert r.request is None or named(r.request), where
            assert r.response is None or named(r.response), where
        assert not r.query or named(r.query), where


def test_the_schemas_module_is_data_only() -> None:
    tree = ast.parse(inspect.getsource(schemas))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert imported == {"__future__", "typing", "appliance.chat.models", "appliance.web.routes"}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
