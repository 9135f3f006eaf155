"""The front-panel serial link: frames, acknowledgement, retransmission, versions.

Sans-I/O: bytes in, events out; no serial port, no clock (the caller passes ``now``
in milliseconds) and no asyncio or trio. This ONE file runs unchanged under CPython
(``hw.panel``, the host) and MicroPython (``firmware/main.py``, the panel MCU), so it
uses only what both have: no ``__future__``, ``typing``, ``enum``, ``dataclasses`` or
``struct``; annotations are never evaluated (MicroPython discards them). `make
firmware` copies it next to the firmware's own modules.

Wire format. A frame is ``type, seq, len, body[len], crc16`` (CRC-16/CCITT-FALSE over
type..body, big-endian), COBS-encoded between two 0x00 delimiters. COBS leaves
no zero byte inside a frame, so a receiver resynchronises at the next 0x00 whatever it
was fed: garbage, a bit flip (the CRC fails, the frame is dropped and counted), a
truncated frame (the length or CRC fails) or an overlong run (dropped at `MAX_WIRE`).

Rules of the link:

- The initiator (the host) sends HELLO (its lowest and highest protocol version and
  its software version) at start and whenever the link went down. The receiver picks
  the highest common version, resets its receive state and answers WELCOME, or answers
  ERROR(NO_VERSION) and stays down. The HELLO sender is connected when the WELCOME
  comes; it resends HELLO every `retransmit_ms` until then.
- Every other frame but ACK and ERROR is reliable: sent one at a time (stop and wait),
  resent every `retransmit_ms` until its ACK (same seq), given up after `max_tries`
  (then the link is down, the event says so and the initiator says HELLO again). A
  duplicate (the peer missed our ACK) is acknowledged again and not delivered twice.
- A frame whose type this end does not know is refused with ERROR(UNKNOWN_TYPE), and
  the link stays up; the sender drops that frame and reports it refused. A reliable
  frame before any HELLO is answered with ERROR(NO_SESSION): the sender
  keeps the frame for the next session, and the initiator starts one.
"""

# Frame types of the link itself (every version).
HELLO = 0x01
WELCOME = 0x02
ACK = 0x03
ERROR = 0x04
# Frame types of protocol version 1, the panel's messages.
HEARTBEAT = 0x10  # host -> panel: the host is alive
STATE = 0x11  # host -> panel: key=value lines (see `encode_state`)
WATCHDOG = 0x12  # host -> panel: body = heartbeat timeout in seconds (2 bytes); 0 disarms
CONFIRM = 0x13  # host -> panel: body = what the host acknowledged (text)
BUTTON = 0x20  # panel -> host: body = one of the BUTTON_* words
RESET_REASON = 0x21  # panel -> host: why the panel reset the host last time (text)

# ERROR codes (the first body byte; the second is the refused frame's type).
UNKNOWN_TYPE = 1
NO_VERSION = 2
NO_SESSION = 3

# Event kinds.
CONNECTED = 1  #: a HELLO/WELCOME exchange finished: `version`, `peer_software`
MESSAGE = 2  #: a reliable frame arrived, once: `type`, `body`
REFUSED = 3  #: the peer refused our frame: `type`, `code`
LOST = 4  #: a frame went unacknowledged `max_tries` times; the link is down
PEER_HELLO = 5  #: the peer (re)started its session: `version`, `peer_software`
ACKED = 6  #: the peer acknowledged our reliable frame of `type`

#: Button words in a BUTTON body.
BUTTON_NEXT = b"next"
BUTTON_FACTORY_RESET = b"factory-reset"
BUTTON_RECOVERY = b"recovery"

#: Largest body; the length field is one byte.
MAX_BODY = 255
#: Largest encoded frame: COBS adds one byte per 254, plus the delimiter.
MAX_WIRE = 3 + MAX_BODY + 2 + 4
#: Longest STATE value: four display lines of 16 characters.
MAX_VALUE = 64
#: Frames waiting for their turn; a full queue drops the new frame (`send` says so).
MAX_QUEUE = 32


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Return the CRC-16/CCITT-FALSE of *data* (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Return *data* with every zero byte removed by Consistent Overhead Byte Stuffing."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out.extend(block)
            block = bytearray()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out.extend(block)
                block = bytearray()
    out.append(len(block) + 1)
    out.extend(block)
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """Undo `cobs_encode`; None when *data* is not a valid encoding."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        block = data[i + 1 : end]
        if b"\x00" in block:
            return None
        out.extend(block)
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(frame_type: int, seq: int, body: bytes = b"") -> bytes:
    """Return one frame as it goes on the wire, delimiters included."""
    if len(body) > MAX_BODY:
        raise ValueError("frame body too long")
    raw = bytes([frame_type & 0xFF, seq & 0xFF, len(body)]) + body
    crc = crc16(raw)
    # A delimiter on both sides: the leading one ends whatever partial frame line noise
    # left in the receiver, so this frame is read whole (an empty frame is ignored).
    return b"\x00" + cobs_encode(raw + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def decode_frame(wire: bytes) -> tuple[int, int, bytes] | None:
    """Return ``(type, seq, body)`` of one frame without its delimiter, or None if bad."""
    raw = cobs_decode(wire)
    if raw is None or len(raw) < 5 or raw[2] != len(raw) - 5:
        return None
    if crc16(raw[:-2]) != (raw[-2] << 8) | raw[-1]:
        return None
    return raw[0], raw[1], raw[3:-2]


class Event:
    """Something the link tells its owner; `kind` is one of the event kinds above."""

    __slots__ = ("body", "code", "kind", "peer_software", "type", "version")

    def __init__(
        self,
        kind: int,
        frame_type: int = 0,
        body: bytes = b"",
        code: int = 0,
        version: int = 0,
        peer_software: str = "",
    ) -> None:
        self.kind = kind
        self.type = frame_type
        self.body = body
        self.code = code
        self.version = version
        self.peer_software = peer_software

    def __repr__(self) -> str:
        # %-formatting: the one string formatting every MicroPython port is built with.
        return "Event(kind=%d, type=0x%02x, body=%r, code=%d, version=%d)" % (  # noqa: UP031
            self.kind,
            self.type,
            self.body,
            self.code,
            self.version,
        )


class Link:
    """One end of the panel link: feed it bytes and time, take events and bytes out."""

    def __init__(
        self,
        accepts: tuple[int, ...],
        software: str,
        min_version: int = 1,
        max_version: int = 1,
        retransmit_ms: int = 250,
        max_tries: int = 8,
        initiator: bool = False,
    ) -> None:
        #: Application frame types this end understands; others are refused.
        self.accepts = accepts
        self.software = software
        self.min_version = min_version
        self.max_version = max_version
        self.retransmit_ms = retransmit_ms
        self.max_tries = max_tries
        #: The end that says HELLO (the host). One initiator: HELLOs never cross.
        self.initiator = initiator
        #: The negotiated version; 0 while the link is down.
        self.version = 0
        #: Frames that failed COBS, length or CRC checks (resynchronised past).
        self.bad_frames = 0
        self._rx = bytearray()
        self._discarding = False
        self._out = bytearray()
        self._events: list[Event] = []
        self._queue: list[tuple[int, bytes]] = []
        self._seq = 0
        self._inflight: tuple[int, int, bytes] | None = None
        self._sent_at = 0
        self._tries = 0
        self._hello_at: int | None = None
        self._hello_seq = -1
        self._last_rx_seq = -1
        self._peer_hello_seq = -1

    @property
    def connected(self) -> bool:
        return self.version != 0

    # -- sending ------------------------------------------------------------------

    def connect(self, now: int) -> None:
        """Start (or restart) the session: say HELLO until the peer answers."""
        self.version = 0
        self._inflight = None
        self._hello_seq = self._next_seq()
        self._emit_hello()
        self._hello_at = now

    def send(self, frame_type: int, body: bytes, now: int) -> bool:
        """Queue one reliable frame; False if the link is down or the queue is full."""
        if not self.connected or len(self._queue) >= MAX_QUEUE:
            return False
        if len(body) > MAX_BODY:
            raise ValueError("frame body too long")
        self._queue.append((frame_type, body))
        self._pump(now)
        return True

    def pending(self) -> int:
        """Return how many reliable frames are queued or unacknowledged."""
        return len(self._queue) + (1 if self._inflight is not None else 0)

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the serial port."""
        data = bytes(self._out)
        self._out = bytearray()
        return data

    def poll(self, now: int) -> None:
        """Resend what is due at *now*."""
        if self._hello_at is not None and now - self._hello_at >= self.retransmit_ms:
            self._emit_hello()
            self._hello_at = now
        if self._inflight is not None and now - self._sent_at >= self.retransmit_ms:
            if self._tries >= self.max_tries:
                frame_type = self._inflight[1]
                self._inflight = None
                self._queue = []
                self.version = 0
                self._events.append(Event(LOST, frame_type))
                return
            self._transmit(now)
        self._pump(now)

    # -- receiving ----------------------------------------------------------------

    def receive_data(self, data: bytes, now: int) -> None:
        """Take bytes read from the serial port, in any chunks."""
        for byte in data:
            if byte != 0:
                if self._discarding:
                    continue
                if len(self._rx) >= MAX_WIRE:
                    # An overlong run: no frame is this long; skip to the next delimiter.
                    self._rx = bytearray()
                    self._discarding = True
                    self.bad_frames += 1
                    continue
                self._rx.append(byte)
                continue
            wire = bytes(self._rx)
            self._rx = bytearray()
            if self._discarding:
                self._discarding = False
                continue
            if not wire:
                continue  # an idle delimiter (senders may flush with one)
            frame = decode_frame(wire)
            if frame is None:
                self.bad_frames += 1
                continue
            self._handle(frame[0], frame[1], frame[2], now)

    def next_event(self) -> Event | None:
        """Return the oldest event not yet taken, or None."""
        if self._events:
            return self._events.pop(0)
        return None

    # -- inside -------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _emit(self, frame_type: int, seq: int, body: bytes) -> None:
        self._out.extend(encode_frame(frame_type, seq, body))

    def _emit_hello(self) -> None:
        body = bytes([self.min_version, self.max_version]) + self.software.encode()
        self._emit(HELLO, self._hello_seq, body[:MAX_BODY])

    def _pump(self, now: int) -> None:
        if self._inflight is None and self._queue and self.connected:
            frame_type, body = self._queue.pop(0)
            self._inflight = (self._next_seq(), frame_type, body)
            self._tries = 0
            self._transmit(now)

    def _transmit(self, now: int) -> None:
        assert self._inflight is not None
        seq, frame_type, body = self._inflight
        self._emit(frame_type, seq, body)
        self._sent_at = now
        self._tries += 1

    def _handle(self, frame_type: int, seq: int, body: bytes, now: int) -> None:
        if frame_type == HELLO:
            self._on_hello(seq, body, now)
        elif frame_type == WELCOME:
            if self._hello_at is not None and seq == self._hello_seq and len(body) >= 1:
                # The receive state is kept: the peer is the same instance it was, and
                # its unacknowledged frame, resent, must not be delivered twice.
                self._hello_at = None
                self.version = body[0]
                self._events.append(
                    Event(CONNECTED, version=body[0], peer_software=_text(body[1:]))
                )
                self._pump(now)
        elif frame_type == ACK:
            if self._inflight is not None and seq == self._inflight[0]:
                self._events.append(Event(ACKED, self._inflight[1]))
                self._inflight = None
                self._pump(now)
        elif frame_type == ERROR:
            if self._inflight is not None and seq == self._inflight[0]:
                code = body[0] if body else 0
                if code == NO_SESSION:
                    # The peer restarted and forgot us: the frame was not refused for
                    # what it says. It goes first in the next session, which the
                    # initiator starts now and the other end waits for.
                    self._queue.insert(0, (self._inflight[1], self._inflight[2]))
                    self._inflight = None
                    self.version = 0
                    if self.initiator:
                        self.connect(now)
                    return
                self._events.append(Event(REFUSED, self._inflight[1], code=code))
                self._inflight = None
                self._pump(now)
            elif self._hello_at is not None and seq == self._hello_seq:
                self._events.append(Event(REFUSED, HELLO, code=body[0] if body else 0))
        elif frame_type not in self.accepts:
            # Refused, not fatal: an older panel meets a newer host this way.
            self._emit(ERROR, seq, bytes([UNKNOWN_TYPE, frame_type]))
        elif not self.connected:
            self._emit(ERROR, seq, bytes([NO_SESSION, frame_type]))
        else:
            self._emit(ACK, seq, b"")
            if seq != self._last_rx_seq:
                self._last_rx_seq = seq
                self._events.append(Event(MESSAGE, frame_type, body))

    def _on_hello(self, seq: int, body: bytes, now: int) -> None:
        if len(body) < 2:
            self.bad_frames += 1
            return
        low = max(body[0], self.min_version)
        high = min(body[1], self.max_version)
        if low > high:
            self._emit(ERROR, seq, bytes([NO_VERSION, HELLO]))
            return
        if seq == self._peer_hello_seq and self.connected:
            # Our WELCOME was lost; the session stands.
            self._emit(WELCOME, seq, bytes([high]) + self.software.encode())
            return
        self._peer_hello_seq = seq
        self._last_rx_seq = -1
        self.version = high
        self._hello_at = None
        self._emit(WELCOME, seq, bytes([high]) + self.software.encode())
        self._events.append(Event(PEER_HELLO, version=high, peer_software=_text(body[2:])))
        if self._inflight is not None:
            self._transmit(now)
        else:
            self._pump(now)


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeError:
        return ""


def encode_state(fields: dict[str, str]) -> bytes:
    """Return a STATE body: ``key=value`` lines, values cut to `MAX_VALUE` characters.

    A line that would overflow `MAX_BODY` is left out; the others still go.
    """
    out = b""
    for key in sorted(fields):
        value = fields[key].replace("\n", " ")[:MAX_VALUE]
        line = (key + "=" + value).encode() + b"\n"
        if len(out) + len(line) <= MAX_BODY:
            out += line
    return out


def decode_state(body: bytes) -> dict[str, str]:
    """Return the fields of a STATE body; lines that are not ``key=value`` are skipped."""
    fields = {}
    for line in _text(body).split("\n"):
        parts = line.split("=", 1)
        if len(parts) == 2:
            fields[parts[0]] = parts[1]
    return fields
