"""Chat in the browser: the room list, a room, a new room, search (issue 6).

Every page is rendered on the server from the same `Chat` the API uses, so it is
useful before any script runs: the room list with unread counts, the latest messages
of a room, who read one's own messages. ``static/chat.js`` then opens the event stream
(``/api/v1/stream?cursor=N``, N being the `Chat.head_cursor` read *before* the page's
data, so no change between the two is missed) and keeps the page live: new messages,
edits, deletions, receipts, typing. Sending, editing, uploads, stickers and location
go through the JSON API from the script; creating rooms, the owner's controls,
invitations, alerts and location sharing are plain form posts handled here, each
answering a refusal with the domain's own Thai or English message on the page.

Safety: message text reaches the page only through autoescaped templates and, in the
script, through ``textContent``. Links in text become anchors only for ``http(s)://``
URLs (`link_segments`), built as elements, never as markup from text.

What this is not: the chat rules (`appliance.chat.rules`), the API
(`appliance.chat.api`), or the shared page machinery (`appliance.web.pages`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from appliance.chat.errors import ChatError
from appliance.chat.models import Message, Room
from appliance.chat.store import MAX_UNREAD, Chat, RoomActivity
from appliance.directory import Directory, User
from appliance.web.pages import PageKit, redirect, safe_next
from appliance.web.routes import ApiError, Form, Language, Request, Response, Route

TAG: Final = "chat-pages"

#: Messages a room page shows at once; older ones load on request.
PAGE_SIZE: Final = 50
#: Members listed on a room page (a broadcast may hold thousands).
MEMBERS_SHOWN: Final = 300
#: Names shown under one's own message before "and N more".
READERS_SHOWN: Final = 10
#: Beyond this many people, one read of the whole directory beats one query each.
_BULK_NAMES: Final = 40
#: Form posts are small: text, a few addresses.
_FORM_BODY: Final = 64 * 1024

#: Largest file the browser may upload (the API's limit, checked before sending).
MAX_UPLOAD_MB: Final = 25


@dataclass(frozen=True)
class Words:
    """One text in both languages."""

    th: str
    en: str

    def __call__(self, lang: Language) -> str:
        return self.th if lang == "th" else self.en


@dataclass(frozen=True)
class KindInfo:
    """A kind of room as a person chooses it: its name and its rule in one line.

    The page draws its icon from ``value`` (chat.css, ``[data-icon]``): drawn icons,
    because a box's kiosk browser may have no emoji font.
    """

    value: str
    name: Words
    rule: Words


#: The four kinds of room the domain knows (`appliance.chat.models.ROOM_KINDS`).
ROOM_KINDS: Final = {
    k.value: k
    for k in (
        KindInfo(
            "direct",
            Words("สนทนาส่วนตัว", "Direct chat"),
            Words(
                "คุยกันสองคน หนึ่งห้องต่อหนึ่งคู่ ในโหมดปกติท่านเริ่มสนทนากับผู้ที่มีตำแหน่งสูงกว่าไม่ได้"
                " แต่ผู้บังคับบัญชาเริ่มสนทนากับท่านได้",
                "Two people, one room per pair. In normal mode you cannot start one with"
                " someone of higher rank; they may start one with you.",
            ),
        ),
        KindInfo(
            "group",
            Words("กลุ่ม", "Group"),
            Words(
                "เจ้าของห้องเพิ่มหรือนำสมาชิกออกได้ทันที สมาชิกทุกคนส่งข้อความได้ แต่ออกจากห้องเองไม่ได้",
                "The owner adds and removes members at once; every member posts;"
                " members cannot leave on their own.",
            ),
        ),
        KindInfo(
            "broadcast",
            Words("ห้องประกาศ", "Broadcast"),
            Words(
                "ผู้รับคือบุคลากรทั้งหน่วยงานหรือหน่วยงานย่อยที่เลือก"
                " เฉพาะเจ้าของห้องและผู้ที่ได้รับมอบหมายเท่านั้นที่ส่งข้อความได้",
                "Everyone in your agency, or in the units you choose, receives it; only the"
                " owner and the posters they name can post.",
            ),
        ),
        KindInfo(
            "secret",
            Words("ห้องลับ", "Secret chat"),
            Words(
                "ข้อความจะหายไปเมื่อผู้รับอ่านแล้ว และถูกลบออกจากเครื่องเมื่อทุกคนอ่านครบ หรือเมื่อครบเวลาที่กำหนด",
                "A message disappears for each reader once read, and is deleted from the"
                " box when everyone has read it or its time runs out.",
            ),
        ),
    )
}


@dataclass(frozen=True)
class Preset:
    """A choice on the new-room page: a kind, perhaps with one rule switched on."""

    value: str
    kind: str
    option: str | None
    info: KindInfo


#: What the new-room page offers: every kind, and a group with each special rule.
PRESETS: Final = (
    *(Preset(k.value, k.value, None, k) for k in ROOM_KINDS.values()),
    Preset(
        "no_private_chat",
        "group",
        "no_private_chat",
        KindInfo(
            "no_private_chat",
            Words("กลุ่มห้ามสนทนาส่วนตัว", "Group without private chats"),
            Words(
                "สมาชิกของกลุ่มเริ่มสนทนาส่วนตัวระหว่างกันไม่ได้ ยกเว้นเจ้าของห้อง",
                "Members cannot start private chats with each other; the owner still can.",
            ),
        ),
    ),
    Preset(
        "auto_location",
        "group",
        "auto_location",
        KindInfo(
            "auto_location",
            Words("กลุ่มระบุตำแหน่ง", "Location group"),
            Words(
                "ทุกข้อความต้องแนบตำแหน่งที่ตั้งของผู้ส่ง",
                "Every message must carry the sender's location.",
            ),
        ),
    ),
    Preset(
        "working_hours",
        "group",
        "working_hours",
        KindInfo(
            "working_hours",
            Words("กลุ่มเฉพาะเวลาทำการ", "Working-hours group"),
            Words(
                "นอกวันและเวลาที่กำหนด ห้องจะถูกซ่อนจากรายการและส่งข้อความไม่ได้ (เวลาประเทศไทย)",
                "Outside the chosen days and hours the room is hidden and nobody can post"
                " (Thailand time).",
            ),
        ),
    ),
)
_PRESETS: Final = {p.value: p for p in PRESETS}

#: Public mode, as the new-room page explains it.
PUBLIC_MODE: Final = Words(
    "โหมดสาธารณะ: ทุกคนเริ่มสนทนาส่วนตัวกับใครก็ได้ โดยดูจากการตั้งค่าของหน่วยงานของผู้ที่ถูกติดต่อ",
    "Public mode: anyone may start a private chat with anyone; the setting of the"
    " contacted person's agency is the one that counts.",
)
NORMAL_MODE: Final = Words(
    "โหมดปกติ: เริ่มสนทนาส่วนตัวกับผู้ที่มีตำแหน่งสูงกว่าไม่ได้ ผู้บังคับบัญชาเริ่มสนทนากับท่านได้",
    "Normal mode: nobody starts a private chat with someone of higher rank; the senior"
    " person may start one.",
)

#: Monday = 0, as `appliance.chat.hours` counts.
DAYS: Final = (
    Words("จันทร์", "Mon"),
    Words("อังคาร", "Tue"),
    Words("พุธ", "Wed"),
    Words("พฤหัสบดี", "Thu"),
    Words("ศุกร์", "Fri"),
    Words("เสาร์", "Sat"),
    Words("อาทิตย์", "Sun"),
)

#: Secret messages' time to live, as offered (seconds).
SECRET_TTLS: Final = (
    (300, Words("5 นาที", "5 minutes")),
    (3600, Words("1 ชั่วโมง", "1 hour")),
    (24 * 3600, Words("1 วัน", "1 day")),
    (7 * 24 * 3600, Words("7 วัน", "7 days")),
)

# --- links in text ---------------------------------------------------------------------

#: A web address in chat text. Only ASCII URL characters (RFC 3986 §2): Thai typed
#: right after a link ("ดูที่https://x.go.thครับ") is not part of it.
_LINK: Final = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
#: Punctuation that ends a sentence rather than a URL.
_TRAILING: Final = ".,;:!?'"
#: A closing bracket belongs to the link only if the link opened it (Wikipedia URLs).
_OPENERS: Final = {")": "(", "]": "["}


@dataclass(frozen=True)
class Segment:
    """A piece of message text: plain, or a link whose text is its address."""

    text: str
    href: str | None = None


def link_segments(text: str) -> list[Segment]:
    """Split *text* into plain pieces and http(s) links; joined, the pieces are *text*.

    Trailing sentence punctuation and an unmatched closing bracket stay outside the
    link ("(see https://a.go.th/x)." links ``https://a.go.th/x``).
    """
    pieces: list[Segment] = []
    at = 0
    for match in _LINK.finditer(text):
        url = _trim_url(match.group(0))
        if not url.partition("://")[2]:
            continue  # "http://" and punctuation: no address
        start, end = match.start(), match.start() + len(url)
        if start > at:
            pieces.append(Segment(text[at:start]))
        pieces.append(Segment(url, url))
        at = end
    if at < len(text):
        pieces.append(Segment(text[at:]))
    return pieces


def _trim_url(url: str) -> str:
    while url:
        last = url[-1]
        unmatched = last in _OPENERS and url.count(last) > url.count(_OPENERS[last])
        if last not in _TRAILING and not unmatched:
            break
        url = url[:-1]
    return url


# --- what the templates show ---------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """The message a reply quotes, as a short line."""

    id: str
    sender: str
    snippet: str


@dataclass
class MessageView:
    """One message as the room page renders it (chat.js builds the same markup)."""

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
        return f"/api/v1/rooms/{_q(self.room_id)}/messages/{_q(self.id)}/file"

    @property
    def sticker_url(self) -> str:
        return f"/api/v1/stickers/{_q(str(self.content.get('sticker_id', '')))}/image"

    @property
    def location(self) -> dict[str, Any] | None:
        place = self.content.get("location")
        return place if isinstance(place, dict) else None

    @property
    def iso_time(self) -> str:
        return _iso(self.message.created_at)

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


def map_url(place: Mapping[str, Any]) -> str | None:
    """An OpenStreetMap address showing *place* (numbers only, so nothing to inject)."""
    lat, lon = place.get("lat"), place.get("lon")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        return None
    return (
        f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=16/{lat:.6f}/{lon:.6f}"
    )


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
        return f"/chat/rooms/{_q(self.room.id)}"

    @property
    def last_iso(self) -> str:
        return _iso(self.last_at) if self.last_at is not None else ""

    @property
    def unread_label(self) -> str:
        return f"{MAX_UNREAD}+" if self.unread >= MAX_UNREAD else str(self.unread)


@dataclass
class Member:
    address: str
    name: str
    owner: bool
    poster: bool


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _message_text(exc: ChatError | ApiError, lang: Language) -> str:
    return exc.message_th if lang == "th" else exc.message_en


def _api_error(exc: ChatError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message_en, exc.message_th)


def parse_addresses(text: str) -> list[str]:
    """Addresses typed one a line or separated by commas, spaces or semicolons."""
    return list(dict.fromkeys(a for a in re.split(r"[\s,;]+", text.strip()) if a))


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


def room_rules(room: Room, lang: Language) -> list[str]:
    """The rules of *room* in words: its kind's rule, then each option in force."""
    info = ROOM_KINDS[room.kind]
    rules = [info.rule(lang)]
    options = room.options
    if options.no_private_chat:
        rules.append(_PRESETS["no_private_chat"].info.rule(lang))
    if options.auto_location:
        rules.append(_PRESETS["auto_location"].info.rule(lang))
    if options.working_hours is not None:
        en, th = options.working_hours.describe()
        rules.append(Words(f"เปิดเฉพาะ {th} นอกเวลานี้ห้องถูกซ่อนและส่งข้อความไม่ได้",
                           f"Open only {en}; outside these hours the room is hidden"
                           " and nobody can post.")(lang))  # fmt: skip
    if room.kind == "secret":
        span = _span(options.secret_ttl)
        rules.append(
            Words(
                f"ข้อความที่ยังอ่านไม่ครบทุกคนจะถูกลบเมื่อครบ {span.th}",
                f"A message not yet read by everyone is deleted after {span.en}.",
            )(lang)
        )
    if room.kind != "direct":
        rules.append(Words(
            "เฉพาะเจ้าของห้องเท่านั้นที่เพิ่มหรือนำสมาชิกออก เปลี่ยนชื่อห้อง โอนความเป็นเจ้าของ"
            " หรือลบห้องได้ สมาชิกออกจากห้องเองไม่ได้ กรุณาขอให้เจ้าของห้องนำท่านออก",
            "Only the owner adds or removes members, renames the room, transfers ownership"
            " or deletes the room. Members cannot leave: ask the owner to remove you.",
        )(lang))  # fmt: skip
    return rules


def _span(seconds: int) -> Words:
    """A duration in words: days, hours and minutes, leaving out the zeros."""
    days, rest = divmod(seconds, 24 * 3600)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    th = [f"{n} {unit}" for n, unit in ((days, "วัน"), (hours, "ชั่วโมง"), (minutes, "นาที")) if n]
    en = [f"{n} {unit}{'s' if n > 1 else ''}"
          for n, unit in ((days, "day"), (hours, "hour"), (minutes, "minute")) if n]  # fmt: skip
    return Words(" ".join(th) or "0 นาที", " ".join(en) or "0 minutes")


# --- the pages -----------------------------------------------------------------------


class ChatPages:
    """The handlers of the chat pages, bound to one box."""

    def __init__(self, chat: Chat, directory: Directory, kit: PageKit) -> None:
        self.chat = chat
        self.directory = directory
        self.kit = kit

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
            if method == "POST":
                extra.setdefault("max_body", _FORM_BODY)
            return Route(method, path, handler, summary, tag=TAG, kind="page", **extra)

        room = "/chat/rooms/{room_id}"
        text_query = {"q": {"type": "string", "maxLength": 200}}
        return [
            page("GET", "/chat", self.room_list, "Chat: my rooms with unread counts"),
            page("GET", "/chat/search", self.search, "Search my rooms' messages", query=text_query),
            page("GET", "/chat/new", self.new_room_form, "Create a room: every kind and its rules"),
            page("POST", "/chat/new", self.create_room, "Create a room"),
            page("POST", "/chat/settings", self.set_public_mode, "Public mode (agency admin)"),
            page("POST", "/chat/location", self.share_location, "Share my location for alerts"),
            page("GET", room, self.room_page, "A room: messages, members, events, alerts"),
            page("POST", room + "/messages", self.send, "Send a text message (without script)"),
            page("POST", room + "/members", self.add_members, "Add members (owner)"),
            page("POST", room + "/members/remove", self.remove_member, "Remove a member (owner)"),
            page("POST", room + "/name", self.rename, "Rename the room (owner)"),
            page("POST", room + "/owner", self.transfer, "Transfer ownership (owner)"),
            page("POST", room + "/delete", self.delete_room, "Delete the room (owner)"),
            page("POST", room + "/invitations", self.invite, "Invite members to an event"),
            page("POST", room + "/alert", self.alert, "Alert people within a radius"),
            page(
                "POST",
                "/chat/invitations/{invitation_id}/answer",
                self.answer,
                "Accept or decline an invitation",
            ),
        ]

    # helpers

    async def _names(self, addresses: Iterable[str], lang: Language) -> dict[str, str]:
        """Display names of *addresses* (an unknown address stands for itself)."""
        wanted = set(addresses)
        found: dict[str, User] = {}
        if len(wanted) > _BULK_NAMES:
            found = {u.address: u for u in await self.directory.users() if u.address in wanted}
        else:
            for address in wanted:
                user = await self.directory.user(address)
                if user is not None:
                    found[address] = user
        return {a: found[a].display_name(lang) if a in found else a for a in wanted}

    @staticmethod
    def _me(request: Request) -> User:
        assert request.user is not None  # page routes always authenticate
        return request.user

    async def _room_or_404(self, me: User, room_id: str) -> Room:
        try:
            return await self.chat.room(me, room_id)
        except ChatError as exc:
            raise _api_error(exc) from None

    # the room list and search

    async def room_list(self, request: Request) -> Response:
        me = self._me(request)
        lang = await self.kit.language(request)
        cursor = self.chat.head_cursor
        rooms = await self.chat.rooms(me)
        activity = {a.room_id: a for a in await self.chat.activity(me, [r.id for r in rooms])}
        rows = await self._rows(me, rooms, activity, lang)
        return await self.kit.render(request, "chat/list.html", rows=rows, cursor=cursor)

    async def _rows(
        self, me: User, rooms: list[Room], activity: Mapping[str, RoomActivity], lang: Language
    ) -> list[RoomRow]:
        wanted: set[str] = set()
        for room in rooms:
            if not room.name:
                wanted.update(sorted(room.members - {me.address})[:3])
            last = activity[room.id].last if room.id in activity else None
            if last is not None:
                wanted.add(last.sender)
        names = await self._names(wanted, lang)
        rows = []
        for room in rooms:
            seen = activity.get(room.id)
            last = seen.last if seen else None
            rows.append(
                RoomRow(
                    room=room,
                    title=room_title(room, me.address, names, lang),
                    info=ROOM_KINDS[room.kind],
                    unread=seen.unread if seen else 0,
                    preview=preview(last, me.address, names, lang),
                    last_at=last.created_at if last else None,
                )
            )
        rows.sort(key=lambda r: r.last_at or r.room.created_at, reverse=True)
        return rows

    async def search(self, request: Request) -> Response:
        me = self._me(request)
        lang = await self.kit.language(request)
        q = request.query.get("q", "").strip()
        found: list[Message] = []
        if q:
            try:
                found = await self.chat.search(me, q)
            except ChatError as exc:
                raise _api_error(exc) from None
        rooms = {r.id: r for r in await self.chat.rooms(me)}
        wanted = {m.sender for m in found}
        for room in rooms.values():
            if not room.name:
                wanted.update(sorted(room.members - {me.address})[:3])
        names = await self._names(wanted, lang)
        results = []
        hidden_room = Words("ห้องนอกเวลาทำการ", "Room outside its working hours")(lang)
        for message in found:
            where = rooms.get(message.room_id)
            text = _searchable(message)
            title = room_title(where, me.address, names, lang) if where else hidden_room
            results.append(
                {
                    "message": message,
                    "room_title": title,
                    "sender_name": names.get(message.sender, message.sender),
                    "parts": highlight(text, q),
                    "href": f"/chat/rooms/{_q(message.room_id)}#m-{message.id}",
                    "iso_time": _iso(message.created_at),
                }
            )
        return await self.kit.render(request, "chat/search.html", q=q, results=results)

    # creating rooms

    async def new_room_form(self, request: Request) -> Response:
        return await self._new_form(request, values=Form(), error=None)

    async def _new_form(
        self, request: Request, *, values: Form, error: str | None, status: int = 200
    ) -> Response:
        me = self._me(request)
        units = await self.directory.units(me.agency_domain)
        public = await self.chat.public_mode(me.agency_domain)
        admin = await self.directory.is_admin(me.address, me.agency_domain)
        return await self.kit.render(
            request,
            "chat/new.html",
            status=status,
            presets=PRESETS,
            days=DAYS,
            ttls=SECRET_TTLS,
            units=units,
            public_mode=public,
            broadcast_everyone=await self.chat.broadcast_by_everyone(me.agency_domain),
            mode_text=PUBLIC_MODE if public else NORMAL_MODE,
            agency_admin=admin,
            values=values,
            error=error,
            saved=request.query.get("mode") == "saved",
        )

    async def create_room(self, request: Request) -> Response:
        me = self._me(request)
        form = request.form
        preset = _PRESETS.get(form.get("kind"))
        try:
            if preset is None:
                raise ChatError(422, "invalid_kind", "Choose the kind of room", "กรุณาเลือกประเภทห้อง")
            if preset.kind == "direct":
                other = form.get("with").strip()
                if not other:
                    raise ChatError(422, "direct_needs_one",
                                    "Enter the address of the person to chat with",
                                    "กรุณาระบุที่อยู่อีเมลของผู้ที่ต้องการสนทนาด้วย")  # fmt: skip
                room, _created = await self.chat.open_direct(me, other)
            else:
                options = _room_options(form, preset)
                posters = options.get("posters", [])
                # A broadcast's audience is its members; the members field is hidden.
                typed = [] if preset.kind == "broadcast" else parse_addresses(form.get("members"))
                room = await self.chat.create_room(
                    me,
                    preset.kind,
                    name=form.get("name").strip() or None,
                    members=[*typed, *posters],
                    options=options,
                )
        except ChatError as exc:
            lang = await self.kit.language(request)
            return await self._new_form(
                request, values=form, error=_message_text(exc, lang), status=exc.status
            )
        return redirect(f"/chat/rooms/{_q(room.id)}")

    async def set_public_mode(self, request: Request) -> Response:
        me = self._me(request)
        try:
            await self.chat.set_public_mode(
                me, me.agency_domain, request.form.get("public_mode") == "on"
            )
            await self.chat.set_broadcast_creators(
                me, me.agency_domain, request.form.get("broadcast_everyone") == "on"
            )
        except ChatError as exc:
            raise _api_error(exc) from None
        return redirect("/chat/new?mode=saved")

    # a room

    async def room_page(self, request: Request) -> Response:
        return await self._render_room(request, request.params["room_id"])

    async def _render_room(
        self,
        request: Request,
        room_id: str,
        *,
        error: str | None = None,
        status: int = 200,
        draft: str = "",
    ) -> Response:
        me = self._me(request)
        lang = await self.kit.language(request)
        cursor = self.chat.head_cursor  # before the data: see the module docstring
        room = await self._room_or_404(me, room_id)
        try:
            newest = await self.chat.messages(me, room_id, limit=PAGE_SIZE)
            quoted = await self._quotes(me, room_id, newest)
            readers = await self.chat.readers(
                me, room_id, [m.id for m in newest if m.sender == me.address]
            )
            invitations = await self.chat.room_invitations(me, room_id)
        except ChatError as exc:  # the room went between two reads
            raise _api_error(exc) from None
        sharing = await self.chat.sharing_location(me)
        admin = await self.directory.is_admin(me.address, me.agency_domain)
        shown_members = sorted(room.members, key=lambda a: (a != room.owner, a))[:MEMBERS_SHOWN]
        wanted = {*shown_members, *(m.sender for m in newest), *(q.sender for q in quoted.values())}
        wanted.update(r for found in readers.values() for r, _ in found)
        wanted.update(i["organiser"] for i in invitations)
        wanted.update(a["address"] for i in invitations for a in i["invitees"])
        names = await self._names(wanted, lang)
        views = _message_views(newest, me, names, quoted, readers)
        members = [
            Member(a, names.get(a, a), a == room.owner, a in room.options.posters)
            for a in shown_members
        ]
        events = _invitation_views(invitations, me, names)
        hours = room.options.working_hours
        closed = hours is not None and not hours.is_open(self.chat.clock())
        can_post = (
            room.kind != "broadcast"
            or me.address == room.owner
            or (me.address in room.options.posters)
        )
        return await self.kit.render(
            request,
            "chat/room.html",
            status=status,
            room=room,
            title=room_title(room, me.address, names, lang),
            info=ROOM_KINDS[room.kind],
            rules=room_rules(room, lang),
            is_owner=room.owner == me.address,
            owner_name=names.get(room.owner, room.owner),
            members=members,
            more_members=max(0, len(room.members) - len(members)),
            messages=views,
            has_more=len(newest) >= PAGE_SIZE,
            cursor=cursor,
            invitations=events,
            closed=closed,
            hours_text=hours.describe() if hours else None,
            can_post=can_post,
            sharing=sharing,
            agency_admin=admin,
            error=error,
            draft=draft,
            # Only a count: the query string is anyone's to write.
            alerted=alerted if (alerted := request.query.get("alerted", "")).isdigit() else None,
            max_upload_mb=MAX_UPLOAD_MB,
            room_url=f"/chat/rooms/{_q(room.id)}",
        )

    async def _quotes(self, me: User, room_id: str, messages: list[Message]) -> dict[str, Quote]:
        """The messages replied to on this page, as quotes (gone ones are left out)."""
        by_id = {m.id: m for m in messages}
        found: dict[str, Quote] = {}
        for message in messages:
            target_id = message.reply_to
            if not target_id or target_id in found:
                continue
            target = by_id.get(target_id)
            if target is None:
                try:
                    target = await self.chat.message(me, room_id, target_id)
                except ChatError:
                    continue
            if target.deleted:
                continue
            snippet = " ".join(_searchable(target).split())
            found[target_id] = Quote(target.id, target.sender, snippet[:120])
        return found

    async def _room_action(
        self, request: Request, action: Callable[[User, str], Awaitable[str | None]]
    ) -> Response:
        """Run an owner's or member's form action; show a refusal on the room page."""
        me = self._me(request)
        room_id = request.params["room_id"]
        try:
            target = await action(me, room_id)
        except ChatError as exc:
            if exc.status == 404 and exc.code == "not_found":
                raise _api_error(exc) from None
            lang = await self.kit.language(request)
            return await self._render_room(
                request, room_id, error=_message_text(exc, lang), status=exc.status,
                draft=request.form.get("text"),
            )  # fmt: skip
        return redirect(target or f"/chat/rooms/{_q(room_id)}")

    async def send(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            body: dict[str, Any] = {"kind": "text", "text": form.get("text")}
            if form.get("reply_to"):
                body["reply_to"] = form.get("reply_to")
            if form.get("client_id"):
                body["client_id"] = form.get("client_id")
            location = _location(form)
            if location is not None:
                body["location"] = location
            message, _ = await self.chat.post(me, room_id, body)
            return f"/chat/rooms/{_q(room_id)}#m-{message.id}"

        return await self._room_action(request, action)

    async def add_members(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            addresses = parse_addresses(request.form.get("addresses"))
            if not addresses:
                raise ChatError(422, "no_addresses", "Enter at least one address",
                                "กรุณาระบุที่อยู่อีเมลอย่างน้อยหนึ่งรายการ")  # fmt: skip
            await self.chat.add_members(me, room_id, addresses)
            return f"/chat/rooms/{_q(room_id)}#members"

        return await self._room_action(request, action)

    async def remove_member(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            await self.chat.remove_member(me, room_id, request.form.get("address"))
            return f"/chat/rooms/{_q(room_id)}#members"

        return await self._room_action(request, action)

    async def rename(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            name = request.form.get("name").strip() or None
            await self.chat.update_room(me, room_id, name=name, rename=True)
            return None

        return await self._room_action(request, action)

    async def transfer(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            await self.chat.transfer_ownership(me, room_id, request.form.get("owner"))
            return None

        return await self._room_action(request, action)

    async def delete_room(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str:
            if request.form.get("confirm") != "yes":
                raise ChatError(422, "confirm", "Tick the box to confirm the deletion",
                                "กรุณาทำเครื่องหมายยืนยันการลบห้อง")  # fmt: skip
            await self.chat.delete_room(me, room_id)
            return "/chat"

        return await self._room_action(request, action)

    async def invite(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            chosen = list(form.getlist("invitees"))
            await self.chat.invite(
                me,
                room_id,
                title=form.get("title"),
                starts_at=bangkok_time(form.get("starts_at"), "starts_at"),
                ends_at=bangkok_time(form.get("ends_at"), "ends_at")
                if form.get("ends_at")
                else None,
                place=form.get("place").strip() or None,
                invitees=chosen or None,
            )
            return f"/chat/rooms/{_q(room_id)}#events"

        return await self._room_action(request, action)

    async def answer(self, request: Request) -> Response:
        me = self._me(request)
        try:
            invitation = await self.chat.answer(
                me, request.params["invitation_id"], request.form.get("answer")
            )
        except ChatError as exc:
            raise _api_error(exc) from None
        return redirect(f"/chat/rooms/{_q(invitation['room_id'])}#events")

    async def alert(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            location = _location(form)
            if location is None:
                raise ChatError(422, "location_required", "Give the centre of the alert",
                                "กรุณาระบุตำแหน่งศูนย์กลางของการแจ้งเตือน")  # fmt: skip
            radius_km = _number(form.get("radius_km"), "radius_km", 0.001, 1000.0)
            whole_agency = form.get("scope") == "agency"
            sent = await self.chat.send_alert(
                me,
                location=location,
                radius_m=radius_km * 1000,
                text=form.get("text"),
                room_id=None if whole_agency else room_id,
            )
            return f"/chat/rooms/{_q(room_id)}?alerted={sent}#alerts"

        return await self._room_action(request, action)

    async def share_location(self, request: Request) -> Response:
        me = self._me(request)
        form = request.form
        share = form.get("share") == "on"
        try:
            location = _location(form) if share else None
            if share and location is None:
                raise ChatError(422, "location_required", "Give your location to share it",
                                "กรุณาระบุตำแหน่งที่ต้องการแบ่งปัน")  # fmt: skip
            await self.chat.set_location(me, share, location)
        except ChatError as exc:
            raise _api_error(exc) from None
        return redirect(safe_next(form.get("next")) + "#alerts")


def _message_views(
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


def _invitation_views(
    invitations: list[dict[str, Any]], me: User, names: Mapping[str, str]
) -> list[InvitationView]:
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


def chat_page_routes(chat: Chat, directory: Directory, kit: PageKit) -> list[Route]:
    """Return the chat pages (room list, room, new room, search, forms)."""
    return ChatPages(chat, directory, kit).routes()


# --- form fields -----------------------------------------------------------------------


def _number(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise ChatError(422, f"invalid_{name}", f"{name} must be a number from {low:g} to {high:g}",
                        f"{name} ต้องเป็นตัวเลขระหว่าง {low:g} ถึง {high:g}")  # fmt: skip
    return value


def _location(form: Form) -> dict[str, Any] | None:
    """The ``lat``/``lon`` fields of a form as a location, or None if both are empty."""
    lat, lon = form.get("lat").strip(), form.get("lon").strip()
    if not lat and not lon:
        return None
    place: dict[str, Any] = {
        "lat": _number(lat, "lat", -90.0, 90.0),
        "lon": _number(lon, "lon", -180.0, 180.0),
    }
    if form.get("label").strip():
        place["label"] = form.get("label").strip()
    return place


_LOCAL_TIME: Final = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2})(:[0-9]{2})?")


def bangkok_time(value: str, name: str) -> str:
    """A ``datetime-local`` field (no zone) as an RFC 3339 time in Thailand (UTC+7)."""
    match = _LOCAL_TIME.fullmatch(value.strip())
    if match is None:
        raise ChatError(422, f"invalid_{name}", "Give the date and time", "กรุณาระบุวันและเวลา")
    try:
        datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}")
    except ValueError:
        raise ChatError(422, f"invalid_{name}", "No such date or time",
                        "วันหรือเวลาไม่ถูกต้อง") from None  # fmt: skip
    return f"{match.group(1)}T{match.group(2)}{match.group(3) or ':00'}+07:00"


def _room_options(form: Form, preset: Preset) -> dict[str, Any]:
    """The room options a new-room form asks for (the domain checks them again)."""
    options: dict[str, Any] = {}
    if preset.option == "no_private_chat" or form.get("no_private_chat") == "on":
        options["no_private_chat"] = True
    if preset.option == "auto_location" or form.get("auto_location") == "on":
        options["auto_location"] = True
    if preset.option == "working_hours" or form.get("working_hours") == "on":
        days = []
        for day in form.getlist("days"):
            if not day.isdigit() or not 0 <= int(day) <= 6:
                raise ChatError(422, "invalid_working_hours", "Choose days from the list",
                                "กรุณาเลือกวันจากรายการ")  # fmt: skip
            days.append(int(day))
        if not days:
            raise ChatError(422, "invalid_working_hours", "Choose at least one working day",
                            "กรุณาเลือกวันทำการอย่างน้อยหนึ่งวัน")  # fmt: skip
        options["working_hours"] = {
            "days": sorted(set(days)),
            "start": form.get("start").strip(),
            "end": form.get("end").strip(),
        }
    if preset.kind == "broadcast":
        options["posters"] = parse_addresses(form.get("posters"))
        if form.get("audience") == "units":
            units = list(form.getlist("units"))
            if not units:
                raise ChatError(422, "unknown_unit", "Choose at least one unit",
                                "กรุณาเลือกหน่วยงานย่อยอย่างน้อยหนึ่งหน่วย")  # fmt: skip
            options["audience"] = {"units": units}
    if preset.kind == "secret":
        ttl = form.get("secret_ttl", "")
        if ttl:
            if not ttl.isdigit():
                raise ChatError(422, "invalid_options", "Choose how long messages live",
                                "กรุณาเลือกอายุของข้อความ")  # fmt: skip
            options["secret_ttl"] = int(ttl)
    return options


# --- search results ----------------------------------------------------------------------


def _searchable(message: Message) -> str:
    content = message.content
    parts = [content.get("text"), content.get("title"), content.get("url"), content.get("name"),
             (content.get("location") or {}).get("label")]  # fmt: skip
    return " ".join(str(p) for p in parts if isinstance(p, str) and p)


#: Characters of context a search result shows before and after the match.
_BEFORE: Final = 60
_AFTER: Final = 140


def highlight(text: str, q: str) -> list[tuple[str, bool]]:
    """Split *text* around the first match of *q* (case-insensitive): (piece, is_match).

    Long text is cut to a window around the match, marked with "…". The match is
    found on case-folded text; where folding changes the length (ß → ss) positions
    would not line up, so the text is shown unmarked.
    """
    folded, needle = text.casefold(), q.casefold()
    at = folded.find(needle) if needle else -1
    if at < 0 or len(folded) != len(text):
        short = text if len(text) <= _BEFORE + _AFTER else text[: _BEFORE + _AFTER] + "…"
        return [(short, False)] if short else []
    end = at + len(needle)
    before = text[:at] if at <= _BEFORE else "…" + text[at - _BEFORE : at]
    after = text[end:] if len(text) - end <= _AFTER else text[end : end + _AFTER] + "…"
    pieces = [(before, False), (text[at:end], True), (after, False)]
    return [p for p in pieces if p[0]]
