"""A room (/chat/rooms/{id}): its latest messages, members, rules, events and alerts.

The page reads `Chat.head_cursor` *before* its data, and static/chat-room.js opens the
event stream from that cursor, so no change between the two is missed.
"""

from __future__ import annotations

from typing import Final

from appliance.chat.errors import ChatError
from appliance.chat.models import Message
from appliance.chat.pages.common import PageHandlers, api_error, page
from appliance.chat.pages.text import searchable_text
from appliance.chat.pages.views import (
    Member,
    Quote,
    invitation_views,
    message_views,
    path_part,
    room_title,
)
from appliance.chat.pages.words import ROOM_KINDS, room_rules
from appliance.directory import User
from appliance.web.routes import Request, Response, Route

#: Messages a room page shows at once; older ones load on request.
PAGE_SIZE: Final = 50
#: Members listed on a room page (a broadcast may hold thousands).
MEMBERS_SHOWN: Final = 300
#: Largest file the browser may upload (the API's limit, checked before sending).
MAX_UPLOAD_MB: Final = 25
#: A room page's address (its forms post below it).
ROOM: Final = "/chat/rooms/{room_id}"


class RoomPage(PageHandlers):
    """The room page; room_forms.py re-renders it with a refusal."""

    def routes(self) -> list[Route]:
        return [
            page("GET", ROOM, self.room_page, "A room: messages, members, events, alerts"),
        ]

    async def room_page(self, request: Request) -> Response:
        return await self.render(request, request.params["room_id"])

    async def render(
        self,
        request: Request,
        room_id: str,
        *,
        error: str | None = None,
        status: int = 200,
        draft: str = "",
    ) -> Response:
        me = self._me(request)
        lang = await self.kit.language(request)
        cursor = self.chat.head_cursor  # before the data: see the module docstring
        room = await self._room_or_404(me, room_id)
        try:
            newest = await self.chat.messages(me, room_id, limit=PAGE_SIZE)
            quoted = await self._quotes(me, room_id, newest)
            readers = await self.chat.readers(
                me, room_id, [m.id for m in newest if m.sender == me.address]
            )
            invitations = await self.chat.room_invitations(me, room_id)
        except ChatError as exc:  # the room went between two reads
            raise api_error(exc) from None
        sharing = await self.chat.sharing_location(me)
        admin = await self.directory.is_admin(me.address, me.agency_domain)
        shown_members = sorted(room.members, key=lambda a: (a != room.owner, a))[:MEMBERS_SHOWN]
        wanted = {*shown_members, *(m.sender for m in newest), *(q.sender for q in quoted.values())}
        wanted.update(r for found in readers.values() for r, _ in found)
        wanted.update(i["organiser"] for i in invitations)
        wanted.update(a["address"] for i in invitations for a in i["invitees"])
        names = await self._names(wanted, lang)
        views = message_views(newest, me, names, quoted, readers)
        members = [
            Member(a, names.get(a, a), a == room.owner, a in room.options.posters)
            for a in shown_members
        ]
        events = invitation_views(invitations, me, names)
        hours = room.options.working_hours
        closed = hours is not None and not hours.is_open(self.chat.clock())
        can_post = (
            room.kind != "broadcast"
            or me.address == room.owner
            or (me.address in room.options.posters)
        )
        return await self.kit.render(
            request,
            "chat/room.html",
            status=status,
            room=room,
            title=room_title(room, me.address, names, lang),
            info=ROOM_KINDS[room.kind],
            rules=room_rules(room, lang),
            is_owner=room.owner == me.address,
            owner_name=names.get(room.owner, room.owner),
            members=members,
            more_members=max(0, len(room.members) - len(members)),
            messages=views,
            has_more=len(newest) >= PAGE_SIZE,
            cursor=cursor,
            invitations=events,
            closed=closed,
            hours_text=hours.describe() if hours else None,
            can_post=can_post,
            sharing=sharing,
            agency_admin=admin,
            error=error,
            draft=draft,
            # Only a count: the query string is anyone's to write.
            alerted=alerted if (alerted := request.query.get("alerted", "")).isdigit() else None,
            max_upload_mb=MAX_UPLOAD_MB,
            room_url=f"/chat/rooms/{path_part(room.id)}",
        )

    async def _quotes(self, me: User, room_id: str, messages: list[Message]) -> dict[str, Quote]:
        """The messages replied to on this page, as quotes (gone ones are left out)."""
        by_id = {m.id: m for m in messages}
        found: dict[str, Quote] = {}
        for message in messages:
            target_id = message.reply_to
            if not target_id or target_id in found:
                continue
            target = by_id.get(target_id)
            if target is None:
                try:
                    target = await self.chat.message(me, room_id, target_id)
                except ChatError:
                    continue
            if target.deleted:
                continue
            snippet = " ".join(searchable_text(target).split())
            found[target_id] = Quote(target.id, target.sender, snippet[:120])
        return found
