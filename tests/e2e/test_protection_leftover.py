"""A box killed with SIGKILL leaves its engines running; the next start stops them.

The engines run in a session of their own (a signal meant for the box's process group
must not reach them), so nothing stops them when the box dies. rspamd started with
``-f`` writes no pid file and rewrites its /proc title; the box records what it started
(``run/protection/<engine>.started``) and the next start stops exactly those.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from appliance.store.settings import Settings
from tests.appliance.protection.engines import CompiledRules, box_rspamd_database
from tests.e2e.test_protection import DOMAIN, USERS, wait_for_engines, write_engine_files
from tests.harness import init_box, require_tool, start_box

pytestmark = pytest.mark.slow

ENGINES = ("clamd", "rspamd")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def started_pids(data: Path, timeout: float) -> dict[str, int]:
    """The engine pids the box recorded, once both name a running process."""
    deadline = time.monotonic() + timeout
    while True:
        pids: dict[str, int] = {}
        for name in ENGINES:
            try:
                pid = json.loads((data / "run" / "protection" / f"{name}.started").read_text())
            except (OSError, ValueError):
                continue
            if running(pid["pid"]):
                pids[name] = pid["pid"]
        if len(pids) == len(ENGINES):
            return pids
        assert time.monotonic() < deadline, f"engines not recorded: {pids}"
        time.sleep(0.5)


def test_the_next_start_stops_what_a_killed_box_left_running(
    tmp_path: Path, compiled_rules: CompiledRules
) -> None:
    require_tool("clamd")
    require_tool("rspamd")
    data = tmp_path / "box"
    init_box(data, DOMAIN, USERS)
    settings = Settings(data / "config.json")
    try:
        settings.update("config", write_engine_files(tmp_path))
    finally:
        settings.close()
    compiled_rules.seed(box_rspamd_database(data))
    first = start_box(data)
    try:
        # Both engines up, so rspamd has forked its workers and retitled itself.
        wait_for_engines(first, compiled_rules)
        left = started_pids(data, 30)
    finally:
        first.kill()
    assert all(running(pid) for pid in left.values()), "SIGKILL reached the engines"
    rspamd = psutil.Process(left["rspamd"])
    workers = rspamd.children(recursive=True)
    assert rspamd.cmdline()[0].startswith("rspamd: main process")  # why a pid file is no use
    second = start_box(data)
    try:
        deadline = time.monotonic() + 60
        while any(running(p.pid) for p in [rspamd, *workers]) or running(left["clamd"]):
            assert time.monotonic() < deadline, "the leftover engines were not stopped"
            time.sleep(0.5)
        # Their socket and port are free again: the box's own engines come up.
        wait_for_engines(second, compiled_rules)
        now = started_pids(data, 30)
        assert set(now.values()).isdisjoint(left.values())
    finally:
        assert second.stop() == 0
    assert not any(running(pid) for pid in now.values())
