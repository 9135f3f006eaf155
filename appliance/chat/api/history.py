"""The past: searching my rooms' messages, and the event log after a cursor (polling)."""

from __future__ import annotations

from appliance.chat.api import schemas as s
from appliance.chat.api.common import STREAM_BATCH, int_query, me, messages_json, route
from appliance.chat.store import Chat
from appliance.web.routes import JSON, Request, Route


class HistoryHandlers:
    """Search and the event log, bound to one `Chat`."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def search(self, request: Request) -> JSON:
        found = await self.chat.search(
            me(request), request.query.get("q", ""), int_query(request, "limit", 50)
        )
        return messages_json(found)

    async def events(self, request: Request) -> JSON:
        page = await self.chat.events_for(
            me(request).address,
            int_query(request, "cursor", 0),
            int_query(request, "limit", STREAM_BATCH),
        )
        return {
            "cursor": page.cursor,
            "more": page.more,
            "events": [{"cursor": e.cursor, "event": e.to_json()} for e in page.events],
        }

    def routes(self) -> list[Route]:
        """Return the search and event-log endpoints."""
        return [
            route(
                "GET",
                "/api/v1/search",
                self.search,
                "Search messages of my rooms (Thai substrings; includes hidden messages)",
                response=s.MESSAGES,
                errors=(422,),
                query=s.SEARCH_QUERY,
            ),
            route(
                "GET",
                "/api/v1/events",
                self.events,
                "My events after a cursor (the stream's catch-up, for polling clients)",
                query=s.EVENTS_QUERY,
                response=s.EVENTS_PAGE,
            ),
        ]
