"""An agency's chat settings, and finding colleagues in the directory."""

from __future__ import annotations

from typing import Any

from appliance.chat.api import schemas as s
from appliance.chat.api.common import int_query, me, route
from appliance.chat.store import Chat
from appliance.directory import DirectoryError, User
from appliance.web.routes import JSON, ApiError, Request, Route


def person(user: User) -> dict[str, Any]:
    """Return the chat profile of a directory user (what colleagues may see)."""
    return {
        "address": user.address,
        "agency": user.agency_domain,
        "name_th": user.name_th,
        "name_en": user.name_en,
        "position": user.position,
        "unit": user.unit,
        "rank": user.rank,
        "phone": user.phone,
        "email": user.address,
    }


class SettingsHandlers:
    """Chat settings and the directory look-ups, bound to one `Chat`."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def settings(self, request: Request) -> JSON:
        return await self._settings(me(request).agency_domain)

    async def _settings(self, agency: str) -> JSON:
        everyone = await self.chat.broadcast_by_everyone(agency)
        return {
            "agency": agency,
            "public_mode": await self.chat.public_mode(agency),
            "broadcast_creators": "everyone" if everyone else "admins",
        }

    async def set_settings(self, request: Request) -> JSON:
        user = me(request)
        agency = request.json.get("agency") or user.agency_domain
        if "public_mode" not in request.json and "broadcast_creators" not in request.json:
            raise ApiError(422, "invalid", "Name a setting to change: public_mode or "
                           "broadcast_creators", "กรุณาระบุค่าที่จะเปลี่ยน")  # fmt: skip
        if "public_mode" in request.json:
            await self.chat.set_public_mode(user, agency, request.json["public_mode"])
        if "broadcast_creators" in request.json:
            everyone = request.json["broadcast_creators"] == "everyone"
            await self.chat.set_broadcast_creators(user, agency, everyone)
        return await self._settings(agency)

    async def people(self, request: Request) -> JSON:
        me(request)
        found = await self.chat.find_people(request.query.get("q"), int_query(request, "limit", 50))
        return [person(u) for u in found]

    async def units(self, request: Request) -> JSON:
        agency = request.query.get("agency") or me(request).agency_domain
        try:
            units = await self.chat.directory.units(agency)
        except DirectoryError:
            raise ApiError(404, "not_found", "agency not found", "ไม่พบหน่วยงาน") from None
        return [
            {
                "id": u.id,
                "agency": u.agency_domain,
                "name_th": u.name_th,
                "name_en": u.name_en,
                "parent_id": u.parent_id,
            }
            for u in units
        ]

    def routes(self) -> list[Route]:
        """Return the settings and directory endpoints."""
        return [
            route(
                "GET",
                "/api/v1/chat/settings",
                self.settings,
                "My agency's chat settings",
                response=s.SETTINGS,
            ),
            route(
                "PUT",
                "/api/v1/chat/settings",
                self.set_settings,
                "Switch public mode, or who creates broadcast rooms, for an agency (agency admin)",
                errors=(403, 422),
                request=s.SETTINGS_CHANGE,
                response=s.SETTINGS,
            ),
            route(
                "GET",
                "/api/v1/directory/users",
                self.people,
                "Find colleagues by name, address, unit or position (?q=)",
                response=s.PEOPLE,
                query=s.PEOPLE_QUERY,
            ),
            route(
                "GET",
                "/api/v1/directory/units",
                self.units,
                "An agency's org units (?agency=)",
                errors=(404,),
                query=s.UNITS_QUERY,
                response=s.UNITS,
            ),
        ]
