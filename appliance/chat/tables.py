"""The chat tables as every part of the chat domain reads and writes them, inside jobs.

Row shapes (`room_from_row`, `MESSAGE_COLUMNS`…), the reads a check needs
(`member_room`, `visible_message`), and the row changes more than one event makes
(`remove_messages`, `drop_member`…). Every function here takes the job's connection
and runs inside its transaction; none emits an event or knows a rule.

What this is not: which event writes what (`apply.py`), or the SQL schema (`schema.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import apsw

from appliance.chat.errors import ChatError, not_found
from appliance.chat.hours import parse_hours
from appliance.chat.models import MAX_SECRET_TTL, Event, Message, Room, RoomOptions
from appliance.chat.rules import RoomPolicy
from appliance.chat.stream import SCRUBBED_TYPES
from appliance.security.untrusted import display_json, display_text, has_controls
from appliance.store.postgres import ConstraintViolation
from appliance.sync.codec.chat import REPLICATED_TYPES, SNAPSHOT_TYPES, ReplicatedEvent, invalid

T = TypeVar("T")
#: The connection a chat job gets: apsw's on SQLite; on a hub over PostgreSQL a
#: `PgConnection`, which has the same shape (`appliance.store.postgres`).
Conn = apsw.Connection

#: What a violated UNIQUE, CHECK or foreign key raises on either store.
CONSTRAINT_ERRORS: Final = (apsw.ConstraintError, ConstraintViolation)

#: Largest uploaded file (REQUIREMENTS.md-style G-Chat limit).
MAX_UPLOAD = 25 * 1024 * 1024
MAX_MEMBERS = 5_000
MAX_NAME = 200
MAX_PAGE = 500


def room_from_row(conn: Conn, row: Sequence[Any]) -> Room:
    members = frozenset(
        r[0] for r in conn.execute("SELECT address FROM members WHERE room_id = ?", (row[0],))
    )
    return Room(
        id=row[0],
        kind=row[1],
        name=None if row[2] is None else display_text(row[2]),
        owner=row[3],
        created_by=row[4],
        options=RoomOptions.loads(row[5]),
        created_at=row[6],
        deleted=bool(row[7]),
        members=members,
    )


ROOM_COLUMNS = "SELECT id, kind, name, owner, created_by, options, created_at, deleted FROM rooms"

MESSAGE_COLUMNS = (
    "SELECT m.id, m.room_id, m.sender, m.kind, m.content, m.reply_to, m.client_id,"
    " m.created_at, m.edited_at, m.deleted, m.secret, m.expires_at"
)


def message_from_row(row: Sequence[Any], hidden: bool = False) -> Message:
    return Message(
        id=row[0],
        room_id=row[1],
        sender=row[2],
        kind=row[3],
        content=_shown_json(row[4]),
        reply_to=row[5],
        client_id=row[6],
        created_at=row[7],
        edited_at=row[8],
        deleted=bool(row[9]),
        secret=bool(row[10]),
        expires_at=row[11],
        hidden=hidden,
    )


def event_from_row(row: Sequence[Any]) -> Event:
    return Event(
        cursor=row[0],
        id=row[1],
        type=row[2],
        room_id=row[3],
        subject=row[4],
        payload=_shown_json(row[5]),
        created_at=row[6],
    )


EVENT_COLUMNS = "SELECT cursor, id, type, room_id, subject, payload, created_at FROM events"
#: An event as sync sends it: the stored event, its message id and the hub's order.
WIRE_COLUMNS = (
    "SELECT cursor, id, type, room_id, subject, payload, created_at, message_id, room_order"
    " FROM events"
)

#: Readers of a message who no longer see it: a secret message they have read.
GONE_FOR_READER = (
    "(m.secret = 1 AND m.sender <> :me AND EXISTS"
    " (SELECT 1 FROM receipts r WHERE r.message_id = m.id AND r.reader = :me))"
)


def _shown_json(text: str) -> Any:
    """Parse stored JSON, without controls or bidi overrides in any of its strings.

    What is written now is clean already (`clean_text`, and `parse_event` for what
    other boxes send); rows stored before the rule, or by a box without it, are not.
    JSON escapes every C0 control, so a row with neither an escape nor a literal bidi
    control is taken as it is.
    """
    value = json.loads(text)
    if "\\u" in text or has_controls(text):
        return display_json(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_room(conn: Conn, room_id: str) -> Room | None:
    """Return the room *room_id* (deleted too), or None if this box never had it."""
    row = conn.execute(ROOM_COLUMNS + " WHERE id = ?", (room_id,)).fetchone()
    return None if row is None else room_from_row(conn, row)


def member_room(conn: Conn, room_id: str, actor: str) -> Room:
    """Return the room if *actor* is a member of it (and it stands), else 404."""
    room = read_room(conn, room_id)
    if room is None or room.deleted or actor not in room.members:
        raise not_found("room", "ห้องสนทนา")
    return room


def visible_message(conn: Conn, room_id: str, message_id: str, actor: str) -> Message:
    """Return a message of a room *actor* is in, as they see it (404 if gone for them)."""
    member_room(conn, room_id, actor)
    row = conn.execute(
        MESSAGE_COLUMNS + ", EXISTS (SELECT 1 FROM hidden h WHERE h.address = :me"  # noqa: S608 (fixed strings; values are bound)
        " AND h.message_id = m.id) FROM messages m"
        f" WHERE m.id = :id AND m.room_id = :room AND NOT {GONE_FOR_READER}",
        {"me": actor, "id": message_id, "room": room_id},
    ).fetchone()
    if row is None:
        raise not_found("message", "ข้อความ")
    return message_from_row(row, bool(row[12]))


def too_many_members() -> ChatError:
    return ChatError(
        422,
        "too_many_members",
        f"A room holds at most {MAX_MEMBERS} members",
        f"ห้องหนึ่งมีสมาชิกได้ไม่เกิน {MAX_MEMBERS} คน",
    )


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def required(data: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """Return ``data[key]`` if it is a *kind*, else refuse the event as malformed."""
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise invalid(f"{key} must be a {kind.__name__}")
    return value


def check_owner_change(room: Room, actor: str | None, action_en: str, action_th: str) -> None:
    RoomPolicy.check_owner(room, str(actor), action_en, action_th)
    RoomPolicy.check_membership_change(room)


def drop_member(conn: Conn, room_id: str, address: str) -> list[str]:
    """Take *address* out of a room; return the secret messages no longer waiting for them.

    They will never read the room's secret messages now, so nobody waits for them (the
    caller expires those everyone else has read).
    """
    conn.execute("DELETE FROM members WHERE room_id = ? AND address = ?", (room_id, address))
    pending = [
        r[0]
        for r in conn.execute(
            "SELECT s.message_id FROM secret_unread s"
            " JOIN messages m ON m.id = s.message_id WHERE m.room_id = ? AND s.reader = ?",
            (room_id, address),
        )
    ]
    conn.execute(
        "DELETE FROM secret_unread WHERE reader = ? AND message_id IN"
        " (SELECT id FROM messages WHERE room_id = ?)",
        (address, room_id),
    )
    return pending


def message_snapshot(conn: Conn, message_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        MESSAGE_COLUMNS + " FROM messages m WHERE m.id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    snapshot = message_from_row(row).to_json()
    del snapshot["hidden"]  # one reader's view, not the message
    return snapshot


def wire_event(conn: Conn, row: Sequence[Any], *, compact: bool = False) -> ReplicatedEvent:
    """Return a stored event (a `WIRE_COLUMNS` row) as sync sends it.

    *compact* (wire format 2, docs/chat-sync.md): a snapshot that repeats what the
    event already says is left out, so a message's text crosses the line once.
    ``message.posted``: when the row is still exactly the message the payload shows
    (not edited, deleted or secret since), the receiver takes the payload's. A
    non-secret ``message.edited`` needs only the snapshot's sender (who edits: the
    hub checks it); its text is the payload's.
    """
    payload = json.loads(row[5])
    snapshot = None
    if row[2] in SNAPSHOT_TYPES and row[7] is not None:
        snapshot = message_snapshot(conn, row[7])
    if compact and snapshot is not None:
        if row[2] == "message.posted":
            shown = payload.get("message")
            # The payload's copy also says "hidden" (false): one reader's view.
            if (
                isinstance(shown, dict)
                and {key: value for key, value in shown.items() if key != "hidden"} == snapshot
            ):
                snapshot = None
        elif not snapshot.get("secret"):
            snapshot = {"sender": snapshot.get("sender")}
    return ReplicatedEvent(
        id=row[1],
        type=row[2],
        room_id=row[3],
        subject=row[4],
        payload=payload,
        created_at=row[6],
        message=snapshot,
        room_order=row[8],
    )


#: Events that leave their room's row and members as they were (`accept_pushed` keeps
#: the room it read for the next event of the same room): every replicated type but
#: the room.* and member.* ones.
ROOM_KEEPING_TYPES: Final = frozenset(
    kind for kind in REPLICATED_TYPES if not kind.startswith(("room.", "member."))
)


def remember_origin(conn: Conn, origin: str, seq: int) -> None:
    """Remember the highest sequence seen from *origin*.

    A box restored from a backup must not hand out ids it already used.
    """
    conn.execute(
        "INSERT INTO origins (origin, seq) VALUES (?, ?) ON CONFLICT (origin)"
        # Portable upsert: PostgreSQL wants the old row's column qualified.
        " DO UPDATE SET seq = CASE WHEN excluded.seq > origins.seq"
        " THEN excluded.seq ELSE origins.seq END",
        (origin, seq),
    )


def next_room_order(conn: Conn, room_id: str) -> int:
    return int(
        scalar(
            conn,
            "SELECT coalesce(max(room_order), 0) + 1 FROM events"
            " WHERE room_id = ? AND room_order IS NOT NULL",
            (room_id,),
        )
    )


def set_room_order(
    conn: Conn, event_id: str, type_: str, message_id: str | None, room_order: int
) -> None:
    """Give an event (and the message it posted) its room order; it leaves the queue."""
    conn.execute(
        "UPDATE events SET room_order = ?, pending = 0 WHERE id = ?", (room_order, event_id)
    )
    if type_ == "message.posted":
        conn.execute(
            "UPDATE messages SET room_order = ? WHERE id = ?", (room_order, message_id or event_id)
        )


def scalar(conn: Conn, sql: str, params: Sequence[Any] = ()) -> Any:
    """Return the first column of the one row *sql* yields (it must yield one)."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def events_after(conn: Conn, after: int) -> list[Any]:
    return list(
        conn.execute(EVENT_COLUMNS + " WHERE cursor > ? ORDER BY cursor LIMIT 1000", (after,))
    )


def grouped_by(conn: Conn, room_id: str) -> str | None:
    """The owner of a standing group or secret room (what the rank rule applies to)."""
    row = conn.execute(
        "SELECT owner FROM rooms WHERE id = ? AND deleted = 0 AND kind IN ('group', 'secret')",
        (room_id,),
    ).fetchone()
    return None if row is None else str(row[0])


def changed_meanwhile() -> ChatError:
    return ChatError(
        409,
        "room_changed",
        "The room's members changed meanwhile; try again",
        "สมาชิกของห้องเปลี่ยนไประหว่างนี้ กรุณาลองใหม่",
    )


def broadcast_by_everyone(conn: Conn, agency: str) -> bool:
    row = conn.execute(
        "SELECT broadcast_creators FROM agency_settings WHERE agency = ?", (agency,)
    ).fetchone()
    return bool(row and row[0] == "everyone")


def declared_admins(conn: Conn, agency: str) -> set[str] | None:
    """The admins *agency*'s box last declared to this hub; None if it never did."""
    row = conn.execute("SELECT admins FROM agency_settings WHERE agency = ?", (agency,)).fetchone()
    return None if row is None or row[0] is None else set(json.loads(row[0]))


def public_mode(conn: Conn, agency: str) -> bool:
    row = conn.execute(
        "SELECT public_mode FROM agency_settings WHERE agency = ?", (agency,)
    ).fetchone()
    return bool(row and row[0])


def insert_room(conn: Conn, room: Room, pair: str | None) -> None:
    conn.execute(
        "INSERT INTO rooms (id, kind, name, owner, created_by, options, pair, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            room.id,
            room.kind,
            room.name,
            room.owner,
            room.created_by,
            room.options.dumps(),
            pair,
            room.created_at,
        ),
    )
    conn.executemany(
        "INSERT INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
        [(room.id, a, room.created_at) for a in sorted(room.members)],
    )


def restricting_rooms(conn: Conn, a: str, b: str) -> list[Room]:
    """Return the standing no-private-chat rooms both *a* and *b* are members of."""
    rows = conn.execute(
        ROOM_COLUMNS  # noqa: S608 (fixed strings; values are bound)
        + " WHERE deleted = 0 AND id IN (SELECT room_id FROM members WHERE address = ?)"
        " AND id IN (SELECT room_id FROM members WHERE address = ?)",
        (a, b),
    ).fetchall()
    rooms = [room_from_row(conn, r) for r in rows]
    return [r for r in rooms if r.options.no_private_chat]


def remove_content(conn: Conn, message_id: str) -> list[str]:
    """Delete a message's search row, scrub its content from events; return its blob."""
    row = conn.execute("SELECT seq, blob_id FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return []
    conn.execute("DELETE FROM message_text WHERE rowid = ?", (row[0],))
    placeholders = ",".join("?" for _ in SCRUBBED_TYPES)
    conn.execute(
        f"UPDATE events SET payload = ? WHERE message_id = ? AND type IN ({placeholders})",  # noqa: S608 (fixed strings; values are bound)
        (dumps({"message_id": message_id, "removed": True}), message_id, *sorted(SCRUBBED_TYPES)),
    )
    conn.execute("DELETE FROM secret_unread WHERE message_id = ?", (message_id,))
    return [row[1]] if row[1] else []


def remove_messages(conn: Conn, message_ids: Iterable[str]) -> list[str]:
    """Delete messages entirely (row, search row, receipts); return their blobs."""
    blobs: list[str] = []
    for message_id in message_ids:
        blobs += remove_content(conn, message_id)
        for table, column in (("receipts", "message_id"), ("hidden", "message_id")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (message_id,))  # noqa: S608
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    return blobs


def invitation_json(conn: Conn, invitation_id: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, room_id, organiser, title, starts_at, ends_at, place, created_at"
        " FROM invitations WHERE id = ?",
        (invitation_id,),
    ).fetchone()
    answers = [
        {"address": r[0], "answer": r[1], "answered_at": r[2]}
        for r in conn.execute(
            "SELECT address, answer, answered_at FROM invitees WHERE invitation_id = ?"
            " ORDER BY address",
            (invitation_id,),
        )
    ]
    assert row is not None
    keys = ("id", "room_id", "organiser", "title", "starts_at", "ends_at", "place", "created_at")
    return {**dict(zip(keys, row, strict=True)), "invitees": answers}


def posters_not_members() -> ChatError:
    return ChatError(
        422,
        "posters_not_members",
        "Posters of a broadcast room must be its members",
        "ผู้มีสิทธิ์ส่งข้อความในห้องประกาศต้องเป็นสมาชิกของห้อง",
    )


def parse_options(value: Mapping[str, Any], kind: str) -> RoomOptions:
    """Return checked `RoomOptions` for a room of *kind*, or raise ChatError 422."""
    known = {
        "no_private_chat",
        "auto_location",
        "working_hours",
        "posters",
        "secret_ttl",
        "audience",
    }
    unknown = set(value) - known
    if unknown:
        raise ChatError(
            422, "invalid_options", f"unknown room options {sorted(unknown)}", "ตัวเลือกห้องไม่ถูกต้อง"
        )
    for flag in ("no_private_chat", "auto_location"):
        if not isinstance(value.get(flag, False), bool):
            raise ChatError(
                422, "invalid_options", f"{flag} must be true or false", "ตัวเลือกห้องไม่ถูกต้อง"
            )
    hours = value.get("working_hours")
    posters = value.get("posters") or []
    if not isinstance(posters, list) or not all(isinstance(p, str) for p in posters):
        raise ChatError(
            422, "invalid_options", "posters must be a list of addresses", "ตัวเลือกห้องไม่ถูกต้อง"
        )
    if posters and kind != "broadcast":
        raise ChatError(
            422, "invalid_options", "only broadcast rooms have posters", "เฉพาะห้องประกาศที่มีผู้ส่งข้อความ"
        )
    ttl = value.get("secret_ttl", RoomOptions().secret_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 60 <= ttl <= MAX_SECRET_TTL:
        raise ChatError(
            422,
            "invalid_options",
            f"secret_ttl must be 60 to {MAX_SECRET_TTL} seconds",
            f"secret_ttl ต้องอยู่ระหว่าง 60 ถึง {MAX_SECRET_TTL} วินาที",
        )
    audience = value.get("audience") or {}
    agency = audience.get("agency") if isinstance(audience, Mapping) else None
    units = audience.get("units") or [] if isinstance(audience, Mapping) else None
    if (
        not isinstance(audience, Mapping)
        or not (agency is None or isinstance(agency, str))
        or not isinstance(units, list)
        or not all(isinstance(u, str) for u in units)
    ):
        raise ChatError(
            422, "invalid_options", "audience must be {agency, units}", "ตัวเลือกห้องไม่ถูกต้อง"
        )
    if (agency or units) and kind != "broadcast":
        raise ChatError(
            422,
            "invalid_options",
            "only broadcast rooms have an audience",
            "เฉพาะห้องประกาศที่มีกลุ่มผู้รับ",
        )
    return RoomOptions(
        no_private_chat=bool(value.get("no_private_chat", False)),
        auto_location=bool(value.get("auto_location", False)),
        working_hours=None if hours is None else parse_hours(hours),
        posters=frozenset(posters),
        secret_ttl=ttl,
        audience_agency=agency,
        audience_units=tuple(units),
    )


def pending_events(conn: Conn) -> int:
    """Return how many of this box's events wait for the hub's answer."""
    return int(scalar(conn, "SELECT count(*) FROM events WHERE pending = 1"))
