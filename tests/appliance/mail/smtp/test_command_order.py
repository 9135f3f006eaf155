"""The SMTP command-order table (RFC 5321 §4.1.4) and the connection's use of it."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from appliance.mail.smtp import protocol as smtp
from appliance.mail.smtp.protocol import (
    BAD_SEQUENCE,
    COMMAND_ORDER,
    NEED_DATA,
    NEED_HELO,
    NEED_MAIL,
    NEED_RCPT,
    NESTED_MAIL,
    NO_VALID_RECIPIENTS,
    MailFrom,
    RcptTo,
    Reply,
    ServerConnection,
    SessionConfig,
    State,
)

#: The states in which a line is a command, and the lines that bring a session there.
COMMAND_STATES = {
    State.HELO: [],
    State.READY: [b"EHLO client.example"],
    State.MAIL: [b"EHLO client.example", b"MAIL FROM:<a@client.example>"],
    State.RCPT: [
        b"EHLO client.example",
        b"MAIL FROM:<a@client.example>",
        b"RCPT TO:<b@box.example>",
    ],
}


def session_in(state: State) -> ServerConnection:
    """A session (TLS on, AUTH offered) brought to *state* by accepting every step."""
    conn = ServerConnection(SessionConfig("box.example"), tls_active=True)
    conn.greet()
    for line in COMMAND_STATES[state]:
        conn.receive_data(line + b"\r\n")
        event = conn.next_event()
        if isinstance(event, MailFrom | RcptTo):
            conn.accept()
            event = conn.next_event()
        assert event is NEED_DATA
    assert conn.state is state
    conn.data_to_send()
    return conn


def answer(conn: ServerConnection, line: bytes) -> bytes:
    conn.receive_data(line + b"\r\n")
    conn.next_event()
    return conn.data_to_send()


def encoded(reply: Reply) -> bytes:
    return reply.encode(enhanced_codes=True)


#: A well-formed example of each command, so that only its order can be wrong.
EXAMPLES = {
    "EHLO": b"EHLO client.example",
    "HELO": b"HELO client.example",
    "STARTTLS": b"STARTTLS",
    "AUTH": b"AUTH PLAIN",
    "MAIL": b"MAIL FROM:<c@client.example>",
    "RCPT": b"RCPT TO:<d@box.example>",
    "DATA": b"DATA",
    "BDAT": b"BDAT 0 LAST",
    "RSET": b"RSET",
    "NOOP": b"NOOP",
    "HELP": b"HELP",
    "VRFY": b"VRFY someone",
    "EXPN": b"EXPN list",
    "QUIT": b"QUIT",
}


def test_every_command_has_a_row_and_only_command_states_are_named() -> None:
    assert set(COMMAND_ORDER) == set(smtp._COMMANDS) == set(EXAMPLES)
    for refusals in COMMAND_ORDER.values():
        assert set(refusals) <= set(COMMAND_STATES)


def test_the_table_says_what_rfc_5321_section_4_1_4_says() -> None:
    # Commands that may come at any time.
    for name in ("EHLO", "HELO", "RSET", "NOOP", "HELP", "VRFY", "EXPN", "QUIT"):
        assert COMMAND_ORDER[name] == {}
    # The transaction: MAIL, then RCPT, then DATA; nothing of it before EHLO/HELO.
    assert COMMAND_ORDER["MAIL"] == {
        State.HELO: NEED_HELO, State.MAIL: NESTED_MAIL, State.RCPT: NESTED_MAIL
    }  # fmt: skip
    assert COMMAND_ORDER["RCPT"] == {State.HELO: NEED_HELO, State.READY: NEED_MAIL}
    assert COMMAND_ORDER["DATA"] == COMMAND_ORDER["BDAT"]
    assert set(COMMAND_ORDER["DATA"]) == {State.HELO, State.READY, State.MAIL}
    # STARTTLS and AUTH: after EHLO, outside a transaction.
    assert COMMAND_ORDER["STARTTLS"] == COMMAND_ORDER["AUTH"]
    assert set(COMMAND_ORDER["AUTH"]) == {State.HELO, State.MAIL, State.RCPT}


@pytest.mark.parametrize("state", list(COMMAND_STATES))
@pytest.mark.parametrize("name", ["AUTH", "MAIL", "RCPT", "DATA", "BDAT"])
def test_the_connection_refuses_exactly_what_the_table_refuses(state: State, name: str) -> None:
    # STARTTLS is left out: the session here already has TLS, which is refused first.
    conn = session_in(state)
    out = answer(conn, EXAMPLES[name])
    refusal = COMMAND_ORDER[name].get(state)
    if refusal is None:
        assert b"503" not in out
    else:
        assert out == refusal.encode(enhanced_codes=state is not State.HELO)


def test_starttls_out_of_order_is_refused_by_the_table() -> None:
    conn = ServerConnection(SessionConfig("box.example"))
    conn.greet()
    conn.data_to_send()
    assert answer(conn, b"STARTTLS") == Reply(503, "5.5.1", "Send EHLO or HELO first").encode(
        enhanced_codes=False
    )
    answer(conn, b"EHLO client.example")
    conn.receive_data(b"MAIL FROM:<a@client.example>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.accept()
    conn.next_event()
    conn.data_to_send()
    assert answer(conn, b"STARTTLS") == encoded(BAD_SEQUENCE)


def test_data_after_refused_recipients_says_none_was_valid() -> None:
    # RFC 2920 §3.1: the table's NEED_RCPT becomes "no valid recipients" once RCPTs
    # were tried and all refused.
    conn = session_in(State.MAIL)
    conn.receive_data(b"RCPT TO:<nobody@box.example>\r\n")
    assert isinstance(conn.next_event(), RcptTo)
    conn.reject(Reply(550, "5.1.1", "No such user"))
    conn.next_event()
    conn.data_to_send()
    assert answer(conn, b"DATA") == encoded(NO_VALID_RECIPIENTS)
    assert answer(session_in(State.MAIL), b"DATA") == encoded(NEED_RCPT)


def test_the_connection_reads_the_table_rather_than_rules_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = dict(COMMAND_ORDER)
    changed["MAIL"] = {State.READY: BAD_SEQUENCE}
    monkeypatch.setattr(smtp, "COMMAND_ORDER", MappingProxyType(changed))
    out = answer(session_in(State.READY), EXAMPLES["MAIL"])
    assert out == encoded(BAD_SEQUENCE)
