"""The box's update rules without I/O: which release is newer, what an offer leads to,
and when the maintenance window is open."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.clock import ManualClock
from appliance.sync.status import SyncStatus
from appliance.update import outcome, progress
from appliance.update.channel import OFFER_PATH
from appliance.update.follow import (
    ChannelFollower,
    Decision,
    InstallNowBell,
    Offer,
    decide,
    in_window,
    install_requested,
    request_install_now,
)
from appliance.update.outcome import Event, Pending, UpdateState
from appliance.update.rauc import RaucError, RaucStatus
from appliance.update.version import is_newer, release_key, running_version

OFFER = Offer("2026.12.2", 1000, "a" * 64)


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("2026.12.10", "2026.12.9"),
        ("2.0.1", "2.0"),
        ("2.0.1", "2.0~rc1"),
        ("2.0", "1.99"),
        ("1", ""),
    ],
)
def test_releases_compare_piece_by_piece(newer: str, older: str) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)
    assert not is_newer(newer, newer)


@given(st.text(alphabet="0123456789.abc~-+", max_size=12),
       st.text(alphabet="0123456789.abc~-+", max_size=12))  # fmt: skip
def test_newer_is_a_strict_order(a: str, b: str) -> None:
    # Never both ways; equal keys are neither.
    assert not (is_newer(a, b) and is_newer(b, a))
    if release_key(a) == release_key(b):
        assert not is_newer(a, b)


def test_the_running_release_is_rauc_s_then_the_image_s(tmp_path: Path) -> None:
    release = tmp_path / "edgebox-release"
    release.write_text("2026.12.1\n")
    assert running_version("2026.12.2", release) == "2026.12.2"
    assert running_version("", release) == "2026.12.1"
    assert running_version("", tmp_path / "none")  # the package's


def history(*events: Event, pending: Pending | None = None) -> UpdateState:
    return UpdateState(pending, list(events))


def test_what_an_offer_leads_to() -> None:
    empty = history()
    assert decide(None, "2026.12.1", empty, asked=False) is Decision.NONE
    assert decide(OFFER, "2026.12.1", empty, asked=False) is Decision.NEWER
    assert decide(OFFER, "2026.12.2", empty, asked=False) is Decision.UP_TO_DATE
    assert decide(OFFER, "2026.12.3", empty, asked=False) is Decision.OLDER
    assert decide(OFFER, "2026.12.3", empty, asked=True) is Decision.OLDER  # never backwards
    waiting = history(pending=Pending("2026.12.2", "a" * 64, "A", "B", "boot", 1.0))
    assert decide(OFFER, "2026.12.1", waiting, asked=True) is Decision.INSTALLED
    rolled = history(Event(1, "rolled_back", "2026.12.2", "A", 1.0, "health gate failed"))
    assert decide(OFFER, "2026.12.1", rolled, asked=False) is Decision.ROLLED_BACK_BEFORE
    # The admin may try it again, knowingly.
    assert decide(OFFER, "2026.12.1", rolled, asked=True) is Decision.NEWER


def at(hour: int, minute: int = 0) -> time.struct_time:
    return time.struct_time((2026, 12, 7, hour, minute, 0, 0, 341, 0))


def test_the_maintenance_window() -> None:
    assert in_window("01:00-05:00", at(1))
    assert in_window("01:00-05:00", at(4, 59))
    assert not in_window("01:00-05:00", at(5))
    assert not in_window("01:00-05:00", at(13))
    # Across midnight.
    assert in_window("22:00-02:00", at(23, 30))
    assert in_window("22:00-02:00", at(1))
    assert not in_window("22:00-02:00", at(12))
    # Off: only "install now" installs.
    assert not in_window("", at(2))


def test_progress_of_a_dead_installer_is_not_shown(tmp_path: Path) -> None:
    data = tmp_path
    progress.write_progress(data, progress.Progress(progress.INSTALLING, 40, "2.0", 1000.0))
    assert (found := progress.read_progress(data, 1000.0 + 60))
    assert found.percent == 40
    assert progress.read_progress(data, 1000.0 + progress.STALE_AFTER + 1) is None
    progress.write_progress(data, progress.Progress(progress.REFUSED, 0, "2.0", 1000.0, "why"))
    # A refusal is a result, not a busy phase: it stays.
    assert (found := progress.read_progress(data, 10**9))
    assert found.reason == "why"
    with pytest.raises(ValueError, match="unknown update phase"):
        progress.write_progress(data, progress.Progress("sleeping", 0, "", 0.0))
    assert outcome.read_state(data).events == []  # progress is no record


class NoRauc:
    """A box without RAUC (the follower then reads the release file)."""

    def status(self) -> RaucStatus:
        raise RaucError("no RAUC here")

    def info(self, bundle: Path) -> str:
        raise RaucError("no RAUC here")

    def install(self, bundle: Path, progress: object = None) -> None:
        raise RaucError("no RAUC here")

    def mark(self, verdict: str) -> None:
        raise RaucError("no RAUC here")


async def test_install_now_wakes_the_follower_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The console's button and the follower share a bell (appliance.registry): the round
    # the admin asked for runs at once, not at the follower's next look a minute later.
    # (The clock jumps whenever every task waits: without the bell the round would come
    # after the follower's 60 s wait, and the time would show it.)
    rounds_in, rounds = trio.open_memory_channel[float](10)

    async def hub(path: str, body: dict[str, object]) -> dict[str, object]:
        assert path == OFFER_PATH
        await rounds_in.send(trio.current_time())
        return {"offer": None}

    clock = ManualClock()
    bell = InstallNowBell()
    follower = ChannelFollower(tmp_path, hub, "https://hub.go.th:7443", ssl.create_default_context,
                               NoRauc(), SyncStatus(tmp_path, clock), clock,
                               release_file=tmp_path / "release")  # fmt: skip
    bell.listen(follower.wake)
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.serve)
        first = await rounds.receive()  # the round at start
        # The next look without a wake: a minute on (the clock jumps to it).
        assert await rounds.receive() == first + 60.0
        pressed = trio.current_time()
        request_install_now(tmp_path, "admin@moe.go.th", clock.now())
        bell.ring()
        assert await rounds.receive() == pressed  # at once
        # The round after it (its own minute later) means that one ended; with nothing
        # offered the request was answered there (the console shows why).
        assert await rounds.receive() == pressed + 60.0
        assert install_requested(tmp_path) is None
        nursery.cancel_scope.cancel()


def test_a_bell_nobody_listens_to_is_harmless() -> None:
    InstallNowBell().ring()  # the follower is not running (no hub): the file waits
