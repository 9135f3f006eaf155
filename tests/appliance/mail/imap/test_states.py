"""The IMAP states table (RFC 3501 §3, RFC 9051 §3) and the connection's use of it."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from appliance.mail.imap.protocol import (
    ALLOWED,
    CLOSED,
    NEED_DATA,
    TRANSITIONS,
    BadCommand,
    ImapConfig,
    ServerConnection,
    State,
    Transition,
)
from appliance.mail.imap.protocol import states as imap_states
from appliance.mail.imap.protocol.parser import PARSERS, UID_COMMANDS

N, A, S, L = State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED, State.LOGOUT


def connection_in(state: State) -> ServerConnection:
    conn = ServerConnection(ImapConfig(), tls_active=True)
    if state in (A, S):
        conn.authenticated()
    if state is S:
        conn.selected()
    return conn


def first_answer(conn: ServerConnection, line: bytes) -> tuple[object, bytes]:
    conn.receive_data(line)
    event = conn.next_event()
    return event, conn.data_to_send()


def test_every_command_the_grammar_knows_has_a_row_and_no_other() -> None:
    assert set(ALLOWED) == set(PARSERS)
    assert UID_COMMANDS.issubset(ALLOWED)


def test_the_table_says_what_rfc_3501_section_6_says() -> None:
    # §6.1: any state; §6.2: not authenticated; §6.3: authenticated (and selected);
    # §6.4: selected only; RFC 5161 §3.1: ENABLE before any SELECT.
    assert ALLOWED["CAPABILITY"] == ALLOWED["NOOP"] == ALLOWED["LOGOUT"] == {N, A, S}
    for name in ("STARTTLS", "AUTHENTICATE", "LOGIN"):
        assert ALLOWED[name] == {N}
    for name in ("SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "LIST", "STATUS", "APPEND"):
        assert ALLOWED[name] == {A, S}
    for name in ("CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE"):
        assert ALLOWED[name] == {S}
    assert ALLOWED["ENABLE"] == {A}
    # §3.4: in the logout state nothing more is read.
    assert not any(L in states for states in ALLOWED.values())


@pytest.mark.parametrize("state", [N, A, S])
@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_the_connection_refuses_exactly_what_the_table_refuses(state: State, name: str) -> None:
    event, out = first_answer(connection_in(state), f"t1 {name}\r\n".encode())
    refusal = f"t1 BAD {name} not allowed in state {state.value}\r\n".encode()
    if state in ALLOWED[name]:
        assert b"not allowed in state" not in out
    else:
        assert event == BadCommand("t1", f"{name} not allowed in state {state.value}")
        assert out == refusal


@pytest.mark.parametrize("state", [N, A, S])
def test_uid_forms_are_allowed_where_their_command_is(state: State) -> None:
    event, out = first_answer(connection_in(state), b"u1 UID FETCH 1 FLAGS\r\n")
    if state is S:
        assert not isinstance(event, BadCommand)
    else:
        assert out == f"u1 BAD UID not allowed in state {state.value}\r\n".encode()


def test_the_connection_reads_the_table_rather_than_rules_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = dict(ALLOWED)
    changed["NOOP"] = frozenset({A})
    monkeypatch.setattr(imap_states, "ALLOWED", MappingProxyType(changed))
    _, out = first_answer(connection_in(N), b"n1 NOOP\r\n")
    assert out == b"n1 BAD NOOP not allowed in state not authenticated\r\n"


def test_transitions_follow_rfc_3501_section_3() -> None:
    assert TRANSITIONS[(N, Transition.AUTHENTICATED)] is A
    assert TRANSITIONS[(A, Transition.SELECTED)] is S
    assert TRANSITIONS[(S, Transition.SELECTED)] is S
    assert TRANSITIONS[(S, Transition.UNSELECTED)] is A
    assert all(TRANSITIONS[(state, Transition.LOGOUT)] is L for state in State)
    assert (N, Transition.SELECTED) not in TRANSITIONS
    assert (A, Transition.AUTHENTICATED) not in TRANSITIONS


def test_the_server_cannot_move_the_session_where_the_table_has_no_move() -> None:
    conn = connection_in(N)
    with pytest.raises(RuntimeError, match=r"selected\(\) in state NOT_AUTHENTICATED"):
        conn.selected()
    conn.authenticated()
    with pytest.raises(RuntimeError, match=r"authenticated\(\) in state AUTHENTICATED"):
        conn.authenticated()
    conn.selected()
    conn.unselected()
    assert conn.state is A


def test_logout_and_bye_end_the_session_from_any_state() -> None:
    conn = connection_in(S)
    conn.receive_data(b"z LOGOUT\r\nz2 NOOP\r\n")
    assert conn.next_event() is not NEED_DATA
    assert conn.state is L
    assert conn.next_event() is CLOSED
    other = connection_in(N)
    other.bye("shutting down")
    assert other.state is L
    assert other.next_event() is CLOSED
