"""The engines' health finding, judged from ``run/protection.json``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from appliance.health import Level
from appliance.protection.engines import STATE_FILE
from appliance.protection.health import (
    INSTALLED_FILE,
    STALE_AFTER,
    UPDATE_STATE_FILE,
    check_engines,
    check_signatures,
)

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


def test_signature_age_comes_from_clamds_loaded_database(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.parent.mkdir(parents=True)
    built = dt.datetime.fromtimestamp(NOW - 3 * 86400, dt.UTC).strftime("%a %b %e %H:%M:%S %Y")
    path.write_text(json.dumps({"time": NOW, "clamd": {"answering": True, "built": built}}))
    fresh = check_signatures(tmp_path, True, NOW, max_age_days=7)
    assert fresh.level is Level.OK
    assert "3 days" in fresh.en
    old = check_signatures(tmp_path, True, NOW, max_age_days=2)
    assert old.level is Level.WARN
    assert "3 days old" in old.en
    assert "3" in old.th


def test_without_a_daily_database_the_installed_sets_date_counts(tmp_path: Path) -> None:
    assert check_signatures(tmp_path, True, NOW, 7).level is Level.WARN  # unknown
    installed = tmp_path / INSTALLED_FILE
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text(json.dumps({"created_at": int(NOW - 10 * 86400)}))
    finding = check_signatures(tmp_path, True, NOW, 7)
    assert finding.level is Level.WARN
    assert "10 days old" in finding.en


def test_a_refused_update_is_said(tmp_path: Path) -> None:
    installed = tmp_path / INSTALLED_FILE
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.write_text(json.dumps({"created_at": int(NOW - 86400)}))
    (tmp_path / UPDATE_STATE_FILE).write_text(
        json.dumps(
            {"result": "refused", "error": "clamd/x.ndb does not match", "error_th": "ไม่ตรง"}
        )
    )
    finding = check_signatures(tmp_path, True, NOW, 7)
    assert finding.level is Level.WARN
    assert "x.ndb" in finding.en
    assert finding.th == "ปฏิเสธชุดข้อมูลไวรัสที่ได้รับ: ไม่ตรง"


def test_signatures_off_is_ok(tmp_path: Path) -> None:
    assert check_signatures(tmp_path, False, NOW, 7).level is Level.OK
