"""The room list (/chat): my rooms, newest activity first, with unread counts."""

from __future__ import annotations

from collections.abc import Mapping

from appliance.chat.models import Room
from appliance.chat.pages.common import PageHandlers, page
from appliance.chat.pages.views import RoomRow, preview, room_title
from appliance.chat.pages.words import ROOM_KINDS
from appliance.chat.store import RoomActivity
from appliance.directory import User
from appliance.web.routes import Language, Request, Response, Route


class RoomListPage(PageHandlers):
    """The room list; static/chat-list.js keeps its badges and previews live."""

    def routes(self) -> list[Route]:
        return [page("GET", "/chat", self.room_list, "Chat: my rooms with unread counts")]

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
