"""The files of file messages: serving them here, and carrying them between boxes.

An event carries a file message's name, type and size, never its content. The
poster's box sends the content to the hub once the hub has ordered the message
(`files_to_share` -> `own_file` -> the hub's `attach_shared_file` -> `file_shared`);
another box fetches it from the hub when a member opens it (`file` ->
`fetch_shared_file` -> the hub's `shared_file`). ``messages.shared`` is 1 once the
content needs to go nowhere else from this box.

What this is not: uploading a file for a message (`posts.py`), or the transport
(`appliance.sync.chat`, `appliance.sync.hub.chat`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from appliance.chat.errors import ChatError, not_found
from appliance.chat.models import FILE_KINDS, Message
from appliance.chat.tables import Conn, visible_message
from appliance.chat.writer import ChatWriter
from appliance.directory import User


class SharedFiles:
    """File messages' contents, here and between boxes (through the hub)."""

    def __init__(self, writer: ChatWriter) -> None:
        self._w = writer
        #: Fetches, from the hub, the content of a file message posted on another box
        #: (message id -> bytes; raises ChatError when it cannot). Set by the chat sync
        #: service of an enrolled box; None on the hub and on a box with no hub.
        self.fetch_shared_file: Callable[[str], Awaitable[bytes]] | None = None

    async def file(self, actor: User, room_id: str, message_id: str) -> tuple[bytes, str, str]:
        """Return (content, media type, file name) of a file message, for members only.

        A file posted on another box is fetched from the hub the first time it is
        opened here (`fetch_shared_file`), then kept like a local one.
        """

        def query(conn: Conn) -> tuple[str | None, Message]:
            message = visible_message(conn, room_id, message_id, actor.address)
            row = conn.execute(
                "SELECT blob_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None or message.deleted or message.kind not in FILE_KINDS:
                raise not_found("file", "ไฟล์")
            return row[0], message

        blob_id, message = await self._w.db.read(query)
        if blob_id is None:
            if self.fetch_shared_file is None:
                raise not_found("file", "ไฟล์")
            data = await self.fetch_shared_file(message_id)
            await self.attach_shared_file(message_id, data)
        else:
            stored = await self._w.read_blob(blob_id)
            if stored is None:
                raise not_found("file", "ไฟล์")
            data = stored
        return data, message.content["media_type"], message.content["name"]

    async def files_to_share(self, limit: int) -> list[str]:
        """Return the ids of this box's file messages the hub has ordered but lacks."""

        def query(conn: Conn) -> list[str]:
            rows = conn.execute(
                "SELECT m.id FROM messages m JOIN events e ON e.id = m.id"
                " WHERE m.shared = 0 AND m.blob_id IS NOT NULL AND m.deleted = 0"
                " AND e.pending = 0 AND e.room_order IS NOT NULL ORDER BY m.seq LIMIT ?",
                (limit,),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._w.db.read(query)

    async def own_file(self, message_id: str) -> bytes | None:
        """Return a file message's content, or None if it is gone (deleted, expired)."""
        row = await self._w.db.read(
            lambda conn: conn.execute(
                "SELECT blob_id FROM messages WHERE id = ? AND deleted = 0", (message_id,)
            ).fetchone()
        )
        if row is None or row[0] is None:
            return None
        return await self._w.read_blob(row[0])

    async def file_shared(self, message_id: str) -> None:
        """Note that the hub holds the file (or never will): stop offering it."""
        await self._w.db.write(
            lambda conn: conn.execute("UPDATE messages SET shared = 1 WHERE id = ?", (message_id,))
        )

    async def attach_shared_file(
        self, message_id: str, data: bytes, *, poster_domain: str | None = None
    ) -> None:
        """Keep the content of a file message that was posted on another box.

        On the hub *poster_domain* is the agency of the box that sent it, which must be
        the poster's; on a box the content comes from the hub, which checked it. The
        message must be a file message this store holds, and the content as long as its
        event said. Storing it twice, or for a message deleted since, does nothing.
        """

        def check(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT sender, kind, content, blob_id, deleted FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise not_found("message", "ข้อความ")
            sender, kind, content, blob_id, deleted = row
            if kind not in FILE_KINDS:
                raise ChatError(422, "not_a_file", "That message has no file", "ข้อความนี้ไม่มีไฟล์")
            if poster_domain is not None and str(sender).rpartition("@")[2] != poster_domain:
                raise ChatError(
                    403,
                    "not_the_poster",
                    "Only the box of the poster's agency sends a message's file",
                    "เฉพาะเครื่องของหน่วยงานผู้ส่งเท่านั้นที่ส่งไฟล์ของข้อความได้",
                )
            if deleted or blob_id is not None:
                return False
            if json.loads(content).get("size") != len(data):
                raise ChatError(
                    422,
                    "size_mismatch",
                    "The file's size is not the one its message announced",
                    "ขนาดไฟล์ไม่ตรงกับที่ข้อความระบุ",
                )
            return True

        if not await self._w.db.read(check):
            return
        blob_id = await self._w.put_blob(data)

        def attach(conn: Conn) -> bool:
            conn.execute(
                "UPDATE messages SET blob_id = ?, shared = 1"
                " WHERE id = ? AND blob_id IS NULL AND deleted = 0",
                (blob_id, message_id),
            )
            return bool(conn.changes())

        if not await self._w.db.write(attach):
            # Deleted, or attached by a concurrent call, since the check.
            await self._w.delete_blobs([blob_id])

    async def shared_file(self, domain: str, message_id: str) -> bytes:
        """Return a file message's content for a box of *domain* (hub side).

        Only for rooms with a member of that agency now; 404 otherwise, and while the
        poster's box has not sent the content yet.
        """

        def query(conn: Conn) -> str:
            row = conn.execute(
                "SELECT m.blob_id FROM messages m WHERE m.id = ? AND m.deleted = 0"
                " AND EXISTS (SELECT 1 FROM members b WHERE b.room_id = m.room_id"
                " AND substr(b.address, instr(b.address, '@') + 1) = ?)",
                (message_id, domain),
            ).fetchone()
            if row is None or row[0] is None:
                raise not_found("file", "ไฟล์")
            return str(row[0])

        data = await self._w.read_blob(await self._w.db.read(query))
        if data is None:
            raise not_found("file", "ไฟล์")
        return data
