"""The engines' configuration made from the box's settings, and the settings' checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from appliance.config import ConfigError, load_config
from appliance.protection.engines import (
    PROBE_INTERVAL,
    PROBE_INTERVAL_DOWN,
    EngineWatch,
    clamd_config,
    clamd_socket,
    rspamd_address,
    rspamd_config,
)
from appliance.protection.scanner import ScannerUnavailable


def test_box_engines_live_in_the_data_directory(tmp_path: Path) -> None:
    values = {"port_offset": 100, "protection_rspamd_local": "/x/rules.conf"}
    config = load_config(tmp_path, file_values=values)
    assert clamd_socket(config) == tmp_path / "run" / "protection" / "clamd.sock"
    assert rspamd_address(config) == ("127.0.0.1", 11433)
    text = clamd_config(config)
    assert f"LocalSocket {tmp_path}/run/protection/clamd.sock\n" in text
    assert "DatabaseDirectory /var/lib/clamav\n" in text
    # clamd must read the biggest message whole: one it cannot is an error, not clean.
    assert int(text.split("StreamMaxLength ")[1].split()[0]) > config.max_message_size
    conf = rspamd_config(config)
    assert 'bind_socket = "127.0.0.1:11433"' in conf
    assert '.include(try=true,priority=10) "/x/rules.conf"' in conf


def test_system_engines_are_debians(tmp_path: Path) -> None:
    config = load_config(tmp_path, file_values={"protection_engines": "system"})
    assert str(clamd_socket(config)) == "/run/clamav/clamd.ctl"
    assert rspamd_address(config) == ("127.0.0.1", 11333)


@pytest.mark.parametrize(
    "values",
    [
        {"protection_engines": "cloud"},
        {"protection_submission_unavailable": "maybe"},
        {"protection_junk_score": 20.0, "protection_reject_score": 10.0},
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path: Path, values: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="protection_"):
        load_config(tmp_path, file_values=values)


def test_agency_thresholds_command_sets_what_the_scanner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import main
    from appliance.protection.engines import protection_from_config
    from appliance.protection.verdict import Thresholds
    from appliance.store.settings import Settings

    data = ["--data", str(tmp_path)]
    assert main(["agency", "thresholds", *data, "moe.go.th", "--junk-score", "4",
                 "--reject-score", "9"]) == 0  # fmt: skip
    assert main(["agency", "thresholds", *data, "moe.go.th", "--junk-score", "12"]) == 2
    settings = Settings(tmp_path / "config.json")
    try:
        scanner = protection_from_config(load_config(tmp_path), lambda: settings.get("protection"))
        assert scanner.thresholds_for("moe.go.th") == Thresholds(4.0, 9.0)
        assert scanner.thresholds_for("other.go.th") == Thresholds(6.0, 15.0)
        assert main(["agency", "thresholds", *data, "moe.go.th", "--default"]) == 0
        assert scanner.thresholds_for("moe.go.th") == Thresholds(6.0, 15.0)
    finally:
        settings.close()
    assert "moe.go.th" in capsys.readouterr().out


class Engine:
    """An engine's client that does not answer its first *silent* pings."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.pings: list[float] = []

    async def ping(self) -> bool:
        self.pings.append(trio.current_time())
        return len(self.pings) > self.silent

    async def version(self) -> Any:
        raise ScannerUnavailable("no version in this test")

    @asynccontextmanager
    async def keep_connections(self) -> AsyncIterator[None]:
        yield


class Engines:
    def __init__(self, clamd: Engine, rspamd: Engine) -> None:
        self.clamd, self.rspamd = clamd, rspamd


async def test_an_engine_that_does_not_answer_is_probed_every_second_until_it_does(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = load_config(tmp_path, file_values={"protection_engines": "system"})
    clamd, rspamd = Engine(silent=0), Engine(silent=3)  # rspamd still compiling its rules
    watch = EngineWatch(config, cast(Any, Engines(clamd, rspamd)))
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.serve)
        await trio.sleep(3 * PROBE_INTERVAL_DOWN + 2 * PROBE_INTERVAL + 0.5)
        nursery.cancel_scope.cancel()
    start = rspamd.pings[0]
    gaps = [b - a for a, b in zip(rspamd.pings, rspamd.pings[1:], strict=False)]
    # Three probes find rspamd silent, one second apart; then both answer: every 10 s.
    assert gaps == [PROBE_INTERVAL_DOWN] * 3 + [PROBE_INTERVAL] * 2, (start, gaps)
    assert watch.states["rspamd"].answering
