"""The front-panel firmware: asyncio tasks for the link, display, LED, button, watchdog.

Runs on the RP2040 (`main.py` calls `run()`) and, unchanged, on the MicroPython unix
port with the simulated `machine` module of `firmware/sim/`. Everything it knows about
the box comes from the host over the serial link (`panel_link`); the only things it
decides alone are the LED pattern and page (from the host's STATE) and, when the host's
heartbeats stop for longer than the host asked, resetting the host.
"""

import asyncio
import os
import time

import board
import machine
import pages
import panel_link as L
import ssd1306
import version

#: Application frames the panel accepts from the host (protocol version 1).
ACCEPTS = (L.HEARTBEAT, L.STATE, L.WATCHDOG, L.CONFIRM)
#: How often the link task looks at the UART.
LINK_TICK_MS = 10
BUTTON_TICK_MS = 20
#: A short notice (factory reset asked, host reset) stays this long.
NOTICE_MS = 5000


class Clock:
    """Milliseconds since boot that never wrap (ticks_ms wraps after ~12 days on rp2)."""

    def __init__(self):
        self._last = time.ticks_ms()
        self._now = 0

    def now(self):
        tick = time.ticks_ms()
        self._now += time.ticks_diff(tick, self._last)
        self._last = tick
        return self._now


class Panel:
    def __init__(self):
        self.clock = Clock()
        self.uart = machine.UART(
            board.UART_ID, baudrate=board.UART_BAUD, tx=machine.Pin(board.UART_TX),
            rx=machine.Pin(board.UART_RX),
        )
        i2c = machine.I2C(
            board.I2C_ID, sda=machine.Pin(board.I2C_SDA), scl=machine.Pin(board.I2C_SCL),
            freq=board.I2C_FREQ,
        )
        self.display = ssd1306.SSD1306(
            i2c, board.DISPLAY_ADDR, board.DISPLAY_WIDTH, board.DISPLAY_HEIGHT
        )
        self.led = machine.Pin(board.STATUS_LED, machine.Pin.OUT, value=0)
        self.button = machine.Pin(board.BUTTON, machine.Pin.IN, machine.Pin.PULL_UP)
        # Open drain idles released (1); the host's reset is active low.
        self.reset_line = machine.Pin(board.HOST_RESET, machine.Pin.OPEN_DRAIN, value=1)
        self.wdt = machine.WDT(timeout=board.MCU_WDT_MS)
        # The host starts every session; the panel answers its HELLO.
        self.link = L.Link(ACCEPTS, "edgebox-panel " + version.VERSION)
        self.state = {}
        self.page = pages.BOX
        self.notice = None
        self.notice_until = 0
        self.dirty = True
        #: Heartbeat timeout the host asked for, ms; 0 = not armed.
        self.watchdog_ms = 0
        self.last_heard = 0
        #: Frames for the host (button requests, the reset reason), kept until acknowledged.
        self.outbox = []
        self.awaiting = None
        if self.button.value() == 0:
            # Held while powering on: the technician asks for recovery.
            self.outbox.append((L.BUTTON, L.BUTTON_RECOVERY))
            self.show_notice(["RECOVERY", "asked the host"])
        reason = _read_reset_reason()
        if reason:
            self.outbox.append((L.RESET_REASON, reason.encode()))

    def show_notice(self, text_lines):
        self.notice = text_lines
        self.notice_until = self.clock.now() + NOTICE_MS
        self.dirty = True

    # -- link -----------------------------------------------------------------

    async def link_task(self):
        while True:
            data = self.uart.read()
            now = self.clock.now()
            if data:
                self.link.receive_data(data, now)
            self.link.poll(now)
            while True:
                event = self.link.next_event()
                if event is None:
                    break
                self.on_event(event, now)
            if self.link.connected and self.outbox and self.awaiting is None:
                frame_type, body = self.outbox[0]
                if self.link.send(frame_type, body, now):
                    self.awaiting = frame_type
            out = self.link.data_to_send()
            if out:
                self.uart.write(out)
            await asyncio.sleep_ms(LINK_TICK_MS)

    def on_event(self, event, now):
        if event.kind == L.LOST:
            # The host is gone (reset, rebooting): what we were sending goes again once
            # it says HELLO.
            self.awaiting = None
            return
        if event.kind == L.REFUSED:
            # An older host that does not know this frame: drop it, go on with the rest.
            if self.awaiting is not None and event.type == self.awaiting and self.outbox:
                self.outbox.pop(0)
            self.awaiting = None
            return
        if event.kind == L.ACKED:
            if self.awaiting is not None and event.type == self.awaiting and self.outbox:
                frame_type = self.outbox.pop(0)[0]
                if frame_type == L.RESET_REASON:
                    _clear_reset_reason()
            self.awaiting = None
            return
        if event.kind in (L.CONNECTED, L.PEER_HELLO):
            self.last_heard = now
            return
        if event.kind != L.MESSAGE:
            return
        self.last_heard = now
        if event.type == L.STATE:
            state = L.decode_state(event.body)
            if state.get("gin") == "down" and self.state.get("gin") != "down":
                # The uplink just went: show it without waiting for a press.
                self.page = pages.LINKS
            if state.get("prov") == "no" and self.state.get("prov") != "no":
                # Unprovisioned: the setup code is what the installer needs first.
                self.page = pages.SETUP
            phase = state.get("uphase", "")
            if phase and phase != self.state.get("uphase", ""):
                # An update started, moved on or ended: show it without a press.
                self.page = pages.UPDATE
            self.state = state
            self.dirty = True
        elif event.type == L.WATCHDOG and len(event.body) == 2:
            self.watchdog_ms = ((event.body[0] << 8) | event.body[1]) * 1000
        elif event.type == L.CONFIRM:
            self.show_notice(["HOST SAYS"] + pages._wrap(L._text(event.body), pages.COLUMNS, 4))

    def request(self, frame_type, body):
        self.outbox.append((frame_type, body))

    # -- watchdog -------------------------------------------------------------

    async def watchdog_task(self):
        while True:
            self.wdt.feed()
            now = self.clock.now()
            if self.watchdog_ms and now - self.last_heard > self.watchdog_ms:
                seconds = (now - self.last_heard) // 1000
                reason = "no heartbeat for %d s (limit %d s)" % (
                    seconds,
                    self.watchdog_ms // 1000,
                )
                # Written before the pulse: the host's reboot may take our power too.
                _write_reset_reason(reason)
                self.watchdog_ms = 0
                self.reset_line.value(0)
                await asyncio.sleep_ms(board.RESET_PULSE_MS)
                self.reset_line.value(1)
                self.outbox.append((L.RESET_REASON, reason.encode()))
                self.show_notice(["HOST RESET"] + pages._wrap(reason, pages.COLUMNS, 4))
            await asyncio.sleep_ms(100)

    # -- button ---------------------------------------------------------------

    async def button_task(self):
        pressed_at = None
        asked = False
        # A button still held from power-on is the recovery request, not a page press.
        while self.button.value() == 0:
            await asyncio.sleep_ms(BUTTON_TICK_MS)
        while True:
            down = self.button.value() == 0
            now = self.clock.now()
            if down and pressed_at is None:
                pressed_at = now
                asked = False
            elif down and not asked and now - pressed_at >= board.LONG_HOLD_MS:
                asked = True
                self.request(L.BUTTON, L.BUTTON_FACTORY_RESET)
                self.show_notice(["FACTORY RESET", "asked the host", "release button"])
            elif not down and pressed_at is not None:
                held = now - pressed_at
                pressed_at = None
                if board.DEBOUNCE_MS <= held < board.LONG_HOLD_MS:
                    if self.notice is not None:
                        self.notice = None
                    else:
                        self.page = pages.next_page(self.page, self.state)
                    self.request(L.BUTTON, L.BUTTON_NEXT)
                    self.dirty = True
            await asyncio.sleep_ms(BUTTON_TICK_MS)

    # -- display and LED ------------------------------------------------------

    async def display_task(self):
        while True:
            now = self.clock.now()
            if self.notice is not None and now >= self.notice_until:
                self.notice = None
                self.dirty = True
            if self.dirty:
                self.dirty = False
                self.draw()
            await asyncio.sleep_ms(50)

    def draw(self):
        if self.notice is not None:
            text = self.notice
        else:
            if self.page not in pages.available(self.state):
                self.page = pages.BOX
            text = pages.lines(self.page, self.state)
        fb = self.display.fb
        fb.fill(0)
        for row, line in enumerate(pages.fit(text)):
            fb.text(line, 0, row * pages.LINE_PITCH, 1)
        self.display.show()

    async def led_task(self):
        while True:
            pattern = pages.PATTERNS[pages.led_mode(self.state)]
            for step, duration in enumerate(pattern):
                if duration:
                    self.led.value(1 if step % 2 == 0 else 0)
                    await asyncio.sleep_ms(duration)


def _read_reset_reason():
    try:
        with open(board.RESET_REASON_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write_reset_reason(reason):
    with open(board.RESET_REASON_FILE, "w") as f:
        f.write(reason)


def _clear_reset_reason():
    try:
        os.remove(board.RESET_REASON_FILE)
    except OSError:
        pass


async def _main():
    panel = Panel()
    await asyncio.gather(
        panel.link_task(),
        panel.watchdog_task(),
        panel.button_task(),
        panel.display_task(),
        panel.led_task(),
    )


def run():
    asyncio.run(_main())
