"""The chat endpoints under /api/v1, declared as data (`appliance.web.routes`).

Each endpoint is a `Route` with its JSON Schemas; the web server checks the body
against the schema, authenticates the caller and then calls the handler here. Handlers
only translate: path and query strings in, `Chat` method, JSON out. Every rule lives in
the domain (`appliance.chat.store`, `appliance.chat.rules`); a `ChatError` becomes an
`ApiError` with the same status, code and Thai and English messages.

The stream (``GET /api/v1/stream?cursor=N``, a WebSocket) is described in the
`stream` handler below and in docs/chat.md.
"""

from __future__ import annotations

import functools
import mimetypes
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from appliance.chat.errors import ChatError
from appliance.chat.models import ROOM_KINDS, Message
from appliance.chat.store import MAX_UPLOAD, Chat
from appliance.directory import DirectoryError, User
from appliance.health.disk_guard import DiskGuard
from appliance.health.metrics import BoxMetrics
from appliance.web.routes import (
    JSON,
    ApiError,
    Request,
    Response,
    Route,
    Schema,
    StreamRoute,
    WebSocket,
    WebSocketClosed,
)
from appliance.web.user_content import sniffed

TAG = "chat"

#: Events sent per WebSocket message batch while catching up.
STREAM_BATCH = 200

_ADDRESS: Schema = {"type": "string", "minLength": 3, "maxLength": 254}
_ID: Schema = {"type": "string", "minLength": 1, "maxLength": 200}
_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 10_000}
_LOCATION: Schema = {
    "type": "object",
    "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "label": {"type": ["string", "null"], "maxLength": 256},
    },
    "required": ["lat", "lon"],
    "additionalProperties": False,
}
_HOURS: Schema = {
    "type": ["object", "null"],
    "properties": {
        "days": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 6},
            "minItems": 1,
            "maxItems": 7,
        },
        "start": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
        "end": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
    },
    "required": ["days", "start", "end"],
    "additionalProperties": False,
}
_OPTIONS: Schema = {
    "type": "object",
    "properties": {
        "no_private_chat": {"type": "boolean"},
        "auto_location": {"type": "boolean"},
        "working_hours": _HOURS,
        "posters": {"type": "array", "items": _ADDRESS, "maxItems": 100},
        "secret_ttl": {"type": "integer", "minimum": 60, "maximum": 7 * 24 * 3600},
        "audience": {
            "type": "object",
            "properties": {
                "agency": {"type": ["string", "null"], "maxLength": 255},
                "units": {"type": "array", "items": {"type": "string", "maxLength": 256}},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_ROOM: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": list(ROOM_KINDS)},
        "name": {"type": ["string", "null"]},
        "owner": {"type": "string"},
        "created_by": {"type": "string"},
        "options": {"type": "object"},
        "created_at": {"type": "number"},
        "member_count": {"type": "integer"},
        "members": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["id", "kind", "owner", "options", "created_at"],
}
_MESSAGE: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "room_id": {"type": "string"},
        "sender": {"type": "string"},
        "kind": {"type": "string"},
        "content": {"type": "object"},
        "reply_to": {"type": ["string", "null"]},
        "client_id": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "edited_at": {"type": ["number", "null"]},
        "deleted": {"type": "boolean"},
        "secret": {"type": "boolean"},
        "expires_at": {"type": ["number", "null"]},
        "hidden": {"type": "boolean"},
    },
    "required": ["id", "room_id", "sender", "kind", "content", "created_at"],
}
_MESSAGES: Schema = {"type": "array", "items": _MESSAGE}
_SETTINGS: Schema = {
    "type": "object",
    "properties": {
        "agency": {"type": "string"},
        "public_mode": {"type": "boolean"},
        # Issue 16: who may create broadcast rooms (admins only unless opened to all).
        "broadcast_creators": {"enum": ["admins", "everyone"]},
    },
}
_COMMON_MESSAGE = {
    "location": _LOCATION,
    "reply_to": _ID,
    "client_id": {"type": "string", "minLength": 1, "maxLength": 128},
}
_DRAFT: Schema = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"kind": {"const": "text"}, "text": _TEXT, **_COMMON_MESSAGE},
            "required": ["kind", "text"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"const": "link"},
                "url": {
                    "type": "string",
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "maxLength": 2048,
                },
                "title": {"type": ["string", "null"], "maxLength": 256},
                **_COMMON_MESSAGE,
            },
            "required": ["kind", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"kind": {"const": "location"}, **_COMMON_MESSAGE},
            "required": ["kind", "location"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"kind": {"const": "sticker"}, "sticker_id": _ID, **_COMMON_MESSAGE},
            "required": ["kind", "sticker_id"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"enum": ["image", "video", "voice", "file"]},
                "upload_id": _ID,
                "text": {"type": ["string", "null"], "maxLength": 10_000},
                **_COMMON_MESSAGE,
            },
            "required": ["kind", "upload_id"],
            "additionalProperties": False,
        },
    ]
}
_PERSON: Schema = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "agency": {"type": "string"},
        "name_th": {"type": "string"},
        "name_en": {"type": ["string", "null"]},
        "position": {"type": ["string", "null"]},
        "unit": {"type": ["string", "null"]},
        "rank": {"type": "integer"},
        "phone": {"type": ["string", "null"]},
        "email": {"type": "string"},
    },
    "required": ["address", "agency", "name_th", "rank"],
}
_INVITATION: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "room_id": {"type": "string"},
        "organiser": {"type": "string"},
        "title": {"type": "string"},
        "starts_at": {"type": "string"},
        "ends_at": {"type": ["string", "null"]},
        "place": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "invitees": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "address": {"type": "string"},
                    "answer": {"type": ["string", "null"]},
                    "answered_at": {"type": ["number", "null"]},
                },
            },
        },
    },
    "required": ["id", "room_id", "organiser", "title", "starts_at", "invitees"],
}
_PACK: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "agency": {"type": "string"},
        "name": {"type": "string"},
        "stickers": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["id", "agency", "name", "stickers"],
}
_EVENT: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "room_id": {"type": ["string", "null"]},
        "subject": {"type": ["string", "null"]},
        "payload": {"type": "object"},
        "created_at": {"type": "number"},
    },
    "required": ["id", "type", "payload", "created_at"],
}
_CURSOR_QUERY: Schema = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_LIMIT_QUERY: Schema = {"type": "string", "pattern": "^[0-9]{1,4}$"}


def person(user: User) -> dict[str, Any]:
    """Return the chat profile of a directory user (what colleagues may see)."""
    return {
        "address": user.address,
        "agency": user.agency_domain,
        "name_th": user.name_th,
        "name_en": user.name_en,
        "position": user.position,
        "unit": user.unit,
        "rank": user.rank,
        "phone": user.phone,
        "email": user.address,
    }


def _api_error(exc: ChatError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message_en, exc.message_th)


def _translating(
    handler: Callable[[Request], Awaitable[Response | JSON]],
) -> Callable[[Request], Awaitable[Response | JSON]]:
    """Turn the domain's `ChatError` into the web layer's `ApiError`."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response | JSON:
        try:
            return await handler(request)
        except ChatError as exc:
            raise _api_error(exc) from None

    return wrapper


def _me(request: Request) -> User:
    if request.user is None:  # the server authenticates every chat route; belt and braces
        raise ApiError(401, "unauthenticated", "Sign in first", "กรุณาเข้าสู่ระบบก่อน")
    return request.user


def _int_query(request: Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise ApiError(
            422, f"invalid_{name}", f"{name} must be a whole number", f"{name} ต้องเป็นจำนวนเต็ม"
        )
    return int(raw)


def _messages(items: list[Message]) -> list[dict[str, Any]]:
    return [m.to_json() for m in items]


class ChatApi:
    """The handlers, bound to one `Chat`."""

    def __init__(
        self,
        chat: Chat,
        disk_guard: DiskGuard | None = None,
        metrics: BoxMetrics | None = None,
    ) -> None:
        self.chat = chat
        self.disk_guard = disk_guard
        self.metrics = metrics

    def _ensure_room(self, size: int, what: str) -> None:
        """Refuse with 507 while the data volume is at its reserve (appliance.health)."""
        if self.disk_guard is None or self.disk_guard.room_for(size):
            return
        if self.metrics is not None:
            self.metrics.storage_refusals.labels(f"chat-{what}").inc()
        # RFC 4918 §11.5: 507 Insufficient Storage; nothing was stored, try again later.
        raise ApiError(
            507,
            "insufficient_storage",
            "The server's disk is full; nothing was saved. Try again later.",
            "พื้นที่เก็บข้อมูลของเครื่องแม่ข่ายเต็ม ระบบยังไม่ได้บันทึกข้อความนี้ กรุณาลองใหม่ภายหลัง",
        )

    # rooms

    async def list_rooms(self, request: Request) -> JSON:
        return [r.to_json(with_members=False) for r in await self.chat.rooms(_me(request))]

    async def create_room(self, request: Request) -> JSON:
        body = request.json
        room = await self.chat.create_room(
            _me(request),
            body["kind"],
            name=body.get("name"),
            members=body.get("members", []),
            options=body.get("options"),
        )
        return Response(room.to_json(), status=201)

    async def unread(self, request: Request) -> JSON:
        me = _me(request)
        # The cursor first: a client that opens the stream from it misses no later change.
        cursor = self.chat.head_cursor
        rooms = await self.chat.rooms(me)
        activity = await self.chat.activity(me, [r.id for r in rooms])
        return {"cursor": cursor, "rooms": [a.to_json() for a in activity]}

    async def open_direct(self, request: Request) -> JSON:
        room, created = await self.chat.open_direct(_me(request), request.json["with"])
        return Response(room.to_json(), status=201 if created else 200)

    async def get_room(self, request: Request) -> JSON:
        return (await self.chat.room(_me(request), request.params["room_id"])).to_json()

    async def update_room(self, request: Request) -> JSON:
        body = request.json
        room = await self.chat.update_room(
            _me(request),
            request.params["room_id"],
            name=body.get("name"),
            rename="name" in body,
            options=body.get("options"),
        )
        return room.to_json()

    async def delete_room(self, request: Request) -> JSON:
        await self.chat.delete_room(_me(request), request.params["room_id"])
        return Response(None, status=204)

    async def transfer(self, request: Request) -> JSON:
        room = await self.chat.transfer_ownership(
            _me(request), request.params["room_id"], request.json["owner"]
        )
        return room.to_json()

    async def members(self, request: Request) -> JSON:
        room = await self.chat.room(_me(request), request.params["room_id"])
        return {"owner": room.owner, "members": sorted(room.members)}

    async def add_members(self, request: Request) -> JSON:
        room = await self.chat.add_members(
            _me(request), request.params["room_id"], request.json["addresses"]
        )
        return {"owner": room.owner, "members": sorted(room.members)}

    async def remove_member(self, request: Request) -> JSON:
        room = await self.chat.remove_member(
            _me(request), request.params["room_id"], request.params["address"]
        )
        return {"owner": room.owner, "members": sorted(room.members)}

    async def leave(self, request: Request) -> JSON:
        await self.chat.leave(_me(request), request.params["room_id"])

    # messages

    async def list_messages(self, request: Request) -> JSON:
        items = await self.chat.messages(
            _me(request),
            request.params["room_id"],
            before=request.query.get("before") or None,
            limit=_int_query(request, "limit", 50),
        )
        return _messages(items)

    async def post_message(self, request: Request) -> JSON:
        self._ensure_room(len(request.body or b""), "post")
        message, created = await self.chat.post(
            _me(request), request.params["room_id"], request.json
        )
        if self.metrics is not None:
            self.metrics.chat_posts.labels("created" if created else "repeated").inc()
        # 200 for a retried client_id: the client learns its first attempt landed.
        return Response(message.to_json(), status=201 if created else 200)

    async def get_message(self, request: Request) -> JSON:
        message = await self.chat.message(
            _me(request), request.params["room_id"], request.params["message_id"]
        )
        return message.to_json()

    async def edit_message(self, request: Request) -> JSON:
        message = await self.chat.edit(
            _me(request),
            request.params["room_id"],
            request.params["message_id"],
            request.json["text"],
        )
        return message.to_json()

    async def delete_message(self, request: Request) -> JSON:
        await self.chat.delete_message(
            _me(request), request.params["room_id"], request.params["message_id"]
        )
        return Response(None, status=204)

    async def read_message(self, request: Request) -> JSON:
        new = await self.chat.mark_read(
            _me(request), request.params["room_id"], [request.params["message_id"]]
        )
        return {"read": new}

    async def read_up_to(self, request: Request) -> JSON:
        new = await self.chat.mark_read(
            _me(request), request.params["room_id"], up_to=request.json["up_to"]
        )
        return {"read": new}

    async def receipts(self, request: Request) -> JSON:
        return await self.chat.receipts(
            _me(request), request.params["room_id"], request.params["message_id"]
        )

    async def hide(self, request: Request) -> JSON:
        await self.chat.hide(
            _me(request), request.params["room_id"], request.params["message_id"], True
        )
        return Response(None, status=204)

    async def unhide(self, request: Request) -> JSON:
        await self.chat.hide(
            _me(request), request.params["room_id"], request.params["message_id"], False
        )
        return Response(None, status=204)

    async def download(self, request: Request) -> JSON:
        data, media_type, name = await self.chat.file(
            _me(request), request.params["room_id"], request.params["message_id"]
        )
        # Inline only if the bytes are a raster image, audio or video; the declared
        # type only tells audio from video. Anything else is an octet-stream download.
        return sniffed(data, name, media_type)

    async def media(self, request: Request) -> JSON:
        items = await self.chat.media(
            _me(request), request.params["room_id"], request.query.get("kind", "link")
        )
        return _messages(items)

    async def upload(self, request: Request) -> JSON:
        self._ensure_room(len(request.body or b""), "upload")
        result = await self.chat.upload(
            _me(request),
            request.body,
            request.headers.get("content-type", "application/octet-stream"),
            request.query.get("name", "file"),
        )
        return Response(result, status=201)

    # search and events

    async def search(self, request: Request) -> JSON:
        found = await self.chat.search(
            _me(request), request.query.get("q", ""), _int_query(request, "limit", 50)
        )
        return _messages(found)

    async def events(self, request: Request) -> JSON:
        page = await self.chat.events_for(
            _me(request).address,
            _int_query(request, "cursor", 0),
            _int_query(request, "limit", STREAM_BATCH),
        )
        return {
            "cursor": page.cursor,
            "more": page.more,
            "events": [{"cursor": e.cursor, "event": e.to_json()} for e in page.events],
        }

    # invitations

    async def invite(self, request: Request) -> JSON:
        body = request.json
        invitation = await self.chat.invite(
            _me(request),
            request.params["room_id"],
            title=body["title"],
            starts_at=body["starts_at"],
            ends_at=body.get("ends_at"),
            place=body.get("place"),
            invitees=body.get("invitees"),
        )
        return Response(invitation, status=201)

    async def invitation(self, request: Request) -> JSON:
        return await self.chat.invitation(_me(request), request.params["invitation_id"])

    async def answer(self, request: Request) -> JSON:
        return await self.chat.answer(
            _me(request), request.params["invitation_id"], request.json["answer"]
        )

    # location and alerts

    async def set_location(self, request: Request) -> JSON:
        body = request.json
        return await self.chat.set_location(_me(request), body["share"], body.get("location"))

    async def alert(self, request: Request) -> JSON:
        body = request.json
        sent = await self.chat.send_alert(
            _me(request),
            location=body["location"],
            radius_m=body["radius_m"],
            text=body["text"],
            room_id=body.get("room_id"),
        )
        return {"recipients": sent}

    # stickers

    async def packs(self, request: Request) -> JSON:
        return await self.chat.sticker_packs(_me(request))

    async def create_pack(self, request: Request) -> JSON:
        body = request.json
        pack = await self.chat.create_sticker_pack(_me(request), body["name"], body.get("agency"))
        return Response(pack, status=201)

    async def add_sticker(self, request: Request) -> JSON:
        self._ensure_room(len(request.body or b""), "sticker")
        sticker = await self.chat.add_sticker(
            _me(request),
            request.params["pack_id"],
            request.query.get("name", "sticker"),
            request.body,
            request.headers.get("content-type", ""),
        )
        return Response(sticker, status=201)

    async def sticker_image(self, request: Request) -> JSON:
        _me(request)
        data, media_type = await self.chat.sticker_image(request.params["sticker_id"])
        # Stickers stored before uploads were checked (an SVG, say) become downloads.
        name = "sticker" + (mimetypes.guess_extension(media_type) or "")
        return sniffed(data, name, media_type, headers={"cache-control": "private"})

    # settings and directory

    async def settings(self, request: Request) -> JSON:
        me = _me(request)
        return await self._settings(me.agency_domain)

    async def _settings(self, agency: str) -> JSON:
        everyone = await self.chat.broadcast_by_everyone(agency)
        return {
            "agency": agency,
            "public_mode": await self.chat.public_mode(agency),
            "broadcast_creators": "everyone" if everyone else "admins",
        }

    async def set_settings(self, request: Request) -> JSON:
        me = _me(request)
        agency = request.json.get("agency") or me.agency_domain
        if "public_mode" not in request.json and "broadcast_creators" not in request.json:
            raise ApiError(422, "invalid", "Name a setting to change: public_mode or "
                           "broadcast_creators", "กรุณาระบุค่าที่จะเปลี่ยน")  # fmt: skip
        if "public_mode" in request.json:
            await self.chat.set_public_mode(me, agency, request.json["public_mode"])
        if "broadcast_creators" in request.json:
            everyone = request.json["broadcast_creators"] == "everyone"
            await self.chat.set_broadcast_creators(me, agency, everyone)
        return await self._settings(agency)

    async def people(self, request: Request) -> JSON:
        _me(request)
        found = await self.chat.find_people(
            request.query.get("q"), _int_query(request, "limit", 50)
        )
        return [person(u) for u in found]

    async def units(self, request: Request) -> JSON:
        me = _me(request)
        agency = request.query.get("agency") or me.agency_domain
        try:
            units = await self.chat.directory.units(agency)
        except DirectoryError:
            raise ApiError(404, "not_found", "agency not found", "ไม่พบหน่วยงาน") from None
        return [
            {
                "id": u.id,
                "agency": u.agency_domain,
                "name_th": u.name_th,
                "name_en": u.name_en,
                "parent_id": u.parent_id,
            }
            for u in units
        ]

    # the stream

    async def stream(self, request: Request, ws: WebSocket) -> None:
        """Send the caller's events after ``?cursor=N``, then live ones; take typing and acks.

        Server to client: ``{"type": "event", "cursor": N, "event": {...}}`` for each
        event in cursor order, and ``{"type": "typing", "room_id", "address"}``. Client
        to server: ``{"type": "typing", "room_id": ...}`` and ``{"type": "ack",
        "cursor": N}``. After a reconnect the client sends its last cursor: the events
        after it arrive once each, none skipped.
        """
        me = _me(request)
        raw = request.query.get("cursor") or "0"
        cursor = int(raw) if raw.isdigit() and len(raw) <= 18 else 0
        subscription = self.chat.subscribe(me.address)
        # Events and notices interleave safely: each send is one whole write.

        async def send(message: JSON) -> None:
            await ws.send_json(message)

        async def events() -> None:
            nonlocal cursor
            while True:
                page = await self.chat.events_for(me.address, cursor, STREAM_BATCH)
                if page.events:
                    # One write for the page, each event encoded once for everyone.
                    await ws.send_text(*(event.stream_text for event in page.events))
                cursor = page.cursor
                if not page.more:
                    # Caught up: new events go straight from the publisher to the
                    # socket while it keeps up; we read on from where it stopped.
                    cursor = await self.chat.fanout.park(subscription, cursor, ws.try_send_text)

        async def notices() -> None:
            async for notice in subscription.receive:
                await send(notice)

        async def incoming(cancel: trio.CancelScope) -> None:
            while True:
                message = await ws.receive_json()
                if message is None:
                    cancel.cancel()
                    return
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "typing" and isinstance(message.get("room_id"), str):
                    self.chat.typing(me.address, message["room_id"])
                elif message.get("type") == "ack" and isinstance(message.get("cursor"), int):
                    subscription.acked = max(subscription.acked, message["cursor"])

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(events)
                nursery.start_soon(notices)
                nursery.start_soon(incoming, nursery.cancel_scope)
        except* WebSocketClosed:
            pass  # the client went away; it resumes from its cursor
        finally:
            self.chat.unsubscribe(subscription)


def chat_routes(
    chat: Chat, disk_guard: DiskGuard | None = None, metrics: BoxMetrics | None = None
) -> list[Route | StreamRoute]:
    """Return every chat endpoint, bound to *chat* (and the box's disk guard and metrics)."""
    api = ChatApi(chat, disk_guard, metrics)
    room = "/api/v1/rooms/{room_id}"
    message = room + "/messages/{message_id}"

    def route(
        method: Any,
        path: str,
        handler: Callable[[Request], Awaitable[Any]],
        summary: str,
        **kwargs: Any,
    ) -> Route:
        return Route(method, path, _translating(handler), summary, TAG, **kwargs)

    ok = {"type": "object", "properties": {"read": {"type": "array", "items": {"type": "string"}}}}
    member_list: Schema = {
        "type": "object",
        "properties": {
            "owner": {"type": "string"},
            "members": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["owner", "members"],
    }
    limit = {"limit": _LIMIT_QUERY}
    return [
        route(
            "GET",
            "/api/v1/rooms",
            api.list_rooms,
            "List my rooms (hidden outside working hours)",
            response={"type": "array", "items": _ROOM},
        ),
        route(
            "POST",
            "/api/v1/rooms",
            api.create_room,
            "Create a room (I become its owner)",
            status=201,
            errors=(403, 409, 422),
            request={
                "type": "object",
                "properties": {
                    "kind": {"enum": list(ROOM_KINDS)},
                    "name": {"type": ["string", "null"], "maxLength": 200},
                    "members": {"type": "array", "items": _ADDRESS, "maxItems": 5000},
                    "options": _OPTIONS,
                },
                "required": ["kind"],
                "additionalProperties": False,
            },
            response=_ROOM,
        ),
        route(
            "GET",
            "/api/v1/me/unread",
            api.unread,
            "Unread count and last message of each of my rooms, and the stream cursor",
            response={
                "type": "object",
                "properties": {
                    "cursor": {"type": "integer"},
                    "rooms": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "room_id": {"type": "string"},
                                "unread": {"type": "integer", "minimum": 0},
                                "last_message": {"oneOf": [_MESSAGE, {"type": "null"}]},
                            },
                            "required": ["room_id", "unread", "last_message"],
                        },
                    },
                },
                "required": ["cursor", "rooms"],
            },
        ),
        route(
            "POST",
            "/api/v1/direct",
            api.open_direct,
            "Open (or find) my direct chat with someone; 201 when created",
            also=(201,),
            errors=(403, 422),
            response=_ROOM,
            request={
                "type": "object",
                "properties": {"with": _ADDRESS},
                "required": ["with"],
                "additionalProperties": False,
            },
        ),
        route(
            "GET", room, api.get_room, "Get a room I am a member of", response=_ROOM, errors=(404,)
        ),
        route(
            "PATCH",
            room,
            api.update_room,
            "Rename a room or change its options (owner)",
            errors=(403, 404, 409, 422),
            response=_ROOM,
            request={
                "type": "object",
                "properties": {
                    "name": {"type": ["string", "null"], "maxLength": 200},
                    "options": _OPTIONS,
                },
                "additionalProperties": False,
            },
        ),
        route(
            "DELETE",
            room,
            api.delete_room,
            "Delete a room and its messages (owner)",
            status=204,
            errors=(403, 404),
        ),
        route(
            "POST",
            room + "/owner",
            api.transfer,
            "Transfer ownership to a member (owner)",
            errors=(403, 404, 409),
            response=_ROOM,
            request={
                "type": "object",
                "properties": {"owner": _ADDRESS},
                "required": ["owner"],
                "additionalProperties": False,
            },
        ),
        route(
            "GET",
            room + "/members",
            api.members,
            "List a room's members",
            response=member_list,
            errors=(404,),
        ),
        route(
            "POST",
            room + "/members",
            api.add_members,
            "Add members at once, no acceptance needed (owner)",
            errors=(403, 404, 409, 422),
            response=member_list,
            request={
                "type": "object",
                "properties": {
                    "addresses": {
                        "type": "array",
                        "items": _ADDRESS,
                        "minItems": 1,
                        "maxItems": 1000,
                    }
                },
                "required": ["addresses"],
                "additionalProperties": False,
            },
        ),
        route(
            "DELETE",
            room + "/members/{address}",
            api.remove_member,
            "Remove a member at once (owner)",
            errors=(403, 404, 409),
            response=member_list,
        ),
        route(
            "POST",
            room + "/leave",
            api.leave,
            "Always refused: members cannot leave; ask the owner to remove you",
            errors=(403, 404),
        ),
        route(
            "GET",
            room + "/messages",
            api.list_messages,
            "List messages, newest first (?before=message id, ?limit)",
            response=_MESSAGES,
            errors=(404,),
            query={"before": _ID, **limit},
        ),
        route(
            "POST",
            room + "/messages",
            api.post_message,
            "Post a message; a retry with the same client_id returns the first (200)",
            status=201,
            also=(200,),
            request=_DRAFT,
            response=_MESSAGE,
            errors=(403, 404, 409, 422, 507),
        ),
        route("GET", message, api.get_message, "Get one message", response=_MESSAGE, errors=(404,)),
        route(
            "PATCH",
            message,
            api.edit_message,
            "Edit my message's text (sender)",
            response=_MESSAGE,
            errors=(403, 404, 409, 422),
            request={
                "type": "object",
                "properties": {"text": _TEXT},
                "required": ["text"],
                "additionalProperties": False,
            },
        ),
        route(
            "DELETE",
            message,
            api.delete_message,
            "Delete my message, leaving a tombstone",
            status=204,
            errors=(403, 404, 409),
        ),
        route(
            "POST",
            message + "/read",
            api.read_message,
            "Mark a message read",
            response=ok,
            errors=(404,),
        ),
        route(
            "POST",
            room + "/read",
            api.read_up_to,
            "Mark every message up to one read",
            response=ok,
            errors=(404,),
            request={
                "type": "object",
                "properties": {"up_to": _ID},
                "required": ["up_to"],
                "additionalProperties": False,
            },
        ),
        route(
            "GET",
            message + "/receipts",
            api.receipts,
            "Who read a message, and when",
            errors=(404,),
            response={
                "type": "object",
                "properties": {
                    "message_id": {"type": "string"},
                    "read": {"type": "array", "items": {"type": "object"}},
                    "unread": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["message_id", "read", "unread"],
            },
        ),
        route(
            "PUT",
            message + "/hidden",
            api.hide,
            "Hide a message from my view (search still finds it)",
            status=204,
            errors=(404,),
        ),
        route(
            "DELETE",
            message + "/hidden",
            api.unhide,
            "Show a hidden message again",
            status=204,
            errors=(404,),
        ),
        route(
            "GET",
            message + "/file",
            api.download,
            "Download a message's file (members; 503 while one posted on another box"
            " cannot be fetched from the centre yet)",
            errors=(404, 503),
        ),
        route(
            "GET",
            room + "/media",
            api.media,
            "The links/media tab (?kind=link|image|video|voice|file)",
            response=_MESSAGES,
            errors=(404, 422),
            query={"kind": {"enum": ["link", "image", "video", "voice", "file"]}},
        ),
        route(
            "POST",
            "/api/v1/uploads",
            api.upload,
            "Upload a file (≤ 25 MB) for an image/video/voice/file message (?name=)",
            status=201,
            errors=(413, 422, 507),
            upload="*/*",
            max_body=MAX_UPLOAD,
            query={"name": {"type": "string", "maxLength": 256}},
            response={
                "type": "object",
                "properties": {
                    "upload_id": {"type": "string"},
                    "size": {"type": "integer"},
                    "media_type": {"type": "string"},
                    "name": {"type": "string"},
                },
                "required": ["upload_id", "size", "media_type", "name"],
            },
        ),
        route(
            "GET",
            "/api/v1/search",
            api.search,
            "Search messages of my rooms (Thai substrings; includes hidden messages)",
            response=_MESSAGES,
            errors=(422,),
            query={"q": {"type": "string", "minLength": 1, "maxLength": 200}, **limit},
        ),
        route(
            "GET",
            "/api/v1/events",
            api.events,
            "My events after a cursor (the stream's catch-up, for polling clients)",
            query={"cursor": _CURSOR_QUERY, **limit},
            response={
                "type": "object",
                "properties": {
                    "cursor": {"type": "integer"},
                    "more": {"type": "boolean"},
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"cursor": {"type": "integer"}, "event": _EVENT},
                        },
                    },
                },
                "required": ["cursor", "more", "events"],
            },
        ),
        route(
            "POST",
            room + "/invitations",
            api.invite,
            "Invite members to an event (title, time, place)",
            status=201,
            errors=(403, 404, 422),
            response=_INVITATION,
            request={
                "type": "object",
                "properties": {
                    "title": {"type": "string", "minLength": 1, "maxLength": 256},
                    "starts_at": {"type": "string", "format": "date-time"},
                    "ends_at": {"type": ["string", "null"], "format": "date-time"},
                    "place": {"type": ["string", "null"], "maxLength": 256},
                    "invitees": {"type": "array", "items": _ADDRESS},
                },
                "required": ["title", "starts_at"],
                "additionalProperties": False,
            },
        ),
        route(
            "GET",
            "/api/v1/invitations/{invitation_id}",
            api.invitation,
            "An invitation and who answered",
            response=_INVITATION,
            errors=(404,),
        ),
        route(
            "POST",
            "/api/v1/invitations/{invitation_id}/answer",
            api.answer,
            "Accept or decline an invitation",
            response=_INVITATION,
            errors=(403, 404, 422),
            request={
                "type": "object",
                "properties": {"answer": {"enum": ["accept", "decline"]}},
                "required": ["answer"],
                "additionalProperties": False,
            },
        ),
        route(
            "PUT",
            "/api/v1/me/location",
            api.set_location,
            "Opt in to (or out of) sharing my location for alerts",
            errors=(422,),
            request={
                "type": "object",
                "properties": {"share": {"type": "boolean"}, "location": _LOCATION},
                "required": ["share"],
                "additionalProperties": False,
            },
        ),
        route(
            "POST",
            "/api/v1/alerts",
            api.alert,
            "Alert people within a radius (agency admin; or room owner with room_id)",
            errors=(403, 404, 422),
            response={"type": "object", "properties": {"recipients": {"type": "integer"}}},
            request={
                "type": "object",
                "properties": {
                    "location": _LOCATION,
                    "radius_m": {"type": "number", "minimum": 1, "maximum": 1_000_000},
                    "text": {"type": "string", "minLength": 1, "maxLength": 2000},
                    "room_id": _ID,
                },
                "required": ["location", "radius_m", "text"],
                "additionalProperties": False,
            },
        ),
        route(
            "GET",
            "/api/v1/sticker-packs",
            api.packs,
            "My agency's sticker packs",
            response={"type": "array", "items": _PACK},
        ),
        route(
            "POST",
            "/api/v1/sticker-packs",
            api.create_pack,
            "Create a sticker pack (agency admin)",
            status=201,
            errors=(403, 422),
            response=_PACK,
            request={
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 256},
                    "agency": {"type": "string", "maxLength": 255},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        ),
        route(
            "POST",
            "/api/v1/sticker-packs/{pack_id}/stickers",
            api.add_sticker,
            "Add an image to a sticker pack (agency admin; ?name=)",
            status=201,
            errors=(403, 404, 413, 422, 507),
            upload="image/*",
            max_body=1024 * 1024,
            query={"name": {"type": "string", "maxLength": 256}},
        ),
        route(
            "GET",
            "/api/v1/stickers/{sticker_id}/image",
            api.sticker_image,
            "A sticker's image",
            errors=(404,),
        ),
        route(
            "GET",
            "/api/v1/chat/settings",
            api.settings,
            "My agency's chat settings",
            response=_SETTINGS,
        ),
        route(
            "PUT",
            "/api/v1/chat/settings",
            api.set_settings,
            "Switch public mode, or who creates broadcast rooms, for an agency (agency admin)",
            errors=(403, 422),
            request={
                "type": "object",
                "properties": {
                    "public_mode": {"type": "boolean"},
                    "broadcast_creators": {"enum": ["admins", "everyone"]},
                    "agency": {"type": "string", "maxLength": 255},
                },
                "additionalProperties": False,
            },
            response=_SETTINGS,
        ),
        route(
            "GET",
            "/api/v1/directory/users",
            api.people,
            "Find colleagues by name, address, unit or position (?q=)",
            response={"type": "array", "items": _PERSON},
            query={"q": {"type": "string", "maxLength": 200}, **limit},
        ),
        route(
            "GET",
            "/api/v1/directory/units",
            api.units,
            "An agency's org units (?agency=)",
            errors=(404,),
            query={"agency": {"type": "string", "maxLength": 255}},
            response={"type": "array", "items": {"type": "object"}},
        ),
        StreamRoute(
            "/api/v1/stream",
            api.stream,
            "My live events after ?cursor=N (WebSocket); send typing and acks",
            TAG,
            query={"cursor": _CURSOR_QUERY},
        ),
    ]
