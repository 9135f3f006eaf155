"""The writer plumbing every part of the chat domain shares: ids, events, commits, blobs.

Every change is one `Database.write` job that writes its rows *and* the event
recording it in one transaction (`ChatWriter.emit`). After the commit, `write`
publishes the new events to the `Fanout`, so a change returns once it is both
fsynced and visible on live streams, and tells the push listeners (the chat
replicator) that events wait for the hub.

What this is not: which rows an event writes (`apply.py`), or any rule.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import trio

from appliance.chat.errors import ChatError
from appliance.chat.stream import Fanout
from appliance.chat.tables import Conn, dumps, event_from_row, events_after, scalar
from appliance.store.blobs import BlobMissing, BlobStore
from appliance.store.database import Database
from appliance.sync.codec.chat import REPLICATED_TYPES

T = TypeVar("T")

#: Chat blobs start with this and 16 random bytes before the content. Blobs are
#: content-addressed and the store is shared with mail, so without it a chat file equal
#: to a stored mail (or to another chat file) would share its blob, and deleting a
#: secret message's file would delete someone else's. With it, every upload is a blob
#: of its own that chat alone may delete.
_BLOB_PREFIX = b"edgebox chat blob v1\x00"
_BLOB_SALT = 16


def wrap_blob(content: bytes) -> bytes:
    """Return *content* as a chat blob of its own (see `_BLOB_PREFIX`)."""
    return _BLOB_PREFIX + secrets.token_bytes(_BLOB_SALT) + content


def unwrap_blob(stored: bytes) -> bytes:
    """Return a chat blob's content; 404 for a blob that is not chat's."""
    if not stored.startswith(_BLOB_PREFIX):
        raise ChatError(404, "not_found", "file not found", "ไม่พบไฟล์")
    return stored[len(_BLOB_PREFIX) + _BLOB_SALT :]


class ChatWriter:
    """The chat database's one writer, its event log and its blobs, for every part."""

    def __init__(
        self,
        db: Database[Conn],
        blobs: BlobStore,
        box_id: str,
        fanout: Fanout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.box_id = box_id
        self.fanout = fanout
        self.clock = clock
        # The highest cursor any job has emitted; a write publishes up to it.
        self._emitted = fanout.published
        # Events queued for the hub by jobs, and how many the push listeners heard of.
        self._queued = 0
        self._queued_told = 0
        self._push_listeners: list[Callable[[], None]] = []

    # --- inside a job -------------------------------------------------------------

    def next_id(self, conn: Conn) -> str:
        """Return the next global id ``"{box}:{seq}"`` of this box."""
        row = conn.execute(
            "INSERT INTO origins (origin, seq) VALUES (?, 1)"
            " ON CONFLICT (origin) DO UPDATE SET seq = origins.seq + 1 RETURNING seq",
            (self.box_id,),
        ).fetchone()
        assert row is not None  # RETURNING always yields the row it wrote
        return f"{self.box_id}:{row[0]}"

    def emit(
        self,
        conn: Conn,
        type_: str,
        room_id: str | None,
        payload: Mapping[str, Any],
        now: float,
        *,
        subject: str | None = None,
        message_id: str | None = None,
        event_id: str | None = None,
        push: bool = True,
        room_order: int | None = None,
    ) -> str:
        """Record one event in the job's transaction; return its global id.

        An event of this box that changes a room's shared state is queued for the
        hub (``pending``) unless *push* is False: events replicated from elsewhere,
        and local corrections after the hub refused something, stay here.
        """
        event_id = event_id or self.next_id(conn)
        pending = push and room_id is not None and type_ in REPLICATED_TYPES
        conn.execute(
            "INSERT INTO events (id, type, room_id, subject, message_id, payload, created_at,"
            " room_order, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                type_,
                room_id,
                subject,
                message_id,
                dumps(payload),
                now,
                room_order,
                int(pending),
            ),
        )
        self._emitted = max(self._emitted, conn.last_insert_rowid())
        if pending:
            self._queued += 1
        return event_id

    # --- around a job -------------------------------------------------------------

    async def write(self, job: Callable[[Conn], T]) -> T:
        """Run *job* in the writer's transaction, then publish what it emitted."""
        result = await self.db.write(job)
        await self._publish()
        if self._queued != self._queued_told:
            # Live inter-agency chat: the replicator pushes as soon as it hears.
            self._queued_told = self._queued
            for listener in self._push_listeners:
                listener()
        return result

    async def publish_committed(self) -> None:
        """Publish events other processes committed (a hub's workers on PostgreSQL).

        Everything up to the newest cursor committed goes out in cursor order, as after
        a write of this process: a worker's commit order is its cursor order.
        """
        head = self.db.read_now(
            lambda conn: scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
        )
        self._emitted = max(self._emitted, int(head))
        await self._publish()

    async def _publish(self) -> None:
        """Hand committed events to live streams, in cursor order (see stream.py)."""
        upto = self._emitted
        fanout = self.fanout
        if fanout.published >= upto:
            return
        async with fanout.lock:
            while fanout.published < upto:
                after = fanout.published
                # Inline: one indexed range read of the events just committed; a
                # thread hop here would hold every other publisher behind the lock.
                rows = self.db.read_now(functools.partial(events_after, after=after))
                if not rows:
                    break  # the job that emitted `upto` was rolled back
                fanout.publish(event_from_row(r) for r in rows)

    def add_push_listener(self, listener: Callable[[], None]) -> None:
        """Call *listener* (synchronously) after each write that queued events for the hub."""
        self._push_listeners.append(listener)

    # --- blobs --------------------------------------------------------------------

    async def put_blob(self, content: bytes) -> str:
        """Store *content* as a chat blob of its own; return its id."""
        return await trio.to_thread.run_sync(self.blobs.put, wrap_blob(content))

    async def get_blob(self, blob_id: str) -> bytes:
        """Return a chat blob's content (`BlobMissing` if its file is gone)."""
        return unwrap_blob(await trio.to_thread.run_sync(self.blobs.get, blob_id))

    async def read_blob(self, blob_id: str) -> bytes | None:
        """Return a chat blob's content, or None if its file is gone."""
        try:
            return await self.get_blob(blob_id)
        except BlobMissing:
            return None

    async def delete_blobs(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            await trio.to_thread.run_sync(self.blobs.delete, blob_id)
