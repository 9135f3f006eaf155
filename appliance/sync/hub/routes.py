"""Every route of the hub's sync API, in one list for `HubSyncService`.

Each stream contributes its `SyncRoute` values here; `edgebox run --role hub` serves
exactly this list (plus the enrolment routes, which belong to the server itself).
"""

from __future__ import annotations

from appliance.chat import Chat
from appliance.directory import Directory
from appliance.mail.mailstore import Mailstore
from appliance.sync.hub.chat import chat_hub_routes
from appliance.sync.hub.directory import directory_routes
from appliance.sync.transport import JSON, Peer, SyncRoute

PING_PATH = "/sync/v1/ping"


async def _ping(peer: Peer, body: JSON) -> JSON:
    """Answer who the hub thinks is calling: a cheap end-to-end check of the link,
    the certificate and the enrolment (the link monitor and tests use it)."""
    return {"box_id": peer.box_id, "domain": peer.domain}


def hub_sync_routes(chat: Chat, directory: Directory, mailstore: Mailstore) -> list[SyncRoute]:
    """Return the sync streams' routes the hub serves, over its chat, directory and mail
    store (other capabilities' hub routes are added by appliance.registry)."""
    routes = [SyncRoute(PING_PATH, _ping, max_body=4096)]
    routes += directory_routes(directory, mailstore)
    routes += chat_hub_routes(chat, directory)
    return routes
