"""What a client may post: parsing a message draft, and the text a message is found by.

A draft is the JSON a client sends to ``POST /api/v1/rooms/{id}/messages``. The web
layer has already checked it against the route's JSON Schema; `parse_draft` checks it
again here, because the domain must hold its rules whoever calls it (the sync
replicator, the CLI, tests), and it also checks what a schema cannot say (a finite
latitude, a URL a browser will open, text that SQLite can store).

What this is not: the rules about *who* may post *where* (`appliance.chat.rules`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.chat.errors import ChatError
from appliance.chat.models import FILE_KINDS, MESSAGE_KINDS, MessageKind
from appliance.security.untrusted import (
    OCTET_STREAM,
    RASTER_IMAGE_TYPES,
    display_text,
    parse_media_type,
)

#: Longest message text: a long memo pasted into a chat, not a document.
MAX_TEXT = 10_000
MAX_URL = 2_048
MAX_LABEL = 256
#: Client ids are opaque to the box; long enough for a UUID and a device prefix.
MAX_CLIENT_ID = 128

_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
_SURROGATES = re.compile("[\ud800-\udfff]")

#: The media types each file kind accepts (``file`` takes any).
_MEDIA_PREFIX = {"image": "image/", "video": "video/", "voice": "audio/"}


@dataclass(frozen=True)
class Location:
    lat: float
    lon: float
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "label": self.label}


@dataclass(frozen=True)
class Draft:
    """A message as the client asked for it, checked; the store fills in the rest."""

    kind: MessageKind
    text: str | None = None
    url: str | None = None
    title: str | None = None
    location: Location | None = None
    upload_id: str | None = None
    sticker_id: str | None = None
    reply_to: str | None = None
    client_id: str | None = None


def _bad(field: str, en: str, th: str) -> ChatError:
    return ChatError(422, f"invalid_{field}", en, th)


def clean_text(value: Any, field: str, limit: int, *, required: bool = False) -> str | None:
    """Return *value* as NFC text within *limit* characters, or raise ChatError 422."""
    if value is None:
        if required:
            raise _bad(field, f"{field} is required", f"ต้องระบุ {field}")
        return None
    if not isinstance(value, str):
        raise _bad(field, f"{field} must be text", f"{field} ต้องเป็นข้อความ")
    value = unicodedata.normalize("NFC", value)
    # SQLite cannot store lone surrogates or (usefully) NUL; neither is text a person typed.
    if _SURROGATES.search(value) or "\x00" in value:
        raise _bad(field, f"{field} holds characters that are not text", f"{field} มีอักขระที่ไม่ถูกต้อง")
    if len(value) > limit:
        raise _bad(
            field, f"{field} is longer than {limit} characters", f"{field} ยาวเกิน {limit} ตัวอักษร"
        )
    # As mail does: controls and bidi overrides go (a file name "invoice\u202efdp.exe"
    # would show as "invoiceexe.pdf"), whatever the field.
    shown = display_text(value)
    if required and not shown.strip():
        raise _bad(field, f"{field} must not be empty", f"{field} ต้องไม่ว่าง")
    return shown


def parse_location(value: Any) -> Location:
    """Return a checked `Location` from ``{"lat", "lon", "label"?}``."""
    if not isinstance(value, Mapping):
        raise _bad("location", "location must be {lat, lon}", "ตำแหน่งต้องมี lat และ lon")
    lat, lon = value.get("lat"), value.get("lon")
    for name, number, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not math.isfinite(number)
            or abs(number) > bound
        ):
            raise _bad(
                "location",
                f"location.{name} must be a number from -{bound:g} to {bound:g}",
                f"location.{name} ต้องเป็นตัวเลขระหว่าง -{bound:g} ถึง {bound:g}",
            )
    label = clean_text(value.get("label"), "location.label", MAX_LABEL)
    assert isinstance(lat, (int, float))
    assert isinstance(lon, (int, float))
    return Location(float(lat), float(lon), label)


def parse_draft(body: Any) -> Draft:
    """Return the checked `Draft` of a client's message JSON, or raise ChatError 422."""
    if not isinstance(body, Mapping):
        raise _bad("message", "a message must be a JSON object", "ข้อความต้องเป็นออบเจกต์ JSON")
    kind = body.get("kind", "text")
    if kind not in MESSAGE_KINDS:
        raise _bad("kind", f"unknown message kind {kind!r}", "ไม่รู้จักประเภทข้อความนี้")
    location = None if body.get("location") is None else parse_location(body["location"])
    client_id = clean_text(body.get("client_id"), "client_id", MAX_CLIENT_ID)
    reply_to = clean_text(body.get("reply_to"), "reply_to", 200)
    common: dict[str, Any] = {"location": location, "client_id": client_id, "reply_to": reply_to}
    if kind == "text":
        text = clean_text(body.get("text"), "text", MAX_TEXT, required=True)
        return Draft("text", text=text, **common)
    if kind == "link":
        url = clean_text(body.get("url"), "url", MAX_URL, required=True)
        assert url is not None
        # Only web links: a javascript: or file: URL in a chat is an attack, not a link.
        if not _URL.fullmatch(url):
            raise _bad(
                "url",
                "a link must be an http:// or https:// URL",
                "ลิงก์ต้องขึ้นต้นด้วย http:// หรือ https://",
            )
        title = clean_text(body.get("title"), "title", MAX_LABEL)
        return Draft("link", url=url, title=title, **common)
    if kind == "location":
        if location is None:
            raise _bad(
                "location", "a location message needs a location", "ข้อความตำแหน่งต้องระบุตำแหน่ง"
            )
        return Draft("location", **common)
    if kind == "sticker":
        sticker = clean_text(body.get("sticker_id"), "sticker_id", 200, required=True)
        return Draft("sticker", sticker_id=sticker, **common)
    assert kind in FILE_KINDS
    upload = clean_text(body.get("upload_id"), "upload_id", 200, required=True)
    caption = clean_text(body.get("text"), "text", MAX_TEXT)
    return Draft(kind, upload_id=upload, text=caption, **common)


def check_media_type(kind: str, media_type: str) -> None:
    """An image message carries a raster image, a video a video, a voice message audio.

    An SVG is not an image message: the box never shows one inline (it is a document
    that can carry script), so it goes as a file.
    """
    prefix = _MEDIA_PREFIX.get(kind)
    if prefix is None:
        return
    ok = media_type.lower().startswith(prefix)
    if kind == "image":
        ok = media_type.lower() in RASTER_IMAGE_TYPES
        prefix = "PNG, JPEG, GIF or WebP "
    if not ok:
        raise _bad(
            "upload",
            f"a {kind} message needs a {prefix}* file, not {media_type}",
            f"ข้อความประเภท {kind} ต้องเป็นไฟล์ {prefix}* ไม่ใช่ {media_type}",
        )


def declared_type(value: str | None) -> str:
    """Return the bare ``type/subtype`` an upload declares (RFC 9110 §8.3.1), or raise 422.

    Exactly one type: ``image/png, text/javascript`` or a parameter hiding a second
    type is refused, never half-read. No type at all is application/octet-stream.
    """
    if value is None or not value.strip():
        return OCTET_STREAM
    parsed = parse_media_type(value)
    if parsed is None:
        raise _bad(
            "media_type",
            "The Content-Type is not one media type (type/subtype)",
            "Content-Type ต้องเป็นประเภทสื่อเดียว (type/subtype)",
        )
    return parsed.essence


def fold(text: str) -> str:
    """Return *text* as search stores and compares it: NFC and case-folded.

    Thai has no case, so Thai matches exactly; Latin matches regardless of case.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def searchable_text(content: Mapping[str, Any]) -> str:
    """Return the folded text a message is found by: its words, link, file name, place."""
    parts = [
        content.get("text"),
        content.get("url"),
        content.get("title"),
        content.get("name"),
        (content.get("location") or {}).get("label"),
    ]
    return fold("\n".join(p for p in parts if isinstance(p, str) and p))
