"""The host's end of the front-panel link: a thin trio layer over `hw.panel_link`.

`PanelClient` moves bytes between a `SerialPort` and the sans-I/O `Link`, keeps the
panel's picture of the box current (`show`), sends heartbeats, arms the panel's
watchdog and hands button presses and reset reports to its owner. It knows nothing of
mail or links: the panel service (`appliance.panel`) decides what the fields say.
"""

from __future__ import annotations

import errno
import logging
import os
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from hw import panel_link as L

log = logging.getLogger("edgebox.panel")

#: Frames the host accepts from the panel (protocol version 1).
ACCEPTS = (L.BUTTON, L.RESET_REASON)
SOFTWARE = "edgebox-host 1"


class SerialPort(Protocol):
    """A byte pipe to the panel (a tty in production, a pty in tests)."""

    async def receive(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class TTYPort:
    """A serial tty (``/dev/ttyACM0``, ``/dev/ttyAMA0``, a pty) in raw mode, non-blocking."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        # 115200 8N1 on a real UART; a pty ignores the speed.
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                # EIO: the other end of a pty went away; wait for it to come back.
                if exc.errno != errno.EIO:
                    raise
                await trio.sleep(0.2)
                continue
            if data:
                return data

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            view = view[written:]

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class ButtonPressed:
    """The panel's button: ``next`` (a short press), ``factory-reset``, ``recovery``."""

    what: str


@dataclass(frozen=True)
class HostWasReset:
    """The panel reset the host (its heartbeats stopped) and says why."""

    reason: str


PanelEvent = ButtonPressed | HostWasReset


class PanelClient:
    """Keep the panel informed and hear from it, over one `SerialPort`."""

    def __init__(
        self,
        port: SerialPort,
        on_event: Callable[[PanelEvent], None],
        heartbeat_s: float = 1.0,
        watchdog_s: int = 0,
        tick_s: float = 0.1,
    ) -> None:
        self.port = port
        self.on_event = on_event
        self.heartbeat_s = heartbeat_s
        self.watchdog_s = watchdog_s
        self.tick_s = tick_s
        self.link = L.Link(ACCEPTS, SOFTWARE, initiator=True)
        #: What the panel said it runs (``edgebox-panel VERSION``), once connected.
        self.panel_software = ""
        self._fields: dict[str, str] = {}
        self._sent_fields: dict[str, str] | None = None
        self._wake = trio.Event()
        self._connected = trio.Event()
        self._send_lock = trio.Lock()

    @property
    def connected(self) -> bool:
        return self.link.connected

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def show(self, fields: dict[str, str]) -> None:
        """Make *fields* the panel's picture of the box (sent at once if they changed)."""
        self._fields = dict(fields)
        if fields != self._sent_fields:
            self._wake.set()

    def confirm(self, text: str) -> None:
        """Tell the panel the host took a request (shown on its display)."""
        self.link.send(L.CONFIRM, text.encode()[: L.MAX_BODY], self._now())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the link until cancelled; a clean stop disarms the panel's watchdog."""
        self.link.connect(self._now())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                task_status.started()
                await self._tick()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._disarm()

    async def _disarm(self) -> None:
        # Like the kernel watchdog's magic close: a host that stops on purpose must not
        # be reset for it.
        if self.link.connected and self.watchdog_s:
            self.link.send(L.WATCHDOG, b"\x00\x00", self._now())
            await self._flush()
            await trio.sleep(0.1)

    def _now(self) -> int:
        return int(trio.current_time() * 1000)

    async def _read(self) -> None:
        while True:
            data = await self.port.receive()
            self.link.receive_data(data, self._now())
            await self._after_input()

    async def _tick(self) -> None:
        next_beat = trio.current_time()
        while True:
            with trio.move_on_after(self.tick_s):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            if self.link.connected:
                if self._fields != self._sent_fields and self.link.pending() == 0:
                    body = L.encode_state(self._fields)
                    if self.link.send(L.STATE, body, self._now()):
                        self._sent_fields = dict(self._fields)
                if now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    if self.link.pending() < 4:
                        self.link.send(L.HEARTBEAT, b"", self._now())
            self.link.poll(self._now())
            await self._after_input()

    async def _after_input(self) -> None:
        now = self._now()
        while (event := self.link.next_event()) is not None:
            if event.kind == L.LOST:
                log.warning("front panel not answering; saying hello again")
                self._connected = trio.Event()
                self.link.connect(now)
            elif event.kind in (L.CONNECTED, L.PEER_HELLO):
                if event.peer_software:
                    self.panel_software = event.peer_software
                log.info("front panel connected: %s", self.panel_software or "?")
                self._sent_fields = None
                if self.watchdog_s:
                    seconds = min(self.watchdog_s, 0xFFFF)
                    self.link.send(L.WATCHDOG, bytes([seconds >> 8, seconds & 0xFF]), now)
                self._connected.set()
                self._wake.set()
            elif event.kind == L.REFUSED:
                log.warning("front panel refused frame 0x%02x (code %d)", event.type, event.code)
            elif event.kind == L.MESSAGE and event.type == L.BUTTON:
                self.on_event(ButtonPressed(L._text(event.body)))
            elif event.kind == L.MESSAGE and event.type == L.RESET_REASON:
                self.on_event(HostWasReset(L._text(event.body)))
        await self._flush()

    async def _flush(self) -> None:
        # Two tasks flush; the lock keeps one frame's bytes together on the wire.
        async with self._send_lock:
            data = self.link.data_to_send()
            if data:
                await self.port.send(data)
