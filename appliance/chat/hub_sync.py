"""The hub side of chat sync: checking and ordering what boxes push, serving pulls.

`appliance.sync.hub.chat` drives it. The hub is the authority for membership and
the room rules: each pushed event is checked against the hub's state with an
`Authority` (the pushing box's agency and the directory entries it names) by the
same code that applies it (`EventApplier.materialise`), then given the next
position in its room. Pulls and history serve each box the ordered events of the
rooms its agency is in.

What this is not: the HTTPS endpoints (`appliance.sync.hub.chat`), or the edge side
(`edge_sync.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from appliance.chat.apply import Authority, EventApplier
from appliance.chat.errors import ChatError, not_found
from appliance.chat.models import Room
from appliance.chat.tables import (
    CONSTRAINT_ERRORS,
    MAX_PAGE,
    ROOM_KEEPING_TYPES,
    WIRE_COLUMNS,
    Conn,
    next_room_order,
    pending_events,
    remember_origin,
    scalar,
    set_room_order,
    wire_event,
)
from appliance.chat.writer import ChatWriter
from appliance.sync.codec.chat import HubAnswer, ReplicatedEvent, invalid


class HubSync:
    """The hub's side of chat sync with the boxes."""

    def __init__(self, writer: ChatWriter, applier: EventApplier) -> None:
        self._w = writer
        self._apply = applier

    async def accept_pushed(
        self,
        origin: str,
        authority: Authority,
        items: Sequence[ReplicatedEvent | tuple[str, ChatError]],
    ) -> list[HubAnswer]:
        """Check and apply events pushed by box *origin*, in order (hub side).

        Each event is answered: already held -> accepted with its order, no effect;
        otherwise checked against this hub's state and the room rules, applied and
        given the next position in its room, or refused with the rule's reason. An
        *item* that is ``(id, error)`` did not parse and is refused as such. All in
        one transaction: the answers are sent only after it is committed.

        A catch-up pushes hundreds of events a request, so what can be is done once
        per batch: one read of which events are held already, each room read once
        (again only after an event that changes it), each room's next order counted
        from the last one given, the origin's sequence kept once at the end.
        """

        def job(conn: Conn) -> tuple[list[HubAnswer], list[str]]:
            self._order_own(conn)
            answers: list[HubAnswer] = []
            blobs: list[str] = []
            ids = [item.id for item in items if not isinstance(item, tuple)]
            held_rows: dict[str, tuple[Any, str, Any]] = {
                row[0]: (row[1], row[2], row[3])
                for row in conn.execute(
                    "SELECT id, room_order, type, message_id FROM events"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(ids),),
                )
            }
            #: Events accepted earlier in this batch (a batch may name one twice).
            accepted: dict[str, int] = {}
            #: The last room order given per room in this job.
            last_order: dict[str, int] = {}
            rooms: dict[str, Room | None] = {}
            top_seq = 0

            def next_order(room_id: str) -> int:
                if room_id not in last_order:
                    last_order[room_id] = next_room_order(conn, room_id) - 1
                return last_order[room_id] + 1

            for item in items:
                if isinstance(item, tuple):
                    answers.append(HubAnswer.refused(*item))
                    continue
                event = item
                if event.origin != origin:
                    answers.append(HubAnswer.refused(event.id, _foreign_origin()))
                    continue
                if event.id in accepted:
                    answers.append(HubAnswer(event.id, accepted[event.id]))
                    continue
                held = held_rows.get(event.id)
                if held is not None:
                    order = held[0]
                    if order is None:  # not expected: an own event of this hub's
                        order = last_order[event.room_id] = next_order(event.room_id)
                        set_room_order(conn, event.id, held[1], held[2], order)
                    answers.append(HubAnswer(event.id, int(order)))
                    continue
                order = next_order(event.room_id)
                event = replace(event, room_order=order)
                conn.execute("SAVEPOINT pushed")
                try:
                    blobs += self._apply.materialise(conn, event, authority, rooms)
                    self._apply.record_replicated(conn, event, order, keep_origin=False)
                except ChatError as exc:
                    conn.execute("ROLLBACK TO pushed")
                    answers.append(HubAnswer.refused(event.id, exc))
                except CONSTRAINT_ERRORS as exc:
                    conn.execute("ROLLBACK TO pushed")
                    answers.append(HubAnswer.refused(event.id, _conflict(str(exc))))
                except (KeyError, TypeError, ValueError) as exc:
                    conn.execute("ROLLBACK TO pushed")
                    answers.append(HubAnswer.refused(event.id, invalid(str(exc)[:200])))
                else:
                    answers.append(HubAnswer(event.id, order))
                    accepted[event.id] = last_order[event.room_id] = order
                    top_seq = max(top_seq, int(event.id.rpartition(":")[2]))
                conn.execute("RELEASE pushed")
                if event.type not in ROOM_KEEPING_TYPES:
                    rooms.pop(event.room_id, None)  # changed (or refused): read it again
            if top_seq:
                remember_origin(conn, origin, top_seq)
            return answers, blobs

        answers, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return answers

    def _order_own(self, conn: Conn) -> None:
        """Give this hub's own pending events their room order (it answers for itself)."""
        rows = conn.execute(
            "SELECT id, room_id, type, message_id FROM events WHERE pending = 1 ORDER BY cursor"
        ).fetchall()
        for event_id, room_id, type_, message_id in cast(list[tuple[str, str, str, Any]], rows):
            set_room_order(conn, event_id, type_, message_id, next_room_order(conn, room_id))

    async def hub_pull(
        self, domain: str, after: int, limit: int, *, compact: bool = False
    ) -> tuple[list[ReplicatedEvent], int, bool]:
        """Return the ordered events an agency's box needs after *after* (hub side).

        The events of rooms with a member of *domain* now, and the events that concern
        one of its people (their removal), in this hub's cursor order. The returned
        cursor never passes an event of this hub that is not ordered yet, so a pull
        never skips one; the hub's own events are ordered first.
        """
        limit = max(1, min(limit, MAX_PAGE))
        if await self._w.db.read(pending_events):
            await self._w.db.write(self._order_own)

        def query(conn: Conn) -> tuple[list[ReplicatedEvent], int, bool]:
            head = scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
            first_pending = conn.execute(
                "SELECT min(cursor) FROM events WHERE pending = 1"
            ).fetchone()
            if first_pending and first_pending[0] is not None:
                head = min(head, int(first_pending[0]) - 1)
            rooms = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT room_id FROM members"
                    " WHERE substr(address, instr(address, '@') + 1) = ?",
                    (domain,),
                )
            ]
            rows = conn.execute(
                WIRE_COLUMNS + " WHERE cursor > :after AND cursor <= :head"  # noqa: S608 (fixed strings; values are bound)
                " AND room_order IS NOT NULL AND (room_id IN (SELECT value FROM json_each(:rooms))"
                " OR substr(subject, instr(subject, '@') + 1) = :domain)"
                " ORDER BY cursor LIMIT :limit",
                {
                    "after": after,
                    "head": head,
                    "rooms": json.dumps(rooms),
                    "domain": domain,
                    "limit": limit + 1,
                },
            ).fetchall()
            events = [wire_event(conn, r, compact=compact) for r in rows[:limit]]
            if len(rows) > limit:
                return events, int(cast(int, rows[limit - 1][0])), True
            return events, max(after, head), False

        return await self._w.db.read(query)

    async def room_history(
        self,
        domain: str,
        room_id: str,
        before_order: int,
        after_order: int,
        limit: int,
        *,
        compact: bool = False,
    ) -> tuple[list[ReplicatedEvent], bool]:
        """Return a room's ordered events between two orders, for a box of *domain* (hub).

        Only for a room that has a member of *domain*: what a box may learn of a room
        is what its people may read (new members read the whole history).
        """
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> tuple[list[ReplicatedEvent], bool]:
            member = conn.execute(
                "SELECT 1 FROM members WHERE room_id = ?"
                " AND substr(address, instr(address, '@') + 1) = ? LIMIT 1",
                (room_id, domain),
            ).fetchone()
            if member is None:
                raise not_found("room", "ห้องสนทนา")
            rows = conn.execute(
                WIRE_COLUMNS + " WHERE room_id = ? AND room_order > ? AND room_order < ?"
                " ORDER BY room_order LIMIT ?",
                (room_id, after_order, before_order, limit + 1),
            ).fetchall()
            events = [wire_event(conn, r, compact=compact) for r in rows[:limit]]
            return events, len(rows) > limit

        return await self._w.db.read(query)


def _foreign_origin() -> ChatError:
    return ChatError(
        403,
        "foreign_origin",
        "A box pushes only events it made itself",
        "เครื่องแต่ละเครื่องส่งได้เฉพาะเหตุการณ์ที่เกิดขึ้นบนเครื่องของตนเท่านั้น",
    )


def _conflict(detail: str) -> ChatError:
    return ChatError(
        409,
        "conflict",
        f"The change conflicts with the room's state at the centre ({detail})",
        "การเปลี่ยนแปลงนี้ขัดกับสถานะของห้องที่ศูนย์กลาง",
    )
