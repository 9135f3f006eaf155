"""Messages: posting, reading, editing, deleting, receipts, and what a room list shows.

A post, an edit, a deletion and a receipt each check `RoomPolicy` inside their write
job, then `EventApplier.commit` records the event and writes the rows with the code
that applies the same event arriving from another box: a local post and a
replicated one reach ``messages`` by one function.

Secret messages: their content is kept only in the ``messages`` row (and its search
row and blob), never in an event payload, so deleting those three deletes it from the
box. For each reader a secret message disappears once they have read it; the box
deletes it when every recipient has read it or its time to live has passed
(`sweep_secrets`, run by `appliance.chat.secrets.SecretSweeper`).

What this is not: files between boxes (`files.py`), or the rules (`rules.py`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from appliance.chat.apply import EventApplier
from appliance.chat.errors import ChatError, not_found
from appliance.chat.messages import (
    MAX_LABEL,
    check_media_type,
    clean_text,
    declared_type,
    fold,
    parse_draft,
)
from appliance.chat.models import FILE_KINDS, Message
from appliance.chat.rules import RoomPolicy
from appliance.chat.tables import (
    GONE_FOR_READER,
    MAX_PAGE,
    MAX_UPLOAD,
    MESSAGE_COLUMNS,
    Conn,
    member_room,
    message_from_row,
    read_room,
    visible_message,
)
from appliance.chat.writer import ChatWriter
from appliance.directory import User
from appliance.security.untrusted import inline_type
from appliance.store.postgres import is_postgresql

#: Uploads never used in a message are deleted after this long.
UPLOAD_TTL = 24 * 3600

#: Trigram search answers three characters or more from the index; shorter scans.
_TRIGRAM = 3

#: Unread counts stop here (a list shows "999+"): counting further costs a scan and
#: tells the reader nothing more.
MAX_UNREAD = 999


@dataclass(frozen=True)
class RoomActivity:
    """What a room list shows of one room: how much is unread, and the last message."""

    room_id: str
    #: Messages of others after the last one the user read or sent (at most MAX_UNREAD).
    unread: int
    #: The newest message the user sees in the room (a tombstone too), or None.
    last: Message | None

    def to_json(self) -> dict[str, Any]:
        last = None if self.last is None else self.last.to_json()
        if last is not None and self.last is not None and self.last.secret:
            # A list must not show a secret message: seeing it is reading it.
            last["content"] = {}
        return {"room_id": self.room_id, "unread": self.unread, "last_message": last}


class Posts:
    """The messages of one box's chat database, as their readers see them."""

    def __init__(self, writer: ChatWriter, applier: EventApplier) -> None:
        self._w = writer
        self._apply = applier

    async def upload(self, actor: User, data: bytes, media_type: str, name: str) -> dict[str, Any]:
        """Store a file for a later message; return its upload id, size and type."""
        if len(data) > MAX_UPLOAD:
            raise ChatError(413, "too_large", "Files are limited to 25 MB", "ไฟล์มีขนาดได้ไม่เกิน 25 MB")
        if not data:
            raise ChatError(422, "empty_file", "The file is empty", "ไฟล์ว่างเปล่า")
        clean_name = clean_text(name or "file", "name", MAX_LABEL, required=True)
        assert clean_name is not None
        # The declared type (one, strictly parsed) is a label: the message kind is
        # checked against it, and clients show it. When the bytes are a raster image,
        # audio or video, their own type is kept instead. Serving never trusts the
        # label: it decides again from the bytes (appliance.web.user_content).
        media = declared_type(media_type)
        media = inline_type(data, media) or media
        blob_id = await self._w.put_blob(data)
        now = self._w.clock()
        upload_id = secrets.token_hex(16)

        def job(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO uploads (id, uploader, blob_id, media_type, name, size, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (upload_id, actor.address, blob_id, media, clean_name, len(data), now),
            )

        try:
            await self._w.db.write(job)
        except BaseException:
            await self._w.delete_blobs([blob_id])
            raise
        return {"upload_id": upload_id, "size": len(data), "media_type": media, "name": clean_name}

    async def post(
        self, actor: User, room_id: str, body: Mapping[str, Any]
    ) -> tuple[Message, bool]:
        """Post a message; return it and whether it is new.

        A retry with the same ``client_id`` returns the message the first attempt
        stored, never a second one (the ack may have been lost, not the message).
        """
        draft = parse_draft(body)
        now = self._w.clock()

        def job(conn: Conn) -> tuple[Message, bool]:
            if draft.client_id is not None:
                row = conn.execute(
                    MESSAGE_COLUMNS + " FROM messages m WHERE m.sender = ? AND m.client_id = ?",
                    (actor.address, draft.client_id),
                ).fetchone()
                if row is not None:
                    existing = message_from_row(row)
                    if existing.room_id != room_id:
                        raise ChatError(
                            409,
                            "client_id_reused",
                            "This client_id was already used for a message in another room",
                            "client_id นี้ถูกใช้กับข้อความในห้องอื่นแล้ว",
                        )
                    return existing, False
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_post(room, actor.address, now, has_location=draft.location is not None)
            if draft.reply_to is not None:
                target = conn.execute(
                    "SELECT 1 FROM messages WHERE id = ? AND room_id = ? AND deleted = 0",
                    (draft.reply_to, room_id),
                ).fetchone()
                if target is None:
                    raise ChatError(
                        422,
                        "invalid_reply_to",
                        "The message replied to is not in this room",
                        "ไม่พบข้อความที่ตอบกลับในห้องนี้",
                    )
            content: dict[str, Any] = {}
            blob_id = None
            if draft.kind == "text":
                content["text"] = draft.text
            elif draft.kind == "link":
                content.update(url=draft.url, title=draft.title)
            elif draft.kind == "sticker":
                sticker = conn.execute(
                    "SELECT s.id, s.pack_id, s.name, p.agency FROM stickers s"
                    " JOIN sticker_packs p ON p.id = s.pack_id WHERE s.id = ?",
                    (draft.sticker_id,),
                ).fetchone()
                if sticker is None or sticker[3] != actor.agency_domain:
                    raise ChatError(
                        422,
                        "invalid_sticker",
                        "No such sticker in your agency's packs",
                        "ไม่พบสติกเกอร์นี้ในชุดสติกเกอร์ของหน่วยงานท่าน",
                    )
                content.update(sticker_id=sticker[0], pack_id=sticker[1], name=sticker[2])
            elif draft.kind in FILE_KINDS:
                upload = conn.execute(
                    "SELECT blob_id, media_type, name, size FROM uploads"
                    " WHERE id = ? AND uploader = ?",
                    (draft.upload_id, actor.address),
                ).fetchone()
                if upload is None:
                    raise ChatError(
                        422,
                        "invalid_upload",
                        "No such upload of yours (upload the file first)",
                        "ไม่พบไฟล์ที่อัปโหลด กรุณาอัปโหลดไฟล์ก่อน",
                    )
                check_media_type(draft.kind, upload[1])
                blob_id = upload[0]
                content.update(
                    name=upload[2], media_type=upload[1], size=upload[3], text=draft.text
                )
                conn.execute("DELETE FROM uploads WHERE id = ?", (draft.upload_id,))
            if draft.location is not None:
                content["location"] = draft.location.to_json()
            secret = room.kind == "secret"
            expires_at = now + room.options.secret_ttl if secret else None
            message_id = self._w.next_id(conn)
            message = Message(
                message_id,
                room_id,
                actor.address,
                draft.kind,
                content,
                draft.reply_to,
                draft.client_id,
                now,
                None,
                False,
                secret,
                expires_at,
            )
            shown = message.to_json()
            if secret:
                # Secret content never goes into an event (see the module docstring);
                # the row is written from the message itself.
                shown["content"] = {}
            self._apply.commit(
                conn,
                "message.posted",
                room_id,
                {"message_id": message_id, "message": shown},
                now,
                room=room,
                message_id=message_id,
                event_id=message_id,
                message=message.to_json(),
                blob_id=blob_id,
            )
            return message, True

        return await self._w.write(job)

    async def message(self, actor: User, room_id: str, message_id: str) -> Message:
        """Return one message of a room *actor* is in (404 if gone for them)."""
        return await self._w.db.read(
            lambda conn: visible_message(conn, room_id, message_id, actor.address)
        )

    async def messages(
        self, actor: User, room_id: str, *, before: str | None = None, limit: int = 50
    ) -> list[Message]:
        """Return a page of the room's messages, newest first, as *actor* sees them.

        New members see the whole history. Messages *actor* hid and secret messages
        they have read are left out; deleted messages appear as tombstones.
        """
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[Message]:
            member_room(conn, room_id, actor.address)
            bound = 2**62  # above every position
            if before is not None:
                row = conn.execute(
                    "SELECT position FROM messages WHERE id = ? AND room_id = ?",
                    (before, room_id),
                ).fetchone()
                if row is None:
                    raise not_found("message", "ข้อความ")
                bound = row[0]
            # position: the hub's order of the room, then messages not ordered yet.
            rows = conn.execute(
                MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room"  # noqa: S608 (fixed strings; values are bound)
                f" AND m.position < :bound AND NOT {GONE_FOR_READER} AND NOT EXISTS"
                " (SELECT 1 FROM hidden h WHERE h.address = :me AND h.message_id = m.id)"
                " ORDER BY m.position DESC LIMIT :limit",
                {"room": room_id, "bound": bound, "me": actor.address, "limit": limit},
            ).fetchall()
            return [message_from_row(r) for r in rows]

        return await self._w.db.read(query)

    async def edit(self, actor: User, room_id: str, message_id: str, text: str) -> Message:
        """Change the text (or a file's caption, a link's title) of *actor*'s message."""
        now = self._w.clock()

        def job(conn: Conn) -> Message:
            message = visible_message(conn, room_id, message_id, actor.address)
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_author(message, actor.address, "edit", "แก้ไข")
            content = dict(message.content)
            if message.kind == "link":
                content["title"] = clean_text(text, "title", MAX_LABEL)
            elif message.kind == "text" or message.kind in FILE_KINDS:
                content["text"] = clean_text(text, "text", 10_000, required=message.kind == "text")
            else:
                raise ChatError(
                    409,
                    "not_editable",
                    f"A {message.kind} message cannot be edited",
                    "ข้อความประเภทนี้แก้ไขไม่ได้",
                )
            # A secret message's new text goes only into its row (the event's
            # snapshot), never into the event.
            shown = {} if message.secret else content
            self._apply.commit(
                conn,
                "message.edited",
                room_id,
                {"message_id": message_id, "content": shown, "edited_at": now},
                now,
                room=room,
                message_id=message_id,
                message={"content": content},
            )
            return replace(message, content=content, edited_at=now)

        return await self._w.write(job)

    async def delete_message(self, actor: User, room_id: str, message_id: str) -> None:
        """Delete *actor*'s message: a tombstone stays, its content, file and index go."""
        now = self._w.clock()

        def job(conn: Conn) -> list[str]:
            message = visible_message(conn, room_id, message_id, actor.address)
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_author(message, actor.address, "delete", "ลบ")
            _, blobs = self._apply.commit(
                conn,
                "message.deleted",
                room_id,
                {"message_id": message_id, "by": actor.address},
                now,
                room=room,
                message_id=message_id,
            )
            return blobs

        await self._w.delete_blobs(await self._w.write(job))

    async def mark_read(
        self,
        actor: User,
        room_id: str,
        message_ids: Sequence[str] = (),
        *,
        up_to: str | None = None,
    ) -> list[str]:
        """Record that *actor* read these messages (or all up to one); return the new ones."""
        now = self._w.clock()

        def job(conn: Conn) -> tuple[list[str], list[str]]:
            room = member_room(conn, room_id, actor.address)
            wanted = list(dict.fromkeys(message_ids))
            if up_to is not None:
                row = conn.execute(
                    "SELECT position FROM messages WHERE id = ? AND room_id = ?", (up_to, room_id)
                ).fetchone()
                if row is None:
                    raise not_found("message", "ข้อความ")
                wanted += [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM messages WHERE room_id = ? AND position <= ?",
                        (room_id, row[0]),
                    )
                ]
            new: list[str] = []
            for message_id in dict.fromkeys(wanted):
                row = conn.execute(
                    "SELECT sender, deleted, secret FROM messages WHERE id = ? AND room_id = ?",
                    (message_id, room_id),
                ).fetchone()
                if row is None:
                    if up_to is None:
                        raise not_found("message", "ข้อความ")
                    continue
                if row[0] == actor.address or row[1]:
                    continue  # one's own messages and tombstones have no receipts
                if not conn.execute(
                    "SELECT 1 FROM receipts WHERE message_id = ? AND reader = ?",
                    (message_id, actor.address),
                ).fetchone():
                    new.append(message_id)
            if not new:
                return new, []
            _, blobs = self._apply.commit(
                conn,
                "receipt",
                room_id,
                {"reader": actor.address, "read_at": now, "message_ids": new},
                now,
                room=room,
            )
            return new, blobs

        new, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return new

    async def receipts(self, actor: User, room_id: str, message_id: str) -> dict[str, Any]:
        """Return who read a message and when, and which members have not yet."""

        def query(conn: Conn) -> dict[str, Any]:
            message = visible_message(conn, room_id, message_id, actor.address)
            room = member_room(conn, room_id, actor.address)
            read = [
                {"reader": r[0], "read_at": r[1]}
                for r in conn.execute(
                    "SELECT reader, read_at FROM receipts WHERE message_id = ? ORDER BY read_at",
                    (message_id,),
                )
            ]
            readers = {r["reader"] for r in read}
            unread = sorted(room.members - readers - {message.sender})
            return {"message_id": message_id, "read": read, "unread": unread}

        return await self._w.db.read(query)

    async def hide(self, actor: User, room_id: str, message_id: str, hidden: bool) -> None:
        """Hide a message from *actor*'s own view (or show it again); search still finds it."""
        now = self._w.clock()

        def job(conn: Conn) -> None:
            visible_message(conn, room_id, message_id, actor.address)
            if hidden:
                conn.execute(
                    "INSERT OR IGNORE INTO hidden (address, message_id) VALUES (?, ?)",
                    (actor.address, message_id),
                )
            else:
                conn.execute(
                    "DELETE FROM hidden WHERE address = ? AND message_id = ?",
                    (actor.address, message_id),
                )
            if conn.changes():
                # A personal event: the user's other devices hide it too.
                self._w.emit(
                    conn,
                    "message.hidden" if hidden else "message.shown",
                    None,
                    {"room_id": room_id, "message_id": message_id},
                    now,
                    subject=actor.address,
                )

        await self._w.write(job)

    async def media(self, actor: User, room_id: str, kind: str, limit: int = 100) -> list[Message]:
        """Return the room's links, images, videos, voice or files, newest first (the tab)."""
        if kind not in ("link", "image", "video", "voice", "file"):
            raise ChatError(422, "invalid_kind", f"no media tab {kind!r}", "ไม่มีแท็บสื่อประเภทนี้")
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[Message]:
            member_room(conn, room_id, actor.address)
            rows = conn.execute(
                MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room AND m.kind = :kind"
                f" AND m.deleted = 0 AND NOT {GONE_FOR_READER} ORDER BY m.position DESC"
                " LIMIT :limit",
                {"room": room_id, "kind": kind, "me": actor.address, "limit": limit},
            ).fetchall()
            return [message_from_row(r) for r in rows]

        return await self._w.db.read(query)

    # --- what the pages show -----------------------------------------------------

    async def activity(self, actor: User, room_ids: Iterable[str]) -> list[RoomActivity]:
        """Return the unread count and last message of each of *actor*'s rooms in *room_ids*.

        Unread means the messages of others after the last message *actor* read or
        sent, not deleted and not hidden: a chat is read from the bottom, and both the
        browser and the apps mark everything up to what was shown (``/read`` with
        ``up_to``). Both queries walk the room's index back from its newest message,
        so the cost follows the unread count, not the room's history.
        """
        wanted = list(dict.fromkeys(room_ids))

        def query(conn: Conn) -> list[RoomActivity]:
            found = []
            for room_id in wanted:
                room = read_room(conn, room_id)
                if room is None or room.deleted or actor.address not in room.members:
                    continue
                params = {"room": room_id, "me": actor.address}
                floor = conn.execute(
                    "SELECT m.position FROM messages m WHERE m.room_id = :room AND (m.sender = :me"
                    " OR EXISTS (SELECT 1 FROM receipts r WHERE r.message_id = m.id"
                    " AND r.reader = :me)) ORDER BY m.position DESC LIMIT 1",
                    params,
                ).fetchone()
                counted = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM messages m WHERE m.room_id = :room"
                    " AND m.position > :floor AND m.deleted = 0 AND NOT EXISTS (SELECT 1 FROM"
                    " hidden h WHERE h.address = :me AND h.message_id = m.id) LIMIT :cap) AS u",
                    {**params, "floor": floor[0] if floor else 0, "cap": MAX_UNREAD},
                ).fetchone()
                unread = counted[0] if counted else 0
                row = conn.execute(
                    MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room"  # noqa: S608 (fixed strings; values are bound)
                    f" AND NOT {GONE_FOR_READER} AND NOT EXISTS (SELECT 1 FROM hidden h"
                    " WHERE h.address = :me AND h.message_id = m.id)"
                    " ORDER BY m.position DESC LIMIT 1",
                    params,
                ).fetchone()
                last = None if row is None else message_from_row(row)
                found.append(RoomActivity(room_id, int(unread), last))
            return found

        return await self._w.db.read(query)

    async def readers(
        self, actor: User, room_id: str, message_ids: Iterable[str]
    ) -> dict[str, list[tuple[str, float]]]:
        """Return who read each of these messages of a room and when (members only).

        The receipts of a page of messages in one read, for "read by" under one's own
        messages; ids not of this room are left out.
        """
        wanted = list(dict.fromkeys(message_ids))

        def query(conn: Conn) -> dict[str, list[tuple[str, float]]]:
            member_room(conn, room_id, actor.address)
            found: dict[str, list[tuple[str, float]]] = {}
            for message_id in wanted:
                rows = conn.execute(
                    "SELECT r.reader, r.read_at FROM receipts r JOIN messages m"
                    " ON m.id = r.message_id WHERE r.message_id = ? AND m.room_id = ?"
                    " ORDER BY r.read_at, r.reader",
                    (message_id, room_id),
                ).fetchall()
                found[message_id] = [(str(r[0]), cast(float, r[1])) for r in rows]
            return found

        return await self._w.db.read(query)

    async def search(self, actor: User, q: str, limit: int = 50) -> list[Message]:
        """Find messages containing *q* in the rooms *actor* belongs to, newest first.

        Thai substring search: three characters or more use the trigram index, shorter
        queries scan. Messages the user hid are found (flagged ``hidden``); secret
        messages already gone for the user, deleted messages and deleted rooms are not.
        """
        query_text = fold(clean_text(q, "q", 200, required=True) or "")
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[Message]:
            # A hub on PostgreSQL has no FTS5 (appliance.store.postgres): it scans.
            if len(query_text) >= _TRIGRAM and not is_postgresql(conn):
                test = "message_text MATCH :q"
                q_value = '"' + query_text.replace('"', '""') + '"'  # one literal phrase
            else:
                test = "instr(t.text, :q) > 0"
                q_value = query_text
            rows = conn.execute(
                MESSAGE_COLUMNS + ", EXISTS (SELECT 1 FROM hidden h WHERE h.address = :me"  # noqa: S608 (fixed strings; values are bound)
                " AND h.message_id = m.id)"
                " FROM message_text t JOIN messages m ON m.seq = t.rowid"
                " JOIN members mb ON mb.room_id = m.room_id AND mb.address = :me"
                " JOIN rooms r ON r.id = m.room_id AND r.deleted = 0"
                f" WHERE {test} AND m.deleted = 0 AND NOT {GONE_FOR_READER}"
                " ORDER BY m.seq DESC LIMIT :limit",
                {"q": q_value, "me": actor.address, "limit": limit},
            ).fetchall()
            return [message_from_row(r, bool(r[12])) for r in rows]

        return await self._w.db.read(query)

    # --- the secret sweeper -------------------------------------------------------

    async def sweep_secrets(self, now: float | None = None) -> int:
        """Delete secret messages past their TTL (and stale uploads); return how many messages."""
        at = self._w.clock() if now is None else now

        def job(conn: Conn) -> tuple[int, list[str]]:
            expired = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?"
                    " LIMIT 1000",
                    (at,),
                )
            ]
            blobs: list[str] = []
            for message_id in expired:
                blobs += self._apply.expire(conn, message_id, "ttl", at)
            stale = conn.execute(
                "SELECT id, blob_id FROM uploads WHERE created_at <= ?", (at - UPLOAD_TTL,)
            ).fetchall()
            for upload_id, blob_id in stale:
                conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
                blobs.append(str(blob_id))
            return len(expired), blobs

        count, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return count
