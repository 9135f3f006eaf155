"""The offline path: a signed signature set on a USB stick, through the stick service's
folder twin, and the commands that make sets (``edgebox hub signatures publish``,
``edgebox signatures stick``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from appliance.box import configured
from appliance.cli import main
from appliance.config import Config
from appliance.protection.signatures.manifest import INSTALLED, MANIFEST, STICK_DIR
from appliance.protection.signatures.sync import MIRROR_DIR, read_state, stick_installer
from appliance.provisioning.device import DEVICE_DIR, ensure_device
from appliance.provisioning.lifecycle import Lifecycle
from appliance.provisioning.usb import FolderStick, FolderSticks, UsbProvisioning
from appliance.security.provisioning_ca import CA_CERT, issue_technician_certificate
from tests.appliance.provisioning.test_usb import results

NDB = b"Edgebox-Stick-Test:0:*:737469636b\n"


def mirror(root: Path) -> Path:
    folder = root / "mirror"
    folder.mkdir()
    (folder / "edgebox-stick.ndb").write_bytes(NDB)
    (folder / "freshclam.dat").write_bytes(b"freshclam's own state, never published")
    return folder


def stick_box(root: Path) -> tuple[UsbProvisioning, Config]:
    """A box trusting *root*/hub's provisioning CA, its stick service with the set hook."""
    data = root / "data"
    device = ensure_device(data)
    (data / DEVICE_DIR / CA_CERT).write_bytes((root / "hub" / "keys" / CA_CERT).read_bytes())
    config = dataclasses.replace(
        configured(data, {}, {}), protection=True,
        protection_clamd_database=str(root / "clamav"),
    )  # fmt: skip
    service = UsbProvisioning(
        config, Lifecycle(data, device), FolderSticks(), signatures=stick_installer(config)
    )
    return service, config


def technician_files(root: Path) -> tuple[Path, Path]:
    key, chain = issue_technician_certificate(root / "hub" / "keys", "ช่างสมศักดิ์", 30)
    (root / "tech.key").write_bytes(key)
    (root / "tech.pem").write_bytes(chain)
    return root / "tech.key", root / "tech.pem"


async def test_a_signed_set_on_a_stick_is_installed_and_the_result_says_so(
    tmp_path: Path,
) -> None:
    key, cert = technician_files(tmp_path)
    stick = tmp_path / "stick"
    args = ["signatures", "stick", str(mirror(tmp_path)), "--key", str(key), "--cert", str(cert)]
    assert main([*args, "--out", str(stick)]) == 0
    service, config = stick_box(tmp_path)
    outcome = await service.handle(FolderStick(stick))
    assert outcome is not None
    assert outcome.status == "applied", outcome.errors
    assert outcome.applied[0].startswith("signatures:")
    assert (tmp_path / "clamav" / "edgebox-stick.ndb").read_bytes() == NDB
    assert not (tmp_path / "clamav" / "freshclam.dat").exists()
    assert results(stick)[0]["status"] == "applied"
    # Brought again: the same set is not newer, so it is refused and nothing changes.
    again = await service.handle(FolderStick(stick))
    assert again is not None
    assert again.status == "old"
    assert (config.data_dir / INSTALLED).exists()


async def test_a_changed_file_on_the_stick_installs_nothing(tmp_path: Path) -> None:
    key, cert = technician_files(tmp_path)
    stick = tmp_path / "stick"
    args = ["signatures", "stick", str(mirror(tmp_path)), "--key", str(key), "--cert", str(cert)]
    assert main([*args, "--out", str(stick)]) == 0
    (stick / STICK_DIR / "clamd" / "edgebox-stick.ndb").write_bytes(b"Evil:0:*:00\n")
    service, config = stick_box(tmp_path)
    outcome = await service.handle(FolderStick(stick))
    assert outcome is not None
    assert outcome.status == "tampered"
    assert not (tmp_path / "clamav").exists()
    state = read_state(config.data_dir)
    assert state is not None
    assert state["result"] == "refused"
    assert results(stick)[0]["errors"][0]["th"]  # type: ignore[index]


def test_publish_signs_the_mirror_into_the_hubs_served_folder(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    assert main(["hub", "signatures", "publish", "--data", str(hub), str(mirror(tmp_path))]) == 0
    served = hub / MIRROR_DIR
    assert (served / MANIFEST).exists()
    assert (served / "clamd" / "edgebox-stick.ndb").read_bytes() == NDB
    assert main(["hub", "signatures", "publish", "--data", str(hub), str(tmp_path / "none")]) == 2
    assert (served / MANIFEST).exists()  # a failed publish leaves the served set alone
