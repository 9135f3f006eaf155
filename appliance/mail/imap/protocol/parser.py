"""The IMAP command grammar (RFC 3501 §9 and the extensions): one command's bytes in,
its event out.

A recursive-descent `Parser` over one whole command (its literals inline, as the
connection framed them), and a parser per command name (`PARSERS`), each called with
the parser positioned after the name. A malformed command raises `ParseError` with
the BAD (or NO) text the connection answers. Which command is allowed in which state
is not decided here: that is the states table (`states.ALLOWED`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from typing import TypeVar

from appliance.mail.imap import mutf7
from appliance.mail.imap.protocol.encoder import MONTHS
from appliance.mail.imap.protocol.events import (
    Append,
    AppendMessage,
    Authenticate,
    BodySection,
    CancelUpdate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBinary,
    FetchBody,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QresyncParams,
    Rename,
    Search,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchKeyword,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    Select,
    SequenceSet,
    Sort,
    SortCriterion,
    StartTls,
    Status,
    Store,
    StoreMode,
    Subscribe,
    Thread,
    UidExpunge,
    Unselect,
    Unsubscribe,
)

_T = TypeVar("_T")


class ParseError(Exception):
    """A command the grammar refuses: *text* (and *code*) go into its BAD or NO."""

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
TAG_CHARS = _ASTRING_CHARS - {ord("+")}
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


class Parser:
    """Recursive descent over one command's bytes (RFC 3501 §9)."""

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
            raise ParseError(f"Expected {what or token.decode()}")
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
            raise ParseError("Unexpected extra arguments")

    def chars(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data) and data[self.pos] in allowed:
            self.pos += 1
        if self.pos == start:
            raise ParseError(f"Expected {what}")
        return data[start : self.pos]

    def atom(self) -> str:
        return self.chars(_ATOM_CHARS, "atom").decode("ascii")

    def keyword(self) -> str:
        return self.atom().upper()

    def number(self, *, nonzero: bool = False, limit: int = _MAX_NUMBER) -> int:
        digits = self.chars(frozenset(b"0123456789"), "number")
        if len(digits) > 20 or int(digits) > limit:
            raise ParseError("Number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise ParseError("Zero is not allowed here")
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
                raise ParseError("Unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise ParseError("Bad escape in quoted string")
                out.append(data[self.pos])
                self.pos += 1
            elif c in (0x00, 0x0D, 0x0A):
                raise ParseError("Bad character in quoted string")
            else:
                out.append(c)

    def literal(self, *, literal8: bool = False) -> bytes:
        # The framer has checked the size and placed exactly n bytes after the CRLF.
        m = _LITERAL_AT.match(self.data, self.pos)
        if m is None or (m.group(1) and not literal8):
            raise ParseError("Bad literal")
        n = int(m.group(2))
        start = m.end()
        if start + n > len(self.data):
            raise ParseError("Truncated literal")
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
        raise ParseError("Expected string")

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
            raise ParseError(f"{what} is not UTF-8") from None

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
                raise ParseError("Empty list")
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
                raise ParseError("Bad sequence set")
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
            raise ParseError("Bad date")
        return _make_date(int(m.group(3)), m.group(2), int(m.group(1)))

    def date_time(self) -> dt.datetime:
        # RFC 3501 §9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
        #                          SP time SP zone DQUOTE
        m = _DATE_TIME.match(self.quoted().decode("ascii", "replace"))
        if m is None:
            raise ParseError("Bad date-time")
        day = _make_date(int(m.group(3)), m.group(2), int(m.group(1)))
        hh, mi, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
        zh, zm = int(m.group(8)), int(m.group(9))
        if hh > 23 or mi > 59 or ss > 60 or zh > 23 or zm > 59:
            raise ParseError("Bad date-time")
        offset = dt.timedelta(hours=zh, minutes=zm) * (-1 if m.group(7) == "-" else 1)
        return dt.datetime(
            day.year, day.month, day.day, hh, mi, min(ss, 59), tzinfo=dt.timezone(offset)
        )


# A literal marker: "~" for literal8, the size, "+" for LITERAL+.
_LITERAL_AT = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r\n")
LITERAL_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")


def _seq_number(raw: str) -> int | None:
    # RFC 3501 §9: seq-number = nz-number / "*"
    if raw == "*":
        return None
    if not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) <= _MAX_NUMBER:
        raise ParseError("Bad sequence set")
    return int(raw)


def _make_date(year: int, month: str, day: int) -> dt.date:
    try:
        return dt.date(year, MONTHS.index(month.capitalize()) + 1, day)
    except ValueError:
        raise ParseError("Bad date") from None


def _decode_mailbox(raw: bytes) -> str:
    # RFC 3501 §5.1: INBOX is case-insensitive; everything else is case-sensitive.
    if raw.upper() == b"INBOX":
        return "INBOX"
    try:
        return mutf7.decode(raw)
    except mutf7.MUTF7Error as exc:
        # The command is well-formed (an astring); only the name cannot exist: that is
        # a NO (RFC 3501 §6.3.1-§6.3.4 answer NO for an unusable name), not a BAD.
        raise ParseError(f"Bad mailbox name: {exc}", "CANNOT", status="NO") from None


# ---------------------------------------------------------------------------------------
# Command parsers: each gets the parser positioned after the command name


def _p_none(cls: Callable[[str], Command]) -> Callable[[Parser, str, bool], Command]:
    def parse(p: Parser, tag: str, uid: bool) -> Command:
        p.end()
        return cls(tag)

    return parse


def _p_login(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.2.3: LOGIN userid password
    p.sp()
    user = p.astr("user name")
    p.sp()
    password = p.astr("password")
    p.end()
    return Login(tag, user, password)


def _p_authenticate(p: Parser, tag: str, uid: bool) -> Command:
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
        raise ParseError("Bad base64") from None


def _p_enable(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 5161 §3.1: ENABLE 1*(SP capability)
    caps = []
    p.sp()
    caps.append(p.keyword())
    while p.try_sp():
        caps.append(p.keyword())
    p.end()
    return Enable(tag, tuple(caps))


def _p_id(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 2971 §4: id-params-list = "(" *(string SP nstring) ")" / nil
    p.sp()
    if p.peek() != 0x28:
        if p.nstring() is not None:
            raise ParseError("Expected ( or NIL")
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
        raise ParseError("Too many ID parameters")
    return Id(tag, dict(pairs))


def _p_select(p: Parser, tag: str, uid: bool, *, readonly: bool = False) -> Command:
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
                raise ParseError(f"Unknown SELECT parameter {name}")

        p.paren(param)
    p.end()
    return Select(tag, mailbox, readonly, condstore, qresync)


def _qresync_params(p: Parser) -> QresyncParams:
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


def _p_examine(p: Parser, tag: str, uid: bool) -> Command:
    return _p_select(p, tag, uid, readonly=True)


def _p_create(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.3.3; RFC 6154 §5.2: create-param = "USE" SP "(" [use-attr *(SP ..)] ")"
    p.sp()
    mailbox = p.mailbox()
    use: list[str] = []
    if p.try_sp():

        def param() -> None:
            if p.keyword() != "USE":
                raise ParseError("Unknown CREATE parameter")
            p.sp()
            use.extend(p.paren(p.flag, empty=True))

        p.paren(param)
    p.end()
    return Create(tag, mailbox, tuple(use))


def _p_mailbox(cls: Callable[[str, str], Command]) -> Callable[[Parser, str, bool], Command]:
    def parse(p: Parser, tag: str, uid: bool) -> Command:
        p.sp()
        mailbox = p.mailbox()
        p.end()
        return cls(tag, mailbox)

    return parse


def _p_rename(p: Parser, tag: str, uid: bool) -> Command:
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


def _p_list(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    p.sp()
    selection: list[str] = []
    if p.peek() == 0x28:
        selection = p.paren(p.keyword, empty=True)
        for opt in selection:
            if opt not in _LIST_SELECT:
                raise ParseError(f"Unknown LIST selection option {opt}")
        # RFC 5258 §3.1: RECURSIVEMATCH needs another option beside it, and REMOTE
        # does not count ("MUST NOT occur as the only selection option (or only with
        # REMOTE)").
        if "RECURSIVEMATCH" in selection and set(selection) <= {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        p.sp()
    reference = p.mailbox()
    p.sp()
    found = p.paren(p.list_mailbox) if p.peek() == 0x28 else [p.list_mailbox()]
    patterns = tuple(pattern for pattern in found if pattern is not None)
    returns: list[str] = []
    status: list[str] = []
    if p.try_sp():
        if p.keyword() != "RETURN":
            raise ParseError("Expected RETURN")
        p.sp()

        def option() -> str:
            name = p.keyword()
            if name not in _LIST_RETURN:
                raise ParseError(f"Unknown LIST return option {name}")
            if name == "STATUS":
                # RFC 5819 §2: STATUS (status-att ...)
                p.sp()
                status.extend(_status_items(p))
            return name

        returns = p.paren(option, empty=True)
    p.end()
    return List(tag, reference, patterns, tuple(selection), tuple(returns), tuple(status))


def _p_lsub(p: Parser, tag: str, uid: bool) -> Command:
    p.sp()
    reference = p.mailbox()
    p.sp()
    pattern = p.list_mailbox()
    p.end()
    return Lsub(tag, reference, pattern)


def _status_items(p: Parser) -> list[str]:
    items = p.paren(p.keyword)
    for item in items:
        if item not in _STATUS_ITEMS:
            raise ParseError(f"Unknown STATUS item {item}")
    return items


def _p_status(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 3501 §6.3.10; RFC 7162 §3.1.6 adds HIGHESTMODSEQ.
    p.sp()
    mailbox = p.mailbox()
    p.sp()
    items = _status_items(p)
    p.end()
    return Status(tag, mailbox, tuple(items))


def _p_append(p: Parser, tag: str, uid: bool) -> Command:
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


def _append_message(p: Parser) -> AppendMessage:
    flags: tuple[str, ...] = ()
    when: dt.datetime | None = None
    if p.peek() == 0x28:
        flags = p.flag_list()
        p.sp()
    if p.peek() == 0x22:
        when = p.date_time()
        p.sp()
    if p.peek() != 0x7B and not p.data.startswith(b"~{", p.pos):
        raise ParseError("APPEND needs the message as a literal")
    return AppendMessage(flags, when, p.literal(literal8=True))


def _p_uid_expunge(p: Parser, tag: str, uid: bool) -> Command:
    p.sp()
    uids = p.sequence_set()
    p.end()
    return UidExpunge(tag, uids)


def _p_expunge(p: Parser, tag: str, uid: bool) -> Command:
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


def _search_key(p: Parser, depth: int) -> SearchKey:
    # RFC 3501 §9: search-key; RFC 7162 §3.1.5 adds MODSEQ.
    if depth > _MAX_DEPTH:
        raise ParseError("Search nested too deeply")
    c = p.peek()
    if c == 0x28:
        return SearchAnd(tuple(p.paren(lambda: _search_key(p, depth + 1))))
    if c is not None and c in _SEQ_CHARS:
        return SearchSequence(False, p.sequence_set())
    name = p.keyword()
    if name in _SEARCH_FLAGS:
        return SearchFlag(name)
    if name not in _SEARCH_KEYS_WITH_ARGS:
        raise ParseError(f"Unknown search key {name}")
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
                raise ParseError("Bad MODSEQ entry type")
            p.sp()
            return SearchModseq(p.modseq(zero=True), entry, kind.lower())
        return SearchModseq(p.modseq(zero=True))
    raise ParseError(f"Unknown search key {name}")


def _return_options(
    p: Parser, allowed: frozenset[str], what: str
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
            raise ParseError(f"Unknown {what} return option {name}")
        if name == "PARTIAL":
            if partial is not None:
                raise ParseError("PARTIAL given twice")
            p.sp()
            partial = _partial_range(p)
        return name

    returns = tuple(p.paren(option, empty=True))
    p.sp()
    return returns, partial


def _partial_range(p: Parser) -> tuple[int, int]:
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


def _search_criteria(p: Parser) -> SearchKey:
    # search-key *(SP search-key): several keys in a row must all match.
    keys = [_search_key(p, 0)]
    while p.try_sp():
        keys.append(_search_key(p, 0))
    p.end()
    return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


def _p_search(p: Parser, tag: str, uid: bool) -> Command:
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
            raise ParseError("Unsupported charset", f"BADCHARSET ({' '.join(_CHARSETS)})")
        p.sp()
    criteria = _search_criteria(p)
    return Search(tag, uid, charset, criteria, returns, partial)


def _p_cancelupdate(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 5267 §5: "CANCELUPDATE" 1*(SP tag-string), tag-string = string
    tags = []
    while p.try_sp():
        tags.append(p.text(p.string(), "tag"))
    if not tags:
        raise ParseError("Expected a tag")
    p.end()
    return CancelUpdate(tag, tuple(tags))


def _p_sort(p: Parser, tag: str, uid: bool) -> Command:
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
            raise ParseError(f"Unknown sort key {name}")
        return SortCriterion(name, reverse)

    criteria = tuple(p.paren(criterion))
    p.sp()
    charset = p.astr("charset").upper()
    p.sp()
    return Sort(tag, uid, criteria, charset, _search_criteria(p), returns, partial)


def _p_thread(p: Parser, tag: str, uid: bool) -> Command:
    # RFC 5256 §5: thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    p.sp()
    algorithm = p.keyword()
    if algorithm not in _THREAD_ALGORITHMS:
        raise ParseError(f"Unknown threading algorithm {algorithm}")
    p.sp()
    charset = p.astr("charset").upper()
    p.sp()
    return Thread(tag, uid, algorithm, charset, _search_criteria(p))


def _fetch_item(p: Parser) -> FetchItem:
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
        raise ParseError(f"Unknown fetch item {name}")
    return FetchAttr(name)


def _fetch_binary(p: Parser, name: str) -> FetchBinary:
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


def _section(p: Parser) -> BodySection:
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
            raise ParseError(f"Bad section {text}")
        if text.startswith("HEADER.FIELDS"):
            p.sp()
            fields = tuple(name.upper() for name in p.paren(p.astr))
    elif part and p.data[p.pos - 1] == 0x2E:
        raise ParseError("Bad section")
    p.expect(b"]")
    return BodySection(tuple(part), text, fields)


def _p_fetch(p: Parser, tag: str, uid: bool) -> Command:
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
                raise ParseError(f"Unknown FETCH modifier {name}")

        p.paren(modifier)
    p.end()
    # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE.
    if vanished and (not uid or changed_since is None):
        raise ParseError("VANISHED needs UID FETCH and CHANGEDSINCE")
    if uid and FetchAttr("UID") not in items:
        # RFC 3501 §6.4.8: UID FETCH always returns the UID.
        items.append(FetchAttr("UID"))
    return Fetch(tag, uid, seqs, tuple(items), changed_since, vanished)


def _p_store(p: Parser, tag: str, uid: bool) -> Command:
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
            raise ParseError("Unknown STORE modifier")
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
        raise ParseError("Expected FLAGS, +FLAGS or -FLAGS")
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


def _p_copy(cls: type[Copy] | type[Move]) -> Callable[[Parser, str, bool], Command]:
    def parse(p: Parser, tag: str, uid: bool) -> Command:
        p.sp()
        seqs = p.sequence_set()
        p.sp()
        mailbox = p.mailbox()
        p.end()
        return cls(tag, uid, seqs, mailbox)

    return parse


def _p_getquota(p: Parser, tag: str, uid: bool) -> Command:
    p.sp()
    root = p.astr("quota root")
    p.end()
    return GetQuota(tag, root)


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

#: Command name -> its parser. RFC 3501 §6.1-6.4 and the extensions; the states each
#: is allowed in are `states.ALLOWED`.
PARSERS: dict[str, Callable[[Parser, str, bool], Command]] = {
    "CAPABILITY": _p_none(Capability),  # RFC 3501 §6.1.1
    "NOOP": _p_none(Noop),  # §6.1.2
    "LOGOUT": _p_none(Logout),  # §6.1.3
    "ID": _p_id,  # RFC 2971
    "STARTTLS": _p_none(StartTls),  # §6.2.1
    "AUTHENTICATE": _p_authenticate,  # §6.2.2
    "LOGIN": _p_login,  # §6.2.3
    "ENABLE": _p_enable,  # RFC 5161 §3.1
    "SELECT": _p_select,  # §6.3.1
    "EXAMINE": _p_examine,  # §6.3.2
    "CREATE": _p_create,  # §6.3.3
    "DELETE": _p_mailbox(Delete),  # §6.3.4
    "RENAME": _p_rename,  # §6.3.5
    "SUBSCRIBE": _p_mailbox(Subscribe),  # §6.3.6
    "UNSUBSCRIBE": _p_mailbox(Unsubscribe),  # §6.3.7
    "LIST": _p_list,  # §6.3.8, RFC 5258
    "LSUB": _p_lsub,  # §6.3.9
    "NAMESPACE": _p_none(Namespace),  # RFC 2342
    "STATUS": _p_status,  # §6.3.10
    "APPEND": _p_append,  # §6.3.11
    "IDLE": _p_none(Idle),  # RFC 2177
    "GETQUOTA": _p_getquota,  # RFC 9208 §4.2
    "GETQUOTAROOT": _p_mailbox(GetQuotaRoot),  # RFC 9208 §4.3
    "CHECK": _p_none(Check),  # §6.4.1
    "CLOSE": _p_none(Close),  # §6.4.2
    "UNSELECT": _p_none(Unselect),  # RFC 3691
    "EXPUNGE": _p_expunge,  # §6.4.3, RFC 4315 §2.1
    "SEARCH": _p_search,  # §6.4.4, RFC 4731
    "SORT": _p_sort,  # RFC 5256 §3, RFC 5267
    "CANCELUPDATE": _p_cancelupdate,  # RFC 5267 §4.2
    "THREAD": _p_thread,  # RFC 5256 §3
    "FETCH": _p_fetch,  # §6.4.5
    "STORE": _p_store,  # §6.4.6
    "COPY": _p_copy(Copy),  # §6.4.7
    "MOVE": _p_copy(Move),  # RFC 6851
}
# RFC 3501 §6.4.8: UID COPY / FETCH / STORE / SEARCH; RFC 4315 UID EXPUNGE; RFC 6851.
UID_COMMANDS = frozenset(
    {"COPY", "FETCH", "STORE", "SEARCH", "EXPUNGE", "MOVE", "SORT", "THREAD"}  # + RFC 5256
)

# The head of a command line: tag, command name, and the UID sub-command.
COMMAND_HEAD = re.compile(rb"([\x21-\x7e]+) ([A-Za-z]+)(?: ([A-Za-z]+))?")
