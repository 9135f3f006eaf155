"""The chat domain over its encrypted database: rooms, messages, receipts, events.

Everything users do in chat goes through `Chat`. The rules of each change:

- Every change is one `Database.write` job that reads what it needs, asks
  `RoomPolicy` (pure rules), writes the rows *and* the event recording the change, all
  in one transaction. A refused request raises `ChatError` from inside the job, whose
  SAVEPOINT is then rolled back: a refusal changes nothing. Directory lookups (another
  database) happen before the job; they only ever narrow what the job may do.
- Every event gets a global id ``"{origin box}:{seq}"`` and this box's ``cursor``;
  rooms, messages and invitations take the id of the event that created them.
- After the commit, the writer publishes the new events to the `StreamHub`, so the
  method returns once its change is both fsynced and visible on live streams.
- Chat text is personal data: the database is encrypted as a whole
  (`appliance.store.encrypted`) and file contents are `BlobStore` blobs.

Secret messages: their content is kept only in the ``messages`` row (and its search
row and blob), never in an event payload, so deleting those three deletes it from the
box. For each reader a secret message disappears once they have read it; the box
deletes it when every recipient has read it or its time to live has passed
(`sweep_secrets`, run by `appliance.chat.secrets.SecretSweeper`).

What this is not: HTTP (`appliance.chat.api`), or the rules themselves (`rules.py`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar, cast

import apsw
import trio

from appliance.chat import geo
from appliance.chat.errors import ChatError, not_found
from appliance.chat.hours import parse_hours
from appliance.chat.messages import (
    MAX_LABEL,
    check_media_type,
    clean_text,
    declared_type,
    fold,
    parse_draft,
    parse_location,
    searchable_text,
)
from appliance.chat.models import (
    FILE_KINDS,
    MAX_SECRET_TTL,
    MESSAGE_KINDS,
    ROOM_KINDS,
    Event,
    EventPage,
    Message,
    Room,
    RoomOptions,
)
from appliance.chat.rules import RoomPolicy
from appliance.chat.schema import CHAT_MIGRATIONS
from appliance.chat.stream import SCRUBBED_TYPES, StreamHub, Subscription
from appliance.directory import Directory, User
from appliance.security.untrusted import (
    display_json,
    display_text,
    has_controls,
    inline_type,
    raster_image_type,
)
from appliance.store.blobs import BlobMissing, BlobStore
from appliance.store.database import Database, running
from appliance.store.encrypted import derive_key, open_encrypted_database
from appliance.sync.codec.chat import (
    REJECTED_TYPE,
    REPLICATED_TYPES,
    SNAPSHOT_TYPES,
    HubAnswer,
    ReplicatedEvent,
    invalid,
)

T = TypeVar("T")
Conn = apsw.Connection

_log = logging.getLogger(__name__)

#: HKDF ``info`` of the chat database key.
KEY_INFO = b"edgebox chat database v1"

#: Largest uploaded file (REQUIREMENTS.md-style G-Chat limit).
MAX_UPLOAD = 25 * 1024 * 1024

#: Chat blobs start with this and 16 random bytes before the content. Blobs are
#: content-addressed and the store is shared with mail, so without it a chat file equal
#: to a stored mail (or to another chat file) would share its blob, and deleting a
#: secret message's file would delete someone else's. With it, every upload is a blob
#: of its own that chat alone may delete.
_BLOB_PREFIX = b"edgebox chat blob v1\x00"
_BLOB_SALT = 16

#: Uploads never used in a message are deleted after this long.
UPLOAD_TTL = 24 * 3600

MAX_MEMBERS = 5_000
MAX_NAME = 200
MAX_PAGE = 500
#: Trigram search answers three characters or more from the index; shorter scans.
_TRIGRAM = 3

_EVENT_ID = re.compile(r"[0-9A-Za-z_.-]{1,64}:[1-9][0-9]{0,18}")

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


# --- rows ------------------------------------------------------------------------


def _room_from_row(conn: Conn, row: Sequence[Any]) -> Room:
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


_ROOM_COLUMNS = "SELECT id, kind, name, owner, created_by, options, created_at, deleted FROM rooms"

_MESSAGE_COLUMNS = (
    "SELECT m.id, m.room_id, m.sender, m.kind, m.content, m.reply_to, m.client_id,"
    " m.created_at, m.edited_at, m.deleted, m.secret, m.expires_at"
)


def _message_from_row(row: Sequence[Any], hidden: bool = False) -> Message:
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


def _event_from_row(row: Sequence[Any]) -> Event:
    return Event(
        cursor=row[0],
        id=row[1],
        type=row[2],
        room_id=row[3],
        subject=row[4],
        payload=_shown_json(row[5]),
        created_at=row[6],
    )


_EVENT_COLUMNS = "SELECT cursor, id, type, room_id, subject, payload, created_at FROM events"
#: An event as sync sends it: the stored event, its message id and the hub's order.
_WIRE_COLUMNS = (
    "SELECT cursor, id, type, room_id, subject, payload, created_at, message_id, room_order"
    " FROM events"
)

#: Readers of a message who no longer see it: a secret message they have read.
_GONE_FOR_READER = (
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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _wrap_blob(content: bytes) -> bytes:
    return _BLOB_PREFIX + secrets.token_bytes(_BLOB_SALT) + content


def _unwrap_blob(stored: bytes) -> bytes:
    if not stored.startswith(_BLOB_PREFIX):
        raise ChatError(404, "not_found", "file not found", "ไม่พบไฟล์")
    return stored[len(_BLOB_PREFIX) + _BLOB_SALT :]


class Chat:
    """The chat service of one box; open it with `open_chat`."""

    def __init__(
        self,
        db: Database[Conn],
        blobs: BlobStore,
        directory: Directory,
        box_id: str,
        hub: StreamHub,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._directory = directory
        self.box_id = box_id
        self.hub = hub
        self.clock = clock
        # The highest cursor any job has emitted; a write publishes up to it.
        self._emitted = hub.published
        # Events queued for the hub by jobs, and how many the push listeners heard of.
        self._queued = 0
        self._queued_told = 0
        self._push_listeners: list[Callable[[], None]] = []
        #: Fetches, from the hub, the content of a file message posted on another box
        #: (message id -> bytes; raises ChatError when it cannot). Set by the chat sync
        #: service of an enrolled box; None on the hub and on a box with no hub.
        self.fetch_shared_file: Callable[[str], Awaitable[bytes]] | None = None

    @property
    def directory(self) -> Directory:
        return self._directory

    # --- plumbing ---------------------------------------------------------------

    def _next_id(self, conn: Conn) -> str:
        row = conn.execute(
            "INSERT INTO origins (origin, seq) VALUES (?, 1)"
            " ON CONFLICT (origin) DO UPDATE SET seq = seq + 1 RETURNING seq",
            (self.box_id,),
        ).fetchone()
        assert row is not None  # RETURNING always yields the row it wrote
        return f"{self.box_id}:{row[0]}"

    def _emit(
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
        event_id = event_id or self._next_id(conn)
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
                _dumps(payload),
                now,
                room_order,
                int(pending),
            ),
        )
        self._emitted = max(self._emitted, conn.last_insert_rowid())
        if pending:
            self._queued += 1
        return event_id

    async def _write(self, job: Callable[[Conn], T]) -> T:
        result = await self._db.write(job)
        await self._publish()
        if self._queued != self._queued_told:
            # Live inter-agency chat: the replicator pushes as soon as it hears.
            self._queued_told = self._queued
            for listener in self._push_listeners:
                listener()
        return result

    async def _publish(self) -> None:
        """Hand committed events to live streams, in cursor order (see stream.py)."""
        upto = self._emitted
        if self.hub.published >= upto:
            return
        async with self.hub.lock:
            while self.hub.published < upto:
                after = self.hub.published
                # Inline: one indexed range read of the events just committed; a
                # thread hop here would hold every other publisher behind the lock.
                rows = self._db.read_now(functools.partial(_events_after, after=after))
                if not rows:
                    break  # the job that emitted `upto` was rolled back
                self.hub.publish(_event_from_row(r) for r in rows)

    async def _user(self, address: str) -> User:
        user = await self._directory.user(address)
        RoomPolicy.check_member_candidate(address, user)
        assert user is not None
        return user

    async def _users(self, addresses: Iterable[str]) -> list[User]:
        found: dict[str, User] = {}
        for address in addresses:
            user = await self._user(address)
            found[user.address] = user
        return list(found.values())

    @staticmethod
    def _room(conn: Conn, room_id: str) -> Room | None:
        row = conn.execute(_ROOM_COLUMNS + " WHERE id = ?", (room_id,)).fetchone()
        return None if row is None else _room_from_row(conn, row)

    def _member_room(self, conn: Conn, room_id: str, actor: str) -> Room:
        """Return the room if *actor* is a member of it (and it stands), else 404."""
        room = self._room(conn, room_id)
        if room is None or room.deleted or actor not in room.members:
            raise not_found("room", "ห้องสนทนา")
        return room

    async def _delete_blobs(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            await trio.to_thread.run_sync(self._blobs.delete, blob_id)

    # --- settings ---------------------------------------------------------------

    async def public_mode(self, agency: str) -> bool:
        """Return whether *agency* runs chat in public mode (anyone may talk to anyone)."""
        return await self._db.read(lambda conn: _public_mode(conn, agency))

    async def broadcast_by_everyone(self, agency: str) -> bool:
        """Return whether anyone of *agency* may create broadcast rooms (else admins only)."""
        return await self._db.read(lambda conn: _broadcast_by_everyone(conn, agency))

    async def set_broadcast_creators(self, actor: User, agency: str, everyone: bool) -> None:
        """Let everyone of *agency*, or only its admins, create broadcast rooms (admins only)."""
        await self._check_admin(actor, agency)
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO agency_settings (agency, broadcast_creators) VALUES (?, ?)"
                " ON CONFLICT (agency) DO UPDATE SET"
                " broadcast_creators = excluded.broadcast_creators",
                (agency, "everyone" if everyone else "admins"),
            )
        )

    async def agency_settings(self, agency: str) -> dict[str, Any]:
        """Return what a box declares to the hub with each push: *agency*'s chat settings."""
        return {
            "public_mode": await self.public_mode(agency),
            "broadcast_creators": "everyone" if await self.broadcast_by_everyone(agency)
            else "admins",
            "admins": await self._directory.agency_admins(agency, include_box_wide=True),
        }  # fmt: skip

    async def record_agency_settings(self, agency: str, declared: Any) -> None:
        """Keep the settings *agency*'s box declared (hub side), for checking its events.

        The box is the authority for its own agency's settings, as it is for its
        people's actions; a malformed declaration changes nothing, and one equal to
        what is kept costs a read, not a write (every push carries it).
        """
        if declared == await self.declared_settings(agency):
            return
        if not isinstance(declared, dict):
            return
        public = declared.get("public_mode")
        creators = declared.get("broadcast_creators")
        admins = declared.get("admins")
        if not (
            isinstance(public, bool)
            and creators in ("admins", "everyone")
            and isinstance(admins, list)
            and all(isinstance(a, str) for a in admins)
        ):
            return
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO agency_settings (agency, public_mode, broadcast_creators, admins)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (agency) DO UPDATE SET"
                " public_mode = excluded.public_mode,"
                " broadcast_creators = excluded.broadcast_creators, admins = excluded.admins",
                (agency, int(public), creators, json.dumps(sorted(admins))),
            )
        )

    async def declared_settings(self, agency: str) -> dict[str, Any] | None:
        """Return the settings *agency*'s box last declared to this hub; None if never."""

        def query(conn: Conn) -> dict[str, Any] | None:
            admins = _declared_admins(conn, agency)
            if admins is None:
                return None
            return {
                "public_mode": _public_mode(conn, agency),
                "broadcast_creators": "everyone"
                if _broadcast_by_everyone(conn, agency)
                else "admins",
                "admins": sorted(admins),
            }

        return await self._db.read(query)

    async def members_of(self, room_ids: Iterable[str]) -> set[str]:
        """Return everyone in any of these rooms (the hub looks their ranks up)."""
        wanted = json.dumps(sorted(set(room_ids)))

        def query(conn: Conn) -> set[str]:
            rows = conn.execute(
                "SELECT DISTINCT address FROM members"
                " WHERE room_id IN (SELECT value FROM json_each(?))",
                (wanted,),
            )
            return {row[0] for row in rows}

        return await self._db.read(query)

    async def _check_admin(self, actor: User, agency: str) -> None:
        if not await self._directory.is_admin(actor.address, agency):
            raise ChatError(
                403,
                "not_admin",
                "Only the agency's administrators may change this",
                "เฉพาะผู้ดูแลระบบของหน่วยงานเท่านั้นที่เปลี่ยนค่านี้ได้",
            )

    async def _check_group(self, owner: User, others: Iterable[User]) -> None:
        """Apply the disguised-direct-chat rule to a group or secret room's members."""
        others = [o for o in others if o.address != owner.address]
        seniors = {o.agency_domain for o in others if o.rank > owner.rank}
        public = bool(seniors) and all([await self.public_mode(a) for a in seniors])
        RoomPolicy.check_not_disguised_direct(owner, others, public_mode=public)

    async def _ranked_members(
        self, actor: User, room_id: str
    ) -> tuple[frozenset[str], dict[str, User]] | None:
        """Return a group's members and their directory entries, if *actor* owns it.

        None for any other room: the rank rule of groups does not apply (and a large
        broadcast room is not looked up member by member).
        """
        if await self._db.read(lambda conn: _grouped_by(conn, room_id)) != actor.address:
            return None
        addresses = frozenset(await self.members_of([room_id]))
        found: dict[str, User] = {}
        for address in addresses:
            user = await self._directory.user(address)
            if user is not None:
                found[address] = user
        return addresses, found

    async def set_public_mode(self, actor: User, agency: str, on: bool) -> None:
        """Switch public mode for *agency*; only its administrators may."""
        await self._check_admin(actor, agency)
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO agency_settings (agency, public_mode) VALUES (?, ?)"
                " ON CONFLICT (agency) DO UPDATE SET public_mode = excluded.public_mode",
                (agency, int(on)),
            )
        )

    # --- rooms ------------------------------------------------------------------

    async def create_room(
        self,
        actor: User,
        kind: str,
        *,
        name: str | None = None,
        members: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
    ) -> Room:
        """Create a room owned by *actor*; direct rooms go through `open_direct`."""
        if kind not in ROOM_KINDS:
            raise ChatError(422, "invalid_kind", f"unknown room kind {kind!r}", "ไม่รู้จักประเภทห้องนี้")
        if kind == "direct":
            if len(members) != 1:
                raise ChatError(
                    422,
                    "direct_needs_one",
                    "A direct chat is with exactly one other person",
                    "ห้องสนทนาส่วนตัวต้องมีอีกหนึ่งคนเท่านั้น",
                )
            room, _ = await self.open_direct(actor, members[0])
            return room
        name = clean_text(name, "name", MAX_NAME)
        parsed = parse_options(options or {}, kind)
        if kind == "broadcast":
            RoomPolicy.check_broadcast_creator(
                is_admin=await self._directory.is_admin(actor.address, actor.agency_domain),
                everyone_may=await self.broadcast_by_everyone(actor.agency_domain),
            )
            parsed, audience = await self._audience(actor, parsed)
            wanted = {*audience, *members}
        else:
            wanted = set(members)
        wanted.discard(actor.address)
        users = await self._users(sorted(wanted))
        addresses = {actor.address, *(u.address for u in users)}
        if len(addresses) > MAX_MEMBERS:
            raise ChatError(
                422,
                "too_many_members",
                f"A room holds at most {MAX_MEMBERS} members",
                f"ห้องหนึ่งมีสมาชิกได้ไม่เกิน {MAX_MEMBERS} คน",
            )
        if not parsed.posters <= addresses:
            raise _posters_not_members()
        if kind == "group" or (kind == "secret" and len(users) != 1):
            # (A secret chat with one other person meets the direct rule just below.)
            await self._check_group(actor, users)
        # A secret chat with one other person is a private chat: the same rank rule.
        other = users[0] if kind == "secret" and len(users) == 1 else None
        public = await self.public_mode(other.agency_domain) if other else False
        now = self.clock()

        def job(conn: Conn) -> Room:
            if other is not None:
                RoomPolicy.check_direct(
                    actor,
                    other,
                    public_mode=public,
                    restricting_rooms=_restricting_rooms(conn, actor.address, other.address),
                )
            room_id = self._next_id(conn)
            room = Room(
                room_id,
                kind,
                name,
                actor.address,
                actor.address,
                parsed,
                now,
                members=frozenset(addresses),
            )
            _insert_room(conn, room, pair=None)
            self._emit(
                conn,
                "room.created",
                room_id,
                {"room": room.to_json(), "addresses": sorted(addresses)},
                now,
                event_id=room_id,
            )
            return room

        return await self._write(job)

    async def _audience(self, actor: User, options: RoomOptions) -> tuple[RoomOptions, list[str]]:
        """Return a broadcast room's audience: its agency, or the chosen units of it."""
        agency = options.audience_agency or actor.agency_domain
        if agency != actor.agency_domain and not await self._directory.is_admin(
            actor.address, agency
        ):
            raise ChatError(
                403,
                "foreign_audience",
                "You can broadcast only to your own agency (or one you administer)",
                "ท่านส่งประกาศได้เฉพาะหน่วยงานของท่าน หรือหน่วยงานที่ท่านดูแลเท่านั้น",
            )
        people = await self._directory.users(agency)
        units = set(options.audience_units)
        if units:
            known = {u.name_th for u in await self._directory.units(agency)}
            if not units <= known:
                raise ChatError(
                    422,
                    "unknown_unit",
                    f"no such unit in {agency}: {sorted(units - known)}",
                    f"ไม่พบหน่วยงานย่อยใน {agency}: {sorted(units - known)}",
                )
        audience = [u.address for u in people if not u.disabled and (not units or u.unit in units)]
        return replace(options, audience_agency=agency), audience

    async def open_direct(self, actor: User, other_address: str) -> tuple[Room, bool]:
        """Return the direct room of *actor* and the other person, creating it if allowed.

        The second value says whether it was created now. An existing room is returned
        whoever started it: that is how a junior replies to a senior who wrote first.
        """
        other = await self._user(other_address)
        public = await self.public_mode(other.agency_domain)
        pair = " ".join(sorted((actor.address, other.address)))
        now = self.clock()

        def job(conn: Conn) -> tuple[Room, bool]:
            row = conn.execute(_ROOM_COLUMNS + " WHERE pair = ?", (pair,)).fetchone()
            if row is not None:
                return _room_from_row(conn, row), False
            RoomPolicy.check_direct(
                actor,
                other,
                public_mode=public,
                restricting_rooms=_restricting_rooms(conn, actor.address, other.address),
            )
            room_id = self._next_id(conn)
            addresses = frozenset({actor.address, other.address})
            room = Room(
                room_id,
                "direct",
                None,
                actor.address,
                actor.address,
                RoomOptions(),
                now,
                members=addresses,
            )
            _insert_room(conn, room, pair=pair)
            self._emit(
                conn,
                "room.created",
                room_id,
                {"room": room.to_json(), "addresses": sorted(addresses)},
                now,
                event_id=room_id,
            )
            return room, True

        return await self._write(job)

    async def room(self, actor: User, room_id: str) -> Room:
        """Return a room *actor* is a member of (404 otherwise)."""
        return await self._db.read(lambda conn: self._member_room(conn, room_id, actor.address))

    async def rooms(self, actor: User) -> list[Room]:
        """Return *actor*'s rooms, newest first, without those outside working hours."""
        now = self.clock()

        def query(conn: Conn) -> list[Room]:
            rows = conn.execute(
                _ROOM_COLUMNS + " WHERE deleted = 0 AND id IN"  # noqa: S608 (fixed strings; values are bound)
                " (SELECT room_id FROM members WHERE address = ?) ORDER BY created_at DESC",
                (actor.address,),
            ).fetchall()
            return [_room_from_row(conn, row) for row in rows]

        return [r for r in await self._db.read(query) if RoomPolicy.is_visible(r, now)]

    async def update_room(
        self,
        actor: User,
        room_id: str,
        *,
        name: str | None = None,
        rename: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> Room:
        """Rename the room (when *rename*) and/or change some of its options (owner only)."""
        new_name = clean_text(name, "name", MAX_NAME) if rename else None
        now = self.clock()

        def job(conn: Conn) -> Room:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "change the room", "เปลี่ยนแปลงห้อง")
            if room.kind == "direct":
                RoomPolicy.check_membership_change(room)
            updated = room
            if rename and new_name != room.name:
                updated = replace(updated, name=new_name)
                conn.execute("UPDATE rooms SET name = ? WHERE id = ?", (new_name, room_id))
                self._emit(
                    conn, "room.renamed", room_id, {"name": new_name, "by": actor.address}, now
                )
            if options:
                merged = {**room.options.to_json(), **options}
                # The audience of a broadcast room is fixed at creation.
                merged["audience"] = room.options.to_json()["audience"]
                parsed = parse_options(merged, room.kind)
                if not parsed.posters <= room.members:
                    raise _posters_not_members()
                if parsed != room.options:
                    updated = replace(updated, options=parsed)
                    conn.execute(
                        "UPDATE rooms SET options = ? WHERE id = ?", (parsed.dumps(), room_id)
                    )
                    self._emit(
                        conn,
                        "room.updated",
                        room_id,
                        {"options": parsed.to_json(), "by": actor.address},
                        now,
                    )
            return updated

        return await self._write(job)

    async def delete_room(self, actor: User, room_id: str) -> None:
        """Delete the room and every message in it (owner only)."""
        now = self.clock()

        def job(conn: Conn) -> list[str]:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "delete the room", "ลบห้อง")
            ids = [
                r[0] for r in conn.execute("SELECT id FROM messages WHERE room_id = ?", (room_id,))
            ]
            blobs = _remove_messages(conn, ids)
            conn.execute("UPDATE rooms SET deleted = 1, pair = NULL WHERE id = ?", (room_id,))
            self._emit(conn, "room.deleted", room_id, {"by": actor.address}, now)
            return blobs

        await self._delete_blobs(await self._write(job))

    async def transfer_ownership(self, actor: User, room_id: str, new_owner: str) -> Room:
        """Make *new_owner* (a member) the owner of the room (owner only)."""
        now = self.clock()

        def job(conn: Conn) -> Room:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "transfer ownership", "โอนความเป็นเจ้าของ")
            RoomPolicy.check_transfer(room, new_owner)
            conn.execute("UPDATE rooms SET owner = ? WHERE id = ?", (new_owner, room_id))
            self._emit(
                conn,
                "room.owner_changed",
                room_id,
                {"owner": new_owner, "previous": actor.address},
                now,
            )
            return replace(room, owner=new_owner)

        return await self._write(job)

    async def add_members(self, actor: User, room_id: str, addresses: Sequence[str]) -> Room:
        """Add people to the room at once, without their acceptance (owner only)."""
        users = await self._users(addresses)
        now = self.clock()
        # Ranks are looked up before the write (as every chat job does); the job checks
        # that the room still has the members the rule was checked with.
        ranked = await self._ranked_members(actor, room_id)
        if ranked is not None:
            await self._check_group(actor, [*ranked[1].values(), *users])

        def job(conn: Conn) -> Room:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "add members", "เพิ่มสมาชิก")
            RoomPolicy.check_membership_change(room)
            if ranked is not None and ranked[0] != room.members:
                raise _changed_meanwhile()
            new = sorted({u.address for u in users} - room.members)
            if len(room.members) + len(new) > MAX_MEMBERS:
                raise ChatError(
                    422,
                    "too_many_members",
                    f"A room holds at most {MAX_MEMBERS} members",
                    f"ห้องหนึ่งมีสมาชิกได้ไม่เกิน {MAX_MEMBERS} คน",
                )
            if not new:
                return room
            conn.executemany(
                "INSERT INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
                [(room_id, a, now) for a in new],
            )
            self._emit(conn, "member.added", room_id, {"addresses": new, "by": actor.address}, now)
            return replace(room, members=room.members | set(new))

        return await self._write(job)

    async def join_audiences(self, user: User) -> int:
        """Add *user* to the broadcast rooms whose audience they now belong to.

        A broadcast's audience (an agency, or units of it) is resolved when the room
        is made; staff who join the agency or move unit later are added here, at
        their next sign-in. Returns how many rooms they joined. (Leaving an audience
        does not remove anyone: only the owner removes members.)
        """
        if user.disabled:
            return 0
        now = self.clock()

        def job(conn: Conn) -> int:
            joined = 0
            rows = conn.execute(
                _ROOM_COLUMNS + " WHERE kind = 'broadcast' AND deleted = 0"  # noqa: S608 (fixed strings; values are bound)
                " AND id NOT IN (SELECT room_id FROM members WHERE address = ?)",
                (user.address,),
            ).fetchall()
            for row in rows:
                room = _room_from_row(conn, row)
                options = room.options
                if options.audience_agency != user.agency_domain:
                    continue
                if options.audience_units and user.unit not in options.audience_units:
                    continue
                if len(room.members) >= MAX_MEMBERS:
                    continue
                conn.execute(
                    "INSERT INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
                    (room.id, user.address, now),
                )
                self._emit(conn, "member.added", room.id,
                           {"addresses": [user.address], "by": "audience"}, now)  # fmt: skip
                joined += 1
            return joined

        return await self._write(job)

    async def remove_member(self, actor: User, room_id: str, address: str) -> Room:
        """Remove someone from the room at once (owner only; never the owner)."""
        now = self.clock()
        ranked = await self._ranked_members(actor, room_id)
        if ranked is not None and address in ranked[0]:
            await self._check_group(actor, [u for a, u in ranked[1].items() if a != address])

        def job(conn: Conn) -> tuple[Room, list[str]]:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "remove members", "นำสมาชิกออก")
            RoomPolicy.check_membership_change(room)
            RoomPolicy.check_remove(room, address)
            if ranked is not None and ranked[0] != room.members:
                raise _changed_meanwhile()
            self._emit(
                conn,
                "member.removed",
                room_id,
                {"address": address, "by": actor.address},
                now,
                subject=address,
            )
            blobs = self._expire_if_all_read(conn, _drop_member(conn, room_id, address), now)
            return replace(room, members=room.members - {address}), blobs

        room, blobs = await self._write(job)
        await self._delete_blobs(blobs)
        return room

    async def leave(self, actor: User, room_id: str) -> NoReturn:
        """Refuse: members cannot leave a room (REQUIREMENTS.md §3); 404 if not a member."""
        room = await self.room(actor, room_id)
        RoomPolicy.check_leave(room)
        raise AssertionError("check_leave always refuses")

    # --- messages ---------------------------------------------------------------

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
        blob_id = await trio.to_thread.run_sync(self._blobs.put, _wrap_blob(data))
        now = self.clock()
        upload_id = secrets.token_hex(16)

        def job(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO uploads (id, uploader, blob_id, media_type, name, size, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (upload_id, actor.address, blob_id, media, clean_name, len(data), now),
            )

        try:
            await self._db.write(job)
        except BaseException:
            await self._delete_blobs([blob_id])
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
        now = self.clock()

        def job(conn: Conn) -> tuple[Message, bool]:
            if draft.client_id is not None:
                row = conn.execute(
                    _MESSAGE_COLUMNS + " FROM messages m WHERE m.sender = ? AND m.client_id = ?",
                    (actor.address, draft.client_id),
                ).fetchone()
                if row is not None:
                    existing = _message_from_row(row)
                    if existing.room_id != room_id:
                        raise ChatError(
                            409,
                            "client_id_reused",
                            "This client_id was already used for a message in another room",
                            "client_id นี้ถูกใช้กับข้อความในห้องอื่นแล้ว",
                        )
                    return existing, False
            room = self._member_room(conn, room_id, actor.address)
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
            message_id = self._next_id(conn)
            conn.execute(
                "INSERT INTO messages (id, room_id, sender, kind, content, reply_to, client_id,"
                " blob_id, created_at, secret, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    room_id,
                    actor.address,
                    draft.kind,
                    _dumps(content),
                    draft.reply_to,
                    draft.client_id,
                    blob_id,
                    now,
                    int(secret),
                    expires_at,
                ),
            )
            seq = conn.last_insert_rowid()
            conn.execute(
                "INSERT INTO message_text (rowid, text) VALUES (?, ?)",
                (seq, searchable_text(content)),
            )
            if secret:
                conn.executemany(
                    "INSERT INTO secret_unread (message_id, reader) VALUES (?, ?)",
                    [(message_id, a) for a in sorted(room.members - {actor.address})],
                )
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
                # Secret content never goes into an event (see the module docstring).
                shown["content"] = {}
            self._emit(
                conn,
                "message.posted",
                room_id,
                {"message_id": message_id, "message": shown},
                now,
                message_id=message_id,
                event_id=message_id,
            )
            return message, True

        return await self._write(job)

    def _visible_message(self, conn: Conn, room_id: str, message_id: str, actor: str) -> Message:
        self._member_room(conn, room_id, actor)
        row = conn.execute(
            _MESSAGE_COLUMNS + ", EXISTS (SELECT 1 FROM hidden h WHERE h.address = :me"  # noqa: S608 (fixed strings; values are bound)
            " AND h.message_id = m.id) FROM messages m"
            f" WHERE m.id = :id AND m.room_id = :room AND NOT {_GONE_FOR_READER}",
            {"me": actor, "id": message_id, "room": room_id},
        ).fetchone()
        if row is None:
            raise not_found("message", "ข้อความ")
        return _message_from_row(row, bool(row[12]))

    async def message(self, actor: User, room_id: str, message_id: str) -> Message:
        """Return one message of a room *actor* is in (404 if gone for them)."""
        return await self._db.read(
            lambda conn: self._visible_message(conn, room_id, message_id, actor.address)
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
            self._member_room(conn, room_id, actor.address)
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
                _MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room"  # noqa: S608 (fixed strings; values are bound)
                f" AND m.position < :bound AND NOT {_GONE_FOR_READER} AND NOT EXISTS"
                " (SELECT 1 FROM hidden h WHERE h.address = :me AND h.message_id = m.id)"
                " ORDER BY m.position DESC LIMIT :limit",
                {"room": room_id, "bound": bound, "me": actor.address, "limit": limit},
            ).fetchall()
            return [_message_from_row(r) for r in rows]

        return await self._db.read(query)

    async def edit(self, actor: User, room_id: str, message_id: str, text: str) -> Message:
        """Change the text (or a file's caption, a link's title) of *actor*'s message."""
        now = self.clock()

        def job(conn: Conn) -> Message:
            message = self._visible_message(conn, room_id, message_id, actor.address)
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
            conn.execute(
                "UPDATE messages SET content = ?, edited_at = ? WHERE id = ?",
                (_dumps(content), now, message_id),
            )
            seq = _scalar(conn, "SELECT seq FROM messages WHERE id = ?", (message_id,))
            conn.execute("DELETE FROM message_text WHERE rowid = ?", (seq,))
            conn.execute(
                "INSERT INTO message_text (rowid, text) VALUES (?, ?)",
                (seq, searchable_text(content)),
            )
            shown = {} if message.secret else content
            self._emit(
                conn,
                "message.edited",
                room_id,
                {"message_id": message_id, "content": shown, "edited_at": now},
                now,
                message_id=message_id,
            )
            return replace(message, content=content, edited_at=now)

        return await self._write(job)

    async def delete_message(self, actor: User, room_id: str, message_id: str) -> None:
        """Delete *actor*'s message: a tombstone stays, its content, file and index go."""
        now = self.clock()

        def job(conn: Conn) -> list[str]:
            message = self._visible_message(conn, room_id, message_id, actor.address)
            RoomPolicy.check_author(message, actor.address, "delete", "ลบ")
            blobs = _remove_content(conn, message_id)
            conn.execute(
                "UPDATE messages SET deleted = 1, content = '{}', blob_id = NULL WHERE id = ?",
                (message_id,),
            )
            self._emit(
                conn,
                "message.deleted",
                room_id,
                {"message_id": message_id, "by": actor.address},
                now,
                message_id=message_id,
            )
            return blobs

        await self._delete_blobs(await self._write(job))

    async def mark_read(
        self,
        actor: User,
        room_id: str,
        message_ids: Sequence[str] = (),
        *,
        up_to: str | None = None,
    ) -> list[str]:
        """Record that *actor* read these messages (or all up to one); return the new ones."""
        now = self.clock()

        def job(conn: Conn) -> tuple[list[str], list[str]]:
            self._member_room(conn, room_id, actor.address)
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
            secret: list[str] = []
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
                conn.execute(
                    "INSERT OR IGNORE INTO receipts (message_id, reader, read_at) VALUES (?, ?, ?)",
                    (message_id, actor.address, now),
                )
                if conn.changes():
                    new.append(message_id)
                    if row[2]:
                        secret.append(message_id)
                        conn.execute(
                            "DELETE FROM secret_unread WHERE message_id = ? AND reader = ?",
                            (message_id, actor.address),
                        )
            if new:
                self._emit(
                    conn,
                    "receipt",
                    room_id,
                    {"reader": actor.address, "read_at": now, "message_ids": new},
                    now,
                )
            return new, self._expire_if_all_read(conn, secret, now)

        new, blobs = await self._write(job)
        await self._delete_blobs(blobs)
        return new

    def _expire_if_all_read(self, conn: Conn, message_ids: Iterable[str], now: float) -> list[str]:
        """Delete each secret message nobody is waiting to read any more; return its blobs."""
        blobs: list[str] = []
        for message_id in message_ids:
            if conn.execute(
                "SELECT 1 FROM secret_unread WHERE message_id = ? LIMIT 1", (message_id,)
            ).fetchone():
                continue
            blobs += self._expire(conn, message_id, "read", now)
        return blobs

    def _expire(self, conn: Conn, message_id: str, reason: str, now: float) -> list[str]:
        row = conn.execute("SELECT room_id FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            return []
        blobs = _remove_messages(conn, [message_id])
        self._emit(
            conn,
            "message.expired",
            row[0],
            {"message_id": message_id, "reason": reason},
            now,
            message_id=message_id,
        )
        return blobs

    async def receipts(self, actor: User, room_id: str, message_id: str) -> dict[str, Any]:
        """Return who read a message and when, and which members have not yet."""

        def query(conn: Conn) -> dict[str, Any]:
            message = self._visible_message(conn, room_id, message_id, actor.address)
            room = self._member_room(conn, room_id, actor.address)
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

        return await self._db.read(query)

    async def hide(self, actor: User, room_id: str, message_id: str, hidden: bool) -> None:
        """Hide a message from *actor*'s own view (or show it again); search still finds it."""
        now = self.clock()

        def job(conn: Conn) -> None:
            self._visible_message(conn, room_id, message_id, actor.address)
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
                self._emit(
                    conn,
                    "message.hidden" if hidden else "message.shown",
                    None,
                    {"room_id": room_id, "message_id": message_id},
                    now,
                    subject=actor.address,
                )

        await self._write(job)

    async def file(self, actor: User, room_id: str, message_id: str) -> tuple[bytes, str, str]:
        """Return (content, media type, file name) of a file message, for members only.

        A file posted on another box is fetched from the hub the first time it is
        opened here (`fetch_shared_file`), then kept like a local one.
        """

        def query(conn: Conn) -> tuple[str | None, Message]:
            message = self._visible_message(conn, room_id, message_id, actor.address)
            row = conn.execute(
                "SELECT blob_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None or message.deleted or message.kind not in FILE_KINDS:
                raise not_found("file", "ไฟล์")
            return row[0], message

        blob_id, message = await self._db.read(query)
        if blob_id is None:
            if self.fetch_shared_file is None:
                raise not_found("file", "ไฟล์")
            data = await self.fetch_shared_file(message_id)
            await self.attach_shared_file(message_id, data)
        else:
            stored = await self._read_blob(blob_id)
            if stored is None:
                raise not_found("file", "ไฟล์")
            data = stored
        return data, message.content["media_type"], message.content["name"]

    async def _read_blob(self, blob_id: str) -> bytes | None:
        """Return a chat blob's content, or None if its file is gone."""
        try:
            return _unwrap_blob(await trio.to_thread.run_sync(self._blobs.get, blob_id))
        except BlobMissing:
            return None

    # --- files of file messages between boxes (through the hub) ----------------------
    #
    # An event carries a file message's name, type and size, never its content. The
    # poster's box sends the content to the hub once the hub has ordered the message
    # (`files_to_share` -> `own_file` -> the hub's `attach_shared_file` ->
    # `file_shared`); another box fetches it from the hub when a member opens it
    # (`file` -> `fetch_shared_file` -> the hub's `shared_file`). ``messages.shared``
    # is 1 once the content needs to go nowhere else from this box.

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

        return await self._db.read(query)

    async def own_file(self, message_id: str) -> bytes | None:
        """Return a file message's content, or None if it is gone (deleted, expired)."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT blob_id FROM messages WHERE id = ? AND deleted = 0", (message_id,)
            ).fetchone()
        )
        if row is None or row[0] is None:
            return None
        return await self._read_blob(row[0])

    async def file_shared(self, message_id: str) -> None:
        """Note that the hub holds the file (or never will): stop offering it."""
        await self._db.write(
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

        if not await self._db.read(check):
            return
        blob_id = await trio.to_thread.run_sync(self._blobs.put, _wrap_blob(data))

        def attach(conn: Conn) -> bool:
            conn.execute(
                "UPDATE messages SET blob_id = ?, shared = 1"
                " WHERE id = ? AND blob_id IS NULL AND deleted = 0",
                (blob_id, message_id),
            )
            return bool(conn.changes())

        if not await self._db.write(attach):
            # Deleted, or attached by a concurrent call, since the check.
            await self._delete_blobs([blob_id])

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

        data = await self._read_blob(await self._db.read(query))
        if data is None:
            raise not_found("file", "ไฟล์")
        return data

    async def media(self, actor: User, room_id: str, kind: str, limit: int = 100) -> list[Message]:
        """Return the room's links, images, videos, voice or files, newest first (the tab)."""
        if kind not in ("link", "image", "video", "voice", "file"):
            raise ChatError(422, "invalid_kind", f"no media tab {kind!r}", "ไม่มีแท็บสื่อประเภทนี้")
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[Message]:
            self._member_room(conn, room_id, actor.address)
            rows = conn.execute(
                _MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room AND m.kind = :kind"
                f" AND m.deleted = 0 AND NOT {_GONE_FOR_READER} ORDER BY m.position DESC"
                " LIMIT :limit",
                {"room": room_id, "kind": kind, "me": actor.address, "limit": limit},
            ).fetchall()
            return [_message_from_row(r) for r in rows]

        return await self._db.read(query)

    # --- what the pages show -----------------------------------------------------

    @property
    def head_cursor(self) -> int:
        """The cursor of the last event handed to streams.

        A page that reads this *before* it reads rooms and messages can open the stream
        from it and miss nothing (an event may arrive twice: pages keep the newer).
        """
        return self.hub.published

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
                room = self._room(conn, room_id)
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
                    " hidden h WHERE h.address = :me AND h.message_id = m.id) LIMIT :cap)",
                    {**params, "floor": floor[0] if floor else 0, "cap": MAX_UNREAD},
                ).fetchone()
                unread = counted[0] if counted else 0
                row = conn.execute(
                    _MESSAGE_COLUMNS + " FROM messages m WHERE m.room_id = :room"  # noqa: S608 (fixed strings; values are bound)
                    f" AND NOT {_GONE_FOR_READER} AND NOT EXISTS (SELECT 1 FROM hidden h"
                    " WHERE h.address = :me AND h.message_id = m.id)"
                    " ORDER BY m.position DESC LIMIT 1",
                    params,
                ).fetchone()
                last = None if row is None else _message_from_row(row)
                found.append(RoomActivity(room_id, int(unread), last))
            return found

        return await self._db.read(query)

    async def readers(
        self, actor: User, room_id: str, message_ids: Iterable[str]
    ) -> dict[str, list[tuple[str, float]]]:
        """Return who read each of these messages of a room and when (members only).

        The receipts of a page of messages in one read, for "read by" under one's own
        messages; ids not of this room are left out.
        """
        wanted = list(dict.fromkeys(message_ids))

        def query(conn: Conn) -> dict[str, list[tuple[str, float]]]:
            self._member_room(conn, room_id, actor.address)
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

        return await self._db.read(query)

    async def room_invitations(
        self, actor: User, room_id: str, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Return the room's latest invitations with every answer, newest first (members)."""
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[dict[str, Any]]:
            self._member_room(conn, room_id, actor.address)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM invitations WHERE room_id = ?"
                    " ORDER BY created_at DESC, id DESC LIMIT ?",
                    (room_id, limit),
                )
            ]
            return [_invitation(conn, i) for i in ids]

        return await self._db.read(query)

    async def sharing_location(self, actor: User) -> bool:
        """Return whether *actor* has opted in to sharing their location for alerts."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM locations WHERE address = ?", (actor.address,)
            ).fetchone()
        )
        return row is not None

    # --- search -----------------------------------------------------------------

    async def search(self, actor: User, q: str, limit: int = 50) -> list[Message]:
        """Find messages containing *q* in the rooms *actor* belongs to, newest first.

        Thai substring search: three characters or more use the trigram index, shorter
        queries scan. Messages the user hid are found (flagged ``hidden``); secret
        messages already gone for the user, deleted messages and deleted rooms are not.
        """
        query_text = fold(clean_text(q, "q", 200, required=True) or "")
        limit = max(1, min(limit, MAX_PAGE))
        if len(query_text) >= _TRIGRAM:
            test = "message_text MATCH :q"
            q_value = '"' + query_text.replace('"', '""') + '"'  # one literal phrase
        else:
            test = "instr(t.text, :q) > 0"
            q_value = query_text

        def query(conn: Conn) -> list[Message]:
            rows = conn.execute(
                _MESSAGE_COLUMNS + ", EXISTS (SELECT 1 FROM hidden h WHERE h.address = :me"  # noqa: S608 (fixed strings; values are bound)
                " AND h.message_id = m.id)"
                " FROM message_text t JOIN messages m ON m.seq = t.rowid"
                " JOIN members mb ON mb.room_id = m.room_id AND mb.address = :me"
                " JOIN rooms r ON r.id = m.room_id AND r.deleted = 0"
                f" WHERE {test} AND m.deleted = 0 AND NOT {_GONE_FOR_READER}"
                " ORDER BY m.seq DESC LIMIT :limit",
                {"q": q_value, "me": actor.address, "limit": limit},
            ).fetchall()
            return [_message_from_row(r, bool(r[12])) for r in rows]

        return await self._db.read(query)

    # --- events -----------------------------------------------------------------

    async def events_for(self, address: str, after_cursor: int, limit: int = 200) -> EventPage:
        """Return the events *address* sees after *after_cursor*, in cursor order.

        Visible: every event of a room they are a member of now (new members see the
        room's whole history), and the events about them alone (alerts, their removal,
        their hidden messages). ``EventPage.cursor`` is where the next page starts.
        """
        limit = max(1, min(limit, 1000))
        recent = self.hub.recent(address, after_cursor, limit)
        if recent is not None:
            events, cursor, more = recent
            return EventPage(events, cursor, more)

        def query(conn: Conn) -> EventPage:
            # The head first, then only events up to it: the page's cursor is then
            # exactly what was examined, even while the writer commits more.
            head = _scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
            rows = conn.execute(
                _EVENT_COLUMNS + " WHERE cursor > :after AND cursor <= :head AND"  # noqa: S608 (fixed strings; values are bound)
                " (room_id IN (SELECT room_id FROM members WHERE address = :me)"
                " OR subject = :me) ORDER BY cursor LIMIT :limit",
                {"after": after_cursor, "head": head, "me": address, "limit": limit + 1},
            ).fetchall()
            events = [_event_from_row(r) for r in rows[:limit]]
            if len(rows) > limit:
                return EventPage(events, events[-1].cursor, True)
            return EventPage(events, max(after_cursor, head), False)

        return await self._db.read(query)

    async def wait(self, after_cursor: int, address: str | None = None) -> None:
        """Return once an event above *after_cursor* is published (one *address* may see)."""
        await self.hub.wait(after_cursor, address)

    def subscribe(self, address: str) -> Subscription:
        """Register a live stream of *address* for ephemeral notices (typing)."""
        return self.hub.subscribe(address)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)

    def typing(self, address: str, room_id: str) -> bool:
        """Tell the room's other live members that *address* is typing (not stored)."""
        if room_id not in self.hub.rooms_of(address):
            return False
        self.hub.notify(
            room_id, {"type": "typing", "room_id": room_id, "address": address}, skip=address
        )
        return True

    async def apply_remote(self, event: Mapping[str, Any]) -> bool:
        """Store and apply one event replicated from another box; False if already held.

        The idempotence hook of chat sync (DESIGN.md "Sync"): the event's global id is
        unique in ``events``, so applying one twice has the effect of once. The sync
        replicator applies whole pages with `apply_pulled`; this is the one-event form.
        """
        from appliance.sync.codec.chat import parse_event

        parsed = parse_event(dict(event))
        return await self.apply_pulled([parsed]) == 1

    # --- sync with the hub ----------------------------------------------------------
    #
    # The edge side (appliance.sync.chat): `outbox` -> the hub -> `settle`, then
    # `apply_pulled` with the pull cursor. The hub side (appliance.sync.hub.chat):
    # `accept_pushed`, `hub_pull`, `room_history`. Both sides apply an event with
    # `_materialise`; on the hub it first checks the event against the hub's state (the
    # hub is the authority for membership and room rules), on a box it trusts the hub.

    def add_push_listener(self, listener: Callable[[], None]) -> None:
        """Call *listener* (synchronously) after each write that queued events for the hub."""
        self._push_listeners.append(listener)

    async def outbox(self, limit: int = 200, *, compact: bool = False) -> list[ReplicatedEvent]:
        """Return up to *limit* of this box's events the hub has not answered, oldest first.

        *compact*: leave out the snapshots that repeat the event (`_wire_event`), for a
        hub that said it reads wire format 2.
        """

        def query(conn: Conn) -> list[ReplicatedEvent]:
            rows = conn.execute(
                _WIRE_COLUMNS + " WHERE pending = 1 ORDER BY cursor LIMIT ?", (limit,)
            ).fetchall()
            return [_wire_event(conn, row, compact=compact) for row in rows]

        return await self._db.read(query)

    async def sync_cursor(self, name: str) -> int:
        """Return a durable sync cursor (0 before the first commit of it)."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT value FROM sync_cursors WHERE name = ?", (name,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def sync_backlog(self) -> int:
        """Return how many of this box's events wait for the hub's answer."""
        return int(
            await self._db.read(
                lambda conn: _scalar(conn, "SELECT count(*) FROM events WHERE pending = 1")
            )
        )

    async def settle(self, answers: Sequence[HubAnswer]) -> tuple[int, int]:
        """Commit the hub's answers to pushed events; return (accepted, refused).

        Accepted: the event takes the hub's room order and leaves the queue. Refused:
        it leaves the queue marked with the hub's reason, what it did here is undone
        where that can be done (a refused message is withdrawn, a refused room closed)
        and its author gets a ``sync.rejected`` notice on their stream, in Thai and
        English: never a silent drop. Answers for events not pending are ignored, so
        an answer applied twice (a retry) has the effect of once.
        """
        now = self.clock()

        def job(conn: Conn) -> tuple[int, int, list[str]]:
            accepted = refused = 0
            blobs: list[str] = []
            for answer in answers:
                row = conn.execute(
                    _WIRE_COLUMNS + " WHERE id = ? AND pending = 1", (answer.id,)
                ).fetchone()
                if row is None:
                    continue
                if answer.room_order is not None:
                    _set_room_order(conn, row[1], row[2], row[7], answer.room_order)
                    accepted += 1
                    continue
                event = _wire_event(conn, row)
                refusal = {"code": answer.code, "en": answer.message_en, "th": answer.message_th}
                conn.execute(
                    "UPDATE events SET pending = 0, refusal = ? WHERE id = ?",
                    (_dumps(refusal), answer.id),
                )
                blobs += self._undo_refused(conn, event, answer, now)
                refused += 1
            return accepted, refused, blobs

        accepted, refused, blobs = await self._write(job)
        await self._delete_blobs(blobs)
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
            if conn.execute("SELECT 1 FROM messages WHERE id = ?", (event.id,)).fetchone():
                blobs += _remove_messages(conn, [event.id])
                self._emit(
                    conn,
                    "message.expired",
                    room_id,
                    {"message_id": event.id, "reason": "rejected"},
                    now,
                    message_id=event.id,
                    push=False,
                )
        elif event.type == "room.created":
            room = self._room(conn, room_id)
            if room is not None and not room.deleted:
                ids = [
                    r[0]
                    for r in conn.execute("SELECT id FROM messages WHERE room_id = ?", (room_id,))
                ]
                blobs += _remove_messages(conn, ids)
                conn.execute("UPDATE rooms SET deleted = 1, pair = NULL WHERE id = ?", (room_id,))
                self._emit(
                    conn, "room.deleted", room_id, {"by": "hub", "reason": answer.code}, now,
                    push=False,
                )  # fmt: skip
        elif event.type == "member.added":
            added = event.payload.get("addresses")
            for address in added if isinstance(added, list) else []:
                if (
                    isinstance(address, str)
                    and conn.execute(
                        "SELECT 1 FROM members WHERE room_id = ? AND address = ?",
                        (room_id, address),
                    ).fetchone()
                ):
                    blobs += self._expire_if_all_read(
                        conn, _drop_member(conn, room_id, address), now
                    )
                    self._emit(
                        conn, "member.removed", room_id, {"address": address, "by": "hub"}, now,
                        subject=address, push=False,
                    )  # fmt: skip
        elif event.type == "member.removed":
            address = event.payload.get("address")
            room = self._room(conn, room_id)
            if isinstance(address, str) and room is not None and not room.deleted:
                conn.execute(
                    "INSERT OR IGNORE INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
                    (room_id, address, now),
                )
                if conn.changes():
                    self._emit(
                        conn, "member.added", room_id, {"addresses": [address], "by": "hub"},
                        now, push=False,
                    )  # fmt: skip
        author = event.actor()
        if author is not None:
            self._emit(conn, REJECTED_TYPE, None, notice, now, subject=author, push=False)
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
                        _set_room_order(conn, event.id, held[0], held[1], event.room_order)
                    continue
                conn.execute("SAVEPOINT pulled")
                try:
                    blobs += self._materialise(conn, event, None, rooms)
                except (ChatError, apsw.ConstraintError, KeyError, TypeError, ValueError) as exc:
                    # The hub ordered it, so it stands; what cannot be applied here
                    # (a row this box never had) is skipped, the event still recorded.
                    conn.execute("ROLLBACK TO pulled")
                    _log.warning("chat sync: event %s not applied here: %s", event.id, exc)
                conn.execute("RELEASE pulled")
                if event.type not in _ROOM_KEEPING_TYPES:
                    rooms.pop(event.room_id, None)
                self._record_replicated(conn, event, event.room_order)
                new += 1
            if cursor is not None:
                conn.execute(
                    "INSERT INTO sync_cursors (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    cursor,
                )
            return new, blobs

        new, blobs = await self._write(job)
        await self._delete_blobs(blobs)
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
                room = self._room(conn, event.room_id)
                if room is None:
                    found[event.room_id] = event.room_order
                elif event.type == "member.added" and not any(
                    _domain_of(a) == domain for a in room.members
                ):
                    added = event.payload.get("addresses")
                    if isinstance(added, list) and any(
                        isinstance(a, str) and _domain_of(a) == domain for a in added
                    ):
                        found[event.room_id] = event.room_order
            return list(found.items())

        return await self._db.read(query)

    def _record_replicated(
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
            _keep_origin(conn, origin, int(seq))
        message_id = event.payload.get("message_id")
        if event.type in ("message.posted",):
            message_id = event.id
        self._emit(
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

    # --- the hub's side ---

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
                    last_order[room_id] = _next_room_order(conn, room_id) - 1
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
                        _set_room_order(conn, event.id, held[1], held[2], order)
                    answers.append(HubAnswer(event.id, int(order)))
                    continue
                order = next_order(event.room_id)
                event = replace(event, room_order=order)
                conn.execute("SAVEPOINT pushed")
                try:
                    blobs += self._materialise(conn, event, authority, rooms)
                    self._record_replicated(conn, event, order, keep_origin=False)
                except ChatError as exc:
                    conn.execute("ROLLBACK TO pushed")
                    answers.append(HubAnswer.refused(event.id, exc))
                except apsw.ConstraintError as exc:
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
                if event.type not in _ROOM_KEEPING_TYPES:
                    rooms.pop(event.room_id, None)  # changed (or refused): read it again
            if top_seq:
                _keep_origin(conn, origin, top_seq)
            return answers, blobs

        answers, blobs = await self._write(job)
        await self._delete_blobs(blobs)
        return answers

    def _order_own(self, conn: Conn) -> None:
        """Give this hub's own pending events their room order (it answers for itself)."""
        rows = conn.execute(
            "SELECT id, room_id, type, message_id FROM events WHERE pending = 1 ORDER BY cursor"
        ).fetchall()
        for event_id, room_id, type_, message_id in cast(list[tuple[str, str, str, Any]], rows):
            _set_room_order(conn, event_id, type_, message_id, _next_room_order(conn, room_id))

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
        if await self.sync_backlog():
            await self._db.write(self._order_own)

        def query(conn: Conn) -> tuple[list[ReplicatedEvent], int, bool]:
            head = _scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
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
                _WIRE_COLUMNS + " WHERE cursor > :after AND cursor <= :head"  # noqa: S608 (fixed strings; values are bound)
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
            events = [_wire_event(conn, r, compact=compact) for r in rows[:limit]]
            if len(rows) > limit:
                return events, int(cast(int, rows[limit - 1][0])), True
            return events, max(after, head), False

        return await self._db.read(query)

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
                _WIRE_COLUMNS + " WHERE room_id = ? AND room_order > ? AND room_order < ?"
                " ORDER BY room_order LIMIT ?",
                (room_id, after_order, before_order, limit + 1),
            ).fetchall()
            events = [_wire_event(conn, r, compact=compact) for r in rows[:limit]]
            return events, len(rows) > limit

        return await self._db.read(query)

    # --- applying a replicated event ---

    def _materialise(
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
            room = self._room(conn, event.room_id)
        elif event.room_id in rooms:
            room = rooms[event.room_id]
        else:
            room = rooms[event.room_id] = self._room(conn, event.room_id)
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
        handler = _MATERIALISERS[event.type]
        return handler(self, conn, event, room, authority)

    def _materialise_room(
        self, conn: Conn, event: ReplicatedEvent, authority: Authority | None
    ) -> None:
        data = _field(event.payload, "room", dict)
        addresses = _field(event.payload, "addresses", list)
        kind = data.get("kind")
        if kind not in ROOM_KINDS or event.room_id != event.id:
            raise invalid("room.created names its kind and has the room's id")
        if not addresses or not all(isinstance(a, str) for a in addresses):
            raise invalid("a room has member addresses")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
            raise invalid("name")
        owner = _field(data, "owner", str)
        created_by = _field(data, "created_by", str)
        options = parse_options(_field(data, "options", dict), kind)
        if self._room(conn, event.room_id) is not None:
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
                raise ChatError(
                    422, "too_many_members", f"A room holds at most {MAX_MEMBERS} members",
                    f"ห้องหนึ่งมีสมาชิกได้ไม่เกิน {MAX_MEMBERS} คน",
                )  # fmt: skip
            if kind == "direct" and len(members) != 2:
                raise invalid("a direct room has two members")
            if not options.posters <= members:
                raise _posters_not_members()
            if kind in ("group", "secret"):
                _check_group_at_hub(conn, created_by, members, authority)
            if kind == "broadcast":
                creator = authority.users.get(created_by)
                admins = _declared_admins(conn, authority.domain)
                # A box that never declared its settings (an older version) is not
                # second-guessed: the hub has nothing to check against.
                if creator is not None and admins is not None:
                    RoomPolicy.check_broadcast_creator(
                        is_admin=created_by in admins,
                        everyone_may=_broadcast_by_everyone(conn, authority.domain),
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
        _insert_room(conn, room, pair=pair)

    def _apply_renamed(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        name = event.payload.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
            raise invalid("name")
        if authority is not None:
            _check_owner_change(room, event.actor(), "change the room", "เปลี่ยนแปลงห้อง")
        conn.execute("UPDATE rooms SET name = ? WHERE id = ?", (name, room.id))
        return []

    def _apply_updated(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        merged = {**_field(event.payload, "options", dict)}
        merged["audience"] = room.options.to_json()["audience"]  # fixed at creation
        parsed = parse_options(merged, room.kind)
        if authority is not None:
            _check_owner_change(room, event.actor(), "change the room", "เปลี่ยนแปลงห้อง")
            if not parsed.posters <= room.members:
                raise _posters_not_members()
        conn.execute("UPDATE rooms SET options = ? WHERE id = ?", (parsed.dumps(), room.id))
        return []

    def _apply_deleted_room(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        if authority is not None:
            RoomPolicy.check_owner(room, str(event.actor()), "delete the room", "ลบห้อง")
        ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE room_id = ?", (room.id,))]
        blobs = _remove_messages(conn, ids)
        conn.execute("UPDATE rooms SET deleted = 1, pair = NULL WHERE id = ?", (room.id,))
        return blobs

    def _apply_owner(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        owner = _field(event.payload, "owner", str)
        if authority is not None:
            actor = str(event.actor())
            RoomPolicy.check_owner(room, actor, "transfer ownership", "โอนความเป็นเจ้าของ")
            RoomPolicy.check_transfer(room, owner)
        conn.execute("UPDATE rooms SET owner = ? WHERE id = ?", (owner, room.id))
        return []

    def _apply_added(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        added = _field(event.payload, "addresses", list)
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
                _check_owner_change(room, event.actor(), "add members", "เพิ่มสมาชิก")
                if room.kind in ("group", "secret"):
                    _check_group_at_hub(conn, room.owner, room.members | set(added), authority)
            for address in added:
                RoomPolicy.check_member_candidate(address, authority.users.get(address))
            if len(room.members | set(added)) > MAX_MEMBERS:
                raise ChatError(
                    422, "too_many_members", f"A room holds at most {MAX_MEMBERS} members",
                    f"ห้องหนึ่งมีสมาชิกได้ไม่เกิน {MAX_MEMBERS} คน",
                )  # fmt: skip
        conn.executemany(
            "INSERT OR IGNORE INTO members (room_id, address, added_at) VALUES (?, ?, ?)",
            [(room.id, a, event.created_at) for a in added],
        )
        return []

    def _apply_removed(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        address = _field(event.payload, "address", str)
        if authority is not None:
            _check_owner_change(room, event.actor(), "remove members", "นำสมาชิกออก")
            RoomPolicy.check_remove(room, address)
            if room.kind in ("group", "secret") and address in room.members:
                _check_group_at_hub(conn, room.owner, room.members - {address}, authority)
        if address not in room.members:
            return []
        pending = _drop_member(conn, room.id, address)
        return self._expire_if_all_read(conn, pending, event.created_at)

    def _apply_posted(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
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
        sender = _field(snapshot, "sender", str)
        kind = snapshot.get("kind")
        content = _field(snapshot, "content", dict)
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
            " created_at, edited_at, deleted, secret, expires_at, room_order)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                room.id,
                sender,
                kind,
                _dumps({} if deleted else content),
                reply_to if isinstance(reply_to, str) else None,
                client_id,
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
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> Message | None:
        """Return the message an edit or deletion is about (None: not held here)."""
        message_id = _field(event.payload, "message_id", str)
        row = conn.execute(
            _MESSAGE_COLUMNS + " FROM messages m WHERE m.id = ? AND m.room_id = ?",
            (message_id, room.id),
        ).fetchone()
        if row is None:
            if authority is not None:
                raise not_found("message", "ข้อความ")
            return None
        return _message_from_row(row)

    def _apply_edited(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        message = self._target(conn, event, room, authority)
        if message is None:
            return []
        if authority is not None:
            authority.check_actor(event.actor())
            RoomPolicy.check_author(message, str(event.actor()), "edit", "แก้ไข")
        elif message.deleted:
            return []
        # A secret message's new text travels only in the snapshot, never in the event.
        source = event.message if message.secret and event.message else event.payload
        content = _field(source, "content", dict)
        edited = event.payload.get("edited_at")
        conn.execute(
            "UPDATE messages SET content = ?, edited_at = ? WHERE id = ?",
            (
                _dumps(content),
                float(edited) if isinstance(edited, (int, float)) else event.created_at,
                message.id,
            ),
        )
        seq = _scalar(conn, "SELECT seq FROM messages WHERE id = ?", (message.id,))
        conn.execute("DELETE FROM message_text WHERE rowid = ?", (seq,))
        conn.execute(
            "INSERT INTO message_text (rowid, text) VALUES (?, ?)",
            (seq, searchable_text(content)),
        )
        return []

    def _apply_deleted_message(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        message = self._target(conn, event, room, authority)
        if message is None:
            return []
        if authority is not None:
            RoomPolicy.check_author(message, str(event.actor()), "delete", "ลบ")
        elif message.deleted:
            return []
        blobs = _remove_content(conn, message.id)
        conn.execute(
            "UPDATE messages SET deleted = 1, content = '{}', blob_id = NULL WHERE id = ?",
            (message.id,),
        )
        return blobs

    def _apply_receipt(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        reader = _field(event.payload, "reader", str)
        ids = _field(event.payload, "message_ids", list)
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
        return self._expire_if_all_read(conn, secret, event.created_at)

    def _apply_invitation(
        self, conn: Conn, event: ReplicatedEvent, room: Room, authority: Authority | None
    ) -> list[str]:
        invitation = _field(event.payload, "invitation", dict)
        organiser = _field(invitation, "organiser", str)
        title = _field(invitation, "title", str)
        starts_at = _field(invitation, "starts_at", str)
        ends_at, place = invitation.get("ends_at"), invitation.get("place")
        invitees = [
            i.get("address") for i in _field(invitation, "invitees", list) if isinstance(i, dict)
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
        invitation_id = _field(event.payload, "invitation_id", str)
        address = _field(event.payload, "address", str)
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

    # --- invitations ------------------------------------------------------------

    async def invite(
        self,
        actor: User,
        room_id: str,
        *,
        title: str,
        starts_at: str,
        ends_at: str | None = None,
        place: str | None = None,
        invitees: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Invite room members to an event (title, time, place); they accept or decline."""
        title_ = clean_text(title, "title", MAX_LABEL, required=True)
        place_ = clean_text(place, "place", MAX_LABEL)
        start = _parse_time(starts_at, "starts_at")
        if ends_at is not None and _parse_time(ends_at, "ends_at") < start:
            raise ChatError(
                422, "invalid_ends_at", "ends_at is before starts_at", "เวลาสิ้นสุดอยู่ก่อนเวลาเริ่ม"
            )
        now = self.clock()

        def job(conn: Conn) -> dict[str, Any]:
            room = self._member_room(conn, room_id, actor.address)
            RoomPolicy.check_post(room, actor.address, now, has_location=True)
            chosen = set(room.members) if invitees is None else set(invitees)
            chosen.discard(actor.address)
            if not chosen <= room.members:
                raise ChatError(
                    422,
                    "invitee_not_member",
                    "Invite only members of the room",
                    "เชิญได้เฉพาะสมาชิกของห้องเท่านั้น",
                )
            invitation_id = self._next_id(conn)
            conn.execute(
                "INSERT INTO invitations (id, room_id, organiser, title, starts_at, ends_at,"
                " place, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (invitation_id, room_id, actor.address, title_, starts_at, ends_at, place_, now),
            )
            conn.executemany(
                "INSERT INTO invitees (invitation_id, address) VALUES (?, ?)",
                [(invitation_id, a) for a in sorted(chosen)],
            )
            invitation = _invitation(conn, invitation_id)
            self._emit(
                conn,
                "invitation.created",
                room_id,
                {"invitation": invitation},
                now,
                event_id=invitation_id,
            )
            return invitation

        return await self._write(job)

    async def answer(self, actor: User, invitation_id: str, answer: str) -> dict[str, Any]:
        """Accept or decline an invitation (invitees only; a later answer replaces one)."""
        if answer not in ("accept", "decline"):
            raise ChatError(
                422,
                "invalid_answer",
                "answer is accept or decline",
                "ตอบได้เฉพาะ accept หรือ decline",
            )
        now = self.clock()

        def job(conn: Conn) -> dict[str, Any]:
            row = conn.execute(
                "SELECT room_id FROM invitations WHERE id = ?", (invitation_id,)
            ).fetchone()
            if row is None:
                raise not_found("invitation", "คำเชิญ")
            self._member_room(conn, row[0], actor.address)
            conn.execute(
                "UPDATE invitees SET answer = ?, answered_at = ?"
                " WHERE invitation_id = ? AND address = ?",
                (answer, now, invitation_id, actor.address),
            )
            if not conn.changes():
                raise ChatError(
                    403, "not_invited", "You are not invited to this event", "ท่านไม่ได้รับเชิญในกิจกรรมนี้"
                )
            self._emit(
                conn,
                "invitation.answered",
                row[0],
                {
                    "invitation_id": invitation_id,
                    "address": actor.address,
                    "answer": answer,
                    "answered_at": now,
                },
                now,
            )
            return _invitation(conn, invitation_id)

        return await self._write(job)

    async def invitation(self, actor: User, invitation_id: str) -> dict[str, Any]:
        """Return an invitation with every invitee's answer (members of its room only)."""

        def query(conn: Conn) -> dict[str, Any]:
            row = conn.execute(
                "SELECT room_id FROM invitations WHERE id = ?", (invitation_id,)
            ).fetchone()
            if row is None:
                raise not_found("invitation", "คำเชิญ")
            self._member_room(conn, row[0], actor.address)
            return _invitation(conn, invitation_id)

        return await self._db.read(query)

    # --- location and alerts ----------------------------------------------------

    async def set_location(
        self, actor: User, share: bool, location: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Opt in (with the current location) or out of sharing one's location for alerts.

        Opting out deletes the stored location: nothing of it stays on the box.
        """
        point = None
        if share:
            if location is None:
                raise ChatError(
                    422,
                    "location_required",
                    "Sharing needs a location",
                    "การแบ่งปันตำแหน่งต้องระบุตำแหน่ง",
                )
            point = parse_location(location)
        now = self.clock()

        def job(conn: Conn) -> None:
            if point is None:
                conn.execute("DELETE FROM locations WHERE address = ?", (actor.address,))
            else:
                conn.execute(
                    "INSERT INTO locations (address, lat, lon, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (address) DO UPDATE SET lat = excluded.lat,"
                    " lon = excluded.lon, updated_at = excluded.updated_at",
                    (actor.address, point.lat, point.lon, now),
                )

        await self._db.write(job)
        return {"share": point is not None, "updated_at": now if point else None}

    async def send_alert(
        self,
        actor: User,
        *,
        location: Mapping[str, Any],
        radius_m: float,
        text: str,
        room_id: str | None = None,
    ) -> int:
        """Alert the people whose last shared location is within *radius_m* of a point.

        An agency administrator alerts their agency's people; a room's owner alerts the
        room's members. Each recipient gets a personal ``alert`` event. Returns how
        many were alerted (never who: where people are is theirs to keep).
        """
        centre = parse_location(location)
        body = clean_text(text, "text", 2_000, required=True)
        if (
            isinstance(radius_m, bool)
            or not isinstance(radius_m, (int, float))
            or not (0 < radius_m <= 1_000_000)
        ):
            raise ChatError(
                422,
                "invalid_radius",
                "radius_m must be from 1 m to 1,000 km",
                "รัศมีต้องอยู่ระหว่าง 1 เมตร ถึง 1,000 กิโลเมตร",
            )
        audience: set[str] | None = None
        if room_id is None:
            if not await self._directory.is_admin(actor.address, actor.agency_domain):
                raise ChatError(
                    403,
                    "not_admin",
                    "Only an agency administrator or a room's owner (for its members) sends alerts",
                    "เฉพาะผู้ดูแลระบบของหน่วยงาน หรือเจ้าของห้อง (ถึงสมาชิกในห้อง) เท่านั้นที่ส่งการแจ้งเตือนได้",
                )
            audience = {
                u.address
                for u in await self._directory.users(actor.agency_domain)
                if not u.disabled
            }
        now = self.clock()

        def job(conn: Conn) -> int:
            people = audience
            if room_id is not None:
                room = self._member_room(conn, room_id, actor.address)
                RoomPolicy.check_owner(
                    room, actor.address, "send alerts to this room", "ส่งการแจ้งเตือนถึงห้องนี้"
                )
                people = set(room.members)
            assert people is not None
            alert_id = self._next_id(conn)
            sent = 0
            located: list[Any] = conn.execute("SELECT address, lat, lon FROM locations").fetchall()
            for address, lat, lon in located:
                if (
                    address in people
                    and address != actor.address
                    and geo.within(lat, lon, centre.lat, centre.lon, radius_m)
                ):
                    self._emit(
                        conn,
                        "alert",
                        None,
                        {
                            "alert_id": alert_id,
                            "from": actor.address,
                            "text": body,
                            "location": centre.to_json(),
                            "radius_m": radius_m,
                        },
                        now,
                        subject=address,
                    )
                    sent += 1
            return sent

        return await self._write(job)

    # --- stickers ---------------------------------------------------------------

    async def _check_agency_admin(self, actor: User, agency: str) -> None:
        if not await self._directory.is_admin(actor.address, agency):
            raise ChatError(
                403,
                "not_admin",
                "Only the agency's administrators manage sticker packs",
                "เฉพาะผู้ดูแลระบบของหน่วยงานเท่านั้นที่จัดการชุดสติกเกอร์ได้",
            )

    async def create_sticker_pack(
        self, actor: User, name: str, agency: str | None = None
    ) -> dict[str, Any]:
        """Create an empty sticker pack for *agency* (its administrators only)."""
        agency = agency or actor.agency_domain
        clean = clean_text(name, "name", MAX_LABEL, required=True)
        await self._check_agency_admin(actor, agency)
        pack_id = secrets.token_hex(8)
        now = self.clock()
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO sticker_packs (id, agency, name, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (pack_id, agency, clean, actor.address, now),
            )
        )
        return {"id": pack_id, "agency": agency, "name": clean, "stickers": []}

    async def add_sticker(
        self, actor: User, pack_id: str, name: str, data: bytes, media_type: str
    ) -> dict[str, Any]:
        """Add an image to a sticker pack (administrators of the pack's agency only)."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT agency FROM sticker_packs WHERE id = ?", (pack_id,)
            ).fetchone()
        )
        if row is None:
            raise not_found("sticker pack", "ชุดสติกเกอร์")
        await self._check_agency_admin(actor, row[0])
        clean = clean_text(name or "sticker", "name", MAX_LABEL, required=True)
        if len(data) > 1024 * 1024:
            raise ChatError(
                413, "too_large", "A sticker is at most 1 MB", "สติกเกอร์มีขนาดได้ไม่เกิน 1 MB"
            )
        # Stickers are shown inline to every user of the agency: only a raster image
        # whose bytes say so. No SVG: it is a document that can run script.
        declared_type(media_type)
        media_type = raster_image_type(data) or ""
        if not media_type:
            raise ChatError(
                422,
                "invalid_sticker_image",
                "A sticker must be a PNG, JPEG, GIF or WebP image (SVG is not accepted)",
                "สติกเกอร์ต้องเป็นภาพ PNG, JPEG, GIF หรือ WebP (ไม่รับ SVG)",
            )
        blob_id = await trio.to_thread.run_sync(self._blobs.put, _wrap_blob(data))
        sticker_id = secrets.token_hex(8)
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO stickers (id, pack_id, name, blob_id, media_type)"
                " VALUES (?, ?, ?, ?, ?)",
                (sticker_id, pack_id, clean, blob_id, media_type),
            )
        )
        return {"id": sticker_id, "pack_id": pack_id, "name": clean, "media_type": media_type}

    async def sticker_packs(self, actor: User) -> list[dict[str, Any]]:
        """Return the sticker packs of *actor*'s agency with their stickers."""

        def query(conn: Conn) -> list[dict[str, Any]]:
            packs = []
            for pack_id, agency, name in conn.execute(
                "SELECT id, agency, name FROM sticker_packs WHERE agency = ? ORDER BY created_at",
                (actor.agency_domain,),
            ).fetchall():
                stickers = [
                    {"id": s[0], "pack_id": pack_id, "name": s[1], "media_type": s[2]}
                    for s in conn.execute(
                        "SELECT id, name, media_type FROM stickers WHERE pack_id = ?"
                        " ORDER BY name, id",  # WITHOUT ROWID: no insertion order
                        (pack_id,),
                    )
                ]
                packs.append({"id": pack_id, "agency": agency, "name": name, "stickers": stickers})
            return packs

        return await self._db.read(query)

    async def sticker_image(self, sticker_id: str) -> tuple[bytes, str]:
        """Return a sticker's image and media type (any signed-in user: stickers travel)."""
        row = await self._db.read(
            lambda conn: conn.execute(
                "SELECT blob_id, media_type FROM stickers WHERE id = ?", (sticker_id,)
            ).fetchone()
        )
        if row is None:
            raise not_found("sticker", "สติกเกอร์")
        stored = await trio.to_thread.run_sync(self._blobs.get, row[0])
        return _unwrap_blob(stored), row[1]

    # --- directory for chat -------------------------------------------------------

    async def find_people(self, q: str | None, limit: int = 50) -> list[User]:
        """Return enabled users of the box whose name, address, unit or position has *q*."""
        needle = fold(q or "")
        found = []
        for user in await self._directory.users():
            if user.disabled:
                continue
            hay = fold(
                " ".join(
                    x or ""
                    for x in (user.name_th, user.name_en, user.address, user.unit, user.position)
                )
            )
            if needle in hay:
                found.append(user)
                if len(found) >= limit:
                    break
        return found

    # --- the secret sweeper -------------------------------------------------------

    async def sweep_secrets(self, now: float | None = None) -> int:
        """Delete secret messages past their TTL (and stale uploads); return how many messages."""
        at = self.clock() if now is None else now

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
                blobs += self._expire(conn, message_id, "ttl", at)
            stale = conn.execute(
                "SELECT id, blob_id FROM uploads WHERE created_at <= ?", (at - UPLOAD_TTL,)
            ).fetchall()
            for upload_id, blob_id in stale:
                conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
                blobs.append(str(blob_id))
            return len(expired), blobs

        count, blobs = await self._write(job)
        await self._delete_blobs(blobs)
        return count


_Materialiser = Callable[["Chat", Conn, ReplicatedEvent, Room, "Authority | None"], list[str]]

#: How each replicated event type (other than room.created) is applied.
_MATERIALISERS: dict[str, _Materialiser] = {
    "room.renamed": Chat._apply_renamed,
    "room.updated": Chat._apply_updated,
    "room.deleted": Chat._apply_deleted_room,
    "room.owner_changed": Chat._apply_owner,
    "member.added": Chat._apply_added,
    "member.removed": Chat._apply_removed,
    "message.posted": Chat._apply_posted,
    "message.edited": Chat._apply_edited,
    "message.deleted": Chat._apply_deleted_message,
    "receipt": Chat._apply_receipt,
    "invitation.created": Chat._apply_invitation,
    "invitation.answered": Chat._apply_answered,
}


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


# --- helpers run inside jobs -------------------------------------------------------


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _field(data: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """Return ``data[key]`` if it is a *kind*, else refuse the event as malformed."""
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise invalid(f"{key} must be a {kind.__name__}")
    return value


def _check_owner_change(room: Room, actor: str | None, action_en: str, action_th: str) -> None:
    RoomPolicy.check_owner(room, str(actor), action_en, action_th)
    RoomPolicy.check_membership_change(room)


def _drop_member(conn: Conn, room_id: str, address: str) -> list[str]:
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


def _message_snapshot(conn: Conn, message_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        _MESSAGE_COLUMNS + " FROM messages m WHERE m.id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    snapshot = _message_from_row(row).to_json()
    del snapshot["hidden"]  # one reader's view, not the message
    return snapshot


def _wire_event(conn: Conn, row: Sequence[Any], *, compact: bool = False) -> ReplicatedEvent:
    """Return a stored event (a `_WIRE_COLUMNS` row) as sync sends it.

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
        snapshot = _message_snapshot(conn, row[7])
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
_ROOM_KEEPING_TYPES: Final = frozenset(
    kind for kind in REPLICATED_TYPES if not kind.startswith(("room.", "member."))
)


def _keep_origin(conn: Conn, origin: str, seq: int) -> None:
    """Remember the highest sequence seen from *origin*.

    A box restored from a backup must not hand out ids it already used.
    """
    conn.execute(
        "INSERT INTO origins (origin, seq) VALUES (?, ?) ON CONFLICT (origin)"
        " DO UPDATE SET seq = max(seq, excluded.seq)",
        (origin, seq),
    )


def _next_room_order(conn: Conn, room_id: str) -> int:
    return int(
        _scalar(
            conn,
            "SELECT coalesce(max(room_order), 0) + 1 FROM events"
            " WHERE room_id = ? AND room_order IS NOT NULL",
            (room_id,),
        )
    )


def _set_room_order(
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


def _scalar(conn: Conn, sql: str, params: Sequence[Any] = ()) -> Any:
    """Return the first column of the one row *sql* yields (it must yield one)."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _events_after(conn: Conn, after: int) -> list[Any]:
    return list(
        conn.execute(_EVENT_COLUMNS + " WHERE cursor > ? ORDER BY cursor LIMIT 1000", (after,))
    )


def _grouped_by(conn: Conn, room_id: str) -> str | None:
    """The owner of a standing group or secret room (what the rank rule applies to)."""
    row = conn.execute(
        "SELECT owner FROM rooms WHERE id = ? AND deleted = 0 AND kind IN ('group', 'secret')",
        (room_id,),
    ).fetchone()
    return None if row is None else str(row[0])


def _check_group_at_hub(
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
    public = bool(seniors) and all(_public_mode(conn, agency) for agency in seniors)
    RoomPolicy.check_not_disguised_direct(user, others, public_mode=public)


def _changed_meanwhile() -> ChatError:
    return ChatError(
        409,
        "room_changed",
        "The room's members changed meanwhile; try again",
        "สมาชิกของห้องเปลี่ยนไประหว่างนี้ กรุณาลองใหม่",
    )


def _broadcast_by_everyone(conn: Conn, agency: str) -> bool:
    row = conn.execute(
        "SELECT broadcast_creators FROM agency_settings WHERE agency = ?", (agency,)
    ).fetchone()
    return bool(row and row[0] == "everyone")


def _declared_admins(conn: Conn, agency: str) -> set[str] | None:
    """The admins *agency*'s box last declared to this hub; None if it never did."""
    row = conn.execute("SELECT admins FROM agency_settings WHERE agency = ?", (agency,)).fetchone()
    return None if row is None or row[0] is None else set(json.loads(row[0]))


def _public_mode(conn: Conn, agency: str) -> bool:
    row = conn.execute(
        "SELECT public_mode FROM agency_settings WHERE agency = ?", (agency,)
    ).fetchone()
    return bool(row and row[0])


def _insert_room(conn: Conn, room: Room, pair: str | None) -> None:
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


def _restricting_rooms(conn: Conn, a: str, b: str) -> list[Room]:
    """Return the standing no-private-chat rooms both *a* and *b* are members of."""
    rows = conn.execute(
        _ROOM_COLUMNS  # noqa: S608 (fixed strings; values are bound)
        + " WHERE deleted = 0 AND id IN (SELECT room_id FROM members WHERE address = ?)"
        " AND id IN (SELECT room_id FROM members WHERE address = ?)",
        (a, b),
    ).fetchall()
    rooms = [_room_from_row(conn, r) for r in rows]
    return [r for r in rooms if r.options.no_private_chat]


def _remove_content(conn: Conn, message_id: str) -> list[str]:
    """Delete a message's search row, scrub its content from events; return its blob."""
    row = conn.execute("SELECT seq, blob_id FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return []
    conn.execute("DELETE FROM message_text WHERE rowid = ?", (row[0],))
    placeholders = ",".join("?" for _ in SCRUBBED_TYPES)
    conn.execute(
        "UPDATE events SET payload = json_object('message_id', message_id, 'removed', json('true'))"  # noqa: S608 (fixed strings; values are bound)
        f" WHERE message_id = ? AND type IN ({placeholders})",
        (message_id, *sorted(SCRUBBED_TYPES)),
    )
    conn.execute("DELETE FROM secret_unread WHERE message_id = ?", (message_id,))
    return [row[1]] if row[1] else []


def _remove_messages(conn: Conn, message_ids: Iterable[str]) -> list[str]:
    """Delete messages entirely (row, search row, receipts); return their blobs."""
    blobs: list[str] = []
    for message_id in message_ids:
        blobs += _remove_content(conn, message_id)
        for table, column in (("receipts", "message_id"), ("hidden", "message_id")):
            conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (message_id,))  # noqa: S608
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    return blobs


def _invitation(conn: Conn, invitation_id: str) -> dict[str, Any]:
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


def _parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ChatError(
            422,
            f"invalid_{field}",
            f"{field} must be an ISO 8601 date-time with a time zone",
            f"{field} ต้องเป็นวันเวลาแบบ ISO 8601 พร้อมเขตเวลา",
        )
    return parsed


def _posters_not_members() -> ChatError:
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


# --- opening -----------------------------------------------------------------------


@asynccontextmanager
async def open_chat(
    path: Path,
    data_key: bytes,
    blobs: BlobStore,
    directory: Directory,
    box_id: str,
    *,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Chat]:
    """Open (creating, migrating) the chat database at *path* and yield the `Chat`."""
    key = derive_key(data_key, KEY_INFO)
    writer, connect_reader = await trio.to_thread.run_sync(
        open_encrypted_database, path, key, CHAT_MIGRATIONS
    )

    def load(conn: Conn) -> tuple[int, list[tuple[str, str]]]:
        head = _scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
        members = [(r[0], r[1]) for r in conn.execute("SELECT address, room_id FROM members")]
        return int(head), members

    head, memberships = await trio.to_thread.run_sync(load, writer)
    db: Database[Conn] = Database(path, writer, connect_reader=connect_reader)
    async with running(db):
        yield Chat(db, blobs, directory, box_id, StreamHub(head, memberships), clock=clock)
