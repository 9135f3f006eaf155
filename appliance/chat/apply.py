"""Applying an event to the chat tables: the one write path of every event type.

A local command checks its rules, then `EventApplier.commit` records its event and
makes its change with the same function that applies the event when it arrives
from another box (`EventApplier.materialise`, on the hub and when a box pulls).
So a local post and a replicated post reach ``messages`` through `_apply_posted`
alone, a local and a replicated removal through `_apply_removed`, and so on.

The order in one transaction: a local change records its event first (it has
chosen the event's id already) and its effects follow, e.g. the
``message.expired`` a removal causes comes after the ``member.removed``; a
replicated event is applied first and recorded after (`record_replicated`), so
an event the hub refuses is never recorded.

What this is not: the rules a local request meets (the parts that call `commit`
check them with `RoomPolicy` first), or sync's bookkeeping (`edge_sync.py`,
`hub_sync.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.chat.errors import ChatError, not_found
from appliance.chat.messages import MAX_LABEL, searchable_text
from appliance.chat.models import MESSAGE_KINDS, ROOM_KINDS, Message, Room
from appliance.chat.replication import ReplicatedEvent, invalid
from appliance.chat.rules import RoomPolicy
from appliance.chat.tables import (
    MAX_MEMBERS,
    MAX_NAME,
    MESSAGE_COLUMNS,
    Conn,
    broadcast_by_everyone,
    check_owner_change,
    declared_admins,
    drop_member,
    dumps,
    insert_room,
    message_from_row,
    parse_options,
    posters_not_members,
    public_mode,
    read_room,
    remember_origin,
    remove_content,
    remove_messages,
    required,
    scalar,
    too_many_members,
)
from appliance.chat.writer import ChatWriter
from appliance.directory import User


@dataclass(frozen=True)
class Authority:
    """What the hub checks a box's pushed events against (`Chat.accept_pushed`).

    A box acts only for its own agency's people: every actor must be a user of
    *domain* in the hub's directory. *users* holds the directory entries of everyone
    the batch names (looked up before the write, as every chat job does).
    """

    domain: str
    users: Mapping[str, User | None]

    def check_actor(self, address: str | None) -> None:
        user = self.users.get(address) if address else None
        if user is None or user.disabled or user.agency_domain != self.domain:
            raise ChatError(
                403,
                "not_your_agency",
                f"{address} is not a user of {self.domain}; a box acts only for its own people",
                f"{address} ไม่ใช่ผู้ใช้ของ {self.domain} เครื่องแต่ละหน่วยงานทำรายการได้เฉพาะผู้ใช้ของตนเท่านั้น",
            )


# --- the rank rule with the hub's directory -------------------------------------


def check_group_at_hub(
    conn: Conn, owner: str, members: Iterable[str], authority: Authority
) -> None:
    """The disguised-direct-chat rule on the hub, with the ranks of its directory.

    Public mode is the one each senior's box last declared (`record_agency_settings`).
    """
    user = authority.users.get(owner)
    if user is None:
        return  # check_actor refuses an unknown actor; an unknown owner is not ours
    others = [u for a in members if a != owner and (u := authority.users.get(a)) is not None]
    seniors = {o.agency_domain for o in others if o.rank > user.rank}
    public = bool(seniors) and all(public_mode(conn, agency) for agency in seniors)
    RoomPolicy.check_not_disguised_direct(user, others, public_mode=public)


class EventApplier:
    """Apply events to the chat tables, local and replicated alike (see the module doc)."""

    def __init__(self, writer: ChatWriter) -> None:
        self._w = writer

    # --- local changes -------------------------------------------------------------

    def commit(
        self,
        conn: Conn,
        type_: str,
        room_id: str,
        payload: dict[str, Any],
        now: float,
        *,
        room: Room | None = None,
        subject: str | None = None,
        message_id: str | None = None,
        event_id: str | None = None,
        message: dict[str, Any] | None = None,
        blob_id: str | None = None,
        push: bool = True,
    ) -> tuple[str, list[str]]:
        """Record a local change's event, then apply it as a replicated one is applied.

        The caller has checked the change against the rules and read *room* (the room
        as it stands before the change; None only for ``room.created``). *message*
        is the message row for the event types that carry one (`SNAPSHOT_TYPES`),
        e.g. a secret message's content, which its event never holds; *blob_id*
        the stored file of a posted file message. Returns the event's id and the
        blobs to delete after the commit.
        """
        event_id = self._w.emit(
            conn, type_, room_id, payload, now,
            subject=subject, message_id=message_id, event_id=event_id, push=push,
        )  # fmt: skip
        event = ReplicatedEvent(event_id, type_, room_id, subject, payload, now, message=message)
        if type_ == "room.created":
            self._materialise_room(conn, event, None)
            return event_id, []
        assert room is not None, type_
        if type_ == "message.posted":
            return event_id, self._apply_posted(conn, event, room, None, blob_id=blob_id)
        return event_id, _APPLIERS[type_](self, conn, event, room, None)

    def expire_if_all_read(self, conn: Conn, message_ids: Iterable[str], now: float) -> list[str]:
        """Delete each secret message nobody is waiting to read any more; return its blobs."""
        blobs: list[str] = []
        for message_id in message_ids:
            if conn.execute(
                "SELECT 1 FROM secret_unread WHERE message_id = ? LIMIT 1", (message_id,)
            ).fetchone():
                continue
            blobs += self.expire(conn, message_id, "read", now)
        return blobs

    def expire(self, conn: Conn, message_id: str, reason: str, now: float) -> list[str]:
        """Delete a message entirely (read, past its time, refused); return its blobs."""
        row = conn.execute("SELECT room_id FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return []
        # Every box works a message's expiry out for itself: the event is not
        # replicated (`REPLICATED_TYPES`), so it is applied here alone.
        self._w.emit(
            conn,
            "message.expired",
            row[0],
            {"message_id": message_id, "reason": reason},
            now,
            message_id=message_id,
        )
        return remove_messages(conn, [message_id])

    # --- replicated events ------------------------------------------------------------

    def record_replicated(
        self,
        conn: Conn,
        event: ReplicatedEvent,
        room_order: int | None,
        *,
        keep_origin: bool = True,
    ) -> None:
        """Store a replicated event (never pushed again) and keep its origin's sequence.

        Without *keep_origin* the caller keeps the origin's sequence itself (once for a
        whole batch). A posted message took *room_order* when `_apply_posted` wrote it.
        """
        if keep_origin:
            origin, _, seq = event.id.rpartition(":")
            remember_origin(conn, origin, int(seq))
        message_id = event.payload.get("message_id")
        if event.type in ("message.posted",):
            message_id = event.id
        self._w.emit(
            conn,
            event.type,
            event.room_id,
            event.payload,
            event.created_at,
            subject=event.subject,
            message_id=message_id if isinstance(message_id, str) else None,
            event_id=event.id,
            push=False,
            room_order=room_order,
        )

    def materialise(
        self,
        conn: Conn,
        event: ReplicatedEvent,
        authority: Authority | None,
        rooms: dict[str, Room | None] | None = None,
    ) -> list[str]:
        """Apply *event*'s effect to rooms and messages; return blobs to delete.

        With an *authority* (the hub) the event is first checked against this
        database's state with the same `RoomPolicy` rules a local request meets, and
        a refusal raises `ChatError`. Without one (a box applying what the hub
        ordered) it is applied as far as this box holds what it refers to. *rooms*
        caches rooms read within one job: the caller drops a room from it after an
        event that may change it.
        """
        p = event.payload
        if event.type == "room.created":
            self._materialise_room(conn, event, authority)
            return []
        if rooms is None:
            room = read_room(conn, event.room_id)
        elif event.room_id in rooms:
            room = rooms[event.room_id]
        else:
            room = rooms[event.room_id] = read_room(conn, event.room_id)
        if room is None or room.deleted:
            if authority is not None:
                raise not_found("room", "ห้องสนทนา")
            return []
        actor = event.actor()
        if authority is not None:
            if event.type == "member.added" and p.get("by") == "audience":
                pass  # checked below: staff joining a broadcast's audience themselves
            elif event.type == "message.edited":
                pass  # the actor is the message's sender, checked below
            else:
                authority.check_actor(actor)
                if actor not in room.members:
                    raise not_found("room", "ห้องสนทนา")
        return _APPLIERS[event.type](self, conn, event, room, authority)

    def _materialise_room(
        self, conn: Conn, event: ReplicatedEvent, authority: Authority | None
    ) -> None:
        data = required(event.payload, "room", dict)
        addresses = required(event.payload, "addresses", list)
        kind = data.get("kind")
        if kind not in ROOM_KINDS or event.room_id != event.id:
            raise invalid("room.created names its kind and has the room's id")
        if not addresses or not all(isinstance(a, str) for a in addresses):
            raise invalid("a room has member addresses")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
            raise invalid("name")
        owner = required(data, "owner", str)
        created_by = required(data, "created_by", str)
        options = parse_options(required(data, "options", dict), kind)
        if read_room(conn, event.room_id) is not None:
            return
        members = frozenset(addresses)
        pair = " ".join(sorted(members)) if kind == "direct" else None
        if authority is not None:
            authority.check_actor(created_by)
            for address in sorted(members):
                RoomPolicy.check_member_candidate(address, authority.users.get(address))
            if owner != created_by or created_by not in members:
                raise invalid("a new room is owned by its creator, who is a member")
            if len(members) > MAX_MEMBERS:
                raise too_many_members()
            if kind == "direct" and len(members) != 2:
                raise invalid("a direct room has two members")
            if not options.posters <= members:
                raise posters_not_members()
            if kind in ("group", "secret"):
                check_group_at_hub(conn, created_by, members, authority)
            if kind == "broadcast":
                creator = authority.users.get(created_by)
                admins = declared_admins(conn, authority.domain)
                # A box that never declared its settings (an older version) is not
                # second-guessed: the hub has nothing to check against.
                if creator is not None and admins is not None:
                    RoomPolicy.check_broadcast_creator(
                        is_admin=created_by in admins,
                        everyone_may=broadcast_by_everyone(conn, authority.domain),
                    )
        if (
            pair is not None
            and conn.execute("SELECT 1 FROM rooms WHERE pair = ?", (pair,)).fetchone()
        ):
            if authority is not None:
                raise ChatError(
                    409,
                    "direct_exists",
                    "These two people already have a direct chat; use that one",
                    "ทั้งสองท่านมีห้องสนทนาส่วนตัวอยู่แล้ว กรุณาใช้ห้องนั้น",
                )
            pair = None  # this box's own duplicate will be refused by the hub
        created_at = data.get("created_at")
        room = Room(
            event.room_id,
            kind,
            name,
            owner,
            created_by,
            options,
            float(created_at) if isinstance(created_at, (int, float)) else event.created_at,
            members=members,
        )
        insert_room(conn, room, pair=pair)

    def _apply_renamed(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        name = event.payload.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
            raise invalid("name")
        if authority is not None:
            check_owner_change(room, event.actor(), "change the room", "เปลี่ยนแปลงห้อง")
        conn.execute("UPDATE rooms SET name = ? WHERE id = ?", (name, room.id))
        return []

    def _apply_updated(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        merged = {**required(event.payload, "options", dict)}
        merged["audience"] = room.options.to_json()["audience"]  # fixed at creation
        parsed = parse_options(merged, room.kind)
        if authority is not None:
            check_owner_change(room, event.actor(), "change the room", "เปลี่ยนแปลงห้อง")
            if not parsed.posters <= room.members:
                raise posters_not_members()
        conn.execute("UPDATE rooms SET options = ? WHERE id = ?", (parsed.dumps(), room.id))
        return []

    def _apply_deleted_room(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        if authority is not None:
            RoomPolicy.check_owner(room, str(event.actor()), "delete the room", "ลบห้อง")
        ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE room_id = ?", (room.id,))]
        blobs = remove_messages(conn, ids)
        conn.execute("UPDATE rooms SET deleted = 1, pair = NULL WHERE id = ?", (room.id,))
        return blobs

    def _apply_owner(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        owner = required(event.payload, "owner", str)
        if authority is not None:
            actor = str(event.actor())
            RoomPolicy.check_owner(room, actor, "transfer ownership", "โอนความเป็นเจ้าของ")
            RoomPolicy.check_transfer(room, owner)
        conn.execute("UPDATE rooms SET owner = ? WHERE id = ?", (owner, room.id))
        return []

    def _apply_added(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        added = required(event.payload, "addresses", list)
        if not all(isinstance(a, str) for a in added):
            raise invalid("addresses")
        if authority is not None:
            if event.payload.get("by") == "audience":
                # Staff join a broadcast's audience at sign-in, on their own box.
                for address in added:
                    authority.check_actor(address)
                    user = authority.users.get(address)
                    assert user is not None  # check_actor found them
                    if room.kind != "broadcast" or room.options.audience_agency != (
                        user.agency_domain
                    ):
                        raise ChatError(
                            403, "not_audience", "Not in this broadcast's audience",
                            "ไม่อยู่ในกลุ่มผู้รับของห้องประกาศนี้",
                        )  # fmt: skip
            else:
                check_owner_change(room, event.actor(), "add members", "เพิ่มสมาชิก")
                if room.kind in ("group", "secret"):
                    check_group_at_hub(conn, room.owner, room.members | set(added), authority)
            for address in added:
                RoomPolicy.check_member_candidate(address, authority.users.get(address))
            if len(room.members | set(added)) > MAX_MEMBERS:
                raise too_many_members()
        conn.executemany(
            "INSERT OR IGNORE INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
            [(room.id, a, event.created_at) for a in added],
        )
        return []

    def _apply_removed(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        address = required(event.payload, "address", str)
        if authority is not None:
            check_owner_change(room, event.actor(), "remove members", "นำสมาชิกออก")
            RoomPolicy.check_remove(room, address)
            if room.kind in ("group", "secret") and address in room.members:
                check_group_at_hub(conn, room.owner, room.members - {address}, authority)
        if address not in room.members:
            return []
        pending = drop_member(conn, room.id, address)
        return self.expire_if_all_read(conn, pending, event.created_at)

    def _apply_posted(
        self,
        conn: Conn,
        event: ReplicatedEvent,
        room: Room,
        authority: Authority | None,
        *,
        blob_id: str | None = None,
    ) -> list[str]:
        snapshot = event.message
        if snapshot is None:
            shown = event.payload.get("message")
            snapshot = shown if isinstance(shown, dict) else None
        if snapshot is None or "sender" not in snapshot:
            # Scrubbed before it was pushed (removed with its room, or a secret message
            # gone): there is nothing left to apply, only its place in the order.
            if authority is not None and event.payload.get("removed") is not True:
                raise invalid("message.posted without its message")
            return []
        sender = required(snapshot, "sender", str)
        kind = snapshot.get("kind")
        content = required(snapshot, "content", dict)
        if kind not in MESSAGE_KINDS:
            raise invalid("message kind")
        deleted = bool(snapshot.get("deleted"))
        secret = room.kind == "secret"
        if authority is not None:
            authority.check_actor(sender)
            if sender not in room.members:
                raise not_found("room", "ห้องสนทนา")
            if not deleted:
                RoomPolicy.check_post(
                    room, sender, event.created_at, has_location="location" in content
                )
        reply_to = snapshot.get("reply_to")
        client_id = snapshot.get("client_id")
        if (
            not isinstance(client_id, str)
            or conn.execute(
                "SELECT 1 FROM messages WHERE sender = ? AND client_id = ?", (sender, client_id)
            ).fetchone()
        ):
            client_id = None
        expires = snapshot.get("expires_at")
        expires_at = (
            (float(expires) if isinstance(expires, (int, float)) else event.created_at
             + room.options.secret_ttl) if secret else None
        )  # fmt: skip
        edited = snapshot.get("edited_at")
        conn.execute(
            "INSERT INTO messages (id, room_id, sender, kind, content, reply_to, client_id,"
            " blob_id, created_at, edited_at, deleted, secret, expires_at, room_order)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                room.id,
                sender,
                kind,
                dumps({} if deleted else content),
                reply_to if isinstance(reply_to, str) else None,
                client_id,
                # A file posted here (a replicated one's content comes later, if asked).
                blob_id,
                event.created_at,
                float(edited) if isinstance(edited, (int, float)) else None,
                int(deleted),
                int(secret),
                expires_at,
                # The hub's order (pulled) or the one the hub is giving it (pushed).
                event.room_order,
            ),
        )
        if not deleted:
            conn.execute(
                "INSERT INTO message_text (rowid, text) VALUES (?, ?)",
                (conn.last_insert_rowid(), searchable_text(content)),
            )
            if secret:
                conn.executemany(
                    "INSERT INTO secret_unread (message_id, reader) VALUES (?, ?)",
                    [(event.id, a) for a in sorted(room.members - {sender})],
                )
        return []

    def _target(
        self,
        conn: Conn,
        event: ReplicatedEvent,
        room: Room,
        authority: Authority | None,
        action: tuple[str, str],
    ) -> Message | None:
        """Return the message an edit or deletion (*action*) is about, once checked.

        With an *authority* only its sender may, and only while it stands; without,
        None when there is nothing to change here (not held, or deleted already).
        """
        message_id = required(event.payload, "message_id", str)
        row = conn.execute(
            MESSAGE_COLUMNS + " FROM messages m WHERE m.id = ? AND m.room_id = ?",
            (message_id, room.id),
        ).fetchone()
        if row is None:
            if authority is not None:
                raise not_found("message", "ข้อความ")
            return None
        message = message_from_row(row)
        if authority is not None:
            authority.check_actor(event.actor())
            RoomPolicy.check_author(message, str(event.actor()), *action)
        elif message.deleted:
            return None
        return message

    def _apply_edited(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        message = self._target(conn, event, room, authority, ("edit", "แก้ไข"))
        if message is None:
            return []
        # A secret message's new text travels only in the snapshot, never in the event.
        source = event.message if message.secret and event.message else event.payload
        content = required(source, "content", dict)
        edited = event.payload.get("edited_at")
        conn.execute(
            "UPDATE messages SET content = ?, edited_at = ? WHERE id = ?",
            (
                dumps(content),
                float(edited) if isinstance(edited, (int, float)) else event.created_at,
                message.id,
            ),
        )
        seq = scalar(conn, "SELECT seq FROM messages WHERE id = ?", (message.id,))
        conn.execute("DELETE FROM message_text WHERE rowid = ?", (seq,))
        conn.execute(
            "INSERT INTO message_text (rowid, text) VALUES (?, ?)",
            (seq, searchable_text(content)),
        )
        return []

    def _apply_deleted_message(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        message = self._target(conn, event, room, authority, ("delete", "ลบ"))
        if message is None:
            return []
        blobs = remove_content(conn, message.id)
        conn.execute(
            "UPDATE messages SET deleted = 1, content = '{}', blob_id = NULL WHERE id = ?",
            (message.id,),
        )
        return blobs

    def _apply_receipt(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        reader = required(event.payload, "reader", str)
        ids = required(event.payload, "message_ids", list)
        read_at = event.payload.get("read_at")
        at = float(read_at) if isinstance(read_at, (int, float)) else event.created_at
        secret: list[str] = []
        for message_id in ids:
            if not isinstance(message_id, str):
                raise invalid("message_ids")
            row = conn.execute(
                "SELECT sender, deleted, secret FROM messages WHERE id = ? AND room_id = ?",
                (message_id, room.id),
            ).fetchone()
            if row is None or row[0] == reader or row[1]:
                continue
            conn.execute(
                "INSERT OR IGNORE INTO receipts (message_id, reader, read_at) VALUES (?, ?, ?)",
                (message_id, reader, at),
            )
            if conn.changes() and row[2]:
                secret.append(message_id)
                conn.execute(
                    "DELETE FROM secret_unread WHERE message_id = ? AND reader = ?",
                    (message_id, reader),
                )
        return self.expire_if_all_read(conn, secret, event.created_at)

    def _apply_invitation(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        invitation = required(event.payload, "invitation", dict)
        organiser = required(invitation, "organiser", str)
        title = required(invitation, "title", str)
        starts_at = required(invitation, "starts_at", str)
        ends_at, place = invitation.get("ends_at"), invitation.get("place")
        invitees = [
            i.get("address") for i in required(invitation, "invitees", list) if isinstance(i, dict)
        ]
        if not all(isinstance(a, str) for a in invitees) or invitation.get("id") != event.id:
            raise invalid("invitation")
        if authority is not None:
            RoomPolicy.check_post(room, organiser, event.created_at, has_location=True)
            if not set(invitees) <= room.members:
                raise ChatError(
                    422, "invitee_not_member", "Invite only members of the room",
                    "เชิญได้เฉพาะสมาชิกของห้องเท่านั้น",
                )  # fmt: skip
        conn.execute(
            "INSERT OR IGNORE INTO invitations (id, room_id, organiser, title, starts_at,"
            " ends_at, place, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                room.id,
                organiser,
                title[:MAX_LABEL],
                starts_at,
                ends_at if isinstance(ends_at, str) else None,
                place if isinstance(place, str) else None,
                event.created_at,
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO invitees (invitation_id, address) VALUES (?, ?)",
            [(event.id, a) for a in invitees],
        )
        return []

    def _apply_answered(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        invitation_id = required(event.payload, "invitation_id", str)
        address = required(event.payload, "address", str)
        answer = event.payload.get("answer")
        if answer not in ("accept", "decline"):
            raise invalid("answer")
        answered = event.payload.get("answered_at")
        conn.execute(
            "UPDATE invitees SET answer = ?, answered_at = ? WHERE invitation_id = ?"
            " AND address = ? AND invitation_id IN (SELECT id FROM invitations WHERE room_id = ?)",
            (
                answer,
                float(answered) if isinstance(answered, (int, float)) else event.created_at,
                invitation_id,
                address,
                room.id,
            ),
        )
        if authority is not None and not conn.changes():
            raise ChatError(
                403, "not_invited", "You are not invited to this event", "ท่านไม่ได้รับเชิญในกิจกรรมนี้"
            )
        return []


_Applier = Callable[[EventApplier, Conn, ReplicatedEvent, Room, "Authority | None"], list[str]]

#: How each replicated event type (other than room.created) is applied, here and on
#: every box that receives it.
_APPLIERS: dict[str, _Applier] = {
    "room.renamed": EventApplier._apply_renamed,
    "room.updated": EventApplier._apply_updated,
    "room.deleted": EventApplier._apply_deleted_room,
    "room.owner_changed": EventApplier._apply_owner,
    "member.added": EventApplier._apply_added,
    "member.removed": EventApplier._apply_removed,
    "message.posted": EventApplier._apply_posted,
    "message.edited": EventApplier._apply_edited,
    "message.deleted": EventApplier._apply_deleted_message,
    "receipt": EventApplier._apply_receipt,
    "invitation.created": EventApplier._apply_invitation,
    "invitation.answered": EventApplier._apply_answered,
}
