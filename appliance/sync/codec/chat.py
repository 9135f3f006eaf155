"""A chat event as it travels between a box and the hub: its shape and its checks.

Chat sync (DESIGN.md "Sync, in one paragraph") moves *events*, never table rows: every
change a user makes is already one event with a global id ``"{origin box}:{seq}"``,
and the receiving side re-applies it (`appliance.chat.store.Chat`). This module is the
sans-I/O part: `parse_event` turns untrusted JSON into a `ReplicatedEvent` or raises
`InvalidEvent` (a 422 `Refusal`), and nothing here reads a database, a clock or the
network. Every string of a parsed event has lost its controls and bidi overrides
(`display_json`).

`Refusal` is the shape of every refusal that crosses the link: a status, a code and a
message in Thai and English, exactly what the hub's "rejected" answer carries. The
chat domain raises the same class under its own name (`appliance.chat.errors.ChatError`),
so a malformed event and a refused change are caught, and answered, alike.

Which events travel: those that change a room's shared state (`REPLICATED_TYPES`).
Personal events (alerts, "hidden from my view", sync notices) and what every box
works out for itself (a secret message expiring) stay on the box that made them.

On the wire an event is its stored form plus, for ``message.posted`` and
``message.edited``, a snapshot of the message row (``message``): a secret message's
content is never in an event payload (store.py), so the snapshot is how it reaches
the other members' boxes, over the mutually authenticated TLS link only. Pulled events
also carry ``room_order``: the event's position in its room's one order, given by the
hub.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from appliance.security.untrusted import display_json

#: The event types that change shared room state and so go through the hub.
REPLICATED_TYPES: Final = frozenset(
    {
        "room.created",
        "room.renamed",
        "room.updated",
        "room.deleted",
        "room.owner_changed",
        "member.added",
        "member.removed",
        "message.posted",
        "message.edited",
        "message.deleted",
        "receipt",
        "invitation.created",
        "invitation.answered",
    }
)

#: Event types that carry a snapshot of their message row on the wire.
SNAPSHOT_TYPES: Final = frozenset({"message.posted", "message.edited"})

#: The personal event a box writes for the author of a change the hub refused.
REJECTED_TYPE: Final = "sync.rejected"

#: Largest event accepted from the wire (payload and snapshot, as JSON). A message's
#: text is at most 10,000 characters; 256 KiB leaves room for a room of 5,000 members.
MAX_EVENT_BYTES: Final = 256 * 1024

EVENT_ID: Final = re.compile(r"[0-9A-Za-z_.-]{1,64}:[1-9][0-9]{0,18}")
_MAX_ADDRESS = 320


class Refusal(Exception):
    """A change or a message refused, with a status and a message in Thai and English.

    The status is an HTTP number because it is the most useful short name for the kind
    of refusal (403 not allowed, 404 not found, 409 conflicts, 422 malformed); nothing
    here knows more of HTTP than that.
    """

    def __init__(self, status: int, code: str, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_th = message_th


class InvalidEvent(Refusal):
    """A value that is not a well-formed replicated event or hub answer (422)."""


@dataclass(frozen=True)
class ReplicatedEvent:
    """One event of a room's shared history, as sent between a box and the hub."""

    id: str
    type: str
    room_id: str
    #: The member the event concerns who may no longer be in the room (a removal).
    subject: str | None
    payload: dict[str, Any]
    created_at: float
    #: The message row (``message.posted``/``.edited``) as the sender's box holds it now.
    message: dict[str, Any] | None = None
    #: The hub's position of the event in its room; None until the hub has ordered it.
    room_order: int | None = None

    @property
    def origin(self) -> str:
        """The box the event was made on (the id's prefix)."""
        return self.id.rpartition(":")[0]

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "room_id": self.room_id,
            "subject": self.subject,
            "payload": self.payload,
            "created_at": self.created_at,
        }
        if self.message is not None:
            body["message"] = self.message
        if self.room_order is not None:
            body["room_order"] = self.room_order
        return body

    def actor(self) -> str | None:
        """Return who made the change, as the event says (None if it does not say).

        The hub checks this person against the pushing box's agency and the room's
        rules; for an edit it is the snapshot's sender, checked against the stored
        message's sender.
        """
        p = self.payload
        found: Any = None
        if self.type == "room.created":
            room = p.get("room")
            found = room.get("created_by") if isinstance(room, dict) else None
        elif self.type == "room.owner_changed":
            found = p.get("previous")
        elif self.type in SNAPSHOT_TYPES:
            found = (self.message or {}).get("sender")
        elif self.type == "receipt":
            found = p.get("reader")
        elif self.type == "invitation.created":
            invitation = p.get("invitation")
            found = invitation.get("organiser") if isinstance(invitation, dict) else None
        elif self.type == "invitation.answered":
            found = p.get("address")
        else:  # renamed, updated, deleted, member.added/removed, message.deleted
            found = p.get("by")
        return found if isinstance(found, str) else None

    def addresses(self) -> list[str]:
        """Return the people the event names (actor, new members): who to look up."""
        named = [self.actor()]
        if self.type in ("room.created", "member.added"):
            listed = self.payload.get("addresses")
            if isinstance(listed, list):
                named += [a for a in listed if isinstance(a, str)]
        elif self.type == "member.removed":
            named.append(self.subject)
        return sorted({a for a in named if a and "@" in a})


def invalid(reason: str) -> InvalidEvent:
    """Return the refusal of an event that is not a well-formed replicated event."""
    return InvalidEvent(
        422, "invalid_event", f"not a valid chat event: {reason}", f"เหตุการณ์แชตไม่ถูกต้อง: {reason}"
    )


def parse_event(value: object, *, ordered: bool = False) -> ReplicatedEvent:
    """Check untrusted JSON and return the `ReplicatedEvent` it describes.

    With *ordered* (events pulled from the hub) ``room_order`` must be present.
    Raises `InvalidEvent` (422 ``invalid_event``) saying what is wrong.
    """
    if not isinstance(value, dict):
        raise invalid("an event is a JSON object")
    event_id = value.get("id")
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise invalid("id must be 'origin:sequence'")
    type_ = value.get("type")
    if not isinstance(type_, str) or type_ not in REPLICATED_TYPES:
        raise invalid(f"type {type_!r} is not replicated")
    room_id = value.get("room_id")
    if not isinstance(room_id, str) or not EVENT_ID.fullmatch(room_id):
        raise invalid("room_id must be a room's id")
    subject = value.get("subject")
    if subject is not None and (not isinstance(subject, str) or len(subject) > _MAX_ADDRESS):
        raise invalid("subject must be an address or null")
    payload = value.get("payload")
    if not isinstance(payload, dict):
        raise invalid("payload must be an object")
    created_at = value.get("created_at")
    if (
        isinstance(created_at, bool)
        or not isinstance(created_at, (int, float))
        or not math.isfinite(created_at)
        or created_at < 0
    ):
        raise invalid("created_at must be Unix seconds")
    message = value.get("message")
    if message is not None and not isinstance(message, dict):
        raise invalid("message must be an object or absent")
    room_order = value.get("room_order")
    if (room_order is not None or ordered) and (
        isinstance(room_order, bool) or not isinstance(room_order, int) or room_order < 1
    ):
        raise invalid("room_order must be a positive integer")
    try:
        size = len(json.dumps([payload, message], ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        raise invalid("payload is not plain JSON") from None
    if size > MAX_EVENT_BYTES:
        raise invalid(f"larger than {MAX_EVENT_BYTES} bytes")
    # Another box's text is shown here as if typed here: it loses controls and bidi
    # overrides on the way in, as local text does (`appliance.chat.messages.clean_text`).
    try:
        payload = display_json(payload)
        message = None if message is None else display_json(message)
    except RecursionError:
        raise invalid("payload is nested too deeply") from None
    return ReplicatedEvent(
        id=event_id,
        type=type_,
        room_id=room_id,
        subject=subject,
        payload=payload,
        created_at=float(created_at),
        message=message,
        room_order=room_order,
    )


@dataclass(frozen=True)
class HubAnswer:
    """The hub's answer to one pushed event: its room order, or why it was refused."""

    id: str
    #: Set when accepted: the event's position in its room's one order.
    room_order: int | None
    code: str = ""
    message_en: str = ""
    message_th: str = ""

    @property
    def accepted(self) -> bool:
        return self.room_order is not None

    @classmethod
    def refused(cls, event_id: str, error: Refusal) -> HubAnswer:
        return cls(event_id, None, error.code, error.message_en, error.message_th)

    def to_json(self) -> dict[str, Any]:
        if self.room_order is not None:
            return {"id": self.id, "status": "accepted", "room_order": self.room_order}
        return {
            "id": self.id,
            "status": "rejected",
            "code": self.code,
            "message_en": self.message_en,
            "message_th": self.message_th,
        }


def parse_answers(value: object) -> list[HubAnswer]:
    """Check the hub's answer to a push (``{"results": [...]}``) and return its parts."""
    results = value.get("results") if isinstance(value, dict) else None
    if not isinstance(results, list):
        raise invalid("a push answer has a results list")
    answers = []
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise invalid("each result names an event id")
        if item.get("status") == "accepted":
            order = item.get("room_order")
            if isinstance(order, bool) or not isinstance(order, int) or order < 1:
                raise invalid("an accepted event has a positive room_order")
            answers.append(HubAnswer(item["id"], order))
        elif item.get("status") == "rejected":
            texts = [item.get(k) for k in ("code", "message_en", "message_th")]
            if not all(isinstance(t, str) for t in texts):
                raise invalid("a rejected event has a code and messages")
            code, en, th = (str(t)[:2000] for t in texts)
            answers.append(HubAnswer(item["id"], None, code, en, th))
        else:
            raise invalid("status is accepted or rejected")
    return answers


@dataclass(frozen=True)
class PulledPage:
    """A page of events of the box's rooms, in the hub's order, and where to go on."""

    events: list[ReplicatedEvent]
    #: The hub cursor the next pull starts after.
    cursor: int
    more: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [e.to_json() for e in self.events],
            "cursor": self.cursor,
            "more": self.more,
        }


def parse_page(value: object) -> PulledPage:
    """Check the hub's answer to a pull (or a history request) and return it."""
    if not isinstance(value, dict) or not isinstance(value.get("events"), list):
        raise invalid("a pull answer has an events list")
    cursor = value.get("cursor", 0)
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise invalid("cursor must be a non-negative integer")
    more = value.get("more", False)
    if not isinstance(more, bool):
        raise invalid("more must be true or false")
    events = [parse_event(e, ordered=True) for e in value["events"]]
    return PulledPage(events, cursor, more)
