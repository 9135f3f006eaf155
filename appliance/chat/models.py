"""What the chat domain hands out: rooms, messages and events, as frozen values.

These are snapshots read from the chat database; `to_json` gives the API shape, so the
handlers in `appliance.chat.api` add nothing but HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from appliance.chat.hours import WorkingHours, parse_hours

RoomKind = Literal["direct", "group", "broadcast", "secret"]
ROOM_KINDS: tuple[RoomKind, ...] = ("direct", "group", "broadcast", "secret")

MessageKind = Literal["text", "image", "video", "voice", "file", "location", "sticker", "link"]
MESSAGE_KINDS: tuple[MessageKind, ...] = (
    "text",
    "image",
    "video",
    "voice",
    "file",
    "location",
    "sticker",
    "link",
)
#: Kinds whose content is an uploaded file (a blob).
FILE_KINDS = frozenset({"image", "video", "voice", "file"})

#: A secret message's time to live when the room does not set one: a day.
DEFAULT_SECRET_TTL = 24 * 3600
MAX_SECRET_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class RoomOptions:
    """The settings of a room that the rules read; only the owner changes them."""

    #: Members of this room may not open direct chats with each other.
    no_private_chat: bool = False
    #: Every message must carry the sender's location.
    auto_location: bool = False
    working_hours: WorkingHours | None = None
    #: Broadcast rooms: who besides the owner may post.
    posters: frozenset[str] = frozenset()
    #: Secret rooms: seconds a message lives if not everyone reads it.
    secret_ttl: int = DEFAULT_SECRET_TTL
    #: Broadcast rooms: the agency and units whose people are the audience.
    audience_agency: str | None = None
    audience_units: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "no_private_chat": self.no_private_chat,
            "auto_location": self.auto_location,
            "working_hours": None if self.working_hours is None else self.working_hours.to_json(),
            "posters": sorted(self.posters),
            "secret_ttl": self.secret_ttl,
            "audience": {"agency": self.audience_agency, "units": list(self.audience_units)},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> RoomOptions:
        data = json.loads(text)
        hours = data.get("working_hours")
        audience = data.get("audience") or {}
        return cls(
            no_private_chat=bool(data.get("no_private_chat", False)),
            auto_location=bool(data.get("auto_location", False)),
            working_hours=None if hours is None else parse_hours(hours),
            posters=frozenset(data.get("posters", ())),
            secret_ttl=int(data.get("secret_ttl", DEFAULT_SECRET_TTL)),
            audience_agency=audience.get("agency"),
            audience_units=tuple(audience.get("units", ())),
        )


@dataclass(frozen=True)
class Room:
    id: str
    kind: RoomKind
    name: str | None
    owner: str
    created_by: str
    options: RoomOptions
    created_at: float
    deleted: bool = False
    members: frozenset[str] = field(default_factory=frozenset)

    def to_json(self, *, with_members: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "owner": self.owner,
            "created_by": self.created_by,
            "options": self.options.to_json(),
            "created_at": self.created_at,
            "member_count": len(self.members),
        }
        if with_members:
            body["members"] = sorted(self.members)
        return body


@dataclass(frozen=True)
class Message:
    id: str
    room_id: str
    sender: str
    kind: MessageKind
    #: Kind-specific fields: text, location, file (name, media_type, size), sticker, link.
    content: dict[str, Any]
    reply_to: str | None
    client_id: str | None
    created_at: float
    edited_at: float | None
    deleted: bool
    secret: bool
    expires_at: float | None
    hidden: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room_id": self.room_id,
            "sender": self.sender,
            "kind": self.kind,
            "content": self.content,
            "reply_to": self.reply_to,
            "client_id": self.client_id,
            "created_at": self.created_at,
            "edited_at": self.edited_at,
            "deleted": self.deleted,
            "secret": self.secret,
            "expires_at": self.expires_at,
            "hidden": self.hidden,
        }


@dataclass(frozen=True)
class Event:
    """One stored change: what streams carry and what sync replicates.

    ``cursor`` is this box's order; ``id`` is the global id (origin box : sequence).
    """

    cursor: int
    id: str
    type: str
    room_id: str | None
    subject: str | None
    payload: dict[str, Any]
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "room_id": self.room_id,
            "subject": self.subject,
            "payload": self.payload,
            "created_at": self.created_at,
        }

    @cached_property
    def stream_text(self) -> str:
        """The stream's message for this event, encoded once for all its recipients.

        (A message to a room of 50 goes to 50 streams; a scrubbed event is a new
        object, so its old text is never reused.)
        """
        message = {"type": "event", "cursor": self.cursor, "event": self.to_json()}
        return json.dumps(message, ensure_ascii=False)


@dataclass(frozen=True)
class EventPage:
    """Events visible to one user after a cursor, and how far the page looked.

    ``cursor`` is the last cursor examined, visible or not: the next page starts there,
    so a client never re-reads events it was not shown, and never misses one.
    """

    events: list[Event]
    cursor: int
    more: bool
