"""RAUC seen from the box: install a bundle, read the slots, mark a slot good or bad.

`Rauc` is the boundary (a `typing.Protocol`); `RaucCommand` drives Debian's ``rauc``
command, which talks to the ``rauc service`` over D-Bus. Tests run that real service on
a private session bus (``DBUS_STARTER_BUS_TYPE=session``) with file-backed slots and a
fake bootloader backend, so everything above this line is tested against real RAUC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class RaucError(Exception):
    """RAUC refused or failed; the message is RAUC's own last error, for the operator."""


@dataclass(frozen=True)
class Slot:
    name: str
    bootname: str
    #: "booted", "active" or "inactive" (RAUC's words).
    state: str
    #: The bootloader's verdict: "good" or "bad".
    boot_status: str
    #: The release RAUC last installed into it ("" for what the image came with).
    version: str = ""


@dataclass(frozen=True)
class RaucStatus:
    compatible: str
    #: The bootname of the running slot ("A" or "B").
    booted: str
    slots: tuple[Slot, ...]

    def other(self) -> Slot:
        """The root slot that is not running: where an install writes."""
        return next(s for s in self.slots if s.bootname != self.booted)

    def running(self) -> Slot:
        """The root slot that runs now."""
        return next(s for s in self.slots if s.bootname == self.booted)


class Rauc(Protocol):
    def info(self, bundle: Path) -> str: ...
    def install(self, bundle: Path, progress: Callable[[int], None] | None = None) -> None: ...
    def status(self) -> RaucStatus: ...
    def mark(self, verdict: str) -> None: ...


class RaucCommand:
    """The real twin: runs ``rauc``; *env* carries the D-Bus address in tests."""

    def __init__(
        self,
        conf: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 1800.0,
    ) -> None:
        self.conf = conf
        self.env = {**os.environ, **env} if env is not None else None
        self.timeout = timeout

    def info(self, bundle: Path) -> str:
        """Check *bundle*'s signature against the box's keyring; return its version."""
        raw = json.loads(self._run("info", "--output-format=json", str(bundle.resolve())))
        return str(raw.get("version", ""))

    def install(self, bundle: Path, progress: Callable[[int], None] | None = None) -> None:
        """Write *bundle* into the other slot and make it primary; raise `RaucError`.

        *progress* hears RAUC's percentages as it prints them (" 80% Updating slots").
        """
        if progress is None:
            self._run("install", str(bundle.resolve()))
            return
        conf = [f"--conf={self.conf}"] if self.conf else []
        try:
            # Fixed argv, no shell; rauc from the system PATH as systemd gives it.
            process = subprocess.Popen(  # noqa: S603
                ["rauc", *conf, "install", str(bundle.resolve())],  # noqa: S607
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
            )  # fmt: skip
        except OSError as exc:
            raise RaucError(f"rauc install: {exc}") from None
        output: list[str] = []
        assert process.stdout is not None
        with process:
            for line in process.stdout:
                output.append(line)
                if match := _PERCENT.match(line):
                    progress(int(match.group(1)))
            code = process.wait()
        if code != 0:
            raise RaucError(_last_error("".join(output)) or "rauc install failed")

    def status(self) -> RaucStatus:
        """The slots as RAUC sees them."""
        # --detailed: the version RAUC installed into each slot, too.
        raw = json.loads(self._run("status", "--detailed", "--output-format=json"))
        slots = []
        for entry in raw["slots"]:
            ((name, slot),) = entry.items()
            if slot.get("class") != "rootfs":
                continue
            bundle = (slot.get("slot_status") or {}).get("bundle") or {}
            slots.append(Slot(name, slot["bootname"], slot["state"], slot.get("boot_status", ""),
                              str(bundle.get("version") or "")))  # fmt: skip
        return RaucStatus(
            raw["compatible"], raw["booted"], tuple(sorted(slots, key=lambda s: s.name))
        )

    def mark(self, verdict: str) -> None:
        """Mark the booted slot "good" (commit) or "bad" (fall back at the next boot)."""
        if verdict not in ("good", "bad"):
            raise ValueError(verdict)
        self._run("status", f"mark-{verdict}", "booted")

    def _run(self, *args: str) -> str:
        conf = [f"--conf={self.conf}"] if self.conf else []
        try:
            # Fixed argv, no shell; rauc from the system PATH as systemd gives it.
            done = subprocess.run(  # noqa: S603
                ["rauc", *conf, *args],  # noqa: S607
                capture_output=True, text=True, env=self.env, timeout=self.timeout, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RaucError(f"rauc {args[0]}: {exc}") from None
        if done.returncode != 0:
            raise RaucError(_last_error(done.stdout + done.stderr) or f"rauc {args[0]} failed")
        return done.stdout


#: RAUC's progress lines while installing: "  0% Installing", " 99% Copying image …".
_PERCENT = re.compile(r"^\s*(\d{1,3})% ")


def _last_error(output: str) -> str:
    """RAUC's own reason, from its "LastError:" line or its last message."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("LastError:"):
            return line.removeprefix("LastError:").strip()
    return lines[-1] if lines else ""
