"""The live stream: ``GET /api/v1/stream?cursor=N``, a WebSocket (docs/chat.md)."""

from __future__ import annotations

import trio

from appliance.chat.api import schemas as s
from appliance.chat.api.common import STREAM_BATCH, TAG, me
from appliance.chat.store import Chat
from appliance.web.routes import JSON, Request, StreamRoute, WebSocket, WebSocketClosed


class StreamHandler:
    """The stream endpoint, bound to one `Chat`."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def stream(self, request: Request, ws: WebSocket) -> None:
        """Send the caller's events after ``?cursor=N``, then live ones; take typing and acks.

        Server to client: ``{"type": "event", "cursor": N, "event": {...}}`` for each
        event in cursor order, and ``{"type": "typing", "room_id", "address"}``. Client
        to server: ``{"type": "typing", "room_id": ...}`` and ``{"type": "ack",
        "cursor": N}``. After a reconnect the client sends its last cursor: the events
        after it arrive once each, none skipped.
        """
        user = me(request)
        raw = request.query.get("cursor") or "0"
        cursor = int(raw) if raw.isdigit() and len(raw) <= 18 else 0
        subscription = self.chat.subscribe(user.address)
        # Events and notices interleave safely: each send is one whole write.

        async def send(message: JSON) -> None:
            await ws.send_json(message)

        async def events() -> None:
            nonlocal cursor
            while True:
                page = await self.chat.events_for(user.address, cursor, STREAM_BATCH)
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
                    self.chat.typing(user.address, message["room_id"])
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

    def routes(self) -> list[StreamRoute]:
        """Return the stream endpoint."""
        return [
            StreamRoute(
                "/api/v1/stream",
                self.stream,
                "My live events after ?cursor=N (WebSocket); send typing and acks",
                TAG,
                query=s.STREAM_QUERY,
            ),
        ]
