"""The chat settings of each agency: public mode, who creates broadcast rooms, admins.

A box keeps its own agency's settings, and declares them to the hub with each push
(`agency_settings`); the hub keeps what each box declared (`record_agency_settings`)
and checks that box's events against it (`apply.py`).

What this is not: the rules that read them (`rules.py`).
"""

from __future__ import annotations

import json
from typing import Any

from appliance.chat.errors import ChatError
from appliance.chat.tables import Conn, broadcast_by_everyone, declared_admins, public_mode
from appliance.directory import Directory, User
from appliance.store.database import Database


class AgencySettings:
    """Read and change the chat settings of agencies (admins only for changes)."""

    def __init__(self, db: Database[Conn], directory: Directory) -> None:
        self._db = db
        self._directory = directory

    async def public_mode(self, agency: str) -> bool:
        """Return whether *agency* runs chat in public mode (anyone may talk to anyone)."""
        return await self._db.read(lambda conn: public_mode(conn, agency))

    async def broadcast_by_everyone(self, agency: str) -> bool:
        """Return whether anyone of *agency* may create broadcast rooms (else admins only)."""
        return await self._db.read(lambda conn: broadcast_by_everyone(conn, agency))

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
            admins = declared_admins(conn, agency)
            if admins is None:
                return None
            return {
                "public_mode": public_mode(conn, agency),
                "broadcast_creators": "everyone"
                if broadcast_by_everyone(conn, agency)
                else "admins",
                "admins": sorted(admins),
            }

        return await self._db.read(query)

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

    async def _check_admin(self, actor: User, agency: str) -> None:
        if not await self._directory.is_admin(actor.address, agency):
            raise ChatError(
                403,
                "not_admin",
                "Only the agency's administrators may change this",
                "เฉพาะผู้ดูแลระบบของหน่วยงานเท่านั้นที่เปลี่ยนค่านี้ได้",
            )
