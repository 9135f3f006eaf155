"""The daily backup: a supervised service that backs up to ``backup_target``.

It runs only when a target is configured. At start-up it looks at the last good backup
(``DATA/backup/state.json``) and backs up at once if a day has passed, then once a day.
A failed backup (the USB disk unplugged, full) is logged and retried in an hour; it
never stops the box. The state file is what the health check reads: it is written
only after a backup was renamed into place, so "last good" means a complete backup.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import trio

from appliance.backup.crypto import load_backup_key
from appliance.backup.snapshot import create_backup, prune_backups
from appliance.store.files import write_atomically

log = logging.getLogger("edgebox.backup")

STATE_FILE = Path("backup") / "state.json"
#: Seconds between good backups.
DAILY = 24 * 3600.0
#: Seconds before a failed backup is tried again.
RETRY = 3600.0


def read_state(data_dir: Path) -> dict[str, Any]:
    """Return the backup state (``last_good``, ``last_name``, ``last_error``), or {}."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def record(data_dir: Path, **changes: Any) -> None:
    """Merge *changes* into the backup state file, atomically."""
    # One lock for the process: the onsite backup (a worker thread) and the offsite one
    # both record here, and a merge must not drop the other's last good backup.
    with _RECORD_LOCK:
        state = {**read_state(data_dir), **changes}
        write_atomically(data_dir / STATE_FILE, json.dumps(state, sort_keys=True).encode("utf-8"))


_RECORD_LOCK = threading.Lock()


def backup_and_record(data_dir: Path, target: Path, keep: int = 0) -> str:
    """Make one backup, record it as the last good one, keep the newest *keep*; return its name.

    *keep* 0 keeps every backup.
    """
    try:
        report = create_backup(data_dir, target)
    except Exception as exc:
        record(data_dir, last_error=f"{type(exc).__name__}: {exc}", last_error_at=time.time())
        raise
    record(data_dir, last_good=time.time(), last_name=report.name, last_target=str(target),
           last_error=None)  # fmt: skip
    log.info(
        "backup %s to %s: %d files, %d blobs (%d new, %.1f MB) in %.1f s",
        report.name, target, report.files, report.blobs, report.blobs_copied,
        report.blob_bytes_copied / 1e6, report.seconds,
    )  # fmt: skip
    for blob_id in report.blobs_vanished:
        log.warning("backup %s: blob %s was freed while the backup ran", report.name, blob_id)
    if keep:
        removed = prune_backups(target, load_backup_key(data_dir / "keys"), keep)
        if removed:
            log.info("removed %d old backups from %s: %s", len(removed), target, ", ".join(removed))
    return report.name


class DailyBackup:
    """Back the data directory up to *target* once a day (a supervised service)."""

    name = "backup"

    def __init__(
        self,
        data_dir: Path,
        target: Path,
        *,
        keep: int = 0,
        interval: float = DAILY,
        retry: float = RETRY,
    ) -> None:
        self.data_dir = data_dir
        self.target = target
        self.keep = keep
        self.interval = interval
        self.retry = retry

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            last = read_state(self.data_dir).get("last_good")
            due = self.interval - (time.time() - last) if isinstance(last, (int, float)) else 0.0
            if due > 0:
                await trio.sleep(due)
                continue
            try:
                # A worker thread: the copy is file and SQLite work; the box keeps serving.
                await trio.to_thread.run_sync(
                    backup_and_record, self.data_dir, self.target, self.keep
                )
            except Exception as exc:  # a failed backup must not stop the box
                log.error("backup to %s failed: %s; trying again in %.0f s",
                          self.target, exc, self.retry)  # fmt: skip
                await trio.sleep(self.retry)
