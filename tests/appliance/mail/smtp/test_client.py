"""The SMTP client core, byte for byte: no sockets (STYLE.md, like h11's tests)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.smtp.client import (
    CLOSED,
    NEED_DATA,
    AuthPlain,
    Bdat,
    ClientConnection,
    Content,
    Data,
    Ehlo,
    Greeting,
    Mail,
    Quit,
    Rcpt,
    Replied,
    Reply,
    ReplyParser,
    Rset,
    SMTPProtocolError,
    StartTLS,
    State,
    Transaction,
    dot_stuff,
)

EHLO_REPLY = (
    b"250-relay.centre.go.th Hello\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-STARTTLS\r\n"
    b"250 AUTH PLAIN LOGIN\r\n"
)


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def events(conn: ClientConnection, data: bytes) -> list[object]:
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) not in (NEED_DATA, CLOSED):
        out.append(event)
    return out


def greeted(extensions: bytes = EHLO_REPLY) -> ClientConnection:
    conn = ClientConnection()
    assert events(conn, b"220 relay.centre.go.th ESMTP\r\n") == [
        Greeting(Reply(220, None, ("relay.centre.go.th ESMTP",)))
    ]
    conn.send(Ehlo("mail.a.go.th"))
    assert conn.data_to_send() == b"EHLO mail.a.go.th\r\n"
    (event,) = events(conn, extensions)
    assert isinstance(event, Replied)
    assert conn.state is State.READY
    return conn


# -- replies -------------------------------------------------------------------------


def test_single_line_reply_with_enhanced_code() -> None:
    (reply,) = parse_all(b"550 5.1.1 <x@b.go.th>: Recipient address rejected\r\n")
    assert reply.code == 550
    assert reply.enhanced == "5.1.1"
    assert reply.text == "<x@b.go.th>: Recipient address rejected"
    assert reply.permanent
    assert not reply.transient
    assert str(reply) == "550 5.1.1 <x@b.go.th>: Recipient address rejected"


def test_multiline_reply_strips_the_enhanced_code_of_every_line() -> None:
    (reply,) = parse_all(b"452-4.2.2 Mailbox full\r\n452-4.2.2 try later\r\n452 4.2.2 bye\r\n")
    assert reply.lines == ("Mailbox full", "try later", "bye")
    assert reply.transient
    assert reply.status() == "4.2.2"


def test_enhanced_code_of_another_class_is_just_text() -> None:
    # RFC 2034 §3: the class must match the reply code's first digit.
    (reply,) = parse_all(b"250 5.0.0 odd\r\n")
    assert reply.enhanced is None
    assert reply.text == "5.0.0 odd"
    assert reply.status() == "2.0.0"


def test_bare_code_and_bare_lf_and_split_input() -> None:
    parser = ReplyParser()
    for chunk in (b"25", b"0\n354 go ah", b"ead\r", b"\n"):
        parser.feed(chunk)
    assert parser.next_reply() == Reply(250, None, ("",))
    assert parser.next_reply() == Reply(354, None, ("go ahead",))
    assert parser.next_reply() is None


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25 short\r\n",
        b"650 six is no class\r\n",
        b"250-one\r\n251 two\r\n",
        b"250x no separator\r\n",
        b"250 " + b"x" * 5000 + b"\r\n",
    ],
)
def test_malformed_replies_raise(data: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        parse_all(data)


def test_endless_line_and_endless_reply_are_bounded() -> None:
    parser = ReplyParser()
    with pytest.raises(SMTPProtocolError):
        parser.feed(b"2" * 10_000)
    with pytest.raises(SMTPProtocolError):
        parse_all(b"250-x\r\n" * 200)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 50), max_size=10))
def test_parser_never_fails_other_than_protocol_error(data: bytes, cuts: list[int]) -> None:
    parser = ReplyParser()
    try:
        position = 0
        for cut in [*cuts, len(data)]:
            parser.feed(data[position : position + cut])
            position += cut
            while (reply := parser.next_reply()) is not None:
                assert 200 <= reply.code <= 599
                assert all("\n" not in line for line in reply.lines)
    except SMTPProtocolError:
        pass


reply_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40
).filter(lambda t: t == t.strip())


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([200, 220, 250, 354, 421, 450, 451, 452, 500, 550, 554]),
    st.one_of(st.none(), st.tuples(st.integers(0, 999), st.integers(0, 999))),
    st.lists(reply_texts, min_size=1, max_size=5),
)
def test_rendered_replies_parse_back(
    code: int, enhanced: tuple[int, int] | None, texts: list[str]
) -> None:
    # RFC 3463 has no class 3: a 354 carries no enhanced code.
    with_code = enhanced is not None and code // 100 != 3
    prefix = f"{code // 100}.{enhanced[0]}.{enhanced[1]}" if with_code and enhanced else None
    lines = []
    for index, text in enumerate(texts):
        separator = " " if index == len(texts) - 1 else "-"
        body = f"{prefix} {text}" if prefix else text
        lines.append(f"{code}{separator}{body}\r\n")
    (reply,) = parse_all("".join(lines).encode())
    assert reply.code == code
    if prefix is not None:
        assert reply.enhanced == prefix
        assert reply.lines == tuple(texts)


# -- the session -----------------------------------------------------------------------


def test_extensions_are_read_from_ehlo() -> None:
    conn = greeted()
    ext = conn.extensions
    assert "pipelining" in ext
    assert "DSN" in ext
    assert "STARTTLS" in ext
    assert ext.size_limit == 10240000
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN"}


def test_nothing_before_the_greeting_and_ehlo_first() -> None:
    conn = ClientConnection()
    with pytest.raises(RuntimeError):
        conn.send(Ehlo("x"))
    events(conn, b"220 hi\r\n")
    with pytest.raises(RuntimeError):
        conn.send(Mail("a@a.go.th"))


def test_starttls_forgets_the_session() -> None:
    conn = greeted()
    conn.send(StartTLS())
    assert conn.data_to_send() == b"STARTTLS\r\n"
    (_event,) = events(conn, b"220 2.0.0 Ready to start TLS\r\n")
    assert conn.state is State.TLS_PENDING
    with pytest.raises(RuntimeError):
        conn.send(Ehlo("again"))
    conn.tls_started()
    assert conn.tls_active
    assert conn.state is State.GREETED
    assert "PIPELINING" not in conn.extensions  # RFC 3207 §4.2
    with pytest.raises(RuntimeError):
        conn.send(StartTLS())


def test_auth_plain_initial_response_and_hidden_password() -> None:
    conn = greeted()
    command = AuthPlain("box-a", "s3cret", authzid="")
    assert "s3cret" not in repr(command)
    conn.send(command)
    line = conn.data_to_send()
    assert line.startswith(b"AUTH PLAIN ")
    assert line.endswith(b"\r\n")
    assert base64.b64decode(line[11:-2]) == b"\0box-a\0s3cret"
    events(conn, b"235 2.7.0 Authentication successful\r\n")
    assert conn.authenticated


def test_pipelined_transaction_with_dsn_parameters() -> None:
    conn = greeted()
    mail = Mail("a@a.go.th", size=1234, body_8bit=True, ret="HDRS", envid="QQ+2B1")
    rcpts = [Rcpt("x@b.go.th", notify="FAILURE,DELAY", orcpt="rfc822;x@b.go.th"), Rcpt("y@b.go.th")]
    conn.send(mail)
    for rcpt in rcpts:
        conn.send(rcpt)
    conn.send(Data())
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@a.go.th> SIZE=1234 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\r\n"
        b"RCPT TO:<x@b.go.th> NOTIFY=FAILURE,DELAY ORCPT=rfc822;x@b.go.th\r\n"
        b"RCPT TO:<y@b.go.th>\r\n"
        b"DATA\r\n"
    )
    with pytest.raises(RuntimeError):
        conn.send(Rset())  # DATA ends a group (RFC 2920 §3.1)
    transaction = Transaction(["x@b.go.th", "y@b.go.th"])
    for event in events(conn, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 busy\r\n354 go\r\n"):
        assert isinstance(event, Replied)
        transaction.record(event.command, event.reply)
    assert conn.state is State.CONTENT
    assert transaction.content_wanted
    conn.send(Content(b"Subject: x\r\n\r\n.hidden\r\nend"))
    assert conn.data_to_send() == b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n"
    ((event),) = events(conn, b"250 2.0.0 queued as 1\r\n")
    transaction.record(event.command, event.reply)
    x, y = transaction.outcome()
    assert x.code == 250
    assert y.code == 450
    assert conn.state is State.READY


CHUNKING_EHLO = EHLO_REPLY.replace(b"250-DSN\r\n", b"250-DSN\r\n250-CHUNKING\r\n")


def test_a_bdat_transaction_is_one_pipelined_write_with_the_octets_as_they_are() -> None:
    conn = greeted(CHUNKING_EHLO)
    content = b"Subject: x\r\n\r\n.hidden\r\n.\r\nend"
    for command in (Mail("a@a.go.th"), Rcpt("x@b.go.th"), Rcpt("y@b.go.th"), Bdat(content)):
        conn.send(command)
    # RFC 3030 §2, §4.2: no 354 to wait for, no dot-stuffing, no terminator.
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@a.go.th>\r\nRCPT TO:<x@b.go.th>\r\nRCPT TO:<y@b.go.th>\r\n"
        b"BDAT %d LAST\r\n" % len(content) + content
    )
    assert conn.state is State.READY
    transaction = Transaction(["x@b.go.th", "y@b.go.th"])
    replies = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 busy\r\n250 2.0.0 queued\r\n"
    for event in events(conn, replies):
        assert isinstance(event, Replied)
        transaction.record(event.command, event.reply)
    assert [r.code for r in transaction.outcome()] == [250, 450]
    conn.send(Mail("a@a.go.th"))  # the next transaction may start at once


def test_bdat_chunks_and_a_refused_chunk_fail_the_transaction() -> None:
    conn = greeted(CHUNKING_EHLO)
    for command in (Mail("a@a.go.th"), Rcpt("x@b.go.th"), Bdat(b"abc", last=False)):
        conn.send(command)
    assert conn.data_to_send().endswith(b"BDAT 3\r\nabc")
    assert conn.state is State.TRANSACTION
    conn.send(Bdat(b"de"))
    transaction = Transaction(["x@b.go.th"])
    replies = b"250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n503 5.5.1 no MAIL\r\n"
    for event in events(conn, replies):
        assert isinstance(event, Replied)
        transaction.record(event.command, event.reply)
    # The first refusal decides, not the 503 to the chunk pipelined behind it.
    assert [str(r) for r in transaction.outcome()] == ["552 5.3.4 too big"]
    assert conn.state is State.READY


def test_bdat_only_when_offered_and_inside_a_transaction() -> None:
    conn = greeted()
    conn.send(Mail("a@a.go.th"))
    with pytest.raises(RuntimeError, match="CHUNKING"):
        conn.send(Bdat(b"x"))
    conn = greeted(CHUNKING_EHLO)
    with pytest.raises(RuntimeError, match="MAIL first"):
        conn.send(Bdat(b"x"))


def test_parameters_only_when_offered() -> None:
    conn = greeted(b"250-relay\r\n250 8BITMIME\r\n")
    conn.send(Mail("a@a.go.th", size=10, ret="FULL", envid="x"))
    assert conn.data_to_send() == b"MAIL FROM:<a@a.go.th>\r\n"
    with pytest.raises(RuntimeError):
        conn.send(Rcpt("x@b.go.th"))  # no PIPELINING: wait for the reply


def test_refused_mail_fails_every_recipient_and_ends_the_transaction() -> None:
    conn = greeted()
    for command in (Mail("a@a.go.th"), Rcpt("x@b.go.th"), Data()):
        conn.send(command)
    transaction = Transaction(["x@b.go.th"])
    for event in events(conn, b"553 5.7.1 sender refused\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n"):
        assert isinstance(event, Replied)
        transaction.record(event.command, event.reply)
    assert not transaction.accepted_any
    assert not transaction.content_wanted
    assert [r.code for r in transaction.outcome()] == [553]
    assert conn.state is State.READY
    conn.send(Rset())


def test_missing_replies_count_as_transient() -> None:
    transaction = Transaction(["x@b.go.th"])
    transaction.record(Mail("a@a.go.th"), Reply(250, None, ("ok",)))
    assert transaction.outcome()[0].transient


def test_421_closes_and_eof_closes() -> None:
    conn = greeted()
    conn.send(Mail("a@a.go.th"))
    (_event,) = events(conn, b"421 4.3.2 shutting down\r\n")
    assert conn.state is State.CLOSED
    assert conn.next_event() is CLOSED
    conn = greeted()
    conn.send(Quit())
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_unasked_reply_is_a_protocol_error_unless_421() -> None:
    conn = greeted()
    conn.receive_data(b"250 surprise\r\n")
    with pytest.raises(SMTPProtocolError):
        conn.next_event()
    conn = greeted()
    (event,) = events(conn, b"421 4.3.2 going down\r\n")
    assert isinstance(event, Replied)
    assert event.reply.code == 421


def test_command_injection_is_refused() -> None:
    conn = greeted()
    with pytest.raises(ValueError, match="control character"):
        conn.send(Mail("a@a.go.th>\r\nRCPT TO:<evil@x"))


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".a\nb\r\n", b"..a\r\nb\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\rb\n\n.", b"a\r\nb\r\n\r\n..\r\n.\r\n"),
    ],
)
def test_dot_stuffing(message: bytes, wire: bytes) -> None:
    assert dot_stuff(message) == wire


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_dot_stuffed_content_has_one_end_marker(message: bytes) -> None:
    wire = dot_stuff(message)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    assert b"\r\n.\r\n" not in b"\r\n" + body
    assert b"\n" not in body.replace(b"\r\n", b"")
