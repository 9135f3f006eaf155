"""One IMAP session, server side, as a state machine: bytes in, command events out.

Frames commands with their literals (RFC 3501 §4.3, §7.5; RFC 7888), checks each
command's name against the states table before any literal is read, hands the whole
command to the parser, and queues the server's responses. The rules are in the
package docstring (`appliance.mail.imap.protocol`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass

from appliance.mail.imap.protocol.encoder import one_line
from appliance.mail.imap.protocol.events import (
    Authenticate,
    BadCommand,
    Command,
    Event,
    Idle,
    IdleDone,
    Logout,
    SaslResponse,
    StartTls,
)
from appliance.mail.imap.protocol.parser import (
    COMMAND_HEAD,
    LITERAL_END,
    PARSERS,
    TAG_CHARS,
    UID_COMMANDS,
    ParseError,
    Parser,
)
from appliance.mail.imap.protocol.states import State, Transition, allowed, next_state


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event()` needs more bytes from the peer (and the outbox should be flushed).
NEED_DATA = _Sentinel("NEED_DATA")
#: The session is over; flush the outbox and close the connection.
CLOSED = _Sentinel("CLOSED")
# Internal: input was consumed without an event; look again.
_AGAIN = _Sentinel("_AGAIN")


@dataclass(frozen=True)
class ImapConfig:
    """What a listener allows; the I/O layer builds one per port."""

    #: One APPEND's literal. Phones attach 25 MB videos, and base64 grows them by 4/3.
    max_literal: int = 64 * 1024 * 1024
    #: One command line, and the literal bytes any command but APPEND may carry. RFC 7162
    #: §4 asks servers to take lines of at least 8192 octets; long UID sets need more.
    max_line: int = 64 * 1024
    #: A refused non-synchronising literal up to this size is read and thrown away; a
    #: larger one ends the session (RFC 7888 §4 allows either).
    max_discard: int = 256 * 1024 * 1024
    #: Refuse LOGIN and AUTHENTICATE with NO [PRIVACYREQUIRED] until TLS is active.
    require_tls_for_auth: bool = True


class _Mode(enum.Enum):
    #: Reading commands (RFC 3501 §2.2.1).
    COMMAND = "command"
    #: Lines are SASL responses (RFC 3501 §6.2.2).
    SASL = "sasl"
    #: Waiting for DONE (RFC 2177 §3).
    IDLE = "idle"


class ServerConnection:
    """One IMAP session, server side. See the package docstring for how to drive it."""

    def __init__(self, config: ImapConfig | None = None, *, tls_active: bool = False) -> None:
        self.config = config or ImapConfig()
        self.state = State.NOT_AUTHENTICATED
        self.tls_active = tls_active
        self._in = bytearray()
        # Responses queued, as pieces joined once by `data_to_send`: a FETCH of 500
        # bodies is not copied again each time a growing buffer moves.
        self._out: list[bytes] = []
        self._queued = 0
        self._eof = False
        # Where the search for the next LF resumes: a slow sender does not make us scan
        # the same bytes again.
        self._scanned = 0
        # The command being framed: its lines and literals so far, literals inline as on
        # the wire, and how many literal bytes it has taken.
        self._cmd = bytearray()
        self._cmd_literals = 0
        self._cmd_tag: str | None = None
        self._cmd_name = ""
        self._literal_need = 0
        # Refusing input: bytes still to throw away, and whether the rest of a command
        # (or of an over-long line) is being skipped.
        self._discard = 0
        self._skip_command = False
        self._skip_line = False
        self._skip_tail = b""
        # AUTHENTICATE, IDLE and STARTTLS take over the connection until answered.
        self._mode = _Mode.COMMAND
        self._exchange_tag: str | None = None
        self._starttls_tag: str | None = None

    # -- feeding and draining ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
        elif self.state is not State.LOGOUT:
            self._in += data

    @property
    def queued(self) -> int:
        """How many bytes of responses are queued, not yet taken by `data_to_send`."""
        return self._queued

    def data_to_send(self) -> bytes:
        """Return and clear the responses queued so far."""
        out = b"".join(self._out)
        self._out.clear()
        self._queued = 0
        return out

    # -- the server's responses --------------------------------------------------------

    def untagged(self, text: str | bytes) -> None:
        """Queue ``* text`` (text may hold literals made with `quote`)."""
        raw = text.encode("utf-8") if isinstance(text, str) else text
        self._queue(b"* ", raw, b"\r\n")

    def untagged_block(self, block: bytes) -> None:
        """Queue untagged responses already framed, each ``* ...`` ending in CRLF.

        For a long run of small responses made in one pass (a FETCH of flags over a
        whole mailbox): one piece queued instead of three per line.
        """
        if block and not (block.startswith(b"* ") and block.endswith(b"\r\n")):
            raise ValueError("an untagged block is whole '* ...' lines")
        self._queue(block)

    def _queue(self, *pieces: bytes) -> None:
        self._out.extend(pieces)
        self._queued += sum(map(len, pieces))

    def tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        """Queue ``tag OK [CODE] text`` (RFC 3501 §7.1) and end that command's exchange."""
        if status not in ("OK", "NO", "BAD"):
            raise ValueError(f"status must be OK, NO or BAD, not {status!r}")
        self._send_tagged(tag, status, text, code)
        if tag == self._exchange_tag:
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
        if tag == self._starttls_tag and status != "OK":
            self._starttls_tag = None

    def continuation(self, text: str = "") -> None:
        """Queue ``+ text``: a SASL challenge (base64) or the ``+ idling`` of IDLE."""
        self._queue(b"+ ", one_line(text), b"\r\n")

    def bye(self, text: str) -> None:
        """Queue ``* BYE text`` and end the session (shutdown, timeout)."""
        self.untagged("BYE " + one_line(text).decode("utf-8"))
        self._move(Transition.LOGOUT, "bye()")

    def _send_tagged(self, tag: str | None, status: str, text: str, code: str | None) -> None:
        parts = [(tag or "*").encode("ascii", "replace"), status.encode("ascii")]
        if code:
            parts.append(b"[" + one_line(code) + b"]")
        if text:
            parts.append(one_line(text))
        self._queue(b" ".join(parts), b"\r\n")

    # -- state changes the server decides ----------------------------------------------

    def authenticated(self) -> None:
        """LOGIN or AUTHENTICATE succeeded (RFC 3501 §3.2)."""
        self._move(Transition.AUTHENTICATED, "authenticated()")

    def selected(self) -> None:
        """SELECT or EXAMINE succeeded (RFC 3501 §3.3)."""
        self._move(Transition.SELECTED, "selected()")

    def unselected(self) -> None:
        """CLOSE, UNSELECT, or a failed SELECT left no mailbox selected (RFC 3501 §6.3.1)."""
        self._move(Transition.UNSELECTED, "unselected()")

    def _move(self, transition: Transition, caller: str) -> None:
        after = next_state(self.state, transition)
        if after is None:
            raise RuntimeError(f"{caller} in state {self.state.name}")
        self.state = after

    def tls_started(self) -> None:
        """The stream is now TLS (after `StartTls` was answered OK)."""
        if self._starttls_tag is None:
            raise RuntimeError("tls_started() without an accepted StartTls")
        self._starttls_tag = None
        self.tls_active = True
        # Bytes pipelined after STARTTLS came in plaintext and must not be taken as if
        # they came over TLS (CVE-2011-0411, "STARTTLS command injection").
        self._in.clear()
        self._scanned = 0

    # -- the state machine -------------------------------------------------------------

    def next_event(self) -> Event | _Sentinel:
        """Process buffered input up to the next command; see the module docstring."""
        # After STARTTLS nothing more is parsed until TLS is up or the server said no.
        while self._starttls_tag is None and self.state is not State.LOGOUT:
            if self._discard:
                taken = min(self._discard, len(self._in))
                del self._in[:taken]
                self._discard -= taken
                if self._discard:
                    break
                continue
            if self._literal_need:
                if len(self._in) < self._literal_need:
                    break
                self._cmd += self._in[: self._literal_need]
                del self._in[: self._literal_need]
                self._literal_need = 0
                continue
            line = self._read_line()
            if line is None:
                break
            if isinstance(line, BadCommand):
                return line
            if isinstance(line, _Sentinel):  # _AGAIN
                continue
            event = self._handle_line(line)
            if event is not None:
                return event
        if self.state is State.LOGOUT:
            # Whatever else the client sent will never be read.
            self._in.clear()
            self._reset_command()
            return CLOSED
        if self._eof:
            self._move(Transition.LOGOUT, "end of input")
            return CLOSED
        return NEED_DATA

    def _read_line(self) -> bytes | BadCommand | _Sentinel | None:
        limit = self.config.max_line
        end = self._in.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._in)
            refused = None
            # "+ 1": the CR of a line of exactly max_line may be all that has come.
            if len(self._in) > limit + 1 and not self._skip_line:
                refused = self._line_too_long(bytes(self._in[:256]))
            if self._skip_line:
                # Too long and no end in sight: keep only the last bytes, which may
                # turn out to announce a literal.
                self._skip_tail = (self._skip_tail + bytes(self._in))[-32:]
                self._in.clear()
                self._scanned = 0
            return refused
        raw = bytes(self._in[:end])
        del self._in[: end + 1]
        self._scanned = 0
        if self._skip_line:
            # The end of an over-long line: if it announced a literal, that is
            # part of what is skipped.
            tail = (self._skip_tail + raw)[-32:]
            self._skip_line = False
            self._skip_tail = b""
            self._skip_literal(tail.removesuffix(b"\r"))
            return _AGAIN
        raw = raw.removesuffix(b"\r")
        if len(raw) > limit:
            refused = self._line_too_long(raw[:256])
            self._skip_line = False
            self._skip_literal(raw[-32:])
            return refused
        return raw

    def _line_too_long(self, start: bytes) -> BadCommand:
        # Answer with the tag of the command (or exchange), if the line's start shows one.
        head = COMMAND_HEAD.match(self._cmd or start)
        tag = self._cmd_tag or (head.group(1).decode("ascii") if head else None)
        if self._mode is not _Mode.COMMAND:
            tag = self._exchange_tag
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
        elif tag is not None and any(c not in TAG_CHARS for c in tag.encode()):
            tag = None
        self._reset_command()
        self._skip_line = True
        self._skip_tail = b""
        return self._bad(tag, "Line too long")

    def _skip_literal(self, line: bytes) -> None:
        # A refused line that ends in a literal marker: a LITERAL+ literal follows anyway
        # and is thrown away, then the rest of its command. A synchronising one never
        # comes, since we send no "+".
        m = LITERAL_END.search(line)
        if m is None or not m.group(3):
            self._skip_command = False
            return
        size = int(m.group(2))
        if size > self.config.max_discard:
            self.bye("Literal too large to discard")
            return
        self._discard = size
        self._skip_command = True

    def _handle_line(self, line: bytes) -> Event | None:
        if self._skip_command:
            self._skip_literal(line)
            return None
        if self._mode is _Mode.SASL:
            return self._sasl_line(line)
        if self._mode is _Mode.IDLE:
            return self._idle_line(line)
        first = not self._cmd
        if first:
            refused = self._check_head(line)
            if refused is not None:
                self._skip_literal(line)
                return refused
        if len(self._cmd) - self._cmd_literals + len(line) > self.config.max_line:
            refused = self._bad(self._cmd_tag, "Command too long")
            self._reset_command()
            self._skip_literal(line)
            return refused
        m = LITERAL_END.search(line)
        if m is None:
            data = bytes(self._cmd + line)
            self._reset_command()
            return self._parse(data)
        return self._start_literal(line, m)

    def _check_head(self, line: bytes) -> Event | None:
        """Refuse a command by its name and the state before reading its literals."""
        head = COMMAND_HEAD.match(line)
        if head is None or any(c not in TAG_CHARS for c in head.group(1)):
            return None  # the full parse will say what is wrong
        tag = head.group(1).decode("ascii")
        name = head.group(2).decode("ascii").upper()
        if name == "UID":
            sub = (head.group(3) or b"").decode("ascii").upper()
            if sub not in UID_COMMANDS:
                return self._bad(tag, "Unknown UID command")
            command = sub
        elif name in PARSERS:
            command = name
        else:
            return self._bad(tag, "Unknown command")
        # RFC 3501 §3: the states table.
        if not allowed(self.state, command):
            return self._bad(tag, f"{name} not allowed in state {self.state.value}")
        if name == "STARTTLS" and self.tls_active:
            return self._bad(tag, "TLS is already active")
        # RFC 3501 §6.2.3, RFC 9051 §7.1: PRIVACYREQUIRED.
        if name in ("LOGIN", "AUTHENTICATE") and self._auth_needs_tls():
            self._send_tagged(tag, "NO", f"{name} disabled until TLS", "PRIVACYREQUIRED")
            return BadCommand(tag, f"{name} disabled until TLS", "PRIVACYREQUIRED")
        self._cmd_tag = tag
        self._cmd_name = name
        return None

    def _auth_needs_tls(self) -> bool:
        return self.config.require_tls_for_auth and not self.tls_active

    def _start_literal(self, line: bytes, m: re.Match[bytes]) -> Event | None:
        tag = self._cmd_tag
        size = int(m.group(2))
        sync = not m.group(3)
        limit = self.config.max_literal if self._cmd_name == "APPEND" else self.config.max_line
        refusal: tuple[str, str | None] | None = None
        if m.group(1) and self._cmd_name != "APPEND":
            # RFC 3516 §4.4: literal8 belongs to APPEND's message data only.
            refusal = ("literal8 is not supported here", None)
        elif self._cmd_literals + size > limit:
            # RFC 7888 §4 and RFC 4469 §5: BAD [TOOBIG], before the bytes are sent.
            refusal = ("Literal too big", "TOOBIG")
        if refusal is not None:
            refused = self._bad(tag, refusal[0], refusal[1])
            self._reset_command()
            self._skip_literal(line)
            return refused
        self._cmd += line + b"\r\n"
        self._cmd_literals += size
        self._literal_need = size
        if sync:
            # RFC 3501 §7.5: the command continuation request.
            self.continuation("Ready for literal")
        return None

    def _reset_command(self) -> None:
        self._cmd.clear()
        self._cmd_literals = 0
        self._cmd_tag = None
        self._cmd_name = ""

    def _parse(self, data: bytes) -> Event:
        p = Parser(data)
        tag: str | None = None
        try:
            # RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">
            tag = p.chars(TAG_CHARS, "tag").decode("ascii")
            p.sp()
            name = p.keyword()
            uid = False
            if name == "UID":
                p.sp()
                name = p.keyword()
                uid = True
                if name not in UID_COMMANDS:
                    raise ParseError("Unknown UID command")
            parse = PARSERS.get(name)
            if parse is None:
                raise ParseError("Unknown command")
            if not allowed(self.state, name):
                raise ParseError(f"{name} not allowed in state {self.state.value}")
            command = parse(p, tag, uid)
        except ParseError as exc:
            return self._bad(tag, exc.text, exc.code, status=exc.status)
        except RecursionError:
            return self._bad(tag, "Command nested too deeply")
        return self._started(command)

    def _started(self, command: Command) -> Command:
        if isinstance(command, Logout):
            self._move(Transition.LOGOUT, "LOGOUT")
        elif isinstance(command, StartTls):
            self._starttls_tag = command.tag
        elif isinstance(command, Idle):
            self._mode = _Mode.IDLE
            self._exchange_tag = command.tag
        elif isinstance(command, Authenticate):
            self._mode = _Mode.SASL
            self._exchange_tag = command.tag
        return command

    def _sasl_line(self, line: bytes) -> Event:
        # RFC 3501 §6.2.2: each line is base64, or "*" to cancel.
        tag = self._exchange_tag or ""
        if line.strip() == b"*":
            return SaslResponse(tag, None)
        try:
            data = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._mode = _Mode.COMMAND
            self._exchange_tag = None
            refused = self._bad(tag, "Bad base64 in SASL response")
            self._skip_literal(line)
            return refused
        return SaslResponse(tag, data)

    def _idle_line(self, line: bytes) -> Event:
        # RFC 2177 §3: the only thing a client may send while idling is DONE.
        tag = self._exchange_tag or ""
        self._mode = _Mode.COMMAND
        self._exchange_tag = None
        if line.strip().upper() == b"DONE":
            return IdleDone(tag)
        refused = self._bad(tag, "Expected DONE")
        # A command sent instead of DONE may announce a LITERAL+ literal: skip it too.
        self._skip_literal(line)
        return refused

    def _bad(
        self, tag: str | None, text: str, code: str | None = None, *, status: str = "BAD"
    ) -> BadCommand:
        self._send_tagged(tag, status, text, code)
        return BadCommand(tag, text, code, status)


__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ImapConfig",
    "ServerConnection",
]
