"""Chat in the browser: the room list, a room, a new room, search (issue 6).

Every page is rendered on the server from the same `Chat` the API uses, so it is
useful before any script runs: the room list with unread counts, the latest messages
of a room, who read one's own messages. The page's module (``static/chat-list.js``,
``chat-room.js``, ``chat-new.js``, ``chat-search.js``) then opens the event stream
(``/api/v1/stream?cursor=N``, N being the `Chat.head_cursor` read *before* the page's
data, so no change between the two is missed) and keeps the page live: new messages,
edits, deletions, receipts, typing. Sending, editing, uploads, stickers and location
go through the JSON API from the script; creating rooms, the owner's controls,
invitations, alerts and location sharing are plain form posts handled here, each
answering a refusal with the domain's own Thai or English message on the page.

Safety: message text reaches the page only through autoescaped templates and, in the
script, through ``textContent``. Links in text become anchors only for ``http(s)://``
URLs (`link_segments`), built as elements, never as markup from text.

Where things are: one module per page or job, each a handler class with its routes:
``room_list.py``, ``search.py``, ``new_room.py``, ``room.py`` (a room's page) and
``room_forms.py`` (its form posts); what they share is in ``common.py`` (names, the
caller, refusals). What the templates show is built in ``views.py``, named in
``words.py`` (kinds, presets, rules in both languages), found in text by ``text.py``
(links, search highlights) and read from forms by ``forms.py``.

What this is not: the chat rules (`appliance.chat.rules`), the API
(`appliance.chat.api`), or the shared page machinery (`appliance.web.pages`).
"""

from __future__ import annotations

from appliance.chat import Chat
from appliance.chat.pages.forms import bangkok_time, parse_addresses
from appliance.chat.pages.new_room import NewRoomPage
from appliance.chat.pages.room import RoomPage
from appliance.chat.pages.room_forms import RoomForms
from appliance.chat.pages.room_list import RoomListPage
from appliance.chat.pages.search import SearchPage
from appliance.chat.pages.text import highlight, link_segments
from appliance.chat.pages.words import PRESETS
from appliance.directory import Directory
from appliance.web.pages import PageKit
from appliance.web.routes import Route

__all__ = [
    "PRESETS",
    "bangkok_time",
    "chat_page_routes",
    "highlight",
    "link_segments",
    "parse_addresses",
]


def chat_page_routes(chat: Chat, directory: Directory, kit: PageKit) -> list[Route]:
    """Return the chat pages (room list, room, new room, search, forms)."""
    room = RoomPage(chat, directory, kit)
    return [
        *RoomListPage(chat, directory, kit).routes(),
        *SearchPage(chat, directory, kit).routes(),
        *NewRoomPage(chat, directory, kit).routes(),
        *room.routes(),
        *RoomForms(chat, directory, kit, room).routes(),
    ]
