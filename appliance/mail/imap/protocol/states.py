"""The IMAP session states (RFC 3501 §3, RFC 9051 §3), which commands each allows, and
what moves a session between them.

::

    connection ─> NOT_AUTHENTICATED ──(LOGIN / AUTHENTICATE OK)──> AUTHENTICATED
                                          (SELECT / EXAMINE OK) ─> SELECTED
    SELECTED ──(SELECT / EXAMINE OK)──> SELECTED
    SELECTED ──(CLOSE, UNSELECT, a failed SELECT)──> AUTHENTICATED
    any state ──(LOGOUT, BYE, the connection ends)──> LOGOUT

`ALLOWED` is the table of RFC 3501 §6 (and of each extension's section): a command
sent in a state that does not allow it is answered ``BAD <NAME> not allowed in state
<state>`` by the connection, before any literal of it is read. In ``LOGOUT`` nothing
is read at all, so no command is allowed there. `TRANSITIONS` is the table of moves
(as h11's ``_state.py`` keeps its own): the core moves to ``LOGOUT`` itself; the other
moves are the server's decision (a LOGIN may be refused), made through
`ServerConnection.authenticated`, `selected` and `unselected`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


class State(enum.Enum):
    #: Connected; only CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN, AUTHENTICATE
    #: (RFC 3501 §3.1).
    NOT_AUTHENTICATED = "not authenticated"
    #: Logged in; mailbox commands, no message commands (RFC 3501 §3.2).
    AUTHENTICATED = "authenticated"
    #: A mailbox is selected; message commands allowed (RFC 3501 §3.3).
    SELECTED = "selected"
    #: LOGOUT received or the connection is ending: nothing more is read (RFC 3501 §3.4).
    LOGOUT = "logout"


_N = State.NOT_AUTHENTICATED
_A = State.AUTHENTICATED
_S = State.SELECTED
_ANY = frozenset({_N, _A, _S})
_AUTHED = frozenset({_A, _S})

#: Command name -> the states it is allowed in. RFC 3501 §6.1 (any state), §6.2 (not
#: authenticated), §6.3 (authenticated, and so also selected), §6.4 (selected); the UID
#: forms (§6.4.8) are allowed where their command is.
ALLOWED: Final[Mapping[str, frozenset[State]]] = MappingProxyType(
    {
        "CAPABILITY": _ANY,  # RFC 3501 §6.1.1
        "NOOP": _ANY,  # §6.1.2
        "LOGOUT": _ANY,  # §6.1.3
        "ID": _ANY,  # RFC 2971 §3.1
        "STARTTLS": frozenset({_N}),  # §6.2.1
        "AUTHENTICATE": frozenset({_N}),  # §6.2.2
        "LOGIN": frozenset({_N}),  # §6.2.3
        # RFC 5161 §3.1: ENABLE is valid in the authenticated state only (before any
        # SELECT), as the extensions it turns on change what SELECT answers.
        "ENABLE": frozenset({_A}),
        "SELECT": _AUTHED,  # §6.3.1
        "EXAMINE": _AUTHED,  # §6.3.2
        "CREATE": _AUTHED,  # §6.3.3
        "DELETE": _AUTHED,  # §6.3.4
        "RENAME": _AUTHED,  # §6.3.5
        "SUBSCRIBE": _AUTHED,  # §6.3.6
        "UNSUBSCRIBE": _AUTHED,  # §6.3.7
        "LIST": _AUTHED,  # §6.3.8, RFC 5258
        "LSUB": _AUTHED,  # §6.3.9
        "NAMESPACE": _AUTHED,  # RFC 2342 §5
        "STATUS": _AUTHED,  # §6.3.10
        "APPEND": _AUTHED,  # §6.3.11
        "IDLE": _AUTHED,  # RFC 2177 §3
        "GETQUOTA": _AUTHED,  # RFC 9208 §4.2
        "GETQUOTAROOT": _AUTHED,  # RFC 9208 §4.3
        "CHECK": frozenset({_S}),  # §6.4.1
        "CLOSE": frozenset({_S}),  # §6.4.2
        "UNSELECT": frozenset({_S}),  # RFC 3691 §2
        "EXPUNGE": frozenset({_S}),  # §6.4.3, RFC 4315 §2.1
        "SEARCH": frozenset({_S}),  # §6.4.4, RFC 4731
        "SORT": frozenset({_S}),  # RFC 5256 §3, RFC 5267
        "CANCELUPDATE": frozenset({_S}),  # RFC 5267 §4.2
        "THREAD": frozenset({_S}),  # RFC 5256 §3
        "FETCH": frozenset({_S}),  # §6.4.5
        "STORE": frozenset({_S}),  # §6.4.6
        "COPY": frozenset({_S}),  # §6.4.7
        "MOVE": frozenset({_S}),  # RFC 6851 §3.1
    }
)


class Transition(enum.Enum):
    """What moves a session from one state to another (RFC 3501 §3)."""

    #: LOGIN or AUTHENTICATE succeeded (RFC 3501 §3.2).
    AUTHENTICATED = "authenticated"
    #: SELECT or EXAMINE succeeded (RFC 3501 §3.3), also over a selected mailbox.
    SELECTED = "selected"
    #: CLOSE or UNSELECT, or a SELECT that failed left no mailbox selected (§6.3.1).
    UNSELECTED = "unselected"
    #: LOGOUT, the server's BYE, or the end of the connection (RFC 3501 §3.4).
    LOGOUT = "logout"


#: (state, transition) -> the state after it; a pair not here cannot happen.
TRANSITIONS: Final[Mapping[tuple[State, Transition], State]] = MappingProxyType(
    {
        (_N, Transition.AUTHENTICATED): _A,
        (_A, Transition.SELECTED): _S,
        (_S, Transition.SELECTED): _S,
        (_A, Transition.UNSELECTED): _A,
        (_S, Transition.UNSELECTED): _A,
        **{(state, Transition.LOGOUT): State.LOGOUT for state in State},
    }
)


def allowed(state: State, command: str) -> bool:
    """Whether *command* (an upper-case name, UID forms by their command) may run in *state*."""
    return state in ALLOWED.get(command, frozenset())


def next_state(state: State, transition: Transition) -> State | None:
    """The state *transition* leads to from *state*, or None if it cannot happen there."""
    return TRANSITIONS.get((state, transition))


__all__ = [
    "ALLOWED",
    "TRANSITIONS",
    "State",
    "Transition",
    "allowed",
    "next_state",
]
