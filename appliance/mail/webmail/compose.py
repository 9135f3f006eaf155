"""Compose a mail in the browser: form values in, a MIME message out (sans-I/O).

Everything here is pure: no store, no clock, no network. The pages (compose_pages.py)
read the form and the stored messages, and deliver what this module builds.

- `parse_addresses` reads a To/Cc/Bcc field as people type it: addresses separated by
  commas (or semicolons, as Outlook users type them), each a bare ``addr-spec`` or
  ``display name <addr-spec>`` (RFC 5322 §3.4, without groups or comments), checked
  with the directory's address rules (RFC 6531 §3.3: Thai local parts are fine).
- `compose` turns a `ComposeForm` (what the form posts, as text) into a `Composition`
  (validated values), or raises `ComposeError` listing every problem in both languages.
- `build_message` writes the message. Header fields (RFC 5322 §3.6): Date, From, To,
  Cc, Bcc (only in the copy kept in Sent or Drafts, §3.6.3), Subject, Message-ID,
  In-Reply-To and References (§3.6.4), X-Classification and X-Urgency in Thai words
  (docs/mail-headers.md; left out at the lowest level, as on a Thai official letter).
  The body is text/plain; charset=utf-8, quoted-printable or base64, whichever is
  shorter, and attachments make it multipart/mixed (RFC 2046 §5.1.3).
- `read_original` reads a stored message leniently; `reply_form`, `forward_form` and
  `draft_form` prefill the form from it.

Why the header fields are encoded here and not by `email.policy`: the stdlib's folder
loses or adds white space when it folds a long run of RFC 2047 encoded words (a long
Thai subject comes back with a space missing), and what the user typed must reach the
reader exactly. Encoding whole characters into encoded words (RFC 2047 §5) is short
enough to do right; the stdlib still builds the MIME body (`set_content`,
`add_attachment`, RFC 2231 file names) and parses everything in the tests.

What this is not: HTTP, storage or delivery (compose_pages.py), nor showing a message
(the reading pages sanitise HTML; here HTML is only flattened to text for quoting).
"""

from __future__ import annotations

import base64
import email
import email.policy
import mimetypes
import re
import secrets
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Final

from appliance.compliance.classification import (
    CLASSIFICATION_HEADER,
    URGENCY_HEADER,
    Classification,
    Urgency,
    parse_classification,
    parse_urgency,
)
from appliance.directory import DirectoryError, normalise_address
from appliance.web.i18n import Language, format_date

#: The most attachments one message may carry, decoded (the issue: "up to 25 MB").
MAX_ATTACHMENT_BYTES: Final = 25 * 1024 * 1024
#: Longest subject kept; a longer one is cut (no reader shows more).
MAX_SUBJECT_CHARS: Final = 998
#: Longest text quoted into a reply or forward; the rest is cut with a mark.
MAX_QUOTED_CHARS: Final = 100_000

#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters.
_LINE: Final = 78
#: Bytes of text per encoded word: ``=?utf-8?b?`` + 48 base64 characters + ``?=`` is 60,
#: so even "X-Classification: " plus one word stays within 78.
_WORD_BYTES: Final = 36
#: A display name may use the longest legal word (75 characters, RFC 2047 §2), so a
#: usual name is one word: some readers put a space between a name's words.
_NAME_WORD_BYTES: Final = 45
#: RFC 5322 §3.6.4 msg-id, kept to printable ASCII without white space or brackets.
_MSG_ID = re.compile(r"<([\x21-\x3b\x3d\x3f-\x7e]{1,250})>")
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")
#: RFC 5322 §3.6.5 "Re: ", and the forms other clients write (RE:, Re[2]:).
_REPLY_PREFIX = re.compile(r"^\s*re\s*(?:\[\d+\])?\s*:\s*", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*fwd?\s*:\s*", re.IGNORECASE)
_POLICY: Final = email.policy.default.clone(linesep="\r\n", cte_type="7bit")
_READ_POLICY: Final = email.policy.default


# --- what the form holds ---------------------------------------------------------------


@dataclass(frozen=True)
class Mailbox:
    """One address of a header field (RFC 5322 §3.4 ``mailbox``)."""

    #: The addr-spec, in the directory's normal form when it is a valid one.
    address: str
    name: str = ""

    def for_form(self) -> str:
        """How the form shows it; `parse_addresses` reads it back unchanged."""
        if not self.name:
            return self.address
        return f"{_form_name(self.name)} <{self.address}>"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ComposeForm:
    """What the compose form shows and posts, as text (the user's own words)."""

    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    classification: Classification = Classification.NONE
    urgency: Urgency = Urgency.NORMAL
    #: The parent's msg-id with its brackets, for a reply.
    in_reply_to: str = ""
    #: msg-ids separated by spaces.
    references: str = ""


@dataclass(frozen=True)
class Problem:
    """Something the user must fix, in both languages, and the field it is about."""

    field: str
    th: str
    en: str


class ComposeError(Exception):
    """The form cannot be sent or saved as it is; `problems` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(p.en for p in problems))
        self.problems = tuple(problems)


class AddressError(ValueError):
    """One item of an address field is not an address."""

    def __init__(self, item: str, reason_en: str, reason_th: str) -> None:
        super().__init__(f"{item!r}: {reason_en}")
        self.item = item
        self.reason_en = reason_en
        self.reason_th = reason_th


@dataclass(frozen=True)
class Composition:
    """A message ready to build: every value checked and in its final form."""

    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    subject: str = ""
    body: str = "\n"
    classification: Classification = Classification.NONE
    urgency: Urgency = Urgency.NORMAL
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()

    def recipients(self) -> list[str]:
        """Every envelope recipient once, To first, then Cc, then Bcc."""
        return list(dict.fromkeys(m.address for m in (*self.to, *self.cc, *self.bcc)))


# --- addresses --------------------------------------------------------------------------


def parse_addresses(text: str) -> list[Mailbox]:
    """Read an address field; raise `AddressError` naming the first item that is wrong.

    Empty items (a trailing comma) are skipped; a display name may be quoted, and must
    be if it holds a comma, a semicolon or angle brackets.
    """
    found: list[Mailbox] = []
    for item in _split_items(text):
        item = item.strip()
        if item:
            found.append(_parse_item(item))
    return found


def _split_items(text: str) -> Iterator[str]:
    current: list[str] = []
    quoted = angle = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char in ",;" and not angle:
            yield "".join(current)
            current = []
            continue
        current.append(char)
    if quoted:
        item = "".join(current).strip()
        raise AddressError(item, "a quotation mark is not closed", "เครื่องหมายคำพูดไม่ครบคู่")
    yield "".join(current)


def _parse_item(item: str) -> Mailbox:
    if item.endswith(">") and "<" in item:
        opening = item.rindex("<")
        name = item[:opening].strip()
        spec = item[opening + 1 : -1].strip()
    elif "<" in item or ">" in item:
        raise AddressError(item, "angle brackets do not match", "เครื่องหมาย < > ไม่ครบคู่")
    else:
        name, spec = "", item
    if not name.startswith('"') and ("<" in name or ">" in name):
        raise AddressError(item, "this is not one address", "ไม่ใช่ที่อยู่อีเมลเดียว")
    try:
        address = normalise_address(spec)
    except DirectoryError:
        raise AddressError(
            item, "this is not a valid e-mail address", "ไม่ใช่ที่อยู่อีเมลที่ถูกต้อง"
        ) from None
    return Mailbox(address, _clean_line(_unquote(name)))


def _unquote(name: str) -> str:
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        return re.sub(r"\\(.)", r"\1", name[1:-1], flags=re.DOTALL)
    return name


def _form_name(name: str) -> str:
    if name != name.strip() or any(c in name for c in ',;<>"\\'):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def format_addresses(mailboxes: Iterable[Mailbox]) -> str:
    """The text of an address field of the form."""
    return ", ".join(m.for_form() for m in mailboxes)


# --- from the form to a composition -------------------------------------------------------


_FIELD_NAMES: Final = {"to": ("ถึง", "To"), "cc": ("สำเนาถึง", "Cc"), "bcc": ("สำเนาลับถึง", "Bcc")}


def compose(
    form: ComposeForm,
    attachments: Sequence[Attachment] = (),
    *,
    require_recipients: bool,
    max_recipients: int = 100,
) -> Composition:
    """Check *form* and return what to build; raise `ComposeError` with every problem."""
    problems: list[Problem] = []
    lists: dict[str, tuple[Mailbox, ...]] = {}
    for name in ("to", "cc", "bcc"):
        try:
            lists[name] = tuple(parse_addresses(getattr(form, name)))
        except AddressError as exc:
            lists[name] = ()
            thai, english = _FIELD_NAMES[name]
            problems.append(
                Problem(
                    name,
                    f"ช่อง “{thai}”: “{exc.item}” {exc.reason_th}",
                    f"{english}: “{exc.item}” — {exc.reason_en}",
                )
            )
    composition = Composition(
        to=lists["to"],
        cc=lists["cc"],
        bcc=lists["bcc"],
        subject=canonical_subject(form.subject),
        body=canonical_body(form.body),
        classification=form.classification,
        urgency=form.urgency,
        in_reply_to=next(iter(parse_msg_ids(form.in_reply_to)), None),
        references=parse_msg_ids(form.references),
        attachments=tuple(attachments),
    )
    count = len(composition.recipients())
    if require_recipients and not problems and count == 0:
        problems.append(Problem("to", "กรุณาระบุผู้รับอย่างน้อยหนึ่งคน", "Add at least one recipient"))
    if count > max_recipients:
        problems.append(
            Problem(
                "to",
                f"ส่งถึงผู้รับได้ไม่เกิน {max_recipients} คนต่อฉบับ (ขณะนี้ {count} คน)",
                f"A message may have at most {max_recipients} recipients (this one has {count})",
            )
        )
    if problems:
        raise ComposeError(problems)
    return composition


def canonical_subject(text: str) -> str:
    """The subject as it is sent: control characters become spaces, ends trimmed."""
    return _clean_line(text)[:MAX_SUBJECT_CHARS].strip()


def canonical_body(text: str) -> str:
    """The body as it is sent: lines end in "\\n" (CRLF on the wire), last one too."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _clean_line(text: str) -> str:
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text).strip()


def parse_msg_ids(text: str) -> tuple[str, ...]:
    """The msg-ids of a Message-ID, In-Reply-To or References value, brackets kept."""
    return tuple(dict.fromkeys(f"<{m}>" for m in _MSG_ID.findall(text or "")))


def new_message_id(hostname: str) -> str:
    """A Message-ID no other message has (RFC 5322 §3.6.4): random left, box right."""
    host = hostname.encode("idna").decode("ascii") if not hostname.isascii() else hostname
    return f"<{secrets.token_hex(16)}@{host}>"


def clean_attachment(filename: str, content_type: str, data: bytes) -> Attachment:
    """An attachment with a safe file name and a well-formed media type."""
    name = "".join(c for c in filename if unicodedata.category(c) not in ("Cc", "Cf"))
    name = re.split(r"[\\/]", name)[-1].strip()[:255] or "attachment"
    kind = content_type.strip().lower()
    if not _MEDIA_TYPE.match(kind) or kind.split("/")[0] in ("multipart", "message"):
        # message/* must not be base64-encoded (RFC 2046 §5.2.1) and multipart/* is a
        # container: either travels as opaque bytes.
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.split("/")[0] in ("multipart", "message"):
            kind = "application/octet-stream"
    return Attachment(name, kind, data)


# --- building the message -------------------------------------------------------------------


def needs_smtputf8(composition: Composition, author: Mailbox) -> bool:
    """Whether an address is not ASCII, so the message needs SMTPUTF8 (RFC 6531)."""
    everyone = (author, *composition.to, *composition.cc, *composition.bcc)
    return any(not m.address.isascii() for m in everyone)


def build_message(
    composition: Composition,
    author: Mailbox,
    *,
    message_id: str,
    date: datetime,
    include_bcc: bool,
) -> bytes:
    """Write the message, CRLF line ends; with *include_bcc* for the sender's own copy."""
    c = composition
    fields: list[tuple[str, str]] = [
        ("Date", format_datetime(date)),
        ("From", encode_addresses("From", [author])),
    ]
    if c.to:
        fields.append(("To", encode_addresses("To", c.to)))
    if c.cc:
        fields.append(("Cc", encode_addresses("Cc", c.cc)))
    # RFC 5322 §3.6.3: the copies the recipients get do not show the Bcc field; the
    # sender's own copy keeps it so the sender can see who was sent a blind copy.
    if include_bcc and c.bcc:
        fields.append(("Bcc", encode_addresses("Bcc", c.bcc)))
    if c.subject:
        fields.append(("Subject", encode_text("Subject", c.subject)))
    fields.append(("Message-ID", message_id))
    if c.in_reply_to:
        fields.append(("In-Reply-To", c.in_reply_to))
    if c.references:
        ids = list(c.references)
        fields.append(
            ("References", _fold_pieces("References", [ids[0], *(" " + i for i in ids[1:])]))
        )
    if c.classification is not Classification.NONE:
        fields.append((CLASSIFICATION_HEADER, encode_text(CLASSIFICATION_HEADER,
                                                          c.classification.thai)))  # fmt: skip
    if c.urgency is not Urgency.NORMAL:
        fields.append((URGENCY_HEADER, encode_text(URGENCY_HEADER, c.urgency.thai)))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return head.encode("utf-8") + _mime_body(c)


def _mime_body(c: Composition) -> bytes:
    """The MIME-Version and Content-* fields and the body, built by the stdlib."""
    message = EmailMessage(policy=_POLICY)
    # cte_type="7bit": the stdlib picks 7bit for short ASCII lines, otherwise
    # quoted-printable or base64, whichever comes out shorter (RFC 2045 §6).
    message.set_content(c.body, subtype="plain", charset="utf-8")
    for attachment in c.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    for part in message.iter_parts():
        # The stdlib repeats MIME-Version in every part; RFC 2045 §4 needs it on top only.
        del part["MIME-Version"]
    return message.as_bytes()


def encode_text(name: str, text: str) -> str:
    """An unstructured field's value (RFC 5322 §3.2.5), folded, decoding to *text*.

    Printable ASCII that cannot be mistaken for an encoded word is written as it is,
    folded before spaces; anything else becomes RFC 2047 "B" encoded words of whole
    characters, one per line (white space between encoded words is not text, §6.2).
    """
    if all(" " <= c <= "~" for c in text) and "=?" not in text:
        pieces = re.split(r"(?<=[^ ])(?= )", text)
        folded = _fold_pieces(name, pieces)
        if all(len(line) <= 998 for line in folded.split("\r\n")):
            return folded
    return "\r\n ".join(_encoded_words(text, _WORD_BYTES))


def _encoded_words(text: str, budget: int) -> list[str]:
    """RFC 2047 "B" words of at most *budget* bytes, never splitting a character (§5)."""
    chunks: list[bytes] = []
    chunk = b""
    for char in text:
        raw = char.encode("utf-8")
        if chunk and len(chunk) + len(raw) > budget:
            chunks.append(chunk)
            chunk = b""
        chunk += raw
    if chunk:
        chunks.append(chunk)
    return ["=?utf-8?b?" + base64.b64encode(c).decode("ascii") + "?=" for c in chunks]


def encode_addresses(name: str, mailboxes: Sequence[Mailbox]) -> str:
    """An address list (RFC 5322 §3.4), names quoted or encoded, folded between items.

    An address that is not ASCII is written as UTF-8 (RFC 6532 §3.2); such a message
    goes out only with SMTPUTF8 (`needs_smtputf8`).
    """
    items = [_encode_mailbox(m) for m in mailboxes]
    single = ", ".join(items)
    if "\r\n" not in single and len(name) + 2 + len(single) <= _LINE:
        return single
    return ",\r\n ".join(items)


def _encode_mailbox(mailbox: Mailbox) -> str:
    name = mailbox.name
    if not name:
        return mailbox.address
    if all(" " <= c <= "~" for c in name) and "=?" not in name:
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        # RFC 2047 §5 (3): encoded words may stand for a phrase's words.
        phrase = "\r\n ".join(_encoded_words(name, _NAME_WORD_BYTES))
    return f"{phrase} <{mailbox.address}>"


def _fold_pieces(name: str, pieces: list[str]) -> str:
    """Join *pieces* greedily into lines of 78; each later line starts with its space."""
    lines: list[str] = []
    current = ""
    width = len(name) + 2
    for piece in pieces:
        if current and width + len(current) + len(piece) > _LINE and piece[:1] == " ":
            lines.append(current)
            current, width = "", 0
        current += piece
    lines.append(current)
    return "\r\n".join(lines)


# --- reading the message replied to or forwarded -------------------------------------------


@dataclass(frozen=True)
class Original:
    """What compose needs from a stored message; read leniently, never raising."""

    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str = ""
    sender: tuple[Mailbox, ...] = ()
    reply_to: tuple[Mailbox, ...] = ()
    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    date: datetime | None = None
    #: The plain text of the body (an HTML-only message flattened to text).
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    classification: Classification = Classification.NONE
    urgency: Urgency = Urgency.NORMAL


def read_original(content: bytes) -> Original:
    """Read what a reply, a forward or a draft needs from *content*."""
    message = email.message_from_bytes(content, policy=_READ_POLICY)
    assert isinstance(message, EmailMessage)
    text, attachments = _body_and_attachments(message)
    return Original(
        message_id=next(iter(parse_msg_ids(_header(message, "Message-ID"))), None),
        in_reply_to=parse_msg_ids(_header(message, "In-Reply-To")),
        references=parse_msg_ids(_header(message, "References")),
        subject=_clean_line(_header(message, "Subject")),
        sender=_mailboxes(message, "From"),
        reply_to=_mailboxes(message, "Reply-To"),
        to=_mailboxes(message, "To"),
        cc=_mailboxes(message, "Cc"),
        bcc=_mailboxes(message, "Bcc"),
        date=_date(_header(message, "Date")),
        text=text,
        attachments=attachments,
        classification=parse_classification(_header(message, CLASSIFICATION_HEADER) or None),
        urgency=parse_urgency(_header(message, URGENCY_HEADER) or None),
    )


def _header(message: EmailMessage, name: str) -> str:
    # The stdlib has raised on hostile header values; a field it cannot read is absent.
    try:
        value = message.get(name)
        return "" if value is None else str(value)
    except Exception:
        return ""


def _mailboxes(message: EmailMessage, name: str) -> tuple[Mailbox, ...]:
    try:
        value = message.get(name)
        addresses = () if value is None else value.addresses
    except Exception:
        return ()
    found: list[Mailbox] = []
    for address in addresses:
        try:
            spec, display = address.addr_spec, address.display_name
        except Exception:  # noqa: S112 - a hostile address is skipped, the rest kept
            continue
        if "@" not in spec:
            continue
        try:
            spec = normalise_address(spec)
        except DirectoryError:
            pass  # kept as written: the user sees it in the form and may fix it
        found.append(Mailbox(_clean_line(spec), _clean_line(display or "")))
    return tuple(dict.fromkeys(found))


def _date(value: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return moment


def _leaves(part: EmailMessage, depth: int = 0) -> Iterator[EmailMessage]:
    if part.get_content_maintype() == "multipart":
        if depth < 20:  # a hostile nesting depth is cut, not followed
            for sub in part.iter_parts():
                yield from _leaves(sub, depth + 1)  # type: ignore[arg-type]
    else:
        yield part


def _filename(part: EmailMessage) -> str:
    try:
        return part.get_filename() or ""
    except Exception:
        return ""


def _is_text_body(part: EmailMessage) -> bool:
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and not _filename(part)
    )


def _body_and_attachments(message: EmailMessage) -> tuple[str, tuple[Attachment, ...]]:
    plain: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part in _leaves(message):
        if _is_text_body(part):
            if part.get_content_type() == "text/plain" and plain is None:
                plain = _decoded_text(part)
            elif part.get_content_type() == "text/html" and html is None:
                html = _decoded_text(part)
            continue
        data = _part_bytes(part)
        if data is None:
            continue
        number = len(attachments) + 1
        kind = part.get_content_type()
        name = _filename(part)
        if not name:
            extension = ".eml" if kind == "message/rfc822" else mimetypes.guess_extension(kind)
            name = f"attachment-{number}{extension or '.bin'}"
        attachments.append(clean_attachment(name, kind, data))
    if plain is not None:
        text = plain
    elif html is not None:
        text = html_to_text(html)
    else:
        text = ""
    return text.replace("\r\n", "\n").replace("\r", "\n"), tuple(attachments)


def _decoded_text(part: EmailMessage) -> str:
    data = _part_bytes(part) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:  # a charset Python does not know: UTF-8 is the best guess
        return data.decode("utf-8", "replace")


def _part_bytes(part: EmailMessage) -> bytes | None:
    try:
        if part.get_content_maintype() == "message":
            inner = part.get_payload(0)
            return inner.as_bytes(policy=_READ_POLICY) if isinstance(inner, Message) else None
        data = part.get_payload(decode=True)
    except Exception:
        return None
    return data if isinstance(data, bytes) else None


class _TextOfHtml(HTMLParser):
    BLOCKS = frozenset({
        "address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre",
        "section", "table", "tr", "ul",
    })  # fmt: skip
    HIDDEN = frozenset({"head", "script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Flatten HTML to plain text for quoting: words and line breaks, no markup."""
    parser = _TextOfHtml()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: S110 - whatever was read so far is the text
        pass
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


# --- prefilled forms -----------------------------------------------------------------------


def reply_subject(subject: str) -> str:
    """``Re: `` once, however many the parent had (RFC 5322 §3.6.5)."""
    rest = subject
    while match := _REPLY_PREFIX.match(rest):
        rest = rest[match.end() :]
    return "Re: " + rest


def forward_subject(subject: str) -> str:
    """``Fwd: `` once."""
    rest = subject
    while match := _FORWARD_PREFIX.match(rest):
        rest = rest[match.end() :]
    return "Fwd: " + rest


def quote(text: str) -> str:
    """Quote *text* for a reply: each line behind ``> `` (``>`` before ``>`` or nothing)."""
    if not text.strip():
        return ""
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "\n[…]"
    lines = text.rstrip("\n").split("\n")
    return "\n".join(">" if not line else ">" + line if line[0] == ">" else "> " + line
                     for line in lines)  # fmt: skip


def _person(mailboxes: Sequence[Mailbox], lang: Language) -> str:
    if not mailboxes:
        return "ผู้ส่ง" if lang == "th" else "The sender"
    return mailboxes[0].name or mailboxes[0].address


def attribution(original: Original, lang: Language) -> str:
    """The line above a quoted reply: who wrote it and when (Buddhist Era in Thai)."""
    name = _person(original.sender, lang)
    if lang == "th":
        when = f"เมื่อ {format_date(original.date, 'th')} " if original.date else ""
        return f"{when}{name} เขียนว่า:"
    if original.date:
        return f"On {format_date(original.date, 'en')}, {name} wrote:"
    return f"{name} wrote:"


def references_of(original: Original) -> tuple[str, ...]:
    """A reply's References (RFC 5322 §3.6.4): the parent's, then its Message-ID."""
    parent = original.references or (original.in_reply_to if len(original.in_reply_to) == 1 else ())
    chain = [*parent, *([original.message_id] if original.message_id else [])]
    return tuple(dict.fromkeys(chain))


def reply_form(original: Original, me: str, *, everyone: bool, lang: Language) -> ComposeForm:
    """The form of a reply (to the sender) or a reply to all, quoting the original."""
    targets = original.reply_to or original.sender
    if original.sender and all(m.address == me for m in original.sender):
        # A reply to one's own message (from Sent) goes to its recipients again.
        targets = original.to or original.sender
    to: tuple[Mailbox, ...] = _unique(targets, ())
    cc: tuple[Mailbox, ...] = ()
    if everyone:
        to = _unique((*targets, *original.to), (me,)) or to
        cc = _unique(original.cc, (me, *(m.address for m in to)))
    body = f"\n\n{attribution(original, lang)}\n{quote(original.text)}\n"
    return ComposeForm(
        to=format_addresses(to),
        cc=format_addresses(cc),
        subject=reply_subject(original.subject),
        body=body,
        # A reply to a classified letter is as secret as the letter, until the
        # writer decides otherwise; its speed is the writer's own choice.
        classification=original.classification,
        in_reply_to=original.message_id or "",
        references=" ".join(references_of(original)),
    )


def forward_form(original: Original, lang: Language) -> ComposeForm:
    """The form of a forward: the original's header block and quoted text."""
    th = lang == "th"
    block = [
        "---------- ข้อความที่ส่งต่อ ----------" if th else "---------- Forwarded message ----------",
        f"{'จาก' if th else 'From'}: {format_addresses(original.sender)}",
    ]
    if original.date:
        block.append(f"{'วันที่' if th else 'Date'}: {format_date(original.date, lang)}")
    block.append(f"{'เรื่อง' if th else 'Subject'}: {original.subject}")
    if original.to:
        block.append(f"{'ถึง' if th else 'To'}: {format_addresses(original.to)}")
    if original.cc:
        block.append(f"{'สำเนาถึง' if th else 'Cc'}: {format_addresses(original.cc)}")
    body = "\n\n" + "\n".join(block) + "\n\n" + quote(original.text) + "\n"
    return ComposeForm(
        subject=forward_subject(original.subject),
        body=body,
        classification=original.classification,
    )


def draft_form(original: Original) -> ComposeForm:
    """The form of a saved draft, as it was saved."""
    return ComposeForm(
        to=format_addresses(original.to),
        cc=format_addresses(original.cc),
        bcc=format_addresses(original.bcc),
        subject=original.subject,
        body=original.text,
        classification=original.classification,
        urgency=original.urgency,
        in_reply_to=original.in_reply_to[0] if original.in_reply_to else "",
        references=" ".join(original.references),
    )


def _unique(mailboxes: Iterable[Mailbox], exclude: Iterable[str]) -> tuple[Mailbox, ...]:
    seen = set(exclude)
    kept: list[Mailbox] = []
    for mailbox in mailboxes:
        if mailbox.address not in seen:
            seen.add(mailbox.address)
            kept.append(mailbox)
    return tuple(kept)
