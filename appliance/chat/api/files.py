"""Files: uploading one for a message, downloading a message's file, the media tab.

A file is served for what its bytes are, never for what it claims to be: only a raster
image, audio or video is shown inline, anything else is a download
(`appliance.web.user_content.sniffed`), so an upload can never run in the box's origin.
"""

from __future__ import annotations

from appliance.chat.api import schemas as s
from appliance.chat.api.common import MESSAGE, ROOM, StorageGuard, me, messages_json, route
from appliance.chat.store import MAX_UPLOAD, Chat
from appliance.web.routes import JSON, Request, Response, Route
from appliance.web.user_content import sniffed


class FileHandlers:
    """The file endpoints, bound to one `Chat`."""

    def __init__(self, chat: Chat, storage: StorageGuard) -> None:
        self.chat = chat
        self.storage = storage

    async def download(self, request: Request) -> JSON:
        data, media_type, name = await self.chat.file(
            me(request), request.params["room_id"], request.params["message_id"]
        )
        # Inline only if the bytes are a raster image, audio or video; the declared
        # type only tells audio from video. Anything else is an octet-stream download.
        return sniffed(data, name, media_type)

    async def media(self, request: Request) -> JSON:
        items = await self.chat.media(
            me(request), request.params["room_id"], request.query.get("kind", "link")
        )
        return messages_json(items)

    async def upload(self, request: Request) -> JSON:
        self.storage.ensure_room(len(request.body or b""), "upload")
        result = await self.chat.upload(
            me(request),
            request.body,
            request.headers.get("content-type", "application/octet-stream"),
            request.query.get("name", "file"),
        )
        return Response(result, status=201)

    def routes(self) -> list[Route]:
        """Return the download, media and upload endpoints."""
        return [
            route(
                "GET",
                MESSAGE + "/file",
                self.download,
                "Download a message's file (members; 503 while one posted on another box"
                " cannot be fetched from the centre yet)",
                errors=(404, 503),
            ),
            route(
                "GET",
                ROOM + "/media",
                self.media,
                "The links/media tab (?kind=link|image|video|voice|file)",
                response=s.MESSAGES,
                errors=(404, 422),
                query=s.MEDIA_QUERY,
            ),
            route(
                "POST",
                "/api/v1/uploads",
                self.upload,
                "Upload a file (≤ 25 MB) for an image/video/voice/file message (?name=)",
                status=201,
                errors=(413, 422, 507),
                upload="*/*",
                max_body=MAX_UPLOAD,
                query=s.NAME_QUERY,
                response=s.UPLOADED,
            ),
        ]
