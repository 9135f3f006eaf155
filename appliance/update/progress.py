"""How far the update in hand has got, for the front panel and the admin console.

``DATA/run/update-progress.json`` holds one `Progress`: the phase, a percentage and the
release. The installer writes it (the box's own update service, or ``edgebox update
install`` in another process), the panel service and the console read it. It is a
picture of now, not a record: it is written atomically (a reader never sees half of
it) but never fsynced, and a stale one (older than `STALE_AFTER` while in a busy
phase: the installer died) is not shown. What happened for good is in the outcome
file (appliance.update.outcome).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from appliance.update.outcome import read_state

PROGRESS_FILE: Final = Path("run") / "update-progress.json"
#: The phases in the order an update goes through them.
DOWNLOADING: Final = "downloading"
VERIFYING: Final = "verifying"
INSTALLING: Final = "installing"
REBOOTING: Final = "rebooting"
#: Written once the installer is done with a bundle it did not install.
REFUSED: Final = "refused"
BUSY: Final = (DOWNLOADING, VERIFYING, INSTALLING, REBOOTING)
PHASES: Final = (*BUSY, REFUSED)
#: A busy phase not written for this long is an installer that died: not shown.
STALE_AFTER: Final = 15 * 60.0


@dataclass(frozen=True)
class Progress:
    phase: str
    percent: int
    version: str
    at: float
    #: Why, for `REFUSED` (English; the panel's font has no Thai).
    reason: str = ""


def write_progress(data_dir: Path, progress: Progress) -> None:
    """Replace the progress file (atomic rename; no fsync: it describes only now)."""
    if progress.phase not in PHASES:
        raise ValueError(f"unknown update phase {progress.phase!r}")
    path = data_dir / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(asdict(progress)))
    os.replace(tmp, path)


def clear_progress(data_dir: Path) -> None:
    """No update in hand any more."""
    (data_dir / PROGRESS_FILE).unlink(missing_ok=True)


def read_progress(data_dir: Path, now: float) -> Progress | None:
    """The update in hand, or None (none, unreadable, or a dead installer's)."""
    try:
        raw = json.loads((data_dir / PROGRESS_FILE).read_text())
        progress = Progress(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if progress.phase in BUSY and now - progress.at > STALE_AFTER:
        return None
    return progress


#: How long the panel keeps showing how the last update ended (good, rolled back,
#: refused) once nothing is in hand.
RESULT_HOLD: Final = 24 * 3600.0
#: Outcome events as the panel words them (appliance.update.outcome).
_RESULT_WORDS: Final = {
    "installed": "installed", "good": "good", "rolled_back": "rolled-back", "refused": "refused",
}  # fmt: skip


@dataclass(frozen=True)
class UpdateView:
    """What the front panel's UPDATE page shows."""

    #: A `PHASES` word, or "installed" (waiting for a reboot), "good" or "rolled-back".
    phase: str
    #: 0-100 while downloading, verifying or installing; None otherwise.
    percent: int | None
    version: str
    reason: str = ""


def update_view(data_dir: Path, now: float) -> UpdateView | None:
    """The update in hand, else how the last one ended (for a day), else None."""
    current = read_progress(data_dir, now)
    if current is not None and current.phase != REFUSED:
        percent = current.percent if current.phase in (DOWNLOADING, VERIFYING, INSTALLING) else None
        return UpdateView(current.phase, percent, current.version)
    last = read_state(data_dir).last()
    if current is not None and (last is None or current.at >= last.at):
        return UpdateView(REFUSED, None, current.version, current.reason)
    if last is None or last.event not in _RESULT_WORDS or now - last.at > RESULT_HOLD:
        return None
    return UpdateView(_RESULT_WORDS[last.event], None, last.version, last.reason)
