"""What the IMAP core hands the server: one frozen dataclass per command, and the values
they carry (sequence sets, search keys, fetch items).

Every command event has its tag first; `BadCommand` says the core has answered a
command itself. RFC 3501 §6 and the extensions name each command's arguments; the
parser (`parser`) builds these, the session (appliance.mail.imap.session) answers them.
Nothing here reads or writes bytes.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

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

__all__ = [
    "Append",
    "AppendMessage",
    "Authenticate",
    "BadCommand",
    "BodySection",
    "CancelUpdate",
    "Capability",
    "Check",
    "Close",
    "Command",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Event",
    "Expunge",
    "Fetch",
    "FetchAttr",
    "FetchBinary",
    "FetchBody",
    "FetchItem",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "IdleDone",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QresyncParams",
    "Rename",
    "SaslResponse",
    "Search",
    "SearchAnd",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchKeyword",
    "SearchModseq",
    "SearchNot",
    "SearchOr",
    "SearchSequence",
    "SearchSize",
    "SearchText",
    "Select",
    "SequenceSet",
    "Sort",
    "SortCriterion",
    "StartTls",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "Thread",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
]
