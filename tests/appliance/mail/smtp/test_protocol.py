"""Byte-scenario tests for the SMTP server core (`appliance.mail.smtp.protocol`).

No sockets and no trio: each test plays a client's bytes into a `ServerConnection`
through the small `Client` driver below and checks the exact reply lines, code and
enhanced code, the way h11's ``test_connection.py`` does. The hypothesis tests that feed
the core garbage live next door in ``test_protocol_fuzz.py``.

The ``test_bug_*`` tests at the end pin bugs these tests found (and that were fixed):
they must keep passing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from appliance.mail.smtp.protocol import (
    AUTH_FAILED,
    CLOSED,
    NEED_DATA,
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

HOST = "box.example"
CLIENT = "client.example"

Decide = Callable[[ServerConnection, Event], None]
E = TypeVar("E", StartTLS, AuthAttempt, MailFrom, RcptTo, MessageData)


# ---------------------------------------------------------------------------------------
# The driver


def accept_all(conn: ServerConnection, event: Event) -> None:
    """Say yes to everything; StartTLS is answered by "wrapping the stream"."""
    if isinstance(event, StartTLS):
        conn.tls_started()
    else:
        conn.accept()


def rejecting(replies: dict[type, Reply]) -> Decide:
    """Reject events of the given types with the given reply; accept everything else."""

    def decide(conn: ServerConnection, event: Event) -> None:
        reply = replies.get(type(event))
        if reply is None:
            accept_all(conn, event)
        else:
            conn.reject(reply)

    return decide


def reply_lines(data: bytes) -> list[str]:
    """Split what the server sent into reply lines, checking the CRLF framing."""
    if not data:
        return []
    assert data.endswith(b"\r\n"), data
    return data.decode("utf-8").split("\r\n")[:-1]


class Client:
    """A scripted SMTP client driving one `ServerConnection` as the I/O layer would.

    It follows the loop in the core's module docstring: feed bytes, call
    ``next_event()`` until NEED_DATA or CLOSED, hand each event to ``decide``, and send
    (record) the outbox only when the core asks for more input or closes.
    """

    def __init__(
        self,
        *,
        tls_active: bool = False,
        decide: Decide = accept_all,
        **config: Any,
    ) -> None:
        self.conn = ServerConnection(SessionConfig(HOST, **config), tls_active=tls_active)
        self.decide = decide
        self.events: list[Event] = []
        #: Each element is one write to the socket.
        self.flushes: list[bytes] = []
        self.closed = False
        self.conn.greet()
        self.greeting = reply_lines(self.feed())

    def feed(self, *chunks: bytes) -> bytes:
        """Deliver each chunk in its own receive_data() call; return all bytes sent."""
        sent = bytearray(self._pump())
        for chunk in chunks:
            self.conn.receive_data(chunk)
            sent += self._pump()
        return bytes(sent)

    def _pump(self) -> bytes:
        sent = bytearray()
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is CLOSED:
                sent += self._flush()
                if event is CLOSED:
                    self.closed = True
                return bytes(sent)
            assert isinstance(event, StartTLS | AuthAttempt | MailFrom | RcptTo | MessageData)
            self.events.append(event)
            if isinstance(event, StartTLS):
                # RFC 3207 §4: the 220 must reach the client before the handshake.
                sent += self._flush()
            self.decide(self.conn, event)

    def _flush(self) -> bytes:
        out = self.conn.data_to_send()
        if out:
            self.flushes.append(out)
        return out

    def send(self, *lines: str | bytes) -> list[str]:
        """Send command lines pipelined in one write; return the reply lines."""
        data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\r\n" for x in lines)
        return reply_lines(self.feed(data))

    def ehlo(self) -> list[str]:
        return self.send(f"EHLO {CLIENT}")

    def start_mail(self, sender: str = "a@sender.example") -> None:
        """EHLO, MAIL and one RCPT, all accepted."""
        self.ehlo()
        assert self.send(f"MAIL FROM:<{sender}>", "RCPT TO:<b@rcpt.example>") == [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
        ]

    def of_type(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ehlo_reply(*, starttls: bool, auth: bool, size: int = 41943040) -> list[str]:
    keywords = [
        "PIPELINING",
        f"SIZE {size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "CHUNKING",
    ]
    if starttls:
        keywords.append("STARTTLS")
    if auth:
        keywords.append("AUTH PLAIN LOGIN")
    keywords.append("HELP")
    return [f"250-{HOST} greets {CLIENT}"] + [f"250-{k}" for k in keywords[:-1]] + ["250 HELP"]


TRANSACTION = (
    b"MAIL FROM:<a@sender.example>\r\n"
    b"RCPT TO:<b@rcpt.example>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\nhello\r\n.\r\n"
)
TRANSACTION_REPLIES = [
    "250 2.1.0 Sender OK",
    "250 2.1.5 Recipient OK",
    "354 Start mail input; end with <CRLF>.<CRLF>",
    "250 2.0.0 Message accepted",
]


def send_message(client: Client, body: bytes) -> list[str]:
    """Run MAIL/RCPT/DATA with ``body`` (already dot-stuffed, terminator included)."""
    return reply_lines(
        client.feed(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<b@rcpt.example>\r\nDATA\r\n" + body)
    )


# ---------------------------------------------------------------------------------------
# Greeting, EHLO, HELO (RFC 5321 §4.1.1.1, §4.3.1)


def test_greeting_is_220_with_hostname_and_sent_before_any_input() -> None:
    client = Client()
    assert client.greeting == ["220 box.example ESMTP edgebox"]
    assert client.conn.state is State.HELO


def test_refuse_sends_the_reply_instead_of_a_greeting_and_closes() -> None:
    conn = ServerConnection(SessionConfig(HOST))
    conn.refuse(Reply(421, "4.3.2", "Too many connections"))
    assert conn.next_event() is CLOSED
    assert conn.data_to_send() == b"421 Too many connections\r\n"


def test_ehlo_lists_every_extension_in_a_multiline_250() -> None:
    client = Client()
    assert client.ehlo() == [
        "250-box.example greets client.example",
        "250-PIPELINING",
        "250-SIZE 41943040",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-DSN",
        "250-CHUNKING",
        "250-STARTTLS",
        "250 HELP",
    ]
    assert client.conn.helo_name == CLIENT
    assert client.conn.extended


@pytest.mark.parametrize(
    ("starttls_available", "tls_active", "auth_offered", "starttls", "auth"),
    [
        pytest.param(True, False, True, True, False, id="plaintext: STARTTLS, no AUTH"),
        pytest.param(False, False, True, False, False, id="no TLS context: neither"),
        pytest.param(True, True, True, False, True, id="TLS active: AUTH, no STARTTLS"),
        pytest.param(False, True, True, False, True, id="implicit TLS: AUTH"),
        pytest.param(True, True, False, False, False, id="MX over TLS: no AUTH"),
    ],
)
def test_ehlo_offers_starttls_and_auth_only_when_they_can_be_used(
    starttls_available: bool, tls_active: bool, auth_offered: bool, starttls: bool, auth: bool
) -> None:
    client = Client(
        tls_active=tls_active, starttls_available=starttls_available, auth_offered=auth_offered
    )
    assert client.ehlo() == ehlo_reply(starttls=starttls, auth=auth)


def test_ehlo_size_keyword_follows_the_configured_limit() -> None:
    client = Client(max_message_size=1000)
    assert "250-SIZE 1000" in client.ehlo()


def test_helo_is_a_single_line_and_turns_off_enhanced_codes() -> None:
    client = Client()
    assert client.send(f"HELO {CLIENT}") == ["250 box.example"]
    assert client.send("MAIL FROM:<a@sender.example>") == ["250 Sender OK"]
    assert client.send("RCPT TO:<nobody>") == ["501 Bad address syntax"]
    assert client.send("BOGUS") == ["500 Command unrecognized"]


def test_helo_after_ehlo_also_turns_off_enhanced_codes() -> None:
    client = Client()
    client.ehlo()
    assert client.send("NOOP") == ["250 2.0.0 OK"]
    assert client.send(f"HELO {CLIENT}") == ["250 box.example"]
    assert client.send("NOOP") == ["250 OK"]


def test_policy_replies_lose_their_enhanced_code_in_a_helo_session() -> None:
    client = Client(decide=rejecting({RcptTo: Reply(550, "5.1.1", "User unknown")}))
    client.send(f"HELO {CLIENT}")
    assert client.send("MAIL FROM:<a@x.example>", "RCPT TO:<b@x.example>") == [
        "250 Sender OK",
        "550 User unknown",
    ]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
@pytest.mark.parametrize("arg", ["", "two words"])
def test_hello_without_a_single_domain_is_501(verb: str, arg: str) -> None:
    client = Client()
    assert client.send(f"{verb} {arg}".strip()) == ["501 Syntax: EHLO hostname"]
    assert client.conn.state is State.HELO


def test_verbs_are_case_insensitive() -> None:
    client = Client()
    assert client.send(f"ehlo {CLIENT}")[0] == f"250-{HOST} greets {CLIENT}"
    assert client.send("mail from:<a@x.example>", "Rcpt To:<b@x.example>") == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
    ]


def test_ehlo_mid_transaction_resets_it() -> None:
    client = Client()
    client.start_mail()
    client.ehlo()
    assert client.send("DATA") == ["503 5.5.1 Need MAIL command first"]
    assert client.send("MAIL FROM:<new@x.example>", "RCPT TO:<new@y.example>", "DATA") == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "354 Start mail input; end with <CRLF>.<CRLF>",
    ]
    client.feed(b".\r\n")
    (message,) = client.of_type(MessageData)
    assert message.reverse_path == "new@x.example"
    assert message.recipients == (RcptTo("new@y.example", {}),)


# ---------------------------------------------------------------------------------------
# PIPELINING (RFC 2920)


PIPELINED = (
    f"EHLO {CLIENT}\r\n".encode()
    + b"MAIL FROM:<a@sender.example>\r\n"
    + b"RCPT TO:<b@rcpt.example>\r\n"
    + b"RCPT TO:<c@rcpt.example>\r\n"
    + b"DATA\r\n"
    + b"hello\r\n.\r\n"
    + b"QUIT\r\n"
)


def test_pipelined_session_gets_all_replies_in_order_in_one_write() -> None:
    client = Client()
    client.feed(PIPELINED)
    assert len(client.flushes) == 2  # the greeting, then everything else at once
    assert reply_lines(client.flushes[1]) == [
        *ehlo_reply(starttls=True, auth=False),
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "354 Start mail input; end with <CRLF>.<CRLF>",
        "250 2.0.0 Message accepted",
        "221 2.0.0 Bye",
    ]
    assert [type(e) for e in client.events] == [MailFrom, RcptTo, RcptTo, MessageData]
    assert client.closed


def test_pipelined_core_does_not_read_past_a_pending_decision() -> None:
    # What data_to_send() holds each time a decision is asked for: the replies to the
    # commands before it, and nothing for the command being decided or any after it.
    queued: list[list[str]] = []

    def decide(conn: ServerConnection, event: Event) -> None:
        queued.append(reply_lines(conn.data_to_send()))
        accept_all(conn, event)

    client = Client(decide=decide)
    last = reply_lines(client.feed(PIPELINED))
    assert queued == [
        ehlo_reply(starttls=True, auth=False),
        ["250 2.1.0 Sender OK"],
        ["250 2.1.5 Recipient OK"],
        ["250 2.1.5 Recipient OK", "354 Start mail input; end with <CRLF>.<CRLF>"],
    ]
    assert last == ["250 2.0.0 Message accepted", "221 2.0.0 Bye"]


def test_nothing_is_queued_while_input_is_an_incomplete_line() -> None:
    client = Client()
    client.ehlo()
    assert client.feed(b"NOO") == b""
    assert client.feed(b"P\r") == b""
    assert client.feed(b"\n") == b"250 2.0.0 OK\r\n"


def test_bare_lf_ends_a_command_line() -> None:
    client = Client()
    assert reply_lines(client.feed(f"EHLO {CLIENT}\nNOOP\n".encode()))[-1] == "250 2.0.0 OK"


# ---------------------------------------------------------------------------------------
# Mail transaction and DATA (RFC 5321 §4.1.1.2–4.1.1.4, §4.5.2)


def test_full_transaction() -> None:
    client = Client()
    client.ehlo()
    assert reply_lines(client.feed(TRANSACTION)) == TRANSACTION_REPLIES
    mail, rcpt, message = client.events
    assert mail == MailFrom("a@sender.example", {})
    assert rcpt == RcptTo("b@rcpt.example", {})
    assert message == MessageData(b"Subject: hi\r\n\r\nhello\r\n", "a@sender.example", (rcpt,), {})
    assert client.conn.state is State.READY


def test_message_data_carries_every_accepted_recipient_and_the_mail_params() -> None:
    client = Client(decide=rejecting({}))
    client.ehlo()
    client.send(
        "MAIL FROM:<> BODY=8BITMIME",
        "RCPT TO:<b@x.example>",
        "RCPT TO:<c@x.example> NOTIFY=NEVER",
        "DATA",
        ".",
    )
    (message,) = client.of_type(MessageData)
    assert message.reverse_path == ""
    assert message.mail_params == {"BODY": "8BITMIME"}
    assert message.recipients == (
        RcptTo("b@x.example", {}),
        RcptTo("c@x.example", {"NOTIFY": "NEVER"}),
    )


def test_mail_from_is_the_accepted_mail_of_the_current_transaction() -> None:
    seen: list[MailFrom | None] = []

    def decide(conn: ServerConnection, event: Event) -> None:
        seen.append(conn.mail_from)
        conn.accept()

    client = Client(decide=decide)
    client.ehlo()
    client.feed(TRANSACTION)
    mail = MailFrom("a@sender.example", {})
    assert seen == [None, mail, mail]  # at MailFrom, RcptTo and MessageData
    assert client.conn.mail_from is None


def test_second_transaction_starts_clean() -> None:
    client = Client()
    client.ehlo()
    client.feed(TRANSACTION)
    assert reply_lines(client.feed(TRANSACTION)) == TRANSACTION_REPLIES
    _first, second = client.of_type(MessageData)
    assert second.recipients == (RcptTo("b@rcpt.example", {}),)


def test_source_route_is_dropped() -> None:
    client = Client()
    client.ehlo()
    client.send("MAIL FROM:<@relay.example:a@sender.example>")
    assert client.events == [MailFrom("a@sender.example", {})]


def test_space_after_the_colon_is_tolerated() -> None:
    client = Client()
    client.ehlo()
    assert client.send("MAIL FROM: <a@sender.example>") == ["250 2.1.0 Sender OK"]


@pytest.mark.parametrize(
    ("stuffed", "content"),
    [
        pytest.param(b"..x\r\n", b".x\r\n", id="leading dot removed"),
        pytest.param(b"..\r\n", b".\r\n", id="line of one dot"),
        pytest.param(b"...\r\n", b"..\r\n", id="only one dot removed"),
        pytest.param(b"a..b\r\n.. c\r\n", b"a..b\r\n. c\r\n", id="dots mid-line kept"),
        pytest.param(b"x\r\n..\r\n..\r\n", b"x\r\n.\r\n.\r\n", id="consecutive dot lines"),
    ],
)
def test_dot_unstuffing(stuffed: bytes, content: bytes) -> None:
    client = Client()
    client.ehlo()
    assert send_message(client, stuffed + b".\r\n")[-1] == "250 2.0.0 Message accepted"
    assert client.of_type(MessageData)[0].content == content


def test_empty_message() -> None:
    client = Client()
    client.ehlo()
    assert send_message(client, b".\r\n")[-1] == "250 2.0.0 Message accepted"
    assert client.of_type(MessageData)[0].content == b""


def test_whole_session_fed_byte_by_byte_gives_the_same_result() -> None:
    whole = Client()
    whole.feed(PIPELINED)
    dripped = Client()
    dripped.feed(*(PIPELINED[i : i + 1] for i in range(len(PIPELINED))))
    assert dripped.events == whole.events
    assert b"".join(dripped.flushes) == b"".join(whole.flushes)


def test_terminator_split_across_receive_data_calls() -> None:
    client = Client()
    client.start_mail()
    assert client.send("DATA") == ["354 Start mail input; end with <CRLF>.<CRLF>"]
    for byte in b"body\r\n.\r":
        assert client.feed(bytes([byte])) == b""
    assert client.feed(b"\n") == b"250 2.0.0 Message accepted\r\n"
    assert client.of_type(MessageData)[0].content == b"body\r\n"


@pytest.mark.parametrize(
    ("fake_end", "kept"),
    [
        pytest.param(b"\n.\n", b"\n.\n", id="LF.LF"),
        # A line that starts with "." has that dot removed as stuffing, even if a bare LF
        # follows it; the point is that the message does not end there.
        pytest.param(b"\r\n.\n", b"\r\n\n", id="CRLF.LF"),
        pytest.param(b"\n.\r\n", b"\n.\r\n", id="LF.CRLF"),
        pytest.param(b"\r.\r", b"\r.\r", id="CR.CR"),
        pytest.param(b"\r\n.\r", b"\r\n\r", id="CRLF.CR"),
    ],
)
def test_smtp_smuggling_only_crlf_dot_crlf_ends_data(fake_end: bytes, kept: bytes) -> None:
    # A second transaction hidden behind a lenient terminator must stay message content
    # (the 2023 "SMTP smuggling" attack).
    smuggled = (
        b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<b@rcpt.example>\r\nDATA\r\n"
        b"Subject: wire the money\r\n"
    )
    client = Client()
    client.ehlo()
    replies = send_message(client, b"Subject: hi\r\n\r\nhello" + fake_end + smuggled + b".\r\n")
    assert replies == [*TRANSACTION_REPLIES[:3], "250 2.0.0 Message accepted"]
    (message,) = client.of_type(MessageData)
    assert message.content == b"Subject: hi\r\n\r\nhello" + kept + smuggled
    assert len(client.of_type(MailFrom)) == 1


def test_bytes_after_the_terminator_are_the_next_command() -> None:
    client = Client()
    client.start_mail()
    client.send("DATA")
    assert reply_lines(client.feed(b"hi\r\n.\r\nNOOP\r\nMAIL FROM:<c@x.example>\r\n")) == [
        "250 2.0.0 Message accepted",
        "250 2.0.0 OK",
        "250 2.1.0 Sender OK",
    ]


def test_terminator_and_next_command_split_mid_line() -> None:
    client = Client()
    client.start_mail()
    client.send("DATA")
    assert client.feed(b"hi\r\n.\r\nNO") == b"250 2.0.0 Message accepted\r\n"
    assert client.feed(b"OP\r\n") == b"250 2.0.0 OK\r\n"


def test_content_is_not_read_as_commands() -> None:
    client = Client()
    client.start_mail()
    client.send("DATA")
    assert client.feed(b"QUIT\r\nRSET\r\n") == b""
    assert not client.closed
    assert client.feed(b".\r\n") == b"250 2.0.0 Message accepted\r\n"
    assert client.of_type(MessageData)[0].content == b"QUIT\r\nRSET\r\n"


# ---------------------------------------------------------------------------------------
# CHUNKING: BDAT (RFC 3030)


def test_bdat_last_delivers_the_octets_as_they_are() -> None:
    client = Client()
    client.start_mail()
    # No unstuffing and no terminator: a leading dot and a "CRLF.CRLF" are content.
    content = b".hidden\r\nline\r\n.\r\nmore"
    assert reply_lines(client.feed(b"BDAT %d LAST\r\n" % len(content) + content)) == [
        "250 2.0.0 Message accepted"
    ]
    message = client.of_type(MessageData)[0]
    assert message.content == content
    assert message.recipients == (RcptTo("b@rcpt.example", {}),)
    assert client.conn.state is State.READY


def test_bdat_chunks_are_joined_and_each_is_acknowledged() -> None:
    client = Client()
    client.start_mail()
    # Split anywhere, even inside the command line and inside a chunk.
    sent = client.feed(b"BDAT 6\r\nHel", b"lo ", b"BD", b"AT 5 LAST\r\nworld")
    assert reply_lines(sent) == ["250 2.0.0 6 octets received", "250 2.0.0 Message accepted"]
    assert [m.content for m in client.of_type(MessageData)] == [b"Hello world"]


def test_a_whole_pipelined_transaction_with_bdat_gets_its_replies_in_one_write() -> None:
    client = Client()
    client.ehlo()
    client.flushes.clear()
    client.feed(
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nBDAT 2 LAST\r\nhi"
        b"MAIL FROM:<c@x.example>\r\nRCPT TO:<d@x.example>\r\nBDAT 0 LAST\r\n"
    )
    assert [reply_lines(flush) for flush in client.flushes] == [
        ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "250 2.0.0 Message accepted"] * 2
    ]
    assert [m.content for m in client.of_type(MessageData)] == [b"hi", b""]


@pytest.mark.parametrize(
    ("before", "refusal"),
    [
        pytest.param([], "503 5.5.1 Need MAIL command first", id="no MAIL"),
        pytest.param(
            ["MAIL FROM:<a@x.example>"], "503 5.5.1 Need RCPT command first", id="no RCPT"
        ),
    ],
)
def test_a_refused_bdat_chunk_is_read_and_thrown_away(before: list[str], refusal: str) -> None:
    client = Client()
    client.ehlo()
    for line in before:
        client.send(line)
    # RFC 3030 §2: the chunk is consumed before the reply, so a command inside it is
    # never run (the "QUIT" here), and the command after it is.
    sent = client.feed(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert reply_lines(sent) == [refusal, "250 2.0.0 OK"]
    assert not client.closed
    assert client.of_type(MessageData) == []


def test_bdat_after_every_rcpt_was_refused_is_554() -> None:
    client = Client(decide=rejecting({RcptTo: Reply(550, "5.1.1", "User unknown")}))
    client.ehlo()
    sent = client.feed(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@x.example>\r\nBDAT 2 LAST\r\nhi")
    assert reply_lines(sent)[-1] == "554 5.5.1 No valid recipients"
    assert client.of_type(MessageData) == []


def test_data_and_bdat_do_not_mix_in_one_transaction() -> None:
    client = Client()
    client.start_mail()
    assert reply_lines(client.feed(b"BDAT 3\r\nabc")) == ["250 2.0.0 3 octets received"]
    assert client.send("DATA") == ["503 5.5.1 DATA not allowed after BDAT in one transaction"]
    # The transaction goes on with BDAT.
    assert reply_lines(client.feed(b"BDAT 1 LAST\r\nd")) == ["250 2.0.0 Message accepted"]
    assert client.of_type(MessageData)[0].content == b"abcd"


def test_rset_drops_the_chunks_received_so_far() -> None:
    client = Client()
    client.start_mail()
    client.feed(b"BDAT 3\r\nold")
    assert client.send("RSET") == ["250 2.0.0 Reset OK"]
    client.send("MAIL FROM:<a@x.example>", "RCPT TO:<b@x.example>")
    client.feed(b"BDAT 3 LAST\r\nnew")
    assert [m.content for m in client.of_type(MessageData)] == [b"new"]


def test_chunks_over_the_size_limit_fail_the_transaction_without_being_kept() -> None:
    client = Client(max_message_size=10)
    client.start_mail()
    sent = client.feed(b"BDAT 6\r\n123456", b"BDAT 6\r\n789012", b"BDAT 1 LAST\r\nx")
    # The chunk that passes the limit is refused and the transaction is over; the
    # chunk already pipelined behind it finds no MAIL (RFC 3030 §2).
    assert reply_lines(sent) == [
        "250 2.0.0 6 octets received",
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "503 5.5.1 Need MAIL command first",
    ]
    assert client.of_type(MessageData) == []
    assert client.conn.state is State.READY


@pytest.mark.parametrize("arg", ["", "x", "-1", "1.5", "10 FIRST", "10 LAST x", "๑๒", "9" * 21])
def test_a_bdat_without_a_readable_size_closes_the_session(arg: str) -> None:
    client = Client()
    client.start_mail()
    # Where the chunk ends cannot be known, and reading it as commands would let a
    # message smuggle commands in: refuse, then hang up.
    assert client.send(f"BDAT {arg}".rstrip(), "QUIT") == [
        "501 5.5.4 Syntax: BDAT chunk-size [LAST]",
        "421 4.5.0 Cannot find where that chunk ends, closing connection",
    ]
    assert client.closed


def test_a_rejected_bdat_message_ends_the_transaction() -> None:
    client = Client(decide=rejecting({MessageData: Reply(554, "5.7.1", "Virus found")}))
    client.start_mail()
    assert reply_lines(client.feed(b"BDAT 1 LAST\r\nx")) == ["554 5.7.1 Virus found"]
    assert client.send("MAIL FROM:<a@x.example>") == ["250 2.1.0 Sender OK"]


# ---------------------------------------------------------------------------------------
# 8BITMIME and SMTPUTF8 (RFC 6152, RFC 6531)

THAI_SENDER = "สมชาย@demo.go.th"
THAI_RECIPIENT = "สมหญิง@ตัวอย่าง.ไทย"


def test_thai_sender_accepted_with_smtputf8() -> None:
    client = Client()
    client.ehlo()
    assert client.send(f"MAIL FROM:<{THAI_SENDER}> SMTPUTF8 BODY=8BITMIME") == [
        "250 2.1.0 Sender OK"
    ]
    assert client.events == [MailFrom(THAI_SENDER, {"SMTPUTF8": None, "BODY": "8BITMIME"})]


def test_thai_sender_without_smtputf8_is_553() -> None:
    client = Client()
    client.ehlo()
    assert client.send(f"MAIL FROM:<{THAI_SENDER}>") == [
        "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
    ]
    assert client.events == []


def test_thai_recipient_needs_smtputf8_on_the_mail_command() -> None:
    client = Client()
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>", f"RCPT TO:<{THAI_RECIPIENT}>") == [
        "250 2.1.0 Sender OK",
        "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter",
    ]
    client.send("RSET")
    assert client.send("MAIL FROM:<a@x.example> SMTPUTF8", f"RCPT TO:<{THAI_RECIPIENT}>") == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
    ]
    assert client.events[-1] == RcptTo(THAI_RECIPIENT, {})


def test_utf8_and_8bit_content_preserved_byte_for_byte() -> None:
    body = "Subject: ประชุมวันจันทร์\r\n\r\nเรียน ทุกท่าน\r\n".encode() + b"\xff\x00\x80\r\n"
    client = Client()
    client.ehlo()
    client.send(f"MAIL FROM:<{THAI_SENDER}> SMTPUTF8 BODY=8BITMIME", "RCPT TO:<b@x.example>")
    client.send("DATA")
    assert client.feed(body + b".\r\n") == b"250 2.0.0 Message accepted\r\n"
    assert client.of_type(MessageData)[0].content == body


def test_non_utf8_command_line_is_501() -> None:
    client = Client()
    client.ehlo()
    assert client.send(b"MAIL FROM:<\xff@x.example>") == [
        "501 5.5.4 Syntax error in parameters or arguments"
    ]


# ---------------------------------------------------------------------------------------
# SIZE (RFC 1870)


def test_declared_size_over_the_limit_is_552_at_mail() -> None:
    client = Client()
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example> SIZE=41943041") == [
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ]
    assert client.send("MAIL FROM:<a@x.example> SIZE=41943040") == ["250 2.1.0 Sender OK"]
    assert client.events == [MailFrom("a@x.example", {"SIZE": "41943040"})]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "-1",
        "1e9",
        "1" * 21,
        # str.isdigit() is true for these; int() rejects the first three (it once crashed).
        "²",
        "①",
        "1²",
        "๑๒๓",
    ],
)
def test_malformed_size_is_501(value: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(f"MAIL FROM:<a@x.example> SIZE={value}".rstrip("=")) == [
        "501 5.5.4 Syntax error in parameters or arguments"
    ]


def test_message_at_the_limit_is_accepted_and_one_byte_more_is_552() -> None:
    client = Client(max_message_size=100)
    client.ehlo()
    exact = b"x" * 98 + b"\r\n"
    assert send_message(client, exact + b".\r\n")[-1] == "250 2.0.0 Message accepted"
    assert client.of_type(MessageData)[0].content == exact
    over = b"x" * 99 + b"\r\n"
    assert send_message(client, over + b".\r\n")[-1] == (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    )
    assert len(client.of_type(MessageData)) == 1


@pytest.mark.parametrize("split", [1, 2], ids=["after '.'", "after '.\\r'"])
def test_message_at_the_limit_accepted_however_the_terminator_is_split(split: int) -> None:
    # The buffer holds the virtual CRLF, the content and up to ".\r" of a terminator
    # still in flight; none of that may count against the limit.
    client = Client(max_message_size=100)
    client.start_mail()
    client.send("DATA")
    content = b"x" * 98 + b"\r\n"
    terminator = b".\r\n"
    assert client.feed(content, terminator[:split], terminator[split:]) == (
        b"250 2.0.0 Message accepted\r\n"
    )
    assert [e.content for e in client.of_type(MessageData)] == [content]


def test_message_one_over_the_limit_refused_however_the_terminator_is_split() -> None:
    for split in range(4):
        client = Client(max_message_size=100)
        client.start_mail()
        client.send("DATA")
        terminator = b".\r\n"
        pieces = [b"x" * 99 + b"\r\n", terminator[:split], terminator[split:]]
        out = client.feed(*(p for p in pieces if p))  # b"" would mean EOF
        assert out == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n", split


def test_oversized_body_is_552_after_the_terminator_with_bounded_memory() -> None:
    limit, chunk = 1000, 100
    client = Client(max_message_size=limit)
    client.start_mail()
    client.send("DATA")
    line = b"y" * (chunk - 2) + b"\r\n"
    for _ in range(3 * limit // chunk):
        assert client.feed(line) == b""
        # Only a tail long enough to spot the terminator is kept past the limit.
        assert len(client.conn._data) <= limit + 16
    assert client.feed(b".\r\n") == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    )
    assert client.of_type(MessageData) == []
    assert client.conn.state is State.READY
    # The session goes on: a new transaction of a sensible size goes through.
    assert send_message(client, b"small\r\n.\r\n") == TRANSACTION_REPLIES
    assert client.of_type(MessageData)[0].content == b"small\r\n"


def test_oversized_body_in_one_chunk_is_552_and_pipelined_command_still_runs() -> None:
    client = Client(max_message_size=50)
    client.start_mail()
    client.send("DATA")
    assert reply_lines(client.feed(b"z" * 200 + b"\r\n.\r\nNOOP\r\n")) == [
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "250 2.0.0 OK",
    ]


# ---------------------------------------------------------------------------------------
# DSN (RFC 3461)


def test_dsn_mail_parameters_accepted() -> None:
    client = Client()
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example> RET=HDRS ENVID=xyz") == ["250 2.1.0 Sender OK"]
    assert client.events == [MailFrom("a@x.example", {"RET": "HDRS", "ENVID": "xyz"})]


def test_dsn_rcpt_parameters_accepted() -> None:
    client = Client()
    client.ehlo()
    client.send("MAIL FROM:<a@x.example>")
    assert client.send("RCPT TO:<b@x.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b") == [
        "250 2.1.5 Recipient OK"
    ]
    assert client.events[-1] == RcptTo(
        "b@x.example", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a@b"}
    )


@pytest.mark.parametrize(
    "params",
    [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SOMETIMES",
        "NOTIFY=",
        "NOTIFY",
        "NOTIFY=SUCCESS,",
        "ORCPT=rfc822",
        "ORCPT=;a@b",
        "ORCPT=rfc822;",
    ],
)
def test_bad_dsn_rcpt_parameter_is_501(params: str) -> None:
    client = Client()
    client.ehlo()
    client.send("MAIL FROM:<a@x.example>")
    assert client.send(f"RCPT TO:<b@x.example> {params}") == [
        "501 5.5.4 Syntax error in parameters or arguments"
    ]


@pytest.mark.parametrize(
    "params", ["RET=ALL", "RET", "ENVID=a=b", "ENVID=" + "x" * 101, "BODY=BINARYMIME", "SMTPUTF8=1"]
)
def test_bad_mail_parameter_value_is_501(params: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(f"MAIL FROM:<a@x.example> {params}") == [
        "501 5.5.4 Syntax error in parameters or arguments"
    ]


@pytest.mark.parametrize(
    ("command", "param"),
    [("MAIL FROM:<a@x.example>", "FOO=bar"), ("MAIL FROM:<a@x.example>", "NOTIFY=NEVER")],
)
def test_unknown_mail_parameter_is_555(command: str, param: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(f"{command} {param}") == ["555 5.5.4 Unsupported parameter"]


def test_unknown_rcpt_parameter_is_555() -> None:
    client = Client()
    client.ehlo()
    client.send("MAIL FROM:<a@x.example>")
    assert client.send("RCPT TO:<b@x.example> RET=FULL") == ["555 5.5.4 Unsupported parameter"]


# ---------------------------------------------------------------------------------------
# Errors


def test_unknown_command_is_500() -> None:
    client = Client()
    client.ehlo()
    assert client.send("TURN") == ["500 5.5.2 Command unrecognized"]
    assert client.send("") == ["500 5.5.2 Command unrecognized"]


def test_line_over_max_command_line_is_500_and_session_continues() -> None:
    client = Client()
    client.ehlo()
    limit = client.conn.config.max_command_line
    longest = "NOOP " + "x" * (limit - len("NOOP ") - 2)  # CRLF makes it exactly the limit
    assert client.send(longest) == ["250 2.0.0 OK"]
    assert client.send(longest + "x", "NOOP") == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_long_line_arriving_in_pieces_is_refused_once_and_skipped_to_its_end() -> None:
    client = Client(max_command_line=64)
    client.ehlo()
    # No newline yet, already too long: refused at once, without buffering the rest.
    assert reply_lines(client.feed(b"MAIL FROM:<" + b"a" * 100)) == ["500 5.5.2 Line too long"]
    assert client.feed(b"b" * 100) == b""
    assert len(client.conn._in) <= 64
    assert reply_lines(client.feed(b"@x.example>\r\nNOOP\r\n")) == ["250 2.0.0 OK"]
    assert client.events == []


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        pytest.param(
            "MAIL FROM:a@x.example",
            "501 5.5.4 Syntax error in parameters or arguments",
            id="no angle brackets",
        ),
        pytest.param(
            "MAIL FROM:<a@x.example",
            "501 5.5.4 Syntax error in parameters or arguments",
            id="unclosed bracket",
        ),
        pytest.param(
            "MAIL TO:<a@x.example>",
            "501 5.5.4 Syntax error in parameters or arguments",
            id="wrong keyword",
        ),
        pytest.param(
            "MAIL FROM:<a@x.example> =x",
            "501 5.5.4 Syntax error in parameters or arguments",
            id="bad parameter keyword",
        ),
        pytest.param("MAIL FROM:<no-at-sign>", "501 5.1.7 Bad address syntax", id="no @"),
        pytest.param("MAIL FROM:<a@>", "501 5.1.7 Bad address syntax", id="no domain"),
        pytest.param("MAIL FROM:<@x.example>", "250 2.1.0 Sender OK", id="empty source route"),
        pytest.param("MAIL FROM:<a b@x.example>", "501 5.1.7 Bad address syntax", id="space"),
        pytest.param("MAIL FROM:<a@x..example>", "501 5.1.7 Bad address syntax", id="empty label"),
        pytest.param("MAIL FROM:<a\x01@x.example>", "501 5.1.7 Bad address syntax", id="control"),
        pytest.param('MAIL FROM:<"a b"@x.example>', "250 2.1.0 Sender OK", id="quoted local"),
        pytest.param("MAIL FROM:<a@[192.0.2.1]>", "250 2.1.0 Sender OK", id="address literal"),
    ],
)
def test_mail_from_syntax(command: str, reply: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(command) == [reply]


def test_rcpt_to_null_path_is_bad_address() -> None:
    client = Client()
    client.ehlo()
    client.send("MAIL FROM:<a@x.example>")
    assert client.send("RCPT TO:<>") == ["501 5.1.7 Bad address syntax"]


def test_mail_before_ehlo_is_503_without_enhanced_code() -> None:
    # RFC 2034 §3: enhanced codes only once EHLO has negotiated them.
    client = Client()
    assert client.send("MAIL FROM:<a@x.example>") == ["503 Send EHLO or HELO first"]
    assert client.send("RCPT TO:<a@x.example>") == ["503 Send EHLO or HELO first"]
    assert client.send("DATA") == ["503 Send EHLO or HELO first"]


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        pytest.param(
            ["RCPT TO:<b@x.example>"], "503 5.5.1 Need MAIL command first", id="RCPT before MAIL"
        ),
        pytest.param(["DATA"], "503 5.5.1 Need MAIL command first", id="DATA before MAIL"),
        pytest.param(
            ["MAIL FROM:<a@x.example>", "DATA"],
            "503 5.5.1 Need RCPT command first",
            id="DATA before RCPT",
        ),
        pytest.param(
            ["MAIL FROM:<a@x.example>", "MAIL FROM:<a@x.example>"],
            "503 5.5.1 Sender already specified",
            id="nested MAIL",
        ),
        pytest.param(
            ["MAIL FROM:<a@x.example>", "RCPT TO:<b@x.example>", "MAIL FROM:<a@x.example>"],
            "503 5.5.1 Sender already specified",
            id="MAIL after RCPT",
        ),
        pytest.param(
            ["MAIL FROM:<a@x.example>", "RCPT TO:<b@x.example>", "DATA x"],
            "501 5.5.4 Syntax: DATA (no parameters)",
            id="DATA with argument",
        ),
    ],
)
def test_out_of_order_commands(commands: list[str], reply: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(*commands)[-1] == reply


def test_rcpt_rejected_by_policy_goes_out_verbatim() -> None:
    client = Client(decide=rejecting({RcptTo: Reply(550, "5.1.1", "User unknown")}))
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>", "RCPT TO:<nobody@x.example>") == [
        "250 2.1.0 Sender OK",
        "550 5.1.1 User unknown",
    ]
    assert client.conn.state is State.MAIL


def test_multiline_policy_reply() -> None:
    client = Client(decide=rejecting({MailFrom: Reply(550, "5.7.1", ("Rejected", "See docs"))}))
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>") == [
        "550-5.7.1 Rejected",
        "550 5.7.1 See docs",
    ]
    assert client.conn.state is State.READY


def test_data_after_all_rcpts_rejected_is_554() -> None:
    client = Client(decide=rejecting({RcptTo: Reply(550, "5.1.1", "User unknown")}))
    client.ehlo()
    assert client.send(
        "MAIL FROM:<a@x.example>", "RCPT TO:<b@x.example>", "RCPT TO:<c@x.example>", "DATA"
    ) == [
        "250 2.1.0 Sender OK",
        "550 5.1.1 User unknown",
        "550 5.1.1 User unknown",
        "554 5.5.1 No valid recipients",
    ]


def test_data_after_some_rcpts_rejected_goes_ahead_with_the_accepted_ones() -> None:
    def decide(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, RcptTo) and event.forward_path.startswith("bad"):
            conn.reject(Reply(550, "5.1.1", "User unknown"))
        else:
            conn.accept()

    client = Client(decide=decide)
    client.ehlo()
    client.send("MAIL FROM:<a@x.example>", "RCPT TO:<bad@x.example>", "RCPT TO:<ok@x.example>")
    assert client.send("DATA") == ["354 Start mail input; end with <CRLF>.<CRLF>"]
    client.feed(b".\r\n")
    assert client.of_type(MessageData)[0].recipients == (RcptTo("ok@x.example", {}),)


def test_too_many_recipients_is_452() -> None:
    client = Client(max_recipients=2)
    client.ehlo()
    assert client.send(
        "MAIL FROM:<a@x.example>",
        "RCPT TO:<b@x.example>",
        "RCPT TO:<c@x.example>",
        "RCPT TO:<d@x.example>",
    ) == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "452 4.5.3 Too many recipients",
    ]
    assert len(client.of_type(RcptTo)) == 2
    client.send("DATA")
    client.feed(b".\r\n")
    assert len(client.of_type(MessageData)[0].recipients) == 2


def test_too_many_errors_is_421_and_closes() -> None:
    client = Client(max_errors=3)
    client.ehlo()
    assert client.send("BOGUS", "BOGUS") == ["500 5.5.2 Command unrecognized"] * 2
    assert not client.closed
    assert client.send("BOGUS", "NOOP") == [
        "500 5.5.2 Command unrecognized",
        "421 4.7.0 Too many errors, closing connection",
    ]
    assert client.closed
    assert client.conn.next_event() is CLOSED


def test_temporary_failures_do_not_count_toward_the_error_budget() -> None:
    # A client with many recipients retries the 452s later; it is not misbehaving.
    client = Client(max_errors=2, max_recipients=1)
    client.ehlo()
    rcpts = [f"RCPT TO:<r{i}@x.example>" for i in range(5)]
    assert client.send("MAIL FROM:<a@x.example>", *rcpts) == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        *["452 4.5.3 Too many recipients"] * 4,
    ]
    assert not client.closed
    assert client.conn.errors == 0


def test_policy_rejections_count_toward_the_error_budget() -> None:
    client = Client(max_errors=2, decide=rejecting({AuthAttempt: AUTH_FAILED}), tls_active=True)
    client.ehlo()
    client.send("AUTH PLAIN " + b64("\0alice\0wrong"))
    assert client.send("AUTH PLAIN " + b64("\0alice\0wrong2")) == [
        "535 5.7.8 Authentication credentials invalid",
        "421 4.7.0 Too many errors, closing connection",
    ]
    assert client.closed


def test_message_rejected_by_policy_with_452_goes_out_verbatim_and_session_continues() -> None:
    client = Client(decide=rejecting({MessageData: Reply(452, "4.2.2", "Mailbox full")}))
    client.ehlo()
    assert send_message(client, b"hi\r\n.\r\n")[-1] == "452 4.2.2 Mailbox full"
    assert client.conn.state is State.READY
    assert client.send("RCPT TO:<b@x.example>") == ["503 5.5.1 Need MAIL command first"]


def test_message_rejected_by_policy_with_552_goes_out_verbatim() -> None:
    client = Client(decide=rejecting({MessageData: Reply(552, "5.2.2", "Mailbox full")}))
    client.ehlo()
    assert send_message(client, b"hi\r\n.\r\n")[-1] == "552 5.2.2 Mailbox full"
    assert client.send("MAIL FROM:<a@x.example>") == ["250 2.1.0 Sender OK"]


def test_accept_with_the_servers_own_reply() -> None:
    def decide(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, MessageData):
            conn.accept(Reply(250, "2.0.0", "Queued as 4Xf9"))
        else:
            conn.accept()

    client = Client(decide=decide)
    client.ehlo()
    assert send_message(client, b".\r\n")[-1] == "250 2.0.0 Queued as 4Xf9"


def test_timeout_close_is_421() -> None:
    client = Client()
    client.ehlo()
    client.conn.close(TIMEOUT)
    assert reply_lines(client.feed()) == ["421 4.4.2 Timeout exceeded, closing connection"]
    assert client.closed


def test_close_while_a_decision_is_pending() -> None:
    conn = ServerConnection(SessionConfig(HOST))
    conn.greet()
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.close(TIMEOUT)
    assert conn.next_event() is CLOSED
    assert conn.data_to_send().endswith(b"421 4.4.2 Timeout exceeded, closing connection\r\n")
    with pytest.raises(RuntimeError):
        conn.accept()


# ---------------------------------------------------------------------------------------
# STARTTLS (RFC 3207)


def test_starttls_is_220_and_a_starttls_event() -> None:
    client = Client()
    client.ehlo()
    assert client.send("STARTTLS") == ["220 2.0.0 Ready to start TLS"]
    assert client.events == [StartTLS()]
    assert client.conn.tls_active


def test_starttls_220_is_flushed_before_the_handshake() -> None:
    flushed_before: list[bytes] = []

    def decide(conn: ServerConnection, event: Event) -> None:
        flushed_before.append(client.flushes[-1])
        accept_all(conn, event)

    client = Client(decide=decide)
    client.ehlo()
    client.send("STARTTLS")
    assert flushed_before == [b"220 2.0.0 Ready to start TLS\r\n"]


def test_bytes_pipelined_after_starttls_are_discarded() -> None:
    # The 2011 STARTTLS command injection: plaintext sent with STARTTLS must not be
    # executed as if it had come over TLS.
    client = Client()
    client.ehlo()
    out = client.send("STARTTLS", "MAIL FROM:<attacker@x.example>", "RCPT TO:<b@x.example>")
    assert out == ["220 2.0.0 Ready to start TLS"]
    assert client.events == [StartTLS()]
    assert client.conn._in == b""
    # Over TLS the client starts again, and there is no transaction to continue.
    assert client.send("RCPT TO:<b@x.example>") == ["503 Send EHLO or HELO first"]


def test_tls_started_resets_the_session_to_helo() -> None:
    client = Client()
    client.ehlo()
    client.send("STARTTLS")
    assert client.conn.state is State.HELO
    assert client.conn.helo_name is None
    assert not client.conn.extended
    assert client.send("MAIL FROM:<a@x.example>") == ["503 Send EHLO or HELO first"]
    assert client.ehlo() == ehlo_reply(starttls=False, auth=True)
    assert client.send("MAIL FROM:<a@x.example>") == ["250 2.1.0 Sender OK"]


def test_starttls_when_already_tls_is_503() -> None:
    client = Client(tls_active=True)
    client.ehlo()
    assert client.send("STARTTLS") == ["503 5.5.1 TLS already active"]
    assert client.events == []


def test_second_starttls_after_upgrade_is_503() -> None:
    client = Client()
    client.ehlo()
    client.send("STARTTLS")
    client.ehlo()
    assert client.send("STARTTLS") == ["503 5.5.1 TLS already active"]


def test_starttls_unavailable_is_454() -> None:
    client = Client(starttls_available=False)
    client.ehlo()
    assert client.send("STARTTLS") == ["454 4.7.0 TLS not available"]
    assert client.events == []


@pytest.mark.parametrize(
    ("commands", "reply"),
    [
        pytest.param([], "503 Send EHLO or HELO first", id="before EHLO"),
        pytest.param(
            [f"EHLO {CLIENT}", "MAIL FROM:<a@x.example>"],
            "503 5.5.1 Bad sequence of commands",
            id="in a transaction",
        ),
        pytest.param([f"EHLO {CLIENT}"], None, id="after EHLO"),
    ],
)
def test_starttls_only_between_ehlo_and_mail(commands: list[str], reply: str | None) -> None:
    client = Client()
    out = client.send(*commands, "STARTTLS")
    if reply is None:
        assert out[-1] == "220 2.0.0 Ready to start TLS"
    else:
        assert out[-1] == reply
        assert client.of_type(StartTLS) == []


def test_starttls_with_an_argument_is_501() -> None:
    client = Client()
    client.ehlo()
    assert client.send("STARTTLS now") == ["501 5.5.4 Syntax: STARTTLS (no parameters)"]


# ---------------------------------------------------------------------------------------
# AUTH (RFC 4954, RFC 4616, LOGIN)


def tls_client(**kwargs: Any) -> Client:
    client = Client(tls_active=True, **kwargs)
    client.ehlo()
    return client


def test_auth_before_tls_is_538() -> None:
    client = Client()
    client.ehlo()
    assert client.send("AUTH PLAIN " + b64("\0alice\0secret")) == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]
    assert client.events == []


def test_auth_when_not_offered_is_502() -> None:
    client = tls_client(auth_offered=False)
    assert client.send("AUTH PLAIN " + b64("\0alice\0secret")) == [
        "502 5.5.1 Command not implemented"
    ]


def test_auth_before_ehlo_is_503() -> None:
    client = Client(tls_active=True)
    assert client.send("AUTH PLAIN " + b64("\0alice\0secret")) == ["503 Send EHLO or HELO first"]


@pytest.mark.parametrize(
    ("decoded", "authzid"),
    [
        pytest.param("\0alice\0secret", "", id="no authzid"),
        pytest.param("shared\0alice\0secret", "shared", id="with authzid"),
    ],
)
def test_auth_plain_with_initial_response(decoded: str, authzid: str) -> None:
    client = tls_client()
    assert client.send("AUTH PLAIN " + b64(decoded)) == ["235 2.7.0 Authentication successful"]
    assert client.events == [AuthAttempt("PLAIN", authzid, "alice", "secret")]
    assert client.conn.authenticated_as == (authzid or "alice")
    assert client.conn.state is State.READY


def test_auth_plain_without_initial_response() -> None:
    client = tls_client()
    assert client.send("AUTH PLAIN") == ["334 "]
    assert client.conn.state is State.AUTH
    assert client.send(b64("\0alice\0secret")) == ["235 2.7.0 Authentication successful"]
    assert client.events == [AuthAttempt("PLAIN", "", "alice", "secret")]


def test_auth_mechanism_is_case_insensitive() -> None:
    client = tls_client()
    assert client.send("auth plain " + b64("\0alice\0secret")) == [
        "235 2.7.0 Authentication successful"
    ]


def test_auth_login() -> None:
    client = tls_client()
    assert client.send("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
    assert client.send(b64("alice")) == ["334 UGFzc3dvcmQ6"]
    assert client.events == []
    assert client.send(b64("secret")) == ["235 2.7.0 Authentication successful"]
    assert client.events == [AuthAttempt("LOGIN", "", "alice", "secret")]
    assert client.conn.authenticated_as == "alice"


def test_auth_login_with_initial_username() -> None:
    client = tls_client()
    assert client.send("AUTH LOGIN " + b64("alice")) == ["334 UGFzc3dvcmQ6"]
    assert client.send(b64("secret")) == ["235 2.7.0 Authentication successful"]
    assert client.events == [AuthAttempt("LOGIN", "", "alice", "secret")]


def test_auth_exchange_pipelined_in_one_write() -> None:
    client = tls_client()
    assert client.send("AUTH LOGIN", b64("alice"), b64("secret"), "MAIL FROM:<a@x.example>") == [
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
        "250 2.1.0 Sender OK",
    ]


@pytest.mark.parametrize(
    "exchange",
    [
        pytest.param(["AUTH PLAIN", "*"], id="PLAIN"),
        pytest.param(["AUTH LOGIN", "*"], id="LOGIN username"),
        pytest.param(["AUTH LOGIN", b64("alice"), "*"], id="LOGIN password"),
    ],
)
def test_auth_cancelled_with_star_is_501(exchange: list[str]) -> None:
    client = tls_client()
    assert client.send(*exchange)[-1] == "501 5.7.0 Authentication cancelled"
    assert client.events == []
    assert client.conn.state is State.READY
    assert client.send("NOOP") == ["250 2.0.0 OK"]


@pytest.mark.parametrize(
    "exchange",
    [
        pytest.param(["AUTH PLAIN !!!"], id="PLAIN initial response"),
        pytest.param(["AUTH PLAIN", "not base64"], id="PLAIN response"),
        pytest.param(["AUTH LOGIN", "YWxpY2U"], id="missing padding"),
        pytest.param(["AUTH PLAIN", "//79"], id="not UTF-8"),
    ],
)
def test_auth_bad_base64_is_501(exchange: list[str]) -> None:
    client = tls_client()
    assert client.send(*exchange)[-1] == "501 5.5.2 Cannot decode response"
    assert client.conn.state is State.READY


@pytest.mark.parametrize("decoded", ["alice\0secret", "\0\0secret", "a\0b\0c\0d", ""], ids=repr)
def test_auth_plain_malformed_response_is_501(decoded: str) -> None:
    client = tls_client()
    arg = b64(decoded) or "="
    assert client.send(f"AUTH PLAIN {arg}") == ["501 5.5.2 Malformed PLAIN response"]
    assert client.events == []


@pytest.mark.parametrize(
    "exchange",
    [
        pytest.param(["AUTH PLAIN ก"], id="initial response"),
        pytest.param(["AUTH PLAIN", "ก"], id="PLAIN response"),
        pytest.param(["AUTH LOGIN", "é"], id="LOGIN username"),
        pytest.param(["AUTH LOGIN", b64("alice"), "ลับ"], id="LOGIN password"),
    ],
)
def test_auth_non_ascii_response_is_501(exchange: list[str]) -> None:
    # base64 of a non-ASCII str raises ValueError, not binascii.Error (it once crashed).
    client = tls_client()
    assert client.send(*exchange)[-1] == "501 5.5.2 Cannot decode response"
    assert client.conn.state is State.READY
    assert client.events == []


def test_auth_unknown_mechanism_is_504() -> None:
    client = tls_client()
    assert client.send("AUTH CRAM-MD5") == ["504 5.5.4 Unrecognized authentication mechanism"]
    assert client.conn.state is State.READY


def test_auth_rejected_is_535_and_may_be_retried() -> None:
    attempts = iter([False, True])

    def decide(conn: ServerConnection, event: Event) -> None:
        if isinstance(event, AuthAttempt) and not next(attempts):
            conn.reject(AUTH_FAILED)
        else:
            conn.accept()

    client = tls_client(decide=decide)
    assert client.send("AUTH PLAIN " + b64("\0alice\0wrong")) == [
        "535 5.7.8 Authentication credentials invalid"
    ]
    assert client.conn.authenticated_as is None
    assert client.conn.state is State.READY
    assert client.send("AUTH PLAIN " + b64("\0alice\0secret")) == [
        "235 2.7.0 Authentication successful"
    ]


def test_auth_accept_with_the_servers_canonical_identity() -> None:
    def decide(conn: ServerConnection, event: Event) -> None:
        conn.accept(identity="alice@box.example")

    client = tls_client(decide=decide)
    assert client.send("AUTH PLAIN " + b64("Alice\0ALICE\0secret")) == [
        "235 2.7.0 Authentication successful"
    ]
    assert client.conn.authenticated_as == "alice@box.example"


def test_auth_twice_is_503() -> None:
    client = tls_client()
    client.send("AUTH PLAIN " + b64("\0alice\0secret"))
    assert client.send("AUTH PLAIN " + b64("\0bob\0secret")) == ["503 5.5.1 Already authenticated"]
    assert client.conn.authenticated_as == "alice"


def test_auth_during_a_transaction_is_503() -> None:
    client = tls_client()
    client.send("MAIL FROM:<a@x.example>")
    assert client.send("AUTH PLAIN " + b64("\0alice\0secret")) == [
        "503 5.5.1 Bad sequence of commands"
    ]
    assert client.of_type(AuthAttempt) == []


def test_password_never_appears_in_the_event_repr() -> None:
    client = tls_client()
    client.send("AUTH PLAIN " + b64("\0alice\0hunter2-ลับ"))
    (attempt,) = client.of_type(AuthAttempt)
    assert attempt.password == "hunter2-ลับ"
    assert "hunter2" not in repr(attempt)
    assert "alice" in repr(attempt)


def test_message_content_never_appears_in_the_event_repr() -> None:
    client = Client()
    client.ehlo()
    send_message(client, b"top secret\r\n.\r\n")
    assert "top secret" not in repr(client.of_type(MessageData)[0])


def test_over_long_auth_line_is_500_5_5_6() -> None:
    client = tls_client(max_auth_line=100)
    client.send("AUTH PLAIN")
    assert client.send("A" * 100, "NOOP") == [
        "500 5.5.6 Authentication exchange line is too long",
        "250 2.0.0 OK",
    ]
    assert client.conn.state is State.READY


def test_over_long_auth_line_arriving_in_pieces() -> None:
    client = tls_client(max_auth_line=100)
    client.send("AUTH LOGIN")
    assert reply_lines(client.feed(b"A" * 150)) == [
        "500 5.5.6 Authentication exchange line is too long"
    ]
    assert reply_lines(client.feed(b"A" * 150 + b"\r\nNOOP\r\n")) == ["250 2.0.0 OK"]


def test_auth_line_may_be_longer_than_a_command_line() -> None:
    client = tls_client(max_command_line=64)
    client.send("AUTH PLAIN")
    password = "p" * 200
    assert client.send(b64(f"\0alice\0{password}")) == ["235 2.7.0 Authentication successful"]
    assert client.of_type(AuthAttempt)[0].password == password


# ---------------------------------------------------------------------------------------
# Submission and MX policies (RFC 6409 §4.3, RFC 3207 §4)


def test_require_auth_on_tls_is_530_authentication_required() -> None:
    client = tls_client(require_auth=True)
    assert client.send("MAIL FROM:<a@x.example>") == ["530 5.7.0 Authentication required"]
    client.send("AUTH PLAIN " + b64("\0alice\0secret"))
    assert client.send("MAIL FROM:<a@x.example>") == ["250 2.1.0 Sender OK"]


def test_require_auth_on_plaintext_asks_for_starttls() -> None:
    client = Client(require_auth=True)
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>") == [
        "530 5.7.0 Must issue a STARTTLS command first"
    ]


def test_require_tls_on_mx() -> None:
    client = Client(require_tls=True, auth_offered=False)
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>") == [
        "530 5.7.0 Must issue a STARTTLS command first"
    ]
    client.send("STARTTLS")
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>") == ["250 2.1.0 Sender OK"]


# ---------------------------------------------------------------------------------------
# RSET, NOOP, HELP, VRFY, EXPN, QUIT, EOF (RFC 5321 §4.1.1.5–4.1.1.10)


def test_rset_ends_the_transaction() -> None:
    client = Client()
    client.start_mail()
    assert client.send("RSET") == ["250 2.0.0 Reset OK"]
    assert client.conn.state is State.READY
    assert client.send("DATA") == ["503 5.5.1 Need MAIL command first"]
    assert client.send("MAIL FROM:<c@x.example>") == ["250 2.1.0 Sender OK"]


def test_rset_before_ehlo_stays_before_ehlo() -> None:
    client = Client()
    assert client.send("RSET") == ["250 Reset OK"]
    assert client.send("MAIL FROM:<a@x.example>") == ["503 Send EHLO or HELO first"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("NOOP", "250 2.0.0 OK"),
        ("NOOP anything", "250 2.0.0 OK"),
        ("HELP", "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321"),
        (
            "VRFY postmaster",
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        ),
        ("VRFY", "501 5.5.4 Syntax error in parameters or arguments"),
        ("EXPN staff", "502 5.5.1 Command not implemented"),
    ],
)
def test_simple_commands(command: str, reply: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(command) == [reply]
    assert client.events == []


def test_simple_commands_keep_the_transaction() -> None:
    client = Client()
    client.start_mail()
    assert client.send("NOOP", "HELP", "VRFY x", "DATA") == [
        "250 2.0.0 OK",
        "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321",
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        "354 Start mail input; end with <CRLF>.<CRLF>",
    ]


@pytest.mark.parametrize("command", ["NOOP", "HELP", "VRFY x", "RSET"])
def test_allowed_before_ehlo(command: str) -> None:
    client = Client()
    assert client.send(command)[0][:3] in {"250", "214", "252"}


def test_quit_is_221_then_closed_and_later_input_ignored() -> None:
    client = Client()
    client.ehlo()
    assert client.send("QUIT", "NOOP") == ["221 2.0.0 Bye"]
    assert client.closed
    client.conn.receive_data(b"NOOP\r\n")
    assert client.conn.next_event() is CLOSED
    assert client.conn.data_to_send() == b""


def test_quit_mid_transaction() -> None:
    client = Client()
    client.start_mail()
    assert client.send("QUIT") == ["221 2.0.0 Bye"]
    assert client.closed


def test_eof_between_commands_closes() -> None:
    client = Client()
    client.ehlo()
    assert client.feed(b"NOOP\r\n", b"") == b"250 2.0.0 OK\r\n"
    assert client.closed


def test_eof_mid_data_closes_without_a_message() -> None:
    client = Client()
    client.start_mail()
    client.send("DATA")
    assert client.feed(b"half a message\r\n.", b"") == b""
    assert client.closed
    assert client.of_type(MessageData) == []
    assert client.conn._mail is None


def test_eof_after_a_complete_message_still_delivers_it() -> None:
    client = Client()
    client.start_mail()
    client.send("DATA")
    assert client.feed(b"all of it\r\n.\r\n" + b"") == b"250 2.0.0 Message accepted\r\n"
    client.feed(b"")
    assert client.closed
    assert client.of_type(MessageData)[0].content == b"all of it\r\n"


def test_eof_during_auth_closes() -> None:
    client = tls_client()
    client.send("AUTH LOGIN")
    client.feed(b"")
    assert client.closed
    assert client.events == []


# ---------------------------------------------------------------------------------------
# API misuse by the I/O layer


@pytest.fixture
def pending() -> ServerConnection:
    """A connection with an unanswered MailFrom."""
    conn = ServerConnection(SessionConfig(HOST))
    conn.greet()
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    return conn


def test_next_event_with_a_pending_decision_raises(pending: ServerConnection) -> None:
    with pytest.raises(RuntimeError, match="MailFrom"):
        pending.next_event()


def test_accept_with_nothing_pending_raises(pending: ServerConnection) -> None:
    pending.accept()
    with pytest.raises(RuntimeError, match="no event"):
        pending.accept()


def test_reject_with_nothing_pending_raises() -> None:
    conn = ServerConnection(SessionConfig(HOST))
    conn.greet()
    with pytest.raises(RuntimeError, match="no event"):
        conn.reject(AUTH_FAILED)


def test_next_event_before_greet_raises() -> None:
    conn = ServerConnection(SessionConfig(HOST))
    with pytest.raises(RuntimeError, match="greet"):
        conn.next_event()


def test_greet_twice_raises() -> None:
    conn = ServerConnection(SessionConfig(HOST))
    conn.greet()
    with pytest.raises(RuntimeError):
        conn.greet()


def test_tls_started_without_starttls_raises(pending: ServerConnection) -> None:
    with pytest.raises(RuntimeError, match="StartTLS"):
        pending.tls_started()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(ServerConnection.accept, id="accept"),
        pytest.param(lambda conn: conn.reject(AUTH_FAILED), id="reject"),
    ],
)
def test_starttls_cannot_be_accepted_or_rejected(
    answer: Callable[[ServerConnection], None],
) -> None:
    conn = ServerConnection(SessionConfig(HOST))
    conn.greet()
    conn.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert conn.next_event() == StartTLS()
    with pytest.raises(RuntimeError, match="StartTLS"):
        answer(conn)


# ---------------------------------------------------------------------------------------
# Regressions: core bugs these tests found, fixed since


@pytest.mark.parametrize("path", ["Postmaster", "postmaster"])
def test_rcpt_to_postmaster_without_a_domain_is_accepted(path: str) -> None:
    # RFC 5321 §4.1.1.3 and §4.5.1.
    client = Client()
    client.ehlo()
    assert client.send("MAIL FROM:<a@x.example>", f"RCPT TO:<{path}>") == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
    ]
    assert client.events[-1] == RcptTo(path, {})


@pytest.mark.parametrize("arg", [b"a\rb", b"a\x00b", b"a\x1b[2Jb", b"a\tb"])
def test_ehlo_argument_with_control_characters_is_501_and_not_echoed(arg: bytes) -> None:
    # It is echoed in the 250 line; RFC 5321 §2.3.8 allows CR only in CRLF.
    client = Client()
    assert client.feed(b"EHLO " + arg + b"\r\n") == b"501 Syntax: EHLO hostname\r\n"
    assert client.conn.state is State.HELO


def test_ehlo_argument_in_thai_is_accepted() -> None:
    client = Client()
    assert client.send("EHLO ตัวอย่าง.ไทย")[0] == "250-box.example greets ตัวอย่าง.ไทย"


@pytest.mark.parametrize(
    "line",
    [
        "qu\u0131t",  # dotless i: "ı".upper() == "I"
        "r\u017fet",  # long s: "ſ".upper() == "S"
        "\u017fTARTTLS",
    ],
)
def test_non_ascii_look_alike_verb_is_unrecognized(line: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(line) == ["500 5.5.2 Command unrecognized"]
    assert not client.closed


@pytest.mark.parametrize(
    "command",
    [
        "MAIL \u017fROM:<a@x.example>",
        "MAIL FROM\u0131:<a@x.example>",
        "MAIL FROM\uff1a<a@x.example>",
    ],
)
def test_non_ascii_look_alike_keyword_is_501(command: str) -> None:
    client = Client()
    client.ehlo()
    assert client.send(command) == ["501 5.5.4 Syntax error in parameters or arguments"]


def test_non_ascii_look_alike_mechanism_is_504() -> None:
    client = tls_client()
    assert client.send("AUTH PLA\u0131N " + b64("\0alice\0secret")) == [
        "504 5.5.4 Unrecognized authentication mechanism"
    ]


@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "terminator split"])
def test_size_limit_excludes_quoting_dots(pieces: int) -> None:
    # RFC 1870 §3: a message's size does not count the dots doubled by the client.
    client = Client(max_message_size=100)
    client.start_mail()
    client.send("DATA")
    content = b".x" + b"y" * 96 + b"\r\n"  # 100 octets; the client sends 101
    stream = b"." + content + b".\r\n"
    chunks = [stream] if pieces == 1 else [stream[:-3], stream[-3:-1], stream[-1:]]
    assert client.feed(*chunks) == b"250 2.0.0 Message accepted\r\n"
    assert [e.content for e in client.of_type(MessageData)] == [content]


# ---------------------------------------------------------------------------------------
# Known core bugs: each test states the correct behaviour and fails today.


def test_bug_size_verdict_does_not_depend_on_segmentation_for_unstuffed_dots() -> None:
    stream = b".x" + b"y" * 97 + b"\r\n.\r\n"  # ".x" not doubled: content is 100 octets
    verdicts = []
    for chunks in ([stream], [stream[:-1], stream[-1:]]):  # ".\r" then "\n"
        client = Client(max_message_size=100)
        client.start_mail()
        client.send("DATA")
        verdicts.append(client.feed(*chunks))
    assert verdicts == [b"250 2.0.0 Message accepted\r\n"] * 2


def test_bug_oversized_message_of_dot_lines_keeps_memory_bounded() -> None:
    limit = 1000
    client = Client(max_message_size=limit)
    client.start_mail()
    client.send("DATA")
    chunk = b"..\r\n" * 1024
    peak = 0
    for _ in range(256):  # 1 MiB
        assert client.feed(chunk) == b""
        peak = max(peak, len(client.conn._data))
    assert client.feed(b".\r\n") == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    )
    # Quoting dots do not count, so up to 4/3 of the limit may be held; not more.
    assert peak <= 4 * (limit + 16) // 3
