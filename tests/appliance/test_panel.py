"""The panel service: its picture of the box (`panel_fields`, a pure function) in both
states, and the button's factory reset (hold, prompt, confirm) through the lifecycle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from appliance.config import Config, ConfigError, load_config
from appliance.health import Finding, Level
from appliance.panel import (
    PROMPT_REPEAT,
    REQUESTS_FILE,
    RESET_PROMPT,
    STICK_RESULT_HOLD,
    BoxViewSlot,
    PanelService,
    panel_fields,
    panel_service,
)
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import BoxState, Lifecycle, ResetHold
from appliance.provisioning.provision import provision
from appliance.sync.link import LinkReading, LinkSnapshot, LinkState
from appliance.update import outcome, progress
from appliance.update.progress import update_view
from hw import panel_link
from hw.panel import ButtonPressed, HostWasReset, PanelClient
from tests.appliance.provisioning.test_provision import REQUEST


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


def config_with(tmp_path: Path, **flags: str) -> Config:
    return load_config(tmp_path, flags=flags)


def test_the_service_runs_only_with_a_panel(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    views = BoxViewSlot()
    service = panel_service(config_with(tmp_path, panel_device="/dev/ttyACM3"), lifecycle, views)
    assert isinstance(service, PanelService)
    assert service.device == Path("/dev/ttyACM3")
    # A board whose panel device is not there (a development machine): no service.
    board_only = config_with(tmp_path, board="arm64")
    assert not Path("/dev/ttyAMA1").exists()
    assert panel_service(board_only, lifecycle, views) is None
    with pytest.raises(ConfigError, match="riscv"):
        panel_service(config_with(tmp_path, board="riscv"), lifecycle, views)


class FakeClient:
    """Records what the service tells the panel (`PanelClient.confirm`)."""

    def __init__(self) -> None:
        self.notices: list[str] = []

    def confirm(self, text: str) -> None:
        self.notices.append(text)


async def _service(tmp_path: Path, provisioned: bool) -> tuple[PanelService, FakeClient]:
    if provisioned:
        await provision(tmp_path, REQUEST)
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    state = BoxState.PROVISIONED if provisioned else BoxState.UNPROVISIONED
    lifecycle.serving(state, {})
    service = PanelService(config_with(tmp_path), Path("/dev/null"), lifecycle, BoxViewSlot())
    client = FakeClient()
    service.client = cast(PanelClient, client)
    return service, client


async def _reset_asked(lifecycle: Lifecycle) -> bool:
    with trio.move_on_after(0.01):
        await lifecycle.wait_reset_requested()
        return True
    return False


async def test_the_long_press_prompts_and_a_short_press_resets(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    service, client = await _service(tmp_path, provisioned=True)
    service._on_event(ButtonPressed("factory-reset"))
    assert client.notices == [RESET_PROMPT]
    # The prompt is repeated so the panel keeps showing it through the window.
    await trio.sleep(PROMPT_REPEAT)
    service._prompt(trio.current_time())
    assert client.notices == [RESET_PROMPT, RESET_PROMPT]
    service._on_event(ButtonPressed("next"))
    assert client.notices[-1] == "factory reset: erasing, wait"
    assert await _reset_asked(service.lifecycle)
    # Nothing was written to the old hook file: the real path took the request.
    assert not (tmp_path / REQUESTS_FILE).exists()


async def test_a_prompt_left_unanswered_lapses_and_a_page_press_resets_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    service, client = await _service(tmp_path, provisioned=True)
    service._on_event(ButtonPressed("next"))  # a page press, no prompt: nothing
    service._on_event(ButtonPressed("factory-reset"))
    await trio.sleep(ResetHold.CONFIRM_WINDOW + 1)
    service._prompt(trio.current_time())
    assert client.notices == [RESET_PROMPT, "reset not confirmed; nothing changed"]
    service._on_event(ButtonPressed("next"))
    assert not await _reset_asked(service.lifecycle)


async def test_unprovisioned_shows_the_setup_code_and_refuses_a_reset(tmp_path: Path) -> None:
    service, client = await _service(tmp_path, provisioned=False)
    service._status = service.lifecycle.status()
    fields = service._fields()
    assert fields["prov"] == "no"
    assert fields["setup"] == service._status.setup_code
    assert fields["fp"] == service._status.fingerprint
    assert fields["name"] == service._status.hostname
    assert (fields["queue"], fields["health"], fields["gin"]) == ("0", "ok", "unknown")
    service._on_event(ButtonPressed("factory-reset"))
    assert client.notices == ["box is unprovisioned already; nothing to reset"]
    assert not service.lifecycle.panel_reset.awaiting_confirmation


async def test_a_host_reset_and_a_recovery_request_are_recorded(tmp_path: Path) -> None:
    service, client = await _service(tmp_path, provisioned=True)
    service._on_event(HostWasReset("no heartbeat for 9 s (limit 8 s)"))
    service._on_event(ButtonPressed("recovery"))
    lines = (tmp_path / REQUESTS_FILE).read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["what"] for e in entries] == ["host-was-reset", "recovery"]
    assert entries[0]["reason"] == "no heartbeat for 9 s (limit 8 s)"
    assert client.notices == ["recovery request noted"]


async def test_a_sticks_steps_show_once_and_its_result_for_a_minute(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    service, client = await _service(tmp_path, provisioned=False)
    lifecycle = service.lifecycle
    service._stick(trio.current_time())
    assert client.notices == []  # no stick yet
    lifecycle.stick_news("USB: checking bundle")
    service._stick(trio.current_time())
    await trio.sleep(PROMPT_REPEAT)
    service._stick(trio.current_time())  # progress: shown once
    assert client.notices == ["USB: checking bundle"]
    lifecycle.stick_news("USB done: provision; remove stick", final=True)
    for _ in range(int(STICK_RESULT_HOLD / PROMPT_REPEAT) + 5):
        service._stick(trio.current_time())
        await trio.sleep(PROMPT_REPEAT)
    shown = client.notices[1:]
    assert set(shown) == {"USB done: provision; remove stick"}
    # Repeated through the minute the firmware's 5-s notice would otherwise leave blank.
    assert len(shown) == int(STICK_RESULT_HOLD / PROMPT_REPEAT)


def test_an_update_in_hand_then_how_it_ended_reaches_the_panel(tmp_path: Path) -> None:
    def fields_now(now: float) -> dict[str, str]:
        return panel_fields(
            name="box.moe.go.th", lan="192.168.100.200", link=snapshot(LinkState.UP, LinkState.UP),
            queue_groups=[(3, "a@moe.go.th", 12, 10)],
            findings=[Finding("update", Level.WARN, "update 2026.12.2 rolled back: " + "x" * 80,
                              "...")],
            update=update_view(tmp_path, now),
        )  # fmt: skip

    assert "uphase" not in fields_now(1000.0)  # no update yet
    progress.write_progress(tmp_path, progress.Progress("installing", 42, "2026.12.2", 1000.0))
    fields = fields_now(1001.0)
    assert (fields["uphase"], fields["update"], fields["uver"]) == ("installing", "42", "2026.12.2")
    # The installer died: its progress is not shown for ever.
    assert "uphase" not in fields_now(1000.0 + progress.STALE_AFTER + 1)
    # It rolled back: the panel says so, and why, for a day.
    progress.clear_progress(tmp_path)
    outcome.record(tmp_path, "rolled_back", "2026.12.2", "A", 2000.0,
                   "health gate failed: store: the probe blob read back differently")  # fmt: skip
    fields = fields_now(2001.0)
    assert (fields["uphase"], fields["uwhy"]) == (
        "rolled-back",
        "health gate failed: store: the probe blob read b",
    )
    assert "update" not in fields
    assert "uphase" not in fields_now(2000.0 + progress.RESULT_HOLD + 1)
    # With every other field at its longest, the free texts give way: no field is lost.
    crowded = panel_fields(
        name="n" * 64, lan="192.168.100.200", link=snapshot(LinkState.DOWN, LinkState.DOWN),
        queue_groups=[(3, "a@moe.go.th", 1200, 10)],
        findings=[Finding("update", Level.WARN, "c" * 80, "...")],
        update=update_view(tmp_path, 2001.0),
    )  # fmt: skip
    assert panel_link.decode_state(panel_link.encode_state(crowded)) == crowded
    # Cut, the health text first, each to no less than a display line.
    assert len(crowded["check"]) == 16
    assert fields["uwhy"].startswith(crowded["uwhy"])
    assert len(crowded["uwhy"]) >= 16
    # A refusal written by the installer (a stick's bad bundle) outranks older history.
    progress.write_progress(tmp_path, progress.Progress("refused", 0, "", 3000.0, "tampered"))
    assert (fields_now(3001.0)["uphase"], fields_now(3001.0)["uwhy"]) == ("refused", "tampered")


@pytest.mark.parametrize("provisioned", [True, False])
async def test_the_service_shows_whoever_installs_on_the_update_page(
    tmp_path: Path, provisioned: bool
) -> None:
    # A stick may update an unprovisioned box too: both states carry the fields.
    service, _client = await _service(tmp_path, provisioned=provisioned)
    service._status = service.lifecycle.status()
    assert "uphase" not in service._fields()
    # Another process (`edgebox update install`) writes its progress; the panel reads it.
    progress.write_progress(tmp_path, progress.Progress("downloading", 7, "2026.12.2", time.time()))
    fields = service._fields()
    assert (fields["uphase"], fields["update"], fields["uver"]) == ("downloading", "7", "2026.12.2")
