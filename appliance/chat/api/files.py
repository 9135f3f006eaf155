"""Files: uploading one for a message, downloading a message's file, the media tab.

A file is served for what its bytes are, never for what it claims to be: only a raster
image, audio or video is shown inline, anything else is a download
(`appliance.web.user_content.sniffed`), so an upload can never run in the box's origin.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime

from appliance.chat.api import schemas as s
from appliance.chat.api.common import MESSAGE, ROOM, StorageGuard, me, messages_json, route
from appliance.chat.store import MAX_UPLOAD, Chat
from appliance.compliance.traffic_log import TrafficLog, TrafficRecord
from appliance.protection.scanner import Protection, ScannerUnavailable
from appliance.web.routes import JSON, ApiError, Request, Response, Route
from appliance.web.user_content import sniffed

log = logging.getLogger("edgebox.chat")


class FileHandlers:
    """The file endpoints, bound to one `Chat`."""

    def __init__(
        self,
        chat: Chat,
        storage: StorageGuard,
        protection: Protection | None = None,
        traffic: TrafficLog | None = None,
    ) -> None:
        self.chat = chat
        self.storage = storage
        #: Every upload is scanned for viruses first when scanning is on (docs/protection.md).
        self.protection = protection
        self.traffic = traffic

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
        await self._scan(request)
        result = await self.chat.upload(
            me(request),
            request.body,
            request.headers.get("content-type", "application/octet-stream"),
            request.query.get("name", "file"),
        )
        return Response(result, status=201)

    async def _scan(self, request: Request) -> None:
        """Refuse an upload holding a virus (422), or any while clamd is down (503)."""
        if self.protection is None:
            return
        body = request.body or b""
        try:
            virus = await self.protection.scan_file(body)
        except ScannerUnavailable as exc:
            log.warning("upload refused, scanner unavailable: %s", exc)
            await self._record(request, len(body), "503 unavailable")
            raise ApiError(
                503, "scanning_unavailable",
                "Virus scanning is unavailable for now, so the file was not accepted;"
                " please try again later",
                "ระบบตรวจไวรัสไม่พร้อมใช้งานชั่วคราว จึงยังไม่รับไฟล์นี้ กรุณาลองใหม่ภายหลัง",
            ) from None  # fmt: skip
        if virus is not None:
            await self._record(request, len(body), f"422 virus {virus[:120]}")
            raise ApiError(
                422, "virus_found",
                f"The file was refused: a virus was found in it ({virus})",
                f"ไม่รับไฟล์นี้: พบไวรัสในไฟล์ ({virus})",
            )  # fmt: skip
        await self._record(request, len(body), "201 clean")

    async def _record(self, request: Request, size: int, result: str) -> None:
        if self.traffic is None:
            return
        user = request.user.address if request.user is not None else None
        try:
            client_ip: str | None = str(ipaddress.ip_address(request.client_ip))
        except ValueError:
            client_ip = None
        try:
            await self.traffic.append(TrafficRecord(
                time=datetime.now(UTC), service="chat", event="upload-scanned",
                client_ip=client_ip, sender=user, user=user, size=size, result=result,
            ))  # fmt: skip
        except Exception:
            log.exception("traffic log write failed")

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
                errors=(413, 422, 503, 507),
                upload="*/*",
                max_body=MAX_UPLOAD,
                query=s.NAME_QUERY,
                response=s.UPLOADED,
            ),
        ]
