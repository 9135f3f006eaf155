"""The engines' health finding, judged from ``run/protection.json``."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.health import Level
from appliance.protection.engines import STATE_FILE
from appliance.protection.health import STALE_AFTER, check_engines

NOW = 1_800_000_000.0


def write(data: Path, when: float, clamd: bool, rspamd: bool) -> None:
    path = data / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"time": when, "clamd": {"answering": clamd},
                                "rspamd": {"answering": rspamd}}))  # fmt: skip


def test_off_is_shown_not_judged(tmp_path: Path) -> None:
    finding = check_engines(tmp_path, enabled=False, box_running=True, now=NOW)
    assert finding.level is Level.OK
    assert "off" in finding.en


def test_both_answering_is_ok(tmp_path: Path) -> None:
    write(tmp_path, NOW - 5, True, True)
    assert check_engines(tmp_path, True, True, NOW).level is Level.OK


def test_an_engine_down_is_an_error_that_names_it_and_the_451(tmp_path: Path) -> None:
    write(tmp_path, NOW - 5, False, True)
    finding = check_engines(tmp_path, True, True, NOW)
    assert finding.level is Level.ERROR
    assert "clamd" in finding.en
    assert "451" in finding.en
    assert "clamd" in finding.th
    assert "submission too" in finding.en
    accepting = check_engines(tmp_path, True, True, NOW, submission="accept")
    assert "submission accepts mail unscanned" in accepting.en


def test_a_stale_or_missing_file_is_an_error(tmp_path: Path) -> None:
    assert check_engines(tmp_path, True, True, NOW).level is Level.ERROR
    write(tmp_path, NOW - STALE_AFTER - 1, True, True)
    assert check_engines(tmp_path, True, True, NOW).level is Level.ERROR
