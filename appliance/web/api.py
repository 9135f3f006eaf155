"""Everything the box's HTTPS port serves: the JSON API, its document, and the pages.

What this is not: any endpoint's behaviour (session_api.py, pages.py, the capabilities'
route lists) or the HTTP machinery (server.py).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from appliance.admin.pages import admin_routes
from appliance.box import Box
from appliance.chat.api import chat_routes
from appliance.chat.pages import chat_page_routes
from appliance.mail.autoconfig_pages import autoconfig_routes
from appliance.mail.webmail.compose_pages import compose_routes
from appliance.mail.webmail.pages import mail_routes
from appliance.provisioning.setup_api import provisioned_setup_routes
from appliance.sync.link_api import link_routes
from appliance.web.openapi import openapi_route
from appliance.web.pages import CommonPages, PageKit
from appliance.web.routes import Route, StreamRoute
from appliance.web.session_api import SessionApi

if TYPE_CHECKING:
    from appliance.provisioning.lifecycle import Lifecycle


def web_routes(box: Box, lifecycle: Lifecycle | None = None) -> list[Route | StreamRoute]:
    """Return every route of the HTTPS port of *box*.

    *lifecycle* is the running box's state (appliance.provisioning.lifecycle): the admin
    console's factory reset asks it to reset; without one (tests that serve the routes
    in-process) that page says the reset is not available.
    """
    session_api = SessionApi(box, box.sessions)
    kit = PageKit(box, box.sessions)
    api: list[Route | StreamRoute] = [
        *session_api.routes(),
        *chat_routes(box.chat, box.disk_guard, box.metrics, box.protection, box.traffic),
        *link_routes(box),
    ]
    api.append(openapi_route(api, title="edgebox API", version=_version()))
    pages: list[Route | StreamRoute] = [
        *CommonPages(kit, session_api).routes(),
        *mail_routes(box, kit),
        *compose_routes(box, kit),
        *chat_page_routes(box, kit),
        *autoconfig_routes(box, kit),
        *admin_routes(box, kit, lifecycle),
        *provisioned_setup_routes(),
    ]
    return [*api, *pages]


def _version() -> str:
    try:
        return version("edgebox")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"
