"""The box's whole JSON API: every capability's routes, and the document describing them.

What this is not: any endpoint's behaviour (session_api.py, appliance/chat/api.py) or
the HTTP machinery (server.py).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from appliance.box import Box
from appliance.chat.api import chat_routes
from appliance.web.openapi import openapi_route
from appliance.web.routes import Route, StreamRoute
from appliance.web.session_api import session_routes


def api_routes(box: Box) -> list[Route | StreamRoute]:
    """Return every /api/v1 endpoint of *box*, the OpenAPI document included."""
    routes: list[Route | StreamRoute] = [
        *session_routes(box, box.sessions),
        *chat_routes(box.chat),
    ]
    return [*routes, openapi_route(routes, title="edgebox API", version=_version())]


def _version() -> str:
    try:
        return version("edgebox")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"
