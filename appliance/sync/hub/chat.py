"""The hub's chat routes: boxes push their new events and pull the events of their rooms.

The hub is the authority for chat (DESIGN.md "Sync"; issue 5, "Chat"):

- ``POST /sync/v1/chat/push`` ``{"events": [...]}``: up to `MAX_PUSH` events of the
  calling box, in the order it made them. Each is answered in order, in
  ``{"results": [...]}``: ``accepted`` with its ``room_order`` (its position in the
  room's one order; an event the hub already holds is answered the same way again,
  with no second effect), or ``rejected`` with a ``code`` and a reason in Thai and
  English. The hub checks each event against its own state with the room rules a
  local request meets (`appliance.chat.rules`) and acts only on events whose actor is
  a user of the calling box's agency. Answers are sent after the batch is committed.
- ``POST /sync/v1/chat/pull`` ``{"after": cursor, "limit": n}``: the events, in the
  hub's order, of the rooms that have a member of the calling box's agency, and those
  concerning one of its people (their removal), except the calling box's own events
  (it has them, ordered by the push answers); ``{"events", "cursor", "more"}``.
- ``POST /sync/v1/chat/history`` ``{"room_id", "before_order", "after_order", "limit"}``:
  a room's earlier events, for a box whose agency has just joined a room it never held.
- ``POST /sync/v1/chat/file/put`` ``{"message_id", "content"}`` (base64): the poster's
  box hands over a file message's content once the hub has ordered the message; only
  a box of the poster's agency may, and the size must be the one the event announced.
  ``{}`` once it is kept (sending it again changes nothing).
- ``POST /sync/v1/chat/file/get`` ``{"message_id"}``: ``{"content"}`` for a box whose
  agency has a member in the message's room; 404 while the hub does not have it yet.

Wire format (docs/chat-sync.md "Wire format and compression"): a push answer says
``"wire": 2``, which tells the box it may leave out a ``message.posted`` snapshot that
repeats the event's own ``payload.message`` (the hub puts it back here, before any
check); a box that says ``"wire": 2`` in its pull or history request gets its events
in that form too. Without it (an older box) every event carries its snapshot, as in
format 1.

Everything here is glue: the checks and the storage are `appliance.chat.Chat`'s
(`accept_pushed`, `hub_pull`, `room_history`); shapes are `appliance.chat.replication`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any, Final

from appliance.chat import Chat
from appliance.chat.errors import ChatError
from appliance.chat.replication import EVENT_ID, ReplicatedEvent, parse_event
from appliance.chat.store import MAX_UPLOAD, Authority
from appliance.directory import Directory, User
from appliance.sync.hub.errors import HubError, bad_request
from appliance.sync.transport import JSON, Peer, SyncRoute

PUSH_PATH = "/sync/v1/chat/push"
PULL_PATH = "/sync/v1/chat/pull"
HISTORY_PATH = "/sync/v1/chat/history"
FILE_PUT_PATH = "/sync/v1/chat/file/put"
FILE_GET_PATH = "/sync/v1/chat/file/get"

#: Events in one push: a week of a busy office is many batches, never one huge body.
MAX_PUSH = 500
#: Events in one pull or history answer.
MAX_PULL = 500
#: The chat wire format this hub reads and writes (1: every snapshot sent; 2: a
#: snapshot that repeats the event is left out).
WIRE_FORMAT: Final = 2


def _count(body: dict[str, Any], key: str, default: int, *, low: int = 0) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_request(f"{key} must be an integer of at least {low}")
    return value


def _body(body: JSON) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


class ChatHub:
    """The chat routes of one hub box, over its chat and its directory."""

    def __init__(self, chat: Chat, directory: Directory) -> None:
        self.chat = chat
        self.directory = directory

    def routes(self) -> list[SyncRoute]:
        return [
            SyncRoute(PUSH_PATH, self.push),
            SyncRoute(PULL_PATH, self.pull, max_body=4096),
            SyncRoute(HISTORY_PATH, self.history, max_body=4096),
            # The largest upload in base64 (4/3) with room for the JSON around it.
            SyncRoute(FILE_PUT_PATH, self.put_file, max_body=MAX_UPLOAD * 4 // 3 + 4096),
            SyncRoute(FILE_GET_PATH, self.get_file, max_body=4096),
        ]

    async def push(self, peer: Peer, body: JSON) -> JSON:
        """Check, apply and order a batch of the box's events; answer each."""
        events = _body(body).get("events")
        if not isinstance(events, list):
            raise bad_request("events must be a list")
        if len(events) > MAX_PUSH:
            raise HubError(413, "batch_too_large", f"at most {MAX_PUSH} events per push")
        items: list[ReplicatedEvent | tuple[str, ChatError]] = []
        for raw in events:
            try:
                items.append(_with_snapshot(parse_event(raw)))
            except ChatError as exc:
                event_id = raw.get("id") if isinstance(raw, dict) else None
                if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
                    # Without an id the box could not tell which event was refused.
                    raise bad_request(f"an event without a valid id: {exc.message_en}") from None
                items.append((event_id, exc))
        # The box's word on its agency's chat settings (public mode, who creates
        # broadcasts), which the room rules below need; see `record_agency_settings`.
        await self.chat.record_agency_settings(peer.domain, _body(body).get("agency"))
        named = {a for item in items if not isinstance(item, tuple) for a in item.addresses()}
        # The rank rule of group rooms weighs everyone who stays in a room a membership
        # change touches, not only the people the event names.
        changed = {
            item.room_id
            for item in items
            if not isinstance(item, tuple) and item.type in ("member.added", "member.removed")
        }
        if changed:
            named |= await self.chat.members_of(changed)
        names = sorted(named)
        users: dict[str, User | None] = {}
        for address in names:
            users[address] = await self.directory.user(address)
        authority = Authority(peer.domain, users)
        answers = await self.chat.accept_pushed(peer.box_id, authority, items)
        return {"results": [a.to_json() for a in answers], "wire": WIRE_FORMAT}

    async def pull(self, peer: Peer, body: JSON) -> JSON:
        """Return the ordered events of the box's rooms after its cursor."""
        request = _body(body)
        after = _count(request, "after", 0)
        limit = min(_count(request, "limit", MAX_PULL, low=1), MAX_PULL)
        compact = _compact(request)
        events, cursor, more = await self.chat.hub_pull(peer.domain, after, limit, compact=compact)
        # The caller's own events are not sent back: it holds them, and their room
        # order came in the push answer. After a week's cut that halves what crosses
        # the line. The cursor still moves past them.
        mine = f"{peer.box_id}:"
        theirs = [e for e in events if not e.id.startswith(mine)]
        return {"events": [e.to_json() for e in theirs], "cursor": cursor, "more": more}

    async def history(self, peer: Peer, body: JSON) -> JSON:
        """Return a room's ordered events between two positions (rooms of the box only)."""
        request = _body(body)
        room_id = request.get("room_id")
        if not isinstance(room_id, str) or not EVENT_ID.fullmatch(room_id):
            raise bad_request("room_id must be a room's id")
        before = _count(request, "before_order", 2**62, low=1)
        after = _count(request, "after_order", 0)
        limit = min(_count(request, "limit", MAX_PULL, low=1), MAX_PULL)
        try:
            events, more = await self.chat.room_history(
                peer.domain, room_id, before, after, limit, compact=_compact(request)
            )
        except ChatError as exc:
            raise HubError(exc.status, exc.code, exc.message_en) from None
        return {"events": [e.to_json() for e in events], "more": more}

    async def put_file(self, peer: Peer, body: JSON) -> JSON:
        """Keep the content of a file message posted on the calling box."""
        request = _body(body)
        message_id = _message_id(request)
        content = request.get("content")
        if not isinstance(content, str):
            raise bad_request("content must be the file in base64")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("content is not base64") from None
        try:
            await self.chat.attach_shared_file(message_id, data, poster_domain=peer.domain)
        except ChatError as exc:
            raise HubError(exc.status, exc.code, exc.message_en) from None
        return {}

    async def get_file(self, peer: Peer, body: JSON) -> JSON:
        """Return a file message's content to a box whose agency is in its room."""
        message_id = _message_id(_body(body))
        try:
            data = await self.chat.shared_file(peer.domain, message_id)
        except ChatError as exc:
            raise HubError(exc.status, exc.code, exc.message_en) from None
        return {"content": base64.b64encode(data).decode("ascii")}


def _message_id(request: dict[str, Any]) -> str:
    message_id = request.get("message_id")
    if not isinstance(message_id, str) or not EVENT_ID.fullmatch(message_id):
        raise bad_request("message_id must be a message's id")
    return message_id


def _compact(request: dict[str, Any]) -> bool:
    """Does the box read wire format 2 (it says so in its request)?"""
    wire = request.get("wire", 1)
    return isinstance(wire, int) and not isinstance(wire, bool) and wire >= 2


def _with_snapshot(event: ReplicatedEvent) -> ReplicatedEvent:
    """Put back the snapshot a wire-2 box left out of a ``message.posted``.

    It left it out because it was the payload's ``message``; the checks (who posted)
    and the apply read the snapshot, exactly as for a format-1 event.
    """
    shown = event.payload.get("message")
    if event.type == "message.posted" and event.message is None and isinstance(shown, dict):
        return replace(event, message=shown)
    return event


def chat_hub_routes(chat: Chat, directory: Directory) -> list[SyncRoute]:
    """Return the chat routes the hub serves (for `hub_sync_routes`)."""
    return ChatHub(chat, directory).routes()
