"""`OffsiteBackup`'s schedule on trio's MockClock: once a day, an hour after a failure,
at once when the link comes back after one, and never early for a wake."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from appliance.backup.offsite import upload
from appliance.backup.offsite.upload import OffsiteBackup
from appliance.backup.service import read_state, record
from appliance.sync.status import SyncStatus
from appliance.sync.transport import HubUnavailable

DAY, HOUR = 24 * 3600.0, 3600.0
#: The wall clock at mock time 0: the service reads `time.time()`, its waits are trio's.
EPOCH = 1_800_000_000.0


class FakeBackups:
    """`create_offsite_backup` that notes when it ran and fails while told to."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.times: list[float] = []
        self.failures = 0

    async def __call__(self, data_dir: Path, hub: Any, **_: Any) -> SimpleNamespace:
        self.times.append(trio.current_time())
        if self.failures:
            self.failures -= 1
            raise HubUnavailable("the link is down")
        # As the real one does at the end of a complete set.
        record(data_dir, offsite_last_good=EPOCH + trio.current_time())
        return SimpleNamespace(name="set", files=1, files_sent=1, blobs=0, blobs_sent=0,
                               bytes_sent=0, seconds=0.0)  # fmt: skip


@pytest.fixture
def backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBackups:
    fake = FakeBackups(tmp_path)
    monkeypatch.setattr(upload, "create_offsite_backup", fake)
    # The wall clock moves with the mock one, as it does with the real one.
    monkeypatch.setattr(upload, "time", SimpleNamespace(time=lambda: EPOCH + trio.current_time()))
    return fake


async def test_a_failed_backup_is_tried_again_after_an_hour_then_daily(
    tmp_path: Path, backups: FakeBackups, autojump_clock: trio.testing.MockClock
) -> None:
    backups.failures = 1
    service = OffsiteBackup(tmp_path, None, SyncStatus(tmp_path))  # type: ignore[arg-type]
    with trio.move_on_after(HOUR + 2 * DAY - 60):
        await service.serve()
    assert backups.times == [0.0, HOUR, HOUR + DAY]
    state = read_state(tmp_path)
    assert "HubUnavailable: the link is down" in state["offsite_last_error"]


async def test_the_link_coming_back_cuts_only_a_failures_wait(
    tmp_path: Path, backups: FakeBackups, mock_clock: trio.testing.MockClock
) -> None:
    backups.failures = 1
    service = OffsiteBackup(tmp_path, None, SyncStatus(tmp_path))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.serve)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(60)
        await trio.testing.wait_all_tasks_blocked()
        assert backups.times == [0.0]
        service.wake()  # the link is back: the failed backup goes again now
        await trio.testing.wait_all_tasks_blocked()
        assert backups.times == [0.0, 60.0]
        mock_clock.jump(60)
        await trio.testing.wait_all_tasks_blocked()
        service.wake()  # a good backup an hour ago: the next is not due for a day
        await trio.testing.wait_all_tasks_blocked()
        assert backups.times == [0.0, 60.0]
        nursery.cancel_scope.cancel()


async def test_a_recent_backup_waits_for_its_day(
    tmp_path: Path, backups: FakeBackups, autojump_clock: trio.testing.MockClock
) -> None:
    record(tmp_path, offsite_last_good=EPOCH - (DAY - HOUR))
    service = OffsiteBackup(tmp_path, None, SyncStatus(tmp_path))  # type: ignore[arg-type]
    with trio.move_on_after(HOUR - 60):
        await service.serve()
    assert backups.times == []
    with trio.move_on_after(120):
        await service.serve()
    assert backups.times == [HOUR]
