"""A small SSD1306 128x64 OLED driver over I2C: a `framebuf.FrameBuffer` with `show()`.

Written for this panel (micropython-lib's driver is not on a registry the build can
use); it sets the controller up for horizontal addressing and sends the whole buffer on
each `show()`. Datasheet: Solomon Systech SSD1306 rev 1.1, §9 (command table).
"""

import framebuf

# SSD1306 §9 commands.
_DISPLAY_OFF = 0xAE
_DISPLAY_ON = 0xAF
_SET_MEMORY_MODE = 0x20  # + 0x00: horizontal addressing
_SET_COLUMN_ADDR = 0x21  # + start, end
_SET_PAGE_ADDR = 0x22  # + start, end
_SET_START_LINE = 0x40
_SET_CONTRAST = 0x81
_SET_SEG_REMAP = 0xA1
_SET_NORMAL = 0xA6
_SET_MUX_RATIO = 0xA8
_SET_COM_SCAN_DEC = 0xC8
_SET_DISPLAY_OFFSET = 0xD3
_SET_CLOCK_DIV = 0xD5
_SET_PRECHARGE = 0xD9
_SET_COM_PINS = 0xDA
_SET_VCOM_DESELECT = 0xDB
_SET_CHARGE_PUMP = 0x8D

# I2C control bytes (§8.1.5): one command, or a run of display data.
_CONTROL_COMMAND = 0x80
_CONTROL_DATA = 0x40


class SSD1306:
    def __init__(self, i2c, addr=0x3C, width=128, height=64):
        self.i2c = i2c
        self.addr = addr
        self.width = width
        self.height = height
        self.pages = height // 8
        self.buffer = bytearray(width * self.pages)
        # MONO_VLSB is the controller's own layout: one byte = 8 rows of one column.
        self.fb = framebuf.FrameBuffer(self.buffer, width, height, framebuf.MONO_VLSB)
        self._init()

    def _command(self, *codes):
        for code in codes:
            self.i2c.writeto(self.addr, bytes((_CONTROL_COMMAND, code)))

    def _init(self):
        self._command(
            _DISPLAY_OFF,
            _SET_CLOCK_DIV, 0x80,
            _SET_MUX_RATIO, self.height - 1,
            _SET_DISPLAY_OFFSET, 0x00,
            _SET_START_LINE,
            _SET_CHARGE_PUMP, 0x14,
            _SET_MEMORY_MODE, 0x00,
            _SET_SEG_REMAP,
            _SET_COM_SCAN_DEC,
            _SET_COM_PINS, 0x12,
            _SET_CONTRAST, 0xCF,
            _SET_PRECHARGE, 0xF1,
            _SET_VCOM_DESELECT, 0x40,
            _SET_NORMAL,
            _DISPLAY_ON,
        )

    def show(self):
        self._command(_SET_COLUMN_ADDR, 0, self.width - 1, _SET_PAGE_ADDR, 0, self.pages - 1)
        self.i2c.writevto(self.addr, (bytes((_CONTROL_DATA,)), self.buffer))
