"""The SMTP client protocol (RFC 5321) as a state machine: commands in, bytes out.

This is the sending half of SMTP, the mirror of `protocol.ServerConnection`: the
outbound relay (appliance.sync.relay) uses it to hand queued mail to the central relay.
The caller *sends* commands (`Ehlo`, `StartTLS`, `AuthPlain`, `Mail`, `Rcpt`, `Data`,
`Content`, `Bdat`, `Rset`, `Quit`), which are rendered into an outbox, and *receives* bytes,
which come back out as `Greeting` and `Replied` events, each reply paired with the
command it answers. There are no sockets, no trio and no clock in this file (DESIGN.md
principle 1), so every exchange can be tested byte for byte and the reply parser can be
fuzzed.

How a driver uses it::

    conn = ClientConnection()
    while (event := conn.next_event()) is NEED_DATA:
        conn.receive_data(await stream.receive_some())     # the 220 greeting
    conn.send(Ehlo("box.example")); await stream.send_all(conn.data_to_send())
    ...read until the Replied(Ehlo) event; conn.extensions now says what the server offers

Rules the core enforces (RFC 5321 §4.1.4, §4.3.2; RFC 2920; RFC 3207; RFC 4954):

- Nothing is sent before the greeting; MAIL, AUTH and STARTTLS only after EHLO.
- Without PIPELINING, one command at a time. With it, only RSET, MAIL and RCPT may be
  followed by another command before their reply arrives (RFC 2920 §3.1); EHLO, DATA,
  AUTH, STARTTLS, NOOP and QUIT end a group.
- Message content goes only after a 354 to DATA, dot-stuffed, with CRLF line ends
  (RFC 5321 §4.5.2, §2.3.8) -- or, where CHUNKING is offered, as BDAT chunks: counted
  octets sent as they are, which may follow MAIL and RCPT in one pipelined group
  (RFC 3030 §2, §4.2), so a whole transaction costs one round trip.
- After STARTTLS's 220 the caller wraps the stream and calls `tls_started()`; everything
  learnt from the server before it is forgotten and EHLO must be sent again (RFC 3207
  §4.2).
- A 421 reply to any command means the server is closing the channel (RFC 5321 §3.8).

`Transaction` turns the replies of one MAIL/RCPT/DATA exchange into one final reply per
recipient: what the relay needs to delete, retry or bounce each queue row.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------
# Replies


class SMTPProtocolError(Exception):
    """The server sent something that is not an SMTP reply; the session is unusable."""


@dataclass(frozen=True)
class Reply:
    """One SMTP reply (RFC 5321 §4.2) with its RFC 3463 enhanced status code, if any."""

    code: int
    #: ``class.subject.detail`` from the first line (RFC 3463 §2), or None.
    enhanced: str | None
    #: The text of each line, without the code and without the enhanced code.
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        """2yz: the command succeeded (RFC 5321 §4.2.1)."""
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        """4yz: failed this time; the same command may succeed later."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """5yz: failed; repeating the command as it is will fail again."""
        return self.code >= 500

    def status(self) -> str:
        """The RFC 3463 status for a DSN: the enhanced code, else one made from the code."""
        if self.enhanced:
            return self.enhanced
        return f"{self.code // 100}.0.0" if self.code // 100 in (2, 4, 5) else "4.0.0"

    def __str__(self) -> str:
        enhanced = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{enhanced} {self.text}".rstrip()


#: RFC 5321 §4.5.3.1.5 sets 512 octets per reply line; servers exceed it in EHLO and
#: in diagnostics, so more is tolerated, but not without bound.
MAX_REPLY_LINE = 4096
#: Lines in one multi-line reply (an EHLO answer has a dozen; 100 is generous).
MAX_REPLY_LINES = 100

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39. The second digit is read
# leniently (0-9): a server's odd code is still a reply, and its class is what counts.
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|\Z)(.*)\Z", re.DOTALL)
# RFC 3463 §2: class "." subject "." detail; subject and detail are 1-3 digits.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |\Z)")


class ReplyParser:
    """Collects bytes and cuts them into complete `Reply` values (RFC 5321 §4.2.1)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: bytes | None = None
        self._lines: list[str] = []

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data
        if self._buffer.find(b"\n") < 0 and len(self._buffer) > MAX_REPLY_LINE:
            raise SMTPProtocolError("reply line too long")

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, None if more bytes are needed.

        Raises `SMTPProtocolError` on anything that is not a well-formed reply.
        """
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(raw) > MAX_REPLY_LINE:
                raise SMTPProtocolError("reply line too long")
            # CRLF ends lines; a bare LF from a sloppy server is read the same way.
            raw = raw.removesuffix(b"\r")
            match = _REPLY_LINE.match(raw)
            if match is None:
                raise SMTPProtocolError(f"not an SMTP reply line: {raw[:80]!r}")
            code, separator, text = match.groups()
            if self._code is not None and code != self._code:
                # RFC 5321 §4.2.1: every line of a multi-line reply has the same code.
                raise SMTPProtocolError("reply code changed inside a multi-line reply")
            self._code = code
            self._lines.append(text.decode("utf-8", "replace"))
            if len(self._lines) > MAX_REPLY_LINES:
                raise SMTPProtocolError("too many lines in one reply")
            if separator == b"-":
                continue
            reply = _make_reply(int(code), self._lines)
            self._code, self._lines = None, []
            return reply


def _make_reply(code: int, lines: list[str]) -> Reply:
    # RFC 2034 §3: the enhanced code follows the reply code on every line, and its
    # class must agree with the reply's; one that disagrees is just text.
    match = _ENHANCED.match(lines[0])
    enhanced = None
    if match is not None and int(match.group(1)) == code // 100:
        enhanced = match.group(0).strip()
    texts = []
    for line in lines:
        if enhanced is not None and (line == enhanced or line.startswith(enhanced + " ")):
            line = line[len(enhanced) :].lstrip(" ")
        texts.append(line)
    return Reply(code, enhanced, tuple(texts))


# ---------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class Ehlo:
    """EHLO (RFC 5321 §4.1.1.1): open the session and learn the server's extensions."""

    hostname: str


@dataclass(frozen=True)
class StartTLS:
    """STARTTLS (RFC 3207 §4): on 220, wrap the stream, then call `tls_started()`."""


@dataclass(frozen=True)
class AuthPlain:
    """AUTH PLAIN with an initial response (RFC 4954 §4, RFC 4616 §2)."""

    authcid: str
    #: Never shown in reprs or logs.
    password: str = field(repr=False)
    #: Act for this identity (RFC 4616 authzid); "" to act as *authcid* itself.
    authzid: str = ""


@dataclass(frozen=True)
class Mail:
    """MAIL FROM (RFC 5321 §4.1.1.2); ``reverse_path`` "" is the null sender ``<>``.

    Parameters are sent only when the server offers their extension: SIZE (RFC 1870),
    BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461 §4.3-4.4).
    """

    reverse_path: str
    size: int | None = None
    body_8bit: bool = False
    smtputf8: bool = False
    #: RFC 3461 §4.3: FULL or HDRS.
    ret: str | None = None
    #: RFC 3461 §4.4, already xtext-encoded (as the box received it).
    envid: str | None = None


@dataclass(frozen=True)
class Rcpt:
    """RCPT TO (RFC 5321 §4.1.1.3) with DSN parameters (RFC 3461 §4.1-4.2) when offered."""

    forward_path: str
    #: NEVER, or a comma list of SUCCESS, FAILURE, DELAY.
    notify: str | None = None
    #: ``addr-type;xtext`` as received, e.g. ``rfc822;a@b.go.th``.
    orcpt: str | None = None


@dataclass(frozen=True)
class Data:
    """DATA (RFC 5321 §4.1.1.4): 354 means send `Content` next."""


@dataclass(frozen=True)
class Content:
    """The message itself, sent after 354; the core dot-stuffs it and adds CRLF.CRLF."""

    message: bytes = field(repr=False)


@dataclass(frozen=True)
class Bdat:
    """BDAT (RFC 3030 §2): one chunk of the message, its octets as they are; ``last``
    ends the message, and the reply to that chunk is the transaction's outcome."""

    chunk: bytes = field(repr=False)
    last: bool = True


@dataclass(frozen=True)
class Rset:
    """RSET (RFC 5321 §4.1.1.5): abort the transaction; reuse the session for the next."""


@dataclass(frozen=True)
class Noop:
    """NOOP (RFC 5321 §4.1.1.9)."""


@dataclass(frozen=True)
class Quit:
    """QUIT (RFC 5321 §4.1.1.10): the server answers 221 and closes."""


Command = Ehlo | StartTLS | AuthPlain | Mail | Rcpt | Data | Content | Bdat | Rset | Noop | Quit

# RFC 2920 §3.1: only these may be followed by another command in the same group;
# RFC 3030 §4.2 adds BDAT.
_GROUPABLE = (Rset, Mail, Rcpt, Bdat)


# ---------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class Greeting:
    """The server's opening reply: 220 to go on, 554 (or 421) to go away (§4.3.1)."""

    reply: Reply


@dataclass(frozen=True)
class Replied:
    """The reply to one command sent earlier, in the order they were sent."""

    command: Command
    reply: Reply


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event()` needs more bytes from the server.
NEED_DATA = _Sentinel("NEED_DATA")
#: The session is over (421, QUIT answered, or the server hung up); close the stream.
CLOSED = _Sentinel("CLOSED")

Event = Greeting | Replied


class State(enum.Enum):
    #: Connected, waiting for the 220 greeting (RFC 5321 §3.1).
    CONNECTED = "connected"
    #: Greeted (or TLS just started); EHLO comes next (RFC 5321 §4.1.1.1, RFC 3207 §4.2).
    GREETED = "greeted"
    #: EHLO answered: the session is open (RFC 5321 §3.3).
    READY = "ready"
    #: MAIL sent; RCPTs and DATA may follow (RFC 5321 §3.3).
    TRANSACTION = "transaction"
    #: 354 received; the message content is expected (RFC 5321 §4.1.1.4).
    CONTENT = "content"
    #: STARTTLS answered 220; the caller must wrap the stream (RFC 3207 §4.2).
    TLS_PENDING = "tls-pending"
    #: Nothing more will be exchanged.
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------
# Extensions


@dataclass(frozen=True)
class Extensions:
    """What the server offered in its EHLO reply (RFC 5321 §4.1.1.1)."""

    #: Keyword (upper case) -> its parameters as one string ("" when none).
    offered: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        offered: dict[str, str] = {}
        for line in reply.lines[1:]:  # the first line is the server's name and greeting
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                offered[keyword.upper()] = params.strip()
        return cls(offered)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.offered

    @property
    def size_limit(self) -> int | None:
        """RFC 1870 §4: the fixed maximum message size, or None for no stated limit."""
        if "SIZE" not in self.offered:
            return None
        value = self.offered["SIZE"]
        return int(value) if value.isdigit() and int(value) > 0 else None

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """RFC 4954 §3: the SASL mechanisms offered."""
        return frozenset(m.upper() for m in self.offered.get("AUTH", "").split())


# ---------------------------------------------------------------------------------------
# The connection


class ClientConnection:
    """One SMTP session, client side. See the module docstring for how to drive it."""

    def __init__(self, *, tls_active: bool = False) -> None:
        self.state = State.CONNECTED
        #: The stream is TLS (implicit TLS, or after STARTTLS).
        self.tls_active = tls_active
        #: What the server offered in its last EHLO reply (empty before it).
        self.extensions = Extensions()
        #: The reply to AUTH was 235 (RFC 4954 §4).
        self.authenticated = False
        self._parser = ReplyParser()
        self._out = bytearray()
        self._waiting: deque[Command] = deque()
        self._eof = False

    # -- feeding and draining ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the server; ``b""`` means it closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self._parser.feed(data)

    def data_to_send(self) -> bytes:
        """Return and clear the commands rendered so far."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def waiting(self) -> int:
        """Commands sent whose replies have not come yet."""
        return len(self._waiting)

    # -- sending -----------------------------------------------------------------------

    def send(self, command: Command) -> None:
        """Render *command* into the outbox; RuntimeError if it is out of order."""
        self._check_order(command)
        self._out += _render(command, self.extensions)
        self._waiting.append(command)
        if isinstance(command, Mail):
            self.state = State.TRANSACTION
        elif isinstance(command, Content) or (isinstance(command, Bdat) and command.last):
            # The content's reply is the transaction's outcome; nothing follows it.
            self.state = State.READY

    def _check_order(self, command: Command) -> None:
        state = self.state
        if state in (State.CLOSED, State.CONNECTED, State.TLS_PENDING):
            raise RuntimeError(f"cannot send {type(command).__name__} in state {state.value}")
        if self._waiting:
            last = self._waiting[-1]
            if "PIPELINING" not in self.extensions or not isinstance(last, _GROUPABLE):
                raise RuntimeError(
                    f"{type(command).__name__} before the reply to {type(last).__name__}"
                )
        if state is State.CONTENT:
            if not isinstance(command, Content):
                raise RuntimeError("the message content must follow 354")
            return
        if isinstance(command, Content):
            raise RuntimeError("Content only after a 354 reply to DATA")
        if state is State.GREETED and not isinstance(command, Ehlo | Quit | Noop | Rset):
            raise RuntimeError(f"EHLO first, not {type(command).__name__}")
        if isinstance(command, StartTLS) and (self.tls_active or "STARTTLS" not in self.extensions):
            raise RuntimeError("STARTTLS not available")
        if isinstance(command, AuthPlain | StartTLS) and state is State.TRANSACTION:
            raise RuntimeError("AUTH and STARTTLS are not allowed inside a mail transaction")
        if isinstance(command, Mail) and state is State.TRANSACTION:
            raise RuntimeError("MAIL inside a transaction: send RSET first")
        if isinstance(command, Rcpt | Data | Bdat) and state is not State.TRANSACTION:
            raise RuntimeError(f"{type(command).__name__} needs MAIL first")
        if isinstance(command, Bdat) and "CHUNKING" not in self.extensions:
            raise RuntimeError("BDAT without CHUNKING")

    def tls_started(self) -> None:
        """The stream is now TLS: forget what the server said before (RFC 3207 §4.2)."""
        if self.state is not State.TLS_PENDING:
            raise RuntimeError("tls_started() without a 220 to STARTTLS")
        self.tls_active = True
        self.extensions = Extensions()
        self.authenticated = False
        self.state = State.GREETED

    # -- receiving ---------------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """Return the next reply as an event, `NEED_DATA`, or `CLOSED`."""
        if self.state is State.CLOSED:
            return CLOSED
        try:
            reply = self._parser.next_reply()
        except SMTPProtocolError:
            self.state = State.CLOSED
            raise
        if reply is None:
            if self._eof:
                self.state = State.CLOSED
                return CLOSED
            return NEED_DATA
        if self.state is State.CONNECTED:
            return self._greeting(reply)
        if not self._waiting:
            # RFC 5321 §3.8: a server shutting down may send 421 unasked.
            self.state = State.CLOSED
            if reply.code == 421:
                return Replied(Noop(), reply)
            raise SMTPProtocolError(f"reply with no command waiting: {reply}")
        command = self._waiting.popleft()
        self._after_reply(command, reply)
        return Replied(command, reply)

    def _greeting(self, reply: Reply) -> Greeting:
        # RFC 5321 §4.3.1: 220 to go on; 554 means "no service here", but then the
        # server still waits for QUIT. Anything else ends the session.
        if reply.code in (220, 554):
            self.state = State.GREETED
        else:
            self.state = State.CLOSED
        return Greeting(reply)

    def _after_reply(self, command: Command, reply: Reply) -> None:
        if reply.code == 421 or isinstance(command, Quit):
            self.state = State.CLOSED
            return
        if isinstance(command, Ehlo) and reply.positive:
            self.extensions = Extensions.from_ehlo(reply)
            self.state = State.READY
        elif isinstance(command, StartTLS) and reply.code == 220:
            self.state = State.TLS_PENDING
        elif isinstance(command, AuthPlain) and reply.code == 235:
            self.authenticated = True
        elif isinstance(command, Mail) and not reply.positive:
            if self.state is State.TRANSACTION and not self._waiting_for(Mail):
                self.state = State.READY
        elif isinstance(command, Data):
            if reply.code == 354:
                self.state = State.CONTENT
            elif self.state is State.TRANSACTION:
                self.state = State.READY
        elif (
            # A positive RSET ends the transaction; so does a refused chunk (RFC 3030 §2).
            (isinstance(command, Rset) and reply.positive)
            or (isinstance(command, Bdat) and not reply.positive)
        ) and (self.state is State.TRANSACTION and not self._waiting_for(Mail)):
            self.state = State.READY

    def _waiting_for(self, kind: type) -> bool:
        return any(isinstance(command, kind) for command in self._waiting)


def _render(command: Command, extensions: Extensions) -> bytes:
    if isinstance(command, Content):
        return dot_stuff(command.message)
    if isinstance(command, Bdat):
        # RFC 3030 §2: the octets follow the command line's CRLF, counted, unstuffed.
        last = " LAST" if command.last else ""
        return f"BDAT {len(command.chunk)}{last}\r\n".encode("ascii") + command.chunk
    return (_command_line(command, extensions) + "\r\n").encode("utf-8")


def _command_line(command: Command, extensions: Extensions) -> str:
    if isinstance(command, Ehlo):
        return f"EHLO {_clean(command.hostname)}"
    if isinstance(command, StartTLS):
        return "STARTTLS"
    if isinstance(command, AuthPlain):
        # RFC 4616 §2: message = [authzid] NUL authcid NUL passwd, base64 (RFC 4954 §4).
        token = "\0".join((command.authzid, command.authcid, command.password))
        return "AUTH PLAIN " + base64.b64encode(token.encode("utf-8")).decode("ascii")
    if isinstance(command, Mail):
        params = []
        if command.size is not None and "SIZE" in extensions:
            params.append(f"SIZE={command.size}")
        if command.body_8bit and "8BITMIME" in extensions:
            params.append("BODY=8BITMIME")
        if command.smtputf8 and "SMTPUTF8" in extensions:
            params.append("SMTPUTF8")
        if "DSN" in extensions:
            if command.ret:
                params.append(f"RET={_clean(command.ret)}")
            if command.envid:
                params.append(f"ENVID={_clean(command.envid)}")
        return " ".join([f"MAIL FROM:<{_clean(command.reverse_path)}>", *params])
    if isinstance(command, Rcpt):
        params = []
        if "DSN" in extensions:
            if command.notify:
                params.append(f"NOTIFY={_clean(command.notify)}")
            if command.orcpt:
                params.append(f"ORCPT={_clean(command.orcpt)}")
        return " ".join([f"RCPT TO:<{_clean(command.forward_path)}>", *params])
    if isinstance(command, Data):
        return "DATA"
    if isinstance(command, Rset):
        return "RSET"
    if isinstance(command, Noop):
        return "NOOP"
    return "QUIT"


def _clean(value: str) -> str:
    """Refuse values that would end the command line early (command injection)."""
    if any(c in value for c in "\r\n\0") or any(ord(c) < 32 for c in value):
        raise ValueError(f"control character in SMTP command argument {value[:40]!r}")
    return value


def dot_stuff(message: bytes) -> bytes:
    """Render message content for DATA (RFC 5321 §4.5.2, §2.3.8).

    Bare LF and bare CR become CRLF (SMTP allows no other line end), a line starting
    with "." gets a second one, and the content ends with CRLF "." CRLF.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\r") == crlf and message.count(b"\n") == crlf:
        # Every line already ends in CRLF, as mail the box accepted over SMTP does:
        # three counts in C instead of a regex substitution over the whole message.
        text = message
    else:
        text = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if text.startswith(b"."):
        text = b"." + text
    text = text.replace(b"\r\n.", b"\r\n..")
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text + b".\r\n"


# ---------------------------------------------------------------------------------------
# One mail transaction's outcome


class Transaction:
    """The replies of one MAIL, its RCPTs and DATA, turned into a result per recipient.

    RFC 5321 §3.3: MAIL failing fails everyone; a RCPT's own refusal stands for that
    recipient; the final reply after the content (or DATA's refusal) stands for every
    recipient whose RCPT was accepted. With PIPELINING (RFC 2920 §3.1) all of these come
    back in one batch, and this is where they are sorted out.
    """

    def __init__(self, recipients: list[str]) -> None:
        self.recipients = list(recipients)
        self.mail: Reply | None = None
        self.rcpt: list[Reply] = []
        self.data: Reply | None = None
        self.final: Reply | None = None

    def record(self, command: Command, reply: Reply) -> None:
        if isinstance(command, Mail):
            self.mail = reply
        elif isinstance(command, Rcpt):
            self.rcpt.append(reply)
        elif isinstance(command, Data):
            self.data = reply
        elif isinstance(command, Content | Bdat) and (self.final is None or self.final.positive):
            # The reply to the last BDAT chunk is the outcome, as the reply after DATA's
            # content is; a refused earlier chunk has failed it already (RFC 3030 §2).
            self.final = reply

    @property
    def accepted_any(self) -> bool:
        """True if MAIL and at least one RCPT were accepted: DATA makes sense."""
        return bool(self.mail and self.mail.positive and any(r.positive for r in self.rcpt))

    @property
    def content_wanted(self) -> bool:
        """DATA was answered 354: the content must be sent now."""
        return self.data is not None and self.data.code == 354

    def outcome(self) -> list[Reply]:
        """The reply that decides each recipient, in recipient order.

        Call it once the transaction is over (final reply in, or DATA refused).
        """
        results = []
        for index, _ in enumerate(self.recipients):
            if self.mail is None or not self.mail.positive:
                results.append(self.mail or _NO_REPLY)
                continue
            rcpt = self.rcpt[index] if index < len(self.rcpt) else _NO_REPLY
            if not rcpt.positive:
                results.append(rcpt)
            elif self.final is not None:
                results.append(self.final)
            elif self.data is None or self.data.code != 354:
                results.append(self.data or _NO_REPLY)
            else:
                results.append(_NO_REPLY)
        return results


# Never from a server: stands for a reply that did not come (the session ended first).
_NO_REPLY = Reply(451, "4.4.2", ("no reply from the relay",))
