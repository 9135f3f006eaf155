"""A stored message taken apart for people: decoded headers, the body to show, attachments.

Built on the MIME reader (`appliance.mail.mime`), which never raises on any
input and keeps only offsets into the message, so hostile and broken mail is read the
same way here as by IMAP clients. Every function here is pure and CPU-bound: the pages
call them in a worker thread.

Part numbers are IMAP's (RFC 3501 §6.4.5): the children of a multipart are 1, 2, ...
and nested ones 2.1, 2.2; a message that is not multipart has the single part 1. An
encapsulated message (message/rfc822) is one part, downloaded whole as ``.eml``.

Which part is *the* body (RFC 2046):

- multipart/alternative: the last alternative we can show, HTML before plain text
  (§5.1.4: alternatives go from plainest to richest);
- multipart/related (RFC 2387): its root, the ``start`` part or else the first; the
  other parts with a Content-ID are the root's inline resources (``cid:`` URLs,
  RFC 2392), not attachments;
- any other multipart (mixed, signed, ...): the first text part found in order; every
  other leaf is an attachment.

What this is not: the sanitiser (sanitise.py) or the IMAP view of a message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import unquote

from appliance.mail import mime
from appliance.mail.mime import Part
from appliance.security import untrusted

#: Media types an attachment is downloaded as; any other type becomes
#: application/octet-stream. Never HTML, SVG, XML or script: served from the box's
#: origin, those could run in it if a browser ever rendered one.
DOWNLOAD_TYPES: Final = frozenset({
    "application/pdf", "application/zip", "application/gzip", "application/rtf",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff",
    "text/plain", "text/csv", "text/calendar",
    "audio/mpeg", "audio/ogg", "audio/wav", "audio/mp4", "video/mp4", "video/webm",
})  # fmt: skip

#: Images that may be shown inline in an HTML body (as data: URLs). Not SVG: it is a
#: document that can carry script, whatever the img element promises.
INLINE_IMAGE_TYPES: Final = frozenset({"png", "jpeg", "gif", "webp", "bmp"})
#: Bytes of inline images one message may put in its frame.
INLINE_IMAGE_BUDGET: Final = 10 * 1024 * 1024

_PART_NUMBER: Final = re.compile(r"[1-9][0-9]{0,4}(?:\.[1-9][0-9]{0,4}){0,19}\Z")
_BASE64_JUNK: Final = bytes(b for b in range(256) if not (
    0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or 0x30 <= b <= 0x39 or b in b"+/"))  # fmt: skip


@dataclass(frozen=True)
class Address:
    """A mailbox of an address list (RFC 5322 §3.4), display name decoded."""

    name: str
    address: str

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address

    @property
    def label(self) -> str:
        """What a list shows: the name, or the address when there is none."""
        return self.name or self.address


@dataclass(frozen=True)
class Attachment:
    part: str
    filename: str
    content_type: str
    #: Decoded size in bytes (base64 counted, not decoded).
    size: int


@dataclass(frozen=True)
class Body:
    #: "html": show sanitised in a frame; "plain": show escaped; "none": nothing to show;
    #: "pending": the body is still on the central server and the link is down.
    kind: Literal["html", "plain", "none", "pending"]
    text: str
    part: str | None = None


@dataclass(frozen=True)
class Structure:
    """Which part is the body, which are attachments, which are inline resources."""

    body: tuple[str, Part] | None
    attachments: tuple[tuple[str, Part], ...]
    #: Content-ID (without angle brackets) -> part number.
    inline: dict[str, str]


@dataclass(frozen=True)
class MessageView:
    subject: str
    from_: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    body: Body
    attachments: tuple[Attachment, ...]
    inline: dict[str, str] = field(default_factory=dict)


# --- text -------------------------------------------------------------------------------


def clean_text(value: str) -> str:
    """Text safe to put in a page: valid UTF-8, NFC, no control or bidi-override characters.

    Undecodable bytes (kept as lone surrogates by the MIME reader) become U+FFFD; bidi
    overrides go because they make a file name or address read as something else. The
    rule is shared with chat and the directory (`appliance.security.untrusted`).
    """
    return untrusted.display_text(value)


def header_values(content: bytes) -> dict[str, str]:
    """The first value of each top-level header field, RFC 2047 decoded, by lower-case name."""
    values: dict[str, str] = {}
    for name, value in mime.decoded_headers(content):
        values.setdefault(name, clean_text(value))
    return values


def addresses(items: mime.AddressList) -> tuple[Address, ...]:
    """Addresses of an ENVELOPE list; group markers (RFC 3501 §7.4.2) are left out."""
    found = []
    for name, _adl, mailbox, host in items or ():
        if mailbox is None or host is None:
            continue
        address = f"{mailbox}@{host}" if host else mailbox
        display = clean_text(mime.decode_words(name)) if name else ""
        found.append(Address(display.strip(), clean_text(address)))
    return tuple(found)


def parse_date(value: str | None) -> datetime | None:
    """The Date field (RFC 5322 §3.3) as an aware datetime, or None if unreadable."""
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # "-0000" means "time zone unknown" (§3.3): read it as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- structure --------------------------------------------------------------------------


def numbered(part: Part, prefix: str = "") -> Iterator[tuple[str, Part]]:
    """The children of a multipart with their part numbers."""
    for index, child in enumerate(part.children, 1):
        yield (f"{prefix}.{index}" if prefix else str(index)), child


def find_part(root: Part, number: str) -> Part | None:
    """The part numbered *number* (IMAP numbering, encapsulated messages not entered)."""
    if not _PART_NUMBER.match(number):
        return None
    if not root.is_multipart:
        return root if number == "1" else None
    current = root
    for piece in number.split("."):
        if not current.is_multipart:
            return None
        index = int(piece)
        if index > len(current.children):
            return None
        current = current.children[index - 1]
    return current


def structure(root: Part) -> Structure:
    """Find the body, the attachments and the inline resources of a part tree."""
    collected = _Collected()
    if root.is_multipart:
        _walk(root, "", collected)
    else:
        _leaf(root, "1", collected)
    return Structure(collected.body, tuple(collected.attachments), collected.inline)


@dataclass
class _Collected:
    body: tuple[str, Part] | None = None
    attachments: list[tuple[str, Part]] = field(default_factory=list)
    inline: dict[str, str] = field(default_factory=dict)


def _walk(part: Part, number: str, out: _Collected) -> None:
    children = list(numbered(part, number))
    if part.subtype == "alternative":
        best = max(enumerate(children), key=lambda item: (_richness(item[1][1]), item[0]))
        child_number, child = best[1]
        _visit(child, child_number, out)
        return
    if part.subtype == "related":
        start = part.param("start")
        root_index = 0
        for index, (_, child) in enumerate(children):
            if start and child.id and _content_id(child.id) == _content_id(start):
                root_index = index
        for index, (child_number, child) in enumerate(children):
            if index == root_index:
                _visit(child, child_number, out)
            elif child.id and not child.is_multipart:
                out.inline[_content_id(child.id)] = child_number
            else:
                _visit(child, child_number, out)
        return
    for child_number, child in children:
        _visit(child, child_number, out)


def _visit(part: Part, number: str, out: _Collected) -> None:
    if part.is_multipart:
        _walk(part, number, out)
    else:
        _leaf(part, number, out)


def _leaf(part: Part, number: str, out: _Collected) -> None:
    showable = part.type == "text" and part.subtype in ("plain", "html")
    if out.body is None and showable and part.disposition != "attachment":
        out.body = (number, part)
        return
    if part.id:
        # Apple Mail puts inline images in multipart/mixed: reachable by cid: too.
        out.inline.setdefault(_content_id(part.id), number)
    out.attachments.append((number, part))


def _richness(part: Part) -> int:
    """How good an alternative is to show: HTML 2, plain text 1, anything else 0."""
    if part.is_multipart:
        return max((_richness(child) for child in part.children), default=0)
    if part.type == "text" and part.subtype == "html":
        return 2
    if part.type == "text" and part.subtype == "plain":
        return 1
    return 0


def _content_id(value: str) -> str:
    """A Content-ID (RFC 2045 §7) or cid: URL (RFC 2392) as a bare addr-spec."""
    value = value.strip()
    if value.lower().startswith("cid:"):
        value = unquote(value[4:])
    return value.strip().removeprefix("<").removesuffix(">").strip()


def content_id(url: str) -> str:
    """The Content-ID a ``cid:`` URL names (RFC 2392 §2: URL-encoded addr-spec)."""
    return _content_id(url)


# --- content ----------------------------------------------------------------------------


def part_bytes(content: bytes, part: Part) -> bytes:
    """The body of *part* with its transfer encoding undone (RFC 2045 §6), leniently."""
    raw = content[part.body_start : part.body_end]
    if part.encoding == "base64":
        clean = raw.translate(None, _BASE64_JUNK)
        if len(clean) % 4 == 1:
            clean = clean[:-1]  # a lone trailing character carries no whole byte
        try:
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            return b""
    if part.encoding == "quoted-printable":
        try:
            return binascii.a2b_qp(raw)
        except (binascii.Error, ValueError):
            return raw
    return raw


def part_text(content: bytes, part: Part) -> str:
    """The text of a text/* part decoded from its charset, markup kept (HTML stays HTML)."""
    # mime.part_text reduces text/html to its words (that is what SEARCH wants); as
    # text/plain the same part is decoded from its charset and left as written.
    return clean_text(mime.part_text(content, dataclasses.replace(part, subtype="plain")))


def decoded_size(content: bytes, part: Part) -> int:
    if part.encoding == "base64":
        raw = content[part.body_start : part.body_end]
        return len(raw.translate(None, _BASE64_JUNK)) * 3 // 4
    return part.size


def filename(part: Part, number: str) -> str:
    """The name to save a part under: its own (RFC 2183, RFC 2231), else made up."""
    given = _param(part.disposition_params, "filename") or part.param("name") or ""
    # RFC 2047 words in a parameter break RFC 2231, but many mailers send them.
    name = _one_line(clean_text(mime.decode_words(given))) if given else ""
    name = re.split(r"[/\\]", name)[-1].strip().lstrip(".")[:200]
    if name:
        return name
    if part.type == "message" and part.subtype == "rfc822":
        return f"message-{number}.eml"
    guessed = mimetypes.guess_extension(f"{part.type}/{part.subtype}") or ".bin"
    return f"part-{number}{guessed}"


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def _param(params: mime.Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def download_type(part: Part) -> str:
    """Content-Type to download *part* with: its own if harmless, else octet-stream."""
    kind = f"{part.type}/{part.subtype}"
    if kind not in DOWNLOAD_TYPES:
        return "application/octet-stream"
    charset = part.param("charset") if part.type == "text" else None
    if charset and re.fullmatch(r"[A-Za-z0-9._:+-]{1,40}", charset):
        return f"{kind}; charset={charset}"
    return kind


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback and the UTF-8 name (RFC 6266 §4.3, RFC 8187)."""
    return untrusted.content_disposition(name)


def inline_images(content: bytes, root: Part, inline: dict[str, str]) -> dict[str, str]:
    """Content-ID -> data: URL of the inline images an HTML body may show.

    A framed body cannot fetch them from the box: its sandbox gives it an opaque
    origin, so the browser sends no SameSite=Strict session cookie with its requests.
    """
    urls: dict[str, str] = {}
    budget = INLINE_IMAGE_BUDGET
    for cid, number in inline.items():
        part = find_part(root, number)
        if part is None or part.type != "image" or part.subtype not in INLINE_IMAGE_TYPES:
            continue
        data = part_bytes(content, part)
        budget -= len(data)
        if budget < 0:
            break
        urls[cid] = f"data:image/{part.subtype};base64,{base64.b64encode(data).decode('ascii')}"
    return urls


# --- the whole message ------------------------------------------------------------------


def read_message(content: bytes, *, body_pending: bool = False) -> MessageView:
    """Everything the reading view shows of *content*; never raises on any input.

    *body_pending*: *content* is only the header block of a message whose body is
    still at the centre (`Mailstore.read_for_display`): the headers are shown, with a
    "not downloaded yet" notice in place of the body and no attachments.
    """
    root = mime.parse(content)
    fields = header_values(content)
    envelope = mime.envelope(content)
    found = structure(root)
    body = Body("none", "")
    if body_pending:
        found = Structure(None, (), {})
        body = Body("pending", "")
    elif found.body is not None:
        number, part = found.body
        kind: Literal["html", "plain"] = "html" if part.subtype == "html" else "plain"
        body = Body(kind, part_text(content, part), number)
    attachments = tuple(
        Attachment(
            number,
            filename(part, number),
            f"{part.type}/{part.subtype}",
            decoded_size(content, part),
        )
        for number, part in found.attachments
    )
    return MessageView(
        subject=fields.get("subject", ""),
        from_=addresses(envelope[2]),
        to=addresses(envelope[5]),
        cc=addresses(envelope[6]),
        reply_to=addresses(envelope[4]) if fields.get("reply-to") else (),
        date=parse_date(fields.get("date")),
        body=body,
        attachments=attachments,
        inline=found.inline,
    )
