"""`stop_leftover`: a killed box's engine is stopped at the next start, nothing else is."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.protection.engines import record_started, stop_leftover

#: Stands in for an engine: a process in its own session, as the box starts them.
COMMAND = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def engine() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(COMMAND, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_the_process_the_box_started_is_stopped(
    tmp_path: Path, engine: subprocess.Popen[bytes]
) -> None:
    record = tmp_path / "rspamd.started"
    record_started(record, engine.pid, COMMAND)
    assert stop_leftover(record)
    assert engine.wait(10) == -signal.SIGTERM


def test_a_reused_pid_running_something_else_is_left_alone(
    tmp_path: Path, engine: subprocess.Popen[bytes]
) -> None:
    record = tmp_path / "rspamd.started"
    record_started(record, engine.pid, ["rspamd", "-f", "-c", "/elsewhere/rspamd.conf"])
    assert not stop_leftover(record)
    assert engine.poll() is None


def test_the_same_command_started_at_another_time_is_left_alone(
    tmp_path: Path, engine: subprocess.Popen[bytes]
) -> None:
    record = tmp_path / "clamd.started"
    record_started(record, engine.pid, COMMAND)
    document = json.loads(record.read_text())
    document["created"] -= 60  # the recorded process started a minute earlier
    record.write_text(json.dumps(document))
    assert not stop_leftover(record)
    assert engine.poll() is None


@pytest.mark.parametrize("text", [None, "", "{", '{"pid": "1", "command": []}', '{"pid": 1}'])
def test_no_usable_record_stops_nothing(tmp_path: Path, text: str | None) -> None:
    record = tmp_path / "clamd.started"
    if text is not None:
        record.write_text(text)
    assert not stop_leftover(record)
