"""The Linux kernel watchdog API (Documentation/watchdog/watchdog-api.rst), for real.

Open the device, set the timeout with ``WDIOC_SETTIMEOUT``, write a byte to keep the
machine alive, and on a clean stop write the magic ``V`` before closing so the driver
disarms (without it, a driver with ``nowayout`` unset still resets: the stop was not
clean). The ioctl is a parameter so the twin (`hw.twins.FakeWatchdogDevice`) can stand
in for the device; everything else is the same code.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# <linux/watchdog.h>: _IOWR('W', 6, int) and _IOR('W', 7, int).
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707

Ioctl = Callable[[int, int, bytes], bytes]


class Watchdog(Protocol):
    """A watchdog the box keeps alive while it is healthy."""

    def keepalive(self) -> None: ...

    def close(self) -> None: ...


class KernelWatchdog:
    """``/dev/watchdog`` (or a SoC's ``/dev/watchdogN``), armed on open."""

    def __init__(self, path: Path, timeout: int, ioctl: Ioctl = fcntl.ioctl) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            answer = ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
        except OSError:
            os.close(self.fd)
            raise
        #: The timeout the driver chose (it may round to what the hardware can do).
        self.timeout = struct.unpack("i", answer)[0]

    def keepalive(self) -> None:
        os.write(self.fd, b"\0")

    def close(self) -> None:
        """Stop cleanly: the magic close disarms the watchdog."""
        os.write(self.fd, b"V")
        os.close(self.fd)
