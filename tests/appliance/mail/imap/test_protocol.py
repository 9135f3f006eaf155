"""Byte-scenario tests for the IMAP server core (`appliance.mail.imap.protocol`).

No sockets and no trio: each test plays a client's bytes into a `ServerConnection`
through the small `Client` driver below and checks the events and the exact bytes the
core queued, the way h11's ``test_connection.py`` does. The hypothesis tests that feed
the core garbage live next door in ``test_protocol_fuzz.py``.
"""

from __future__ import annotations

import datetime as dt

import pytest

from appliance.mail.imap.protocol import (
    CLOSED,
    NEED_DATA,
    Append,
    Authenticate,
    BadCommand,
    BodySection,
    Capability,
    Check,
    Close,
    Copy,
    Create,
    Delete,
    Enable,
    Event,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBody,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    IdleDone,
    ImapConfig,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QresyncParams,
    Rename,
    SaslResponse,
    Search,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKeyword,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    Select,
    SequenceSet,
    ServerConnection,
    StartTls,
    State,
    Status,
    Store,
    StoreMode,
    Subscribe,
    UidExpunge,
    Unselect,
    Unsubscribe,
    encode_uid_set,
    flag_list,
    imap_date,
    mailbox_name,
    nstring,
    quote,
)

THAI = "ทดสอบภาษาไทย"


class Client:
    """Plays bytes into a connection and collects events and output."""

    def __init__(
        self,
        state: State = State.NOT_AUTHENTICATED,
        *,
        tls: bool = True,
        config: ImapConfig | None = None,
    ) -> None:
        self.conn = ServerConnection(config or ImapConfig(), tls_active=tls)
        if state in (State.AUTHENTICATED, State.SELECTED):
            self.conn.authenticated()
        if state is State.SELECTED:
            self.conn.selected()
        self.closed = False

    def send(self, data: bytes, *, bytewise: bool = False) -> list[Event]:
        chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        events: list[Event] = []
        for chunk in chunks:
            self.conn.receive_data(chunk)
            events += self.pump()
        return events

    def pump(self) -> list[Event]:
        events: list[Event] = []
        while True:
            event = self.conn.next_event()
            if event is CLOSED:
                self.closed = True
                return events
            if event is NEED_DATA:
                return events
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)

    def one(self, data: bytes, **kwargs: bool) -> Event:
        events = self.send(data, **kwargs)
        assert len(events) == 1, events
        return events[0]

    def out(self) -> bytes:
        return self.conn.data_to_send()


def parse(line: bytes, state: State = State.SELECTED) -> Event:
    """Parse one complete command line (with any literals) in *state*."""
    client = Client(state)
    event = client.one(line)
    assert not isinstance(event, BadCommand), (event, client.out())
    return event


def bad(line: bytes, state: State = State.SELECTED) -> tuple[BadCommand, bytes]:
    client = Client(state)
    event = client.one(line)
    assert isinstance(event, BadCommand), event
    return event, client.out()


# Shorthand for the sequence sets the tests expect.
def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


# ---------------------------------------------------------------------------------------
# Commands without arguments


@pytest.mark.parametrize(
    ("line", "state", "event"),
    [
        (b"a1 CAPABILITY", State.NOT_AUTHENTICATED, Capability("a1")),
        (b"a1 capability", State.SELECTED, Capability("a1")),
        (b"a2 NOOP", State.AUTHENTICATED, Noop("a2")),
        (b"A.3 NAMESPACE", State.AUTHENTICATED, Namespace("A.3")),
        (b"x CHECK", State.SELECTED, Check("x")),
        (b"x CLOSE", State.SELECTED, Close("x")),
        (b"x UNSELECT", State.SELECTED, Unselect("x")),
        (b"x EXPUNGE", State.SELECTED, Expunge("x")),
        (b"x IDLE", State.AUTHENTICATED, Idle("x")),
        (b"x STARTTLS", State.NOT_AUTHENTICATED, StartTls("x")),
    ],
)
def test_simple_commands(line: bytes, state: State, event: Event) -> None:
    client = Client(state, tls=not isinstance(event, StartTls))
    assert client.send(line + b"\r\n") == [event]
    assert client.out() == b""


def test_bare_lf_is_accepted_as_line_end() -> None:
    assert Client().send(b"a NOOP\n") == [Noop("a")]


def test_arguments_to_argumentless_command_are_bad() -> None:
    event, out = bad(b"a NOOP now\r\n")
    assert out == b"a BAD Unexpected extra arguments\r\n"
    assert event == BadCommand("a", "Unexpected extra arguments")


def test_logout_ends_the_session() -> None:
    client = Client(State.AUTHENTICATED)
    assert client.send(b"a LOGOUT\r\nb NOOP\r\n") == [Logout("a")]
    assert client.conn.state is State.LOGOUT
    assert client.closed
    client.conn.untagged("BYE edgebox logging out")
    client.conn.tagged("a", "OK", "LOGOUT completed")
    assert client.out() == b"* BYE edgebox logging out\r\na OK LOGOUT completed\r\n"
    assert client.conn.next_event() is CLOSED


def test_eof_closes() -> None:
    client = Client()
    client.conn.receive_data(b"a NOOP\r\nb NO")
    client.conn.receive_data(b"")
    assert client.conn.next_event() == Noop("a")
    assert client.conn.next_event() is CLOSED


def test_pipelined_commands_come_out_in_order() -> None:
    client = Client(State.SELECTED)
    events = client.send(b"a NOOP\r\nb CHECK\r\nc FETCH 1 UID\r\n")
    assert [type(e) for e in events] == [Noop, Check, Fetch]


# ---------------------------------------------------------------------------------------
# Bad input, unknown commands, states


@pytest.mark.parametrize(
    ("line", "out"),
    [
        (b"a FROB\r\n", b"a BAD Unknown command\r\n"),
        (b"a UID FROB 1\r\n", b"a BAD Unknown UID command\r\n"),
        (b"a\r\n", b"a BAD Expected space\r\n"),
        (b"\r\n", b"* BAD Expected tag\r\n"),
        (b"+ NOOP\r\n", b"* BAD Expected tag\r\n"),
        (b"* NOOP\r\n", b"* BAD Expected tag\r\n"),
        (b"a FETCH 1:x FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH 0 FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH 1::2 FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH 1, FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH :3 FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH 4294967296 FLAGS\r\n", b"a BAD Bad sequence set\r\n"),
        (b"a FETCH 1 FROB\r\n", b"a BAD Unknown fetch item FROB\r\n"),
        (b"a FETCH 1\r\n", b"a BAD Expected space\r\n"),
        (b'a COPY 1 "unterminated\r\n', b"a BAD Unterminated quoted string\r\n"),
        (b'a COPY 1 "bad \\q escape"\r\n', b"a BAD Bad escape in quoted string\r\n"),
        (b"a SEARCH FROB\r\n", b"a BAD Unknown search key FROB\r\n"),
        (b"a SEARCH\r\n", b"a BAD Expected space\r\n"),
        (b"a STORE 1 FLAGZ (\\Seen)\r\n", b"a BAD Expected FLAGS, +FLAGS or -FLAGS\r\n"),
    ],
)
def test_malformed_commands_are_bad(line: bytes, out: bytes) -> None:
    client = Client(State.SELECTED)
    event = client.one(line)
    assert isinstance(event, BadCommand)
    assert client.out() == out
    # The session goes on.
    assert client.send(b"z NOOP\r\n") == [Noop("z")]


@pytest.mark.parametrize(
    ("line", "state"),
    [
        (b"a FETCH 1 FLAGS", State.NOT_AUTHENTICATED),
        (b"a FETCH 1 FLAGS", State.AUTHENTICATED),
        (b"a UID FETCH 1 FLAGS", State.AUTHENTICATED),
        (b"a SELECT INBOX", State.NOT_AUTHENTICATED),
        (b"a LOGIN bob secret", State.AUTHENTICATED),
        (b"a AUTHENTICATE PLAIN", State.SELECTED),
        (b"a ENABLE CONDSTORE", State.SELECTED),
        (b"a ENABLE CONDSTORE", State.NOT_AUTHENTICATED),
        (b"a STARTTLS", State.AUTHENTICATED),
        (b"a IDLE", State.NOT_AUTHENTICATED),
        (b"a EXPUNGE", State.AUTHENTICATED),
    ],
)
def test_commands_in_the_wrong_state_are_bad(line: bytes, state: State) -> None:
    event, out = bad(line + b"\r\n", state)
    assert event.tag == "a"
    assert out.startswith(b"a BAD ")
    assert b"not allowed in state" in out


def test_wrong_state_is_refused_before_the_literal_is_asked_for() -> None:
    client = Client(State.NOT_AUTHENTICATED)
    events = client.send(b"a APPEND INBOX {5}\r\n")
    assert events == [BadCommand("a", "APPEND not allowed in state not authenticated")]
    assert client.out() == b"a BAD APPEND not allowed in state not authenticated\r\n"
    # The client got no "+" and sends its next command.
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_state_changes_follow_the_server() -> None:
    conn = ServerConnection(ImapConfig())
    assert conn.state is State.NOT_AUTHENTICATED
    conn.authenticated()
    assert conn.state is State.AUTHENTICATED
    conn.selected()
    conn.selected()  # SELECT while selected
    assert conn.state is State.SELECTED
    conn.unselected()
    assert conn.state is State.AUTHENTICATED
    with pytest.raises(RuntimeError):
        conn.authenticated()


def test_tagged_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        ServerConnection().tagged("a", "MAYBE", "x")


# ---------------------------------------------------------------------------------------
# LOGIN, AUTHENTICATE, STARTTLS


@pytest.mark.parametrize(
    ("args", "user", "password"),
    [
        (b"bob secret", "bob", "secret"),
        (b'"bob@example.go.th" "pa ss\\"wo\\\\rd"', "bob@example.go.th", 'pa ss"wo\\rd'),
        (b"bob {6+}\r\nsecret", "bob", "secret"),
        (b'"" ""', "", ""),
        (b'bob "' + THAI.encode() + b'"', "bob", THAI),
    ],
)
def test_login(args: bytes, user: str, password: str) -> None:
    event = parse(b"a LOGIN " + args + b"\r\n", State.NOT_AUTHENTICATED)
    assert event == Login("a", user, password)


def test_login_password_is_not_in_repr() -> None:
    event = parse(b"a LOGIN bob hunter2\r\n", State.NOT_AUTHENTICATED)
    assert "hunter2" not in repr(event)


def test_login_with_synchronising_literals() -> None:
    client = Client()
    assert client.send(b"a LOGIN {3}\r\n") == []
    assert client.out() == b"+ Ready for literal\r\n"
    assert client.send(b"bob {12}\r\n") == []
    assert client.out() == b"+ Ready for literal\r\n"
    password = "รหัส".encode()  # 12 bytes of UTF-8
    assert client.send(password + b"\r\n") == [Login("a", "bob", "รหัส")]


def test_login_before_tls_is_refused_when_required() -> None:
    client = Client(tls=False)
    event = client.one(b"a LOGIN bob secret\r\n")
    assert isinstance(event, BadCommand)
    assert client.out() == b"a NO [PRIVACYREQUIRED] LOGIN disabled until TLS\r\n"
    # A password literal is not even asked for.
    client.send(b"b LOGIN bob {6}\r\n")
    assert client.out() == b"b NO [PRIVACYREQUIRED] LOGIN disabled until TLS\r\n"
    assert client.send(b"c CAPABILITY\r\n") == [Capability("c")]


def test_login_before_tls_allowed_when_not_required() -> None:
    client = Client(tls=False, config=ImapConfig(require_tls_for_auth=False))
    assert client.send(b"a LOGIN bob secret\r\n") == [Login("a", "bob", "secret")]


def test_login_with_invalid_utf8_is_bad() -> None:
    _, out = bad(b'a LOGIN bob "\xff\xfe"\r\n', State.NOT_AUTHENTICATED)
    assert out == b"a BAD password is not UTF-8\r\n"


def test_authenticate_with_sasl_ir() -> None:
    client = Client()
    event = client.one(b"a AUTHENTICATE plain AGJvYgBzZWNyZXQ=\r\n")
    assert event == Authenticate("a", "PLAIN", b"\0bob\0secret")
    client.conn.authenticated()
    client.conn.tagged("a", "OK", "Logged in")
    assert client.out() == b"a OK Logged in\r\n"
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_authenticate_with_empty_initial_response() -> None:
    event = parse(b"a AUTHENTICATE EXTERNAL =\r\n", State.NOT_AUTHENTICATED)
    assert event == Authenticate("a", "EXTERNAL", b"")


def test_authenticate_without_sasl_ir() -> None:
    client = Client()
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == [Authenticate("a", "PLAIN", None)]
    client.conn.continuation("")
    assert client.out() == b"+ \r\n"
    assert client.send(b"AGJvYgBzZWNyZXQ=\r\n") == [SaslResponse("a", b"\0bob\0secret")]
    client.conn.tagged("a", "NO", "Authentication failed", "AUTHENTICATIONFAILED")
    assert client.out() == b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    # The exchange is over: lines are commands again.
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_authenticate_multi_step() -> None:
    client = Client()
    client.send(b"a AUTHENTICATE LOGIN\r\n")
    client.conn.continuation("VXNlcm5hbWU6")
    assert client.send(b"Ym9i\r\n") == [SaslResponse("a", b"bob")]
    client.conn.continuation("UGFzc3dvcmQ6")
    assert client.send(b"c2VjcmV0\r\n") == [SaslResponse("a", b"secret")]
    assert client.out() == b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n"


def test_authenticate_empty_response_line() -> None:
    client = Client()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    client.conn.continuation("")
    assert client.send(b"\r\n") == [SaslResponse("a", b"")]


def test_authenticate_cancel() -> None:
    client = Client()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    client.conn.continuation("")
    assert client.send(b"*\r\n") == [SaslResponse("a", None)]
    client.conn.tagged("a", "BAD", "Authentication cancelled")
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_authenticate_bad_base64_response() -> None:
    client = Client()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    client.conn.continuation("")
    client.out()
    assert client.send(b"!!notbase64\r\n") == [BadCommand("a", "Bad base64 in SASL response")]
    assert client.out() == b"a BAD Bad base64 in SASL response\r\n"
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_authenticate_bad_base64_initial_response() -> None:
    _, out = bad(b"a AUTHENTICATE PLAIN AGJvYg\r\n", State.NOT_AUTHENTICATED)
    assert out == b"a BAD Bad base64\r\n"


def test_authenticate_before_tls_refused() -> None:
    client = Client(tls=False)
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.out() == b"a NO [PRIVACYREQUIRED] AUTHENTICATE disabled until TLS\r\n"


def test_starttls_discards_pipelined_plaintext() -> None:
    client = Client(tls=False)
    assert client.send(b"a STARTTLS\r\nb LOGIN bob secret\r\n") == [StartTls("a")]
    assert client.conn.next_event() is NEED_DATA
    client.conn.tagged("a", "OK", "Begin TLS negotiation now")
    client.conn.tls_started()
    assert client.conn.tls_active
    assert client.pump() == []
    assert client.send(b"c LOGIN bob secret\r\n") == [Login("c", "bob", "secret")]


def test_starttls_refused_by_server_resumes_parsing() -> None:
    client = Client(tls=False)
    client.send(b"a STARTTLS\r\nb NOOP\r\n")
    client.conn.tagged("a", "NO", "TLS not available")
    assert client.pump() == [Noop("b")]


def test_starttls_twice_is_bad() -> None:
    _, out = bad(b"a STARTTLS\r\n", State.NOT_AUTHENTICATED)
    assert out == b"a BAD TLS is already active\r\n"


def test_tls_started_without_starttls_raises() -> None:
    with pytest.raises(RuntimeError):
        ServerConnection().tls_started()


# ---------------------------------------------------------------------------------------
# ENABLE, ID


def test_enable() -> None:
    event = parse(b"a ENABLE condstore QRESYNC\r\n", State.AUTHENTICATED)
    assert event == Enable("a", ("CONDSTORE", "QRESYNC"))


def test_enable_needs_a_capability() -> None:
    bad(b"a ENABLE\r\n", State.AUTHENTICATED)


@pytest.mark.parametrize(
    ("args", "params"),
    [
        (b"NIL", None),
        (b"nil", None),
        (b"()", {}),
        (
            b'("name" "Thunderbird" "version" "128.0" "os" NIL)',
            {"name": "Thunderbird", "version": "128.0", "os": None},
        ),
        (b'("name" {6}\r\nMail.X)', {"name": "Mail.X"}),
    ],
)
def test_id(args: bytes, params: dict[str, str | None] | None) -> None:
    assert parse(b"a ID " + args + b"\r\n", State.NOT_AUTHENTICATED) == Id("a", params)


@pytest.mark.parametrize("args", [b'("name")', b"name", b"(name value)", b""])
def test_id_malformed(args: bytes) -> None:
    bad(b"a ID " + args + b"\r\n", State.AUTHENTICATED)


def test_id_too_many_params() -> None:
    params = b" ".join(b'"k%d" "v"' % i for i in range(31))
    _, out = bad(b"a ID (" + params + b")\r\n", State.AUTHENTICATED)
    assert out == b"a BAD Too many ID parameters\r\n"


# ---------------------------------------------------------------------------------------
# Mailbox commands


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"a SELECT INBOX", Select("a", "INBOX")),
        (b"a SELECT inbox", Select("a", "INBOX")),
        (b'a SELECT "InBoX"', Select("a", "INBOX")),
        (b"a SELECT INBOX.Sent", Select("a", "INBOX.Sent")),
        (b"a SELECT inbox/Sent", Select("a", "inbox/Sent")),
        (b"a SELECT &DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-", Select("a", "กล่องจดหมาย")),
        (b'a SELECT "~peter/mail/&U,BTFw-/&ZeVnLIqe-"', Select("a", "~peter/mail/台北/日本語")),
        (b"a SELECT {6+}\r\nDrafts", Select("a", "Drafts")),
        (b"a EXAMINE Archive", Select("a", "Archive", readonly=True)),
        (b"a SELECT INBOX (CONDSTORE)", Select("a", "INBOX", condstore=True)),
        (
            b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
            Select(
                "a",
                "INBOX",
                qresync=QresyncParams(
                    67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541))
                ),
            ),
        ),
        (
            b"a EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
            b"(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976:29997)))",
            Select(
                "a",
                "INBOX",
                readonly=True,
                qresync=QresyncParams(
                    67890007,
                    90060115194045000,
                    seq((1, 29997)),
                    (
                        seq((5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999)),
                        seq(
                            (15000, 15000),
                            (22500, 22500),
                            (27000, 27000),
                            (29970, 29970),
                            (29973, 29973),
                            (29976, 29997),
                        ),
                    ),
                ),
            ),
        ),
        (
            b"a SELECT INBOX (QRESYNC (1 2))",
            Select("a", "INBOX", qresync=QresyncParams(1, 2)),
        ),
        (b"a CREATE Projects/2567", Create("a", "Projects/2567")),
        (b"a CREATE Sent (USE (\\Sent))", Create("a", "Sent", ("\\Sent",))),
        (b"a CREATE Junk (USE (\\Junk \\Archive))", Create("a", "Junk", ("\\Junk", "\\Archive"))),
        (b"a DELETE Trash/old", Delete("a", "Trash/old")),
        (b'a RENAME "Old" "New &- Improved"', Rename("a", "Old", "New & Improved")),
        (b"a SUBSCRIBE Lists", Subscribe("a", "Lists")),
        (b"a UNSUBSCRIBE Lists", Unsubscribe("a", "Lists")),
        (b'a LSUB "" "*"', Lsub("a", "", "*")),
        (b"a LSUB Lists %", Lsub("a", "Lists", "%")),
        (
            b"a STATUS INBOX (MESSAGES UNSEEN uidnext UIDVALIDITY RECENT HIGHESTMODSEQ)",
            Status(
                "a",
                "INBOX",
                ("MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY", "RECENT", "HIGHESTMODSEQ"),
            ),
        ),
        (b'a GETQUOTA ""', GetQuota("a", "")),
        (b"a GETQUOTA user.bob", GetQuota("a", "user.bob")),
        (b"a GETQUOTAROOT inbox", GetQuotaRoot("a", "INBOX")),
    ],
)
def test_mailbox_commands(line: bytes, event: Event) -> None:
    assert parse(line + b"\r\n", State.AUTHENTICATED) == event


@pytest.mark.parametrize(
    "line",
    [
        b"a SELECT",
        b"a SELECT INBOX (FROB)",
        b"a SELECT INBOX ()",
        b"a SELECT INBOX (QRESYNC (0 2))",
        b"a SELECT INBOX (QRESYNC (1 0))",
        b"a CREATE Sent (USE \\Sent)",
        b"a CREATE Sent (FROB (\\Sent))",
        b"a RENAME Old",
        b"a STATUS INBOX ()",
        b"a STATUS INBOX (FROB)",
        b"a STATUS INBOX MESSAGES",
        b"a GETQUOTAROOT",
    ],
)
def test_mailbox_commands_malformed(line: bytes) -> None:
    bad(line + b"\r\n", State.AUTHENTICATED)


@pytest.mark.parametrize(
    "line",
    [
        b"a SELECT &U,BTFw",  # unterminated modified UTF-7
        b"a SELECT &AGE-",  # not canonical
        b'a SELECT "\xe0\xb8\x81"',  # raw UTF-8 is not modified UTF-7
        b"a CREATE !#$$&'+,-.0123456789",  # imaptest's atoms test
        b"a DELETE &U,BTFw",
    ],
)
def test_invalid_mutf7_name_is_no_not_bad(line: bytes) -> None:
    # A well-formed command naming a mailbox that cannot exist: NO, as Dovecot answers.
    event, out = bad(line + b"\r\n", State.AUTHENTICATED)
    assert event.status == "NO"
    assert out.startswith(b"a NO [CANNOT] Bad mailbox name")


@pytest.mark.parametrize(
    ("args", "patterns"),
    [
        (b'"" &', ()),
        (b'"" !#$$&\'+,-.0123456789:;<=>?@^_`|[}%*', ()),
        (b'"" (INBOX &U,BTFw)', ("INBOX",)),
    ],
)
def test_list_invalid_mutf7_pattern_matches_nothing(args: bytes, patterns: tuple[str]) -> None:
    assert parse(b"a LIST " + args + b"\r\n", State.AUTHENTICATED) == List("a", "", patterns)


def test_lsub_invalid_mutf7_pattern_matches_nothing() -> None:
    assert parse(b'a LSUB "" &\r\n', State.AUTHENTICATED) == Lsub("a", "", None)


@pytest.mark.parametrize(
    ("args", "event"),
    [
        (b'"" "*"', List("a", "", ("*",))),
        (b'"" %', List("a", "", ("%",))),
        (b"~/Mail/ foo.*", List("a", "~/Mail/", ("foo.*",))),
        (b'"" "&DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-/*"', List("a", "", ("กล่องจดหมาย/*",))),
        (b'"" ""', List("a", "", ("",))),
        (
            b'(SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Lists/%")',
            List("a", "", ("INBOX", "Lists/%"), ("SUBSCRIBED", "RECURSIVEMATCH")),
        ),
        (b'(special-use) "" *', List("a", "", ("*",), ("SPECIAL-USE",))),
        (b'() "" *', List("a", "", ("*",))),
        (
            b'"" * RETURN (SPECIAL-USE CHILDREN SUBSCRIBED)',
            List("a", "", ("*",), (), ("SPECIAL-USE", "CHILDREN", "SUBSCRIBED")),
        ),
        (
            b'"" % RETURN (STATUS (MESSAGES UNSEEN HIGHESTMODSEQ))',
            List("a", "", ("%",), (), ("STATUS",), ("MESSAGES", "UNSEEN", "HIGHESTMODSEQ")),
        ),
        (b'"" % RETURN ()', List("a", "", ("%",))),
    ],
)
def test_list(args: bytes, event: List) -> None:
    assert parse(b"a LIST " + args + b"\r\n", State.AUTHENTICATED) == event


@pytest.mark.parametrize(
    "args",
    [
        b'""',
        b'(FROB) "" *',
        b'(RECURSIVEMATCH) "" *',
        b'(RECURSIVEMATCH REMOTE) "" ""',  # RFC 5258 §3.1: REMOTE does not count
        b'"" * RETURN (FROB)',
        b'"" * RETURN CHILDREN',
        b'"" * RETURNS (CHILDREN)',
        b'"" ()',
    ],
)
def test_list_malformed(args: bytes) -> None:
    bad(b"a LIST " + args + b"\r\n", State.AUTHENTICATED)


# ---------------------------------------------------------------------------------------
# APPEND and literals


def test_append_with_flags_and_date() -> None:
    client = Client(State.AUTHENTICATED)
    message = b"From: a@b\r\nSubject: " + THAI.encode() + b"\r\n\r\nhi\r\n"
    head = b'a APPEND Sent (\\Seen $Label1) " 7-Feb-1994 21:52:25 -0800" {%d}\r\n' % len(message)
    assert client.send(head) == []
    assert client.out() == b"+ Ready for literal\r\n"
    event = client.one(message + b"\r\n")
    tz = dt.timezone(-dt.timedelta(hours=8))
    assert event == Append(
        "a", "Sent", ("\\Seen", "$Label1"), dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=tz), message
    )
    assert "Subject" not in repr(event)


def test_append_minimal_with_literal_plus() -> None:
    client = Client(State.SELECTED)
    assert client.send(b"a APPEND INBOX {2+}\r\nhi\r\n") == [Append("a", "INBOX", (), None, b"hi")]
    assert client.out() == b""


def test_append_date_with_two_digit_day() -> None:
    event = parse(b'a APPEND INBOX "17-Jul-1996 02:44:25 +0700" {0}\r\n\r\n')
    assert isinstance(event, Append)
    assert event.internal_date == dt.datetime(
        1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(dt.timedelta(hours=7))
    )


def test_zero_length_literal() -> None:
    client = Client(State.AUTHENTICATED)
    assert client.send(b"a APPEND INBOX {0}\r\n") == []
    assert client.out() == b"+ Ready for literal\r\n"
    assert client.send(b"\r\n") == [Append("a", "INBOX", (), None, b"")]


def test_literal_split_byte_by_byte() -> None:
    client = Client(State.AUTHENTICATED)
    message = "สวัสดี\r\n.\r\n{3}\r\nครับ".encode()
    wire = b"a APPEND INBOX (\\Draft) {%d}\r\n" % len(message) + message + b"\r\nb NOOP\r\n"
    events = client.send(wire, bytewise=True)
    assert events == [Append("a", "INBOX", ("\\Draft",), None, message), Noop("b")]
    assert client.out() == b"+ Ready for literal\r\n"


def test_literal_containing_crlf_and_thai() -> None:
    body = f"บรรทัดแรก\r\nบรรทัดสอง\r\na NOOP\r\n{THAI}".encode()
    client = Client(State.SELECTED)
    events = client.send(b"a SEARCH CHARSET UTF-8 BODY {%d+}\r\n" % len(body) + body + b"\r\n")
    assert events == [Search("a", False, "UTF-8", SearchText("BODY", body.decode()))]


def test_append_needs_a_literal() -> None:
    _, out = bad(b"a APPEND INBOX message\r\n")
    assert out == b"a BAD APPEND needs the message as a literal\r\n"


@pytest.mark.parametrize(
    "line",
    [
        b'a APPEND INBOX "7-Feb-1994 21:52:25" {0}\r\n\r\n',
        b'a APPEND INBOX "31-Feb-1994 21:52:25 +0000" {0}\r\n\r\n',
        b'a APPEND INBOX "07-Foo-1994 21:52:25 +0000" {0}\r\n\r\n',
        b'a APPEND INBOX "07-Feb-1994 25:52:25 +0000" {0}\r\n\r\n',
        b"a APPEND INBOX (\\Seen {0}\r\n\r\n",
        b"a APPEND INBOX {0}\r\n extra\r\n",
    ],
)
def test_append_malformed(line: bytes) -> None:
    bad(line)


SMALL = ImapConfig(max_literal=100, max_line=60)


def test_oversize_synchronising_literal_refused_before_reading() -> None:
    client = Client(State.AUTHENTICATED, config=SMALL)
    events = client.send(b"a APPEND INBOX {101}\r\n")
    assert events == [BadCommand("a", "Literal too big", "TOOBIG")]
    assert client.out() == b"a BAD [TOOBIG] Literal too big\r\n"
    # No "+" was sent, so the client does not send the literal: the next line is a command.
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_literal_at_the_limit_is_read() -> None:
    client = Client(State.AUTHENTICATED, config=SMALL)
    client.send(b"a APPEND INBOX {100}\r\n")
    assert client.out() == b"+ Ready for literal\r\n"
    assert client.send(b"x" * 100 + b"\r\n") == [Append("a", "INBOX", (), None, b"x" * 100)]


def test_oversize_non_synchronising_literal_is_discarded() -> None:
    client = Client(State.AUTHENTICATED, config=SMALL)
    events = client.send(b"a APPEND INBOX {500+}\r\n")
    assert events == [BadCommand("a", "Literal too big", "TOOBIG")]
    assert client.out() == b"a BAD [TOOBIG] Literal too big\r\n"
    # The 500 bytes arrive anyway, in pieces, and are thrown away without being kept.
    for _ in range(5):
        assert client.send(b"b NOOP\r\n" * 10 + b"x" * 20) == []
        assert len(client.conn._in) == 0
    assert client.send(b"\r\nc NOOP\r\n") == [Noop("c")]
    assert client.out() == b""


def test_oversize_literal_discards_rest_of_command_with_more_literals() -> None:
    client = Client(State.SELECTED, config=SMALL)
    wire = b"a SEARCH TEXT {200+}\r\n" + b"y" * 200 + b" TEXT {3+}\r\nabc\r\nb NOOP\r\n"
    events = client.send(wire)
    assert events == [BadCommand("a", "Literal too big", "TOOBIG"), Noop("b")]


def test_non_append_literals_bounded_by_max_line() -> None:
    client = Client(State.NOT_AUTHENTICATED, config=SMALL)
    client.send(b"a LOGIN {61}\r\n")
    assert client.out() == b"a BAD [TOOBIG] Literal too big\r\n"


def test_absurd_non_synchronising_literal_closes() -> None:
    client = Client(State.AUTHENTICATED, config=SMALL)
    client.send(b"a APPEND INBOX {99999999999999999999+}\r\n")
    assert client.closed
    assert client.out() == (
        b"a BAD [TOOBIG] Literal too big\r\n* BYE Literal too large to discard\r\n"
    )


def test_literal8_outside_append_is_refused() -> None:
    # RFC 3516 §4.4: literal8 is APPEND's message data only (since BINARY).
    client = Client(State.AUTHENTICATED)
    events = client.send(b"a SELECT ~{5}\r\nb NOOP\r\n")
    assert events == [BadCommand("a", "literal8 is not supported here"), Noop("b")]
    assert client.out() == b"a BAD literal8 is not supported here\r\n"


def test_literal8_non_synchronising_outside_append_is_discarded() -> None:
    client = Client(State.AUTHENTICATED)
    events = client.send(b"a SELECT ~{5+}\r\n\x00\x01\x02\r\n\r\nb NOOP\r\n")
    assert events == [BadCommand("a", "literal8 is not supported here"), Noop("b")]


def test_line_too_long() -> None:
    client = Client(State.SELECTED, config=SMALL)
    events = client.send(b"a FETCH " + b"1," * 40 + b"1 FLAGS\r\nb NOOP\r\n")
    assert events == [BadCommand("a", "Line too long"), Noop("b")]


def test_line_too_long_arriving_in_pieces_is_not_buffered() -> None:
    client = Client(State.SELECTED, config=SMALL)
    assert client.send(b"a FETCH ") == []
    for _ in range(20):
        client.send(b"1," * 10)
        assert len(client.conn._in) <= SMALL.max_line + 20
    assert client.out() == b"a BAD Line too long\r\n"
    assert client.send(b"1 FLAGS\r\nb NOOP\r\n") == [Noop("b")]


def test_line_too_long_ending_in_literal_plus_discards_it() -> None:
    client = Client(State.SELECTED, config=SMALL)
    wire = b"a SEARCH " + b"ALL " * 20 + b"TEXT {4+}\r\nab\r\n\r\nb NOOP\r\n"
    assert client.send(wire, bytewise=True) == [BadCommand("a", "Line too long"), Noop("b")]


def test_quoted_string_cannot_span_lines() -> None:
    client = Client(State.SELECTED)
    events = client.send(b'a COPY 1 "two\r\nlines"\r\n')
    assert [type(e) for e in events] == [BadCommand, BadCommand]


# ---------------------------------------------------------------------------------------
# Message commands


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"a UID EXPUNGE 3000:3002,3005", UidExpunge("a", seq((3000, 3002), (3005, 3005)))),
        (b"a COPY 2:4 MEETING", Copy("a", False, seq((2, 4)), "MEETING")),
        (b"a UID COPY 1:* Archive", Copy("a", True, seq((1, None)), "Archive")),
        (b"a MOVE 1 inbox", Move("a", False, seq((1, 1)), "INBOX")),
        (
            b'a UID MOVE 42 "&DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-"',
            Move("a", True, seq((42, 42)), "กล่องจดหมาย"),
        ),
        (
            b"a STORE 2:4 +FLAGS (\\Deleted)",
            Store("a", False, seq((2, 4)), StoreMode.ADD, False, ("\\Deleted",)),
        ),
        (
            b"a STORE 1 -flags.silent \\Seen $Junk",
            Store("a", False, seq((1, 1)), StoreMode.REMOVE, True, ("\\Seen", "$Junk")),
        ),
        (
            b"a UID STORE 5:* FLAGS ()",
            Store("a", True, seq((5, None)), StoreMode.REPLACE, False, ()),
        ),
        (
            b"a STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Seen)",
            Store("a", False, seq((7, 7)), StoreMode.ADD, True, ("\\Seen",), 320162338),
        ),
    ],
)
def test_message_commands(line: bytes, event: Event) -> None:
    assert parse(line + b"\r\n") == event


@pytest.mark.parametrize(
    "line",
    [
        b"a UID EXPUNGE",
        b"a COPY 1",
        b"a COPY x INBOX",
        b"a STORE 1 +FLAGS",
        b"a STORE 1 *FLAGS (\\Seen)",
        b"a STORE 1 (FROB 1) FLAGS (\\Seen)",
        b"a STORE 1 (UNCHANGEDSINCE x) FLAGS (\\Seen)",
        b"a STORE 1 FLAGS (\\Seen",
    ],
)
def test_message_commands_malformed(line: bytes) -> None:
    bad(line + b"\r\n")


def body(
    part: tuple[int, ...] = (),
    text: str | None = None,
    fields: tuple[str, ...] = (),
    *,
    peek: bool = False,
    partial: tuple[int, int] | None = None,
) -> FetchBody:
    return FetchBody(BodySection(part, text, fields), peek, partial)


A = FetchAttr


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (b"FLAGS", (A("FLAGS"),)),
        (b"ALL", (A("FLAGS"), A("INTERNALDATE"), A("RFC822.SIZE"), A("ENVELOPE"))),
        (b"fast", (A("FLAGS"), A("INTERNALDATE"), A("RFC822.SIZE"))),
        (b"FULL", (A("FLAGS"), A("INTERNALDATE"), A("RFC822.SIZE"), A("ENVELOPE"), A("BODY"))),
        (
            b"(UID RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE BODY BODYSTRUCTURE MODSEQ)",
            tuple(
                A(n)
                for n in (
                    "UID",
                    "RFC822",
                    "RFC822.HEADER",
                    "RFC822.TEXT",
                    "RFC822.SIZE",
                    "BODY",
                    "BODYSTRUCTURE",
                    "MODSEQ",
                )
            ),
        ),
        (b"BODY[]", (body(),)),
        (b"body.peek[]", (body(peek=True),)),
        (b"BODY[TEXT]<0.2048>", (body(text="TEXT", partial=(0, 2048)),)),
        (b"BODY.PEEK[HEADER]", (body(text="HEADER", peek=True),)),
        (b"BODY[1]", (body((1,)),)),
        (b"BODY[1.2.3]", (body((1, 2, 3)),)),
        (b"BODY[2.MIME]", (body((2,), "MIME"),)),
        (b"BODY[4.2.HEADER]", (body((4, 2), "HEADER"),)),
        (b"BODY[3.TEXT]<100.5>", (body((3,), "TEXT", partial=(100, 5)),)),
        (
            b'(FLAGS BODY.PEEK[HEADER.FIELDS (From To "Subject" {7}\r\nX-Thing)])',
            (
                A("FLAGS"),
                body(text="HEADER.FIELDS", fields=("FROM", "TO", "SUBJECT", "X-THING"), peek=True),
            ),
        ),
        (
            b"BODY[1.HEADER.FIELDS.NOT (Received)]",
            (body((1,), "HEADER.FIELDS.NOT", ("RECEIVED",)),),
        ),
    ],
)
def test_fetch_items(items: bytes, expected: tuple[FetchAttr | FetchBody, ...]) -> None:
    event = parse(b"a FETCH 1:3,5 " + items + b"\r\n")
    assert event == Fetch("a", False, seq((1, 3), (5, 5)), expected)


def test_uid_fetch_always_includes_uid() -> None:
    event = parse(b"a UID FETCH 100:* (FLAGS)\r\n")
    assert event == Fetch("a", True, seq((100, None)), (A("FLAGS"), A("UID")))
    event = parse(b"a UID FETCH 100 (UID FLAGS)\r\n")
    assert isinstance(event, Fetch)
    assert event.items == (A("UID"), A("FLAGS"))


def test_fetch_changedsince_and_vanished() -> None:
    event = parse(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert event == Fetch(
        "a", True, seq((300, 500)), (A("FLAGS"), A("UID")), changed_since=12345, vanished=True
    )
    event = parse(b"a FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 0)\r\n")
    assert isinstance(event, Fetch)
    assert event.changed_since == 0
    assert not event.vanished


@pytest.mark.parametrize(
    "items",
    [
        b"BODY.PEEK",
        b"BODY[",
        b"BODY[1.]",
        b"BODY[0]",
        b"BODY[MIME]",
        b"BODY[HEADER.FIELDS]",
        b"BODY[HEADER.FIELDS ()]",
        b"BODY[FOO]",
        b"BODY[]<0>",
        b"BODY[]<0.0>",
        b"(ALL)",
        b"()",
        b"(FLAGS",
        b"FLAGS (CHANGEDSINCE 5 VANISHED)",  # VANISHED needs UID FETCH
        b"FLAGS (VANISHED)",
        b"FLAGS (FROB)",
        b"FLAGS (CHANGEDSINCE 99999999999999999999)",
    ],
)
def test_fetch_malformed(items: bytes) -> None:
    bad(b"a FETCH 1 " + items + b"\r\n")


def test_uid_fetch_vanished_without_changedsince_is_bad() -> None:
    _, out = bad(b"a UID FETCH 1:* FLAGS (VANISHED)\r\n")
    assert out == b"a BAD VANISHED needs UID FETCH and CHANGEDSINCE\r\n"


# ---------------------------------------------------------------------------------------
# SEARCH


@pytest.mark.parametrize(
    ("criteria", "key"),
    [
        (b"ALL", SearchFlag("ALL")),
        *[
            (name.encode(), SearchFlag(name))
            for name in (
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
            )
        ],
        *[
            (name.encode() + b' "x y"', SearchText(name, "x y"))
            for name in ("BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO")
        ],
        (b"from bob", SearchText("FROM", "bob")),
        (b'SUBJECT "' + THAI.encode() + b'"', SearchText("SUBJECT", THAI)),
        (b'HEADER Message-ID "<a@b>"', SearchHeader("MESSAGE-ID", "<a@b>")),
        (b'HEADER X-Empty ""', SearchHeader("X-EMPTY", "")),
        (b"KEYWORD $Forwarded", SearchKeyword("KEYWORD", "$Forwarded")),
        (b"UNKEYWORD Junk", SearchKeyword("UNKEYWORD", "Junk")),
        (b"BEFORE 1-Feb-1994", SearchDate("BEFORE", dt.date(1994, 2, 1))),
        (b'ON "01-feb-2024"', SearchDate("ON", dt.date(2024, 2, 1))),
        (b"SINCE 29-Feb-2024", SearchDate("SINCE", dt.date(2024, 2, 29))),
        (b"SENTBEFORE 1-Jan-2000", SearchDate("SENTBEFORE", dt.date(2000, 1, 1))),
        (b"SENTON 1-Jan-2000", SearchDate("SENTON", dt.date(2000, 1, 1))),
        (b"SENTSINCE 1-Jan-2000", SearchDate("SENTSINCE", dt.date(2000, 1, 1))),
        (b"LARGER 10000", SearchSize("LARGER", 10000)),
        (b"SMALLER 0", SearchSize("SMALLER", 0)),
        (b"UID 1:100,200", SearchSequence(True, seq((1, 100), (200, 200)))),
        (b"2:4,*", SearchSequence(False, seq((2, 4), (None, None)))),
        (b"NOT SEEN", SearchNot(SearchFlag("SEEN"))),
        (b"NOT NOT SEEN", SearchNot(SearchNot(SearchFlag("SEEN")))),
        (b"OR SEEN FLAGGED", SearchOr(SearchFlag("SEEN"), SearchFlag("FLAGGED"))),
        (
            b"OR (FROM a TO b) NOT 1:5",
            SearchOr(
                SearchAnd((SearchText("FROM", "a"), SearchText("TO", "b"))),
                SearchNot(SearchSequence(False, seq((1, 5)))),
            ),
        ),
        (b"(SEEN)", SearchAnd((SearchFlag("SEEN"),))),
        (b"SEEN FLAGGED", SearchAnd((SearchFlag("SEEN"), SearchFlag("FLAGGED")))),
        (b"MODSEQ 620162338", SearchModseq(620162338)),
        (b"MODSEQ 0", SearchModseq(0)),
        (
            b'MODSEQ "/flags/\\\\draft" all 620162338',
            SearchModseq(620162338, "/flags/\\draft", "all"),
        ),
    ],
)
def test_search_keys(criteria: bytes, key: object) -> None:
    assert parse(b"a SEARCH " + criteria + b"\r\n") == Search("a", False, None, key)  # type: ignore[arg-type]


def test_search_thai_literal_with_charset() -> None:
    thai = "ประชุม".encode()
    client = Client(State.SELECTED)
    assert client.send(b"a UID SEARCH CHARSET utf-8 SUBJECT {%d}\r\n" % len(thai)) == []
    assert client.out() == b"+ Ready for literal\r\n"
    assert client.send(thai + b" UNSEEN\r\n") == [
        Search(
            "a",
            True,
            "UTF-8",
            SearchAnd((SearchText("SUBJECT", "ประชุม"), SearchFlag("UNSEEN"))),
        )
    ]


def test_search_us_ascii_charset() -> None:
    event = parse(b"a SEARCH CHARSET US-ASCII TEXT hello\r\n")
    assert isinstance(event, Search)
    assert event.charset == "US-ASCII"


def test_search_bad_charset() -> None:
    event, out = bad(b"a SEARCH CHARSET ISO-8859-11 TEXT x\r\n")
    assert out == b"a BAD [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    assert event.code == "BADCHARSET (UTF-8 US-ASCII)"


@pytest.mark.parametrize(
    ("opts", "returns"),
    [
        (b"RETURN (MIN MAX COUNT)", ("MIN", "MAX", "COUNT")),
        (b"RETURN ()", ()),
        (b"return (all save)", ("ALL", "SAVE")),
    ],
)
def test_esearch_return_options(opts: bytes, returns: tuple[str, ...]) -> None:
    event = parse(b"a UID SEARCH " + opts + b" CHARSET UTF-8 UNDELETED\r\n")
    assert event == Search("a", True, "UTF-8", SearchFlag("UNDELETED"), returns)


@pytest.mark.parametrize(
    "criteria",
    [
        b"RETURN (FROB) ALL",
        b"RETURN ALL",
        b"OR SEEN",
        b"NOT",
        b"(SEEN",
        b"()",
        b"BEFORE 1-Foo-1994",
        b"BEFORE 32-Jan-1994",
        b"BEFORE 1994-01-01",
        b"LARGER x",
        b"LARGER 4294967296",
        b"HEADER X",
        b"KEYWORD",
        b"UID x",
        b'MODSEQ "/flags/x" nope 5',
        b'SUBJECT "\xff"',
        b"ALL ",
        b"(" * 100 + b"ALL" + b")" * 100,
        b"NOT " * 100 + b"ALL",
    ],
)
def test_search_malformed(criteria: bytes) -> None:
    bad(b"a SEARCH " + criteria + b"\r\n")


# ---------------------------------------------------------------------------------------
# IDLE


def test_idle_done() -> None:
    client = Client(State.SELECTED)
    assert client.send(b"a IDLE\r\n") == [Idle("a")]
    client.conn.continuation("idling")
    client.conn.untagged("3 EXISTS")
    assert client.send(b"DONE\r\n", bytewise=True) == [IdleDone("a")]
    client.conn.tagged("a", "OK", "IDLE terminated")
    assert client.out() == b"+ idling\r\n* 3 EXISTS\r\na OK IDLE terminated\r\n"
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


def test_idle_done_is_case_insensitive() -> None:
    client = Client(State.AUTHENTICATED)
    client.send(b"a IDLE\r\n")
    assert client.send(b"done\r\n") == [IdleDone("a")]


def test_idle_anything_but_done_is_bad_and_ends_idle() -> None:
    client = Client(State.SELECTED)
    client.send(b"a IDLE\r\n")
    client.conn.continuation("idling")
    client.out()
    assert client.send(b"b NOOP\r\nc NOOP\r\n") == [BadCommand("a", "Expected DONE"), Noop("c")]
    assert client.out() == b"a BAD Expected DONE\r\n"


def test_idle_refused_by_server() -> None:
    client = Client(State.SELECTED)
    client.send(b"a IDLE\r\n")
    client.conn.tagged("a", "NO", "Not now")
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


# ---------------------------------------------------------------------------------------
# Sequence sets


def test_sequence_set_contains() -> None:
    s = seq((1, 1), (3, 5), (7, None))
    assert [n for n in range(1, 12) if s.contains(n, 10)] == [1, 3, 4, 5, 7, 8, 9, 10]
    assert not s.contains(2, 10)
    assert s.contains(6, 6)  # 7:* with * = 6 is 6:7
    assert not s.contains(11, 10)


def test_sequence_set_resolve() -> None:
    s = seq((7, None), (1, 1), (3, 5), (4, 6))
    assert list(s.resolve(10)) == [range(1, 2), range(3, 11)]
    assert list(seq((5, 2)).resolve(10)) == [range(2, 6)]
    assert list(seq((None, None)).resolve(0)) == []
    assert list(seq((1, None)).resolve(0)) == [range(1, 2)]
    assert list(seq((2, 2), (1, 1)).resolve(9)) == [range(1, 3)]


def test_sequence_set_str() -> None:
    assert str(seq((1, 1), (3, 5), (7, None))) == "1,3:5,7:*"
    assert str(seq((None, None))) == "*"


def test_sequence_set_parsed_from_the_wire() -> None:
    event = parse(b"a FETCH 1,3:5,7:*,*:9 FLAGS\r\n")
    assert isinstance(event, Fetch)
    assert event.sequence_set == seq((1, 1), (3, 5), (7, None), (None, 9))
    assert str(event.sequence_set) == "1,3:5,7:*,*:9"


@pytest.mark.parametrize(
    ("uids", "text"),
    [
        ([], ""),
        ([5], "5"),
        ([1, 2, 3], "1:3"),
        ([9, 1, 2, 3, 7, 8, 2], "1:3,7:9"),
        ([1, 3, 5], "1,3,5"),
    ],
)
def test_encode_uid_set(uids: list[int], text: str) -> None:
    assert encode_uid_set(uids) == text


# ---------------------------------------------------------------------------------------
# Response encoding


def test_tagged_with_code() -> None:
    conn = ServerConnection()
    conn.tagged("A1", "OK", "SELECT completed", "READ-WRITE")
    conn.tagged("A2", "NO", "No such mailbox")
    conn.tagged("A3", "BAD", "line\r\nbreak")
    assert conn.data_to_send() == (
        b"A1 OK [READ-WRITE] SELECT completed\r\nA2 NO No such mailbox\r\nA3 BAD line  break\r\n"
    )
    assert conn.data_to_send() == b""


def test_untagged_and_continuation() -> None:
    conn = ServerConnection()
    conn.untagged("OK [CAPABILITY IMAP4rev1 LITERAL+] edgebox ready")
    conn.untagged(b"1 FETCH (BODY[] " + quote("a\r\nb") + b")")
    conn.continuation("idling")
    assert conn.data_to_send() == (
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+] edgebox ready\r\n"
        b"* 1 FETCH (BODY[] {4}\r\na\r\nb)\r\n"
        b"+ idling\r\n"
    )


def test_an_untagged_block_is_queued_as_it_is() -> None:
    conn = ServerConnection()
    block = b"* 1 FETCH (UID 4 FLAGS ())\r\n* 2 FETCH (UID 7 FLAGS (\\Seen))\r\n"
    conn.untagged_block(block)
    conn.untagged_block(b"")
    assert conn.queued == len(block)
    assert conn.data_to_send() == block
    for unframed in (b"1 FETCH (UID 4)\r\n", b"* 1 FETCH (UID 4)"):
        with pytest.raises(ValueError, match="untagged"):
            conn.untagged_block(unframed)


def test_bye_closes() -> None:
    conn = ServerConnection()
    conn.bye("Server shutting down")
    assert conn.data_to_send() == b"* BYE Server shutting down\r\n"
    assert conn.next_event() is CLOSED


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("hello", b'"hello"'),
        ("", b'""'),
        ('say "hi" \\ bye', b'"say \\"hi\\" \\\\ bye"'),
        (b"bytes", b'"bytes"'),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("ไทย", b"{9}\r\n" + "ไทย".encode()),
        (b"nul\x00", b"{4}\r\nnul\x00"),
        ("x" * 1024, b'"' + b"x" * 1024 + b'"'),
        ("x" * 1025, b"{1025}\r\n" + b"x" * 1025),
    ],
)
def test_quote(value: str | bytes, wire: bytes) -> None:
    assert quote(value) == wire


def test_nstring() -> None:
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'


def test_flag_list() -> None:
    assert flag_list(["\\Seen", "$Label1"]) == "(\\Seen $Label1)"
    assert flag_list([]) == "()"


def test_mailbox_name() -> None:
    assert mailbox_name("กล่องจดหมาย") == b'"&DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-"'


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (
            dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
            "07-Feb-1994 21:52:25 -0800",
        ),
        (
            dt.datetime(2024, 12, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=7))),
            "31-Dec-2024 23:59:59 +0700",
        ),
        (
            dt.datetime(2024, 3, 1, 0, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
            "01-Mar-2024 00:00:00 +0530",
        ),
        (dt.datetime(2024, 3, 1, 0, 0, 0), "01-Mar-2024 00:00:00 +0000"),
    ],
)
def test_imap_date(when: dt.datetime, text: str) -> None:
    assert imap_date(when) == text


def test_imap_date_round_trips_through_append() -> None:
    when = dt.datetime(2025, 6, 9, 8, 7, 6, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    event = parse(b'a APPEND INBOX "%s" {0}\r\n\r\n' % imap_date(when).encode())
    assert isinstance(event, Append)
    assert event.internal_date == when


def test_idle_interrupted_by_command_with_literal_plus() -> None:
    client = Client(State.SELECTED)
    client.send(b"a IDLE\r\n")
    events = client.send(b"b LOGIN {3+}\r\nx y\r\nc NOOP\r\n")
    assert events == [BadCommand("a", "Expected DONE"), Noop("c")]
