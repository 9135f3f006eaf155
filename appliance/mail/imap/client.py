"""The IMAP client protocol (RFC 9051, RFC 3501) as a state machine: commands in, events out.

This is the other half of `protocol.py`: the box talking *to* an IMAP server (the
central one, for mailbox replication). Everything about the wire lives here: tags,
command rendering with literals (synchronising, or LITERAL+ / RFC 7888 when the server
offers it), AUTHENTICATE PLAIN with an authorisation identity (RFC 4616), and parsing
of every response the replicator needs into frozen event dataclasses. There are no
sockets, no trio and no clock in this file.

How the I/O layer drives it::

    conn = ClientConnection()
    tag = conn.select("INBOX", condstore=True)
    send(conn.data_to_send())
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(recv()); send(conn.data_to_send())
        elif isinstance(event, Done) and event.tag == tag:
            break
        else:
            ...  # untagged data for the command in flight

Framing rules (RFC 9051 §2.2.2, §4.3):

- A response is one line, except that a line ending in ``{n}`` (or ``~{n}``, RFC 3516
  literal8) is followed by exactly n bytes and then the rest of the response.
- A response's lines may hold ``max_line`` bytes in all, each literal ``max_literal``;
  beyond either the server is misbehaving and `ImapProtocolError` is raised (the
  connection is then unusable: the I/O layer drops it).
- A command literal the server must agree to (``{n}``, synchronising) holds back the
  rest of the command until a ``+`` continuation arrives; a tagged NO/BAD instead
  drops the rest. AUTHENTICATE without SASL-IR (RFC 4959) waits for ``+`` the same way.

Parsing is lenient where servers differ harmlessly (unknown untagged responses become
`Unhandled`, unknown response codes are kept by name) and strict where a wrong reading
would corrupt data (literal lengths, numbers, the structure of FETCH). Malformed input
raises `ImapProtocolError`, never anything else.

What this is not: a policy. Which commands to send, and what to make of the answers,
is the replicator's business (`appliance.sync.mailbox`).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from appliance.mail.imap import mutf7

# ---------------------------------------------------------------------------------------
# Events


class Sentinel:
    """A marker value (`NEED_DATA`)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event()` needs more bytes from the server.
NEED_DATA = Sentinel("NEED_DATA")


class ImapProtocolError(Exception):
    """The server sent something that is not IMAP; the connection cannot go on."""


@dataclass(frozen=True)
class ResponseCode:
    """``[NAME args]`` in a status response (RFC 9051 §7.1)."""

    name: str
    args: str = ""

    def number(self) -> int:
        """The argument as a number (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, ...)."""
        try:
            return int(self.args.split()[0])
        except (IndexError, ValueError):
            raise ImapProtocolError(f"[{self.name}] needs a number, got {self.args!r}") from None


@dataclass(frozen=True)
class Continuation:
    """``+ text``: the server waits for a literal or a SASL response (RFC 9051 §7.5)."""

    text: bytes


@dataclass(frozen=True)
class Status:
    """An untagged OK/NO/BAD/BYE/PREAUTH (RFC 9051 §7.1); the greeting is one."""

    kind: str
    code: ResponseCode | None
    text: str


@dataclass(frozen=True)
class Done:
    """The tagged completion of a command: OK, NO or BAD (RFC 9051 §7.1)."""

    tag: str
    status: str
    code: ResponseCode | None
    text: str

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass(frozen=True)
class Capabilities:
    """``* CAPABILITY ...`` (RFC 9051 §7.2.2), upper-cased."""

    names: frozenset[str]


@dataclass(frozen=True)
class Enabled:
    """``* ENABLED ...`` (RFC 5161 §3.2), upper-cased."""

    names: frozenset[str]


@dataclass(frozen=True)
class MailboxFlags:
    """``* FLAGS (...)`` after SELECT (RFC 9051 §7.3.5)."""

    flags: tuple[str, ...]


@dataclass(frozen=True)
class ListEntry:
    """``* LIST (attributes) "delimiter" name`` (RFC 9051 §7.3.1), name decoded."""

    attributes: tuple[str, ...]
    delimiter: str | None
    name: str


@dataclass(frozen=True)
class StatusData:
    """``* STATUS name (MESSAGES n UIDNEXT n ...)`` (RFC 9051 §7.3.2)."""

    mailbox: str
    items: tuple[tuple[str, int], ...]

    def get(self, name: str) -> int | None:
        return dict(self.items).get(name.upper())


@dataclass(frozen=True)
class SearchResult:
    """``* SEARCH n n ...`` with RFC 7162 §3.1.5's ``(MODSEQ n)`` when given."""

    numbers: tuple[int, ...]
    modseq: int | None = None


@dataclass(frozen=True)
class Exists:
    count: int


@dataclass(frozen=True)
class Recent:
    count: int


@dataclass(frozen=True)
class Expunge:
    """``* n EXPUNGE``: message sequence number *seq* is gone (RFC 9051 §7.5.1)."""

    seq: int


@dataclass(frozen=True)
class Vanished:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 §3.2.10)."""

    ranges: tuple[tuple[int, int], ...]
    earlier: bool

    def uids(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)


@dataclass(frozen=True)
class FetchData:
    """``* n FETCH (...)`` (RFC 9051 §7.5.2), the items the box uses given their own field.

    *sections* maps a body item as the server named it, upper-cased (``BODY[]``,
    ``BODY[HEADER.FIELDS (MESSAGE-ID)]``), to its bytes (None for NIL).
    """

    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None
    modseq: int | None = None
    size: int | None = None
    #: INTERNALDATE as Unix seconds.
    internal_date: int | None = None
    sections: tuple[tuple[str, bytes | None], ...] = ()
    #: ENVELOPE as parsed values (lists, bytes, None), for callers that want it.
    envelope: object = None
    #: BODYSTRUCTURE as parsed values, likewise (mailbox replication keeps it).
    bodystructure: object = None

    def section(self, name: str = "BODY[]") -> bytes | None:
        return dict(self.sections).get(name.upper())


@dataclass(frozen=True)
class Unhandled:
    """Any other untagged response, kept raw (ESEARCH, QUOTA, ID, NAMESPACE, ...)."""

    name: str
    raw: bytes


Event = (
    Continuation | Status | Done | Capabilities | Enabled | MailboxFlags | ListEntry
    | StatusData | SearchResult | Exists | Recent | Expunge | Vanished | FetchData | Unhandled
)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Values sent: strings, literals, sets


@dataclass(frozen=True)
class Literal:
    """Bytes sent as a literal (RFC 9051 §4.3), e.g. an APPEND's message."""

    data: bytes


_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


def astring(value: str | bytes) -> bytes | Literal:
    """A string argument: quoted when it can be, a literal when it must (CR, LF, 8-bit)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) <= 1024 and _QUOTABLE.match(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return Literal(raw)


def mailbox_arg(name: str) -> bytes | Literal:
    """A mailbox name argument: modified UTF-7 (RFC 3501 §5.1.3), then quoted."""
    return astring(mutf7.encode(name))


def uid_set(uids: Iterable[int]) -> str:
    """Render numbers as a compact set, e.g. ``1:3,7`` (RFC 9051 §9: sequence-set)."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_uid_set(text: str) -> tuple[tuple[int, int], ...]:
    """Parse ``1:3,7`` (no ``*``) into inclusive ranges; raise `ImapProtocolError`."""
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ImapProtocolError(f"bad UID set {text[:80]!r}")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a == 0 or b == 0:
            raise ImapProtocolError(f"UID 0 in set {text[:80]!r}")
        ranges.append((min(a, b), max(a, b)))
    return tuple(ranges)


def plain_response(authzid: str, authcid: str, password: str) -> bytes:
    """The SASL PLAIN message ``authzid NUL authcid NUL passwd``, base64 (RFC 4616 §2)."""
    for value in (authzid, authcid, password):
        if "\0" in value:
            raise ValueError("SASL PLAIN values cannot hold NUL")
    message = f"{authzid}\0{authcid}\0{password}".encode()
    return base64.b64encode(message)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_datetime(unix: int) -> str:
    """Render Unix seconds as an INTERNALDATE ``dd-Mon-yyyy hh:mm:ss +0000`` (UTC)."""
    when = dt.datetime.fromtimestamp(unix, dt.UTC)
    return (
        f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000"
    )


_DATE_TIME = re.compile(
    r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)


def parse_datetime(text: str) -> int:
    """Parse an INTERNALDATE (RFC 9051 §9: date-time) into Unix seconds."""
    m = _DATE_TIME.match(text)
    if m is None or m.group(2).capitalize() not in _MONTHS:
        raise ImapProtocolError(f"bad date-time {text[:40]!r}")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        offset = dt.timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
        when = dt.datetime(
            int(year), _MONTHS.index(mon.capitalize()) + 1, int(day), int(hh), int(mm),
            int(ss), tzinfo=dt.timezone(offset),
        )  # fmt: skip
    except ValueError as exc:
        raise ImapProtocolError(f"bad date-time {text[:40]!r}") from exc
    return int(when.timestamp())


# ---------------------------------------------------------------------------------------
# The connection


#: In the output queue: what follows waits for a ``+`` continuation.
_GATE = Sentinel("_GATE")


@dataclass
class ClientConfig:
    #: Bytes of one response outside its literals (a SEARCH of 100k UIDs is ~700 kB).
    max_line: int = 4 * 1024 * 1024
    #: One literal: the largest message the box accepts, with room for base64.
    max_literal: int = 96 * 1024 * 1024


@dataclass
class ClientConnection:
    """One client connection's protocol state: what to send, and events from what came."""

    config: ClientConfig = field(default_factory=ClientConfig)
    #: What the server said it can do, upper-cased; refreshed by CAPABILITY responses
    #: and [CAPABILITY] codes, cleared by `tls_started()` (RFC 9051 §6.2.1).
    capabilities: frozenset[str] = frozenset()
    #: Extensions ENABLEd (RFC 5161).
    enabled: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._in = bytearray()
        # (tag, bytes or _GATE): a command's pieces, held at a gate until "+" comes.
        self._out: deque[tuple[str, bytes | Sentinel]] = deque()
        self._counter = 0
        self._closed = False

    # -- output ----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write now: everything queued up to the first continuation wait."""
        chunks = []
        while self._out and self._out[0][1] is not _GATE:
            chunk = self._out.popleft()[1]
            assert isinstance(chunk, bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    def _next_tag(self) -> str:
        self._counter += 1
        return f"E{self._counter:04d}"

    def command(self, *parts: bytes | str | Literal) -> str:
        """Queue a command made of *parts* joined by spaces; return its tag."""
        tag = self._next_tag()
        line = bytearray(tag.encode())
        for part in parts:
            line += b" "
            if isinstance(part, Literal):
                plus = "LITERAL+" in self.capabilities or (
                    "LITERAL-" in self.capabilities and len(part.data) <= 4096
                )
                if plus:  # RFC 7888: no round trip
                    line += b"{%d+}\r\n" % len(part.data) + part.data
                else:
                    line += b"{%d}\r\n" % len(part.data)
                    self._out.append((tag, bytes(line)))
                    self._out.append((tag, _GATE))
                    line = bytearray(part.data)
            else:
                line += part.encode() if isinstance(part, str) else part
        self._out.append((tag, bytes(line) + b"\r\n"))
        return tag

    # Commands the replicator uses, rendered per RFC 9051 §6 and the extensions cited.

    def capability(self) -> str:
        return self.command("CAPABILITY")

    def noop(self) -> str:
        return self.command("NOOP")

    def logout(self) -> str:
        return self.command("LOGOUT")

    def starttls(self) -> str:
        """RFC 9051 §6.2.1; after its OK call `tls_started()` once TLS is up."""
        return self.command("STARTTLS")

    def authenticate_plain(self, authzid: str, authcid: str, password: str) -> str:
        """AUTHENTICATE PLAIN acting as *authzid* (RFC 4616), with SASL-IR if offered."""
        response = plain_response(authzid, authcid, password)
        if "SASL-IR" in self.capabilities:  # RFC 4959: the response rides on the command
            return self.command("AUTHENTICATE", "PLAIN", response)
        tag = self._next_tag()
        self._out.append((tag, tag.encode() + b" AUTHENTICATE PLAIN\r\n"))
        self._out.append((tag, _GATE))
        self._out.append((tag, response + b"\r\n"))
        return tag

    def enable(self, *names: str) -> str:
        return self.command("ENABLE", *names)  # RFC 5161

    def list(self, reference: str = "", pattern: str = "*") -> str:
        return self.command("LIST", astring(reference), astring(pattern))

    def create(self, mailbox: str) -> str:
        return self.command("CREATE", mailbox_arg(mailbox))

    def delete(self, mailbox: str) -> str:
        return self.command("DELETE", mailbox_arg(mailbox))

    def rename(self, old: str, new: str) -> str:
        return self.command("RENAME", mailbox_arg(old), mailbox_arg(new))

    def status(self, mailbox: str, *items: str) -> str:
        return self.command("STATUS", mailbox_arg(mailbox), "(" + " ".join(items) + ")")

    def select(
        self,
        mailbox: str,
        *,
        readonly: bool = False,
        condstore: bool = False,
        qresync: tuple[int, int, str | None] | None = None,
    ) -> str:
        """SELECT/EXAMINE, with ``(CONDSTORE)`` (RFC 7162 §3.1.8) or
        ``(QRESYNC (uidvalidity modseq [known-uids]))`` (RFC 7162 §3.2.5)."""
        parts: list[bytes | str | Literal] = ["EXAMINE" if readonly else "SELECT",
                                              mailbox_arg(mailbox)]  # fmt: skip
        if qresync is not None:
            uidvalidity, modseq, known = qresync
            inner = f"{uidvalidity} {modseq}" + (f" {known}" if known else "")
            parts.append(f"(QRESYNC ({inner}))")
        elif condstore:
            parts.append("(CONDSTORE)")
        return self.command(*parts)

    def unselect(self) -> str:
        return self.command("UNSELECT")  # RFC 3691

    def uid_search(self, criteria: str) -> str:
        return self.command("UID", "SEARCH", criteria)

    def uid_fetch(
        self, uids: str, items: str, *, changedsince: int | None = None, vanished: bool = False
    ) -> str:
        """UID FETCH, with RFC 7162 §3.1.4 CHANGEDSINCE and §3.2.6 VANISHED modifiers."""
        parts: list[bytes | str | Literal] = ["UID", "FETCH", uids, items]
        if changedsince is not None:
            parts.append(f"(CHANGEDSINCE {changedsince}{' VANISHED' if vanished else ''})")
        return self.command(*parts)

    def uid_store(
        self,
        uids: str,
        mode: str,
        flags: Sequence[str],
        *,
        unchangedsince: int | None = None,
        silent: bool = False,
    ) -> str:
        """UID STORE *mode* (``FLAGS``, ``+FLAGS``, ``-FLAGS``); RFC 7162 §3.1.3 UNCHANGEDSINCE."""
        parts: list[bytes | str | Literal] = ["UID", "STORE", uids]
        if unchangedsince is not None:
            parts.append(f"(UNCHANGEDSINCE {unchangedsince})")
        parts += [mode + (".SILENT" if silent else ""), "(" + " ".join(flags) + ")"]
        return self.command(*parts)

    def uid_expunge(self, uids: str) -> str:
        return self.command("UID", "EXPUNGE", uids)  # RFC 4315 §2.1

    def append(
        self,
        mailbox: str,
        content: bytes,
        *,
        flags: Sequence[str] = (),
        internal_date: int | None = None,
    ) -> str:
        """APPEND (RFC 9051 §6.3.12); the OK carries APPENDUID with UIDPLUS (RFC 4315)."""
        parts: list[bytes | str | Literal] = ["APPEND", mailbox_arg(mailbox)]
        if flags:
            parts.append("(" + " ".join(flags) + ")")
        if internal_date is not None:
            parts.append('"' + imap_datetime(internal_date) + '"')
        parts.append(Literal(content))
        return self.command(*parts)

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the server (b"" at end of stream)."""
        if not data:
            self._closed = True
        self._in += data

    @property
    def at_eof(self) -> bool:
        """The server closed the connection and every complete response was read."""
        return self._closed and not self._in

    def tls_started(self) -> None:
        """TLS is now active after STARTTLS's OK: forget what was learnt in plaintext.

        Bytes that arrived after the OK but before the handshake were injected by
        someone on the path (RFC 9051 §11.1): refuse rather than parse them.
        """
        if self._in:
            raise ImapProtocolError("data after the STARTTLS OK, before TLS")
        self.capabilities = frozenset()

    def next_event(self) -> Event | Sentinel:
        """Return the next response as an event, or `NEED_DATA`."""
        raw = self._take_response()
        if raw is None:
            if self._closed and self._in:
                raise ImapProtocolError("connection closed in the middle of a response")
            return NEED_DATA
        event = parse_response(raw)
        self._learn(event)
        return event

    def _learn(self, event: Event) -> None:
        if isinstance(event, Capabilities):
            self.capabilities = event.names
        elif isinstance(event, Enabled):
            self.enabled = self.enabled | event.names
        elif isinstance(event, (Status, Done)) and event.code and event.code.name == "CAPABILITY":
            self.capabilities = frozenset(event.code.args.upper().split())
        if isinstance(event, Continuation):
            # Release output held for the oldest waiting command.
            if self._out and self._out[0][1] is _GATE:
                self._out.popleft()
        elif isinstance(event, Done) and self._out and self._out[0] == (event.tag, _GATE):
            # A command refused before its literal was sent: drop the rest of it.
            while self._out and self._out[0][0] == event.tag:
                self._out.popleft()

    def _take_response(self) -> bytes | None:
        """Cut one complete response (lines and literals) off the input, or None."""
        buf = self._in
        pos = 0
        line_bytes = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos + line_bytes > self.config.max_line:
                    raise ImapProtocolError("response line too long")
                return None
            line_bytes += end - pos
            if line_bytes > self.config.max_line:
                raise ImapProtocolError("response line too long")
            m = _LITERAL_AT_END.search(buf, max(pos, end - 24), end)
            if m is None:
                response = bytes(buf[: end + 2])
                del buf[: end + 2]
                return response
            size = int(m.group(1))
            if size > self.config.max_literal:
                raise ImapProtocolError(f"literal of {size} bytes is over the limit")
            if len(buf) < end + 2 + size:
                return None
            pos = end + 2 + size


_LITERAL_AT_END = re.compile(rb"~?\{(\d{1,12})\}\Z")


# ---------------------------------------------------------------------------------------
# The response parser: recursive descent over one response's bytes (RFC 9051 §9)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> ImapProtocolError:
        near = self.data[self.pos : self.pos + 30]
        return ImapProtocolError(f"expected {what} at {self.pos}, near {near!r}")

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_eol(self) -> bool:
        return self.data.startswith(b"\r\n", self.pos)

    def expect(self, token: bytes) -> None:
        if not self.data.startswith(token, self.pos):
            raise self.fail(repr(token))
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ")

    def try_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def atom(self) -> str:
        start = self.pos
        while self.pos < len(self.data) and self.data[self.pos] not in _ATOM_STOP:
            self.pos += 1
        if self.pos == start:
            raise self.fail("an atom")
        return self.data[start : self.pos].decode("ascii", "replace")

    def number(self) -> int:
        word = self.atom()
        if not word.isdigit() or len(word) > 20:
            raise ImapProtocolError(f"expected a number, got {word[:30]!r}")
        return int(word)

    def rest_of_line(self) -> bytes:
        end = self.data.find(b"\r\n", self.pos)
        if end < 0:
            raise self.fail("CRLF")
        text = self.data[self.pos : end]
        self.pos = end + 2
        return text

    def end(self) -> None:
        self.expect(b"\r\n")
        if self.pos != len(self.data):
            raise self.fail("the end of the response")

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        while True:
            ch = self.peek()
            if ch is None or ch in (0x0D, 0x0A):
                raise self.fail("a closing quote")
            self.pos += 1
            if ch == 0x22:
                return bytes(out)
            if ch == 0x5C:
                esc = self.peek()
                if esc not in (0x22, 0x5C):
                    raise self.fail("an escaped quote or backslash")
                self.pos += 1
                ch = esc
            out.append(ch)

    def literal(self) -> bytes:
        if self.peek() == 0x7E:  # literal8, RFC 3516
            self.pos += 1
        self.expect(b"{")
        close = self.data.find(b"}\r\n", self.pos)
        digits = self.data[self.pos : close] if close >= 0 else b""
        if not digits.isdigit():
            raise self.fail("a literal length")
        size = int(digits)
        self.pos = close + 3
        if self.pos + size > len(self.data):
            raise self.fail(f"{size} literal bytes")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> bytes:
        ch = self.peek()
        if ch == 0x22:
            return self.quoted()
        if ch in (0x7B, 0x7E):
            return self.literal()
        raise self.fail("a string")

    def nstring(self) -> bytes | None:
        if self.peek() in (0x22, 0x7B, 0x7E):
            return self.string()
        if self.atom().upper() != "NIL":
            raise self.fail("a string or NIL")
        return None

    def astring(self) -> bytes:
        if self.peek() in (0x22, 0x7B, 0x7E):
            return self.string()
        return self.atom().encode()

    def value(self, depth: int = 0) -> object:
        """Any value: a list, string, number, NIL (None) or atom (str)."""
        if depth > 50:
            raise self.fail("less nesting")
        ch = self.peek()
        if ch == 0x28:
            self.pos += 1
            items: list[object] = []
            while self.peek() != 0x29:
                # RFC 3501 §9 writes lists of lists without a space between them:
                # address lists ``((...)(...))`` and multipart bodies ``((...)(...) "MIXED")``.
                if items and not (isinstance(items[-1], list) and self.peek() == 0x28):
                    self.sp()
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if ch in (0x22, 0x7B, 0x7E):
            return self.string()
        word = self.atom()
        if word.upper() == "NIL":
            return None
        if word.isdigit() and len(word) <= 20:
            return int(word)
        return word

    def atoms_in_parens(self) -> tuple[str, ...]:
        self.expect(b"(")
        items: list[str] = []
        while self.peek() != 0x29:
            if items:
                self.sp()
            items.append(self.atom())
        self.pos += 1
        return tuple(items)

    def fetch_name(self) -> str:
        """A FETCH item name, with its ``[section]`` and ``<origin>`` (RFC 9051 §7.5.2)."""
        start = self.pos
        self.atom()
        if self.peek() == 0x5B:  # "[": a section; may hold spaces and a paren list
            close = self.data.find(b"]", self.pos)
            if close < 0 or self.data.find(b"\r\n", self.pos, close) >= 0:
                raise self.fail("the end of a section")
            self.pos = close + 1
            if self.peek() == 0x3C:  # "<origin>"
                close = self.data.find(b">", self.pos)
                if close < 0 or not self.data[self.pos + 1 : close].isdigit():
                    raise self.fail("a partial origin")
                self.pos = close + 1
        return self.data[start : self.pos].decode("ascii", "replace").upper()


# Atom ends (RFC 9051 §9: atom-specials, plus "[" "]" which sections and codes delimit).
_ATOM_STOP = frozenset(b' ()"{}[]\r\n')
_DIGITS = frozenset(b"0123456789")
_STATUS_WORDS = ("OK", "NO", "BAD", "BYE", "PREAUTH")


def parse_response(raw: bytes) -> Event:
    """Parse one complete response (as cut by the framing) into an event."""
    r = _Reader(raw)
    try:
        return _parse(r)
    except ImapProtocolError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # belt and braces for the fuzzer
        raise ImapProtocolError(f"malformed response: {exc}") from None


def _parse(r: _Reader) -> Event:
    first = r.peek()
    if first == 0x2B:  # "+"
        r.pos += 1
        r.try_sp()
        return Continuation(r.rest_of_line())
    if first == 0x2A:  # "*"
        r.pos += 1
        r.sp()
        return _untagged(r)
    tag = r.atom()
    r.sp()
    word = r.atom().upper()
    if word not in ("OK", "NO", "BAD"):
        raise ImapProtocolError(f"tagged response must be OK, NO or BAD, not {word[:20]!r}")
    code, text = _resp_text(r)
    return Done(tag, word, code, text)


def _resp_text(r: _Reader) -> tuple[ResponseCode | None, str]:
    """``[SP] ["[" code "]" [SP]] text CRLF`` (RFC 9051 §9: resp-text, lenient on spaces)."""
    r.try_sp()
    code = None
    if r.peek() == 0x5B:
        r.pos += 1
        name = r.atom().upper()
        args = b""
        if r.try_sp():
            close = r.data.find(b"]", r.pos)
            if close < 0 or r.data.find(b"\r\n", r.pos, close) >= 0:
                raise r.fail("']'")
            args = r.data[r.pos : close]
            r.pos = close
        r.expect(b"]")
        r.try_sp()
        code = ResponseCode(name, args.decode("utf-8", "replace"))
    return code, r.rest_of_line().decode("utf-8", "replace")


def _untagged(r: _Reader) -> Event:
    if r.peek() in _DIGITS:
        number = r.number()
        r.sp()
        word = r.atom().upper()
        if word == "EXISTS":
            r.end()
            return Exists(number)
        if word == "RECENT":
            r.end()
            return Recent(number)
        if word == "EXPUNGE":
            r.end()
            return Expunge(number)
        if word == "FETCH":
            r.sp()
            event = _fetch(r, number)
            r.end()
            return event
        return Unhandled(word, r.data)
    word = r.atom().upper()
    if word in _STATUS_WORDS:
        code, text = _resp_text(r)
        return Status(word, code, text)
    if word in ("CAPABILITY", "ENABLED"):
        names = []
        while r.try_sp():
            if r.at_eol():
                break
            names.append(r.atom().upper())
        r.end()
        return Capabilities(frozenset(names)) if word == "CAPABILITY" else Enabled(frozenset(names))
    if word == "FLAGS":
        r.sp()
        flags = r.atoms_in_parens()
        r.try_sp()
        r.end()
        return MailboxFlags(flags)
    if word in ("LIST", "LSUB"):
        return _list(r)
    if word == "STATUS":
        r.sp()
        mailbox = _mailbox_name(r.astring())
        r.sp()
        values = r.value()
        if not isinstance(values, list) or len(values) % 2:
            raise ImapProtocolError("STATUS items must be name-value pairs")
        items = []
        for name, value in zip(values[::2], values[1::2], strict=True):
            if not isinstance(name, str) or not isinstance(value, int):
                raise ImapProtocolError("STATUS items must be name-number pairs")
            items.append((name.upper(), value))
        r.try_sp()
        r.end()
        return StatusData(mailbox, tuple(items))
    if word == "SEARCH":
        return _search(r)
    if word == "VANISHED":
        r.sp()
        earlier = False
        if r.peek() == 0x28:
            earlier = [a.upper() for a in r.atoms_in_parens()] == ["EARLIER"]
            r.sp()
        ranges = parse_uid_set(r.atom())
        r.end()
        return Vanished(ranges, earlier)
    return Unhandled(word, r.data)


def _mailbox_name(raw: bytes) -> str:
    try:
        return mutf7.decode(raw)
    except mutf7.MUTF7Error:
        # RFC 9051 servers (UTF8=ACCEPT) may send UTF-8; anything else is kept readable.
        return raw.decode("utf-8", "replace")


def _list(r: _Reader) -> ListEntry:
    r.sp()
    attributes = r.atoms_in_parens()
    r.sp()
    delimiter: str | None = None
    if r.peek() == 0x22:
        delimiter = r.quoted().decode("ascii", "replace")
    elif r.atom().upper() != "NIL":
        raise r.fail("a delimiter or NIL")
    r.sp()
    name = _mailbox_name(r.astring())
    if r.try_sp():  # RFC 5258 extended data: not used, skipped whole
        r.value()
    r.end()
    return ListEntry(attributes, delimiter, name)


def _search(r: _Reader) -> SearchResult:
    numbers: list[int] = []
    modseq = None
    while r.try_sp():
        if r.at_eol():
            break
        if r.peek() == 0x28:  # RFC 7162 §3.1.5: (MODSEQ n)
            value = r.value()
            if not (isinstance(value, list) and len(value) == 2 and str(value[0]).upper()
                    == "MODSEQ" and isinstance(value[1], int)):  # fmt: skip
                raise ImapProtocolError("bad SEARCH MODSEQ")
            modseq = value[1]
            continue
        numbers.append(r.number())
    r.end()
    return SearchResult(tuple(numbers), modseq)


def _fetch(r: _Reader, seq: int) -> FetchData:
    r.expect(b"(")
    fields: dict[str, object] = {}
    sections: list[tuple[str, bytes | None]] = []
    first = True
    while r.peek() != 0x29:
        if not first:
            r.sp()
        first = False
        name = r.fetch_name()
        r.sp()
        if "[" in name or name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
            sections.append((name, r.nstring()))
        elif name in ("UID", "RFC822.SIZE"):
            fields[name] = r.number()
        elif name == "MODSEQ":  # RFC 7162 §3.1.4: MODSEQ (n)
            value = r.value()
            if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], int)):
                raise ImapProtocolError("MODSEQ must be (number)")
            fields[name] = value[0]
        elif name == "FLAGS":
            fields[name] = r.atoms_in_parens()
        elif name == "INTERNALDATE":
            fields[name] = parse_datetime(r.quoted().decode("ascii", "replace"))
        else:  # ENVELOPE, BODYSTRUCTURE, X-GM-*, ...: kept as parsed values
            fields[name] = r.value()
    r.pos += 1
    uid, size, modseq = fields.get("UID"), fields.get("RFC822.SIZE"), fields.get("MODSEQ")
    flags, date = fields.get("FLAGS"), fields.get("INTERNALDATE")
    return FetchData(
        seq=seq,
        uid=uid if isinstance(uid, int) else None,
        flags=flags if isinstance(flags, tuple) else None,
        modseq=modseq if isinstance(modseq, int) else None,
        size=size if isinstance(size, int) else None,
        internal_date=date if isinstance(date, int) else None,
        sections=tuple(sections),
        envelope=fields.get("ENVELOPE"),
        bodystructure=fields.get("BODYSTRUCTURE"),
    )
