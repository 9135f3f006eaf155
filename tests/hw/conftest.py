"""The panel firmware, built once per session, and a simulated panel per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.twins import PanelSimulator, build_firmware, micropython


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("firmware")
    build_firmware(out)
    return out


@pytest.fixture
def panel(tmp_path: Path, firmware: Path) -> Iterator[PanelSimulator]:
    simulator = PanelSimulator(tmp_path / "panel", firmware)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.close()
        print(simulator.output())


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
