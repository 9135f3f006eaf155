"""Helpers for the panel tests (the firmware and panel fixtures: tests/conftest.py)."""

from __future__ import annotations

import subprocess

from hw.twins import micropython


def render(lines: list[str], pitch: int = 13) -> bytes:
    """Return the 128x64 MONO_VLSB buffer of *lines* drawn by MicroPython's framebuf."""
    script = (
        "import framebuf, sys\n"
        "b = bytearray(1024)\n"
        "f = framebuf.FrameBuffer(b, 128, 64, framebuf.MONO_VLSB)\n"
        f"for i, t in enumerate({lines!r}):\n"
        f"    f.text(t, 0, i * {pitch}, 1)\n"
        "sys.stdout.write(''.join('%02x' % x for x in b))\n"
    )
    out = subprocess.run(
        [micropython(), "-c", script], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return bytes.fromhex(out)
