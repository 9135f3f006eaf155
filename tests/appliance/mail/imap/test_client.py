"""The IMAP client core: byte scenarios for what the replicator sends and reads, and
hypothesis tests that feed it garbage (a server can send anything)."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.mail.imap.client import (
    NEED_DATA,
    Capabilities,
    ClientConfig,
    ClientConnection,
    Continuation,
    Done,
    Enabled,
    Event,
    Exists,
    Expunge,
    FetchData,
    ImapProtocolError,
    ListEntry,
    MailboxFlags,
    SearchResult,
    Sentinel,
    Status,
    StatusData,
    Unhandled,
    Vanished,
    parse_datetime,
    parse_response,
    parse_uid_set,
    plain_response,
    uid_set,
)


def events(conn: ClientConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    out = []
    while not isinstance(event := conn.next_event(), Sentinel):
        out.append(event)
    return out


def test_greeting_capabilities_and_tagged_completion() -> None:
    conn = ClientConnection()
    got = events(conn, b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
    assert got[0] == Status("OK", got[0].code, "ready")  # type: ignore[union-attr]
    assert conn.capabilities == {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}
    tag = conn.capability()
    assert conn.data_to_send() == f"{tag} CAPABILITY\r\n".encode()
    got = events(conn, f"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR\r\n{tag} OK done\r\n".encode())
    assert got == [Capabilities(frozenset({"IMAP4REV1", "LITERAL+", "SASL-IR"})),
                   Done(tag, "OK", None, "done")]  # fmt: skip
    assert conn.capabilities == {"IMAP4REV1", "LITERAL+", "SASL-IR"}


def test_authenticate_plain_with_authzid_rfc4616() -> None:
    assert base64.b64decode(plain_response("a@x.go.th", "svc", "pw")) == b"a@x.go.th\0svc\0pw"
    with pytest.raises(ValueError, match="NUL"):
        plain_response("a\0b", "svc", "pw")
    # With SASL-IR (RFC 4959) the response rides on the command line.
    conn = ClientConnection(capabilities=frozenset({"SASL-IR"}))
    tag = conn.authenticate_plain("a@x.go.th", "svc", "pw")
    assert (
        conn.data_to_send()
        == f"{tag} AUTHENTICATE PLAIN ".encode()
        + plain_response("a@x.go.th", "svc", "pw")
        + b"\r\n"
    )
    # Without it, the response waits for the server's "+".
    conn = ClientConnection()
    tag = conn.authenticate_plain("a@x.go.th", "svc", "pw")
    assert conn.data_to_send() == f"{tag} AUTHENTICATE PLAIN\r\n".encode()
    assert conn.data_to_send() == b""
    assert events(conn, b"+ \r\n") == [Continuation(b"")]
    assert conn.data_to_send() == plain_response("a@x.go.th", "svc", "pw") + b"\r\n"


def test_append_waits_for_continuation_without_literal_plus() -> None:
    conn = ClientConnection()
    tag = conn.append("Sent", b"Subject: x\r\n\r\nhi\r\n", flags=["\\Seen"], internal_date=0)
    first = conn.data_to_send()
    assert first == (f'{tag} APPEND "Sent" (\\Seen) "01-Jan-1970 00:00:00 +0000" {{18}}\r\n'
                     .encode())  # fmt: skip
    assert conn.data_to_send() == b""
    events(conn, b"+ go ahead\r\n")
    assert conn.data_to_send() == b"Subject: x\r\n\r\nhi\r\n\r\n"
    got = events(conn, f"{tag} OK [APPENDUID 38505 3955] APPEND completed\r\n".encode())
    assert isinstance(got[0], Done)
    assert got[0].code is not None
    assert (got[0].code.name, got[0].code.args) == ("APPENDUID", "38505 3955")


def test_refused_literal_drops_the_rest_of_the_command() -> None:
    conn = ClientConnection()
    tag = conn.append("Sent", b"x" * 10)
    after = conn.noop()
    conn.data_to_send()
    events(conn, f"{tag} NO [TOOBIG] too big\r\n".encode())
    assert conn.data_to_send() == f"{after} NOOP\r\n".encode()


def test_literal_plus_sends_at_once() -> None:
    conn = ClientConnection(capabilities=frozenset({"LITERAL+"}))
    tag = conn.append("Drafts", b"abc")
    assert conn.data_to_send() == f'{tag} APPEND "Drafts" {{3+}}\r\nabc\r\n'.encode()


def test_select_with_qresync_and_its_responses() -> None:
    conn = ClientConnection()
    tag = conn.select("INBOX", qresync=(67890007, 20050715194045000, "41,43:211"))
    assert conn.data_to_send() == (
        f'{tag} SELECT "INBOX" (QRESYNC (67890007 20050715194045000 41,43:211))\r\n'.encode()
    )
    # RFC 7162 §3.2.5.2's example, abridged.
    got = events(
        conn,
        b"* 317 EXISTS\r\n"
        b"* OK [UIDVALIDITY 67890007] UIDVALIDITY\r\n"
        b"* OK [UIDNEXT 30013] Predicted next UID\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Draft \\Deleted \\Seen $NotJunk)\r\n"
        b"* OK [HIGHESTMODSEQ 20060128194045007] Highest\r\n"
        b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
        b"* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (20060115194045000))\r\n"
        b"* 1 EXPUNGE\r\n" + f"{tag} OK [READ-WRITE] mailbox selected\r\n".encode(),
    )
    assert got[0] == Exists(317)
    assert isinstance(got[1], Status)
    assert got[1].code
    assert got[1].code.number() == 67890007
    assert isinstance(got[3], MailboxFlags)
    assert "$NotJunk" in got[3].flags
    assert isinstance(got[4], Status)
    assert got[4].code
    assert got[4].code.number() == 20060128194045007
    assert isinstance(got[5], Vanished)
    assert got[5].earlier
    assert list(got[5].uids())[:3] == [41, 43, 44]
    assert got[6] == FetchData(seq=49, uid=117, flags=("\\Seen", "\\Answered"),
                               modseq=20060115194045000)  # fmt: skip
    assert got[7] == Expunge(1)
    assert isinstance(got[8], Done)
    assert got[8].ok


def test_fetch_with_literal_body_internaldate_and_sections() -> None:
    conn = ClientConnection()
    body = b"Message-ID: <a@x>\r\n\r\nline {5}\r\n"
    data = (
        b'* 12 FETCH (UID 5 RFC822.SIZE 44 INTERNALDATE " 7-Feb-1994 21:52:25 -0800"'
        b" FLAGS () BODY[] {%d}\r\n" % len(body) + body
        + b" BODY[HEADER.FIELDS (MESSAGE-ID)] {19}\r\nMessage-ID: <a@x>\r\n"
        b' ENVELOPE ("date" "subj" NIL NIL NIL NIL NIL NIL NIL "<a@x>"))\r\n'
    )  # fmt: skip
    # Fed one byte at a time: framing must not depend on how reads are split.
    got: list[Event] = []
    for i in range(len(data)):
        got += events(conn, data[i : i + 1])
    (item,) = got
    assert isinstance(item, FetchData)
    assert (item.seq, item.uid, item.size, item.flags) == (12, 5, 44, ())
    assert item.internal_date == parse_datetime("08-Feb-1994 05:52:25 +0000")
    assert item.section() == body
    assert item.section("body[header.fields (message-id)]") == b"Message-ID: <a@x>\r\n"
    assert isinstance(item.envelope, list)
    assert item.envelope[9] == b"<a@x>"


def test_list_status_search_enabled_and_unknown() -> None:
    conn = ClientConnection()
    got = events(
        conn,
        b'* LIST (\\HasNoChildren \\Sent) "." Sent\r\n'
        b'* LIST (\\Noselect) "/" "&AQEBAQ-/x"\r\n'
        b"* LIST () NIL INBOX\r\n"
        b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 7)\r\n'
        b"* SEARCH 2 5 9 (MODSEQ 917162500)\r\n"
        b"* SEARCH\r\n"
        b"* ENABLED QRESYNC\r\n"
        b'* ESEARCH (TAG "x") UID COUNT 3\r\n',
    )
    assert got[0] == ListEntry(("\\HasNoChildren", "\\Sent"), ".", "Sent")
    assert got[1] == ListEntry(("\\Noselect",), "/", "\u0101\u0101/x")
    assert got[2] == ListEntry((), None, "INBOX")
    assert isinstance(got[3], StatusData)
    assert got[3].get("uidnext") == 7
    assert got[4] == SearchResult((2, 5, 9), 917162500)
    assert got[5] == SearchResult(())
    assert got[6] == Enabled(frozenset({"QRESYNC"}))
    assert isinstance(got[7], Unhandled)
    assert got[7].name == "ESEARCH"
    assert conn.enabled == {"QRESYNC"}


def test_store_and_fetch_modifiers_rfc7162() -> None:
    conn = ClientConnection()
    tag = conn.uid_store("1:3", "+FLAGS", ["\\Seen"], unchangedsince=12, silent=True)
    assert (
        conn.data_to_send()
        == f"{tag} UID STORE 1:3 (UNCHANGEDSINCE 12) +FLAGS.SILENT (\\Seen)\r\n".encode()
    )
    tag = conn.uid_fetch("1:*", "(UID FLAGS)", changedsince=9, vanished=True)
    assert (
        conn.data_to_send()
        == f"{tag} UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE 9 VANISHED)\r\n".encode()
    )
    got = events(conn, f"{tag} OK [MODIFIED 7,9] Conditional STORE failed\r\n".encode())
    assert isinstance(got[0], Done)
    assert got[0].code
    assert parse_uid_set(got[0].code.args) == (
        (7, 7),
        (9, 9),
    )


def test_starttls_refuses_injected_plaintext() -> None:
    conn = ClientConnection(capabilities=frozenset({"STARTTLS"}))
    tag = conn.starttls()
    conn.data_to_send()
    events(conn, f"{tag} OK begin TLS\r\n".encode())
    conn.tls_started()
    assert conn.capabilities == frozenset()  # learnt again over TLS
    conn = ClientConnection()
    tag = conn.starttls()
    events(conn, f"{tag} OK begin TLS\r\n* OK injected\r".encode())
    with pytest.raises(ImapProtocolError, match="after the STARTTLS"):
        conn.tls_started()


def test_uid_sets() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert uid_set([]) == ""
    assert parse_uid_set("3:1,7") == ((1, 3), (7, 7))
    for bad in ("", "0", "1:", "a", "1,,2", "*"):
        with pytest.raises(ImapProtocolError):
            parse_uid_set(bad)


@pytest.mark.parametrize(
    "raw",
    [
        b"* 3 FETCH (UID 5\r\n",  # unclosed
        b"* 3 FETCH (MODSEQ 5)\r\n",  # MODSEQ needs parens
        b"* 3 FETCH (UID x)\r\n",
        b'* 3 FETCH (INTERNALDATE "yesterday")\r\n',
        b"* 3 FETCH (BODY[] {10}\r\nabc)\r\n",  # literal shorter than announced
        b"A1 MAYBE fine\r\n",
        b"* VANISHED 0\r\n",
        b'* LIST (\\X) "/"\r\n',
        b"* STATUS x (MESSAGES)\r\n",
    ],
)
def test_malformed_responses_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ImapProtocolError):
        parse_response(raw)


def test_limits_on_line_and_literal() -> None:
    conn = ClientConnection(ClientConfig(max_line=100, max_literal=10))
    with pytest.raises(ImapProtocolError, match="too long"):
        events(conn, b"* OK " + b"x" * 200)
    conn = ClientConnection(ClientConfig(max_line=100, max_literal=10))
    with pytest.raises(ImapProtocolError, match="over the limit"):
        events(conn, b"* 1 FETCH (BODY[] {11}\r\n")


def test_eof_in_the_middle_of_a_response() -> None:
    conn = ClientConnection()
    conn.receive_data(b"* 1 FETCH (BODY[] {5}\r\nab")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(ImapProtocolError, match="closed"):
        conn.next_event()


# -- hypothesis ---------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_PIECES = [
    b"* ", b"A1 ", b"+ ", b"OK", b"NO", b"BAD", b"BYE", b" ", b"\r\n", b"(", b")", b"[",
    b"]", b"{3}\r\n", b"{0}\r\n", b"~{2}\r\n", b'"', b"\\", b"NIL", b"FETCH", b"UID", b"12",
    b"FLAGS", b"BODY[]", b"BODY[HEADER]<0>", b"MODSEQ", b"VANISHED", b"(EARLIER)", b"1:3",
    b"LIST", b"STATUS", b"SEARCH", b"CAPABILITY", b"EXISTS", b"[UIDVALIDITY 3]", b"\x00",
    b"\xff", b"INTERNALDATE", b'"01-Jan-2024 00:00:00 +0000"', b"ENVELOPE", b"\\Seen",
]  # fmt: skip

responses = st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=40).map(
    b"".join
)


@FUZZ
@given(data=responses, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_garbage_gives_events_or_protocol_errors_only(data: bytes, cuts: list[int]) -> None:
    """Whatever the server sends, in whatever pieces: events or ImapProtocolError, the
    same however the bytes were split, and the buffer only holds an unfinished response."""

    def run(chunks: list[bytes]) -> tuple[list[Event], bool]:
        conn = ClientConnection(ClientConfig(max_line=1000, max_literal=1000))
        got: list[Event] = []
        try:
            for chunk in chunks:
                got += events(conn, chunk)
        except ImapProtocolError:
            return got, True
        return got, False

    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    whole = run([data])
    split = run(chunks)
    assert whole == split


@FUZZ
@given(
    uid=st.integers(min_value=1, max_value=2**32 - 1),
    modseq=st.integers(min_value=1, max_value=2**63 - 1),
    body=st.binary(max_size=300),
    flags=st.lists(st.sampled_from(["\\Seen", "\\Flagged", "$Work", "\\Deleted"]), unique=True),
)
def test_fetch_round_trip(uid: int, modseq: int, body: bytes, flags: list[str]) -> None:
    """Any body bytes (CRLF, "{5}", NUL) survive literal framing unchanged."""
    raw = (
        b"* 1 FETCH (UID %d MODSEQ (%d) FLAGS (%s) BODY[] {%d}\r\n"
        % (uid, modseq, " ".join(flags).encode(), len(body))
        + body
        + b")\r\n"
    )
    conn = ClientConnection()
    (item,) = events(conn, raw)
    assert isinstance(item, FetchData)
    assert (item.uid, item.modseq, item.flags, item.section()) == (uid, modseq, tuple(flags), body)
