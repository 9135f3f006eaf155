"""The hub's update channel forgets old bundles: the newest few per channel, what a channel
offers and what a box last reported as installed or good stay; nothing unknown goes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.update.channel import (
    CHANNEL_DIR,
    HISTORY_FILE,
    collect_bundles,
    publish,
    read_channel,
    read_history,
)
from appliance.update.keyring import ensure_keyring
from appliance.update.report import REPORTS_DIR
from tests.appliance.update.channelkit import random_bundle


def held(data: Path) -> set[str]:
    return {p.stem for p in (data / CHANNEL_DIR / "bundles").glob("*.raucb")}


def published(data: Path, channel: str, version: str, at: float) -> str:
    """A publication as `publish` records it (the file's content does not matter here)."""
    digest = hashlib.sha256(f"{channel} {version}".encode()).hexdigest()
    store = data / CHANNEL_DIR / "bundles"
    store.mkdir(parents=True, exist_ok=True)
    (store / f"{digest}.raucb").write_bytes(b"bundle " + version.encode())
    record = {"version": version, "compatible": "edgebox-amd64", "size": 14,
              "sha256": digest, "published_at": at}  # fmt: skip
    history = [*read_history(data), {**record, "channel": channel}]
    (data / HISTORY_FILE).write_text(json.dumps(history))
    (data / CHANNEL_DIR / f"{channel}.json").write_text(json.dumps(record))
    return digest


def reported(data: Path, box_id: str, *events: tuple[str, str]) -> None:
    (data / REPORTS_DIR).mkdir(parents=True, exist_ok=True)
    rows = [{"id": i + 1, "event": event, "version": version, "slot": "B", "at": 1.0 + i,
             "reason": ""} for i, (event, version) in enumerate(events)]  # fmt: skip
    (data / REPORTS_DIR / f"{box_id}.json").write_text(json.dumps(rows))


def test_old_bundles_go_unless_a_channel_or_a_box_still_needs_them(tmp_path: Path) -> None:
    stable = [published(tmp_path, "stable", f"2026.{n}", float(n)) for n in range(1, 6)]
    beta = published(tmp_path, "beta", "2027.1", 10.0)
    # A bundle from before the history was kept: unknown, so never removed.
    unknown = "f" * 64
    (tmp_path / CHANNEL_DIR / "bundles" / f"{unknown}.raucb").write_bytes(b"old")
    # One box runs 2026.1 (installed, then good); another installed 2026.2 and rolled back
    # (its last landed event is still "installed" of 2026.2: it may be tried again).
    reported(tmp_path, "box-a", ("installed", "2026.1"), ("good", "2026.1"))
    reported(tmp_path, "box-b", ("installed", "2026.2"), ("rolled_back", "2026.2"))
    # box-c moved on: what it ran before is not needed for it.
    reported(tmp_path, "box-c", ("good", "2026.3"), ("installed", "2026.4"))

    removed = collect_bundles(tmp_path, keep=2)

    assert removed == [stable[2]]  # 2026.3: not among the newest two, no box on it
    assert held(tmp_path) == {*stable[:2], *stable[3:], beta, unknown}
    assert {r["version"] for r in read_history(tmp_path)} == {
        "2026.1", "2026.2", "2026.4", "2026.5", "2027.1",
    }  # fmt: skip
    assert collect_bundles(tmp_path, keep=2) == []  # nothing more to do


def test_the_offered_bundle_is_kept_even_when_keep_is_zero(tmp_path: Path) -> None:
    first = published(tmp_path, "stable", "1.0", 1.0)
    second = published(tmp_path, "stable", "2.0", 2.0)
    # keep below 1 is taken as 1: a channel always keeps what it offers.
    assert collect_bundles(tmp_path, keep=0) == [first]
    assert held(tmp_path) == {second}


@pytest.mark.slow
def test_publishing_collects_what_the_channel_no_longer_needs(tmp_path: Path) -> None:
    keyring = ensure_keyring(tmp_path / "keys", "release")
    bundles = [random_bundle(tmp_path, keyring, v, size=64 << 10) for v in ("1.0", "2.0", "3.0")]
    hub = tmp_path / "hub"
    done = [publish(hub, b, "stable", now=float(i), keep=2) for i, b in enumerate(bundles)]
    assert held(hub) == {done[1].sha256, done[2].sha256}
    offered = read_channel(hub, "stable")
    assert offered is not None
    assert offered.version == "3.0"
    # The same bundle published again in another channel is one file, kept for both.
    publish(hub, bundles[2], "beta", now=5.0, keep=2)
    assert held(hub) == {done[1].sha256, done[2].sha256}
