"""Rooms: creating, finding, changing and deleting them, and who is in them.

Each change checks `RoomPolicy` inside its write job with the rows it reads, then
`EventApplier.commit` records the event and makes the change (the code that
applies the same event arriving from another box). Directory lookups (another
database) happen before the job; they only ever narrow what the job may do.

What this is not: messages (`posts.py`) or the rules themselves (`rules.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn

from appliance.chat.apply import EventApplier
from appliance.chat.errors import ChatError
from appliance.chat.messages import clean_text
from appliance.chat.models import ROOM_KINDS, Room, RoomKind, RoomOptions
from appliance.chat.rules import RoomPolicy
from appliance.chat.settings import AgencySettings
from appliance.chat.tables import (
    MAX_MEMBERS,
    MAX_NAME,
    ROOM_COLUMNS,
    Conn,
    changed_meanwhile,
    grouped_by,
    member_room,
    parse_options,
    posters_not_members,
    restricting_rooms,
    room_from_row,
    too_many_members,
)
from appliance.chat.writer import ChatWriter
from appliance.directory import Directory, User


class Rooms:
    """The rooms of one box's chat database."""

    def __init__(
        self,
        writer: ChatWriter,
        applier: EventApplier,
        directory: Directory,
        settings: AgencySettings,
    ) -> None:
        self._w = writer
        self._apply = applier
        self._directory = directory
        self._settings = settings

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
                everyone_may=await self._settings.broadcast_by_everyone(actor.agency_domain),
            )
            parsed, audience = await self._audience(actor, parsed)
            wanted = {*audience, *members}
        else:
            wanted = set(members)
        wanted.discard(actor.address)
        users = await self._users(sorted(wanted))
        addresses = {actor.address, *(u.address for u in users)}
        if len(addresses) > MAX_MEMBERS:
            raise too_many_members()
        if not parsed.posters <= addresses:
            raise posters_not_members()
        if kind == "group" or (kind == "secret" and len(users) != 1):
            # (A secret chat with one other person meets the direct rule just below.)
            await self._check_group(actor, users)
        # A secret chat with one other person is a private chat: the same rank rule.
        other = users[0] if kind == "secret" and len(users) == 1 else None
        public = await self._settings.public_mode(other.agency_domain) if other else False
        now = self._w.clock()

        def job(conn: Conn) -> Room:
            if other is not None:
                _check_direct(conn, actor, other, public)
            return self._create(conn, actor, kind, name, parsed, addresses, now)

        return await self._w.write(job)

    def _create(
        self,
        conn: Conn,
        actor: User,
        kind: RoomKind,
        name: str | None,
        options: RoomOptions,
        addresses: set[str],
        now: float,
    ) -> Room:
        """Make a room owned by *actor* (rules checked): its event, applied; return it."""
        room_id = self._w.next_id(conn)
        room = Room(
            room_id,
            kind,
            name,
            actor.address,
            actor.address,
            options,
            now,
            members=frozenset(addresses),
        )
        self._apply.commit(
            conn,
            "room.created",
            room_id,
            {"room": room.to_json(), "addresses": sorted(addresses)},
            now,
            event_id=room_id,
        )
        return room

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
        public = await self._settings.public_mode(other.agency_domain)
        pair = " ".join(sorted((actor.address, other.address)))
        now = self._w.clock()

        def job(conn: Conn) -> tuple[Room, bool]:
            row = conn.execute(ROOM_COLUMNS + " WHERE pair = ?", (pair,)).fetchone()
            if row is not None:
                return room_from_row(conn, row), False
            _check_direct(conn, actor, other, public)
            # Applying the event keeps the pair of a direct room (`rooms.pair`).
            addresses = {actor.address, other.address}
            room = self._create(conn, actor, "direct", None, RoomOptions(), addresses, now)
            return room, True

        return await self._w.write(job)

    async def room(self, actor: User, room_id: str) -> Room:
        """Return a room *actor* is a member of (404 otherwise)."""
        return await self._w.db.read(lambda conn: member_room(conn, room_id, actor.address))

    async def rooms(self, actor: User) -> list[Room]:
        """Return *actor*'s rooms, newest first, without those outside working hours."""
        now = self._w.clock()

        def query(conn: Conn) -> list[Room]:
            rows = conn.execute(
                ROOM_COLUMNS + " WHERE deleted = 0 AND id IN"  # noqa: S608 (fixed strings; values are bound)
                " (SELECT room_id FROM members WHERE address = ?) ORDER BY created_at DESC",
                (actor.address,),
            ).fetchall()
            return [room_from_row(conn, row) for row in rows]

        return [r for r in await self._w.db.read(query) if RoomPolicy.is_visible(r, now)]

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
        now = self._w.clock()

        def job(conn: Conn) -> Room:
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "change the room", "เปลี่ยนแปลงห้อง")
            if room.kind == "direct":
                RoomPolicy.check_membership_change(room)
            updated = room
            if rename and new_name != room.name:
                updated = replace(updated, name=new_name)
                self._apply.commit(
                    conn, "room.renamed", room_id, {"name": new_name, "by": actor.address}, now,
                    room=room,
                )  # fmt: skip
            if options:
                merged = {**room.options.to_json(), **options}
                # The audience of a broadcast room is fixed at creation.
                merged["audience"] = room.options.to_json()["audience"]
                parsed = parse_options(merged, room.kind)
                if not parsed.posters <= room.members:
                    raise posters_not_members()
                if parsed != room.options:
                    updated = replace(updated, options=parsed)
                    self._apply.commit(
                        conn,
                        "room.updated",
                        room_id,
                        {"options": parsed.to_json(), "by": actor.address},
                        now,
                        room=room,
                    )
            return updated

        return await self._w.write(job)

    async def delete_room(self, actor: User, room_id: str) -> None:
        """Delete the room and every message in it (owner only)."""
        now = self._w.clock()

        def job(conn: Conn) -> list[str]:
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "delete the room", "ลบห้อง")
            _, blobs = self._apply.commit(
                conn, "room.deleted", room_id, {"by": actor.address}, now, room=room
            )
            return blobs

        await self._w.delete_blobs(await self._w.write(job))

    async def transfer_ownership(self, actor: User, room_id: str, new_owner: str) -> Room:
        """Make *new_owner* (a member) the owner of the room (owner only)."""
        now = self._w.clock()

        def job(conn: Conn) -> Room:
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "transfer ownership", "โอนความเป็นเจ้าของ")
            RoomPolicy.check_transfer(room, new_owner)
            self._apply.commit(
                conn,
                "room.owner_changed",
                room_id,
                {"owner": new_owner, "previous": actor.address},
                now,
                room=room,
            )
            return replace(room, owner=new_owner)

        return await self._w.write(job)

    async def add_members(self, actor: User, room_id: str, addresses: Sequence[str]) -> Room:
        """Add people to the room at once, without their acceptance (owner only)."""
        users = await self._users(addresses)
        now = self._w.clock()
        # Ranks are looked up before the write (as every chat job does); the job checks
        # that the room still has the members the rule was checked with.
        ranked = await self._ranked_members(actor, room_id)
        if ranked is not None:
            await self._check_group(actor, [*ranked[1].values(), *users])

        def job(conn: Conn) -> Room:
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "add members", "เพิ่มสมาชิก")
            RoomPolicy.check_membership_change(room)
            if ranked is not None and ranked[0] != room.members:
                raise changed_meanwhile()
            new = sorted({u.address for u in users} - room.members)
            if len(room.members) + len(new) > MAX_MEMBERS:
                raise too_many_members()
            if not new:
                return room
            self._apply.commit(
                conn, "member.added", room_id, {"addresses": new, "by": actor.address}, now,
                room=room,
            )  # fmt: skip
            return replace(room, members=room.members | set(new))

        return await self._w.write(job)

    async def join_audiences(self, user: User) -> int:
        """Add *user* to the broadcast rooms whose audience they now belong to.

        A broadcast's audience (an agency, or units of it) is resolved when the room
        is made; staff who join the agency or move unit later are added here, at
        their next sign-in. Returns how many rooms they joined. (Leaving an audience
        does not remove anyone: only the owner removes members.)
        """
        if user.disabled:
            return 0
        now = self._w.clock()

        def job(conn: Conn) -> int:
            joined = 0
            rows = conn.execute(
                ROOM_COLUMNS + " WHERE kind = 'broadcast' AND deleted = 0"  # noqa: S608 (fixed strings; values are bound)
                " AND id NOT IN (SELECT room_id FROM members WHERE address = ?)",
                (user.address,),
            ).fetchall()
            for row in rows:
                room = room_from_row(conn, row)
                options = room.options
                if options.audience_agency != user.agency_domain:
                    continue
                if options.audience_units and user.unit not in options.audience_units:
                    continue
                if len(room.members) >= MAX_MEMBERS:
                    continue
                self._apply.commit(
                    conn, "member.added", room.id,
                    {"addresses": [user.address], "by": "audience"}, now, room=room,
                )  # fmt: skip
                joined += 1
            return joined

        return await self._w.write(job)

    async def remove_member(self, actor: User, room_id: str, address: str) -> Room:
        """Remove someone from the room at once (owner only; never the owner)."""
        now = self._w.clock()
        ranked = await self._ranked_members(actor, room_id)
        if ranked is not None and address in ranked[0]:
            await self._check_group(actor, [u for a, u in ranked[1].items() if a != address])

        def job(conn: Conn) -> tuple[Room, list[str]]:
            room = member_room(conn, room_id, actor.address)
            RoomPolicy.check_owner(room, actor.address, "remove members", "นำสมาชิกออก")
            RoomPolicy.check_membership_change(room)
            RoomPolicy.check_remove(room, address)
            if ranked is not None and ranked[0] != room.members:
                raise changed_meanwhile()
            _, blobs = self._apply.commit(
                conn,
                "member.removed",
                room_id,
                {"address": address, "by": actor.address},
                now,
                room=room,
                subject=address,
            )
            return replace(room, members=room.members - {address}), blobs

        room, blobs = await self._w.write(job)
        await self._w.delete_blobs(blobs)
        return room

    async def leave(self, actor: User, room_id: str) -> NoReturn:
        """Refuse: members cannot leave a room (REQUIREMENTS.md §3); 404 if not a member."""
        room = await self.room(actor, room_id)
        RoomPolicy.check_leave(room)
        raise AssertionError("check_leave always refuses")

    # --- members and their ranks --------------------------------------------------

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

        return await self._w.db.read(query)

    async def _check_group(self, owner: User, others: Iterable[User]) -> None:
        """Apply the disguised-direct-chat rule to a group or secret room's members."""
        others = [o for o in others if o.address != owner.address]
        seniors = {o.agency_domain for o in others if o.rank > owner.rank}
        public = bool(seniors) and all([await self._settings.public_mode(a) for a in seniors])
        RoomPolicy.check_not_disguised_direct(owner, others, public_mode=public)

    async def _ranked_members(
        self, actor: User, room_id: str
    ) -> tuple[frozenset[str], dict[str, User]] | None:
        """Return a group's members and their directory entries, if *actor* owns it.

        None for any other room: the rank rule of groups does not apply (and a large
        broadcast room is not looked up member by member).
        """
        if await self._w.db.read(lambda conn: grouped_by(conn, room_id)) != actor.address:
            return None
        addresses = frozenset(await self.members_of([room_id]))
        found: dict[str, User] = {}
        for address in addresses:
            user = await self._directory.user(address)
            if user is not None:
                found[address] = user
        return addresses, found


def _check_direct(conn: Conn, actor: User, other: User, public: bool) -> None:
    """Apply the direct-chat rule with the no-private-chat rooms both are in."""
    RoomPolicy.check_direct(
        actor,
        other,
        public_mode=public,
        restricting_rooms=restricting_rooms(conn, actor.address, other.address),
    )
