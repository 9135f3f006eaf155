"""The MX workers' hand-off to the main process: a length-framed codec, bytes in, frames out.

This is the wire between an SMTP worker process (the dialogue, the policy, SPF, DKIM,
DMARC and the scan) and the box's one writer in the main process (docs/architecture.md,
"The process model"). It is sans-I/O like the SMTP core: no sockets, no trio, no clock;
`appliance.mail.smtp.pool` moves the bytes over a unix socket.

A frame on the wire::

    length   4 bytes, big-endian: the bytes that follow (kind + header length + rest)
    kind     1 byte (`Kind`)
    hlen     4 bytes, big-endian: the header's length
    header   hlen bytes of UTF-8 JSON, one object (the envelope, an id, a reply ...)
    body     the rest: raw bytes (a message's fields and content), often empty

Why this shape: a message is up to `max_message_size` of arbitrary bytes, so it travels
raw after its header rather than escaped inside JSON (a 1 MiB message would grow by a
third as base64 and cost a copy to decode); the small, structured part is JSON so both
ends read it without a schema compiler. The length comes first so the reader knows the
whole frame before it parses anything, and refuses an oversized one before buffering it.

Who sends what (the order of a message's life):

- main → worker: `Kind.HELLO` once (the worker's settings), then `STORED` or
  `REFUSED` answering each `DELIVER`, and `RECORDED` answering each `RECORD`;
- worker → main: `READY` once it listens, `DELIVER` (envelope and stored-form parts;
  the 250 waits for `STORED`, which the main process sends only after the fsync),
  `RECORD` (a traffic-log line, answered once it is fsynced) and `COUNT` (a metric).

A frame that breaks these rules raises `FrameError` with what was wrong; the stream is
unusable after it (a length cannot be trusted again), so the decoder stays broken.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

#: Bytes of the length prefix, and of the header-length field.
_LENGTH = 4
#: The smallest frame after its length: the kind and the header length.
_MINIMUM = 1 + _LENGTH
#: Frames larger than this are refused unless the decoder is told otherwise: room for
#: the largest message the settings allow (50 MiB) with its envelope and fields.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    """What a frame carries; the number is its byte on the wire."""

    #: main → worker, first: ``{"worker": n, "config": {...}}``.
    HELLO = 1
    #: worker → main, once its listener is served.
    READY = 2
    #: worker → main: ``{"id", "envelope", "folder", "on_top": [lengths]}``; body:
    #: the on-top fields, then the message content.
    DELIVER = 3
    #: main → worker: ``{"id", "queue_id"}``; the message is fsynced.
    STORED = 4
    #: main → worker: ``{"id", "error": "quota" | "disk-full" | "failed", "owner"?}``;
    #: nothing was stored.
    REFUSED = 5
    #: worker → main: ``{"id", "record": {...}}``, one traffic-log line.
    RECORD = 6
    #: main → worker: ``{"id"}``; the line is fsynced (or its write failed and was logged).
    RECORDED = 7
    #: worker → main: ``{"metric", "labels": [...], "amount"}``, a counter's increment.
    COUNT = 8


class FrameError(Exception):
    """The byte stream does not hold a valid frame; the message says what was wrong."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: Kind
    header: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""


def encode(frame: Frame) -> bytes:
    """Return *frame* as bytes on the wire."""
    return encode_head(frame.kind, frame.header, len(frame.body)) + frame.body


def encode_head(kind: Kind, header: dict[str, Any], body_length: int) -> bytes:
    """Return a frame's bytes up to its body, for a body of *body_length* sent after it.

    A large message is written to the stream in its parts after this head, never
    joined into one `bytes` first (a copy per message, docs/BENCHMARKS.md issue 21).
    """
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    length = 1 + _LENGTH + len(encoded) + body_length
    return b"".join(
        (
            length.to_bytes(_LENGTH, "big"),
            bytes((kind,)),
            len(encoded).to_bytes(_LENGTH, "big"),
            encoded,
        )
    )


class FrameDecoder:
    """Collect bytes as they arrive and return whole frames; see the module docstring."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._broken: FrameError | None = None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add *data* as it came off the stream (any split of the frames)."""
        if self._broken is None:  # a broken stream's bytes are not kept
            self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a returned frame."""
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None until more bytes arrive.

        Raises `FrameError` for a frame that breaks the rules, and again on every later
        call: after a bad length nothing that follows can be framed.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._next()
        except FrameError as exc:
            self._broken = exc
            self._buffer.clear()
            raise

    def _next(self) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < _LENGTH:
            return None
        length = int.from_bytes(buffer[:_LENGTH], "big")
        if length < _MINIMUM:
            raise FrameError(f"frame length {length} is shorter than a frame's head")
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes is over the limit of {self.max_frame}")
        if len(buffer) < _LENGTH + length:
            return None
        start = _LENGTH
        kind_byte = buffer[start]
        try:
            kind = Kind(kind_byte)
        except ValueError:
            raise FrameError(f"unknown frame kind {kind_byte}") from None
        header_length = int.from_bytes(buffer[start + 1 : start + _MINIMUM], "big")
        if header_length > length - _MINIMUM:
            raise FrameError(f"header of {header_length} bytes does not fit a frame of {length}")
        header_start = start + _MINIMUM
        body_start = header_start + header_length
        end = _LENGTH + length
        try:
            header = json.loads(bytes(buffer[header_start:body_start]).decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise FrameError(f"{kind.name} header is not UTF-8 JSON: {exc}") from None
        if not isinstance(header, dict):
            raise FrameError(f"{kind.name} header is {type(header).__name__}, not an object")
        body = bytes(buffer[body_start:end])
        del buffer[:end]
        return Frame(kind, header, body)
