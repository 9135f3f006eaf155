"""Hypothesis tests that feed the IMAP server core garbage and check it never misbehaves.

The core parses bytes from anyone who can reach port 143, so whatever arrives, in
whatever pieces, and however the server answers the commands, it must not raise, must
only ever write well-formed response lines, must keep its buffers bounded, and must give
the same result however the bytes were split. The byte scenarios for each command are in
``test_protocol.py``.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.mail.imap import mutf7
from appliance.mail.imap.protocol import (
    CLOSED,
    NEED_DATA,
    Authenticate,
    BadCommand,
    Close,
    Event,
    Idle,
    IdleDone,
    ImapConfig,
    Login,
    Logout,
    SaslResponse,
    Select,
    SequenceSet,
    ServerConnection,
    StartTls,
    State,
    Unselect,
    quote,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What the brief asks of every line the core writes, for clients that use plain tags.
STRICT_LINE = re.compile(rb"^(\* |\+ |[A-Za-z0-9.]+ (OK|NO|BAD))")
# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">; random bytes make such tags.
RFC_LINE = re.compile(rb"^(\* |\+ |[\x21-\x7e]+ (OK|NO|BAD))")
RFC_TAG_SPECIALS = re.compile(rb'[(){%*"\\+]')

SMALL = ImapConfig(max_literal=2000, max_line=300, max_discard=5000)


class Harness:
    """Feeds bytes, answers each command the way a simple server would, checks output."""

    def __init__(
        self, config: ImapConfig, *, tls: bool, state: State, line: re.Pattern[bytes]
    ) -> None:
        self.conn = ServerConnection(config, tls_active=tls)
        if state is not State.NOT_AUTHENTICATED:
            self.conn.authenticated()
        if state is State.SELECTED:
            self.conn.selected()
        self.config = config
        self.line = line
        self.events: list[Event] = []
        self.sent = bytearray()
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        if self.closed:
            self.conn.receive_data(chunk)
            assert self.conn.next_event() is CLOSED
            assert self.conn.data_to_send() == b""
            return
        self.conn.receive_data(chunk)
        self.pump()

    def pump(self) -> None:
        for _ in range(100_000):
            event = self.conn.next_event()
            if event is NEED_DATA or event is CLOSED:
                self.flush()
                self.check_bounded()
                self.closed = event is CLOSED
                if self.closed:
                    assert self.conn.state is State.LOGOUT
                return
            assert not isinstance(event, type(NEED_DATA))
            self.events.append(event)
            self.answer(event)
        raise AssertionError("next_event() never asked for more data")

    def answer(self, event: Event) -> None:
        conn = self.conn
        assert isinstance(event.tag, str | None)
        if isinstance(event, BadCommand):
            return
        tag = event.tag
        if isinstance(event, Login):
            assert conn.tls_active or not self.config.require_tls_for_auth
            conn.authenticated()
        elif isinstance(event, Authenticate):
            assert conn.state is State.NOT_AUTHENTICATED
            if event.initial_response is None:
                conn.continuation("")
                return
            conn.authenticated()
        elif isinstance(event, SaslResponse):
            conn.tagged(tag, "NO", "Authentication failed", "AUTHENTICATIONFAILED")
            return
        elif isinstance(event, Select):
            conn.selected()
        elif isinstance(event, Close | Unselect):
            conn.unselected()
        elif isinstance(event, Idle):
            conn.continuation("idling")
            return
        elif isinstance(event, StartTls):
            conn.tagged(tag, "OK", "Begin TLS negotiation now")
            self.flush()
            conn.tls_started()
            # The core drops what was pipelined after STARTTLS (CVE-2011-0411), so the
            # next piece may begin mid-line, with any atom as its "tag" (say "gE-").
            self.line = RFC_LINE
            return
        elif isinstance(event, Logout):
            conn.untagged("BYE logging out")
        elif isinstance(event, IdleDone):
            pass
        conn.tagged(tag, "OK", "done")

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if not out:
            return
        assert out.endswith(b"\r\n"), out
        out.decode("utf-8")
        for line in out[:-2].split(b"\r\n"):
            assert self.line.match(line), line
            tag = line.split(b" ", 1)[0]
            assert tag in (b"*", b"+") or not RFC_TAG_SPECIALS.search(tag), line
        self.sent += out

    def check_bounded(self) -> None:
        conn = self.conn
        # A partial line or one literal in progress, never more.
        limit = self.config.max_literal + 2 * self.config.max_line + 64
        assert len(conn._in) + len(conn._cmd) <= limit


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


states = st.sampled_from([State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED])
configs = st.sampled_from(
    [SMALL, ImapConfig(), ImapConfig(max_literal=10, max_line=40, max_discard=50)]
)


@FUZZ
@given(
    st.binary(max_size=3000),
    st.lists(st.integers(min_value=0), max_size=30),
    states,
    st.booleans(),
    configs,
)
def test_random_bytes_never_raise(
    data: bytes, cuts: list[int], state: State, tls: bool, config: ImapConfig
) -> None:
    h = Harness(config, tls=tls, state=state, line=RFC_LINE)
    for piece in split(data, cuts):
        h.feed(piece)
    h.feed(b"")
    assert h.closed


# ---------------------------------------------------------------------------------------
# Plausible commands: the grammar's words, with literals, in random order and mutated

tags = st.from_regex(r"[A-Za-z0-9.]{1,8}", fullmatch=True)
seq_sets = st.from_regex(
    r"(\*|[1-9][0-9]{0,3})(:(\*|[1-9][0-9]{0,3}))?(,[1-9][0-9]{0,2})*", fullmatch=True
)
texts = st.text(alphabet=st.sampled_from('abcxyz ก่องจดหมายไทย"\\&-/.%*\r\n日'), max_size=20)


@st.composite
def strings(draw: st.DrawFn, text: st.SearchStrategy[str] = texts, *, sync: bool) -> bytes:
    """A string as a client might send it: atom, quoted, literal or LITERAL+.

    Without *sync* no synchronising literal is sent: a client that waits for "+" before
    sending one cannot be modelled by a byte string, since refused commands get none.
    """
    value = draw(text)
    raw = value.encode()
    kind = draw(st.sampled_from(["quote", "literal", "literal+", "atom"]))
    if kind == "atom" and re.fullmatch(r"[A-Za-z0-9.&/-]+", value):
        return raw
    if kind == "quote" and re.fullmatch(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*", raw):
        return quote(raw)
    if kind == "literal" and sync:
        return b"{%d}\r\n" % len(raw) + raw
    return b"{%d+}\r\n" % len(raw) + raw


@st.composite
def mailboxes(draw: st.DrawFn, *, sync: bool) -> bytes:
    name = mutf7.encode(draw(texts))
    return draw(strings(st.just(name), sync=sync))


SEARCH_WORDS = [
    b"ALL",
    b"SEEN",
    b"UNSEEN",
    b"NEW",
    b"OLD",
    b"DELETED",
    b"FLAGGED",
    b"DRAFT",
    b"RECENT",
    b"NOT",
    b"OR",
    b"(",
    b")",
    b"FROM",
    b"SUBJECT",
    b"TEXT",
    b"BODY",
    b"HEADER",
    b"KEYWORD",
    b"BEFORE 1-Feb-2024",
    b"SINCE 31-Dec-1999",
    b'ON "29-Feb-2024"',
    b"LARGER 100",
    b"SMALLER 5",
    b"UID",
    b"MODSEQ 5",
    b"1:*",
    b"2,4:6",
    b"CHARSET UTF-8",
    b"RETURN (MIN)",
    b"RETURN (PARTIAL -1:-10 COUNT)",
    b"(REVERSE DATE SUBJECT)",
    b"(ARRIVAL)",
    b"REFERENCES",
    b"ORDEREDSUBJECT",
    b"UTF-8",
]
FETCH_WORDS = [
    b"FLAGS",
    b"UID",
    b"ENVELOPE",
    b"BODY",
    b"BODYSTRUCTURE",
    b"RFC822.SIZE",
    b"ALL",
    b"BODY[]",
    b"BODY.PEEK[HEADER]",
    b"BODY[1.2.MIME]",
    b"BODY[TEXT]<0.100>",
    b"BODY.PEEK[HEADER.FIELDS (From To)]",
    b"(",
    b")",
    b"(CHANGEDSINCE 5)",
    b"(VANISHED)",
    b"MODSEQ",
    b"INTERNALDATE",
    b"BINARY[1]",
    b"BINARY.PEEK[]<0.10>",
    b"BINARY.SIZE[2.1]",
]
COMMANDS = [
    b"CAPABILITY",
    b"NOOP",
    b"LOGOUT",
    b"STARTTLS",
    b"LOGIN",
    b"AUTHENTICATE PLAIN",
    b"AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=",
    b"ENABLE QRESYNC",
    b"ID",
    b"SELECT",
    b"EXAMINE",
    b"CREATE",
    b"DELETE",
    b"RENAME",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"LIST",
    b"LSUB",
    b"NAMESPACE",
    b"STATUS",
    b"APPEND",
    b"CHECK",
    b"CLOSE",
    b"UNSELECT",
    b"EXPUNGE",
    b"UID EXPUNGE",
    b"SEARCH",
    b"UID SEARCH",
    b"FETCH",
    b"UID FETCH",
    b"STORE",
    b"UID STORE",
    b"COPY",
    b"UID COPY",
    b"MOVE",
    b"UID MOVE",
    b"IDLE",
    b"GETQUOTA",
    b"GETQUOTAROOT",
    b"SORT",
    b"UID SORT",
    b"THREAD",
    b"UID THREAD",
]


@st.composite
def arguments(draw: st.DrawFn, *, sync: bool) -> bytes:
    parts = draw(
        st.lists(
            st.one_of(
                mailboxes(sync=sync),
                strings(sync=sync),
                seq_sets.map(str.encode),
                st.sampled_from(SEARCH_WORDS),
                st.sampled_from(FETCH_WORDS),
                st.sampled_from(
                    [
                        b"(\\Seen $Junk)",
                        b"+FLAGS.SILENT",
                        b"-FLAGS",
                        b"(UNCHANGEDSINCE 7)",
                        b'"17-Jul-1996 02:44:25 -0700"',
                        b"(CONDSTORE)",
                        b"(QRESYNC (1 2 1:5))",
                        b"(USE (\\Sent))",
                        b"RETURN (CHILDREN STATUS (MESSAGES))",
                        b"(MESSAGES HIGHESTMODSEQ)",
                        b"NIL",
                        b"~{3+}\r\nabc",
                        b"{99999+}\r\n" + b"z" * 50,
                        *([b"~{3}\r\nabc", b"{99999}\r\n"] if sync else []),
                    ]
                ),
            ),
            max_size=6,
        )
    )
    return b" ".join(parts)


@st.composite
def command_lines(draw: st.DrawFn, *, sync: bool = True) -> bytes:
    line = draw(tags).encode() + b" " + draw(st.sampled_from(COMMANDS))
    args = draw(arguments(sync=sync))
    if args:
        line += b" " + args
    # Exchanges that take over the line: SASL responses and DONE.
    extra = draw(st.sampled_from([b"", b"", b"DONE\r\n", b"*\r\n", b"Ym9i\r\n", b"bm90IGI2NA\r\n"]))
    return line + b"\r\n" + extra


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(command_lines(), min_size=1, max_size=6))))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not data:
            break
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["delete", "insert", "flip"]))
        if action == "delete":
            del data[i]
        elif action == "insert":
            data.insert(i, draw(st.sampled_from(b' (){}"\\\r\n*+~0')))
        else:
            data[i] = draw(st.integers(min_value=0, max_value=255))
    return bytes(data)


@FUZZ
@given(
    st.lists(command_lines(sync=False), min_size=1, max_size=8).map(b"".join),
    st.lists(st.integers(min_value=0), max_size=20),
    states,
    st.booleans(),
    configs,
)
def test_plausible_commands_never_raise_and_answer_cleanly(
    data: bytes, cuts: list[int], state: State, tls: bool, config: ImapConfig
) -> None:
    h = Harness(config, tls=tls, state=state, line=STRICT_LINE)
    for piece in split(data, cuts):
        h.feed(piece)


@FUZZ
@given(mutated(), st.lists(st.integers(min_value=0), max_size=20), states, configs)
def test_mutated_commands_never_raise(
    data: bytes, cuts: list[int], state: State, config: ImapConfig
) -> None:
    h = Harness(config, tls=True, state=state, line=RFC_LINE)
    for piece in split(data, cuts):
        h.feed(piece)
    h.feed(b"")
    assert h.closed


@FUZZ
@given(
    st.lists(command_lines(), min_size=1, max_size=6).map(b"".join),
    st.lists(st.integers(min_value=0), max_size=20),
    states,
    configs,
)
def test_splitting_does_not_change_the_result(
    data: bytes, cuts: list[int], state: State, config: ImapConfig
) -> None:
    whole = Harness(config, tls=True, state=state, line=RFC_LINE)
    whole.feed(data)
    pieces = Harness(config, tls=True, state=state, line=RFC_LINE)
    for piece in split(data, cuts):
        pieces.feed(piece)
    assert pieces.events == whole.events
    assert pieces.sent == whole.sent


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(1, 60)), st.one_of(st.none(), st.integers(1, 60))
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 50),
)
def test_sequence_set_resolve_agrees_with_contains(
    ranges: list[tuple[int | None, int | None]], max_value: int
) -> None:
    s = SequenceSet(tuple(ranges))
    resolved = [n for r in s.resolve(max_value) for n in r]
    assert resolved == sorted(set(resolved))
    assert set(resolved) == {n for n in range(1, 61) if s.contains(n, max_value)}
