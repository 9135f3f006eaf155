"""Buttons on gpio-keys, read over evdev (``/dev/input/event*``): a sans-I/O decoder.

Each read returns whole ``struct input_event`` records (<linux/input.h>): on 64-bit
Linux a ``timeval`` (two longs), then ``__u16 type``, ``__u16 code``, ``__s32 value``.
Only key events (EV_KEY) matter; value 1 is a press, 0 a release, 2 autorepeat.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EVENT = struct.Struct("llHHi")
EV_KEY = 0x01


@dataclass(frozen=True)
class KeyEvent:
    code: int
    pressed: bool
    #: Seconds since the epoch, from the kernel's timestamp.
    at: float


class EvdevDecoder:
    """Turn bytes read from an evdev device into `KeyEvent`s; keeps a partial record."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[KeyEvent]:
        self._buffer += data
        events = []
        whole = len(self._buffer) - len(self._buffer) % EVENT.size
        for offset in range(0, whole, EVENT.size):
            seconds, micros, kind, code, value = EVENT.unpack_from(self._buffer, offset)
            if kind == EV_KEY and value in (0, 1):
                events.append(KeyEvent(code, value == 1, seconds + micros / 1e6))
        self._buffer = self._buffer[whole:]
        return events
