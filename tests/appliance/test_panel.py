"""The panel service's picture of the box (`panel_fields`): a pure function."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from appliance.box import Box
from appliance.config import ConfigError, load_config
from appliance.health import Finding, Level
from appliance.panel import PanelService, panel_fields, panel_services
from appliance.sync.link import LinkReading, LinkSnapshot, LinkState
from hw import panel_link


def snapshot(gin: LinkState, international: LinkState) -> LinkSnapshot:
    return LinkSnapshot(
        gin=LinkReading(target="gin", state=gin),
        international=LinkReading(target="intl", state=international),
        written_at=None,
    )


def test_link_queue_and_the_worst_finding() -> None:
    fields = panel_fields(
        name="mail.demo.go.th",
        lan="192.168.1.10",
        link=snapshot(LinkState.DOWN, LinkState.UP),
        queue_groups=[(0, "a@demo.go.th", 2, 10), (3, "b@demo.go.th", 1, 20)],
        findings=[
            Finding("disk", Level.WARN, "1.2 GB free (3%)", "..."),
            Finding("memory", Level.ERROR, "92% used", "..."),
        ],
    )
    assert fields == {
        "name": "mail.demo.go.th",
        "lan": "192.168.1.10",
        "prov": "yes",
        "gin": "down",
        "intl": "up",
        "queue": "3",
        "urgent": "most urgent",
        "health": "error",
        "check": "memory: 92% used",
    }
    # What goes on the wire fits one frame and comes back the same.
    assert panel_link.decode_state(panel_link.encode_state(fields)) == fields


def test_no_monitor_yet_an_empty_queue_and_unprovisioned() -> None:
    fields = panel_fields(
        name="box",
        lan="10.0.0.2",
        link=None,
        queue_groups=[],
        findings=[Finding("disk", Level.OK, "fine", "...")],
        provisioned=False,
        setup_code="123-456",
        update_percent=40,
    )
    assert fields["gin"] == fields["intl"] == "unknown"
    assert (fields["queue"], fields["urgent"], fields["health"], fields["check"]) == (
        "0",
        "",
        "ok",
        "",
    )
    assert (fields["prov"], fields["setup"], fields["update"]) == ("no", "123-456", "40")


def box_with(tmp_path: Path, **flags: str) -> Box:
    return cast(Box, SimpleNamespace(config=load_config(tmp_path, flags=flags)))


def test_the_service_runs_only_with_a_panel(tmp_path: Path) -> None:
    [service] = panel_services(box_with(tmp_path, panel_device="/dev/ttyACM3"), list)
    assert isinstance(service, PanelService)
    assert service.device == Path("/dev/ttyACM3")
    # A board whose panel device is not there (a development machine): no service.
    board_only = box_with(tmp_path, board="arm64")
    assert not Path("/dev/ttyAMA1").exists()
    assert panel_services(board_only, list) == []
    with pytest.raises(ConfigError, match="riscv"):
        panel_services(box_with(tmp_path, board="riscv"), list)
