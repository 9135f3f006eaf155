"""The running box's state object: what discovery, the setup API and the panel read."""

from __future__ import annotations

from pathlib import Path

import trio

from appliance.provisioning.device import certificate_fingerprint, ensure_device
from appliance.provisioning.lifecycle import BoxState, Lifecycle, ResetHold
from appliance.provisioning.provision import provision
from tests.appliance.provisioning.test_provision import DOMAIN, REQUEST


async def test_status_follows_the_state_and_the_certificate(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    device = ensure_device(tmp_path)
    lifecycle = Lifecycle(tmp_path, device)
    before = lifecycle.status()
    assert before.state is BoxState.UNPROVISIONED
    assert before.setup_code is not None
    assert before.setup_code.replace("-", "") == device.setup_code()
    assert before.fingerprint == certificate_fingerprint(device.cert_file.read_bytes())
    assert before.domain is None

    changed = lifecycle.changed()
    await provision(tmp_path, REQUEST)
    lifecycle.provisioned()
    with trio.fail_after(1):
        await lifecycle.wait_provisioned()
    lifecycle.serving(BoxState.PROVISIONED, {"https": 8443, "imaps": 2993})
    assert changed.is_set()
    after = lifecycle.status()
    assert after.state is BoxState.PROVISIONED
    assert after.setup_code is None  # never shown once it can no longer be used
    assert after.domain == DOMAIN
    assert after.ports == {"https": 8443, "imaps": 2993}
    server_pem = (tmp_path / "keys" / "server.pem").read_bytes()
    assert after.fingerprint == certificate_fingerprint(server_pem)


async def _provisioned_lifecycle(tmp_path: Path) -> Lifecycle:
    await provision(tmp_path, REQUEST)
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    lifecycle.serving(BoxState.PROVISIONED, {})
    return lifecycle


async def _reset_asked(lifecycle: Lifecycle) -> bool:
    with trio.move_on_after(0.01):
        await lifecycle.wait_reset_requested()
        return True
    return False


async def test_panel_reset_needs_the_hold_and_the_confirm_in_time(tmp_path: Path) -> None:
    lifecycle = await _provisioned_lifecycle(tmp_path)
    hold = lifecycle.panel_reset
    # A short press: nothing.
    hold.pressed(100.0)
    assert not hold.released(100.0 + ResetHold.HOLD - 0.5)
    assert not hold.confirm(101.0)
    # Held, but confirmed too late: nothing.
    hold.pressed(200.0)
    assert hold.released(200.0 + ResetHold.HOLD)
    assert hold.awaiting_confirmation
    assert not hold.confirm(200.0 + ResetHold.HOLD + ResetHold.CONFIRM_WINDOW + 1)
    assert not await _reset_asked(lifecycle)
    # A confirm without a hold: nothing.
    assert not hold.confirm(300.0)
    # Held and confirmed in time: the runner is asked to reset.
    hold.pressed(400.0)
    assert hold.released(415.0)
    assert hold.confirm(420.0)
    assert await _reset_asked(lifecycle)


async def test_an_unprovisioned_box_has_nothing_to_reset(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    lifecycle.panel_reset.pressed(0.0)
    assert not lifecycle.panel_reset.released(60.0)
    lifecycle.request_reset()
    assert not await _reset_asked(lifecycle)


async def test_a_hold_timed_by_the_panel_arms_the_prompt_until_it_lapses(tmp_path: Path) -> None:
    lifecycle = await _provisioned_lifecycle(tmp_path)
    hold = lifecycle.panel_reset
    assert hold.held(50.0)
    assert not hold.lapse(50.0 + ResetHold.CONFIRM_WINDOW)
    assert hold.lapse(50.0 + ResetHold.CONFIRM_WINDOW + 0.1)
    assert not hold.awaiting_confirmation
    assert not hold.confirm(50.0 + ResetHold.CONFIRM_WINDOW + 0.2)
    assert not await _reset_asked(lifecycle)
    # Armed again and confirmed within the window: the runner is asked to reset.
    assert hold.held(100.0)
    assert hold.confirm(110.0)
    assert await _reset_asked(lifecycle)


async def test_the_confirm_window_is_the_panel_reset_window_setting(tmp_path: Path) -> None:
    await provision(tmp_path, REQUEST)
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path), reset_window=5.0)
    lifecycle.serving(BoxState.PROVISIONED, {})
    hold = lifecycle.panel_reset
    assert hold.held(50.0)
    assert not hold.lapse(55.0)
    assert hold.lapse(55.1)
    assert hold.held(100.0)
    assert not hold.confirm(105.1)  # late for a 5-s window, though within the default 30 s
    assert not await _reset_asked(lifecycle)


async def test_the_panel_cannot_arm_a_reset_on_an_unprovisioned_box(tmp_path: Path) -> None:
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    assert not lifecycle.panel_reset.held(0.0)
    assert not lifecycle.panel_reset.awaiting_confirmation
