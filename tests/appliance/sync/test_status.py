"""Per-stream sync status: kept across restarts, never loses the last success."""

from __future__ import annotations

from pathlib import Path

from appliance.sync.clock import ManualClock
from appliance.sync.status import SyncStatus, read_sync_status


class StoppedClock(ManualClock):
    """A clock set by hand, for code that only reads the time."""

    def set(self, now: float) -> None:
        self._now = now


def test_a_failure_keeps_the_last_success_and_survives_a_restart(tmp_path: Path) -> None:
    clock = StoppedClock(start=5000.0)
    status = SyncStatus(tmp_path, clock)
    status.success("chat", pulled=12)
    clock.set(6000.0)
    status.failure("chat", "HubUnavailable: connection refused")

    again = read_sync_status(tmp_path)
    assert again["chat"]["last_success"] == 5000.0
    assert again["chat"]["last_failure"] == 6000.0
    assert again["chat"]["last_error"] == "HubUnavailable: connection refused"
    assert again["chat"]["pulled"] == 12

    reopened = SyncStatus(tmp_path, clock)
    reopened.success("chat")
    assert read_sync_status(tmp_path)["chat"]["last_error"] is None


def test_nothing_recorded_reads_as_empty(tmp_path: Path) -> None:
    assert read_sync_status(tmp_path) == {}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "sync.json").write_text("{not json")
    assert read_sync_status(tmp_path) == {}


def test_reasons_are_cut_short(tmp_path: Path) -> None:
    status = SyncStatus(tmp_path, ManualClock())
    status.failure("outbound", "x" * 5000)
    assert len(read_sync_status(tmp_path)["outbound"]["last_error"]) == 300
