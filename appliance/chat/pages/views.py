"""What the chat templates show: a room list row, a message, an invitation, a member.

Plain values built from the domain's rooms and messages with the names already looked
up; the templates (templates/chat/) only lay them out.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from appliance.chat.models import Message, Room
from appliance.chat.pages.text import Segment, link_segments, map_url
from appliance.chat.pages.words import KindInfo, Words
from appliance.chat.store import MAX_UNREAD
from appliance.directory import User
from appliance.web.routes import Language

#: Names shown under one's own message before "and N more".
READERS_SHOWN: Final = 10


def path_part(value: str) -> str:
    """*value* as one segment of a URL path."""
    return urllib.parse.quote(value, safe="")


def utc_iso(moment: float) -> str:
    """A POSIX time as an RFC 3339 UTC time (a <time datetime=...>)."""
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Quote:
    """The message a reply quotes, as a short line."""

    id: str
    sender: str
    snippet: str


@dataclass
class MessageView:
    """One message as the room page renders it (static/chat-room-view.js builds the same markup)."""

    message: Message
    sender_name: str
    mine: bool
    room_id: str
    quote: Quote | None = None
    missing_quote: bool = False
    #: (address, name) of the readers shown under one's own message.
    readers: list[tuple[str, str]] = field(default_factory=list)
    more_readers: int = 0

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def content(self) -> dict[str, Any]:
        return self.message.content

    @property
    def segments(self) -> list[Segment]:
        return link_segments(str(self.content.get("text") or ""))

    @property
    def file_url(self) -> str:
        return f"/api/v1/rooms/{path_part(self.room_id)}/messages/{path_part(self.id)}/file"

    @property
    def sticker_url(self) -> str:
        return f"/api/v1/stickers/{path_part(str(self.content.get('sticker_id', '')))}/image"

    @property
    def location(self) -> dict[str, Any] | None:
        place = self.content.get("location")
        return place if isinstance(place, dict) else None

    @property
    def iso_time(self) -> str:
        return utc_iso(self.message.created_at)

    @property
    def link_url(self) -> str | None:
        """A link message's address, only if a browser would open it as a web page."""
        url = str(self.content.get("url") or "")
        return url if url.lower().startswith(("http://", "https://")) else None

    @property
    def map_url(self) -> str | None:
        place = self.location
        if place is None:
            return None
        return map_url(place)

    @property
    def editable(self) -> bool:
        return self.mine and not self.message.deleted and self.message.kind in _EDITABLE


#: Kinds whose text (a caption, a link's title) the sender may change.
_EDITABLE: Final = frozenset({"text", "link", "image", "video", "voice", "file"})


@dataclass
class InvitationView:
    """An invitation as the events panel shows it."""

    id: str
    title: str
    place: str | None
    organiser: str
    starts: datetime | None
    ends: datetime | None
    #: This user's answer ("accept", "decline", "" for none yet), or None if not invited.
    my_answer: str | None
    #: (address, name, answer or None) of every invitee.
    answers: list[tuple[str, str, str | None]]


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


@dataclass
class RoomRow:
    """One line of the room list."""

    room: Room
    title: str
    info: KindInfo
    unread: int
    preview: str
    last_at: float | None

    @property
    def href(self) -> str:
        return f"/chat/rooms/{path_part(self.room.id)}"

    @property
    def last_iso(self) -> str:
        return utc_iso(self.last_at) if self.last_at is not None else ""

    @property
    def unread_label(self) -> str:
        return f"{MAX_UNREAD}+" if self.unread >= MAX_UNREAD else str(self.unread)


@dataclass
class Member:
    """One person in a room's members panel."""

    address: str
    name: str
    owner: bool
    poster: bool


def preview(message: Message | None, me: str, names: Mapping[str, str], lang: Language) -> str:
    """The room list's line for the last message: who, and what (never a secret)."""
    if message is None:
        return ""
    who = (
        Words("ท่าน", "You")(lang)
        if message.sender == me
        else names.get(message.sender, message.sender)
    )
    content = message.content
    if message.deleted:
        what = Words("ข้อความนี้ถูกลบแล้ว", "This message was deleted")(lang)
    elif message.secret:
        what = Words("ข้อความลับ", "Secret message")(lang)
    elif message.kind == "text":
        what = " ".join(str(content.get("text", "")).split())
    elif message.kind == "link":
        what = str(content.get("title") or content.get("url") or "")
    elif message.kind == "image":
        what = Words("รูปภาพ", "Photo")(lang)
    elif message.kind == "video":
        what = Words("วิดีโอ", "Video")(lang)
    elif message.kind == "voice":
        what = Words("ข้อความเสียง", "Voice message")(lang)
    elif message.kind == "file":
        what = Words("ไฟล์ ", "File ")(lang) + str(content.get("name", ""))
    elif message.kind == "location":
        what = Words("ตำแหน่งที่ตั้ง", "Location")(lang)
    elif message.kind == "sticker":
        what = Words("สติกเกอร์", "Sticker")(lang)
    else:
        what = message.kind
    what = what if len(what) <= 80 else what[:79] + "…"
    return f"{who}: {what}"


def room_title(room: Room, me: str, names: Mapping[str, str], lang: Language) -> str:
    """A room's name, or for an unnamed room the people in it."""
    if room.name:
        return room.name
    others = sorted(room.members - {me})
    if not others:
        return Words("ห้องที่ไม่มีชื่อ", "Untitled room")(lang)
    shown = ", ".join(names.get(a, a) for a in others[:3])
    if len(others) > 3:
        shown += Words(f" และอีก {len(others) - 3} คน", f" and {len(others) - 3} more")(lang)
    return shown


def message_views(
    newest: list[Message],
    me: User,
    names: Mapping[str, str],
    quoted: Mapping[str, Quote],
    readers: Mapping[str, list[tuple[str, float]]],
) -> list[MessageView]:
    """A page of messages (newest first from the store) as the room shows them, oldest first."""
    views = []
    for message in reversed(newest):
        quote = quoted.get(message.reply_to) if message.reply_to else None
        read = [(r, names.get(r, r)) for r, _ in readers.get(message.id, [])]
        views.append(
            MessageView(
                message=message,
                sender_name=names.get(message.sender, message.sender),
                mine=message.sender == me.address,
                room_id=message.room_id,
                quote=None
                if quote is None
                else replace(quote, sender=names.get(quote.sender, quote.sender)),
                missing_quote=bool(message.reply_to) and quote is None,
                readers=read[:READERS_SHOWN],
                more_readers=max(0, len(read) - READERS_SHOWN),
            )
        )
    return views


def invitation_views(
    invitations: list[dict[str, Any]], me: User, names: Mapping[str, str]
) -> list[InvitationView]:
    """A room's invitations as the events panel shows them, with my own answer."""
    views = []
    for invitation in invitations:
        answers = {a["address"]: a["answer"] for a in invitation["invitees"]}
        views.append(
            InvitationView(
                id=invitation["id"],
                title=invitation["title"],
                place=invitation["place"],
                organiser=names.get(invitation["organiser"], invitation["organiser"]),
                starts=_moment(invitation["starts_at"]),
                ends=_moment(invitation["ends_at"]),
                my_answer=(answers[me.address] or "") if me.address in answers else None,
                answers=[(a, names.get(a, a), answer) for a, answer in answers.items()],
            )
        )
    return views
