"""The MIME structure of a stored message, as IMAP sees it (RFC 3501 §7.4.2, §6.4.5).

A pure reader shared by the IMAP server (FETCH, SEARCH, SORT), the webmail, the search
index and mailbox replication; it lives in `appliance.mail`, not under `imap/`, because
IMAP is one of its several users.

Everything FETCH and SEARCH need to know about a message's inside lives here: the part
tree (`parse`), ENVELOPE (`envelope`), BODY and BODYSTRUCTURE (`bodystructure`), the
wire form of those nested values (`serialize`), BODY[section] and <partial> content
(`section`, `partial`), and the decoded text SEARCH matches against
(`header_text_for_search`, `body_text_for_search`). It is not the IMAP protocol: no
commands, no sockets, no trio, no mailbox state.

Every function here takes the raw bytes of the message exactly as stored and must not
raise on any input, because hostile and broken mail is normal. Whatever cannot be read
falls back to what RFC 2045 §5.2 prescribes for an unreadable Content-Type: a
text/plain part. The part tree keeps only offsets into the original bytes, so a 36 MB
attachment is never copied while the structure is built.

Choices where the RFCs leave room:

- Type, subtype, transfer encoding, disposition type and parameter names are upper-cased
  in BODYSTRUCTURE (``"TEXT" "PLAIN" ("CHARSET" "US-ASCII")``, as in the RFC 3501
  examples); parameter values and every ENVELOPE string are sent as written in the
  message (encoded words included: clients decode them).
- RFC 2231 parameters are decoded into `Part.params`; a value that is not ASCII is sent
  in BODYSTRUCTURE as one merged RFC 2231 ``NAME*`` parameter in UTF-8 (the form
  Dovecot sends), never as raw 8-bit.
- A body part number that does not exist yields empty content, as in Dovecot.
- An address without a domain gets host ``""`` (NIL would read as a group marker).
"""

from __future__ import annotations

import binascii
import html
import json
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

#: A nested IMAP value: NIL, a string, a number or a parenthesised list.
Value: TypeAlias = "str | bytes | int | tuple[Value, ...] | None"
#: ENVELOPE address (RFC 3501 §7.4.2): (name, adl, mailbox, host).
Address: TypeAlias = tuple[str | None, str | None, str | None, str | None]
AddressList: TypeAlias = tuple[Address, ...] | None
#: ENVELOPE: date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id.
Envelope: TypeAlias = tuple[
    str | None,
    str | None,
    AddressList,
    AddressList,
    AddressList,
    AddressList,
    AddressList,
    AddressList,
    str | None,
    str | None,
]
Params: TypeAlias = tuple[tuple[str, str], ...]

#: Only the first MiB of a header section is read for fields; the offsets still cover
#: all of it. Real headers are a few KiB; this bounds the work a hostile one can cause.
MAX_HEADER_READ = 1 << 20
#: Nesting and part-count limits (Dovecot's message_max_nested / message_max_parts).
MAX_DEPTH = 100
MAX_PARTS = 10_000
#: Lines starting with "--" indexed per parse before falling back to plain scans.
MAX_DASH_LINES = 100_000
#: Longer boundaries (RFC 2046 allows 70 characters) are found by scanning, not indexed.
MAX_BOUNDARY = 200
#: Bytes scanned for delimiters without the index, as a multiple of the message size.
SCAN_FACTOR = 4

_DEFAULT_TEXT_PARAMS: Params = (("charset", "US-ASCII"),)
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity: offsets into the message and its parsed Content-* fields.

    ``header_end == body_start``: the header section includes the empty line that ends
    it. For multipart/* the children are the body parts; for message/rfc822 the single
    child is the encapsulated message (and `envelope` is its ENVELOPE).
    """

    header_start: int
    header_end: int
    body_start: int
    body_end: int
    type: str = "text"
    subtype: str = "plain"
    params: Params = _DEFAULT_TEXT_PARAMS
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    disposition: str | None = None
    disposition_params: Params = ()
    language: tuple[str, ...] = ()
    location: str | None = None
    md5: str | None = None
    lines: int = 0
    children: tuple[Part, ...] = ()
    envelope: Envelope | None = None

    @property
    def size(self) -> int:
        """Return the body size in octets, as BODYSTRUCTURE reports it."""
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        """Return whether the part has body parts (multipart/* with a boundary)."""
        return self.type == "multipart" and bool(self.children)

    @property
    def is_message(self) -> bool:
        """Return whether the part encapsulates a parsed message (message/rfc822)."""
        return self.type == "message" and self.subtype == "rfc822" and bool(self.children)

    def param(self, name: str) -> str | None:
        """Return the Content-Type parameter *name* (case-insensitive), if present."""
        return _param(self.params, name)


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A BODY[section] specifier (RFC 3501 §6.4.5): part numbers, then an optional text.

    ``text`` is one of HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME or None;
    ``fields`` holds the field names for the two HEADER.FIELDS forms.
    """

    parts: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# Header sections


def _header_end(data: bytes, start: int, end: int) -> int:
    """Return the offset just after the empty line ending the header at *start*.

    The empty line may end in CRLF or LF. Without one, the whole range is header.
    """
    if data.startswith(b"\r\n", start, end):
        return start + 2
    if data.startswith(b"\n", start, end):
        return start + 1
    crlf = data.find(b"\n\r\n", start, end)
    limit = crlf + 2 if crlf >= 0 else end
    lf = data.find(b"\n\n", start, limit)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


def _field_spans(data: bytes, start: int, end: int) -> list[tuple[str, int, int, int]]:
    """Return ``(lower-case name, start, colon, end)`` for each field of a header section.

    Continuation lines (RFC 5322 §2.2.3) belong to the field above them; lines that
    are neither a field nor a continuation are skipped. *end* may include the empty
    line; it is never part of a field.
    """
    spans: list[tuple[str, int, int, int]] = []
    stop = min(end, start + MAX_HEADER_READ)
    pos = start
    current: list[int] | None = None  # [start, colon, end] of the field being read
    name = ""
    while pos < stop:
        newline = data.find(b"\n", pos, stop)
        line_end = stop if newline < 0 else newline + 1
        first = data[pos : pos + 1]
        if first in (b" ", b"\t") and current is not None:
            current[2] = line_end
        elif data[pos:line_end].strip(b"\r\n") == b"":
            break  # the empty line ending the header section
        else:
            if current is not None:
                spans.append((name, current[0], current[1], current[2]))
                current = None
            colon = data.find(b":", pos, line_end)
            raw_name = data[pos:colon].rstrip(b" \t") if colon > pos else b""
            if raw_name and all(33 <= byte <= 126 for byte in raw_name):
                name = raw_name.decode("ascii").lower()
                current = [pos, colon, line_end]
        pos = line_end
    if current is not None:
        spans.append((name, current[0], current[1], current[2]))
    return spans


def _unfold(raw: bytes) -> str:
    """Return a field body unfolded (RFC 5322 §2.2.3) and trimmed, bytes kept exactly."""
    value = raw.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
    return value.decode("utf-8", "surrogateescape")


def _fields(data: bytes, start: int, end: int) -> dict[str, str]:
    """Return the first value of each header field, keyed by lower-case name."""
    fields: dict[str, str] = {}
    for name, _, colon, field_end in _field_spans(data, start, end):
        if name not in fields:
            fields[name] = _unfold(data[colon + 1 : field_end])
    return fields


# --------------------------------------------------------------------------------------
# Structured field bodies: Content-Type and friends (RFC 2045 §5.1, RFC 2231)


def _strip_comments(text: str) -> str:
    """Remove RFC 5322 comments outside quoted strings (nested, unterminated allowed)."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
        elif quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def _split_params(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``value *(; name=value)`` into the leading value and raw parameter pairs.

    Parameter values may be tokens or quoted strings; unquoted values with spaces (a
    common mistake) are taken up to the next ``;``.
    """
    text = _strip_comments(text)
    head, _, rest = text.partition(";")
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(rest):
        while pos < len(rest) and rest[pos] in " \t;":
            pos += 1
        equals = rest.find("=", pos)
        semicolon = rest.find(";", pos)
        if equals < 0 or (0 <= semicolon < equals):
            if semicolon < 0:
                break
            pos = semicolon + 1
            continue
        name = rest[pos:equals].strip().lower()
        pos = equals + 1
        while pos < len(rest) and rest[pos] in " \t":
            pos += 1
        if rest[pos : pos + 1] == '"':
            chars: list[str] = []
            pos += 1
            while pos < len(rest) and rest[pos] != '"':
                if rest[pos] == "\\" and pos + 1 < len(rest):
                    pos += 1
                chars.append(rest[pos])
                pos += 1
            value = "".join(chars)
            semicolon = rest.find(";", pos)
            pos = len(rest) if semicolon < 0 else semicolon + 1
        else:
            semicolon = rest.find(";", pos)
            stop = len(rest) if semicolon < 0 else semicolon
            value = rest[pos:stop].strip()
            pos = stop + 1
        if name:
            pairs.append((name, value))
    return head.strip(), pairs


_CONTINUATION = re.compile(r"(.+?)\*(?:(\d{1,3})\*?|)\Z")


def _decode_params(pairs: list[tuple[str, str]]) -> Params:
    """Merge RFC 2231 continuations and decode charset'language'%XX values.

    ``name*`` and ``name*0*`` carry ``charset'language'`` and %-escapes; ``name*N``
    are plain continuations. An RFC 2231 form wins over a plain one of the same name.
    """
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[bool, str]]] = {}
    for name, value in pairs:
        match = _CONTINUATION.match(name)
        if match is None:
            plain.setdefault(name, value)
            continue
        base, number = match.group(1), match.group(2)
        index = int(number) if number is not None else 0
        encoded = name.endswith("*")
        extended.setdefault(base, {}).setdefault(index, (encoded, value))
    decoded: dict[str, str] = dict(plain)
    for base, segments in extended.items():
        if 0 not in segments:
            continue  # not a usable RFC 2231 value; a plain one, if any, stands
        charset = ""
        raw = bytearray()
        for index in range(len(segments)):  # stop at the first gap (RFC 2231 §3)
            if index not in segments:
                break
            encoded, value = segments[index]
            if encoded:
                if index == 0 and value.count("'") >= 2:
                    charset, _, rest = value.partition("'")
                    value = rest.partition("'")[2]
                raw += _percent_decode(value)
            else:
                raw += value.encode("utf-8", "surrogateescape")
        decoded[base] = _decode_text(bytes(raw), charset or None)
    return tuple(decoded.items())


def _percent_decode(value: str) -> bytes:
    """Decode %XX escapes; a malformed escape is kept literally."""
    data = value.encode("utf-8", "surrogateescape")
    out = bytearray()
    pos = 0
    while pos < len(data):
        byte = data[pos]
        if byte == 0x25 and _is_hex(data[pos + 1 : pos + 3]):
            out.append(int(data[pos + 1 : pos + 3], 16))
            pos += 3
        else:
            out.append(byte)
            pos += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(byte) in "0123456789abcdefABCDEF" for byte in pair)


def _param(params: Params, name: str) -> str | None:
    wanted = name.lower()
    for key, value in params:
        if key == wanted:
            return value
    return None


def _content_type(value: str | None, default: tuple[str, str]) -> tuple[str, str, Params]:
    """Return ``(type, subtype, params)``; anything unreadable is text/plain (RFC 2045 §5.2)."""
    if value is None:
        params = _DEFAULT_TEXT_PARAMS if default[0] == "text" else ()
        return default[0], default[1], params
    head, pairs = _split_params(value)
    kind, slash, sub = head.partition("/")
    kind, sub = kind.strip().lower(), sub.strip().lower()
    if not slash or not _TOKEN.match(kind) or not _TOKEN.match(sub):
        return "text", "plain", _DEFAULT_TEXT_PARAMS
    params = _decode_params(pairs)
    if kind == "text" and _param(params, "charset") is None:
        params = (*_DEFAULT_TEXT_PARAMS, *params)
    return kind, sub, params


def _disposition(value: str | None) -> tuple[str | None, Params]:
    if value is None:
        return None, ()
    head, pairs = _split_params(value)
    head = head.strip().lower()
    if not head:
        return None, ()
    return head, _decode_params(pairs)


def _language(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    tags = (tag.strip() for tag in _strip_comments(value).split(","))
    return tuple(tag for tag in tags if tag)


# --------------------------------------------------------------------------------------
# The part tree


class _Budget:
    """Per-parse state: the part count, and an index of the lines that start with "--".

    Each multipart level looks for its own delimiter lines. Scanning its whole range
    with `bytes.find` is fast once, but a hostile message nesting 100 multiparts over a
    36 MB body would scan it 100 times. The index, built in one pass, maps what follows
    "--" on each such line (a trailing "--" removed too) to the line offsets, so a level
    finds its delimiters by lookup. A body with too many "--" lines is not indexed and
    every level scans instead, until the bytes scanned reach `SCAN_FACTOR` times the
    message size; deeper multiparts are then left unparsed (read as text).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0
        self.scanned = 0
        self._dash_lines: dict[bytes, list[int]] | None = None
        self._indexed = False

    def dash_lines(self) -> dict[bytes, list[int]] | None:
        """Return the delimiter-line index (offsets ascending), or None if too large."""
        if self._indexed:
            return self._dash_lines
        self._indexed = True
        data = self.data
        index: dict[bytes, list[int]] = {}
        count = 0
        pos = 0 if data.startswith(b"--") else _after(data.find(b"\n--"))
        while pos >= 0:
            count += 1
            if count > MAX_DASH_LINES:
                return None
            # A delimiter line is short; a longer line is cut, and the full line is
            # checked again by the caller anyway.
            limit = min(len(data), pos + MAX_BOUNDARY + 8)
            newline = data.find(b"\n", pos, limit)
            key = data[pos + 2 : limit if newline < 0 else newline].rstrip(b" \t\r")
            index.setdefault(key, []).append(pos)
            if key.endswith(b"--"):
                index.setdefault(key[:-2], []).append(pos)
            pos = _after(data.find(b"\n--", pos + 2))
        self._dash_lines = index
        return index


def _after(newline: int) -> int:
    """Return the offset after a found newline, or -1 when none was found."""
    return newline + 1 if newline >= 0 else -1


def parse(message: bytes) -> Part:
    """Return the MIME part tree of *message*; never raises."""
    return _parse_entity(message, 0, len(message), ("text", "plain"), 0, _Budget(message))


def _parse_entity(
    data: bytes, start: int, end: int, default: tuple[str, str], depth: int, budget: _Budget
) -> Part:
    """Parse the entity in ``data[start:end]``; a part that cannot be read is text/plain."""
    budget.parts += 1
    header_end = _header_end(data, start, end)
    try:
        return _parse_fields(data, start, header_end, end, default, depth, budget)
    except Exception:  # hostile mail must never break FETCH
        return Part(start, header_end, header_end, end, lines=_count_lines(data, header_end, end))


def _parse_fields(
    data: bytes,
    start: int,
    header_end: int,
    end: int,
    default: tuple[str, str],
    depth: int,
    budget: _Budget,
) -> Part:
    fields = _fields(data, start, header_end)
    kind, sub, params = _content_type(fields.get("content-type"), default)
    # The mechanism is a single token; anything after it (a stray ";", a second word)
    # is ignored rather than making the encoding unrecognisable.
    mechanism = _strip_comments(fields.get("content-transfer-encoding", "")).split(";")[0].split()
    encoding = mechanism[0].lower() if mechanism else "7bit"
    children: tuple[Part, ...] = ()
    envelope_value: Envelope | None = None
    too_deep = (
        depth >= MAX_DEPTH or budget.parts >= MAX_PARTS or budget.scanned > SCAN_FACTOR * len(data)
    )
    if kind == "multipart":
        boundary = _param(params, "boundary")
        if boundary and not too_deep:
            child_default = ("message", "rfc822") if sub == "digest" else ("text", "plain")
            children = _parse_multipart(
                data, header_end, end, boundary, child_default, depth, budget
            )
        if not children:
            # RFC 2046 §5.1.1 needs a boundary and at least one part; without them the
            # body is unreadable, so it is offered as text (RFC 2045 §5.2).
            kind, sub, params = "text", "plain", _DEFAULT_TEXT_PARAMS
    elif kind == "message" and sub == "rfc822":
        if encoding in _IDENTITY_ENCODINGS and not too_deep:
            inner = _parse_entity(data, header_end, end, ("text", "plain"), depth + 1, budget)
            children = (inner,)
            envelope_value = _envelope(_fields(data, inner.header_start, inner.header_end))
        else:
            # RFC 2046 §5.2.1 forbids encoding message/rfc822; BODYSTRUCTURE cannot
            # describe an encapsulated message it cannot read, so it becomes opaque.
            kind, sub = "application", "octet-stream"
    disposition, disposition_params = _disposition(fields.get("content-disposition"))
    counted = kind == "text" or (kind == "message" and sub == "rfc822")
    return Part(
        header_start=start,
        header_end=header_end,
        body_start=header_end,
        body_end=end,
        type=kind,
        subtype=sub,
        params=params,
        id=fields.get("content-id"),
        description=fields.get("content-description"),
        encoding=encoding,
        disposition=disposition,
        disposition_params=disposition_params,
        language=_language(fields.get("content-language")),
        location=_location(fields.get("content-location")),
        md5=fields.get("content-md5"),
        lines=_count_lines(data, header_end, end) if counted else 0,
        children=children,
        envelope=envelope_value,
    )


def _location(value: str | None) -> str | None:
    # RFC 2557 §4.1: a folded URI is unfolded by removing the white space.
    return None if value is None else "".join(value.split())


def _count_lines(data: bytes, start: int, end: int) -> int:
    """Return the number of text lines; a last line without a line end counts too."""
    if end <= start:
        return 0
    lines = data.count(b"\n", start, end)
    return lines if data[end - 1] == 0x0A else lines + 1


def _parse_multipart(
    data: bytes,
    start: int,
    end: int,
    boundary: str,
    default: tuple[str, str],
    depth: int,
    budget: _Budget,
) -> tuple[Part, ...]:
    """Split a multipart body at its delimiter lines (RFC 2046 §5.1.1).

    The line end before a delimiter belongs to the delimiter. Preamble and epilogue are
    ignored, and a missing close delimiter ends the last part at the end of the body.
    """
    children: list[Part] = []
    ranges: list[tuple[int, int]] = []
    for part_start, part_end in _body_part_ranges(data, start, end, boundary, budget):
        if budget.parts + len(ranges) >= MAX_PARTS:
            break
        ranges.append((part_start, part_end))
    for part_start, part_end in ranges:
        children.append(_parse_entity(data, part_start, part_end, default, depth + 1, budget))
    return tuple(children)


def _delimiter_candidates(
    data: bytes, start: int, end: int, dash: bytes, budget: _Budget
) -> Iterator[int]:
    """Yield offsets in ``[start, end)`` of lines that may be delimiter lines, in order."""
    index = budget.dash_lines() if len(dash) <= MAX_BOUNDARY else None
    if index is not None:
        lines = index.get(dash[2:], [])
        for position in range(bisect_left(lines, start), bisect_left(lines, end)):
            yield lines[position]
        return
    budget.scanned += end - start
    pos = start
    while True:
        found = data.find(dash, pos, end)
        if found < 0:
            return
        if found == start or data[found - 1] == 0x0A:
            yield found
        pos = found + len(dash)


def _body_part_ranges(
    data: bytes, start: int, end: int, boundary: str, budget: _Budget
) -> Iterator[tuple[int, int]]:
    dash = b"--" + boundary.encode("utf-8", "surrogateescape")
    part_start: int | None = None
    pos = start
    for found in _delimiter_candidates(data, start, end, dash, budget):
        if found < pos or not data.startswith(dash, found, end):
            continue
        pos = found + len(dash)
        closing = data.startswith(b"--", pos, end)
        after = pos + 2 if closing else pos
        newline = data.find(b"\n", after, end)
        line_end = end if newline < 0 else newline + 1
        if data[after:line_end].strip(b" \t\r\n"):
            continue  # "--boundaryX": a longer boundary, or text that looks like one
        if part_start is not None:
            body_end = found
            if body_end > part_start and data[body_end - 1] == 0x0A:
                body_end -= 1
                if body_end > part_start and data[body_end - 1] == 0x0D:
                    body_end -= 1
            yield part_start, body_end
        if closing:
            return
        part_start = line_end
        pos = line_end
    if part_start is not None:
        yield part_start, end


# --------------------------------------------------------------------------------------
# ENVELOPE (RFC 3501 §7.4.2) and addresses (RFC 5322 §3.4)


def envelope(message: bytes) -> Envelope:
    """Return the ENVELOPE of *message*; strings are raw, absent fields None."""
    try:
        return _envelope(_fields(message, 0, _header_end(message, 0, len(message))))
    except Exception:  # never break FETCH on hostile headers
        return (None, None, None, None, None, None, None, None, None, None)


def _envelope(fields: dict[str, str]) -> Envelope:
    sender_from = _addresses(fields.get("from"))
    sender = _addresses(fields.get("sender")) or sender_from
    reply_to = _addresses(fields.get("reply-to")) or sender_from
    return (
        fields.get("date"),
        fields.get("subject"),
        sender_from,
        sender,
        reply_to,
        _addresses(fields.get("to")),
        _addresses(fields.get("cc")),
        _addresses(fields.get("bcc")),
        fields.get("in-reply-to"),
        fields.get("message-id"),
    )


# Token kinds: "atom" (raw text incl. dots), "quoted" (raw with quotes; .text unquoted),
# "comment" (text inside), "literal" ([...] raw), "special" (one of <>@,;:).
_Token: TypeAlias = tuple[str, str, str]  # (kind, raw, text)


def _tokens(value: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    length = len(value)
    while pos < length:
        char = value[pos]
        if char in " \t\r\n":
            pos += 1
        elif char in "<>@,;:":
            tokens.append(("special", char, char))
            pos += 1
        elif char == '"':
            stop, text = _scan_quoted(value, pos + 1, '"')
            tokens.append(("quoted", value[pos:stop], text))
            pos = stop
        elif char == "(":
            depth = 1
            chars: list[str] = []
            pos += 1
            while pos < length and depth:
                char = value[pos]
                if char == "\\" and pos + 1 < length:
                    pos += 1
                    char = value[pos]
                elif char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                if depth:
                    chars.append(char)
                pos += 1
            tokens.append(("comment", "", "".join(chars).strip()))
        elif char == "[":
            stop = value.find("]", pos)
            stop = length if stop < 0 else stop + 1
            tokens.append(("literal", value[pos:stop], value[pos:stop]))
            pos = stop
        else:
            stop = pos
            while stop < length and value[stop] not in ' \t\r\n<>@,;:"([':
                stop += 1
            stop = max(stop, pos + 1)  # a stray ")" or "]" is taken as text
            tokens.append(("atom", value[pos:stop], value[pos:stop]))
            pos = stop
    return tokens


def _scan_quoted(value: str, pos: int, close: str) -> tuple[int, str]:
    """Return (offset after the closing quote, unescaped text); unterminated runs to the end."""
    chars: list[str] = []
    while pos < len(value):
        char = value[pos]
        if char == "\\" and pos + 1 < len(value):
            chars.append(value[pos + 1])
            pos += 2
            continue
        pos += 1
        if char == close:
            break
        chars.append(char)
    return pos, "".join(chars)


def _addresses(value: str | None) -> AddressList:
    """Parse an address list with RFC 3501 group markers; None when there is none."""
    if value is None:
        return None
    result: list[Address] = []
    item: list[_Token] = []
    in_group = False
    angle = False
    for token in _tokens(value):
        kind, raw, _ = token
        if kind == "special" and raw == "<":
            angle = True
        elif kind == "special" and raw == ">":
            angle = False
        elif kind == "special" and not angle and raw in ",;:":
            if raw == ":" and not in_group and not any(t[1] in ("<", "@") for t in item):
                # RFC 3501 §7.4.2: a group start is (NIL NIL group-name NIL).
                result.append((None, None, _phrase(item) or "", None))
                in_group = True
                item = []
                continue
            result.extend(_mailbox(item))
            item = []
            if raw == ";" and in_group:
                result.append((None, None, None, None))  # group end
                in_group = False
            continue
        item.append(token)
    result.extend(_mailbox(item))
    if in_group:
        result.append((None, None, None, None))
    return tuple(result) or None


def _phrase(tokens: list[_Token]) -> str | None:
    words = [text for kind, _, text in tokens if kind in ("atom", "quoted", "literal")]
    return " ".join(words) or None


def _addr_spec(tokens: list[_Token]) -> tuple[str, str]:
    """Return (local part, domain) as written, without comments or white space."""
    raws = [raw for kind, raw, _ in tokens if kind != "comment"]
    if "@" not in raws:
        return "".join(raws), ""
    at = len(raws) - 1 - raws[::-1].index("@")
    return "".join(raws[:at]), "".join(raws[at + 1 :])


def _mailbox(tokens: list[_Token]) -> list[Address]:
    if not tokens:
        return []
    comment = next((text for kind, _, text in tokens if kind == "comment" and text), None)
    raws = [raw for _, raw, _ in tokens]
    if "<" in raws:
        opening = raws.index("<")
        closing = raws.index(">", opening) if ">" in raws[opening:] else len(tokens)
        name = _phrase(tokens[:opening]) or comment
        inner = tokens[opening + 1 : closing]
        adl: str | None = None
        inner_raws = [raw for _, raw, _ in inner]
        if inner_raws[:1] == ["@"] and ":" in inner_raws:
            colon = inner_raws.index(":")
            adl = "".join(inner_raws[:colon])
            inner = inner[colon + 1 :]
        mailbox, host = _addr_spec(inner)
        return [(name, adl, mailbox, host)]
    mailbox, host = _addr_spec(tokens)
    if not mailbox and not host:
        return []
    return [(comment, None, mailbox, host)]


# --------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE (RFC 3501 §7.4.2) and the wire form of nested values


def bodystructure(part: Part, extended: bool) -> tuple[Value, ...]:
    """Return BODY (*extended* false) or BODYSTRUCTURE of *part* as nested values."""
    if part.is_multipart:
        fields: list[Value] = [bodystructure(child, extended) for child in part.children]
        fields.append(part.subtype.upper())
        if extended:
            fields += [_wire_params(part.params), *_common_extensions(part)]
        return tuple(fields)
    fields = [
        part.type.upper(),
        part.subtype.upper(),
        _wire_params(part.params),
        part.id,
        part.description,
        part.encoding.upper(),
        part.size,
    ]
    if part.is_message:
        inner = part.children[0]
        fields += [part.envelope, bodystructure(inner, extended), part.lines]
    elif part.type == "text":
        fields.append(part.lines)
    if extended:
        fields += [part.md5, *_common_extensions(part)]
    return tuple(fields)


def _common_extensions(part: Part) -> list[Value]:
    """Return body-fld-dsp, body-fld-lang and body-fld-loc."""
    disposition: Value = None
    if part.disposition is not None:
        disposition = (part.disposition.upper(), _wire_params(part.disposition_params))
    language: Value = None
    if len(part.language) == 1:
        language = part.language[0]
    elif part.language:
        language = part.language
    return [disposition, language, part.location]


def _wire_params(params: Params) -> tuple[Value, ...] | None:
    """Return body-fld-param: names upper-cased, non-ASCII values as RFC 2231 UTF-8."""
    values: list[Value] = []
    for name, value in params:
        if value.isascii():
            values += [name.upper(), value]
        else:
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate from an exotic charset
                raw = value.encode("utf-8", "replace")
            escaped = "".join(
                chr(byte)
                if (chr(byte).isalnum() and byte < 128) or byte in b"-._~"
                else f"%{byte:02X}"
                for byte in raw
            )
            values += [name.upper() + "*", "utf-8''" + escaped]
    return tuple(values) or None


# A structure told by another server, for a message whose body is not here yet
# (mailbox replication lists large central mail first and fetches bodies later). It is
# rewritten into the shape `bodystructure` gives once the body is local: the same
# fields, upper-cased the same way, with the extension data padded or cut to exactly
# body-ext-1part / body-ext-mpart (RFC 3501 §7.4.2, §9), so a client sees no difference
# between the two. What does not fit that grammar is refused (the caller then fetches
# the whole message instead).


class StructureError(ValueError):
    """A BODYSTRUCTURE from a server that does not follow RFC 3501 §9."""


def structure_from_server(value: object) -> tuple[Value, ...]:
    """Return our BODYSTRUCTURE for a server's parsed BODYSTRUCTURE value.

    *value* is what an IMAP client parser gives for it: lists, bytes (strings), str
    (atoms), int and None (NIL). Raises `StructureError` if it is not a body.
    """
    return _server_body(value, 0)


def stored_structure(structure: tuple[Value, ...]) -> str:
    """Encode a structure from `structure_from_server` for the mail database (JSON)."""
    return json.dumps(structure, ensure_ascii=True, separators=(",", ":"))


def pending_bodystructure(stored: str, extended: bool) -> tuple[Value, ...]:
    """BODYSTRUCTURE (or BODY, *extended* false) from `stored_structure`'s text."""
    value = _from_json(json.loads(stored))
    if not isinstance(value, tuple):
        raise StructureError("stored structure is not a list")
    return value if extended else _without_extensions(value)


def _from_json(value: object) -> Value:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if value is None or isinstance(value, str | int):
        return value
    raise StructureError(f"unexpected stored value {value!r:.40}")


def _without_extensions(body: tuple[Value, ...]) -> tuple[Value, ...]:
    if isinstance(body[0], tuple):  # multipart: the parts, then the subtype
        count = next(i for i, v in enumerate(body) if not isinstance(v, tuple))
        return (*(_without_extensions(_as_body(c)) for c in body[:count]), body[count])
    kind = (body[0], body[1])
    if kind == ("MESSAGE", "RFC822"):
        return (*body[:8], _without_extensions(_as_body(body[8])), body[9])
    return body[:8] if kind[0] == "TEXT" else body[:7]


def _as_body(value: Value) -> tuple[Value, ...]:
    if not isinstance(value, tuple) or not value:
        raise StructureError("a body must be a non-empty list")
    return value


def _server_body(value: object, depth: int) -> tuple[Value, ...]:
    if depth > MAX_DEPTH:
        raise StructureError("body nested too deeply")
    if not isinstance(value, list) or not value:
        raise StructureError("a body must be a non-empty list")
    if isinstance(value[0], list):  # body-type-mpart: 1*body SP media-subtype [ext]
        count = next((i for i, v in enumerate(value) if not isinstance(v, list)), len(value))
        children = [_server_body(child, depth + 1) for child in value[:count]]
        rest = value[count:]
        if not rest:
            raise StructureError("multipart without a subtype")
        subtype = _server_string(rest[0]).upper()
        ext = _pad(rest[1:], 4)
        return (*children, subtype, _server_params(ext[0]), _server_disposition(ext[1]),
                _server_language(ext[2]), _server_nstring(ext[3]))  # fmt: skip
    if len(value) < 7:
        raise StructureError("single-part body with fewer than 7 fields")
    kind = _server_string(value[0]).upper()
    subtype = _server_string(value[1]).upper()
    fields: list[Value] = [
        kind,
        subtype,
        _server_params(value[2]),
        _server_nstring(value[3]),
        _server_nstring(value[4]),
        _server_string(value[5]).upper(),
        _server_number(value[6]),
    ]
    rest = value[7:]
    if (kind, subtype) == ("MESSAGE", "RFC822"):
        if len(rest) < 3:
            raise StructureError("message/rfc822 body without envelope, body and lines")
        fields += [_server_envelope(rest[0]), _server_body(rest[1], depth + 1),
                   _server_number(rest[2])]  # fmt: skip
        rest = rest[3:]
    elif kind == "TEXT":
        if not rest:
            raise StructureError("text body without a line count")
        fields.append(_server_number(rest[0]))
        rest = rest[1:]
    ext = _pad(rest, 4)
    fields += [_server_nstring(ext[0]), _server_disposition(ext[1]), _server_language(ext[2]),
               _server_nstring(ext[3])]  # fmt: skip
    return tuple(fields)


def _pad(values: list[object], count: int) -> list[object]:
    """Extension data cut or padded with NIL to *count* fields (RFC 3501 §7.4.2: fields
    a server leaves out at the end are NIL; later extensions we do not send)."""
    return (values + [None] * count)[:count]


def _server_string(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):  # an atom where a string belongs: lenient
        return value
    raise StructureError(f"expected a string, got {value!r:.40}")


def _server_nstring(value: object) -> str | None:
    return None if value is None else _server_string(value)


def _server_number(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise StructureError(f"expected a number, got {value!r:.40}")


def _server_params(value: object) -> tuple[Value, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) % 2:
        raise StructureError("body-fld-param must be name-value pairs")
    out: list[Value] = []
    for name, param in zip(value[::2], value[1::2], strict=True):
        out += [_server_string(name).upper(), _server_string(param)]
    return tuple(out) or None


def _server_disposition(value: object) -> Value:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise StructureError("body-fld-dsp must be (type params)")
    return (_server_string(value[0]).upper(), _server_params(value[1]))


def _server_language(value: object) -> Value:
    if isinstance(value, list):
        languages = tuple(_server_string(v) for v in value)
        return languages[0] if len(languages) == 1 else (languages or None)
    return _server_nstring(value)


def _server_envelope(value: object) -> tuple[Value, ...]:
    if not isinstance(value, list) or len(value) != 10:
        raise StructureError("an envelope has 10 fields")
    fields: list[Value] = []
    for index, field in enumerate(value):
        if 2 <= index <= 7:
            fields.append(_server_addresses(field))
        else:
            fields.append(_server_nstring(field))
    return tuple(fields)


def _server_addresses(value: object) -> tuple[Value, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise StructureError("an address list must be a non-empty list or NIL")
    out: list[Value] = []
    for address in value:
        if not isinstance(address, list) or len(address) != 4:
            raise StructureError("an address has 4 fields")
        out.append(tuple(_server_nstring(v) for v in address))
    return tuple(out)


def serialize(value: Value) -> bytes:
    """Encode a nested value as IMAP: NIL, number, quoted string or literal, "(...)".

    Elements of a list are separated by a space, except that inside a list that starts
    with a list, adjacent lists are not: that is how RFC 3501 §9 writes address lists
    (``"(" 1*address ")"``) and multipart bodies (``1*body SP media-subtype``), while
    ENVELOPE and single-part bodies, which start with a string, keep every space.
    """
    out = bytearray()
    _serialize_into(out, value)
    return bytes(out)


def _serialize_into(out: bytearray, value: Value) -> None:
    if value is None:
        out += b"NIL"
    elif isinstance(value, bool):
        out += b"NIL"  # not an IMAP value; never produced here
    elif isinstance(value, int):
        out += str(value).encode("ascii")
    elif isinstance(value, tuple):
        out += b"("
        glued = bool(value) and isinstance(value[0], tuple)
        previous: Value = None
        for index, element in enumerate(value):
            if index and not (glued and isinstance(previous, tuple) and isinstance(element, tuple)):
                out += b" "
            _serialize_into(out, element)
            previous = element
        out += b")"
    else:
        if isinstance(value, str):
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "replace")
        else:
            raw = value
        if len(raw) <= 1024 and all(32 <= byte <= 126 for byte in raw):
            out += b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            out += b"{%d}\r\n" % len(raw) + raw


# --------------------------------------------------------------------------------------
# BODY[section] and <partial> (RFC 3501 §6.4.5)


def section(message: bytes, spec: SectionSpec, root: Part | None = None) -> bytes:
    """Return the content of BODY[spec]; empty when the section does not exist.

    Pass *root* (the result of `parse(message)`) to avoid parsing the message again.
    """
    try:
        return _section(message, spec, parse(message) if root is None else root)
    except Exception:  # a FETCH of hostile mail answers empty, not crash
        return b""


def _locate(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """Follow part numbers: a message's part 1 is its body unless it is multipart."""
    current = root
    as_message = True  # the root, or a message/rfc822 part's encapsulated message
    for number in numbers:
        if not as_message and current.is_message:
            current = current.children[0]
            as_message = True
        if current.is_multipart:
            if not 1 <= number <= len(current.children):
                return None
            current = current.children[number - 1]
        elif as_message and number == 1:
            pass  # RFC 3501 §6.4.5: a non-multipart message has only a part 1, its body
        else:
            return None
        as_message = False
    return current


def _section(message: bytes, spec: SectionSpec, root: Part) -> bytes:
    text = (spec.text or "").upper() or None
    part = _locate(root, spec.parts)
    if part is None:
        return b""
    if text is None:
        if not spec.parts:
            return message
        return message[part.body_start : part.body_end]
    if text == "MIME":
        if not spec.parts:
            return b""
        return message[part.header_start : part.header_end]
    if spec.parts:
        if not part.is_message:
            return b""
        part = part.children[0]
    if text == "TEXT":
        return message[part.body_start : part.body_end]
    if text == "HEADER":
        return message[part.header_start : part.header_end]
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        wanted = {name.lower() for name in spec.fields}
        keep = text == "HEADER.FIELDS"
        out = bytearray()
        for name, start, _, end in _field_spans(message, part.header_start, part.header_end):
            if (name in wanted) == keep:
                out += message[start:end]
                if not out.endswith(b"\n"):
                    out += b"\r\n"
        return bytes(out) + b"\r\n"
    return b""


def partial(data: bytes, origin: int, length: int | None) -> bytes:
    """Return ``<origin.length>`` of *data* (RFC 3501 §6.4.5); past the end is empty."""
    origin = max(origin, 0)
    if length is None:
        return data[origin:]
    return data[origin : origin + max(length, 0)]


def header_fields(message: bytes) -> dict[str, str]:
    """Return the first raw (unfolded, undecoded) value of each top-level header field,
    keyed by lower-case name: one pass for callers that need several (SORT, THREAD)."""
    try:
        return _fields(message, 0, _header_end(message, 0, len(message)))
    except Exception:  # hostile headers sort as empty ones
        return {}


def addresses(value: str | None) -> AddressList:
    """Parse an address field's raw value as ENVELOPE does (None when absent)."""
    try:
        return _addresses(value)
    except Exception:
        return None


def decoded_part(message: bytes, numbers: tuple[int, ...], root: Part) -> bytes | None:
    """Return BINARY[numbers] (RFC 3516 §4.2): the part's body with its transfer
    encoding undone; None for an encoding we cannot undo (the caller answers
    UNKNOWN-CTE), and empty when the part does not exist.

    ``BINARY[]`` is the whole message as stored. A multipart or message/rfc822 part is
    returned as it is: RFC 2045 §6.4 allows them only identity encodings.
    """
    if not numbers:
        return message
    part = _locate(root, numbers)
    if part is None:
        return b""
    body = message[part.body_start : part.body_end]
    if part.is_multipart or part.is_message:
        return body
    encoding = part.encoding.lower()
    if encoding in _IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        return _base64(body)
    if encoding == "quoted-printable":
        return _quoted_printable(body)
    return None


def encode_nul_parts(message: bytes) -> bytes:
    """Re-encode as base64 each leaf part whose body holds NUL; return the rest as is.

    RFC 3516 §4.4: APPEND's literal8 lets a client store binary content (typically a
    part labelled ``Content-Transfer-Encoding: binary``), but BODY[...] answers are
    plain literals, which cannot carry NUL (RFC 3501 §4.3, CHAR8). Such a part is
    stored base64-encoded under a new Content-Transfer-Encoding: BODY[] then shows
    valid data, and BINARY[...] still returns the very bytes the client sent.
    """
    if b"\0" not in message:
        return message
    try:
        root = parse(message)
    except Exception:  # unreadable structure: stored as sent, as any other message
        return message
    out = bytearray()
    pos = 0
    for part in _leaves(root):
        body = message[part.body_start : part.body_end]
        if b"\0" not in body or part.header_start < pos:
            continue
        out += message[pos : part.header_start]
        out += _base64_header(message, part)
        encoded = binascii.b2a_base64(body, newline=False)
        out += b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        if part is root:
            out += b"\r\n"  # no boundary delimiter follows to end the last line
        pos = part.body_end
    out += message[pos:]
    return bytes(out)


def _leaves(part: Part) -> Iterator[Part]:
    """The parts without children, in the order they appear in the message."""
    if not part.children:
        yield part
    for child in part.children:
        yield from _leaves(child)


def _base64_header(message: bytes, part: Part) -> bytes:
    """The part's header with its Content-Transfer-Encoding fields replaced by base64."""
    kept = bytearray()
    pos = fields_end = part.header_start
    for name, start, _, end in _field_spans(message, part.header_start, part.header_end):
        if name == "content-transfer-encoding":
            kept += message[pos:start]
            pos = end
        fields_end = end
    kept += message[pos:fields_end]
    # The new field goes last, before the empty line that ends the header.
    if kept and not kept.endswith(b"\n"):
        kept += b"\r\n"
    kept += b"Content-Transfer-Encoding: base64\r\n"
    return bytes(kept) + message[max(fields_end, pos) : part.header_end]


# --------------------------------------------------------------------------------------
# Decoded text for SEARCH


# Labels Python does not know, and labels that promise nothing: mail declared US-ASCII
# often carries 8-bit text anyway, so it is decoded like undeclared text.
_CHARSET_ALIASES = {
    "windows-874": "cp874",
    "x-windows-874": "cp874",
    "tis620": "tis-620",
    "iso-8859-11": "iso8859_11",
    "us-ascii": "",
    "ascii": "",
}


def _decode_text(data: bytes, charset: str | None) -> str:
    """Decode *data* in *charset*; unknown or absent charsets try UTF-8 then Thai CP874."""
    name = (charset or "").strip().strip('"').lower().partition("*")[0]
    name = _CHARSET_ALIASES.get(name, name)
    if name in ("utf-8", "utf8"):
        return data.decode("utf-8", "replace")
    if name:
        try:
            return data.decode(name, "replace")
        except Exception:  # LookupError, or a codec that is not text: guess instead
            return _guess_text(data)
    return _guess_text(data)


def _guess_text(data: bytes) -> str:
    # Thai offices still receive TIS-620 mail without a label; CP874 is its superset.
    for guess in ("utf-8", "cp874"):
        try:
            return data.decode(guess)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", "replace")


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; adjacent words of one charset are joined first.

    Joining before decoding matters for Thai: mailers split long subjects between
    encoded words at byte boundaries, in the middle of a three-byte UTF-8 character.
    """
    pieces: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset = match.group(1).lower().partition("*")[0]
        # RFC 2047 §6.2: white space between adjacent encoded words is not text.
        adjacent = pending_charset is not None and not between.strip()
        if pending_charset is not None and not (adjacent and charset == pending_charset):
            pieces.append(_decode_text(bytes(pending), pending_charset))
            pending.clear()
            pending_charset = None
        if not adjacent:
            pieces.append(_decode_text(between.encode("utf-8", "surrogateescape"), None))
        pending += _decode_word(match.group(2), match.group(3))
        pending_charset = charset
        pos = match.end()
    if pending_charset is not None:
        pieces.append(_decode_text(bytes(pending), pending_charset))
    pieces.append(_decode_text(value[pos:].encode("utf-8", "surrogateescape"), None))
    return "".join(pieces)


def _decode_word(encoding: str, text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    if encoding in "bB":
        return _base64(raw)
    return _quoted_printable(raw.replace(b"_", b" "), header=True)


def _base64(data: bytes) -> bytes:
    """Decode base64 leniently: junk characters dropped, bad padding repaired."""
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except (binascii.Error, ValueError):
        return b""


# RFC 2045 §6.7 rule 3: white space at the end of an encoded line is transport padding.
_QP_PADDING = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def _quoted_printable(data: bytes, header: bool = False) -> bytes:
    """Decode quoted-printable; soft line breaks ("=" then padding) join lines."""
    if not header:
        # RFC 2045 §6.7 rule 3: the padding is deleted on decoding, which also makes an
        # "=" followed by padding a soft line break (rule 5); binascii keeps both.
        data = _QP_PADDING.sub(b"", data)
    try:
        return binascii.a2b_qp(data, header=header)
    except (binascii.Error, ValueError):
        return data


def decoded_headers(
    message: bytes, start: int = 0, end: int | None = None
) -> list[tuple[str, str]]:
    """Return ``(lower-case name, decoded value)`` for each field, for SEARCH HEADER/SUBJECT."""
    try:
        stop = len(message) if end is None else end
        header_end = _header_end(message, start, stop)
        result: list[tuple[str, str]] = []
        for name, _, colon, field_end in _field_spans(message, start, header_end):
            raw = message[colon + 1 : field_end].replace(b"\r", b"").replace(b"\n", b"")
            value = decode_words(raw.strip(b" \t").decode("utf-8", "surrogateescape"))
            result.append((name, unicodedata.normalize("NFC", value)))
        return result
    except Exception:  # SEARCH on hostile mail finds nothing, not crash
        return []


def address_search_text(value: str) -> str:
    """Return an address field's *value* followed by each address as ``name <local@domain>``.

    RFC 3501 §6.4.4: SEARCH FROM/TO/CC/BCC match a substring of the field. A client
    searching ``user@domain`` expects to find ``<user (comment)@ (comment) domain>``
    too (Dovecot does; imaptest checks it), so the comment-free address form each
    mailbox parses to is searched beside the field as written.
    """
    forms = []
    for name, _, local, domain in _addresses(value) or ():
        if local is None or domain is None:
            continue  # a group's start or end marker (RFC 3501 §7.4.2)
        address = f"{local}@{domain}" if domain else local
        forms.append(f"{name} <{address}>" if name else address)
    return "\n".join([value, *forms])


def header_text_for_search(message: bytes) -> str:
    """Return the top-level header fields as ``name: decoded value`` lines."""
    return "".join(f"{name}: {value}\n" for name, value in decoded_headers(message))


def body_text_for_search(message: bytes) -> str:
    """Return the decoded text of every text part (HTML crudely stripped) for SEARCH BODY.

    Non-text parts are skipped; forwarded messages contribute their headers and text.
    """
    try:
        out: list[str] = []
        _collect_text(message, parse(message), out)
        return unicodedata.normalize("NFC", "\n".join(out))
    except Exception:  # SEARCH on hostile mail finds nothing, not crash
        return ""


def _collect_text(message: bytes, part: Part, out: list[str]) -> None:
    if part.is_multipart:
        for child in part.children:
            _collect_text(message, child, out)
    elif part.is_message:
        inner = part.children[0]
        out.append(header_text_for_search(message[inner.header_start : inner.header_end]))
        _collect_text(message, inner, out)
    elif part.type == "text":
        out.append(part_text(message, part))


def part_text(message: bytes, part: Part) -> str:
    """Return the decoded text of a text/* part; HTML is reduced to its text."""
    raw = message[part.body_start : part.body_end]
    if part.encoding == "base64":
        raw = _base64(raw)
    elif part.encoding == "quoted-printable":
        raw = _quoted_printable(raw)
    text = _decode_text(raw, part.param("charset"))
    if part.subtype == "html":
        text = _html_text(text)
    return text


_SCRIPT_OPEN = re.compile(r"<(script|style)\b", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")


def _html_text(text: str) -> str:
    """Crudely reduce HTML to text: drop script/style, tags, then decode entities."""
    kept: list[str] = []
    pos = 0
    while True:
        match = _SCRIPT_OPEN.search(text, pos)
        if match is None:
            kept.append(text[pos:])
            break
        kept.append(text[pos : match.start()])
        closing = re.compile(rf"</{match.group(1)}\s*>", re.IGNORECASE).search(text, match.end())
        if closing is None:
            break
        pos = closing.end()
    return html.unescape(_TAG.sub(" ", "".join(kept)))
