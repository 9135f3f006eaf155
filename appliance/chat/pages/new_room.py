"""Creating a room (/chat/new): every kind with its rule, and the agency's chat mode."""

from __future__ import annotations

from appliance.chat.errors import ChatError
from appliance.chat.pages.common import PageHandlers, api_error, page, refusal_text
from appliance.chat.pages.forms import parse_addresses, room_options
from appliance.chat.pages.views import path_part
from appliance.chat.pages.words import (
    DAYS,
    NORMAL_MODE,
    PRESET_BY_VALUE,
    PRESETS,
    PUBLIC_MODE,
    SECRET_TTLS,
)
from appliance.web.pages import redirect
from appliance.web.routes import Form, Request, Response, Route


class NewRoomPage(PageHandlers):
    """The new-room form, its post, and the agency admin's chat mode switch."""

    def routes(self) -> list[Route]:
        return [
            page("GET", "/chat/new", self.new_room_form, "Create a room: every kind and its rules"),
            page("POST", "/chat/new", self.create_room, "Create a room"),
            page("POST", "/chat/settings", self.set_public_mode, "Public mode (agency admin)"),
        ]

    async def new_room_form(self, request: Request) -> Response:
        return await self._new_form(request, values=Form(), error=None)

    async def _new_form(
        self, request: Request, *, values: Form, error: str | None, status: int = 200
    ) -> Response:
        me = self._me(request)
        units = await self.directory.units(me.agency_domain)
        public = await self.chat.public_mode(me.agency_domain)
        admin = await self.directory.is_admin(me.address, me.agency_domain)
        return await self.kit.render(
            request,
            "chat/new.html",
            status=status,
            presets=PRESETS,
            days=DAYS,
            ttls=SECRET_TTLS,
            units=units,
            public_mode=public,
            broadcast_everyone=await self.chat.broadcast_by_everyone(me.agency_domain),
            mode_text=PUBLIC_MODE if public else NORMAL_MODE,
            agency_admin=admin,
            values=values,
            error=error,
            saved=request.query.get("mode") == "saved",
        )

    async def create_room(self, request: Request) -> Response:
        me = self._me(request)
        form = request.form
        preset = PRESET_BY_VALUE.get(form.get("kind"))
        try:
            if preset is None:
                raise ChatError(422, "invalid_kind", "Choose the kind of room", "กรุณาเลือกประเภทห้อง")
            if preset.kind == "direct":
                other = form.get("with").strip()
                if not other:
                    raise ChatError(422, "direct_needs_one",
                                    "Enter the address of the person to chat with",
                                    "กรุณาระบุที่อยู่อีเมลของผู้ที่ต้องการสนทนาด้วย")  # fmt: skip
                room, _created = await self.chat.open_direct(me, other)
            else:
                options = room_options(form, preset)
                posters = options.get("posters", [])
                # A broadcast's audience is its members; the members field is hidden.
                typed = [] if preset.kind == "broadcast" else parse_addresses(form.get("members"))
                room = await self.chat.create_room(
                    me,
                    preset.kind,
                    name=form.get("name").strip() or None,
                    members=[*typed, *posters],
                    options=options,
                )
        except ChatError as exc:
            lang = await self.kit.language(request)
            return await self._new_form(
                request, values=form, error=refusal_text(exc, lang), status=exc.status
            )
        return redirect(f"/chat/rooms/{path_part(room.id)}")

    async def set_public_mode(self, request: Request) -> Response:
        me = self._me(request)
        try:
            await self.chat.set_public_mode(
                me, me.agency_domain, request.form.get("public_mode") == "on"
            )
            await self.chat.set_broadcast_creators(
                me, me.agency_domain, request.form.get("broadcast_everyone") == "on"
            )
        except ChatError as exc:
            raise api_error(exc) from None
        return redirect("/chat/new?mode=saved")
