"""What a user's streams read: their events after a cursor, live wake-ups, typing.

The events are those `ChatWriter.write` published to the `Fanout` (recent ones come
from its ring, older ones from the database); typing notices are never stored.

What this is not: the WebSocket (`appliance.chat.api`) or the fan-out (`stream.py`).
"""

from __future__ import annotations

from appliance.chat.models import EventPage
from appliance.chat.stream import Fanout, Subscription
from appliance.chat.tables import EVENT_COLUMNS, Conn, event_from_row, scalar
from appliance.store.database import Database


class EventFeed:
    """Each user's view of the event log, stored and live."""

    def __init__(self, db: Database[Conn], fanout: Fanout) -> None:
        self._db = db
        self._fanout = fanout

    @property
    def head_cursor(self) -> int:
        """The cursor of the last event handed to streams.

        A page that reads this *before* it reads rooms and messages can open the stream
        from it and miss nothing (an event may arrive twice: pages keep the newer).
        """
        return self._fanout.published

    async def events_for(self, address: str, after_cursor: int, limit: int = 200) -> EventPage:
        """Return the events *address* sees after *after_cursor*, in cursor order.

        Visible: every event of a room they are a member of now (new members see the
        room's whole history), and the events about them alone (alerts, their removal,
        their hidden messages). ``EventPage.cursor`` is where the next page starts.
        """
        limit = max(1, min(limit, 1000))
        recent = self._fanout.recent(address, after_cursor, limit)
        if recent is not None:
            events, cursor, more = recent
            return EventPage(events, cursor, more)

        def query(conn: Conn) -> EventPage:
            # The head first, then only events up to it: the page's cursor is then
            # exactly what was examined, even while the writer commits more.
            head = scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
            rows = conn.execute(
                EVENT_COLUMNS + " WHERE cursor > :after AND cursor <= :head AND"  # noqa: S608 (fixed strings; values are bound)
                " (room_id IN (SELECT room_id FROM members WHERE address = :me)"
                " OR subject = :me) ORDER BY cursor LIMIT :limit",
                {"after": after_cursor, "head": head, "me": address, "limit": limit + 1},
            ).fetchall()
            events = [event_from_row(r) for r in rows[:limit]]
            if len(rows) > limit:
                return EventPage(events, events[-1].cursor, True)
            return EventPage(events, max(after_cursor, head), False)

        return await self._db.read(query)

    async def wait(self, after_cursor: int, address: str | None = None) -> None:
        """Return once an event above *after_cursor* is published (one *address* may see)."""
        await self._fanout.wait(after_cursor, address)

    def subscribe(self, address: str) -> Subscription:
        """Register a live stream of *address* for ephemeral notices (typing)."""
        return self._fanout.subscribe(address)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._fanout.unsubscribe(subscription)

    def typing(self, address: str, room_id: str) -> bool:
        """Tell the room's other live members that *address* is typing (not stored)."""
        if room_id not in self._fanout.rooms_of(address):
            return False
        self._fanout.notify(
            room_id, {"type": "typing", "room_id": room_id, "address": address}, skip=address
        )
        return True
