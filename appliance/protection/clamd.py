"""The clamd wire protocol, sans-I/O: the INSTREAM request and the daemon's one reply.

clamd (ClamAV's scanning daemon, clamd(8) "COMMANDS") reads a command on its socket and
answers one line. We use only ``zINSTREAM``: the ``z`` prefix makes the command and
its reply end with a NUL byte instead of a newline, so a virus name holding odd bytes
cannot end the reply early. The request is the command, then the message in chunks,
each preceded by its length as a 4-byte unsigned integer in network byte order, and a
chunk of length zero to end it. The reply is one of::

    stream: OK\\0                           nothing found
    stream: <signature name> FOUND\\0       a signature matched
    <reason> ERROR\\0                       the scan failed (size limit, read error, ...)

A session (``zIDSESSION``, clamd(8) "IDSESSION, END") keeps one connection for many
commands: clamd then prefixes each reply with the command's number in the session,
counting from 1 (``3: stream: OK\\0``), and ends the session when the client closes it
or it stays idle longer than clamd's ``IdleTimeout``. The box keeps a few such sessions
open so a scan does not pay for a new connection (`ReplyReader` with *session*).

This module makes the bytes and reads the reply; it has no socket and no clock. The
trio client is `appliance.protection.scanner.ClamdClient`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

#: clamd(8): the NUL-delimited form of INSTREAM.
INSTREAM_COMMAND = b"zINSTREAM\0"
#: clamd(8) "IDSESSION": the commands after it share this connection.
SESSION_COMMAND = b"zIDSESSION\0"
#: Below clamd's default StreamMaxLength chunking needs; each chunk is at most this.
CHUNK_SIZE = 64 * 1024
#: A reply longer than this is not clamd's (the longest signature names are ~200 bytes).
MAX_REPLY = 4096


class ClamdProtocolError(Exception):
    """The bytes received are not a clamd reply."""


@dataclass(frozen=True)
class Clean:
    """clamd found nothing."""


@dataclass(frozen=True)
class Infected:
    """clamd matched *signature* (e.g. ``Win.Test.EICAR_HDB-1``)."""

    signature: str


@dataclass(frozen=True)
class ScanFailed:
    """clamd could not scan the stream; *reason* is its own words."""

    reason: str


ClamdResult = Clean | Infected | ScanFailed


def instream_request(content: bytes, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the bytes of one ``zINSTREAM`` request carrying *content*."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    yield INSTREAM_COMMAND
    view = memoryview(content)
    for start in range(0, len(content), chunk_size):
        chunk = view[start : start + chunk_size]
        yield struct.pack("!I", len(chunk)) + bytes(chunk)
    yield struct.pack("!I", 0)


class ReplyReader:
    """Collect a clamd reply from the bytes received; `result` once it is whole.

    With *session* set to the command's number in an ``IDSESSION``, the reply must carry
    that number (``N: ``); a reply to another command is a `ClamdProtocolError`.
    """

    def __init__(self, session: int | None = None) -> None:
        self._buffer = bytearray()
        self._session = session
        self.result: ClamdResult | None = None

    def receive_data(self, data: bytes) -> ClamdResult | None:
        """Feed received bytes; return the result once the terminating NUL arrived.

        ``data == b""`` means the daemon closed the connection: a reply cut short is a
        `ClamdProtocolError`, never a clean result.
        """
        if self.result is not None:
            return self.result
        if not data:
            raise ClamdProtocolError("clamd closed the connection before its reply ended")
        self._buffer += data
        end = self._buffer.find(b"\0")
        if end < 0:
            if len(self._buffer) > MAX_REPLY:
                raise ClamdProtocolError("clamd reply too long")
            return None
        line = bytes(self._buffer[:end])
        if self._session is not None:
            number, line = split_session_reply(line)
            if number != self._session:
                raise ClamdProtocolError(f"clamd answered command {number}, not {self._session}")
        self.result = parse_reply(line)
        return self.result


def split_session_reply(line: bytes) -> tuple[int, bytes]:
    """Split a reply inside an ``IDSESSION`` into the command's number and the reply.

    Raises `ClamdProtocolError` when the line does not start with ``<number>: ``.
    """
    number, sep, rest = line.partition(b": ")
    if not sep or not number.isdigit() or len(number) > 9:
        raise ClamdProtocolError(f"not a clamd session reply: {line[:80]!r}")
    return int(number), rest


def parse_reply(line: bytes) -> ClamdResult:
    """Read one reply line (without its terminator) into a result.

    Raises `ClamdProtocolError` for anything that is none of the three forms.
    """
    text = line.decode("utf-8", "replace").strip()
    if text.endswith(" ERROR"):
        return ScanFailed(text.removesuffix(" ERROR").strip() or "unknown error")
    # With IDSESSION a reply starts "<id>: "; `split_session_reply` takes that off first.
    name, sep, status = text.partition(": ")
    if not sep or name.strip() != "stream":
        raise ClamdProtocolError(f"not a clamd reply: {text[:80]!r}")
    if status == "OK":
        return Clean()
    if status.endswith(" FOUND"):
        signature = status.removesuffix(" FOUND").strip()
        if signature:
            return Infected(signature)
    raise ClamdProtocolError(f"not a clamd reply: {text[:80]!r}")


# --- the control commands: VERSION and RELOAD -------------------------------------------

#: clamd(8) "VERSION": the engine's version, the loaded database's version and its date.
VERSION_COMMAND = b"zVERSION\0"
#: clamd(8) "RELOAD": read the databases again; answers ``RELOADING``.
RELOAD_COMMAND = b"zRELOAD\0"


@dataclass(frozen=True)
class EngineVersion:
    """clamd's answer to VERSION: ``ClamAV 1.0.7/27000/Mon Dec  7 09:30:00 2026``.

    *database* and *built* are None when clamd runs on databases without a daily
    version (only ``.ndb`` files, as in the tests): then it answers ``ClamAV 1.0.7``.
    """

    engine: str
    database: int | None
    built: str | None


def parse_version(line: bytes) -> EngineVersion:
    """Read clamd's VERSION reply (without its terminator); raise `ClamdProtocolError`."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("ClamAV "):
        raise ClamdProtocolError(f"not a clamd VERSION reply: {text[:80]!r}")
    parts = text.split("/", 2)
    engine = parts[0].removeprefix("ClamAV ").strip()
    if len(parts) == 1:
        return EngineVersion(engine, None, None)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].strip():
        raise ClamdProtocolError(f"not a clamd VERSION reply: {text[:80]!r}")
    return EngineVersion(engine, int(parts[1]), parts[2].strip())
