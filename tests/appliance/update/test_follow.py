"""The box's update rules without I/O: which release is newer, what an offer leads to,
and when the maintenance window is open."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.update import outcome, progress
from appliance.update.follow import Decision, Offer, decide, in_window
from appliance.update.outcome import Event, Pending, UpdateState
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
