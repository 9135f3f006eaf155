"""Hypothesis tests that feed the SMTP server core garbage and check it never misbehaves.

The core parses bytes from anyone on the Internet, so whatever arrives, in whatever
pieces, and however the I/O layer answers its decisions, it must not raise, must only
ever write well-formed replies, must keep its buffers bounded, and must stay shut once
closed. The byte scenarios for each reply code are in ``test_protocol.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import re
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.mail.smtp.protocol import (
    AUTH_FAILED,
    CLOSED,
    NEED_DATA,
    SHUTTING_DOWN,
    TIMEOUT,
    AuthAttempt,
    Event,
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    ServerConnection,
    SessionConfig,
    StartTLS,
    State,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REPLY_LINE = re.compile(rb"\d{3}[ -]")

Decide = Callable[[ServerConnection, Event], None]


# ---------------------------------------------------------------------------------------
# The harness: drives one connection and checks every invariant at every step.


def check_output(out: bytes) -> None:
    """Every write is whole replies: CRLF lines, ``ddd-`` continued by the same code."""
    if not out:
        return
    out.decode("utf-8")  # raises if not
    assert out.endswith(b"\r\n"), out
    lines = out[:-2].split(b"\r\n")
    for i, line in enumerate(lines):
        assert REPLY_LINE.match(line), line
        assert line[:1] in b"2345", line
        if line[3:4] == b"-":
            assert i + 1 < len(lines), f"reply left unfinished: {out!r}"
            assert lines[i + 1][:3] == line[:3], out


class Harness:
    """Feeds bytes, answers decisions as told by ``decide``, checks invariants."""

    def __init__(self, config: SessionConfig, *, tls_active: bool, decide: Decide) -> None:
        self.conn = ServerConnection(config, tls_active=tls_active)
        self.config = config
        self.decide = decide
        self.events: list[Event] = []
        self.sent = bytearray()
        self.closed = False
        self.conn.greet()
        self._pump()

    def feed(self, chunk: bytes) -> None:
        if self.closed:
            self.check_stays_closed(chunk)
            return
        self.conn.receive_data(chunk)
        self._pump()

    def check_stays_closed(self, chunk: bytes) -> None:
        self.conn.receive_data(chunk)
        assert self.conn.next_event() is CLOSED
        assert self.conn.next_event() is CLOSED
        assert self.conn.data_to_send() == b""
        assert self.conn.state is State.CLOSED

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        check_output(out)
        self.sent += out

    def _pump(self) -> None:
        # Each event consumes input, so a bounded number of rounds always suffices.
        for _ in range(100_000):
            event = self.conn.next_event()
            if event is NEED_DATA or event is CLOSED:
                self._flush()
                self._check_state(closed=event is CLOSED)
                self.closed = event is CLOSED
                return
            assert isinstance(event, StartTLS | AuthAttempt | MailFrom | RcptTo | MessageData)
            self._check_event(event)
            self.events.append(event)
            if isinstance(event, StartTLS):
                self._flush()
            self.decide(self.conn, event)
        raise AssertionError("next_event() never asked for more data")

    def _check_event(self, event: Event) -> None:
        conn, config = self.conn, self.config
        if isinstance(event, AuthAttempt):
            assert conn.tls_active
            assert config.auth_offered
            assert conn.authenticated_as is None
        elif isinstance(event, MailFrom):
            assert not config.require_tls or conn.tls_active
            assert not config.require_auth or conn.authenticated_as is not None
            assert event.reverse_path.isascii() or "SMTPUTF8" in event.params
        elif isinstance(event, RcptTo):
            assert conn._mail is not None
            assert len(conn._rcpts) < config.max_recipients
        elif isinstance(event, MessageData):
            assert 1 <= len(event.recipients) <= config.max_recipients
            assert len(event.content) <= config.max_message_size
        elif isinstance(event, StartTLS):
            assert config.starttls_available
            assert not conn.tls_active

    def _check_state(self, *, closed: bool) -> None:
        conn, config = self.conn, self.config
        assert conn._pending is None
        assert (conn.state is State.CLOSED) == closed
        assert conn.state is not State.GREETING
        if conn.authenticated_as is not None:
            assert conn.tls_active
        if conn.state in (State.MAIL, State.RCPT):
            assert conn._mail is not None
        if conn.state is State.RCPT:
            assert 1 <= len(conn._rcpts) <= config.max_recipients
        if closed:
            return
        assert conn.errors < config.max_errors
        # Memory stays bounded however much the peer sends.
        assert len(conn._in) <= max(config.max_command_line, config.max_auth_line)
        # The DATA buffer holds the content so far with its quoting dots, which do not
        # count against the limit (RFC 1870 §3); each costs a line of at least "\r\n..",
        # so the buffer stays within 4/3 of the limit.
        assert len(conn._data) <= 4 * (config.max_message_size + 16) // 3


# ---------------------------------------------------------------------------------------
# Strategies

configs = st.builds(
    SessionConfig,
    hostname=st.just("box.example"),
    max_message_size=st.sampled_from([64, 300, 40 * 1024 * 1024]),
    max_recipients=st.integers(1, 4),
    max_command_line=st.sampled_from([64, 200, 2048]),
    max_auth_line=st.sampled_from([64, 512, 12288]),
    max_errors=st.sampled_from([1, 20, 40, 40]),
    starttls_available=st.booleans(),
    # Mostly off, or most sessions would never get past MAIL.
    require_auth=st.sampled_from([False, False, False, True]),
    require_tls=st.sampled_from([False, False, False, True]),
    auth_offered=st.booleans(),
)

# How the I/O layer may answer a decision.
ANSWERS: list[tuple[str, Reply | None]] = [
    *[("accept", None)] * 6,
    ("accept", Reply(250, "2.0.0", "Queued as 4Xf9")),
    ("reject", Reply(550, "5.1.1", "User unknown")),
    ("reject", Reply(452, "4.2.2", "Mailbox full")),
    ("reject", Reply(552, "5.2.2", ("Mailbox full", "Try again next year"))),
    ("reject", AUTH_FAILED),
    ("reject", Reply(421, "4.3.0", "Try later")),
    ("close", SHUTTING_DOWN),
    ("close", TIMEOUT),
]


def random_decisions(data: st.DataObject) -> Decide:
    """Answer each decision with a drawn accept, reject or close."""

    def decide(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, StartTLS):
            if data.draw(st.booleans(), label="handshake succeeds"):
                conn.tls_started()
            else:
                conn.close(TIMEOUT)
            return
        how, reply = data.draw(st.sampled_from(ANSWERS), label="answer")
        if how == "accept":
            conn.accept(reply)
        elif how == "reject":
            assert reply is not None
            conn.reject(reply)
        else:
            assert reply is not None
            conn.close(reply)

    return decide


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


PREFIXES = [
    b"",
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    b"EHLO c.example\r\nAUTH LOGIN\r\n",
    b"EHLO c.example\r\nAUTH PLAIN\r\n",
]

# Whole commands a real client sends, so that sessions get deep into the state machine.
GOOD_LINES = [
    "EHLO c.example",
    "HELO c.example",
    "MAIL FROM:<a@b.example>",
    "MAIL FROM:<>",
    "MAIL FROM:<สมชาย@demo.go.th> SMTPUTF8 BODY=8BITMIME",
    "MAIL FROM:<a@b.example> SIZE=100 RET=HDRS ENVID=xyz",
    "RCPT TO:<c@d.example>",
    "RCPT TO:<x@d.example>",
    "RCPT TO:<สมหญิง@ตัวอย่าง.ไทย>",
    "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example",
    "DATA",
    "Subject: ประชุม",
    "",
    ".",
    "..",
    "RSET",
    "NOOP",
    "HELP",
    "VRFY c",
    "EXPN c",
    "QUIT",
    "STARTTLS",
    "AUTH PLAIN " + b64(b"\0alice\0secret"),
    "AUTH PLAIN " + b64(b"admin\0alice\0wrong"),
    "AUTH PLAIN",
    "AUTH LOGIN",
    b64(b"alice"),
    b64(b"secret"),
    b64(b"\0alice\0secret"),
    "*",
]

VERBS = [
    "EHLO", "HELO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
    "HELP", "STARTTLS", "AUTH", "AUTH PLAIN", "AUTH LOGIN", "AUTH CRAM-MD5", "ehlo",
    "mail from:", "rcpt to:", "BDAT", "", ".", "..", "*", "=",
]  # fmt: skip

# Characters str.isdigit() calls digits: ASCII, Thai, Arabic-Indic, Devanagari,
# Ethiopic, superscripts and circled numbers (the last three int() cannot parse).
DIGITS = "0123456789๑๒๓٣۴३፩²³¹①⑩"

THAI = ["สมชาย@demo.go.th", "<สมชาย@demo.go.th>", "ประชุม", "๑๒๓", "ก", "ตัวอย่าง.ไทย"]

ARGS = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "c.example",
            "<a@b.example>",
            "<>",
            "<สมชาย@demo.go.th>",
            "<a@b.example> SIZE=99999999999",
            "<a@b.example> SIZE=๑๒๓",
            "<c@d.example> NOTIFY=NEVER,DELAY",
            "<c@d.example> FOO=bar",
            "<@relay:a@b.example>",
            "<Postmaster>",
            "<a@[192.0.2.1]>",
            '<"a b"@c.example>',
            b64(b"\xff\xfe"),
            "=",
            "*",
            "<a@b.example",
            "a@b.example",
        ]
    ),
    st.sampled_from(THAI),
    st.text(max_size=40),
    st.text(alphabet="\0\r\n .<>@:=", max_size=20),
    st.integers(100, 20_000).map(lambda n: "x" * n),
    st.integers(1, 3000).map(lambda n: "\0" * n),
)

ENDINGS = st.sampled_from(["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", ""])

RANDOM_LINES = st.builds(
    lambda verb, sep, arg, end: f"{verb}{sep}{arg}{end}",
    st.sampled_from(VERBS),
    st.sampled_from([" ", " ", "", "  ", "\t"]),
    ARGS,
    ENDINGS,
)

# A whole transaction in one go, with content that may hold anything but its terminator.
TRANSACTIONS = st.builds(
    lambda content: (
        "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n" + content + "\r\n.\r\n"
    ),
    st.text(max_size=300).filter(lambda t: "\r\n.\r\n" not in "\r\n" + t + "\r\n"),
)

# The same as BDAT chunks (RFC 3030), the last marked LAST; chunk sizes count octets.
CHUNKED_TRANSACTIONS = st.builds(
    lambda chunks: (
        "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        + "".join(
            f"BDAT {len(chunk.encode('utf-8', 'surrogatepass'))}"
            + (" LAST" if i == len(chunks) - 1 else "")
            + f"\r\n{chunk}"
            for i, chunk in enumerate(chunks)
        )
    ),
    st.lists(st.text(max_size=100), min_size=1, max_size=4),
)

# ESMTP parameters with odd values, digits from every script among them.
PARAM_LINES = st.builds(
    "{} {}={}\r\n".format,
    st.sampled_from(["MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>"]),
    st.sampled_from(["SIZE", "BODY", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT", "SMTPUTF8"]),
    st.text(max_size=12) | st.text(alphabet=DIGITS, min_size=1, max_size=4),
)

# SASL initial responses and exchange lines: base64 or not, ASCII or not.
SASL_LINES = st.builds(
    "{}{}\r\n".format,
    st.sampled_from(["AUTH PLAIN ", "AUTH LOGIN ", ""]),
    st.text(max_size=30) | st.binary(max_size=30).map(b64),
)

LINES = st.one_of(
    st.sampled_from(GOOD_LINES).map(lambda line: line + "\r\n"),
    st.sampled_from(GOOD_LINES).map(lambda line: line + "\r\n"),
    TRANSACTIONS,
    CHUNKED_TRANSACTIONS,
    PARAM_LINES,
    SASL_LINES,
    RANDOM_LINES,
)


def encode(lines: list[str]) -> bytes:
    # surrogatepass lets st.text() surrogates through as invalid UTF-8, which is also input.
    return "".join(lines).encode("utf-8", "surrogatepass")


def split_randomly(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = sorted(
        data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="split points")
    )
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def play(harness: Harness, data: st.DataObject, stream: bytes, *, eof: bool) -> None:
    for piece in split_randomly(data, stream):
        harness.feed(piece)
    if eof:
        harness.feed(b"")
        assert harness.closed
    # Whatever state it ended in, once closed it stays closed and silent.
    if not harness.closed:
        harness.conn.close(TIMEOUT)
        harness.feed(b"")
    assert harness.closed
    harness.feed(b"QUIT\r\nEHLO again\r\n")


# ---------------------------------------------------------------------------------------
# 1) Random bytes


@FUZZ
@given(
    data=st.data(),
    config=configs,
    tls_active=st.booleans(),
    prefix=st.sampled_from(PREFIXES),
    chunks=st.lists(st.binary(max_size=512), max_size=12),
    eof=st.booleans(),
)
def test_random_bytes_in_random_pieces_never_break_the_core(
    data: st.DataObject,
    config: SessionConfig,
    tls_active: bool,
    prefix: bytes,
    chunks: list[bytes],
    eof: bool,
) -> None:
    harness = Harness(config, tls_active=tls_active, decide=random_decisions(data))
    play(harness, data, prefix + b"".join(chunks), eof=eof)


# ---------------------------------------------------------------------------------------
# 2) Plausible command lines


@FUZZ
@given(
    data=st.data(),
    config=configs,
    tls_active=st.booleans(),
    greet_first=st.sampled_from([True, True, True, False]),
    lines=st.lists(LINES, max_size=25),
    eof=st.booleans(),
)
def test_plausible_command_sequences_never_break_the_core(
    data: st.DataObject,
    config: SessionConfig,
    tls_active: bool,
    greet_first: bool,
    lines: list[str],
    eof: bool,
) -> None:
    if greet_first:
        lines = ["EHLO c.example\r\n", *lines]
    harness = Harness(config, tls_active=tls_active, decide=random_decisions(data))
    play(harness, data, encode(lines), eof=eof)


# ---------------------------------------------------------------------------------------
# 3) Closed stays closed


CLOSERS = ["quit", "timeout", "eof", "errors"]


@FUZZ
@given(
    data=st.data(),
    config=configs,
    lines=st.lists(LINES, max_size=10),
    closer=st.sampled_from(CLOSERS),
    after=st.lists(
        st.binary(max_size=200) | LINES.map(lambda line: encode([line])), min_size=1, max_size=5
    ),
)
def test_after_closed_nothing_is_read_and_nothing_is_sent(
    data: st.DataObject,
    config: SessionConfig,
    lines: list[str],
    closer: str,
    after: list[bytes],
) -> None:
    harness = Harness(config, tls_active=False, decide=random_decisions(data))
    for piece in split_randomly(data, encode(lines)):
        harness.feed(piece)
    if closer == "timeout" and not harness.closed:
        harness.conn.close(TIMEOUT)
        harness.feed(b"")
    elif closer == "eof":
        harness.feed(b"")
    # Leave DATA or a SASL exchange first ("\r\n.\r\n", then "*"), then QUIT, or else
    # make errors until the budget runs out.
    final = b"QUIT\r\n" if closer == "quit" else b"BOGUS\r\n"
    harness.feed(b"\r\n.\r\n*\r\n")
    for _ in range(100):
        if harness.closed:
            break
        harness.feed(final)
    assert harness.closed
    for chunk in after:
        harness.check_stays_closed(chunk)


# ---------------------------------------------------------------------------------------
# 4) How the bytes are split never changes the result


def deterministic_decisions(conn: ServerConnection, event: Event) -> None:
    """Answer from the event alone, so two runs of one stream decide alike."""
    if isinstance(event, StartTLS):
        conn.tls_started()
    elif isinstance(event, RcptTo) and event.forward_path.startswith("x"):
        conn.reject(Reply(550, "5.1.1", "User unknown"))
    elif isinstance(event, AuthAttempt) and event.password != "secret":
        conn.reject(AUTH_FAILED)
    else:
        conn.accept()


@FUZZ
@given(
    data=st.data(),
    config=configs.map(
        # STARTTLS discards what was pipelined after it, which by design depends on what
        # had arrived; refuse it here so that nothing else may.
        lambda c: dataclasses.replace(c, starttls_available=False)
    ),
    tls_active=st.booleans(),
    lines=st.lists(LINES, max_size=25),
)
def test_splitting_the_stream_never_changes_replies_or_events(
    data: st.DataObject, config: SessionConfig, tls_active: bool, lines: list[str]
) -> None:
    stream = encode(["EHLO c.example\r\n", *lines])
    whole = Harness(config, tls_active=tls_active, decide=deterministic_decisions)
    whole.feed(stream)
    whole.feed(b"")
    pieces = Harness(config, tls_active=tls_active, decide=deterministic_decisions)
    for piece in split_randomly(data, stream):
        pieces.feed(piece)
    pieces.feed(b"")
    assert pieces.events == whole.events
    assert [e.content for e in pieces.events if isinstance(e, MessageData)] == [
        e.content for e in whole.events if isinstance(e, MessageData)
    ]
    assert pieces.sent == whole.sent


# ---------------------------------------------------------------------------------------
# 5) Dot-stuffing round trip


@FUZZ
@given(
    data=st.data(),
    lines=st.lists(
        st.binary(max_size=80).filter(lambda b: b"\r\n" not in b)
        | st.sampled_from([b"", b".", b"..", b".x", b"\n.\n", b"\r", b"\n", b". ", "ก".encode()]),
        max_size=30,
    ),
)
def test_any_content_survives_dot_stuffing_and_any_split(
    data: st.DataObject, lines: list[bytes]
) -> None:
    # What a correct client does (RFC 5321 §4.5.2): double a leading dot on each line.
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    assert_one_message_arrives(data, b"DATA\r\n" + stuffed + b".\r\n", content)


@FUZZ
@given(
    data=st.data(),
    content=st.binary(max_size=600)
    | st.sampled_from([b"", b".\r\n", b"x\r\n.\r\nQUIT\r\n", b"BDAT 5\r\n"]),
)
def test_any_content_arrives_unchanged_in_any_bdat_chunks_and_any_split(
    data: st.DataObject, content: bytes
) -> None:
    # RFC 3030 §2: chunks are counted octets: no stuffing, no terminator, nothing
    # inside them is a command, however the chunks and the TCP reads cut the message.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(content)), max_size=4), label="chunks"))
    bounds = [0, *cuts, len(content)]
    pieces = [content[a:b] for a, b in itertools.pairwise(bounds)]
    chunks = b"".join(
        b"BDAT %d%s\r\n" % (len(piece), b" LAST" if i == len(pieces) - 1 else b"") + piece
        for i, piece in enumerate(pieces)
    )
    assert_one_message_arrives(data, chunks, content)


def assert_one_message_arrives(data: st.DataObject, message: bytes, content: bytes) -> None:
    """Send *message* (DATA or BDAT and what follows) in one transaction, the stream cut
    at random; the server must see exactly *content* and accept it."""
    stream = (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        + message
        + b"QUIT\r\n"
    )
    harness = Harness(
        SessionConfig("box.example"), tls_active=False, decide=deterministic_decisions
    )
    for piece in split_randomly(data, stream):
        harness.feed(piece)
    assert harness.closed
    messages = [e for e in harness.events if isinstance(e, MessageData)]
    assert [m.content for m in messages] == [content]
    assert harness.sent.endswith(b"250 2.0.0 Message accepted\r\n221 2.0.0 Bye\r\n")


# ---------------------------------------------------------------------------------------
# 6) The size limit: exact, after unstuffing, with bounded memory, however split


@FUZZ
@given(
    data=st.data(),
    # The limit relative to the content's size: often right at the boundary.
    slack=st.integers(-3, 3) | st.integers(-300, 300),
    # Random lines, some repeated many times since hypothesis keeps binary() short,
    # with lines that start with "." among them.
    lines=st.lists(
        st.builds(
            lambda line, times: [line] * times,
            st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"\n"))
            | st.sampled_from([b".", b"..", b".x", b""]),
            st.integers(1, 30),
        ),
        max_size=8,
    ).map(lambda groups: [line for group in groups for line in group]),
)
def test_size_limit_is_exact_and_memory_stays_bounded(
    data: st.DataObject, slack: int, lines: list[bytes]
) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    limit = max(0, len(content) + slack)
    stream = (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
        + stuffed
        + b".\r\nNOOP\r\n"
    )
    harness = Harness(
        SessionConfig("box.example", max_message_size=limit),
        tls_active=False,
        decide=deterministic_decisions,
    )
    for piece in split_randomly(data, stream):
        harness.feed(piece)  # checks len(_data) against the limit after every piece
    messages = [e.content for e in harness.events if isinstance(e, MessageData)]
    # RFC 1870 §3: the size is that of the content, not counting the quoting dots.
    if len(content) <= limit:
        assert messages == [content]
        assert harness.sent.endswith(b"250 2.0.0 Message accepted\r\n250 2.0.0 OK\r\n")
    else:
        assert messages == []
        assert harness.sent.endswith(
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n"
        )
