"""A real rspamd picks up a rule file installed from the hub's routes (SIGHUP reload).

rspamd alone, configured by the box's own generator (appliance.protection.engines) and
run the way the box runs it: a marker phrase scores nothing before the set arrives; the
set's ``rspamd/regexp.conf`` lands in the box's local.d, the updater sends rspamd its
SIGHUP, and the same message then carries the rule's symbol and score.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.config import Config
from appliance.protection.engines import (
    EngineWatch,
    engine_dir,
    protection_from_config,
    rspamd_config,
)
from appliance.protection.rspamd import Envelope
from appliance.protection.signatures.sync import read_state
from appliance.security.provisioning_ca import ensure_provisioning_ca
from tests.appliance.protection.engines import START_TIMEOUT, CompiledRules
from tests.appliance.protection.test_signatures import InProcessHub, box_config, publish, updater
from tests.harness import require_tool
from tests.peers import free_port

pytestmark = pytest.mark.slow

MARKER = "edgebox-signature-rule-marker"
#: local.d/regexp.conf is merged into rspamd's regexp module (modules.d/regexp.conf).
RULE = f"""
EDGEBOX_SIG_MARKER {{
  re = "/{MARKER}/i{{body}}";
  score = 7.5;
  description = "edgebox test: a rule that arrives with a signature set";
}}
""".encode()
MESSAGE = (
    "From: a@example.org\r\nTo: b@moe.go.th\r\nSubject: minutes\r\n"
    "Message-ID: <sig-rule@example.org>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0700\r\n\r\n"
    f"The meeting notes, and {MARKER} in the text.\r\n"
).encode()


@pytest.fixture
def rspamd_box(tmp_path: Path, compiled_rules: CompiledRules) -> Iterator[Config]:
    """A box's config with its own rspamd running (box's configuration, no local rules)."""
    binary = require_tool("rspamd")
    ensure_provisioning_ca(tmp_path / "hub" / "keys")
    config = dataclasses.replace(box_config(tmp_path), protection_rspamd_port=free_port())
    run = engine_dir(config)
    for sub in ("rspamd-db", "rspamd-log", "local.d"):
        (run / sub).mkdir(parents=True)
    compiled_rules.seed(run / "rspamd-db")
    (run / "rspamd.conf").write_text(rspamd_config(config))
    process = subprocess.Popen(
        [binary, "-f", "-i", "-c", str(run / "rspamd.conf"),
         f"--var=RUNDIR={run}", f"--var=DBDIR={run / 'rspamd-db'}",
         f"--var=LOGDIR={run / 'rspamd-log'}", f"--var=LOCAL_CONFDIR={run}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # What the box's engine watch records of the rspamd it started (run/protection.json):
    # with -f rspamd writes no pid file, so the updater finds it here.
    watch = EngineWatch(config, protection_from_config(config))
    watch.states["rspamd"].pid = process.pid
    watch._write_state()
    try:
        yield config
    finally:
        compiled_rules.keep(run / "rspamd-db")
        process.terminate()
        process.wait(30)


async def test_rspamd_scores_the_marker_only_after_the_rule_is_installed(
    tmp_path: Path, rspamd_box: Config
) -> None:
    rspamd = protection_from_config(rspamd_box).rspamd
    envelope = Envelope("192.0.2.1", "mx.example.org", "a@example.org", ["b@moe.go.th"])
    deadline = time.monotonic() + START_TIMEOUT  # rspamd compiles its rules at start
    while not await rspamd.ping():
        assert time.monotonic() < deadline, "rspamd did not start"
        await trio.sleep(0.5)
    before = await rspamd.check(MESSAGE, envelope)
    assert "EDGEBOX_SIG_MARKER" not in before.symbols
    publish(tmp_path, {"rspamd/regexp.conf": RULE})
    service = updater(rspamd_box, InProcessHub(tmp_path / "hub"))
    assert await service.update_round() == "installed"
    assert (engine_dir(rspamd_box) / "local.d" / "regexp.conf").read_bytes() == RULE
    state = read_state(rspamd_box.data_dir)
    assert state is not None
    assert state["files"] == ["rspamd/regexp.conf"]
    assert state["error"] == ""  # the SIGHUP reached rspamd's main process
    # SIGHUP makes rspamd start new workers on the new configuration and retire the
    # old ones; until they answer, the old rules may still score. Bounded wait.
    after = before
    deadline = time.monotonic() + START_TIMEOUT
    while "EDGEBOX_SIG_MARKER" not in after.symbols and time.monotonic() < deadline:
        await trio.sleep(0.5)
        if await rspamd.ping():
            after = await rspamd.check(MESSAGE, envelope)
    assert after.symbols.get("EDGEBOX_SIG_MARKER") == 7.5
    assert after.score >= before.score + 7.5
