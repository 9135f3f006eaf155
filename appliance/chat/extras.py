"""The extras of chat: invitations to events, location alerts, stickers, finding people.

Invitations are room events and travel like messages: `invite` and `answer` check
their rules, then `EventApplier.commit` writes them by the code that applies them
from another box. Alerts are personal events of this box; a shared location and
the sticker packs are rows of this box alone.

What this is not: rooms (`rooms.py`) or messages (`posts.py`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from appliance.chat import geo
from appliance.chat.apply import EventApplier
from appliance.chat.errors import ChatError, not_found
from appliance.chat.messages import MAX_LABEL, clean_text, declared_type, fold, parse_location
from appliance.chat.rules import RoomPolicy
from appliance.chat.tables import MAX_PAGE, Conn, invitation_json, member_room
from appliance.chat.writer import ChatWriter
from appliance.directory import Directory, User
from appliance.security.untrusted import raster_image_type


class Extras:
    """Invitations, alerts, stickers and people search of one box's chat."""

    def __init__(self, writer: ChatWriter, applier: EventApplier, directory: Directory) -> None:
        self._w = writer
        self._apply = applier
        self._directory = directory

    async def room_invitations(
        self, actor: User, room_id: str, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Return the room's latest invitations with every answer, newest first (members)."""
        limit = max(1, min(limit, MAX_PAGE))

        def query(conn: Conn) -> list[dict[str, Any]]:
            member_room(conn, room_id, actor.address)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM invitations WHERE room_id = ?"
                    " ORDER BY created_at DESC, id DESC LIMIT ?",
                    (room_id, limit),
                )
            ]
            return [invitation_json(conn, i) for i in ids]

        return await self._w.db.read(query)

    async def sharing_location(self, actor: User) -> bool:
        """Return whether *actor* has opted in to sharing their location for alerts."""
        row = await self._w.db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM locations WHERE address = ?", (actor.address,)
            ).fetchone()
        )
        return row is not None

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
        now = self._w.clock()

        def job(conn: Conn) -> dict[str, Any]:
            room = member_room(conn, room_id, actor.address)
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
            invitation_id = self._w.next_id(conn)
            # The invitation as `invitation_json` reads it back: the event carries it
            # whole, and applying the event writes the rows.
            invitation = {
                "id": invitation_id,
                "room_id": room_id,
                "organiser": actor.address,
                "title": title_,
                "starts_at": starts_at,
                "ends_at": ends_at,
                "place": place_,
                "created_at": now,
                "invitees": [
                    {"address": a, "answer": None, "answered_at": None} for a in sorted(chosen)
                ],
            }
            self._apply.commit(
                conn,
                "invitation.created",
                room_id,
                {"invitation": invitation},
                now,
                room=room,
                event_id=invitation_id,
            )
            return invitation_json(conn, invitation_id)

        return await self._w.write(job)

    async def answer(self, actor: User, invitation_id: str, answer: str) -> dict[str, Any]:
        """Accept or decline an invitation (invitees only; a later answer replaces one)."""
        if answer not in ("accept", "decline"):
            raise ChatError(
                422,
                "invalid_answer",
                "answer is accept or decline",
                "ตอบได้เฉพาะ accept หรือ decline",
            )
        now = self._w.clock()

        def job(conn: Conn) -> dict[str, Any]:
            row = conn.execute(
                "SELECT room_id FROM invitations WHERE id = ?", (invitation_id,)
            ).fetchone()
            if row is None:
                raise not_found("invitation", "คำเชิญ")
            room = member_room(conn, row[0], actor.address)
            if not conn.execute(
                "SELECT 1 FROM invitees WHERE invitation_id = ? AND address = ?",
                (invitation_id, actor.address),
            ).fetchone():
                raise ChatError(
                    403, "not_invited", "You are not invited to this event", "ท่านไม่ได้รับเชิญในกิจกรรมนี้"
                )
            self._apply.commit(
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
                room=room,
            )
            return invitation_json(conn, invitation_id)

        return await self._w.write(job)

    async def invitation(self, actor: User, invitation_id: str) -> dict[str, Any]:
        """Return an invitation with every invitee's answer (members of its room only)."""

        def query(conn: Conn) -> dict[str, Any]:
            row = conn.execute(
                "SELECT room_id FROM invitations WHERE id = ?", (invitation_id,)
            ).fetchone()
            if row is None:
                raise not_found("invitation", "คำเชิญ")
            member_room(conn, row[0], actor.address)
            return invitation_json(conn, invitation_id)

        return await self._w.db.read(query)

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
        now = self._w.clock()

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

        await self._w.db.write(job)
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
        now = self._w.clock()

        def job(conn: Conn) -> int:
            people = audience
            if room_id is not None:
                room = member_room(conn, room_id, actor.address)
                RoomPolicy.check_owner(
                    room, actor.address, "send alerts to this room", "ส่งการแจ้งเตือนถึงห้องนี้"
                )
                people = set(room.members)
            assert people is not None
            alert_id = self._w.next_id(conn)
            sent = 0
            located: list[Any] = conn.execute("SELECT address, lat, lon FROM locations").fetchall()
            for address, lat, lon in located:
                if (
                    address in people
                    and address != actor.address
                    and geo.within(lat, lon, centre.lat, centre.lon, radius_m)
                ):
                    self._w.emit(
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

        return await self._w.write(job)

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
        now = self._w.clock()
        await self._w.db.write(
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
        row = await self._w.db.read(
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
        blob_id = await self._w.put_blob(data)
        sticker_id = secrets.token_hex(8)
        await self._w.db.write(
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

        return await self._w.db.read(query)

    async def sticker_image(self, sticker_id: str) -> tuple[bytes, str]:
        """Return a sticker's image and media type (any signed-in user: stickers travel)."""
        row = await self._w.db.read(
            lambda conn: conn.execute(
                "SELECT blob_id, media_type FROM stickers WHERE id = ?", (sticker_id,)
            ).fetchone()
        )
        if row is None:
            raise not_found("sticker", "สติกเกอร์")
        return await self._w.get_blob(row[0]), row[1]

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
