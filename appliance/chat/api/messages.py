"""Messages in a room: post, list, read one, edit, delete; read receipts; hiding."""

from __future__ import annotations

from appliance.chat.api import schemas as s
from appliance.chat.api.common import (
    MESSAGE,
    ROOM,
    StorageGuard,
    int_query,
    me,
    messages_json,
    route,
)
from appliance.chat.store import Chat
from appliance.health.metrics import BoxMetrics
from appliance.web.routes import JSON, Request, Response, Route


class MessageHandlers:
    """The message endpoints, bound to one `Chat` (posts counted in *metrics*)."""

    def __init__(self, chat: Chat, storage: StorageGuard, metrics: BoxMetrics | None) -> None:
        self.chat = chat
        self.storage = storage
        self.metrics = metrics

    async def list_messages(self, request: Request) -> JSON:
        items = await self.chat.messages(
            me(request),
            request.params["room_id"],
            before=request.query.get("before") or None,
            limit=int_query(request, "limit", 50),
        )
        return messages_json(items)

    async def post_message(self, request: Request) -> JSON:
        self.storage.ensure_room(len(request.body or b""), "post")
        message, created = await self.chat.post(
            me(request), request.params["room_id"], request.json
        )
        if self.metrics is not None:
            self.metrics.chat_posts.labels("created" if created else "repeated").inc()
        # 200 for a retried client_id: the client learns its first attempt landed.
        return Response(message.to_json(), status=201 if created else 200)

    async def get_message(self, request: Request) -> JSON:
        message = await self.chat.message(
            me(request), request.params["room_id"], request.params["message_id"]
        )
        return message.to_json()

    async def edit_message(self, request: Request) -> JSON:
        message = await self.chat.edit(
            me(request),
            request.params["room_id"],
            request.params["message_id"],
            request.json["text"],
        )
        return message.to_json()

    async def delete_message(self, request: Request) -> JSON:
        await self.chat.delete_message(
            me(request), request.params["room_id"], request.params["message_id"]
        )
        return Response(None, status=204)

    async def read_message(self, request: Request) -> JSON:
        new = await self.chat.mark_read(
            me(request), request.params["room_id"], [request.params["message_id"]]
        )
        return {"read": new}

    async def read_up_to(self, request: Request) -> JSON:
        new = await self.chat.mark_read(
            me(request), request.params["room_id"], up_to=request.json["up_to"]
        )
        return {"read": new}

    async def receipts(self, request: Request) -> JSON:
        return await self.chat.receipts(
            me(request), request.params["room_id"], request.params["message_id"]
        )

    async def hide(self, request: Request) -> JSON:
        await self.chat.hide(
            me(request), request.params["room_id"], request.params["message_id"], True
        )
        return Response(None, status=204)

    async def unhide(self, request: Request) -> JSON:
        await self.chat.hide(
            me(request), request.params["room_id"], request.params["message_id"], False
        )
        return Response(None, status=204)

    def routes(self) -> list[Route]:
        """Return the message, receipt and hiding endpoints."""
        return [
            route(
                "GET",
                ROOM + "/messages",
                self.list_messages,
                "List messages, newest first (?before=message id, ?limit)",
                response=s.MESSAGES,
                errors=(404,),
                query=s.MESSAGE_PAGE_QUERY,
            ),
            route(
                "POST",
                ROOM + "/messages",
                self.post_message,
                "Post a message; a retry with the same client_id returns the first (200)",
                status=201,
                also=(200,),
                request=s.DRAFT,
                response=s.MESSAGE,
                errors=(403, 404, 409, 422, 507),
            ),
            route(
                "GET",
                MESSAGE,
                self.get_message,
                "Get one message",
                response=s.MESSAGE,
                errors=(404,),
            ),
            route(
                "PATCH",
                MESSAGE,
                self.edit_message,
                "Edit my message's text (sender)",
                response=s.MESSAGE,
                errors=(403, 404, 409, 422),
                request=s.NEW_TEXT,
            ),
            route(
                "DELETE",
                MESSAGE,
                self.delete_message,
                "Delete my message, leaving a tombstone",
                status=204,
                errors=(403, 404, 409),
            ),
            route(
                "POST",
                MESSAGE + "/read",
                self.read_message,
                "Mark a message read",
                response=s.NEWLY_READ,
                errors=(404,),
            ),
            route(
                "POST",
                ROOM + "/read",
                self.read_up_to,
                "Mark every message up to one read",
                response=s.NEWLY_READ,
                errors=(404,),
                request=s.READ_UP_TO,
            ),
            route(
                "GET",
                MESSAGE + "/receipts",
                self.receipts,
                "Who read a message, and when",
                errors=(404,),
                response=s.RECEIPTS,
            ),
            route(
                "PUT",
                MESSAGE + "/hidden",
                self.hide,
                "Hide a message from my view (search still finds it)",
                status=204,
                errors=(404,),
            ),
            route(
                "DELETE",
                MESSAGE + "/hidden",
                self.unhide,
                "Show a hidden message again",
                status=204,
                errors=(404,),
            ),
        ]
