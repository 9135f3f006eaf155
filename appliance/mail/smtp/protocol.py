"""The SMTP server protocol (RFC 5321) as a state machine: bytes in, events and bytes out.

Everything about the *wire* lives here: command syntax, the order commands may come in,
reply codes and enhanced status codes, dot-stuffing, line and size limits, SASL
exchanges, and the error budget. Nothing about *policy* does: whether a recipient
exists, whether a password is right, where a message goes. Those questions come out as
events (`MailFrom`, `RcptTo`, `AuthAttempt`, `MessageData`, `StartTLS`), and the I/O layer
answers each with `accept()` or `reject()` before asking for the next event. There are no
sockets, no trio and no clock in this file (DESIGN.md principle 1), so every reply code
can be tested byte for byte and the parser can be fuzzed.

How the server drives it::

    conn = ServerConnection(SessionConfig(hostname="box.example"))
    conn.greet()
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send()); conn.receive_data(recv())
        elif event is CLOSED:
            send(conn.data_to_send()); break
        else:
            ...decide...; conn.accept() or conn.reject(Reply(...))

Replies are collected in an outbox and sent only when the core needs more input, which
is exactly the batching PIPELINING (RFC 2920 §3.2) asks of a server.

State rules (RFC 5321 §4.1.4, §3.3; RFC 3207; RFC 4954; the table is `COMMAND_ORDER`):

- ``HELO``: EHLO/HELO, NOOP, RSET, QUIT, HELP, VRFY, EXPN; anything else is answered
  503 "Send EHLO or HELO first".
- ``READY``: MAIL starts a transaction; AUTH and STARTTLS only here.
- ``MAIL`` → ``RCPT`` after the first accepted recipient; DATA needs one.
- ``DATA``: content until ``CRLF.CRLF``; then back to ``READY``.
- ``CHUNK``: the octets of one BDAT (RFC 3030 CHUNKING), counted, not scanned; after
  ``BDAT n LAST`` the message is complete. DATA and BDAT do not mix in one transaction.
- STARTTLS resets the session to ``HELO`` and forgets everything learnt before it.
- AUTH is refused before TLS is active (538) and not offered in EHLO.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

# ---------------------------------------------------------------------------------------
# Replies


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a code, an RFC 3463 enhanced status code, and text lines."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def encode(self, *, enhanced_codes: bool) -> bytes:
        """Render the reply; multi-line replies use ``code-text`` (RFC 5321 §4.2.1)."""
        lines = self.lines() or ("",)
        prefix = f"{self.enhanced} " if (enhanced_codes and self.enhanced) else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")


# Replies the core sends on its own, named so tests and the server speak the same words.
# RFC 5321 §4.2.2–4.2.3 for the basic codes, RFC 3463/5248 for the enhanced ones.
OK = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
HELP = Reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, None, "Start mail input; end with <CRLF>.<CRLF>")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
BAD_CHUNK_SIZE = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
LOST_FRAMING = Reply(421, "4.5.0", "Cannot find where that chunk ends, closing connection")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS = Reply(501, "5.1.7", "Bad address syntax")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")


# ---------------------------------------------------------------------------------------
# States and events


class State(enum.Enum):
    #: Connected; the I/O layer has not yet sent the greeting (RFC 5321 §4.3.1).
    GREETING = "greeting"
    #: Greeted; waiting for EHLO/HELO (RFC 5321 §4.1.1.1).
    HELO = "helo"
    #: Session open, no mail transaction (RFC 5321 §3.3).
    READY = "ready"
    #: MAIL accepted; waiting for the first accepted RCPT (RFC 5321 §4.1.1.2).
    MAIL = "mail"
    #: At least one RCPT accepted; more RCPTs or DATA (RFC 5321 §4.1.1.3).
    RCPT = "rcpt"
    #: Reading message content up to CRLF.CRLF (RFC 5321 §4.1.1.4).
    DATA = "data"
    #: Reading the octets of one BDAT chunk (RFC 3030 §2).
    CHUNK = "chunk"
    #: Inside a SASL exchange (RFC 4954 §4).
    AUTH = "auth"
    #: QUIT, 421 or EOF: nothing more is read (RFC 5321 §4.1.1.10).
    CLOSED = "closed"


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event()` needs more bytes from the peer (and the outbox should be flushed).
NEED_DATA = _Sentinel("NEED_DATA")
#: The session is over; flush the outbox and close the connection.
CLOSED = _Sentinel("CLOSED")


@dataclass(frozen=True)
class StartTLS:
    """The client asked for TLS and was told 220: wrap the stream, then `tls_started()`."""


@dataclass(frozen=True)
class AuthAttempt:
    """SASL credentials to check (RFC 4954, RFC 4616 PLAIN, or LOGIN)."""

    mechanism: str
    authzid: str
    authcid: str
    #: Never shown in reprs or logs.
    password: str = field(repr=False)


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM (RFC 5321 §4.1.1.2); ``reverse_path`` is "" for the null sender ``<>``."""

    reverse_path: str
    params: dict[str, str | None]


@dataclass(frozen=True)
class RcptTo:
    """RCPT TO (RFC 5321 §4.1.1.3) with its DSN parameters (RFC 3461 §4)."""

    forward_path: str
    params: dict[str, str | None]


@dataclass(frozen=True)
class MessageData:
    """A complete message, dot-unstuffed, with CRLF line ends as received."""

    content: bytes = field(repr=False)
    reverse_path: str
    recipients: tuple[RcptTo, ...]
    mail_params: dict[str, str | None]


Event = StartTLS | AuthAttempt | MailFrom | RcptTo | MessageData


@dataclass(frozen=True)
class SessionConfig:
    """What a listener allows; the I/O layer builds one per port."""

    hostname: str
    #: RFC 1870 SIZE. A 25 MB attachment grows by 4/3 in base64 and by 78/76 for line
    #: breaks (about 35.9 MB); 40 MiB leaves room for the text and headers around it.
    max_message_size: int = 40 * 1024 * 1024
    #: RFC 5321 §4.5.3.1.8 asks servers to take at least 100.
    max_recipients: int = 100
    #: RFC 5321 §4.5.3.1.4 sets 512 octets; SMTPUTF8 addresses and DSN parameters need
    #: more in practice, so we allow 2 KiB and answer longer lines with 500.
    max_command_line: int = 2048
    #: RFC 4954 §4: a SASL exchange line may be up to 12288 octets.
    max_auth_line: int = 12288
    #: Client errors tolerated before 421 (a brute-force or a confused client); the
    #: same figure as Postfix's smtpd_hard_error_limit.
    max_errors: int = 20
    #: A STARTTLS-capable listener (a TLS context exists and TLS is not yet active).
    starttls_available: bool = True
    #: The submission ports: MAIL only after AUTH (RFC 6409 §4.3).
    require_auth: bool = False
    #: Refuse MAIL until STARTTLS (RFC 3207 §4: only for ports not publicly referenced).
    require_tls: bool = False
    #: Offer AUTH at all (after TLS). The MX port of a box does not.
    auth_offered: bool = True


# ---------------------------------------------------------------------------------------
# The order of commands (RFC 5321 §4.1.4)

#: Command -> the states it is out of order in, each with the reply that refuses it
#: there; a state not named allows the command. Only the states that read command lines
#: appear (HELO, READY, MAIL, RCPT): in AUTH a line is a SASL response, in DATA and
#: CHUNK it is message content. EHLO/HELO, RSET, NOOP, HELP, VRFY, EXPN and QUIT may
#: come at any time (§4.1.4: "may be issued at any time"; EHLO resets a transaction).
#: Other checks of a command (its syntax, TLS, AUTH) are made in its handler, some
#: before this one, so that a reply names the first thing wrong as RFC 5321 §4.1.4 and
#: the RFCs of STARTTLS and AUTH order them.
COMMAND_ORDER: Final[Mapping[str, Mapping[State, Reply]]] = MappingProxyType(
    {
        "EHLO": {},
        "HELO": {},
        # RFC 3207 §4.2 and RFC 4954 §4: after EHLO, never inside a transaction.
        "STARTTLS": {
            State.HELO: NEED_HELO,
            State.MAIL: BAD_SEQUENCE,
            State.RCPT: BAD_SEQUENCE,
        },
        "AUTH": {State.HELO: NEED_HELO, State.MAIL: BAD_SEQUENCE, State.RCPT: BAD_SEQUENCE},
        # §4.1.4: MAIL starts a transaction, "if there is already a transaction, 503".
        "MAIL": {State.HELO: NEED_HELO, State.MAIL: NESTED_MAIL, State.RCPT: NESTED_MAIL},
        "RCPT": {State.HELO: NEED_HELO, State.READY: NEED_MAIL},
        # §4.1.1.4: DATA after at least one accepted RCPT. In MAIL, RFC 2920 §3.1 turns
        # NEED_RCPT into NO_VALID_RECIPIENTS once RCPTs were tried and all refused.
        "DATA": {State.HELO: NEED_HELO, State.READY: NEED_MAIL, State.MAIL: NEED_RCPT},
        # RFC 3030 §2: BDAT as DATA (its chunk is still read before the refusal).
        "BDAT": {State.HELO: NEED_HELO, State.READY: NEED_MAIL, State.MAIL: NEED_RCPT},
        "RSET": {},
        "NOOP": {},
        "HELP": {},
        "VRFY": {},
        "EXPN": {},
        "QUIT": {},
    }
)


# ---------------------------------------------------------------------------------------
# The connection

# Characters allowed in an ESMTP parameter keyword (RFC 5321 §4.1.2: esmtp-keyword).
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# RFC 3461 §4.1: NOTIFY is NEVER or any of SUCCESS, FAILURE, DELAY.
_NOTIFY = re.compile(r"(?i)(NEVER|((SUCCESS|FAILURE|DELAY)(,(SUCCESS|FAILURE|DELAY))*))\Z")
# xtext (RFC 3461 §4): printable ASCII except '+' and '=', or +HH.
_XTEXT = re.compile(r"([\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_DOMAIN_LABEL = re.compile(r"[^\s.@<>()\[\],;:\\\"]+\Z")

_MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})

# LOGIN (draft-murchison-sasl-login): the prompts are base64 "Username:" and "Password:".
_LOGIN_USERNAME = base64.b64encode(b"Username:").decode()
_LOGIN_PASSWORD = base64.b64encode(b"Password:").decode()


class ServerConnection:
    """One SMTP session, server side. See the module docstring for how to drive it."""

    def __init__(self, config: SessionConfig, *, tls_active: bool = False) -> None:
        self.config = config
        self.state = State.GREETING
        self.tls_active = tls_active
        #: The name the client gave in EHLO/HELO.
        self.helo_name: str | None = None
        #: True after EHLO (not HELO): extensions such as enhanced codes apply.
        self.extended = False
        #: Who the client authenticated as (the authorisation identity if one was given).
        self.authenticated_as: str | None = None
        self.errors = 0
        self._in = bytearray()
        self._out = bytearray()
        self._pending: Event | None = None
        self._eof = False
        # Transaction (RFC 5321 §3.3).
        self._mail: MailFrom | None = None
        self._rcpts: list[RcptTo] = []
        self._rcpt_attempted = False
        # DATA reading: a virtual CRLF before the content lets "CRLF.CRLF" also match an
        # empty message, and lets one replace() undo dot-stuffing on every line.
        self._data = bytearray()
        self._data_scanned = 0
        #: Dots unstuffing will remove (RFC 1870 §3: not part of the message's size).
        self._data_stuffing = 0
        self._data_too_big = False
        # BDAT reading (RFC 3030): the message so far (None: no BDAT in this transaction),
        # the octets of the current chunk still to come, and what to do once they have.
        self._chunks: bytearray | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        self._chunk_resume = State.READY
        # Discarding the rest of an over-long command line.
        self._skip_line = False
        # SASL exchange.
        self._auth_mechanism: str | None = None
        self._auth_username: str | None = None

    # -- feeding and draining ----------------------------------------------------------

    def greet(self, banner: str = "ESMTP edgebox") -> None:
        """Queue the 220 greeting (RFC 5321 §4.3.1) and start the session."""
        self._expect(State.GREETING)
        self._send(Reply(220, None, f"{self.config.hostname} {banner}"))
        self.state = State.HELO

    def refuse(self, reply: Reply) -> None:
        """Refuse the connection instead of greeting it (e.g. 421 too many connections)."""
        self._send(reply)
        self.state = State.CLOSED

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self._in += data

    def data_to_send(self) -> bytes:
        """Return and clear the replies queued so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self, reply: Reply) -> None:
        """End the session with a 421-style reply (timeout, shutdown)."""
        self._pending = None
        self._send(reply)
        self.state = State.CLOSED

    def tls_started(self) -> None:
        """The stream is now TLS: forget the session as RFC 3207 §4.2 requires."""
        if not isinstance(self._pending, StartTLS):
            raise RuntimeError("tls_started() without a pending StartTLS event")
        self._pending = None
        self.tls_active = True
        self.helo_name = None
        self.extended = False
        self.authenticated_as = None
        self._reset_transaction()
        self.state = State.HELO

    # -- answering events --------------------------------------------------------------

    @property
    def mail_from(self) -> MailFrom | None:
        """The accepted MAIL of the current transaction, if any."""
        return self._mail

    def accept(self, reply: Reply | None = None, *, identity: str | None = None) -> None:
        """Say yes to the pending event, optionally with the server's own 2xx reply.

        For `AuthAttempt`, *identity* is the name the session is authenticated as (the
        server's canonical form); by default the authorisation identity, else authcid.
        """
        event = self._take_pending()
        if isinstance(event, MailFrom):
            self._mail = event
            self.state = State.MAIL
            self._send(reply or Reply(250, "2.1.0", "Sender OK"))
        elif isinstance(event, RcptTo):
            self._rcpts.append(event)
            self.state = State.RCPT
            self._send(reply or Reply(250, "2.1.5", "Recipient OK"))
        elif isinstance(event, MessageData):
            self._reset_transaction()
            self.state = State.READY
            self._send(reply or Reply(250, "2.0.0", "Message accepted"))
        elif isinstance(event, AuthAttempt):
            self.authenticated_as = identity or event.authzid or event.authcid
            self.state = State.READY
            self._send(reply or AUTH_OK)
        else:
            raise RuntimeError(f"{type(event).__name__} is not answered with accept()")

    def reject(self, reply: Reply) -> None:
        """Say no to the pending event with a 4xx/5xx reply."""
        event = self._take_pending()
        if isinstance(event, MessageData):
            self._reset_transaction()
            self.state = State.READY
        elif isinstance(event, AuthAttempt):
            self.state = State.READY
        elif isinstance(event, StartTLS):
            raise RuntimeError("StartTLS cannot be rejected after 220 was queued")
        self._error(reply)

    # -- the state machine -------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """Process buffered input up to the next decision; see the module docstring."""
        if self._pending is not None:
            raise RuntimeError(f"answer {type(self._pending).__name__} before next_event()")
        while self.state is not State.CLOSED:
            if self.state is State.GREETING:
                raise RuntimeError("call greet() or refuse() first")
            event: Event | _Sentinel | None
            if self.state is State.DATA:
                event = self._read_data()
            elif self.state is State.CHUNK:
                event = self._read_chunk()
            else:
                line = self._read_line()
                if line is None:
                    break
                event = self._handle_line(line)
            if event is NEED_DATA:
                break
            if event is not None and not isinstance(event, _Sentinel):
                self._pending = event
                return event
        if self.state is State.CLOSED:
            return CLOSED
        if self._eof:
            # The peer hung up mid-session: nothing pending was accepted.
            self._reset_transaction()
            self.state = State.CLOSED
            return CLOSED
        return NEED_DATA

    def _read_line(self) -> bytes | None:
        limit = (
            self.config.max_auth_line if self.state is State.AUTH else self.config.max_command_line
        )
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > limit:
                    # Too long and still no end: drop what we have, refuse once, and
                    # ignore everything up to the next newline.
                    self._in.clear()
                    if not self._skip_line:
                        self._skip_line = True
                        self._line_too_long()
                return None
            raw = bytes(self._in[:end])
            del self._in[: end + 1]
            if self._skip_line:
                self._skip_line = False
                continue
            if len(raw) + 1 > limit:
                self._line_too_long()
                if self.state is State.CLOSED:
                    return None
                continue
            return raw[:-1] if raw.endswith(b"\r") else raw

    def _line_too_long(self) -> None:
        if self.state is State.AUTH:
            self._end_auth()
            self._error(AUTH_LINE_TOO_LONG)
        else:
            self._error(LINE_TOO_LONG)

    def _handle_line(self, raw: bytes) -> Event | _Sentinel | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.state is State.AUTH:
                self._end_auth()
            self._error(SYNTAX_ERROR)
            return None
        if self.state is State.AUTH:
            return self._auth_response(line)
        verb, _, arg = line.partition(" ")
        # ASCII only: str.upper() maps look-alikes onto ASCII ("quıt" -> "QUIT").
        handler = _COMMANDS.get(verb.upper()) if verb.isascii() else None
        if handler is None:
            self._error(UNKNOWN_COMMAND)
            return None
        return handler(self, arg.strip())

    # RFC 5321 §4.1.1.1: EHLO / HELO
    def _cmd_ehlo(self, arg: str) -> None:
        self._hello(arg, extended=True)

    def _cmd_helo(self, arg: str) -> None:
        self._hello(arg, extended=False)

    def _hello(self, arg: str, *, extended: bool) -> None:
        # The argument is echoed in our reply: no spaces or control characters.
        if not arg or " " in arg or not arg.isprintable():
            self._error(Reply(501, "5.5.4", "Syntax: EHLO hostname"))
            return
        # EHLO in the middle of a transaction resets it (RFC 5321 §4.1.4).
        self._reset_transaction()
        self.helo_name = arg
        self.extended = extended
        self.state = State.READY
        if not extended:
            self._send(Reply(250, None, f"{self.config.hostname}"))
            return
        lines = [
            f"{self.config.hostname} greets {arg}",
            "PIPELINING",  # RFC 2920
            f"SIZE {self.config.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "DSN",  # RFC 3461
            "CHUNKING",  # RFC 3030
        ]
        if self._starttls_possible():
            lines.append("STARTTLS")  # RFC 3207
        if self.tls_active and self.config.auth_offered:
            lines.append("AUTH PLAIN LOGIN")  # RFC 4954; LOGIN for Outlook
        lines.append("HELP")
        self._send(Reply(250, None, tuple(lines)))

    # RFC 3207 §4: STARTTLS
    def _cmd_starttls(self, arg: str) -> StartTLS | None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: STARTTLS (no parameters)"))
            return None
        if self.tls_active:
            self._error(ALREADY_TLS)
            return None
        if not self._starttls_possible():
            self._error(TLS_UNAVAILABLE)
            return None
        if (refusal := self._out_of_order("STARTTLS")) is not None:
            self._error(refusal)
            return None
        self._send(READY_FOR_TLS)
        # Bytes pipelined after STARTTLS arrived in plaintext and must not be taken as
        # if they came over TLS (the 2011 "STARTTLS command injection" flaw).
        self._in.clear()
        return StartTLS()

    # RFC 4954 §4: AUTH
    def _cmd_auth(self, arg: str) -> AuthAttempt | None:
        if not self.config.auth_offered:
            self._error(NOT_IMPLEMENTED)
            return None
        if (refusal := self._out_of_order("AUTH")) is not None:
            self._error(refusal)
            return None
        if self.authenticated_as is not None:
            self._error(ALREADY_AUTHENTICATED)
            return None
        if not self.tls_active:
            self._error(AUTH_NEEDS_TLS)
            return None
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper() if mechanism.isascii() else ""
        initial = initial.strip()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._error(UNKNOWN_MECHANISM)
            return None
        self._auth_mechanism = mechanism
        self._auth_username = None
        self.state = State.AUTH
        if not initial:
            self._send(Reply(334, None, "" if mechanism == "PLAIN" else _LOGIN_USERNAME))
            return None
        # RFC 4954 §4: "=" is an empty initial response.
        return self._auth_response("" if initial == "=" else initial)

    def _auth_response(self, line: str) -> AuthAttempt | None:
        if line.strip() == "*":
            self._end_auth()
            self._error(AUTH_CANCELLED)
            return None
        try:
            decoded = base64.b64decode(line.strip(), validate=True)
            text = decoded.decode("utf-8")
        except (ValueError, UnicodeDecodeError):  # binascii.Error, or non-ASCII input
            self._end_auth()
            self._error(BAD_BASE64)
            return None
        if self._auth_mechanism == "PLAIN":
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            parts = text.split("\0")
            if len(parts) != 3 or not parts[1]:
                self._end_auth()
                self._error(Reply(501, "5.5.2", "Malformed PLAIN response"))
                return None
            self._end_auth(keep_state=True)
            return AuthAttempt("PLAIN", parts[0], parts[1], parts[2])
        if self._auth_username is None:
            self._auth_username = text
            self._send(Reply(334, None, _LOGIN_PASSWORD))
            return None
        username = self._auth_username
        self._end_auth(keep_state=True)
        return AuthAttempt("LOGIN", "", username, text)

    def _end_auth(self, *, keep_state: bool = False) -> None:
        self._auth_mechanism = None
        self._auth_username = None
        if not keep_state:
            self.state = State.READY

    # RFC 5321 §4.1.1.2: MAIL
    def _cmd_mail(self, arg: str) -> MailFrom | None:
        if (refusal := self._out_of_order("MAIL")) is not None:
            self._error(refusal)
            return None
        if self.config.require_tls and not self.tls_active:
            self._error(TLS_REQUIRED)
            return None
        if self.config.require_auth and self.authenticated_as is None:
            self._error(AUTH_REQUIRED if self.tls_active else TLS_REQUIRED)
            return None
        parsed = self._parse_path_command(arg, "FROM:", allow_null=True)
        if parsed is None:
            return None
        path, params = parsed
        error = self._check_mail_params(params)
        if error is None and not path.isascii() and "SMTPUTF8" not in params:
            error = NON_ASCII_ADDRESS
        if error is not None:
            self._error(error)
            return None
        return MailFrom(path, params)

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        for key, value in params.items():
            if key not in _MAIL_PARAMS:
                return UNKNOWN_PARAMETER
            if key == "SIZE":
                # RFC 1870 §6: a declared size over the limit is refused up front.
                # isascii(): str.isdigit() is also true for digits int() rejects ("፩").
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    return SYNTAX_ERROR
                if int(value) > self.config.max_message_size:
                    return MESSAGE_TOO_BIG
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return SYNTAX_ERROR
            elif key == "SMTPUTF8":
                if value is not None:
                    return SYNTAX_ERROR
            elif key == "RET":
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return SYNTAX_ERROR
            elif key == "ENVID":
                if value is None or len(value) > 100 or not _XTEXT.match(value):
                    return SYNTAX_ERROR
            elif key == "AUTH" and value is None:
                return SYNTAX_ERROR
        return None

    # RFC 5321 §4.1.1.3: RCPT
    def _cmd_rcpt(self, arg: str) -> RcptTo | None:
        if (refusal := self._out_of_order("RCPT")) is not None:
            self._error(refusal)
            return None
        parsed = self._parse_path_command(arg, "TO:", allow_null=False)
        if parsed is None:
            return None
        path, params = parsed
        self._rcpt_attempted = True
        error = self._check_rcpt_params(params)
        assert self._mail is not None
        if error is None and not path.isascii() and "SMTPUTF8" not in self._mail.params:
            error = NON_ASCII_ADDRESS
        if error is None and len(self._rcpts) >= self.config.max_recipients:
            error = TOO_MANY_RECIPIENTS
        if error is not None:
            self._error(error)
            return None
        return RcptTo(path, params)

    def _check_rcpt_params(self, params: dict[str, str | None]) -> Reply | None:
        for key, value in params.items():
            if key not in _RCPT_PARAMS:
                return UNKNOWN_PARAMETER
            if key == "NOTIFY" and (value is None or not _NOTIFY.match(value)):
                return SYNTAX_ERROR
            if key == "ORCPT":
                # RFC 3461 §4.2: addr-type ";" xtext
                addr_type, sep, addr = (value or "").partition(";")
                if not sep or not addr_type or not addr:
                    return SYNTAX_ERROR
        return None

    # RFC 5321 §4.1.1.4: DATA
    def _cmd_data(self, arg: str) -> None:
        if arg:
            self._error(Reply(501, "5.5.4", "Syntax: DATA (no parameters)"))
            return
        if (refusal := self._out_of_order("DATA")) is not None:
            self._error(refusal)
            return
        if self._chunks is not None:
            self._error(DATA_AFTER_BDAT)  # RFC 3030 §2
            return
        self._send(START_DATA)
        self.state = State.DATA
        self._data = bytearray(b"\r\n")
        self._data_scanned = 0
        self._data_stuffing = 0
        self._data_too_big = False

    def _read_data(self) -> MessageData | _Sentinel | None:
        if not self._in:
            return NEED_DATA
        self._data += self._in
        self._in.clear()
        end = self._data.find(b"\r\n.\r\n", max(0, self._data_scanned - 4))
        if end < 0:
            if self._data_too_big:
                # Already refused: keep only a tail long enough to see the terminator,
                # so an oversized message costs no memory while we wait for its end.
                del self._data[:-4]
            else:
                # Every "\r\n." loses its dot when unstuffed (the same rule as below);
                # one starting 2 bytes back was not complete at the last scan.
                self._data_stuffing += self._data.count(b"\r\n.", max(0, self._data_scanned - 2))
                # Buffer = virtual CRLF + content + removed dots + at most ".\r" of a
                # terminator in flight: past max + 4, the content is certainly too big.
                if len(self._data) - self._data_stuffing > self.config.max_message_size + 4:
                    self._data_too_big = True
                    del self._data[:-4]
            self._data_scanned = len(self._data)
            return NEED_DATA
        # Anything after the terminator is the next pipelined command.
        self._in[:0] = self._data[end + 5 :]
        body = self._data
        self._data = bytearray()
        del body[end + 2 :]
        # RFC 5321 §4.5.2: remove the leading dot the client added to any line
        # beginning with ".". The virtual CRLF makes the first line no special case.
        # Without a dot to remove (most mail) the content is copied out once; a large
        # message's every extra copy is another megabyte per session (issue 21).
        if body.find(b"\r\n.") >= 0:
            body = body.replace(b"\r\n.", b"\r\n")
        content = bytes(memoryview(body)[2:])
        del body
        if self._data_too_big or len(content) > self.config.max_message_size:
            self._reset_transaction()
            self.state = State.READY
            self._error(MESSAGE_TOO_BIG)
            return None
        assert self._mail is not None
        # The state stays DATA until accept() or reject() answers the event.
        return MessageData(content, self._mail.reverse_path, tuple(self._rcpts), self._mail.params)

    # RFC 3030 §2: BDAT chunk-size [LAST]
    def _cmd_bdat(self, arg: str) -> None:
        size, _, marker = arg.partition(" ")
        if (
            not (size.isascii() and size.isdigit())
            or len(size) > 20
            or marker.upper() not in ("", "LAST")
        ):
            # The chunk's octets follow this line, and without its size there is no
            # telling where they end: reading them as commands would let a message
            # smuggle commands in. Say why, then hang up.
            self._error(BAD_CHUNK_SIZE)
            if self.state is not State.CLOSED:
                self._send(LOST_FRAMING)
                self.state = State.CLOSED
            return
        chunk = int(size)
        refusal = self._out_of_order("BDAT")
        if refusal is None and len(self._chunks or b"") + chunk > self.config.max_message_size:
            refusal = MESSAGE_TOO_BIG
        # RFC 3030 §2: a refused chunk is still read (and thrown away) before the reply,
        # so the next command is found where the client put it.
        self._chunk_refusal = refusal
        self._chunk_left = chunk
        self._chunk_last = marker != ""
        self._chunk_resume = self.state
        if refusal is None and self._chunks is None:
            self._chunks = bytearray()
        self.state = State.CHUNK

    def _read_chunk(self) -> MessageData | _Sentinel | None:
        if self._chunk_left:
            if not self._in:
                return NEED_DATA
            take = min(self._chunk_left, len(self._in))
            if self._chunk_refusal is None:
                assert self._chunks is not None
                self._chunks += self._in[:take]
            del self._in[:take]
            self._chunk_left -= take
            if self._chunk_left:
                return NEED_DATA
        self.state = self._chunk_resume
        if self._chunk_refusal is not None:
            if self._chunk_refusal is MESSAGE_TOO_BIG:
                # The transaction has failed; chunks already pipelined behind this one
                # find no MAIL and are read and refused the same way (RFC 3030 §2).
                self._reset_transaction()
                self.state = State.READY
            self._error(self._chunk_refusal)
            return None
        if not self._chunk_last:
            self._send(Reply(250, "2.0.0", f"{len(self._chunks or b'')} octets received"))
            return None
        assert self._mail is not None
        assert self._chunks is not None
        content = bytes(self._chunks)
        self._chunks = None
        # The state is CHUNK again until accept() or reject() answers the event.
        self.state = State.CHUNK
        return MessageData(content, self._mail.reverse_path, tuple(self._rcpts), self._mail.params)

    # RFC 5321 §4.1.1.5–4.1.1.10
    def _cmd_rset(self, arg: str) -> None:
        self._reset_transaction()
        if self.state is not State.HELO:
            self.state = State.READY
        self._send(RESET_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._send(OK)

    def _cmd_help(self, arg: str) -> None:
        self._send(HELP)

    def _cmd_vrfy(self, arg: str) -> None:
        # RFC 5321 §3.5.3: 252 rather than disclosing who exists.
        if not arg:
            self._error(SYNTAX_ERROR)
            return
        self._send(CANNOT_VRFY)

    def _cmd_expn(self, arg: str) -> None:
        self._error(NOT_IMPLEMENTED)

    def _cmd_quit(self, arg: str) -> None:
        self._send(BYE)
        self.state = State.CLOSED

    # -- helpers -----------------------------------------------------------------------

    def _parse_path_command(
        self, arg: str, keyword: str, *, allow_null: bool
    ) -> tuple[str, dict[str, str | None]] | None:
        """Parse ``FROM:<path> params`` / ``TO:<path> params`` (RFC 5321 §4.1.2)."""
        head = arg[: len(keyword)]
        if not head.isascii() or head.upper() != keyword:
            self._error(SYNTAX_ERROR)
            return None
        rest = arg[len(keyword) :].lstrip(" ")
        if not rest.startswith("<"):
            self._error(SYNTAX_ERROR)
            return None
        close = rest.find(">")
        if close < 0:
            self._error(SYNTAX_ERROR)
            return None
        path = rest[1:close]
        if path.startswith("@"):
            # Source routes (RFC 5321 §4.1.2 A-d-l) are obsolete; accept and drop them.
            path = path.partition(":")[2]
        if not path:
            if not allow_null:
                self._error(BAD_ADDRESS)
                return None
        elif not allow_null and path.lower() == "postmaster":
            pass  # RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> without a domain is valid
        elif not _valid_mailbox(path):
            self._error(BAD_ADDRESS)
            return None
        params: dict[str, str | None] = {}
        for token in rest[close + 1 :].split():
            key, eq, value = token.partition("=")
            if not _PARAM_KEY.match(key) or (eq and not value):
                self._error(SYNTAX_ERROR)
                return None
            params[key.upper()] = value if eq else None
        return path, params

    def _out_of_order(self, command: str) -> Reply | None:
        """The reply refusing *command* in this state (`COMMAND_ORDER`), or None."""
        refusal = COMMAND_ORDER[command].get(self.state)
        if refusal is NEED_RCPT and self._rcpt_attempted:
            # RFC 2920 §3.1: with pipelining, all RCPTs may have failed before DATA.
            return NO_VALID_RECIPIENTS
        return refusal

    def _starttls_possible(self) -> bool:
        return self.config.starttls_available and not self.tls_active

    def _reset_transaction(self) -> None:
        self._mail = None
        self._rcpts = []
        self._rcpt_attempted = False
        self._data = bytearray()
        self._data_too_big = False
        self._chunks = None

    def _take_pending(self) -> Event:
        event = self._pending
        if event is None:
            raise RuntimeError("no event is waiting for an answer")
        self._pending = None
        return event

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"expected state {state.name}, in {self.state.name}")

    def _send(self, reply: Reply) -> None:
        # RFC 2034 §3: enhanced codes on every reply once EHLO has been seen, except
        # the greeting and the EHLO/HELO replies themselves (which carry None here).
        self._out += reply.encode(enhanced_codes=self.extended)

    def _error(self, reply: Reply) -> None:
        """Send a 4xx/5xx caused by the client, and close after too many of them."""
        self._send(reply)
        if reply.code >= 500 or reply.code == 421:
            self.errors += 1
        if self.errors >= self.config.max_errors and self.state is not State.CLOSED:
            self._send(TOO_MANY_ERRORS)
            self.state = State.CLOSED


def _valid_mailbox(path: str) -> bool:
    """Check ``local-part@domain`` loosely enough for real clients (RFC 5321 §4.1.2)."""
    if len(path) > 254 + 2 or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return False
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain or len(local) > 64 * 4:
        return False
    if local.startswith('"'):
        if not (local.endswith('"') and len(local) >= 2):
            return False
    elif " " in local or '"' in local or any(c in local for c in "<>(),;:\\[]"):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        return len(domain) > 2  # address literal (RFC 5321 §4.1.3)
    return all(_DOMAIN_LABEL.match(label) for label in domain.split("."))


_COMMANDS: dict[str, Callable[[ServerConnection, str], Event | None]] = {
    "EHLO": ServerConnection._cmd_ehlo,
    "HELO": ServerConnection._cmd_helo,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "HELP": ServerConnection._cmd_help,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "QUIT": ServerConnection._cmd_quit,
}
