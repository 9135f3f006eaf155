"""The IMAP4rev1 server protocol (RFC 3501) as a state machine: bytes in, commands out.

Everything about the *wire* lives here: command framing with literals, the formal syntax
of every command (RFC 3501 §9 and the extensions below), which command is allowed in
which state, literal size limits, and the few answers the core gives on its own (the
literal continuation, BAD for malformed input, TOOBIG, PRIVACYREQUIRED). Nothing about
*mailboxes* does: whether a mailbox exists, what a message contains, which flags it has.
Those come out as frozen command dataclasses and the I/O layer answers each with
`untagged()` and `tagged()`. There are no sockets, no trio and no clock in this package.

How the server drives it::

    conn = ServerConnection(ImapConfig())
    conn.untagged("OK [CAPABILITY IMAP4rev1 ...] edgebox ready")
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send()); conn.receive_data(recv())
        elif event is CLOSED:
            send(conn.data_to_send()); break
        elif isinstance(event, BadCommand):
            count_error()            # the core has already answered BAD
        else:
            ...answer with conn.untagged(...) / conn.tagged(event.tag, "OK", "done")

Framing rules (RFC 3501 §4.3, §7.5; RFC 7888):

- A command is one line, except that a line ending in ``{n}`` or ``{n+}`` is followed by
  exactly n bytes of literal and then the rest of the command.
- ``{n}`` is synchronising: the core queues ``+ Ready for literal`` itself. ``{n+}``
  (LITERAL+) is not. Before any literal is read the tag, command name and state are
  checked, so a client is never asked to upload what will be refused anyway.
- Literal bytes are bounded: APPEND may carry ``max_literal`` bytes of literal in one
  command, every other command ``max_line``. A synchronising literal over the bound is
  refused with ``BAD [TOOBIG]`` before it is read (RFC 7888 §4 / RFC 4469 §5). For a
  non-synchronising one the client sends the bytes anyway; RFC 7888 §4 lets the server
  either close the connection or read and discard them. We discard: a countdown, no
  buffer, then skip to the end of the command and carry on. A size above
  ``max_discard`` is not worth waiting for: the core says BYE and closes.
- literal8 (``~{n}``, RFC 3516 §4.4) is taken in APPEND only, where a message may hold
  NUL bytes; in any other command it is refused with BAD in the same way. The
  messages of one MULTIAPPEND (RFC 3502) share APPEND's ``max_literal``.
- A line longer than ``max_line`` is answered BAD and skipped to its end.

State rules (RFC 3501 §3 and §6; the table is `states.ALLOWED`, the moves
`states.TRANSITIONS`):

- Any state: CAPABILITY, NOOP, LOGOUT, ID (RFC 2971 §3.1).
- ``NOT_AUTHENTICATED``: STARTTLS, AUTHENTICATE, LOGIN.
- ``AUTHENTICATED``: ENABLE (RFC 5161 §3.1), and the mailbox commands, which are also
  allowed in ``SELECTED``: SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
  UNSUBSCRIBE, LIST, LSUB, NAMESPACE, STATUS, APPEND, IDLE, GETQUOTA, GETQUOTAROOT.
- ``SELECTED``: CHECK, CLOSE, UNSELECT, EXPUNGE, SEARCH, SORT, THREAD, FETCH, STORE,
  COPY, MOVE and their UID forms.
- The server moves the core between states with `authenticated()`, `selected()` and
  `unselected()`; the LOGOUT command moves it to ``LOGOUT`` itself.

Exchanges that take over the line (RFC 3501 §6.2.2 AUTHENTICATE, RFC 2177 IDLE): after
`Authenticate` or `Idle` is returned, the following lines belong to that exchange
(SASL responses, or DONE) until the server ends it with `tagged()` for that tag. After
`StartTls` nothing is parsed (`next_event()` says NEED_DATA) until `tls_started()`, or
until the server answers NO or BAD; `tls_started()` drops the plaintext read so far.

Every BAD the core sends (and the ``NO [PRIVACYREQUIRED]`` for LOGIN or AUTHENTICATE
before TLS when ``require_tls_for_auth``) is also returned as a `BadCommand` event, so
the I/O layer can count errors; it must not answer it again. Malformed input never
raises; misusing the API (``tls_started()`` without STARTTLS, ``tagged(.., "MAYBE")``)
does.

Strings in commands may be atoms, quoted strings or literals; quoted strings may carry
UTF-8 (RFC 6855 §3), and every string but a mailbox name is decoded as UTF-8 (a superset
of the US-ASCII default), invalid UTF-8 being BAD. Mailbox names are modified UTF-7
(RFC 3501 §5.1.3, see `mutf7`), strictly, and "INBOX" in any case is "INBOX".

Where each part lives: `events` (one frozen dataclass per command, and the values they
carry), `states` (the states, the table of commands allowed in each, the moves
between them), `parser` (the grammar of one command), `encoder` (how values are written
in responses) and `connection` (`ServerConnection`: framing, literals, the exchanges
that take over the line, and the responses queued). Everything a server needs is
importable from this package.
"""

from __future__ import annotations

# The package's API is each module's __all__: a new event or helper is exported where
# it is defined, and this file does not repeat the list.
from appliance.mail.imap.protocol.connection import *  # noqa: F403
from appliance.mail.imap.protocol.encoder import *  # noqa: F403
from appliance.mail.imap.protocol.events import *  # noqa: F403
from appliance.mail.imap.protocol.states import *  # noqa: F403
