"""The IMAP4rev1 server protocol (RFC 3501) as a state machine: bytes in, commands out.

Everything about the *wire* lives here: command framing with literals, the formal syntax
of every command (RFC 3501 §9 and the extensions below), which command is allowed in
which state, literal size limits, and the few answers the core gives on its own (the
literal continuation, BAD for malformed input, TOOBIG, PRIVACYREQUIRED). Nothing about
*mailboxes* does: whether a mailbox exists, what a message contains, which flags it has.
Those come out as frozen command dataclasses and the I/O layer answers each with
`untagged()` and `tagged()`. There are no sockets, no trio and no clock in this file.

How the server drives it::

    conn = ServerConnection(ImapConfig())
    conn.untagged("OK [CAPABILITY IMAP4rev1 ...] edgebox ready")
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send()); conn.receive_data(recv())
        elif event is CLOSED:
            send(conn.data_to_send()); break
        elif isinstance(event, BadCommand):
            count_error()            # the core has already answered BAD
        else:
            ...answer with conn.untagged(...) / conn.tagged(event.tag, "OK", "done")

Framing rules (RFC 3501 §4.3, §7.5; RFC 7888):

- A command is one line, except that a line ending in ``{n}`` or ``{n+}`` is followed by
  exactly n bytes of literal and then the rest of the command.
- ``{n}`` is synchronising: the core queues ``+ Ready for literal`` itself. ``{n+}``
  (LITERAL+) is not. Before any literal is read the tag, command name and state are
  checked, so a client is never asked to upload what will be refused anyway.
- Literal bytes are bounded: APPEND may carry ``max_literal`` bytes of literal in one
  command, every other command ``max_line``. A synchronising literal over the bound is
  refused with ``BAD [TOOBIG]`` before it is read (RFC 7888 §4 / RFC 4469 §5). For a
  non-synchronising one the client sends the bytes anyway; RFC 7888 §4 lets the server
  either close the connection or read and discard them. We discard: a countdown, no
  buffer, then skip to the end of the command and carry on. A size above
  ``max_discard`` is not worth waiting for: the core says BYE and closes.
- literal8 (``~{n}``, RFC 3516 §4.4) is taken in APPEND only, where a message may hold
  NUL bytes; in any other command it is refused with BAD in the same way. The
  messages of one MULTIAPPEND (RFC 3502) share APPEND's ``max_literal``.
- A line longer than ``max_line`` is answered BAD and skipped to its end.

State rules (RFC 3501 §3 and §6; the table is `_ALLOWED`):

- Any state: CAPABILITY, NOOP, LOGOUT, ID (RFC 2971 §3.1).
- ``NOT_AUTHENTICATED``: STARTTLS, AUTHENTICATE, LOGIN.
- ``AUTHENTICATED``: ENABLE (RFC 5161 §3.1), and the mailbox commands, which are also
  allowed in ``SELECTED``: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
  UNSUBSCRIBE, LIST, LSUB, NAMESPACE, STATUS, APPEND, IDLE, GETQUOTA, GETQUOTAROOT.
- ``SELECTED``: CHECK, CLOSE, UNSELECT, EXPUNGE, SEARCH, SORT, THREAD, FETCH, STORE,
  COPY, MOVE and their UID forms.
- The server moves the core between states with `authenticated()`, `selected()` and
  `unselected()`; the LOGOUT command moves it to ``LOGOUT`` itself.

Exchanges that take over the line (RFC 3501 §6.2.2 AUTHENTICATE, RFC 2177 IDLE): after
`Authenticate` or `Idle` is returned, the following lines belong to that exchange
(SASL responses, or DONE) until the server ends it with `tagged()` for that tag. After
`StartTls` nothing is parsed (`next_event()` says NEED_DATA) until `tls_started()`, or
until the server answers NO or BAD; `tls_started()` drops the plaintext read so far.

Every BAD the core sends (and the ``NO [PRIVACYREQUIRED]`` for LOGIN or AUTHENTICATE
before TLS when ``require_tls_for_auth``) is also returned as a `BadCommand` event, so
the I/O layer can count errors; it must not answer it again. Malformed input never
raises; misusing the API (``tls_started()`` without STARTTLS, ``tagged(.., "MAYBE")``)
does.

Strings in commands may be atoms, quoted strings or literals; quoted strings may carry
UTF-8 (RFC 6855 §3), and every string but a mailbox name is decoded as UTF-8 (a superset
of the US-ASCII default), invalid UTF-8 being BAD. Mailbox names are modified UTF-7
(RFC 3501 §5.1.3, see `mutf7`), strictly, and "INBOX" in any case is "INBOX".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from appliance.mail.imap import mutf7

# ---------------------------------------------------------------------------------------
# States


class State(enum.Enum):
    #: Connected; only CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE
    #: (RFC 3501 §3.1).
    NOT_AUTHENTICATED = "not authenticated"
    #: Logged in; mailbox commands, no message commands (RFC 3501 §3.2).
    AUTHENTICATED = "authenticated"
    #: A mailbox is selected; message commands allowed (RFC 3501 §3.3).
    SELECTED = "selected"
    #: LOGOUT received or the connection is ending: nothing more is read (RFC 3501 §3.4).
    LOGOUT = "logout"


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event()` needs more bytes from the peer (and the outbox should be flushed).
NEED_DATA = _Sentinel("NEED_DATA")
#: The session is over; flush the outbox and close the connection.
CLOSED = _Sentinel("CLOSED")
# Internal: input was consumed without an event; look again.
_AGAIN = _Sentinel("_AGAIN")


@dataclass(frozen=True)
class ImapConfig:
    """What a listener allows; the I/O layer builds one per port."""

    #: One APPEND's literal. Phones attach 25 MB videos, and base64 grows them by 4/3.
    max_literal: int = 64 * 1024 * 1024
    #: One command line, and the literal bytes any command but APPEND may carry. RFC 7162
    #: §4 asks servers to take lines of at least 8192 octets; long UID sets need more.
    max_line: int = 64 * 1024
    #: A refused non-synchronising literal up to this size is read and thrown away; a
    #: larger one ends the session (RFC 7888 §4 allows either).
    max_discard: int = 256 * 1024 * 1024
    #: Refuse LOGIN and AUTHENTICATE with NO [PRIVACYREQUIRED] until TLS is active.
    require_tls_for_auth: bool = True


# ---------------------------------------------------------------------------------------
# Values: sequence sets, search keys, fetch items


@dataclass(frozen=True)
class SequenceSet:
    """A sequence set (RFC 3501 §9: sequence-set); ``None`` in a range stands for ``*``."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def _bounds(self, max_value: int) -> Iterator[tuple[int, int]]:
        for lo, hi in self.ranges:
            a = max_value if lo is None else lo
            b = max_value if hi is None else hi
            # RFC 3501 §9: "2:4" and "4:2" are the same range.
            yield (a, b) if a <= b else (b, a)

    def contains(self, n: int, max_value: int) -> bool:
        """Say whether *n* is in the set when ``*`` is *max_value*."""
        return any(a <= n <= b for a, b in self._bounds(max_value))

    def resolve(self, max_value: int) -> Iterator[range]:
        """Yield the set as sorted, merged ranges, with ``*`` as *max_value*.

        Numbers above *max_value* are kept (the server decides whether they are an
        error); 0, which only ``*`` in an empty mailbox produces, is dropped.
        """
        merged: list[list[int]] = []
        for a, b in sorted(self._bounds(max_value)):
            a = max(a, 1)
            if a > b:
                continue
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            yield range(a, b + 1)

    def __str__(self) -> str:
        def one(v: int | None) -> str:
            return "*" if v is None else str(v)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


def encode_uid_set(uids: Iterable[int]) -> str:
    """Render UIDs as a compact sequence set, e.g. ``1:3,7`` (for VANISHED, COPYUID)."""
    parts: list[str] = []
    start = prev = None
    for uid in sorted(set(uids)):
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


# Search keys (RFC 3501 §6.4.4), a small tree. The top of a SEARCH is one key, or a
# `SearchAnd` when the client gave several.


@dataclass(frozen=True)
class SearchFlag:
    """A key without argument: ALL, ANSWERED, DELETED, ..., NEW, OLD, RECENT, UNSEEN."""

    name: str


@dataclass(frozen=True)
class SearchText:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT or TO with the string to look for."""

    name: str
    value: str


@dataclass(frozen=True)
class SearchHeader:
    """HEADER field-name string; the field name is upper-cased."""

    field_name: str
    value: str


@dataclass(frozen=True)
class SearchKeyword:
    """KEYWORD or UNKEYWORD flag."""

    name: str
    flag: str


@dataclass(frozen=True)
class SearchDate:
    """BEFORE, ON, SINCE (internal date) or SENTBEFORE, SENTON, SENTSINCE (Date header)."""

    name: str
    date: dt.date


@dataclass(frozen=True)
class SearchSize:
    """LARGER or SMALLER n (RFC822.SIZE)."""

    name: str
    size: int


@dataclass(frozen=True)
class SearchSequence:
    """A message sequence set, or UID sequence-set when *uid* is true."""

    uid: bool
    sequence_set: SequenceSet


@dataclass(frozen=True)
class SearchModseq:
    """MODSEQ [entry-name entry-type] n (RFC 7162 §3.1.5)."""

    modseq: int
    entry_name: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True)
class SearchNot:
    """NOT key."""

    key: SearchKey


@dataclass(frozen=True)
class SearchOr:
    """OR key key."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchAnd:
    """A parenthesised list, or several keys in a row: all must match."""

    keys: tuple[SearchKey, ...]


SearchKey = (
    SearchFlag
    | SearchText
    | SearchHeader
    | SearchKeyword
    | SearchDate
    | SearchSize
    | SearchSequence
    | SearchModseq
    | SearchNot
    | SearchOr
    | SearchAnd
)


@dataclass(frozen=True)
class FetchAttr:
    """A plain fetch item: FLAGS, UID, INTERNALDATE, RFC822*, ENVELOPE, BODY, MODSEQ..."""

    name: str


@dataclass(frozen=True)
class BodySection:
    """The ``[...]`` of BODY[...] (RFC 3501 §6.4.5): part numbers, then what of them."""

    #: (1, 2) for ``1.2``; () for the whole message.
    part: tuple[int, ...] = ()
    #: HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME, or None for all of it.
    text: str | None = None
    #: Header field names for HEADER.FIELDS(.NOT), upper-cased.
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchBody:
    """BODY[section]<origin.length> or BODY.PEEK[...] (which does not set \\Seen)."""

    section: BodySection
    peek: bool = False
    #: (origin, length) of ``<origin.length>``.
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class FetchBinary:
    """BINARY[part]<origin.length>, BINARY.PEEK[...] or BINARY.SIZE[part] (RFC 3516 §4).

    The part's content with its Content-Transfer-Encoding undone; *section* carries
    only part numbers (RFC 3516 §6: section-binary).
    """

    section: BodySection
    peek: bool = False
    #: BINARY.SIZE: the decoded size, not the data.
    size: bool = False
    partial: tuple[int, int] | None = None


FetchItem = FetchAttr | FetchBody | FetchBinary

# RFC 3501 §6.4.5: the macros, and the items they stand for.
_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_ATTRS = frozenset(
    {
        "FLAGS",
        "UID",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "MODSEQ",  # RFC 7162 §3.1.4.1
    }
)


class StoreMode(enum.Enum):
    #: ``FLAGS``: replace the flags (RFC 3501 §6.4.6).
    REPLACE = ""
    #: ``+FLAGS``: add to the flags.
    ADD = "+"
    #: ``-FLAGS``: remove from the flags.
    REMOVE = "-"


@dataclass(frozen=True)
class QresyncParams:
    """SELECT ... (QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]])) (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    #: (known sequence set, known UID set) of seq-match-data.
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


# ---------------------------------------------------------------------------------------
# Events: one dataclass per command, tag first


@dataclass(frozen=True)
class BadCommand:
    """The core answered the command itself (``tag`` None: ``* BAD``); for error counting.

    ``status`` is BAD for a malformed command, NO for a well-formed one the core can
    refuse on its own (a mailbox name that is not valid modified UTF-7).
    """

    tag: str | None
    text: str
    code: str | None = None
    status: str = "BAD"


@dataclass(frozen=True)
class Capability:
    tag: str


@dataclass(frozen=True)
class Noop:
    tag: str


@dataclass(frozen=True)
class Logout:
    """RFC 3501 §6.1.3: answer ``* BYE`` then ``tag OK``; the core is now in LOGOUT."""

    tag: str


@dataclass(frozen=True)
class StartTls:
    """RFC 3501 §6.2.1: answer OK, flush, start TLS, then call `tls_started()`."""

    tag: str


@dataclass(frozen=True)
class Login:
    tag: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Authenticate:
    """RFC 3501 §6.2.2 with RFC 4959 SASL-IR; ``b""`` is the empty response ``=``."""

    tag: str
    mechanism: str
    initial_response: bytes | None = field(repr=False)


@dataclass(frozen=True)
class SaslResponse:
    """A line of an AUTHENTICATE exchange; None when the client cancelled with ``*``.

    On None the server answers ``tagged(tag, "BAD", ...)`` (RFC 3501 §6.2.2).
    """

    tag: str
    data: bytes | None = field(repr=False)


@dataclass(frozen=True)
class Enable:
    tag: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id:
    """RFC 2971; *params* is None for ``ID NIL``."""

    tag: str
    params: dict[str, str | None] | None


@dataclass(frozen=True)
class Select:
    """SELECT, or EXAMINE when *readonly* (RFC 3501 §6.3.1-2, RFC 7162 §3.1.8, §3.2.5).

    The server must answer BAD to *qresync* unless the client sent ENABLE QRESYNC.
    """

    tag: str
    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class Create:
    """RFC 3501 §6.3.3, with RFC 6154 §3 ``(USE (\\Sent ...))``."""

    tag: str
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete:
    tag: str
    mailbox: str


@dataclass(frozen=True)
class Rename:
    tag: str
    mailbox: str
    new_name: str


@dataclass(frozen=True)
class Subscribe:
    tag: str
    mailbox: str


@dataclass(frozen=True)
class Unsubscribe:
    tag: str
    mailbox: str


@dataclass(frozen=True)
class List:
    """LIST, with RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE and RFC 5819 STATUS.

    The reference and patterns are decoded from modified UTF-7 but, unlike mailbox
    names, not INBOX-normalised: matching "inbox" against INBOX is the server's job.
    """

    tag: str
    reference: str
    patterns: tuple[str, ...]
    #: Selection options, upper-cased: SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE.
    selection: tuple[str, ...] = ()
    #: Return options, upper-cased: SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS.
    return_options: tuple[str, ...] = ()
    #: The items of RETURN (STATUS (...)).
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lsub:
    tag: str
    reference: str
    #: None: the pattern is not modified UTF-7, so nothing matches it.
    pattern: str | None


@dataclass(frozen=True)
class Namespace:
    tag: str


@dataclass(frozen=True)
class Status:
    tag: str
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class AppendMessage:
    """One message of a MULTIAPPEND after the first (RFC 3502 §6.3.11)."""

    flags: tuple[str, ...]
    internal_date: dt.datetime | None
    message: bytes = field(repr=False)


@dataclass(frozen=True)
class Append:
    """APPEND (RFC 3501 §6.3.11); *more* holds the further messages of a MULTIAPPEND
    (RFC 3502), to be stored with the first all together or not at all."""

    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internal_date: dt.datetime | None
    message: bytes = field(repr=False)
    more: tuple[AppendMessage, ...] = field(default=(), repr=False)

    def messages(self) -> tuple[AppendMessage, ...]:
        """Every message of the command, the first included, in order."""
        return (AppendMessage(self.flags, self.internal_date, self.message), *self.more)


@dataclass(frozen=True)
class Check:
    tag: str


@dataclass(frozen=True)
class Close:
    tag: str


@dataclass(frozen=True)
class Unselect:
    tag: str


@dataclass(frozen=True)
class Expunge:
    tag: str


@dataclass(frozen=True)
class UidExpunge:
    """RFC 4315 §2.1."""

    tag: str
    sequence_set: SequenceSet


@dataclass(frozen=True)
class Search:
    """SEARCH or UID SEARCH; *return_options* None means plain SEARCH, () ESEARCH ALL."""

    tag: str
    uid: bool
    charset: str | None
    criteria: SearchKey
    return_options: tuple[str, ...] | None = None
    #: RFC 9394 RETURN (PARTIAL first:last); negative numbers count from the end.
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class CancelUpdate:
    """CANCELUPDATE (RFC 5267 §4.2): end the live results of SEARCHes with these tags."""

    tag: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class SortCriterion:
    """One sort key of SORT (RFC 5256 §3): ARRIVAL, CC, DATE, FROM, SIZE, SUBJECT, TO."""

    key: str
    reverse: bool = False


@dataclass(frozen=True)
class Sort:
    """SORT or UID SORT (RFC 5256 §3), with RFC 5267 ESORT return options.

    *return_options* None means a plain ``* SORT`` answer; () is ESORT ALL. The server
    answers NO [BADCHARSET] to a *charset* other than UTF-8 and US-ASCII (§3: not BAD).
    """

    tag: str
    uid: bool
    criteria: tuple[SortCriterion, ...]
    charset: str
    search: SearchKey
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Thread:
    """THREAD or UID THREAD (RFC 5256 §3): ORDEREDSUBJECT or REFERENCES."""

    tag: str
    uid: bool
    algorithm: str
    charset: str
    search: SearchKey


@dataclass(frozen=True)
class Fetch:
    tag: str
    uid: bool
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]
    #: RFC 7162 §3.1.4.1 CHANGEDSINCE.
    changed_since: int | None = None
    #: RFC 7162 §3.2.6 VANISHED (UID FETCH with CHANGEDSINCE only).
    vanished: bool = False


@dataclass(frozen=True)
class Store:
    tag: str
    uid: bool
    sequence_set: SequenceSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    #: RFC 7162 §3.1.3 UNCHANGEDSINCE.
    unchanged_since: int | None = None


@dataclass(frozen=True)
class Copy:
    tag: str
    uid: bool
    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Move:
    """RFC 6851 §3."""

    tag: str
    uid: bool
    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Idle:
    """RFC 2177: answer ``continuation("idling")``; DONE comes back as `IdleDone`."""

    tag: str


@dataclass(frozen=True)
class IdleDone:
    tag: str


@dataclass(frozen=True)
class GetQuota:
    """RFC 9208 §4.2."""

    tag: str
    root: str


@dataclass(frozen=True)
class GetQuotaRoot:
    """RFC 9208 §4.3."""

    tag: str
    mailbox: str


Command = (
    Capability
    | Noop
    | Logout
    | StartTls
    | Login
    | Authenticate
    | SaslResponse
    | Enable
    | Id
    | Select
    | Create
    | Delete
    | Rename
    | Subscribe
    | Unsubscribe
    | List
    | Lsub
    | Namespace
    | Status
    | Append
    | Check
    | Close
    | Unselect
    | Expunge
    | UidExpunge
    | Search
    | CancelUpdate
    | Sort
    | Thread
    | Fetch
    | Store
    | Copy
    | Move
    | Idle
    | IdleDone
    | GetQuota
    | GetQuotaRoot
)
Event = Command | BadCommand


# ---------------------------------------------------------------------------------------
# Encoding helpers for the server's responses

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
# Longer values go as literals: quoted strings that long are hard on clients' parsers.
_MAX_QUOTED = 1024
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def quote(value: str | bytes) -> bytes:
    """Render a string as an IMAP quoted string, or as a literal when it must be.

    A literal (``{n}\\r\\n`` + bytes, RFC 3501 §4.3) is used for CR, LF, NUL, 8-bit bytes
    (str is sent as UTF-8) and values over 1 KiB.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) <= _MAX_QUOTED and _QUOTABLE.match(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None) -> bytes:
    """Render NIL or a string (RFC 3501 §9: nstring)."""
    return b"NIL" if value is None else quote(value)


def mailbox_name(name: str) -> bytes:
    """Render a mailbox name for LIST/STATUS responses: modified UTF-7, then quoted."""
    return quote(mutf7.encode(name))


def flag_list(flags: Iterable[str]) -> str:
    """Render ``(\\Seen $Label1)`` (RFC 3501 §9: flag-list)."""
    return "(" + " ".join(flags) + ")"


def imap_date(when: dt.datetime) -> str:
    """Render an INTERNALDATE value ``dd-Mon-yyyy hh:mm:ss +zzzz``, without the quotes.

    A naive datetime is taken to be UTC. Month names are English whatever the locale.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hh:02d}{mm:02d}"
    )


# ---------------------------------------------------------------------------------------
# The parser: recursive descent over one command's bytes (RFC 3501 §9)


_T = TypeVar("_T")


class _ParseError(Exception):
    def __init__(self, text: str, code: str | None = None, *, status: str = "BAD") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


# ATOM-CHAR: any CHAR except atom-specials "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ATOM_CHARS = frozenset(range(0x01, 0x80)) - _ATOM_SPECIALS
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}
# list-char = ATOM-CHAR / list-wildcards / resp-specials
_LIST_CHARS = _ASTRING_CHARS | {ord("%"), ord("*")}
_TAG_CHARS = _ASTRING_CHARS - {ord("+")}
_SEQ_CHARS = frozenset(b"0123456789:,*")
_FETCH_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
_MAX_NUMBER = 2**32 - 1  # RFC 3501 §9: number
_MAX_MODSEQ = 2**63 - 1  # RFC 7162 §7: mod-sequence-value
# Nested parentheses and NOTs in SEARCH: bounded so hostile input cannot recurse deep.
_MAX_DEPTH = 32
# RFC 2971 §3.3: at most 30 field-value pairs.
_MAX_ID_PARAMS = 30

_DATE_TEXT = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_DATE_TIME = re.compile(
    r"( ?\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # -- primitives --------------------------------------------------------------------

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def expect(self, token: bytes, what: str | None = None) -> None:
        if not self.data.startswith(token, self.pos):
            raise _ParseError(f"Expected {what or token.decode()}")
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ", "space")

    def try_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise _ParseError("Unexpected extra arguments")

    def chars(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and data[self.pos] in allowed:
            self.pos += 1
        if self.pos == start:
            raise _ParseError(f"Expected {what}")
        return data[start : self.pos]

    def atom(self) -> str:
        return self.chars(_ATOM_CHARS, "atom").decode("ascii")

    def keyword(self) -> str:
        return self.atom().upper()

    def number(self, *, nonzero: bool = False, limit: int = _MAX_NUMBER) -> int:
        digits = self.chars(frozenset(b"0123456789"), "number")
        if len(digits) > 20 or int(digits) > limit:
            raise _ParseError("Number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise _ParseError("Zero is not allowed here")
        return value

    def modseq(self, *, zero: bool = False) -> int:
        return self.number(nonzero=not zero, limit=_MAX_MODSEQ)

    def quoted(self) -> bytes:
        # RFC 3501 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE; only \" and \\ are escapes.
        # 8-bit bytes are let through for UTF-8 (RFC 6855 §3); CR and LF cannot occur.
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise _ParseError("Unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise _ParseError("Bad escape in quoted string")
                out.append(data[self.pos])
                self.pos += 1
            elif c in (0x00, 0x0D, 0x0A):
                raise _ParseError("Bad character in quoted string")
            else:
                out.append(c)

    def literal(self, *, literal8: bool = False) -> bytes:
        # The framer has checked the size and placed exactly n bytes after the CRLF.
        m = _LITERAL_AT.match(self.data, self.pos)
        if m is None or (m.group(1) and not literal8):
            raise _ParseError("Bad literal")
        n = int(m.group(2))
        start = m.end()
        if start + n > len(self.data):
            raise _ParseError("Truncated literal")
        self.pos = start + n
        return self.data[start : self.pos]

    def at_string(self) -> bool:
        # A quoted string or a literal ("~{" would be literal8) starts here.
        c = self.peek()
        return c in (0x22, 0x7B) or self.data.startswith(b"~{", self.pos)

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        if self.at_string():
            return self.literal()
        raise _ParseError("Expected string")

    def astring(self) -> bytes:
        if self.at_string():
            return self.string()
        return self.chars(_ASTRING_CHARS, "string")

    def nstring(self) -> bytes | None:
        if self.data[self.pos : self.pos + 3].upper() == b"NIL" and (
            self.pos + 3 == len(self.data) or self.data[self.pos + 3] in b" )"
        ):
            self.pos += 3
            return None
        return self.string()

    def text(self, raw: bytes, what: str = "string") -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _ParseError(f"{what} is not UTF-8") from None

    def astr(self, what: str = "string") -> str:
        return self.text(self.astring(), what)

    def mailbox(self) -> str:
        return _decode_mailbox(self.astring())

    def list_mailbox(self) -> str | None:
        """A LIST pattern; None for one that is not modified UTF-7 (it matches nothing)."""
        raw = self.string() if self.at_string() else self.chars(_LIST_CHARS, "mailbox pattern")
        try:
            return mutf7.decode(raw)
        except mutf7.MUTF7Error:
            # Well-formed syntax, a name no mailbox can have: LIST answers OK with no
            # match, as Dovecot does, rather than BAD (the command itself is valid).
            return None

    def paren(self, item: Callable[[], _T], *, empty: bool = False) -> list[_T]:
        self.expect(b"(")
        out: list[_T] = []
        if self.peek() == 0x29:
            if not empty:
                raise _ParseError("Empty list")
            self.pos += 1
            return out
        out.append(item())
        while self.try_sp():
            out.append(item())
        self.expect(b")")
        return out

    # -- IMAP values -------------------------------------------------------------------

    def sequence_set(self) -> SequenceSet:
        raw = self.chars(_SEQ_CHARS, "sequence set").decode("ascii")
        ranges: list[tuple[int | None, int | None]] = []
        for part in raw.split(","):
            ends = part.split(":")
            if len(ends) > 2:
                raise _ParseError("Bad sequence set")
            values = [_seq_number(e) for e in ends]
            ranges.append((values[0], values[-1]))
        return SequenceSet(tuple(ranges))

    def flag(self) -> str:
        # RFC 3501 §9: flag = "\Answered" / ... / flag-keyword / flag-extension
        if self.peek() == 0x5C:
            self.pos += 1
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        return tuple(self.paren(self.flag, empty=True))

    def date(self) -> dt.date:
        # RFC 3501 §9: date = date-text / DQUOTE date-text DQUOTE
        raw = self.quoted() if self.peek() == 0x22 else self.chars(_ATOM_CHARS, "date")
        m = _DATE_TEXT.match(raw.decode("ascii", "replace"))
        if m is None:
            raise _ParseError("Bad date")
        return _make_date(int(m.group(3)), m.group(2), int(m.group(1)))

    def date_time(self) -> dt.datetime:
        # RFC 3501 §9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
        #                          SP time SP zone DQUOTE
        m = _DATE_TIME.match(self.quoted().decode("ascii", "replace"))
        if m is None:
            raise _ParseError("Bad date-time")
        day = _make_date(int(m.group(3)), m.group(2), int(m.group(1)))
        hh, mi, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
        zh, zm = int(m.group(8)), int(m.group(9))
        if hh > 23 or mi > 59 or ss > 60 or zh > 23 or zm > 59:
            raise _ParseError("Bad date-time")
        offset = dt.timedelta(hours=zh, minutes=zm) * (-1 if m.group(7) == "-" else 1)
        return dt.datetime(
            day.year, day.month, day.day, hh, mi, min(ss, 59), tzinfo=dt.timezone(offset)
        )


# A literal marker: "~" for literal8, the size, "+" for LITERAL+.
_LITERAL_AT = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r\n")
_LITERAL_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")


def _seq_number(raw: str) -> int | None:
    # RFC 3501 §9: seq-number = nz-number / "*"
    if raw == "*":
        return None
    if not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) <= _MAX_NUMBER:
        raise _ParseError("Bad sequence set")
    return int(raw)


def _make_date(year: int, month: str, day: int) -> dt.date:
    try:
        return dt.date(year, _MONTHS.index(month.capitalize()) + 1, day)
    except ValueError:
        raise _ParseError("Bad date") from None


def _decode_mailbox(raw: bytes) -> str:
    # RFC 3501 §5.1: INBOX is case-insensitive; everything else is case-sensitive.
    if raw.upper() == b"INBOX":
        return "INBOX"
    try:
        return mutf7.decode(raw)
    except mutf7.MUTF7Error as exc:
        # The command is well-formed (an astring); only the name cannot exist: that is
        # a NO (RFC 3501 §6.3.1-§6.3.4 answer NO for an unusable name), not a BAD.
        raise _ParseError(f"Bad mailbox name: {exc}", "CANNOT", status="NO") from None


# ---------------------------------------------------------------------------------------
# Command parsers: each gets the parser positioned after the command name


def _p_none(cls: Callable[[str], Command]) -> Callable[[_Parser, str, bool], Command]:
    def parse(p: _Parser, tag: str, uid: bool) -> Command:
        p.end()
        return cls(tag)

    return parse


def _p_login(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.2.3: LOGIN userid password
    p.sp()
    user = p.astr("user name")
    p.sp()
    password = p.astr("password")
    p.end()
    return Login(tag, user, password)


def _p_authenticate(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.2.2, RFC 4959 §3: AUTHENTICATE mechanism [SP (base64 / "=")]
    p.sp()
    mechanism = p.keyword()
    initial: bytes | None = None
    if p.try_sp():
        raw = p.chars(_ATOM_CHARS, "initial response")
        initial = b"" if raw == b"=" else _b64(raw)
    p.end()
    return Authenticate(tag, mechanism, initial)


def _b64(raw: bytes) -> bytes:
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _ParseError("Bad base64") from None


def _p_enable(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 5161 §3.1: ENABLE 1*(SP capability)
    caps = []
    p.sp()
    caps.append(p.keyword())
    while p.try_sp():
        caps.append(p.keyword())
    p.end()
    return Enable(tag, tuple(caps))


def _p_id(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 2971 §4: id-params-list = "(" *(string SP nstring) ")" / nil
    p.sp()
    if p.peek() != 0x28:
        if p.nstring() is not None:
            raise _ParseError("Expected ( or NIL")
        p.end()
        return Id(tag, None)

    def pair() -> tuple[str, str | None]:
        key = p.text(p.string(), "ID field")
        p.sp()
        value = p.nstring()
        return key, None if value is None else p.text(value, "ID value")

    pairs = p.paren(pair, empty=True)
    p.end()
    if len(pairs) > _MAX_ID_PARAMS:
        raise _ParseError("Too many ID parameters")
    return Id(tag, dict(pairs))


def _p_select(p: _Parser, tag: str, uid: bool, *, readonly: bool = False) -> Command:
    # RFC 3501 §6.3.1; RFC 7162 §3.1.8 (CONDSTORE) and §3.2.5 (QRESYNC):
    # select-params = "(" select-param *(SP select-param) ")"
    p.sp()
    mailbox = p.mailbox()
    condstore = False
    qresync: QresyncParams | None = None
    if p.try_sp():

        def param() -> None:
            nonlocal condstore, qresync
            name = p.keyword()
            if name == "CONDSTORE":
                condstore = True
            elif name == "QRESYNC":
                p.sp()
                qresync = _qresync_params(p)
            else:
                raise _ParseError(f"Unknown SELECT parameter {name}")

        p.paren(param)
    p.end()
    return Select(tag, mailbox, readonly, condstore, qresync)


def _qresync_params(p: _Parser) -> QresyncParams:
    # "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"
    p.expect(b"(")
    uidvalidity = p.number(nonzero=True)
    p.sp()
    modseq = p.modseq()
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if p.try_sp() and p.peek() != 0x28:
        known = p.sequence_set()
        p.try_sp()
    if p.peek() == 0x28:
        p.pos += 1
        seqs = p.sequence_set()
        p.sp()
        uids = p.sequence_set()
        p.expect(b")")
        match = (seqs, uids)
    p.expect(b")")
    return QresyncParams(uidvalidity, modseq, known, match)


def _p_examine(p: _Parser, tag: str, uid: bool) -> Command:
    return _p_select(p, tag, uid, readonly=True)


def _p_create(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.3.3; RFC 6154 §5.2: create-param = "USE" SP "(" [use-attr *(SP ..)] ")"
    p.sp()
    mailbox = p.mailbox()
    use: list[str] = []
    if p.try_sp():

        def param() -> None:
            if p.keyword() != "USE":
                raise _ParseError("Unknown CREATE parameter")
            p.sp()
            use.extend(p.paren(p.flag, empty=True))

        p.paren(param)
    p.end()
    return Create(tag, mailbox, tuple(use))


def _p_mailbox(cls: Callable[[str, str], Command]) -> Callable[[_Parser, str, bool], Command]:
    def parse(p: _Parser, tag: str, uid: bool) -> Command:
        p.sp()
        mailbox = p.mailbox()
        p.end()
        return cls(tag, mailbox)

    return parse


def _p_rename(p: _Parser, tag: str, uid: bool) -> Command:
    p.sp()
    old = p.mailbox()
    p.sp()
    new = p.mailbox()
    p.end()
    return Rename(tag, old, new)


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
_STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"}
)


def _p_list(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    p.sp()
    selection: list[str] = []
    if p.peek() == 0x28:
        selection = p.paren(p.keyword, empty=True)
        for opt in selection:
            if opt not in _LIST_SELECT:
                raise _ParseError(f"Unknown LIST selection option {opt}")
        # RFC 5258 §3.1: RECURSIVEMATCH needs another option beside it, and REMOTE
        # does not count ("MUST NOT occur as the only selection option (or only with
        # REMOTE)").
        if "RECURSIVEMATCH" in selection and set(selection) <= {"RECURSIVEMATCH", "REMOTE"}:
            raise _ParseError("RECURSIVEMATCH needs another selection option")
        p.sp()
    reference = p.mailbox()
    p.sp()
    found = p.paren(p.list_mailbox) if p.peek() == 0x28 else [p.list_mailbox()]
    patterns = tuple(pattern for pattern in found if pattern is not None)
    returns: list[str] = []
    status: list[str] = []
    if p.try_sp():
        if p.keyword() != "RETURN":
            raise _ParseError("Expected RETURN")
        p.sp()

        def option() -> str:
            name = p.keyword()
            if name not in _LIST_RETURN:
                raise _ParseError(f"Unknown LIST return option {name}")
            if name == "STATUS":
                # RFC 5819 §2: STATUS (status-att ...)
                p.sp()
                status.extend(_status_items(p))
            return name

        returns = p.paren(option, empty=True)
    p.end()
    return List(tag, reference, patterns, tuple(selection), tuple(returns), tuple(status))


def _p_lsub(p: _Parser, tag: str, uid: bool) -> Command:
    p.sp()
    reference = p.mailbox()
    p.sp()
    pattern = p.list_mailbox()
    p.end()
    return Lsub(tag, reference, pattern)


def _status_items(p: _Parser) -> list[str]:
    items = p.paren(p.keyword)
    for item in items:
        if item not in _STATUS_ITEMS:
            raise _ParseError(f"Unknown STATUS item {item}")
    return items


def _p_status(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.3.10; RFC 7162 §3.1.6 adds HIGHESTMODSEQ.
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    items = _status_items(p)
    p.end()
    return Status(tag, mailbox, tuple(items))


def _p_append(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3502 §6.3.11: append = "APPEND" SP mailbox 1*append-message
    #   append-message = append-opts SP append-data
    #   append-opts = [SP flag-list] [SP date-time]
    # and RFC 3516 §6: append-data =/ literal8.
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    first = _append_message(p)
    more: list[AppendMessage] = []
    while p.try_sp():
        more.append(_append_message(p))
    p.end()
    return Append(tag, mailbox, first.flags, first.internal_date, first.message, tuple(more))


def _append_message(p: _Parser) -> AppendMessage:
    flags: tuple[str, ...] = ()
    when: dt.datetime | None = None
    if p.peek() == 0x28:
        flags = p.flag_list()
        p.sp()
    if p.peek() == 0x22:
        when = p.date_time()
        p.sp()
    if p.peek() != 0x7B and not p.data.startswith(b"~{", p.pos):
        raise _ParseError("APPEND needs the message as a literal")
    return AppendMessage(flags, when, p.literal(literal8=True))


def _p_uid_expunge(p: _Parser, tag: str, uid: bool) -> Command:
    p.sp()
    uids = p.sequence_set()
    p.end()
    return UidExpunge(tag, uids)


def _p_expunge(p: _Parser, tag: str, uid: bool) -> Command:
    if uid:
        return _p_uid_expunge(p, tag, uid)
    p.end()
    return Expunge(tag)


_SEARCH_FLAGS = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "NEW",
        "OLD",
        "RECENT",
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
    }
)
_SEARCH_TEXT = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATES = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_KEYS_WITH_ARGS = (
    _SEARCH_TEXT
    | _SEARCH_DATES
    | {"HEADER", "KEYWORD", "UNKEYWORD", "LARGER", "SMALLER", "UID", "NOT", "OR", "MODSEQ"}
)
# RFC 4731 §3.1, RFC 9394 PARTIAL; RFC 5267 §4.1 UPDATE (a live result) and CONTEXT
# (a hint that one may follow, which changes nothing here).
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL", "UPDATE", "CONTEXT"})
# RFC 5267 §3.2: what ESORT returns (SAVE would need SEARCHRES, which is not offered).
_SORT_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "PARTIAL"})
# RFC 5256 §3: sort-key.
_SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO"})
_THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})
_CHARSETS = ("UTF-8", "US-ASCII")


def _search_key(p: _Parser, depth: int) -> SearchKey:
    # RFC 3501 §9: search-key; RFC 7162 §3.1.5 adds MODSEQ.
    if depth > _MAX_DEPTH:
        raise _ParseError("Search nested too deeply")
    c = p.peek()
    if c == 0x28:
        return SearchAnd(tuple(p.paren(lambda: _search_key(p, depth + 1))))
    if c is not None and c in _SEQ_CHARS:
        return SearchSequence(False, p.sequence_set())
    name = p.keyword()
    if name in _SEARCH_FLAGS:
        return SearchFlag(name)
    if name not in _SEARCH_KEYS_WITH_ARGS:
        raise _ParseError(f"Unknown search key {name}")
    p.sp()
    if name in _SEARCH_TEXT:
        return SearchText(name, p.astr())
    if name == "HEADER":
        field_name = p.astr("header name").upper()
        p.sp()
        return SearchHeader(field_name, p.astr())
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchKeyword(name, p.atom())
    if name in _SEARCH_DATES:
        return SearchDate(name, p.date())
    if name in ("LARGER", "SMALLER"):
        return SearchSize(name, p.number())
    if name == "UID":
        return SearchSequence(True, p.sequence_set())
    if name == "NOT":
        return SearchNot(_search_key(p, depth + 1))
    if name == "OR":
        left = _search_key(p, depth + 1)
        p.sp()
        return SearchOr(left, _search_key(p, depth + 1))
    if name == "MODSEQ":
        # MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer
        if p.peek() == 0x22:
            entry = p.text(p.quoted(), "entry name")
            p.sp()
            kind = p.keyword()
            if kind not in ("PRIV", "SHARED", "ALL"):
                raise _ParseError("Bad MODSEQ entry type")
            p.sp()
            return SearchModseq(p.modseq(zero=True), entry, kind.lower())
        return SearchModseq(p.modseq(zero=True))
    raise _ParseError(f"Unknown search key {name}")


def _return_options(
    p: _Parser, allowed: frozenset[str], what: str
) -> tuple[tuple[str, ...] | None, tuple[int, int] | None]:
    """Parse ``RETURN (...) SP`` if it comes next: (options, PARTIAL range) or (None, None).

    RFC 4731 §3 / RFC 5267 §3: search-return-opts; RFC 9394 §3 adds
    ``PARTIAL SP partial-range``, where ``-1:-100`` counts from the last result.
    """
    if p.data[p.pos : p.pos + 7].upper() != b"RETURN ":
        return None, None
    p.pos += 7
    partial: tuple[int, int] | None = None

    def option() -> str:
        nonlocal partial
        name = p.keyword()
        if name not in allowed:
            raise _ParseError(f"Unknown {what} return option {name}")
        if name == "PARTIAL":
            if partial is not None:
                raise _ParseError("PARTIAL given twice")
            p.sp()
            partial = _partial_range(p)
        return name

    returns = tuple(p.paren(option, empty=True))
    p.sp()
    return returns, partial


def _partial_range(p: _Parser) -> tuple[int, int]:
    # RFC 9394 §3: partial-range = partial-range-first / partial-range-last
    #   partial-range-first = nz-number ":" nz-number
    #   partial-range-last  = MINUS nz-number ":" MINUS nz-number
    # 500:400 is the same as 400:500, and -1:-100 as -100:-1; kept nearest-first.
    negative = p.peek() == 0x2D
    if negative:
        p.pos += 1
    first = p.number(nonzero=True)
    p.expect(b":")
    if negative:
        p.expect(b"-")
    last = p.number(nonzero=True)
    first, last = min(first, last), max(first, last)
    return (-first, -last) if negative else (first, last)


def _search_criteria(p: _Parser) -> SearchKey:
    # search-key *(SP search-key): several keys in a row must all match.
    keys = [_search_key(p, 0)]
    while p.try_sp():
        keys.append(_search_key(p, 0))
    p.end()
    return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


def _p_search(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 4731 §3: search = "SEARCH" [search-return-opts] SP ["CHARSET" SP astring SP]
    #                       search-key *(SP search-key)
    p.sp()
    charset: str | None = None
    returns, partial = _return_options(p, _SEARCH_RETURN, "SEARCH")
    if p.data[p.pos : p.pos + 8].upper() == b"CHARSET ":
        p.pos += 8
        charset = p.astr("charset").upper()
        # RFC 3501 §6.4.4: an unsupported charset gets [BADCHARSET (supported ...)].
        if charset not in _CHARSETS:
            raise _ParseError("Unsupported charset", f"BADCHARSET ({' '.join(_CHARSETS)})")
        p.sp()
    criteria = _search_criteria(p)
    return Search(tag, uid, charset, criteria, returns, partial)


def _p_cancelupdate(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 5267 §5: "CANCELUPDATE" 1*(SP tag-string), tag-string = string
    tags = []
    while p.try_sp():
        tags.append(p.text(p.string(), "tag"))
    if not tags:
        raise _ParseError("Expected a tag")
    p.end()
    return CancelUpdate(tag, tuple(tags))


def _p_sort(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 5256 §5 and RFC 5267 §3:
    #   sort = ["UID" SP] "SORT" [search-return-opts] SP sort-criteria SP search-criteria
    #   sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"
    #   sort-criterion = ["REVERSE" SP] sort-key
    #   search-criteria = charset 1*(SP search-key)
    p.sp()
    returns, partial = _return_options(p, _SORT_RETURN, "SORT")

    def criterion() -> SortCriterion:
        name = p.keyword()
        reverse = name == "REVERSE"
        if reverse:
            p.sp()
            name = p.keyword()
        if name not in _SORT_KEYS:
            raise _ParseError(f"Unknown sort key {name}")
        return SortCriterion(name, reverse)

    criteria = tuple(p.paren(criterion))
    p.sp()
    charset = p.astr("charset").upper()
    p.sp()
    return Sort(tag, uid, criteria, charset, _search_criteria(p), returns, partial)


def _p_thread(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 5256 §5: thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    p.sp()
    algorithm = p.keyword()
    if algorithm not in _THREAD_ALGORITHMS:
        raise _ParseError(f"Unknown threading algorithm {algorithm}")
    p.sp()
    charset = p.astr("charset").upper()
    p.sp()
    return Thread(tag, uid, algorithm, charset, _search_criteria(p))


def _fetch_item(p: _Parser) -> FetchItem:
    # RFC 3501 §9: fetch-att
    name = p.chars(_FETCH_NAME_CHARS, "fetch item").decode("ascii").upper()
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        return _fetch_binary(p, name)
    if name in ("BODY", "BODY.PEEK") and p.peek() == 0x5B:
        section = _section(p)
        partial: tuple[int, int] | None = None
        if p.peek() == 0x3C:
            # "<" number "." nz-number ">"
            p.pos += 1
            origin = p.number()
            p.expect(b".")
            length = p.number(nonzero=True)
            p.expect(b">")
            partial = (origin, length)
        return FetchBody(section, name == "BODY.PEEK", partial)
    if name not in _FETCH_ATTRS:
        raise _ParseError(f"Unknown fetch item {name}")
    return FetchAttr(name)


def _fetch_binary(p: _Parser, name: str) -> FetchBinary:
    # RFC 3516 §6: "BINARY" [".PEEK"] section-binary [partial] /
    #              "BINARY.SIZE" section-binary
    #   section-binary = "[" [section-part] "]"
    p.expect(b"[")
    part: list[int] = []
    if p.peek() != 0x5D:
        part.append(p.number(nonzero=True))
        while p.peek() == 0x2E:
            p.pos += 1
            part.append(p.number(nonzero=True))
    p.expect(b"]")
    partial: tuple[int, int] | None = None
    if p.peek() == 0x3C and name != "BINARY.SIZE":
        p.pos += 1
        origin = p.number()
        p.expect(b".")
        length = p.number(nonzero=True)
        p.expect(b">")
        partial = (origin, length)
    section = BodySection(tuple(part))
    return FetchBinary(section, name == "BINARY.PEEK", name == "BINARY.SIZE", partial)


def _section(p: _Parser) -> BodySection:
    # section = "[" [section-spec] "]"
    # section-spec = section-msgtext / (section-part ["." section-text])
    p.expect(b"[")
    part: list[int] = []
    while p.peek() is not None and 0x30 <= (p.peek() or 0) <= 0x39:
        part.append(p.number(nonzero=True))
        if p.peek() != 0x2E:
            break
        p.pos += 1
        if not 0x30 <= (p.peek() or 0) <= 0x39:
            break
    text: str | None = None
    fields: tuple[str, ...] = ()
    if p.peek() != 0x5D:
        text = p.chars(_FETCH_NAME_CHARS, "section").decode("ascii").upper()
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if part:
            allowed.add("MIME")
        if text not in allowed:
            raise _ParseError(f"Bad section {text}")
        if text.startswith("HEADER.FIELDS"):
            p.sp()
            fields = tuple(name.upper() for name in p.paren(p.astr))
    elif part and p.data[p.pos - 1] == 0x2E:
        raise _ParseError("Bad section")
    p.expect(b"]")
    return BodySection(tuple(part), text, fields)


def _p_fetch(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.4.5; RFC 7162 §3.1.4 and §3.2.6 for the modifiers.
    p.sp()
    seqs = p.sequence_set()
    p.sp()
    items: list[FetchItem]
    if p.peek() == 0x28:
        items = p.paren(lambda: _fetch_item(p))
    else:
        start = p.pos
        word = p.chars(_FETCH_NAME_CHARS, "fetch item").decode("ascii").upper()
        if word in _FETCH_MACROS and p.peek() != 0x5B:
            items = [FetchAttr(name) for name in _FETCH_MACROS[word]]
        else:
            p.pos = start
            items = [_fetch_item(p)]
    changed_since: int | None = None
    vanished = False
    if p.try_sp():

        def modifier() -> None:
            nonlocal changed_since, vanished
            name = p.keyword()
            if name == "CHANGEDSINCE":
                p.sp()
                changed_since = p.modseq(zero=True)
            elif name == "VANISHED":
                vanished = True
            else:
                raise _ParseError(f"Unknown FETCH modifier {name}")

        p.paren(modifier)
    p.end()
    # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE.
    if vanished and (not uid or changed_since is None):
        raise _ParseError("VANISHED needs UID FETCH and CHANGEDSINCE")
    if uid and FetchAttr("UID") not in items:
        # RFC 3501 §6.4.8: UID FETCH always returns the UID.
        items.append(FetchAttr("UID"))
    return Fetch(tag, uid, seqs, tuple(items), changed_since, vanished)


def _p_store(p: _Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.4.6, RFC 7162 §3.1.3:
    # store = "STORE" SP sequence-set [SP "(" "UNCHANGEDSINCE" SP mod-seq-valzer ")"]
    #         SP store-att-flags
    p.sp()
    seqs = p.sequence_set()
    p.sp()
    unchanged: int | None = None
    if p.peek() == 0x28:
        p.pos += 1
        if p.keyword() != "UNCHANGEDSINCE":
            raise _ParseError("Unknown STORE modifier")
        p.sp()
        unchanged = p.modseq(zero=True)
        p.expect(b")")
        p.sp()
    mode = StoreMode.REPLACE
    if p.peek() in (0x2B, 0x2D):
        mode = StoreMode(chr(p.data[p.pos]))
        p.pos += 1
    word = p.keyword()
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise _ParseError("Expected FLAGS, +FLAGS or -FLAGS")
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        flags_list = [p.flag()]
        while p.try_sp():
            flags_list.append(p.flag())
        flags = tuple(flags_list)
    p.end()
    return Store(tag, uid, seqs, mode, word == "FLAGS.SILENT", flags, unchanged)


def _p_copy(cls: type[Copy] | type[Move]) -> Callable[[_Parser, str, bool], Command]:
    def parse(p: _Parser, tag: str, uid: bool) -> Command:
        p.sp()
        seqs = p.sequence_set()
        p.sp()
        mailbox = p.mailbox()
        p.end()
        return cls(tag, uid, seqs, mailbox)

    return parse


def _p_getquota(p: _Parser, tag: str, uid: bool) -> Command:
    p.sp()
    root = p.astr("quota root")
    p.end()
    return GetQuota(tag, root)


_N = State.NOT_AUTHENTICATED
_A = State.AUTHENTICATED
_S = State.SELECTED
_ANY = frozenset({_N, _A, _S})
_AUTHED = frozenset({_A, _S})

# Command name -> (states it is valid in, parser). RFC 3501 §6.1-6.4 and the extensions.
_COMMANDS: dict[str, tuple[frozenset[State], Callable[[_Parser, str, bool], Command]]] = {
    "CAPABILITY": (_ANY, _p_none(Capability)),  # RFC 3501 §6.1.1
    "NOOP": (_ANY, _p_none(Noop)),  # §6.1.2
    "LOGOUT": (_ANY, _p_none(Logout)),  # §6.1.3
    "ID": (_ANY, _p_id),  # RFC 2971
    "STARTTLS": (frozenset({_N}), _p_none(StartTls)),  # §6.2.1
    "AUTHENTICATE": (frozenset({_N}), _p_authenticate),  # §6.2.2
    "LOGIN": (frozenset({_N}), _p_login),  # §6.2.3
    "ENABLE": (frozenset({_A}), _p_enable),  # RFC 5161 §3.1
    "SELECT": (_AUTHED, _p_select),  # §6.3.1
    "EXAMINE": (_AUTHED, _p_examine),  # §6.3.2
    "CREATE": (_AUTHED, _p_create),  # §6.3.3
    "DELETE": (_AUTHED, _p_mailbox(Delete)),  # §6.3.4
    "RENAME": (_AUTHED, _p_rename),  # §6.3.5
    "SUBSCRIBE": (_AUTHED, _p_mailbox(Subscribe)),  # §6.3.6
    "UNSUBSCRIBE": (_AUTHED, _p_mailbox(Unsubscribe)),  # §6.3.7
    "LIST": (_AUTHED, _p_list),  # §6.3.8, RFC 5258
    "LSUB": (_AUTHED, _p_lsub),  # §6.3.9
    "NAMESPACE": (_AUTHED, _p_none(Namespace)),  # RFC 2342
    "STATUS": (_AUTHED, _p_status),  # §6.3.10
    "APPEND": (_AUTHED, _p_append),  # §6.3.11
    "IDLE": (_AUTHED, _p_none(Idle)),  # RFC 2177
    "GETQUOTA": (_AUTHED, _p_getquota),  # RFC 9208 §4.2
    "GETQUOTAROOT": (_AUTHED, _p_mailbox(GetQuotaRoot)),  # RFC 9208 §4.3
    "CHECK": (frozenset({_S}), _p_none(Check)),  # §6.4.1
    "CLOSE": (frozenset({_S}), _p_none(Close)),  # §6.4.2
    "UNSELECT": (frozenset({_S}), _p_none(Unselect)),  # RFC 3691
    "EXPUNGE": (frozenset({_S}), _p_expunge),  # §6.4.3, RFC 4315 §2.1
    "SEARCH": (frozenset({_S}), _p_search),  # §6.4.4, RFC 4731
    "SORT": (frozenset({_S}), _p_sort),  # RFC 5256 §3, RFC 5267
    "CANCELUPDATE": (frozenset({_S}), _p_cancelupdate),  # RFC 5267 §4.2
    "THREAD": (frozenset({_S}), _p_thread),  # RFC 5256 §3
    "FETCH": (frozenset({_S}), _p_fetch),  # §6.4.5
    "STORE": (frozenset({_S}), _p_store),  # §6.4.6
    "COPY": (frozenset({_S}), _p_copy(Copy)),  # §6.4.7
    "MOVE": (frozenset({_S}), _p_copy(Move)),  # RFC 6851
}
# RFC 3501 §6.4.8: UID COPY / FETCH / STORE / SEARCH; RFC 4315 UID EXPUNGE; RFC 6851.
_UID_COMMANDS = frozenset(
    {"COPY", "FETCH", "STORE", "SEARCH", "EXPUNGE", "MOVE", "SORT", "THREAD"}  # + RFC 5256
)

# The head of a command line: tag, command name, and the UID sub-command.
_HEAD = re.compile(rb"([\x21-\x7e]+) ([A-Za-z]+)(?: ([A-Za-z]+))?")


# ---------------------------------------------------------------------------------------
# The connection


class _Mode(enum.Enum):
    #: Reading commands (RFC 3501 §2.2.1).
    COMMAND = "command"
    #: Lines are SASL responses (RFC 3501 §6.2.2).
    SASL = "sasl"
    #: Waiting for DONE (RFC 2177 §3).
    IDLE = "idle"


class ServerConnection:
    """One IMAP session, server side. See the module docstring for how to drive it."""

    def __init__(self, config: ImapConfig | None = None, *, tls_active: bool = False) -> None:
        self.config = config or ImapConfig()
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = tls_active
        self._in = bytearray()
        self._out = bytearray()
        self._eof = False
        # Where the search for the next LF resumes: a slow sender does not make us scan
        # the same bytes again.
        self._scanned = 0
        # The command being framed: its lines and literals so far, literals inline as on
        # the wire, and how many literal bytes it has taken.
        self._cmd = bytearray()
        self._cmd_literals = 0
        self._cmd_tag: str | None = None
        self._cmd_name = ""
        self._literal_need = 0
        # Refusing input: bytes still to throw away, and whether the rest of a command
        # (or of an over-long line) is being skipped.
        self._discard = 0
        self._skip_command = False
        self._skip_line = False
        self._skip_tail = b""
        # AUTHENTICATE, IDLE and STARTTLS take over the connection until answered.
        self._mode = _Mode.COMMAND
        self._exchange_tag: str | None = None
        self._starttls_tag: str | None = None

    # -- feeding and draining ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.LOGOUT:
            self._in += data

    def data_to_send(self) -> bytes:
        """Return and clear the responses queued so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- the server's responses --------------------------------------------------------

    def untagged(self, text: str | bytes) -> None:
        """Queue ``* text`` (text may hold literals made with `quote`)."""
        raw = text.encode("utf-8") if isinstance(text, str) else text
        self._out += b"* " + raw + b"\r\n"

    def tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        """Queue ``tag OK [CODE] text`` (RFC 3501 §7.1) and end that command's exchange."""
        if status not in ("OK", "NO", "BAD"):
            raise ValueError(f"status must be OK, NO or BAD, not {status!r}")
        self._send_tagged(tag, status, text, code)
        if tag == self._exchange_tag:
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
        if tag == self._starttls_tag and status != "OK":
            self._starttls_tag = None

    def continuation(self, text: str = "") -> None:
        """Queue ``+ text``: a SASL challenge (base64) or the ``+ idling`` of IDLE."""
        self._out += b"+ " + _one_line(text) + b"\r\n"

    def bye(self, text: str) -> None:
        """Queue ``* BYE text`` and end the session (shutdown, timeout)."""
        self.untagged("BYE " + _one_line(text).decode("utf-8"))
        self.state = State.LOGOUT

    def _send_tagged(self, tag: str | None, status: str, text: str, code: str | None) -> None:
        parts = [(tag or "*").encode("ascii", "replace"), status.encode("ascii")]
        if code:
            parts.append(b"[" + _one_line(code) + b"]")
        if text:
            parts.append(_one_line(text))
        self._out += b" ".join(parts) + b"\r\n"

    # -- state changes the server decides ----------------------------------------------

    def authenticated(self) -> None:
        """LOGIN or AUTHENTICATE succeeded (RFC 3501 §3.2)."""
        if self.state is not State.NOT_AUTHENTICATED:
            raise RuntimeError(f"authenticated() in state {self.state.name}")
        self.state = State.AUTHENTICATED

    def selected(self) -> None:
        """SELECT or EXAMINE succeeded (RFC 3501 §3.3)."""
        if self.state not in _AUTHED:
            raise RuntimeError(f"selected() in state {self.state.name}")
        self.state = State.SELECTED

    def unselected(self) -> None:
        """CLOSE, UNSELECT, or a failed SELECT left no mailbox selected (RFC 3501 §6.3.1)."""
        if self.state not in _AUTHED:
            raise RuntimeError(f"unselected() in state {self.state.name}")
        self.state = State.AUTHENTICATED

    def tls_started(self) -> None:
        """The stream is now TLS (after `StartTls` was answered OK)."""
        if self._starttls_tag is None:
            raise RuntimeError("tls_started() without an accepted StartTls")
        self._starttls_tag = None
        self.tls_active = True
        # Bytes pipelined after STARTTLS came in plaintext and must not be taken as if
        # they came over TLS (CVE-2011-0411, "STARTTLS command injection").
        self._in.clear()
        self._scanned = 0

    # -- the state machine -------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """Process buffered input up to the next command; see the module docstring."""
        # After STARTTLS nothing more is parsed until TLS is up or the server said no.
        while self._starttls_tag is None and self.state is not State.LOGOUT:
            if self._discard:
                taken = min(self._discard, len(self._in))
                del self._in[:taken]
                self._discard -= taken
                if self._discard:
                    break
                continue
            if self._literal_need:
                if len(self._in) < self._literal_need:
                    break
                self._cmd += self._in[: self._literal_need]
                del self._in[: self._literal_need]
                self._literal_need = 0
                continue
            line = self._read_line()
            if line is None:
                break
            if isinstance(line, BadCommand):
                return line
            if isinstance(line, _Sentinel):  # _AGAIN
                continue
            event = self._handle_line(line)
            if event is not None:
                return event
        if self.state is State.LOGOUT:
            # Whatever else the client sent will never be read.
            self._in.clear()
            self._reset_command()
            return CLOSED
        if self._eof:
            self.state = State.LOGOUT
            return CLOSED
        return NEED_DATA

    def _read_line(self) -> bytes | BadCommand | _Sentinel | None:
        limit = self.config.max_line
        end = self._in.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._in)
            refused = None
            # "+ 1": the CR of a line of exactly max_line may be all that has come.
            if len(self._in) > limit + 1 and not self._skip_line:
                refused = self._line_too_long(bytes(self._in[:256]))
            if self._skip_line:
                # Too long and no end in sight: keep only the last bytes, which may
                # turn out to announce a literal.
                self._skip_tail = (self._skip_tail + bytes(self._in))[-32:]
                self._in.clear()
                self._scanned = 0
            return refused
        raw = bytes(self._in[:end])
        del self._in[: end + 1]
        self._scanned = 0
        if self._skip_line:
            # The end of an over-long line: if it announced a literal, that is
            # part of what is skipped.
            tail = (self._skip_tail + raw)[-32:]
            self._skip_line = False
            self._skip_tail = b""
            self._skip_literal(tail.removesuffix(b"\r"))
            return _AGAIN
        raw = raw.removesuffix(b"\r")
        if len(raw) > limit:
            refused = self._line_too_long(raw[:256])
            self._skip_line = False
            self._skip_literal(raw[-32:])
            return refused
        return raw

    def _line_too_long(self, start: bytes) -> BadCommand:
        # Answer with the tag of the command (or exchange), if the line's start shows one.
        head = _HEAD.match(self._cmd or start)
        tag = self._cmd_tag or (head.group(1).decode("ascii") if head else None)
        if self._mode is not _Mode.COMMAND:
            tag = self._exchange_tag
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
        elif tag is not None and any(c not in _TAG_CHARS for c in tag.encode()):
            tag = None
        self._reset_command()
        self._skip_line = True
        self._skip_tail = b""
        return self._bad(tag, "Line too long")

    def _skip_literal(self, line: bytes) -> None:
        # A refused line that ends in a literal marker: a LITERAL+ literal follows anyway
        # and is thrown away, then the rest of its command. A synchronising one never
        # comes, since we send no "+".
        m = _LITERAL_END.search(line)
        if m is None or not m.group(3):
            self._skip_command = False
            return
        size = int(m.group(2))
        if size > self.config.max_discard:
            self.bye("Literal too large to discard")
            return
        self._discard = size
        self._skip_command = True

    def _handle_line(self, line: bytes) -> Event | None:
        if self._skip_command:
            self._skip_literal(line)
            return None
        if self._mode is _Mode.SASL:
            return self._sasl_line(line)
        if self._mode is _Mode.IDLE:
            return self._idle_line(line)
        first = not self._cmd
        if first:
            refused = self._check_head(line)
            if refused is not None:
                self._skip_literal(line)
                return refused
        if len(self._cmd) - self._cmd_literals + len(line) > self.config.max_line:
            refused = self._bad(self._cmd_tag, "Command too long")
            self._reset_command()
            self._skip_literal(line)
            return refused
        m = _LITERAL_END.search(line)
        if m is None:
            data = bytes(self._cmd + line)
            self._reset_command()
            return self._parse(data)
        return self._start_literal(line, m)

    def _check_head(self, line: bytes) -> Event | None:
        """Refuse a command by its name and the state before reading its literals."""
        head = _HEAD.match(line)
        if head is None or any(c not in _TAG_CHARS for c in head.group(1)):
            return None  # the full parse will say what is wrong
        tag = head.group(1).decode("ascii")
        name = head.group(2).decode("ascii").upper()
        if name == "UID":
            sub = (head.group(3) or b"").decode("ascii").upper()
            if sub not in _UID_COMMANDS:
                return self._bad(tag, "Unknown UID command")
            states = _COMMANDS[sub][0]
        elif name in _COMMANDS:
            states = _COMMANDS[name][0]
        else:
            return self._bad(tag, "Unknown command")
        if self.state not in states:
            return self._bad(tag, f"{name} not allowed in state {self.state.value}")
        if name == "STARTTLS" and self.tls_active:
            return self._bad(tag, "TLS is already active")
        # RFC 3501 §6.2.3, RFC 9051 §7.1: PRIVACYREQUIRED.
        if name in ("LOGIN", "AUTHENTICATE") and self._auth_needs_tls():
            self._send_tagged(tag, "NO", f"{name} disabled until TLS", "PRIVACYREQUIRED")
            return BadCommand(tag, f"{name} disabled until TLS", "PRIVACYREQUIRED")
        self._cmd_tag = tag
        self._cmd_name = name
        return None

    def _auth_needs_tls(self) -> bool:
        return self.config.require_tls_for_auth and not self.tls_active

    def _start_literal(self, line: bytes, m: re.Match[bytes]) -> Event | None:
        tag = self._cmd_tag
        size = int(m.group(2))
        sync = not m.group(3)
        limit = self.config.max_literal if self._cmd_name == "APPEND" else self.config.max_line
        refusal: tuple[str, str | None] | None = None
        if m.group(1) and self._cmd_name != "APPEND":
            # RFC 3516 §4.4: literal8 belongs to APPEND's message data only.
            refusal = ("literal8 is not supported here", None)
        elif self._cmd_literals + size > limit:
            # RFC 7888 §4 and RFC 4469 §5: BAD [TOOBIG], before the bytes are sent.
            refusal = ("Literal too big", "TOOBIG")
        if refusal is not None:
            refused = self._bad(tag, refusal[0], refusal[1])
            self._reset_command()
            self._skip_literal(line)
            return refused
        self._cmd += line + b"\r\n"
        self._cmd_literals += size
        self._literal_need = size
        if sync:
            # RFC 3501 §7.5: the command continuation request.
            self.continuation("Ready for literal")
        return None

    def _reset_command(self) -> None:
        self._cmd.clear()
        self._cmd_literals = 0
        self._cmd_tag = None
        self._cmd_name = ""

    def _parse(self, data: bytes) -> Event:
        p = _Parser(data)
        tag: str | None = None
        try:
            # RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">
            tag = p.chars(_TAG_CHARS, "tag").decode("ascii")
            p.sp()
            name = p.keyword()
            uid = False
            if name == "UID":
                p.sp()
                name = p.keyword()
                uid = True
                if name not in _UID_COMMANDS:
                    raise _ParseError("Unknown UID command")
            entry = _COMMANDS.get(name)
            if entry is None:
                raise _ParseError("Unknown command")
            states, parse = entry
            if self.state not in states:
                raise _ParseError(f"{name} not allowed in state {self.state.value}")
            command = parse(p, tag, uid)
        except _ParseError as exc:
            return self._bad(tag, exc.text, exc.code, status=exc.status)
        except RecursionError:
            return self._bad(tag, "Command nested too deeply")
        return self._started(command)

    def _started(self, command: Command) -> Command:
        if isinstance(command, Logout):
            self.state = State.LOGOUT
        elif isinstance(command, StartTls):
            self._starttls_tag = command.tag
        elif isinstance(command, Idle):
            self._mode = _Mode.IDLE
            self._exchange_tag = command.tag
        elif isinstance(command, Authenticate):
            self._mode = _Mode.SASL
            self._exchange_tag = command.tag
        return command

    def _sasl_line(self, line: bytes) -> Event:
        # RFC 3501 §6.2.2: each line is base64, or "*" to cancel.
        tag = self._exchange_tag or ""
        if line.strip() == b"*":
            return SaslResponse(tag, None)
        try:
            data = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
            refused = self._bad(tag, "Bad base64 in SASL response")
            self._skip_literal(line)
            return refused
        return SaslResponse(tag, data)

    def _idle_line(self, line: bytes) -> Event:
        # RFC 2177 §3: the only thing a client may send while idling is DONE.
        tag = self._exchange_tag or ""
        self._mode = _Mode.COMMAND
        self._exchange_tag = None
        if line.strip().upper() == b"DONE":
            return IdleDone(tag)
        refused = self._bad(tag, "Expected DONE")
        # A command sent instead of DONE may announce a LITERAL+ literal: skip it too.
        self._skip_literal(line)
        return refused

    def _bad(
        self, tag: str | None, text: str, code: str | None = None, *, status: str = "BAD"
    ) -> BadCommand:
        self._send_tagged(tag, status, text, code)
        return BadCommand(tag, text, code, status)


def _one_line(text: str) -> bytes:
    # Response text is one line (RFC 3501 §9: TEXT-CHAR excludes CR and LF).
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
