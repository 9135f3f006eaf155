"""The psutil boundary: the real readings on this machine, and the fake that stands in.

Checks, the disk guard and the metrics read the machine only through `SystemReadings`;
these tests hold the real implementation to the protocol's promises and keep the fake
twin in step with it, so a test that uses the fake tests what the box will run.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.health.checks import CHECKS, UNPROVISIONED_CHECKS
from appliance.health.readings import (
    FakeReadings,
    PsutilReadings,
    SystemReadings,
    Temperature,
)
from appliance.health.snapshot import services_from_status_file


def methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_the_real_machine_and_the_fake_answer_the_same_protocol() -> None:
    promised = methods(SystemReadings)
    assert set(promised) == {
        "cpu_percent", "memory", "disk", "temperatures", "process_rss", "process_exists",
        "wall_time",
    }  # fmt: skip
    for twin in (PsutilReadings, FakeReadings):
        found = methods(twin)
        assert set(found) == set(promised), twin
        for name, signature in promised.items():
            assert list(found[name].parameters) == list(signature.parameters), (twin, name)


def test_psutil_readings_of_this_machine_are_plausible(tmp_path: Path) -> None:
    readings = PsutilReadings()
    readings.cpu_percent()  # the first call only starts the interval
    assert 0.0 <= readings.cpu_percent() <= 100.0
    memory = readings.memory()
    assert 0 < memory.available <= memory.total
    disk = readings.disk(tmp_path)
    assert 0 <= disk.free <= disk.total
    assert all(isinstance(t, Temperature) for t in readings.temperatures().values())
    assert isinstance(readings.wall_time(), float)


def test_psutil_tells_a_live_process_from_one_that_is_gone() -> None:
    readings = PsutilReadings()
    rss = readings.process_rss(os.getpid())
    assert rss is not None
    assert rss > 0
    assert readings.process_exists(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid is free (and, this soon, not reused)
    assert readings.process_rss(child.pid) is None
    assert not readings.process_exists(child.pid)


def test_a_status_file_counts_only_while_its_process_lives(tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps({"pid": 4242, "services": {}, "states": {}}))
    assert services_from_status_file(status_file, FakeReadings()) == (False, {})
    alive = FakeReadings(processes={4242})
    assert services_from_status_file(status_file, alive) == (True, {})
    assert services_from_status_file(tmp_path / "absent.json", alive) == (False, {})


def test_an_unprovisioned_box_is_judged_by_registered_checks_only() -> None:
    assert [c.name for c in UNPROVISIONED_CHECKS] == ["services", "disk"]
    assert set(UNPROVISIONED_CHECKS) <= set(CHECKS)
