"""The edge side of chat sync: what this box pushes to the hub, and what it pulls.

`appliance.sync.chat` drives it: `outbox` -> the hub -> `settle`, then
`apply_pulled` with the pull cursor. An event the hub ordered is applied with
`EventApplier.materialise` without an authority: a box trusts the hub's order and
applies it as far as it holds what the event refers to. A change the hub refused is
taken back here with the same write path a local change takes (`EventApplier.commit`).

What this is not: the transport (`appliance.sync.chat`) or the hub's side
(`hub_sync.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.chat.apply import EventApplier
from appliance.chat.errors import ChatError
from appliance.chat.models import Room
from appliance.chat.tables import (
    CONSTRAINT_ERRORS,
    ROOM_KEEPING_TYPES,
    WIRE_COLUMNS,
    Conn,
    domain_of,
    dumps,
    pending_events,
    read_room,
    set_room_order,
    wire_event,
)
from appliance.chat.writer import ChatWriter
from appliance.sync.codec.chat import REJECTED_TYPE, HubAnswer, ReplicatedEvent, parse_event

_log = logging.getLogger(__name__)


class EdgeSync:
    """This box's side of chat sync with the hub."""

    def __init__(self, writer: ChatWriter, applier: EventApplier) -> None:
        self._w = writer
        self._apply = applier

    async def apply_remote(self, event: Mapping[str, Any]) -> bool:
        """Store and apply one event replicated from another box; False if already held.

        The idempotence hook of chat sync (DESIGN.md "Sync"): the event's global id is
        unique in ``events``, so applying one twice has the effect of once. The sync
        replicator applies whole pages with `apply_pulled`; this is the one-event form.
        """
        parsed = parse_event(dict(event))
        return await self.apply_pulled([parsed]) == 1

    async def outbox(self, limit: int = 200, *, compact: bool = False) -> list[ReplicatedEvent]:
        """Return up to *limit* of this box's events the hub has not answered, oldest first.

        *compact*: leave out the snapshots that repeat the event (`wire_event`), for a
        hub that said it reads wire format 2.
        """

        def query(conn: Conn) -> list[ReplicatedEvent]:
            rows = conn.execute(
                WIRE_COLUMNS + " WHERE pending = 1 ORDER BY cursor LIMIT ?", (limit,)
            ).fetchall()
            return [wire_event(conn, row, compact=compact) for row in rows]

        return await self._w.db.read(query)

    async def sync_cursor(self, name: str) -> int:
        """Return a durable sync cursor (0 before the first commit of it)."""
        row = await self._w.db.read(
            lambda conn: conn.execute(
                "SELECT value FROM sync_cursors WHERE name = ?", (name,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def sync_backlog(self) -> int:
        """Return how many of this box's events wait for the hub's answer."""
        return await self._w.db.read(pending_events)

    async def settle(self, answers: Sequence[HubAnswer]) -> tuple[int, int]:
        """Commit the hub's answers to pushed events; return (accepted, refused).

        Accepted: the event takes the hub's room order and leaves the queue. Refused:
        it leaves the queue marked with the hub's reason, what it did here is undone
        where that can be done (a refused message is withdrawn, a refused room closed)
        and its author gets a ``sync.rejected`` notice on their stream, in Thai and
        English: never a silent drop. Answers for events not pending are ignored, so
        an answer applied twice (a retry) has the effect of once.
        """
        now = self._w.clock()

        def job(conn: Conn) -> tuple[int, int, list[str]]:
            accepted = refused = 0
            blobs: list[str] = []
            for answer in answers:
                row = conn.execute(
                    WIRE_COLUMNS + " WHERE id = ? AND pending = 1", (answer.id,)
                ).fetchone()
                if row is None:
                    continue
                if answer.room_order is not None:
                    set_room_order(conn, row[1], row[2], row[7], answer.room_order)
                    accepted += 1
                    continue
                event = wire_event(conn, row)
                refusal = {"code": answer.code, "en": answer.message_en, "th": answer.message_th}
                conn.execute(
                    "UPDATE events SET pending = 0, refusal = ? WHERE id = ?",
                    (dumps(refusal), answer.id),
                )
                blobs += self._undo_refused(conn, event, answer, now)
                refused += 1
            return accepted, refused, blobs

        accepted, refused, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return accepted, refused

    def _undo_refused(
        self, conn: Conn, event: ReplicatedEvent, answer: HubAnswer, now: float
    ) -> list[str]:
        """Take back what a refused event did on this box; tell its author. Return blobs."""
        blobs: list[str] = []
        room_id = event.room_id
        notice: dict[str, Any] = {
            "event_id": event.id,
            "event_type": event.type,
            "room_id": room_id,
            "code": answer.code,
            "message_en": answer.message_en,
            "message_th": answer.message_th,
        }
        if event.type == "message.posted":
            snapshot = event.message or {}
            content = snapshot.get("content")
            if isinstance(content, dict) and not snapshot.get("secret"):
                # The author's own words, so they can send them again elsewhere.
                notice["content"] = content
            blobs += self._apply.expire(conn, event.id, "rejected", now)
        elif event.type == "room.created":
            room = read_room(conn, room_id)
            if room is not None and not room.deleted:
                blobs += self._apply.commit(
                    conn, "room.deleted", room_id, {"by": "hub", "reason": answer.code}, now,
                    room=room, push=False,
                )[1]  # fmt: skip
        elif event.type == "member.added":
            added = event.payload.get("addresses")
            for address in added if isinstance(added, list) else []:
                room = read_room(conn, room_id)  # again: each removal changes it
                if isinstance(address, str) and room is not None and address in room.members:
                    blobs += self._apply.commit(
                        conn, "member.removed", room_id, {"address": address, "by": "hub"}, now,
                        room=room, subject=address, push=False,
                    )[1]  # fmt: skip
        elif event.type == "member.removed":
            address = event.payload.get("address")
            room = read_room(conn, room_id)
            if (
                isinstance(address, str)
                and room is not None
                and not room.deleted
                and address not in room.members
            ):
                self._apply.commit(
                    conn, "member.added", room_id, {"addresses": [address], "by": "hub"},
                    now, room=room, push=False,
                )  # fmt: skip
        author = event.actor()
        if author is not None:
            self._w.emit(conn, REJECTED_TYPE, None, notice, now, subject=author, push=False)
        return blobs

    async def apply_pulled(
        self, events: Sequence[ReplicatedEvent], *, cursor: tuple[str, int] | None = None
    ) -> int:
        """Apply events the hub ordered, and move the pull *cursor*, in one transaction.

        An event already held only takes its room order (that is how the echo of this
        box's own event confirms it when the push's answer was lost); a new one is
        applied to rooms and messages and published to the local streams like a local
        change. Returns how many events were new here.
        """

        def job(conn: Conn) -> tuple[int, list[str]]:
            new = 0
            blobs: list[str] = []
            rooms: dict[str, Room | None] = {}
            for event in events:
                held = conn.execute(
                    "SELECT type, message_id, room_order FROM events WHERE id = ?", (event.id,)
                ).fetchone()
                if held is not None:
                    if held[2] is None and event.room_order is not None:
                        set_room_order(conn, event.id, held[0], held[1], event.room_order)
                    continue
                conn.execute("SAVEPOINT pulled")
                try:
                    blobs += self._apply.materialise(conn, event, None, rooms)
                except (ChatError, *CONSTRAINT_ERRORS, KeyError, TypeError, ValueError) as exc:
                    # The hub ordered it, so it stands; what cannot be applied here
                    # (a row this box never had) is skipped, the event still recorded.
                    conn.execute("ROLLBACK TO pulled")
                    _log.warning("chat sync: event %s not applied here: %s", event.id, exc)
                conn.execute("RELEASE pulled")
                if event.type not in ROOM_KEEPING_TYPES:
                    rooms.pop(event.room_id, None)
                self._apply.record_replicated(conn, event, event.room_order)
                new += 1
            if cursor is not None:
                conn.execute(
                    "INSERT INTO sync_cursors (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    cursor,
                )
            return new, blobs

        new, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return new

    async def rooms_needing_history(
        self, events: Sequence[ReplicatedEvent], domain: str
    ) -> list[tuple[str, int]]:
        """Return (room, room order) for pulled events whose room's past is missing here.

        The hub sends a box the events of rooms its agency is in *now*; a room that
        gains its first member here brings events from before that this box never
        received. For each such room this names the first event that needs them.
        """

        def query(conn: Conn) -> list[tuple[str, int]]:
            found: dict[str, int] = {}
            created: set[str] = set()
            for event in events:
                if event.room_id in found or event.room_order is None:
                    continue
                if event.type == "room.created":
                    created.add(event.room_id)
                    continue
                if event.room_id in created:
                    continue
                room = read_room(conn, event.room_id)
                if room is None:
                    found[event.room_id] = event.room_order
                elif event.type == "member.added" and not any(
                    domain_of(a) == domain for a in room.members
                ):
                    added = event.payload.get("addresses")
                    if isinstance(added, list) and any(
                        isinstance(a, str) and domain_of(a) == domain for a in added
                    ):
                        found[event.room_id] = event.room_order
            return list(found.items())

        return await self._w.db.read(query)
