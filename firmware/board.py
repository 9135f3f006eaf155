"""Pin names of the front-panel board: an RP2040 (Raspberry Pi Pico class) module.

The one place that knows GPIO numbers; the rest of the firmware says `board.UART_TX`.
The simulated board (`firmware/sim/machine.py`) uses the same numbers, so the test twin
reads the host-reset line's log as ``gpio<HOST_RESET>.log``.
"""

#: UART0 to the host: USB CDC-ACM bridge on the x86 rack box, a plain UART on the ARM board.
UART_ID = 0
UART_TX = 0
UART_RX = 1
UART_BAUD = 115200

#: I2C0 to the SSD1306 128x64 display at address 0x3C.
I2C_ID = 0
I2C_SDA = 4
I2C_SCL = 5
I2C_FREQ = 400000
DISPLAY_ADDR = 0x3C
DISPLAY_WIDTH = 128
DISPLAY_HEIGHT = 64

#: Status LED, active high.
STATUS_LED = 25

#: The one front-panel button, to ground (internal pull-up: 0 = pressed).
BUTTON = 15

#: Open-drain driver on the host's reset line: driven 0 resets the host.
HOST_RESET = 16
#: How long the reset line is held low.
RESET_PULSE_MS = 300

#: A press held this long asks the host for a factory reset.
LONG_HOLD_MS = 10000
#: Readings of the button closer than this are contact bounce.
DEBOUNCE_MS = 30

#: The MCU's own watchdog; the firmware feeds it from its main loop.
MCU_WDT_MS = 5000

#: Where the reason of the last host reset is kept across the host's reboot (flash).
RESET_REASON_FILE = "last_reset.txt"
