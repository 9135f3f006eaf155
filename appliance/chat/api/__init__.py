"""The chat endpoints under /api/v1, declared as data (`appliance.web.routes`).

Each endpoint is a `Route` with its JSON Schemas; the web server checks the body
against the schema, authenticates the caller and then calls the handler. Handlers only
translate: path and query strings in, `Chat` method, JSON out. Every rule lives in the
domain (`appliance.chat.store`, `appliance.chat.rules`); a `ChatError` becomes an
`ApiError` with the same status, code and Thai and English messages.

Where things are:

- ``schemas.py``: every JSON Schema (request and response bodies, query strings); data
  only, and the source of the OpenAPI document;
- ``common.py``: the caller, query numbers, error translation, the disk's 507 guard;
- one module per job, each a handler class with the table of its routes: ``rooms.py``
  (rooms and members), ``messages.py`` (messages, receipts, hiding), ``files.py``
  (uploads, downloads, the media tab), ``history.py`` (search, the event log),
  ``extras.py`` (invitations, alerts, stickers), ``settings.py`` (agency settings, the
  directory) and ``stream.py`` (the WebSocket, described there and in docs/chat.md).

A new endpoint goes into its job's ``routes()`` with its schemas in ``schemas.py``.
"""

from __future__ import annotations

from appliance.chat.api.common import StorageGuard
from appliance.chat.api.extras import ExtraHandlers
from appliance.chat.api.files import FileHandlers
from appliance.chat.api.history import HistoryHandlers
from appliance.chat.api.messages import MessageHandlers
from appliance.chat.api.rooms import RoomHandlers
from appliance.chat.api.settings import SettingsHandlers, person
from appliance.chat.api.stream import StreamHandler
from appliance.chat.store import Chat
from appliance.health.disk_guard import DiskGuard
from appliance.health.metrics import BoxMetrics
from appliance.web.routes import Route, StreamRoute

__all__ = ["chat_routes", "person"]


def chat_routes(
    chat: Chat, disk_guard: DiskGuard | None = None, metrics: BoxMetrics | None = None
) -> list[Route | StreamRoute]:
    """Return every chat endpoint, bound to *chat* (and the box's disk guard and metrics)."""
    storage = StorageGuard(disk_guard, metrics)
    return [
        *RoomHandlers(chat).routes(),
        *MessageHandlers(chat, storage, metrics).routes(),
        *FileHandlers(chat, storage).routes(),
        *HistoryHandlers(chat).routes(),
        *ExtraHandlers(chat, storage).routes(),
        *SettingsHandlers(chat).routes(),
        *StreamHandler(chat).routes(),
    ]
