"""When each sync stream last succeeded, for `edgebox status`, the API and the console.

Every replicator (outbound relay, mailbox replication, chat, directory) reports each
round here: `success` after a round that reached the centre and committed what it got,
`failure` with a short reason after one that did not. The file ``DATA/run/sync.json``
keeps the last report of every stream across restarts, so "last successful sync 3 days
ago" is still true after a reboot in the middle of a cut. Reasons never hold secrets:
callers pass an exception's class and message, not a request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.store.files import write_atomically
from appliance.sync.clock import Clock, SystemClock

SYNC_STATUS_FILE = Path("run") / "sync.json"


class SyncStatus:
    """The per-stream record of one box; one instance shared by every replicator."""

    def __init__(self, data_dir: Path, clock: Clock | None = None) -> None:
        self.path = Path(data_dir) / SYNC_STATUS_FILE
        self.clock = clock or SystemClock()
        self.streams: dict[str, dict[str, Any]] = read_sync_status(Path(data_dir))

    def success(self, stream: str, **figures: Any) -> None:
        """Record a round of *stream* that succeeded (optional figures: counts, bytes)."""
        entry = self.streams.setdefault(stream, {})
        entry.update(last_success=self.clock.now(), last_error=None, **figures)
        self._save()

    def failure(self, stream: str, reason: str) -> None:
        """Record a round of *stream* that failed, keeping its last success."""
        entry = self.streams.setdefault(stream, {})
        entry.update(last_failure=self.clock.now(), last_error=reason[:300])
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(self.streams, ensure_ascii=False, sort_keys=True).encode()
        write_atomically(self.path, body, mode=0o600)


def read_sync_status(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Return the last report of every stream (empty before the first round)."""
    try:
        data = json.loads((Path(data_dir) / SYNC_STATUS_FILE).read_text("utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
