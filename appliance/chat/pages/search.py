"""Search (/chat/search?q=): messages of my rooms containing the words, in context."""

from __future__ import annotations

from appliance.chat.errors import ChatError
from appliance.chat.models import Message
from appliance.chat.pages.common import PageHandlers, api_error, page
from appliance.chat.pages.text import highlight, searchable_text
from appliance.chat.pages.views import path_part, room_title, utc_iso
from appliance.chat.pages.words import Words
from appliance.web.routes import Request, Response, Route


class SearchPage(PageHandlers):
    """The search results page."""

    def routes(self) -> list[Route]:
        text_query = {"q": {"type": "string", "maxLength": 200}}
        return [
            page("GET", "/chat/search", self.search, "Search my rooms' messages", query=text_query),
        ]

    async def search(self, request: Request) -> Response:
        me = self._me(request)
        lang = await self.kit.language(request)
        q = request.query.get("q", "").strip()
        found: list[Message] = []
        if q:
            try:
                found = await self.chat.search(me, q)
            except ChatError as exc:
                raise api_error(exc) from None
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
            text = searchable_text(message)
            title = room_title(where, me.address, names, lang) if where else hidden_room
            results.append(
                {
                    "message": message,
                    "room_title": title,
                    "sender_name": names.get(message.sender, message.sender),
                    "parts": highlight(text, q),
                    "href": f"/chat/rooms/{path_part(message.room_id)}#m-{message.id}",
                    "iso_time": utc_iso(message.created_at),
                }
            )
        return await self.kit.render(request, "chat/search.html", q=q, results=results)
