"""A room's form posts: text without script, the owner's controls, events, alerts.

Each answers a refusal with the domain's own Thai or English message on the room page
(re-rendered by `RoomPage.render`, the typed text kept), and success with a redirect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from appliance.chat.errors import ChatError
from appliance.chat.pages.common import PageHandlers, api_error, page, refusal_text
from appliance.chat.pages.forms import bangkok_time, location_field, number_field, parse_addresses
from appliance.chat.pages.room import ROOM, RoomPage
from appliance.chat.pages.views import path_part
from appliance.chat.store import Chat
from appliance.directory import Directory, User
from appliance.web.pages import PageKit, redirect, safe_next
from appliance.web.routes import Request, Response, Route


class RoomForms(PageHandlers):
    """The forms of a room page; a refusal shows on *room*'s page."""

    def __init__(self, chat: Chat, directory: Directory, kit: PageKit, room: RoomPage) -> None:
        super().__init__(chat, directory, kit)
        self.room = room

    def routes(self) -> list[Route]:
        return [
            page("POST", "/chat/location", self.share_location, "Share my location for alerts"),
            page("POST", ROOM + "/messages", self.send, "Send a text message (without script)"),
            page("POST", ROOM + "/members", self.add_members, "Add members (owner)"),
            page("POST", ROOM + "/members/remove", self.remove_member, "Remove a member (owner)"),
            page("POST", ROOM + "/name", self.rename, "Rename the room (owner)"),
            page("POST", ROOM + "/owner", self.transfer, "Transfer ownership (owner)"),
            page("POST", ROOM + "/delete", self.delete_room, "Delete the room (owner)"),
            page("POST", ROOM + "/invitations", self.invite, "Invite members to an event"),
            page("POST", ROOM + "/alert", self.alert, "Alert people within a radius"),
            page(
                "POST",
                "/chat/invitations/{invitation_id}/answer",
                self.answer,
                "Accept or decline an invitation",
            ),
        ]

    async def _room_action(
        self, request: Request, action: Callable[[User, str], Awaitable[str | None]]
    ) -> Response:
        """Run an owner's or member's form action; show a refusal on the room page."""
        me = self._me(request)
        room_id = request.params["room_id"]
        try:
            target = await action(me, room_id)
        except ChatError as exc:
            if exc.status == 404 and exc.code == "not_found":
                raise api_error(exc) from None
            lang = await self.kit.language(request)
            return await self.room.render(
                request, room_id, error=refusal_text(exc, lang), status=exc.status,
                draft=request.form.get("text"),
            )  # fmt: skip
        return redirect(target or f"/chat/rooms/{path_part(room_id)}")

    async def send(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            body: dict[str, Any] = {"kind": "text", "text": form.get("text")}
            if form.get("reply_to"):
                body["reply_to"] = form.get("reply_to")
            if form.get("client_id"):
                body["client_id"] = form.get("client_id")
            location = location_field(form)
            if location is not None:
                body["location"] = location
            message, _ = await self.chat.post(me, room_id, body)
            return f"/chat/rooms/{path_part(room_id)}#m-{message.id}"

        return await self._room_action(request, action)

    async def add_members(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            addresses = parse_addresses(request.form.get("addresses"))
            if not addresses:
                raise ChatError(422, "no_addresses", "Enter at least one address",
                                "กรุณาระบุที่อยู่อีเมลอย่างน้อยหนึ่งรายการ")  # fmt: skip
            await self.chat.add_members(me, room_id, addresses)
            return f"/chat/rooms/{path_part(room_id)}#members"

        return await self._room_action(request, action)

    async def remove_member(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            await self.chat.remove_member(me, room_id, request.form.get("address"))
            return f"/chat/rooms/{path_part(room_id)}#members"

        return await self._room_action(request, action)

    async def rename(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            name = request.form.get("name").strip() or None
            await self.chat.update_room(me, room_id, name=name, rename=True)
            return None

        return await self._room_action(request, action)

    async def transfer(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str | None:
            await self.chat.transfer_ownership(me, room_id, request.form.get("owner"))
            return None

        return await self._room_action(request, action)

    async def delete_room(self, request: Request) -> Response:
        async def action(me: User, room_id: str) -> str:
            if request.form.get("confirm") != "yes":
                raise ChatError(422, "confirm", "Tick the box to confirm the deletion",
                                "กรุณาทำเครื่องหมายยืนยันการลบห้อง")  # fmt: skip
            await self.chat.delete_room(me, room_id)
            return "/chat"

        return await self._room_action(request, action)

    async def invite(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            chosen = list(form.getlist("invitees"))
            await self.chat.invite(
                me,
                room_id,
                title=form.get("title"),
                starts_at=bangkok_time(form.get("starts_at"), "starts_at"),
                ends_at=bangkok_time(form.get("ends_at"), "ends_at")
                if form.get("ends_at")
                else None,
                place=form.get("place").strip() or None,
                invitees=chosen or None,
            )
            return f"/chat/rooms/{path_part(room_id)}#events"

        return await self._room_action(request, action)

    async def answer(self, request: Request) -> Response:
        me = self._me(request)
        try:
            invitation = await self.chat.answer(
                me, request.params["invitation_id"], request.form.get("answer")
            )
        except ChatError as exc:
            raise api_error(exc) from None
        return redirect(f"/chat/rooms/{path_part(invitation['room_id'])}#events")

    async def alert(self, request: Request) -> Response:
        form = request.form

        async def action(me: User, room_id: str) -> str:
            location = location_field(form)
            if location is None:
                raise ChatError(422, "location_required", "Give the centre of the alert",
                                "กรุณาระบุตำแหน่งศูนย์กลางของการแจ้งเตือน")  # fmt: skip
            radius_km = number_field(form.get("radius_km"), "radius_km", 0.001, 1000.0)
            whole_agency = form.get("scope") == "agency"
            sent = await self.chat.send_alert(
                me,
                location=location,
                radius_m=radius_km * 1000,
                text=form.get("text"),
                room_id=None if whole_agency else room_id,
            )
            return f"/chat/rooms/{path_part(room_id)}?alerted={sent}#alerts"

        return await self._room_action(request, action)

    async def share_location(self, request: Request) -> Response:
        me = self._me(request)
        form = request.form
        share = form.get("share") == "on"
        try:
            location = location_field(form) if share else None
            if share and location is None:
                raise ChatError(422, "location_required", "Give your location to share it",
                                "กรุณาระบุตำแหน่งที่ต้องการแบ่งปัน")  # fmt: skip
            await self.chat.set_location(me, share, location)
        except ChatError as exc:
            raise api_error(exc) from None
        return redirect(safe_next(form.get("next")) + "#alerts")
