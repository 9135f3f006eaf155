"""Rooms and their members: create, list, read, change, delete; add and remove people."""

from __future__ import annotations

from appliance.chat.api import schemas as s
from appliance.chat.api.common import ROOM, me, route
from appliance.chat.store import Chat
from appliance.web.routes import JSON, Request, Response, Route


class RoomHandlers:
    """The room endpoints, bound to one `Chat`."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    async def list_rooms(self, request: Request) -> JSON:
        return [r.to_json(with_members=False) for r in await self.chat.rooms(me(request))]

    async def create_room(self, request: Request) -> JSON:
        body = request.json
        room = await self.chat.create_room(
            me(request),
            body["kind"],
            name=body.get("name"),
            members=body.get("members", []),
            options=body.get("options"),
        )
        return Response(room.to_json(), status=201)

    async def unread(self, request: Request) -> JSON:
        user = me(request)
        # The cursor first: a client that opens the stream from it misses no later change.
        cursor = self.chat.head_cursor
        rooms = await self.chat.rooms(user)
        activity = await self.chat.activity(user, [r.id for r in rooms])
        return {"cursor": cursor, "rooms": [a.to_json() for a in activity]}

    async def open_direct(self, request: Request) -> JSON:
        room, created = await self.chat.open_direct(me(request), request.json["with"])
        return Response(room.to_json(), status=201 if created else 200)

    async def get_room(self, request: Request) -> JSON:
        return (await self.chat.room(me(request), request.params["room_id"])).to_json()

    async def update_room(self, request: Request) -> JSON:
        body = request.json
        room = await self.chat.update_room(
            me(request),
            request.params["room_id"],
            name=body.get("name"),
            rename="name" in body,
            options=body.get("options"),
        )
        return room.to_json()

    async def delete_room(self, request: Request) -> JSON:
        await self.chat.delete_room(me(request), request.params["room_id"])
        return Response(None, status=204)

    async def transfer(self, request: Request) -> JSON:
        room = await self.chat.transfer_ownership(
            me(request), request.params["room_id"], request.json["owner"]
        )
        return room.to_json()

    async def members(self, request: Request) -> JSON:
        room = await self.chat.room(me(request), request.params["room_id"])
        return {"owner": room.owner, "members": sorted(room.members)}

    async def add_members(self, request: Request) -> JSON:
        room = await self.chat.add_members(
            me(request), request.params["room_id"], request.json["addresses"]
        )
        return {"owner": room.owner, "members": sorted(room.members)}

    async def remove_member(self, request: Request) -> JSON:
        room = await self.chat.remove_member(
            me(request), request.params["room_id"], request.params["address"]
        )
        return {"owner": room.owner, "members": sorted(room.members)}

    async def leave(self, request: Request) -> JSON:
        await self.chat.leave(me(request), request.params["room_id"])

    def routes(self) -> list[Route]:
        """Return the room and member endpoints."""
        return [
            route(
                "GET",
                "/api/v1/rooms",
                self.list_rooms,
                "List my rooms (hidden outside working hours)",
                response=s.ROOMS,
            ),
            route(
                "POST",
                "/api/v1/rooms",
                self.create_room,
                "Create a room (I become its owner)",
                status=201,
                errors=(403, 409, 422),
                request=s.NEW_ROOM,
                response=s.ROOM,
            ),
            route(
                "GET",
                "/api/v1/me/unread",
                self.unread,
                "Unread count and last message of each of my rooms, and the stream cursor",
                response=s.UNREAD,
            ),
            route(
                "POST",
                "/api/v1/direct",
                self.open_direct,
                "Open (or find) my direct chat with someone; 201 when created",
                also=(201,),
                errors=(403, 422),
                response=s.ROOM,
                request=s.DIRECT_WITH,
            ),
            route(
                "GET",
                ROOM,
                self.get_room,
                "Get a room I am a member of",
                response=s.ROOM,
                errors=(404,),
            ),
            route(
                "PATCH",
                ROOM,
                self.update_room,
                "Rename a room or change its options (owner)",
                errors=(403, 404, 409, 422),
                response=s.ROOM,
                request=s.ROOM_CHANGE,
            ),
            route(
                "DELETE",
                ROOM,
                self.delete_room,
                "Delete a room and its messages (owner)",
                status=204,
                errors=(403, 404),
            ),
            route(
                "POST",
                ROOM + "/owner",
                self.transfer,
                "Transfer ownership to a member (owner)",
                errors=(403, 404, 409),
                response=s.ROOM,
                request=s.NEW_OWNER,
            ),
            route(
                "GET",
                ROOM + "/members",
                self.members,
                "List a room's members",
                response=s.MEMBER_LIST,
                errors=(404,),
            ),
            route(
                "POST",
                ROOM + "/members",
                self.add_members,
                "Add members at once, no acceptance needed (owner)",
                errors=(403, 404, 409, 422),
                response=s.MEMBER_LIST,
                request=s.NEW_MEMBERS,
            ),
            route(
                "DELETE",
                ROOM + "/members/{address}",
                self.remove_member,
                "Remove a member at once (owner)",
                errors=(403, 404, 409),
                response=s.MEMBER_LIST,
            ),
            route(
                "POST",
                ROOM + "/leave",
                self.leave,
                "Always refused: members cannot leave; ask the owner to remove you",
                errors=(403, 404),
            ),
        ]
