"""A provisioning stick carrying a system update, installed through the real RAUC of
tests/appliance/update/sandbox.py: what the signed manifest names installs; a bad
bundle changes nothing and says why, on the stick, on the panel and in the history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.provisioning.bundle import BUNDLE_DIR
from appliance.provisioning.usb import FolderStick, UsbProvisioning
from appliance.update import outcome, progress
from appliance.update.installer import UpdateInstaller
from appliance.update.keyring import Keyring
from tests.appliance.update.channelkit import random_bundle
from tests.appliance.update.sandbox import RaucSandbox, keyrings, release_of

from .stick import Technician, technician, write_bundle
from .test_usb import new_box, results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keyring]:
    return keyrings(tmp_path_factory.mktemp("keyrings"))


@pytest.fixture
def rauc(tmp_path: Path, keys: dict[str, Keyring]) -> Iterator[RaucSandbox]:
    sandbox = RaucSandbox.create(tmp_path / "rauc", keys["release"])
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture
def tech(tmp_path: Path) -> Technician:
    return technician(tmp_path / "hub")


async def provisioned_box(
    tmp_path: Path, tech: Technician, rauc: RaucSandbox, reboots: list[str]
) -> UsbProvisioning:
    """A box provisioned by a first stick, installing updates with the sandbox's RAUC."""
    data = tmp_path / "data"
    first = new_box(data, tech)
    installer = UpdateInstaller(data, rauc.rauc(), lambda: reboots.append("reboot"))
    service = UsbProvisioning(first.config, first.lifecycle, first.devices, installer)
    write_bundle(tmp_path / "first", tech)
    done = await service.handle(FolderStick(tmp_path / "first"))
    assert done is not None
    assert done.status == "applied"
    return service


async def test_a_stick_s_update_installs_and_the_box_reboots_after_the_result(
    tmp_path: Path, tech: Technician, rauc: RaucSandbox, keys: dict[str, Keyring]
) -> None:
    reboots: list[str] = []
    service = await provisioned_box(tmp_path, tech, rauc, reboots)
    news: list[str] = []
    service.lifecycle.stick_news = lambda text, final=False: news.append(text)  # type: ignore[method-assign]
    update = random_bundle(tmp_path, keys["release"], "2.0", size=1 << 20)
    write_bundle(tmp_path / "stick", tech, answers=None, update=update)
    assert (tmp_path / "stick" / BUNDLE_DIR / update.name).exists()

    done = await service.handle(FolderStick(tmp_path / "stick"))
    assert done is not None
    assert (done.status, done.applied) == ("applied", ["update:2.0"])
    assert release_of(rauc.slot("B")) == "2.0"
    [result] = results(tmp_path / "stick")
    assert (result["status"], result["applied"]) == ("applied", ["update:2.0"])
    pending = outcome.read_state(service.data_dir).pending
    assert pending is not None
    assert (pending.version, pending.to_slot) == ("2.0", "B")
    # The panel heard the install, then the result; the reboot came after it.
    assert any("installing update" in text for text in news)
    assert news[-1].startswith("USB done: update:2.0")
    assert reboots == ["reboot"]
    shown = progress.read_progress(service.data_dir, time.time())
    assert shown is not None
    assert shown.phase == progress.REBOOTING


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault", ["tampered", "stranger", "older"])
async def test_a_bad_update_on_a_stick_changes_nothing_and_says_why(
    tmp_path: Path, tech: Technician, rauc: RaucSandbox, keys: dict[str, Keyring], fault: str
) -> None:
    reboots: list[str] = []
    service = await provisioned_box(tmp_path, tech, rauc, reboots)
    news: list[str] = []
    service.lifecycle.stick_news = lambda text, final=False: news.append(text)  # type: ignore[method-assign]
    signer = keys["stranger" if fault == "stranger" else "release"]
    update = random_bundle(tmp_path, signer, "0.0.1" if fault == "older" else "2.0", size=1 << 20)
    write_bundle(tmp_path / "stick", tech, answers=None, update=update)
    if fault == "tampered":
        tamper(tmp_path / "stick" / BUNDLE_DIR / update.name)
    untouched = rauc.fingerprint()

    done = await service.handle(FolderStick(tmp_path / "stick"))
    assert done is not None
    assert (done.status, done.applied) == ("update-refused", [])
    why = {
        "tampered": "does not match the signed manifest",
        "stranger": "RAUC",
        "older": "is not newer than the running",
    }[fault]
    assert why in done.errors[0]["en"]
    assert done.errors[0]["th"]
    assert rauc.fingerprint() == untouched
    assert reboots == []
    # On the stick, on the panel, and in the history the console and the hub read.
    assert results(tmp_path / "stick")[-1]["status"] == "update-refused"
    assert news[-1].startswith("USB update refused:")
    assert why in news[-1]
    shown = progress.read_progress(service.data_dir, time.time())
    assert shown is not None
    assert shown.phase == progress.REFUSED
    assert why in shown.reason
    [event] = outcome.read_state(service.data_dir).events
    assert event.event == "refused"
    assert why in event.reason
    assert outcome.read_state(service.data_dir).pending is None
