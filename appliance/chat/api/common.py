"""What every chat handler shares: the caller, query numbers, errors, the route helper.

Handlers only translate: path and query strings in, a `Chat` method, JSON out. Every
rule lives in the domain (`appliance.chat.store`, `appliance.chat.rules`); a `ChatError`
becomes an `ApiError` with the same status, code and Thai and English messages
(`translating`, applied to every route by `route`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from appliance.chat.errors import ChatError
from appliance.chat.models import Message
from appliance.directory import User
from appliance.health.disk_guard import DiskGuard
from appliance.health.metrics import BoxMetrics
from appliance.web.routes import JSON, ApiError, Request, Response, Route

TAG: Final = "chat"
ROOM: Final = "/api/v1/rooms/{room_id}"
MESSAGE: Final = ROOM + "/messages/{message_id}"

#: Events sent per WebSocket message batch while catching up (and the event log's
#: default page).
STREAM_BATCH: Final = 200

Handler = Callable[[Request], Awaitable[Any]]


def api_error(exc: ChatError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message_en, exc.message_th)


def translating(
    handler: Callable[[Request], Awaitable[Response | JSON]],
) -> Callable[[Request], Awaitable[Response | JSON]]:
    """Turn the domain's `ChatError` into the web layer's `ApiError`."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response | JSON:
        try:
            return await handler(request)
        except ChatError as exc:
            raise api_error(exc) from None

    return wrapper


def route(method: Any, path: str, handler: Handler, summary: str, **kwargs: Any) -> Route:
    """Declare a chat endpoint: tagged "chat", its `ChatError` translated."""
    return Route(method, path, translating(handler), summary, TAG, **kwargs)


def me(request: Request) -> User:
    if request.user is None:  # the server authenticates every chat route; belt and braces
        raise ApiError(401, "unauthenticated", "Sign in first", "กรุณาเข้าสู่ระบบก่อน")
    return request.user


def int_query(request: Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise ApiError(
            422, f"invalid_{name}", f"{name} must be a whole number", f"{name} ต้องเป็นจำนวนเต็ม"
        )
    return int(raw)


def messages_json(items: list[Message]) -> list[dict[str, Any]]:
    return [m.to_json() for m in items]


class StorageGuard:
    """Refuses what would be stored while the data volume is at its reserve."""

    def __init__(self, disk_guard: DiskGuard | None, metrics: BoxMetrics | None) -> None:
        self.disk_guard = disk_guard
        self.metrics = metrics

    def ensure_room(self, size: int, what: str) -> None:
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
