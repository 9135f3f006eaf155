"""What users give the box, made safe to show to others: text, declared types, file bytes.

Everything here is pure (no I/O, no trio) and shared by mail, chat and the web layer,
so the one rule for each thing lives in one place:

- **Text** (`display_text`): chat text, room and file names, display names and mail
  headers lose control characters and the bidirectional embedding, override and
  isolate controls (U+202A-U+202E, U+2066-U+2069). With those, ``invoice``, U+202E,
  ``fdp.exe`` shows as "invoiceexe.pdf". The marks U+200E, U+200F and U+061C stay:
  they only steer neutral characters next to them, cannot reverse a run of text, and
  mixed Thai/Arabic/Latin text needs them.
- **Declared types** (`parse_media_type`): a Content-Type as RFC 9110 §8.3.1 writes
  it, exactly one ``type/subtype``; a list (``image/png, text/javascript``) or a
  stray character is not a type at all.
- **File bytes** (`sniff`, `inline_type`): which of the few types a browser may show
  inline the bytes really are, by their signatures (the WHATWG MIME Sniffing
  standard's §6.1 image and §6.2 audio/video patterns). The declared type never makes
  a file inline; at most it tells audio from video in a container that holds either.

What this is not: the HTTP response (`appliance.web.user_content` builds it with the
headers every user-supplied download gets) or the HTML sanitiser of mail bodies.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

#: Served when the bytes are not one of `INLINE_TYPES`: a browser only saves it.
OCTET_STREAM: Final = "application/octet-stream"

#: Raster images a browser decodes as pictures and never as a document with script.
#: Not SVG: it is an XML document that can carry script and load more (``<script
#: href>``), whatever an ``<img>`` element promises.
RASTER_IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: Audio and video the box serves inline, so ``<audio>``/``<video>`` play them.
MEDIA_TYPES: Final = frozenset({
    "audio/mpeg", "audio/ogg", "audio/wav", "audio/mp4", "audio/webm", "audio/flac",
    "audio/aac", "video/mp4", "video/webm", "video/ogg",
})  # fmt: skip
#: Every type a user's file may be served inline as (after its bytes were checked).
INLINE_TYPES: Final = RASTER_IMAGE_TYPES | MEDIA_TYPES

#: Longest Content-Type value read; real ones are a few dozen characters.
MAX_MEDIA_TYPE: Final = 200

# C0 controls but tab and line feed, DEL, and the bidi embeddings, overrides and
# isolates (Unicode 15 UAX #9 §2.1-2.2: LRE RLE PDF LRO RLO, LRI RLI FSI PDI).
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
#: RFC 8187 §3.2.1 attr-char, besides letters and digits: left as is in filename*.
_ATTR_CHAR_EXTRA: Final = "!#$&+-.^_`|~"

# RFC 9110 §5.6.2 token and §5.6.4 quoted-string; §5.6.3 OWS; §8.3.1 media-type.
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (a grammar, not a password)
_QUOTED: Final = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_MEDIA_TYPE: Final = re.compile(
    rf"(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})"
    rf"(?P<params>(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*)"
)
_PARAMETER: Final = re.compile(rf"(?P<name>{_TOKEN})=(?P<value>{_TOKEN}|{_QUOTED})")


# --- text -------------------------------------------------------------------------------


def display_text(value: str) -> str:
    """Return *value* safe to show: valid UTF-8, NFC, no control or bidi-override characters.

    Lone surrogates (undecodable bytes kept by a lenient decoder) become U+FFFD; tab and
    line feed stay, every other control goes.
    """
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROLS.sub("", unicodedata.normalize("NFC", value))


def display_json(value: object) -> Any:
    """Return a JSON value with `display_text` applied to every string in it (keys too).

    For content that came from elsewhere (another box, rows stored before the rule):
    raises RecursionError on nesting deeper than Python's stack, as `json.dumps` does.
    """
    if isinstance(value, str):
        return display_text(value)
    if isinstance(value, dict):
        return {display_text(str(k)): display_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [display_json(item) for item in value]
    return value


def has_controls(value: str) -> bool:
    """Return whether `display_text` would remove anything but surrogates from *value*."""
    return _CONTROLS.search(value) is not None


def content_disposition(name: str, *, inline: bool = False) -> str:
    """Return ``attachment`` (or ``inline``) with an ASCII fallback and the UTF-8 name.

    RFC 6266 §4.3 and RFC 8187: old clients read ``filename``, every current one
    ``filename*``. The name is one line of `display_text`, never empty.
    """
    name = display_text(name).replace("\t", " ").replace("\n", " ") or "attachment"
    fallback = "".join(
        c if (c.isascii() and c.isprintable() and c not in '"\\%') else "_" for c in name
    )
    encoded = quote(name, safe=_ATTR_CHAR_EXTRA)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# --- declared media types ---------------------------------------------------------------


@dataclass(frozen=True)
class MediaType:
    """One ``type/subtype`` with its parameters (RFC 9110 §8.3.1), names in lower case."""

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def essence(self) -> str:
        """``type/subtype`` alone: what every decision of the box looks at."""
        return f"{self.type}/{self.subtype}"


def parse_media_type(value: str | None) -> MediaType | None:
    """Return the one media type *value* declares, or None if it is not exactly one.

    Strict by design: a comma (a list, or a second type after the first), a missing
    subtype, a wildcard (``image/*`` is a range, RFC 9110 §12.5.1, not a type),
    characters outside the grammar or a parameter written twice make it None. Quoted
    parameter values are unquoted (§5.6.4) and never read as a type.
    """
    if value is None or len(value) > MAX_MEDIA_TYPE:
        return None
    found = _MEDIA_TYPE.fullmatch(value.strip(" \t"))
    if found is None:
        return None
    kind, subtype = found["type"].lower(), found["subtype"].lower()
    if "*" in kind + subtype:  # a range or a wildcard, never a file's type
        return None
    params: list[tuple[str, str]] = []
    for param in _PARAMETER.finditer(found["params"]):
        name, raw = param["name"].lower(), param["value"]
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if any(name == seen for seen, _ in params):
            return None
        params.append((name, raw))
    return MediaType(kind, subtype, tuple(params))


# --- file bytes -------------------------------------------------------------------------

# Container signatures -> the type of each family. Audio and video share containers
# (MP4, WebM, Ogg): the family is the declared one when that is audio or video.
_RIFF_WAVE: Final = re.compile(rb"RIFF....WAVE", re.DOTALL)
_RIFF_WEBP: Final = re.compile(rb"RIFF....WEBPVP", re.DOTALL)
_MP4: Final = re.compile(rb"....ftyp", re.DOTALL)
#: Second bytes of an MPEG-1/2 Layer III frame header (sync, version, layer, CRC bit).
_MP3_SYNC: Final = frozenset({0xFB, 0xFA, 0xF3, 0xF2, 0xE3, 0xE2})


def sniff(data: bytes) -> str | None:
    """Return the inline type *data* is by its first bytes, or None if it is none of them.

    Audio-or-video containers answer their video type (``video/mp4``, ``video/webm``,
    ``video/ogg``); `inline_type` picks the family.
    """
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if _RIFF_WEBP.match(head):
        return "image/webp"
    if _RIFF_WAVE.match(head):
        return "audio/wav"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] in _MP3_SYNC):
        return "audio/mpeg"
    if len(head) >= 2 and head[0] == 0xFF and head[1] in (0xF1, 0xF9):
        return "audio/aac"  # ISO/IEC 13818-7 ADTS header, no CRC
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS\x00"):
        return "video/ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"  # EBML (Matroska, WebM)
    if _MP4.match(head) and int.from_bytes(head[:4], "big") >= 8:
        return "video/mp4"  # ISO/IEC 14496-12 §4.3: a file begins with its ftyp box
    return None


_AUDIO_OF_VIDEO: Final = {"video/mp4": "audio/mp4", "video/webm": "audio/webm",
                          "video/ogg": "audio/ogg"}  # fmt: skip


def inline_type(data: bytes, declared: str | None = None) -> str | None:
    """Return the type to serve *data* inline as, or None: then only as a download.

    The bytes decide; *declared* (any Content-Type text, parsed strictly) only moves
    an audio-or-video container to its audio type. An Ogg declared ``audio/ogg`` is
    audio; the same bytes declared ``text/html`` are still video/ogg, never HTML.
    """
    found = sniff(data)
    if found is None:
        return None
    declared_type = parse_media_type(declared)
    if found in _AUDIO_OF_VIDEO and declared_type is not None and declared_type.type == "audio":
        return _AUDIO_OF_VIDEO[found]
    return found


def raster_image_type(data: bytes) -> str | None:
    """Return the raster image type *data* is (PNG, JPEG, GIF, WebP), or None."""
    found = sniff(data)
    return found if found in RASTER_IMAGE_TYPES else None
