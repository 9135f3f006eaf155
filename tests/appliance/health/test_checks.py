"""Each health check on numbers alone (FakeReadings), and the one registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.health import Check, Finding, Level, worst
from appliance.health.checks import (
    CHECKS,
    clock,
    disk,
    link,
    memory,
    queue,
    run_checks,
    services,
    temperature,
)
from appliance.health.readings import DiskReading, FakeReadings, MemoryReading, Temperature
from appliance.health.snapshot import (
    Limits,
    QueueGroup,
    ServiceState,
    Snapshot,
    groups_by_urgency,
    read_machine,
)
from appliance.sync.link import LinkReading, LinkSnapshot, LinkState

GiB = 1024**3
MiB = 1024**2
NOW = 1_796_000_000.0
DATA = Path("/var/lib/edgebox")


def snap(readings: FakeReadings | None = None, **changes: object) -> Snapshot:
    """A snapshot of a healthy box, read through *readings*, with *changes* applied."""
    machine = read_machine(readings or FakeReadings(), DATA, pid=1)
    base = Snapshot(now=NOW, data_dir=DATA, limits=Limits(), **machine)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def levels(findings: list[Finding]) -> list[Level]:
    return [f.level for f in findings]


def test_a_healthy_box_is_all_ok_in_both_languages() -> None:
    findings = run_checks(snap(services={"imap": ServiceState(True, 0, ("127.0.0.1:2143",))}))
    assert worst(findings) is Level.OK, findings
    assert [f.check for f in findings] == [
        "imap", "disk", "memory", "temperature", "clock", "queue", "link",
    ]  # fmt: skip
    for finding in findings:
        assert (finding.en and finding.th and finding.en != finding.th) or finding.check == "clock"


@pytest.mark.parametrize(
    ("free", "level"),
    [(10 * GiB, Level.OK), (2 * GiB - 1, Level.WARN), (1 * GiB, Level.WARN),
     (512 * MiB - 1, Level.ERROR), (0, Level.ERROR)],
)  # fmt: skip
def test_disk_warns_below_the_warning_and_fails_below_the_reserve(free: int, level: Level) -> None:
    readings = FakeReadings(default_disk=DiskReading(total=100 * GiB, free=free))
    [finding] = disk.run(snap(readings))
    assert finding.level is level
    if level is not Level.OK:
        assert "ดิสก์" in finding.todo_th
        assert "disk" in finding.todo_en
    if level is Level.ERROR:
        assert "refused" in finding.en
        assert "ปฏิเสธ" in finding.th


def test_an_unreadable_data_volume_is_an_error_not_a_crash() -> None:
    readings = FakeReadings(disk_error=PermissionError(13, "Permission denied"))
    [finding] = disk.run(snap(readings))
    assert finding.level is Level.ERROR
    assert "Permission denied" in finding.en
    assert "อ่านพื้นที่ดิสก์ไม่ได้" in finding.th


@pytest.mark.parametrize(
    ("available", "level"), [(0.5, Level.OK), (0.09, Level.WARN), (0.04, Level.ERROR)]
)
def test_memory_judges_the_share_still_available(available: float, level: Level) -> None:
    total = 4 * GiB
    readings = FakeReadings(mem=MemoryReading(total=total, available=int(total * available)))
    [finding] = memory.run(snap(readings))
    assert finding.level is level


def test_temperature_uses_the_sensors_own_limits_and_defaults_without() -> None:
    assert levels(temperature.run(snap())) == [Level.OK]  # no sensors: a VM
    own = {"coretemp/Package": Temperature(71.0, high=70.0, critical=90.0)}
    assert levels(temperature.run(snap(FakeReadings(sensors=own)))) == [Level.WARN]
    default = {"soc/0": Temperature(96.0)}
    [hot] = temperature.run(snap(FakeReadings(sensors=default)))
    assert hot.level is Level.ERROR
    assert "soc/0" in hot.en
    assert "พัดลม" in hot.todo_th
    cool = {"soc/0": Temperature(50.0), "nvme/Composite": Temperature(60.0)}
    [ok] = temperature.run(snap(FakeReadings(sensors=cool)))
    assert ok.level is Level.OK
    assert "nvme/Composite" in ok.en


def test_services_not_running_crashed_silent_and_flapping() -> None:
    assert levels(services.run(snap(box_running=False))) == [Level.ERROR]
    states = {
        "smtp-mx": ServiceState(True, 0, ("127.0.0.1:2525",)),
        "imap": ServiceState(False, 1, ("127.0.0.1:2143",), last_error="OSError: boom"),
        "imaps": ServiceState(True, 0, ("127.0.0.1:2993",), not_answering=("127.0.0.1:2993",)),
        "search-index": ServiceState(True, restarts=services.RESTARTS_WARN),
        "health": ServiceState(True),
    }
    found = {f.check: f for f in services.run(snap(services=states))}
    assert found["smtp-mx"].level is Level.OK
    assert found["imap"].level is Level.ERROR
    assert "OSError: boom" in found["imap"].en
    assert found["imaps"].level is Level.ERROR
    assert "127.0.0.1:2993" in found["imaps"].th
    assert found["search-index"].level is Level.WARN
    assert "journalctl" in found["search-index"].todo_en
    assert found["health"].level is Level.OK


def test_clock_before_the_release_or_gone_backwards() -> None:
    assert levels(clock.run(snap(now=86400.0))) == [Level.ERROR]  # 1970: no RTC battery
    assert levels(clock.run(snap(last_seen_time=NOW + 3600))) == [Level.WARN]
    # NTP's small corrections are not a fault.
    assert levels(clock.run(snap(last_seen_time=NOW + 60))) == [Level.OK]
    assert levels(clock.run(snap(last_seen_time=NOW - 86400))) == [Level.OK]


def test_queue_age_not_length_is_judged() -> None:
    assert levels(queue.run(snap())) == [Level.OK]
    fresh = [QueueGroup(0, 5000, NOW - 600)]
    assert levels(queue.run(snap(queue=fresh))) == [Level.OK]
    day = [QueueGroup(0, 3, NOW - 600), QueueGroup(3, 1, NOW - 2 * 86400)]
    [finding] = queue.run(snap(queue=day))
    assert finding.level is Level.WARN
    assert "most urgent" in finding.en
    assert "ด่วนที่สุด" in finding.th
    assert "4 waiting" in finding.en
    bounce = [QueueGroup(1, 1, NOW - 12.5 * 86400)]
    assert levels(queue.run(snap(queue=bounce))) == [Level.ERROR]


def test_queue_groups_fold_the_senders_of_each_urgency() -> None:
    rows = [(0, "a@x", 2, 100), (0, "b@x", 3, 50), (3, "a@x", 1, 70)]
    assert groups_by_urgency(rows) == [QueueGroup(0, 5, 50.0), QueueGroup(3, 1, 70.0)]


def test_a_cut_link_warns_and_never_makes_the_box_unhealthy() -> None:
    assert levels(link.run(snap())) == [Level.OK]  # not enrolled, no link file
    down = LinkSnapshot(gin=LinkReading(LinkState.DOWN, since=NOW - 1800, target="hub"))
    [finding] = link.run(snap(link=down))
    assert finding.level is Level.WARN
    assert "30 min" in finding.en
    assert "GIN" in finding.th
    up = LinkSnapshot(gin=LinkReading(LinkState.UP, since=NOW - 10, target="hub"))
    assert levels(link.run(snap(link=up))) == [Level.OK]


def test_the_registry_has_one_uniquely_named_check_per_plug_in() -> None:
    names = [check.name for check in CHECKS]
    assert len(names) == len(set(names))
    assert set(names) == {
        "services",
        "disk",
        "memory",
        "temperature",
        "clock",
        "certificates",
        "backup",
        "update",
        "queue",
        "link",
    }


def test_a_check_that_raises_becomes_an_error_finding_and_the_others_still_run() -> None:
    def broken(snapshot: Snapshot) -> list[Finding]:
        raise ZeroDivisionError("bug")

    findings = run_checks(snap(), (Check("broken", broken), *CHECKS))
    assert findings[0].check == "broken"
    assert findings[0].level is Level.ERROR
    assert "ZeroDivisionError" in findings[0].en
    assert findings[0].th
    assert len(findings) > 1


def test_every_warning_and_error_says_what_to_do_in_both_languages() -> None:
    bad = snap(
        FakeReadings(
            default_disk=DiskReading(100 * GiB, 100 * MiB),
            mem=MemoryReading(4 * GiB, 100 * MiB),
            sensors={"cpu/0": Temperature(99.0)},
        ),
        now=10.0,
        box_running=False,
        queue=[QueueGroup(0, 1, 10.0 - 13 * 86400)],
        link=LinkSnapshot(gin=LinkReading(LinkState.DOWN, since=5.0)),
    )
    findings = run_checks(bad)
    assert {f.check for f in findings if f.level is not Level.OK} == {
        "services", "disk", "memory", "temperature", "clock", "queue", "link"
    }  # fmt: skip
    for finding in findings:
        assert finding.todo_en, finding
        assert finding.todo_th, finding
        assert finding.todo("th") == finding.todo_th
        assert finding.text("en") == finding.en


def test_readings_that_fail_become_findings_not_crashes() -> None:
    class Broken(FakeReadings):
        def temperatures(self) -> dict[str, Temperature]:
            raise RuntimeError("sensor driver bug")

        def process_rss(self, pid: int) -> int | None:
            raise PermissionError(1, "denied")

    broken = snap(Broken())
    broken = dataclasses.replace(broken, errors={**broken.errors, "queue": "database is locked"})
    found = {f.check: f for f in run_checks(broken)}
    assert found["temperature"].level is Level.WARN
    assert "sensor driver bug" in found["temperature"].en
    assert found["queue"].level is Level.ERROR
    assert "database is locked" in found["queue"].th
    assert broken.rss == {}


def test_the_certificates_check_reports_what_was_read_with_the_snapshot() -> None:
    expiring = Finding("certificate", Level.ERROR, "server certificate ends in 3 days",
                       "ใบรับรองหมดอายุใน 3 วัน")  # fmt: skip
    findings = run_checks(
        dataclasses.replace(snap(), certificates=(expiring,)),
        tuple(check for check in CHECKS if check.name == "certificates"),
    )
    assert findings == [expiring]
