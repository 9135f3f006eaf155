"""A simulated `machine` module: the panel board's hardware for the MicroPython unix port.

Fakes at the system boundary only: the firmware's own modules run unchanged on top.
Everything lives in the folder ``PANEL_SIM_DIR`` (the MCU's flash root is the current
directory, chosen by whoever starts the simulator):

- UART: the tty at ``PANEL_SIM_UART`` (the slave side of a pty the host twin holds).
- Input pins: ``pins/gpio<N>`` holds ``0`` or ``1``; missing means 1 (pulled up).
- Output pins: every change is appended to ``gpio<N>.log`` as ``<ms since boot> <value>``.
- I2C: an SSD1306 at 0x3C; its display RAM (1024 bytes, the controller's page layout)
  is written to ``display.bin`` (atomically) after each full refresh.
- WDT: feeds are counted in ``wdt.txt`` on each feed (the MCU's own reset is not
  simulated: the unix process has no one to reset it).
"""

import os
import select
import termios
import time

_DIR = os.getenv("PANEL_SIM_DIR") or "."
_BOOT = time.ticks_ms()


def _ms():
    return time.ticks_diff(time.ticks_ms(), _BOOT)


def _write_atomically(name, data):
    path = _DIR + "/" + name
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        self.mode = mode
        self._value = 1
        if value is not None:
            self.value(value)

    def value(self, value=None):
        if value is None:
            if self.mode in (Pin.OUT, Pin.OPEN_DRAIN):
                return self._value
            try:
                with open(_DIR + "/pins/gpio%d" % self.id) as f:
                    return 1 if f.read().strip() != "0" else 0
            except OSError:
                return 1
        value = 1 if value else 0
        if value != self._value or not hasattr(self, "_logged"):
            self._logged = True
            with open(_DIR + "/gpio%d.log" % self.id, "a") as f:
                f.write("%d %d\n" % (_ms(), value))
        self._value = value
        return None

    def __call__(self, value=None):
        return self.value(value)


class UART:
    def __init__(self, uart_id, baudrate=115200, tx=None, rx=None, **kwargs):
        path = os.getenv("PANEL_SIM_UART")
        if not path:
            raise OSError("PANEL_SIM_UART names no tty")
        self._file = open(path, "r+b")
        fd = self._file.fileno()
        attrs = termios.tcgetattr(fd)
        termios.setraw(fd)
        attrs = termios.tcgetattr(fd)
        # VMIN = VTIME = 0: a read returns what is there, like the RP2040's UART FIFO.
        attrs[6][6] = 0
        attrs[6][5] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._poll = select.poll()
        self._poll.register(self._file, select.POLLIN)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def read(self, nbytes=256):
        if not self._poll.poll(0):
            return None
        data = self._file.read(nbytes)
        return data or None

    def write(self, data):
        self._file.write(data)
        return len(data)


class I2C:
    """An I2C bus with one SSD1306 on it, decoding its commands (datasheet §9)."""

    # Commands followed by this many argument bytes.
    _ARGS = {0x20: 1, 0x21: 2, 0x22: 2, 0x81: 1, 0x8D: 1, 0xA8: 1, 0xD3: 1, 0xD5: 1,
             0xD9: 1, 0xDA: 1, 0xDB: 1}

    def __init__(self, bus_id, scl=None, sda=None, freq=400000):
        self.ram = bytearray(1024)
        self._pending = []
        self._wanted = 0
        self._col = (0, 127)
        self._page = (0, 7)
        self._ptr = 0
        self._written = 0

    def writeto(self, addr, buf):
        self.writevto(addr, (buf,))

    def writevto(self, addr, bufs):
        if addr != 0x3C:
            raise OSError(19)  # ENODEV: nothing answers at that address
        data = b"".join(bytes(b) for b in bufs)
        if not data:
            return
        control = data[0]
        if control & 0x40:
            self._data(data[1:])
        else:
            for code in data[1:]:
                self._command(code)

    def _command(self, code):
        if self._wanted:
            self._pending.append(code)
            self._wanted -= 1
            if not self._wanted:
                op = self._pending[0]
                if op == 0x21:
                    self._col = (self._pending[1], self._pending[2])
                elif op == 0x22:
                    self._page = (self._pending[1], self._pending[2])
                self._ptr = 0
                self._written = 0
            return
        self._pending = [code]
        self._wanted = self._ARGS.get(code, 0)

    def _data(self, data):
        c0, c1 = self._col
        p0, p1 = self._page
        width = c1 - c0 + 1
        size = width * (p1 - p0 + 1)
        for byte in data:
            col = c0 + self._ptr % width
            page = p0 + self._ptr // width
            self.ram[page * 128 + col] = byte
            self._ptr = (self._ptr + 1) % size
            self._written += 1
        if self._written >= size:
            self._written = 0
            _write_atomically("display.bin", self.ram)


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0

    def feed(self):
        self.feeds += 1
        if self.feeds % 50 == 1:
            _write_atomically("wdt.txt", b"%d" % self.feeds)


def reset_cause():
    return 0
