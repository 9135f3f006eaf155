"""Tests of `appliance.compliance.traffic_log`: the 90-day, hash-chained traffic log."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio

from appliance.compliance.traffic_log import (
    GENESIS,
    TrafficLog,
    TrafficRecord,
    chain_value,
    file_name,
    iter_records,
    verify,
)

START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


class Clock:
    """A settable clock, so a test decides which day file a write lands in."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def record(n: int, *, at: datetime = START, sender: str = "somchai@dga.go.th") -> TrafficRecord:
    return TrafficRecord(
        time=at,
        service="smtp-mx",
        event="accepted",
        client_ip="192.0.2.10",
        sender=sender,
        recipients=(f"user{n}@mof.go.th", "สมหญิง@mof.go.th"),
        user=None,
        message_id=f"q{n}",
        size=1000 + n,
        result="250 2.0.0",
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def build_days(directory: Path, days: int = 3, per_day: int = 5) -> list[Path]:
    """Write *per_day* records on each of *days* consecutive days; return the files."""
    clock = Clock()
    log = TrafficLog(directory, clock=clock)
    n = 0
    for _ in range(days):
        for _ in range(per_day):
            n += 1
            log.append_sync(record(n, at=clock.now))
        clock.now += timedelta(days=1)
    return [directory / file_name((START + timedelta(days=d)).date()) for d in range(days)]


# --- the record -------------------------------------------------------------------------


def test_record_has_no_password_or_content_field() -> None:
    names = {f.name for f in dataclasses.fields(TrafficRecord)}
    assert names == {
        "time",
        "service",
        "event",
        "client_ip",
        "sender",
        "recipients",
        "user",
        "message_id",
        "size",
        "result",
    }
    forbidden = re.compile(r"pass|secret|credential|token|body|content|subject|data")
    assert not [name for name in names if forbidden.search(name)]
    with pytest.raises(TypeError):
        TrafficRecord(START, "smtp-submission", "auth-failed", "192.0.2.1", password="x")  # type: ignore[call-arg]


def test_record_normalises_and_refuses_bad_values() -> None:
    bangkok = datetime(2026, 11, 1, 23, 0, tzinfo=timezone(timedelta(hours=7)))
    rec = TrafficRecord(bangkok, "imap", "login", "2001:DB8:0:0::1", recipients=["a@b"])  # type: ignore[arg-type]
    assert rec.time.tzinfo is UTC
    assert rec.time == datetime(2026, 11, 1, 16, 0, tzinfo=UTC)
    assert rec.client_ip == "2001:db8::1"
    assert rec.recipients == ("a@b",)
    with pytest.raises(ValueError, match="timezone"):
        TrafficRecord(datetime(2026, 11, 1), "imap", "login", "192.0.2.1")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        TrafficRecord(START, "imap", "login", "not-an-ip")
    with pytest.raises(ValueError, match="byte count"):
        TrafficRecord(START, "imap", "login", "192.0.2.1", size=-1)


def test_undecodable_text_is_spelled_out_not_lost(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path)
    log.append_sync(record(1, sender="bad\udcffbyte@example.org"))
    (back,) = iter_records(tmp_path)
    assert back.sender == "bad\\udcffbyte@example.org"
    assert verify(tmp_path).ok


# --- writing and reading ----------------------------------------------------------------


def test_round_trip_and_time_window(tmp_path: Path) -> None:
    clock = Clock()
    log = TrafficLog(tmp_path, clock=clock)
    written = [record(n, at=START + timedelta(hours=n)) for n in range(6)]
    for rec in written:
        log.append_sync(rec)
    assert list(iter_records(tmp_path)) == written
    window = list(
        iter_records(tmp_path, since=START + timedelta(hours=2), until=START + timedelta(hours=4))
    )
    assert window == written[2:4]
    first = lines(tmp_path / file_name(START.date()))[0]
    assert first["seq"] == 1
    assert first["time"] == "2026-11-01T09:00:00.000000Z"
    assert first["chain"] == chain_value(GENESIS, first)


def test_thai_text_is_readable_in_the_file(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path, clock=Clock())
    log.append_sync(record(1, sender="สมชาย@dga.go.th"))
    text = (tmp_path / file_name(START.date())).read_text("utf-8")
    assert "สมชาย@dga.go.th" in text
    assert "สมหญิง@mof.go.th" in text
    assert "\\u0e" not in text


async def test_concurrent_appends_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = TrafficLog(tmp_path, clock=Clock())
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    count = 200
    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(log.append, record(n))

    assert fsyncs < count // 10, f"{fsyncs} fsyncs for {count} records: no group commit"
    assert log.writes < count // 10
    rows = lines(tmp_path / file_name(START.date()))
    assert [row["seq"] for row in rows] == list(range(1, count + 1))
    assert sorted(str(row["message_id"]) for row in rows) == sorted(f"q{n}" for n in range(count))
    result = verify(tmp_path)
    assert (result.ok, result.files, result.records) == (True, 1, count), result.problem


async def test_append_returns_only_after_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = TrafficLog(tmp_path, clock=Clock())
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await log.append(record(1))
    assert synced, "append returned without an fsync"


async def test_a_cancelled_caller_still_gets_its_record_written(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path, clock=Clock())
    with trio.CancelScope() as scope:
        scope.cancel()
        await log.append(record(1))
    assert [r.message_id for r in iter_records(tmp_path)] == ["q1"]


def test_verify_ok_on_a_fresh_and_on_an_empty_log(tmp_path: Path) -> None:
    empty = verify(tmp_path / "none")
    assert (empty.ok, empty.files, empty.records, empty.problem) == (True, 0, 0, None)
    build_days(tmp_path, days=3, per_day=4)
    result = verify(tmp_path)
    assert (result.ok, result.files, result.records, result.problem) == (True, 3, 12, None)
    last = lines(sorted(tmp_path.glob("traffic-*.jsonl"))[-1])[-1]
    assert result.head == last["chain"]


def test_two_writers_on_one_directory_keep_one_chain(tmp_path: Path) -> None:
    # The server and an `edgebox` CLI command are two processes; two objects stand in.
    server = TrafficLog(tmp_path, clock=Clock())
    cli = TrafficLog(tmp_path, clock=Clock())
    for n in range(6):
        (server if n % 2 else cli).append_sync(record(n))
    rows = lines(tmp_path / file_name(START.date()))
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert verify(tmp_path).ok


# --- days and pruning -------------------------------------------------------------------


def test_day_rollover_chains_across_files(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC))
    log = TrafficLog(tmp_path, clock=clock)
    log.append_sync(record(1, at=clock.now))
    clock.now += timedelta(seconds=2)
    log.append_sync(record(2, at=clock.now))
    day1 = lines(tmp_path / "traffic-2026-11-01.jsonl")
    day2 = lines(tmp_path / "traffic-2026-11-02.jsonl")
    assert len(day1) == len(day2) == 1
    assert day2[0]["seq"] == 1
    assert day2[0]["chain"] == chain_value(str(day1[-1]["chain"]), day2[0])
    assert verify(tmp_path).ok


def test_clock_stepping_back_keeps_writing_to_the_newest_file(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 2, 0, 0, 1, tzinfo=UTC))
    log = TrafficLog(tmp_path, clock=clock)
    log.append_sync(record(1, at=clock.now))
    clock.now -= timedelta(seconds=5)  # NTP steps back over midnight
    log.append_sync(record(2, at=clock.now))
    assert [p.name for p in tmp_path.glob("traffic-*")] == ["traffic-2026-11-02.jsonl"]
    assert verify(tmp_path).ok


def test_prune_keeps_90_days_and_the_chain_verifiable(tmp_path: Path) -> None:
    clock = Clock()
    log = TrafficLog(tmp_path, clock=clock)
    for n in range(120):
        log.append_sync(record(n, at=clock.now))
        clock.now += timedelta(days=1)
    now = clock.now - timedelta(days=1)  # the day of the last record
    deleted = log.prune(now)

    kept = sorted(p.name for p in tmp_path.glob("traffic-*.jsonl"))
    oldest_kept = now.date() - timedelta(days=90)
    assert kept[0] == file_name(oldest_kept), "a file inside the 90 days was deleted"
    assert len(kept) == 91
    assert len(deleted) == 120 - 91
    anchor = json.loads((tmp_path / "anchor.json").read_text())
    assert anchor["file"] == file_name(oldest_kept - timedelta(days=1))
    result = verify(tmp_path)
    assert (result.ok, result.files, result.records) == (True, 91, 91), result.problem

    # Writing and pruning go on from the anchor.
    log.append_sync(record(999, at=clock.now))
    assert log.prune(now + timedelta(days=3)) != []
    assert verify(tmp_path).ok
    assert log.prune(now + timedelta(days=3)) == []


def test_prune_of_every_file_still_chains_from_the_anchor(tmp_path: Path) -> None:
    clock = Clock()
    log = TrafficLog(tmp_path, clock=clock)
    log.append_sync(record(1))
    clock.now += timedelta(days=200)
    assert len(log.prune()) == 1
    log.append_sync(record(2, at=clock.now))
    result = verify(tmp_path)
    assert (result.ok, result.files, result.records) == (True, 1, 1), result.problem


@pytest.mark.parametrize("days", [0, 30, 89])
def test_retention_below_the_legal_minimum_is_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(ValueError, match="at least 90 days"):
        TrafficLog(tmp_path, retention_days=days)


def test_longer_retention_is_allowed(tmp_path: Path) -> None:
    clock = Clock()
    log = TrafficLog(tmp_path, retention_days=365, clock=clock)
    log.append_sync(record(1))
    assert log.prune(START + timedelta(days=200)) == []


# --- tampering --------------------------------------------------------------------------


def _rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(path.read_bytes().splitlines(keepends=True))))


def _edit_field(rows: list[bytes]) -> list[bytes]:
    obj = json.loads(rows[2])
    obj["sender"] = "someone-else@dga.go.th"
    rows[2] = json.dumps(obj, ensure_ascii=False).encode() + b"\n"
    return rows


def _edit_field_and_rechain(rows: list[bytes]) -> list[bytes]:
    # A careful forger recomputes the edited line's own chain value; the next line
    # still points at the old one.
    previous = json.loads(rows[1])["chain"]
    obj = json.loads(rows[2])
    obj["client_ip"] = "198.51.100.7"
    obj["chain"] = chain_value(previous, obj)
    rows[2] = json.dumps(obj, ensure_ascii=False).encode() + b"\n"
    return rows


def _duplicate_key(rows: list[bytes]) -> list[bytes]:
    rows[2] = rows[2].replace(b'{"time"', b'{"sender": "x@y", "time"', 1)
    return rows


TAMPERS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], str]] = {
    "edit a field": (_edit_field, "line 3: chain does not match"),
    "edit and re-chain one line": (_edit_field_and_rechain, "line 4: chain does not match"),
    "repeat a field": (_duplicate_key, "line 3: not a JSON line (repeated field 'sender')"),
    "delete a line": (lambda rows: rows[:2] + rows[3:], "line 3: seq 4, expected 3"),
    "swap two lines": (lambda rows: [*rows[:1], rows[2], rows[1], *rows[3:]], "line 2: seq 3"),
    "insert a line": (lambda rows: [*rows[:2], rows[1], *rows[2:]], "line 3: seq 2"),
    "cut mid-line": (lambda rows: [*rows[:3], rows[3][:20]], "line 4: incomplete line"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS), ids=list(TAMPERS))
def test_tampering_inside_a_file_is_found_at_its_line(tmp_path: Path, tamper: str) -> None:
    files = build_days(tmp_path)
    assert verify(tmp_path).ok
    change, expected = TAMPERS[tamper]
    _rewrite(files[1], change)
    result = verify(tmp_path)
    assert not result.ok
    assert result.problem is not None
    assert result.problem.startswith(f"{files[1].name} {expected}"), result.problem


def test_cutting_whole_lines_off_a_middle_file_is_found_at_the_next_file(tmp_path: Path) -> None:
    files = build_days(tmp_path)
    _rewrite(files[1], lambda rows: rows[:3])
    result = verify(tmp_path)
    assert result.problem is not None
    assert result.problem.startswith(f"{files[2].name} line 1: chain does not follow")
    assert f"{files[1].name} line 3" in result.problem


def test_deleting_a_middle_day_file_is_found(tmp_path: Path) -> None:
    files = build_days(tmp_path)
    files[1].unlink()
    result = verify(tmp_path)
    assert not result.ok
    assert result.problem is not None
    assert result.problem.startswith(f"{files[2].name} line 1: chain does not follow")
    assert f"{files[0].name} line 5" in result.problem
    assert (result.files, result.records) == (2, 5)


def test_deleting_the_first_day_file_is_found(tmp_path: Path) -> None:
    files = build_days(tmp_path)
    files[0].unlink()
    result = verify(tmp_path)
    assert result.problem is not None
    assert result.problem.startswith(f"{files[1].name} line 1: chain does not follow the start")


def test_editing_the_anchor_is_found(tmp_path: Path) -> None:
    files = build_days(tmp_path, days=4, per_day=2)
    TrafficLog(tmp_path).prune(START + timedelta(days=91))
    assert not files[0].exists()
    assert files[1].exists()
    assert verify(tmp_path).ok

    anchor_path = tmp_path / "anchor.json"
    anchor = json.loads(anchor_path.read_text())
    anchor["chain"] = "f" * 64
    anchor_path.write_text(json.dumps(anchor))
    result = verify(tmp_path)
    assert result.problem is not None
    assert result.problem.startswith(f"{files[1].name} line 1: chain does not follow anchor.json")

    anchor_path.write_text("{not json")
    result = verify(tmp_path)
    assert result.problem is not None
    assert result.problem.startswith("anchor.json is damaged")


# --- crashes ----------------------------------------------------------------------------


def test_torn_last_line_is_cut_off_and_recorded(tmp_path: Path) -> None:
    clock = Clock()
    TrafficLog(tmp_path, clock=clock).append_sync(record(1))
    path = tmp_path / file_name(START.date())
    complete = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"time": "2026-11-01T09:00:00.0000')  # power cut mid-write
    assert (
        verify(tmp_path).problem
        == f"{path.name} line 2: incomplete line (cut short, or torn by a crash)"
    )
    assert [r.message_id for r in iter_records(tmp_path)] == ["q1"]

    TrafficLog(tmp_path, clock=clock).append_sync(record(2))  # the restarted server
    data = path.read_bytes()
    assert data.startswith(complete)
    rows = lines(path)
    assert [(row["seq"], row["event"]) for row in rows] == [
        (1, "accepted"),
        (2, "log-recovered"),
        (3, "accepted"),
    ]
    assert "34 bytes" in str(rows[1]["result"])
    assert rows[1]["client_ip"] is None
    result = verify(tmp_path)
    assert (result.ok, result.records) == (True, 3)


def test_torn_only_line_on_a_new_day_chains_from_the_day_before(tmp_path: Path) -> None:
    clock = Clock()
    TrafficLog(tmp_path, clock=clock).append_sync(record(1))
    clock.now += timedelta(days=1)
    torn = tmp_path / file_name(clock.now.date())
    torn.write_bytes(b'{"time": "20')
    TrafficLog(tmp_path, clock=clock).append_sync(record(2, at=clock.now))
    assert [row["event"] for row in lines(torn)] == ["log-recovered", "accepted"]
    assert verify(tmp_path).ok


def test_a_failed_write_is_recovered_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = TrafficLog(tmp_path, clock=Clock())
    log.append_sync(record(1))
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        log.append_sync(record(2))
    monkeypatch.setattr(os, "write", real_write)
    log.append_sync(record(3))
    events = [(r.event, r.message_id) for r in iter_records(tmp_path)]
    assert events == [("accepted", "q1"), ("log-recovered", None), ("accepted", "q3")]
    assert verify(tmp_path).ok


def test_file_names_sort_by_day() -> None:
    assert file_name(date(2026, 1, 2)) == "traffic-2026-01-02.jsonl"
    assert file_name(date(2025, 12, 31)) < file_name(date(2026, 1, 1))
