"""Around the messages: event invitations, location alerts, and sticker packs."""

from __future__ import annotations

import mimetypes

from appliance.chat.api import schemas as s
from appliance.chat.api.common import ROOM, StorageGuard, me, route
from appliance.chat.store import Chat
from appliance.web.routes import JSON, Request, Response, Route
from appliance.web.user_content import sniffed


class ExtraHandlers:
    """Invitations, alerts and stickers, bound to one `Chat`."""

    def __init__(self, chat: Chat, storage: StorageGuard) -> None:
        self.chat = chat
        self.storage = storage

    # invitations

    async def invite(self, request: Request) -> JSON:
        body = request.json
        invitation = await self.chat.invite(
            me(request),
            request.params["room_id"],
            title=body["title"],
            starts_at=body["starts_at"],
            ends_at=body.get("ends_at"),
            place=body.get("place"),
            invitees=body.get("invitees"),
        )
        return Response(invitation, status=201)

    async def invitation(self, request: Request) -> JSON:
        return await self.chat.invitation(me(request), request.params["invitation_id"])

    async def answer(self, request: Request) -> JSON:
        return await self.chat.answer(
            me(request), request.params["invitation_id"], request.json["answer"]
        )

    # location and alerts

    async def set_location(self, request: Request) -> JSON:
        body = request.json
        return await self.chat.set_location(me(request), body["share"], body.get("location"))

    async def alert(self, request: Request) -> JSON:
        body = request.json
        sent = await self.chat.send_alert(
            me(request),
            location=body["location"],
            radius_m=body["radius_m"],
            text=body["text"],
            room_id=body.get("room_id"),
        )
        return {"recipients": sent}

    # stickers

    async def packs(self, request: Request) -> JSON:
        return await self.chat.sticker_packs(me(request))

    async def create_pack(self, request: Request) -> JSON:
        body = request.json
        pack = await self.chat.create_sticker_pack(me(request), body["name"], body.get("agency"))
        return Response(pack, status=201)

    async def add_sticker(self, request: Request) -> JSON:
        self.storage.ensure_room(len(request.body or b""), "sticker")
        sticker = await self.chat.add_sticker(
            me(request),
            request.params["pack_id"],
            request.query.get("name", "sticker"),
            request.body,
            request.headers.get("content-type", ""),
        )
        return Response(sticker, status=201)

    async def sticker_image(self, request: Request) -> JSON:
        me(request)
        data, media_type = await self.chat.sticker_image(request.params["sticker_id"])
        # Stickers stored before uploads were checked (an SVG, say) become downloads.
        name = "sticker" + (mimetypes.guess_extension(media_type) or "")
        return sniffed(data, name, media_type, headers={"cache-control": "private"})

    def routes(self) -> list[Route]:
        """Return the invitation, location, alert and sticker endpoints."""
        return [
            route(
                "POST",
                ROOM + "/invitations",
                self.invite,
                "Invite members to an event (title, time, place)",
                status=201,
                errors=(403, 404, 422),
                response=s.INVITATION,
                request=s.NEW_INVITATION,
            ),
            route(
                "GET",
                "/api/v1/invitations/{invitation_id}",
                self.invitation,
                "An invitation and who answered",
                response=s.INVITATION,
                errors=(404,),
            ),
            route(
                "POST",
                "/api/v1/invitations/{invitation_id}/answer",
                self.answer,
                "Accept or decline an invitation",
                response=s.INVITATION,
                errors=(403, 404, 422),
                request=s.ANSWER,
            ),
            route(
                "PUT",
                "/api/v1/me/location",
                self.set_location,
                "Opt in to (or out of) sharing my location for alerts",
                errors=(422,),
                request=s.SHARE_LOCATION,
            ),
            route(
                "POST",
                "/api/v1/alerts",
                self.alert,
                "Alert people within a radius (agency admin; or room owner with room_id)",
                errors=(403, 404, 422),
                response=s.ALERT_SENT,
                request=s.NEW_ALERT,
            ),
            route(
                "GET",
                "/api/v1/sticker-packs",
                self.packs,
                "My agency's sticker packs",
                response=s.PACKS,
            ),
            route(
                "POST",
                "/api/v1/sticker-packs",
                self.create_pack,
                "Create a sticker pack (agency admin)",
                status=201,
                errors=(403, 422),
                response=s.PACK,
                request=s.NEW_PACK,
            ),
            route(
                "POST",
                "/api/v1/sticker-packs/{pack_id}/stickers",
                self.add_sticker,
                "Add an image to a sticker pack (agency admin; ?name=)",
                status=201,
                errors=(403, 404, 413, 422, 507),
                upload="image/*",
                max_body=1024 * 1024,
                query=s.NAME_QUERY,
            ),
            route(
                "GET",
                "/api/v1/stickers/{sticker_id}/image",
                self.sticker_image,
                "A sticker's image",
                errors=(404,),
            ),
        ]
