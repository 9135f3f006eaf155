"""The box's stick service through the folder twin: apply, refuse, answer on the stick.

The twin (`FolderSticks`) hands over a folder as if the stick were mounted; the kernel
path (pyudev, mount) is in tests/e2e/test_usb_stick.py on a loop device.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

import appliance.provisioning.usb
from appliance.box import configured, open_box, read_identity
from appliance.provisioning.bundle import (
    ANSWERS,
    BUNDLE_DIR,
    MANIFEST,
    TOKEN,
    BundleError,
    create_bundle,
)
from appliance.provisioning.device import DEVICE_DIR, ensure_device
from appliance.provisioning.lifecycle import Lifecycle
from appliance.provisioning.provision import ProvisioningError, ProvisioningRequest, provision
from appliance.provisioning.provisioning_ca import (
    CA_CERT,
    issue_technician_certificate,
    revoke_technician_certificate,
)
from appliance.provisioning.reset import factory_reset
from appliance.provisioning.usb import (
    APPLIED_FILE,
    RESULTS_DIR,
    FolderStick,
    FolderSticks,
    UdevBlockDevices,
    UsbProvisioning,
    accepts,
    known_crls,
    trust_anchors,
    verify_result,
)
from appliance.sync.enrol import EnrolError

from .stick import (
    ADMIN,
    ANSWERS_TOML,
    DOMAIN,
    PASSWORD,
    USERS_CSV,
    Technician,
    technician,
    write_bundle,
)


def new_box(data: Path, tech: Technician) -> UsbProvisioning:
    device = ensure_device(data)
    # The image's copy of the hub's provisioning CA (survives a factory reset).
    (data / DEVICE_DIR / CA_CERT).write_bytes(tech.ca_pem)
    return UsbProvisioning(configured(data, {}, {}), Lifecycle(data, device), FolderSticks())


def snapshot(data: Path) -> dict[str, str]:
    """Every file under *data* and its content hash (locks and the setup code aside)."""
    return {
        str(path.relative_to(data)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


def results(stick: Path) -> list[dict[str, object]]:
    found = []
    for path in sorted((stick / RESULTS_DIR).glob("*.json")):
        signature = path.with_name(path.name + ".sig").read_bytes()
        found.append(verify_result(path.read_bytes(), signature))
    return found


@pytest.fixture
def tech(tmp_path: Path) -> Technician:
    return technician(tmp_path / "hub")


async def test_a_good_stick_provisions_the_box_and_gets_a_signed_result(
    tmp_path: Path, tech: Technician
) -> None:
    service = new_box(tmp_path / "data", tech)
    stick = tmp_path / "stick"
    bundle_id = write_bundle(stick, tech, users=USERS_CSV)

    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        assert isinstance(service.devices, FolderSticks)
        await service.devices.insert(FolderStick(stick))
        # The service tells the runner to start every service.
        await service.lifecycle.wait_provisioned()
        nursery.cancel_scope.cancel()

    identity = read_identity(tmp_path / "data")
    assert identity is not None
    assert identity.domain == DOMAIN
    assert identity.box_id == service.lifecycle.device.box_id
    async with open_box(configured(tmp_path / "data", {}, {})) as box:
        for address in (ADMIN, f"somchai@{DOMAIN}", f"suda@{DOMAIN}"):
            assert await box.directory.user(address) is not None
        assert (await box.directory.user(f"somchai@{DOMAIN}")).name_en == "Somchai"  # type: ignore[union-attr]
    [result] = results(stick)
    assert result["status"] == "applied"
    assert result["applied"] == ["provision", "add-users:2"]
    assert result["errors"] == []
    assert result["box_id"] == identity.box_id
    assert result["bundle_id"] == bundle_id
    assert result["state"] == "provisioned"
    # The agency's certificate now: the one the technician will see on the HTTPS port.
    assert result["fingerprint"] != result["device_fingerprint"]


def tamper(stick: Path) -> None:
    path = stick / BUNDLE_DIR / "answers.toml"
    path.write_bytes(path.read_bytes().replace(b"usb.go.th", b"usb.go.tt"))


def expire(stick: Path) -> None:
    manifest = json.loads((stick / BUNDLE_DIR / MANIFEST).read_text())
    manifest["not_after"] = 1  # re-signing is what the technician cannot do
    (stick / BUNDLE_DIR / MANIFEST).write_text(json.dumps(manifest))


def malformed(stick: Path) -> None:
    (stick / BUNDLE_DIR / MANIFEST).write_bytes(b"{not json")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [(tamper, "tampered"), (expire, "tampered"), (malformed, "malformed")],
)
async def test_a_spoiled_stick_changes_nothing_and_says_why(
    tmp_path: Path, tech: Technician, spoil: object, reason: str
) -> None:
    service = new_box(tmp_path / "data", tech)
    stick = tmp_path / "stick"
    write_bundle(stick, tech)
    spoil(stick)  # type: ignore[operator]
    before = snapshot(tmp_path / "data")
    outcome = await service.handle(FolderStick(stick))
    assert outcome is not None
    assert outcome.status == reason
    assert snapshot(tmp_path / "data") == before
    [result] = results(stick)
    assert result["status"] == reason
    [error] = result["errors"]  # type: ignore[misc]
    assert error["en"]
    assert error["th"]


async def test_an_expired_foreign_or_other_boxs_bundle_changes_nothing(
    tmp_path: Path, tech: Technician
) -> None:
    service = new_box(tmp_path / "data", tech)
    before = snapshot(tmp_path / "data")
    ten_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cases = {
        # Made ten days ago for a week.
        "expired": lambda stick: write_bundle(stick, tech, now=ten_days_ago),
        "foreign": lambda stick: write_bundle(stick, technician(tmp_path / "stranger")),
        "wrong-box": lambda stick: write_bundle(stick, tech, box_ids=("a" * 32,)),
    }
    for reason, make in cases.items():
        stick = tmp_path / reason
        make(stick)
        outcome = await service.handle(FolderStick(stick))
        assert outcome is not None
        assert outcome.status == reason, outcome.errors
        assert snapshot(tmp_path / "data") == before
        assert results(stick)[0]["status"] == reason


async def test_a_bundle_is_applied_once_even_after_a_factory_reset(
    tmp_path: Path, tech: Technician
) -> None:
    data = tmp_path / "data"
    service = new_box(data, tech)
    stick = tmp_path / "stick"
    write_bundle(stick, tech)
    assert (await service.handle(FolderStick(stick))).status == "applied"  # type: ignore[union-attr]
    assert (await service.handle(FolderStick(stick))).status == "replayed"  # type: ignore[union-attr]
    factory_reset(data)
    ensure_device(data)
    assert (data / DEVICE_DIR / APPLIED_FILE).exists()
    before = snapshot(data)
    assert (await service.handle(FolderStick(stick))).status == "replayed"  # type: ignore[union-attr]
    assert read_identity(data) is None
    assert snapshot(data) == before
    assert [r["status"] for r in results(stick)] == ["applied", "replayed", "replayed"]


async def test_a_provisioned_box_takes_users_but_never_new_answers(
    tmp_path: Path, tech: Technician
) -> None:
    data = tmp_path / "data"
    service = new_box(data, tech)
    write_bundle(tmp_path / "first", tech)
    assert (await service.handle(FolderStick(tmp_path / "first"))).status == "applied"  # type: ignore[union-attr]
    identity = read_identity(data)

    # Another agency's answers: refused, the box is not provisioned again.
    other = ANSWERS_TOML.replace(b"usb.go.th", b"other.go.th")
    write_bundle(tmp_path / "again", tech, answers=other, users=USERS_CSV)
    before = snapshot(data)
    outcome = await service.handle(FolderStick(tmp_path / "again"))
    assert outcome is not None
    assert outcome.status == "already-provisioned"
    assert "never provision again" in outcome.errors[0]["en"]
    assert snapshot(data) == before
    assert read_identity(data) == identity

    # Users alone: added.
    write_bundle(tmp_path / "users", tech, answers=None, users=USERS_CSV)
    outcome = await service.handle(FolderStick(tmp_path / "users"))
    assert outcome is not None
    assert (outcome.status, outcome.applied) == ("applied", ["add-users:2"])

    # The same users again (a new bundle): refused as a whole, nothing added.
    shutil.rmtree(tmp_path / "users")
    write_bundle(tmp_path / "users", tech, answers=None, users=USERS_CSV)
    outcome = await service.handle(FolderStick(tmp_path / "users"))
    assert outcome is not None
    assert outcome.status == "users-exist"
    assert outcome.applied == []


async def test_refused_answers_leave_the_box_unprovisioned_and_may_be_fixed(
    tmp_path: Path, tech: Technician
) -> None:
    data = tmp_path / "data"
    service = new_box(data, tech)
    short = ANSWERS_TOML.replace(PASSWORD.encode(), b"short")  # too short a password
    write_bundle(tmp_path / "stick", tech, answers=short)
    outcome = await service.handle(FolderStick(tmp_path / "stick"))
    assert outcome is not None
    assert outcome.status == "refused"
    assert "10" in outcome.errors[0]["th"]
    assert read_identity(data) is None
    # Not recorded: the technician fixes the answers at the desk and comes back.
    assert not (data / DEVICE_DIR / APPLIED_FILE).exists()


async def test_a_stick_without_a_bundle_is_left_alone(tmp_path: Path, tech: Technician) -> None:
    service = new_box(tmp_path / "data", tech)
    (tmp_path / "photos").mkdir()
    assert await service.handle(FolderStick(tmp_path / "photos")) is None
    assert list((tmp_path / "photos").iterdir()) == []


async def test_a_token_enrols_after_provisioning_and_a_failed_enrolment_is_reported(
    tmp_path: Path, tech: Technician, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub is faked at its boundary (appliance.sync.enrol.enroll has its own tests
    # against a real hub): here only what the stick asks for and what the result says.
    calls: list[tuple[Path, str, str]] = []

    async def enroll(data_dir: Path, hub_url: str, token: str) -> None:
        calls.append((data_dir, hub_url, token))
        if token == "bad":
            raise EnrolError("the hub refused the token")

    monkeypatch.setattr(appliance.provisioning.usb, "enroll", enroll)
    data = tmp_path / "data"
    service = new_box(data, tech)
    answers = ANSWERS_TOML + b'\n[uplink]\nhub = "https://hub.test:8443"\n'
    for name, token in (("first", "good"), ("second", "bad")):
        stick = tmp_path / name
        payload = {ANSWERS: answers if name == "first" else b"[uplink]\nhub = \"https://hub.test:8443\"\n",
                   TOKEN: token.encode()}  # fmt: skip
        create_bundle(stick, payload=payload, key_pem=tech.key, chain_pem=tech.chain,
                      not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))  # fmt: skip
        outcome = await service.handle(FolderStick(stick))
        assert outcome is not None
        if token == "good":
            assert (outcome.status, outcome.applied) == ("applied", ["provision", "enrol"])
        else:
            # A provisioned box may rotate its enrolment; a failure is said, not hidden.
            assert (outcome.status, outcome.applied) == ("refused", [])
            assert "the hub refused the token" in outcome.errors[0]["en"]
    assert calls == [
        (data, "https://hub.test:8443", "good"),
        (data, "https://hub.test:8443", "bad"),
    ]


async def test_enrolment_installs_the_hubs_provisioning_ca_and_crl(tmp_path: Path) -> None:
    """A box enrolled with a hub takes that hub's technicians' sticks (keys/ trust)."""
    from appliance.sync.enrol import enroll
    from tests.appliance.sync.hub.hubfixture import new_edge, running_hub

    async with running_hub(tmp_path) as hub:
        hub_keys = hub.box.config.data_dir / "keys"
        tech = Technician(hub_keys, *issue_technician_certificate(hub_keys, "Somsak"))
        revoke_technician_certificate(hub_keys, 12345)  # a list with something in it
        edge = await new_edge(tmp_path, DOMAIN)
        await enroll(edge, hub.url, await hub.token(DOMAIN))
    assert (edge / "keys" / CA_CERT).read_bytes() == tech.ca_pem
    assert (
        trust_anchors(edge)[0].subject.rfc4514_string()
        == "CN=edgebox hub provisioning CA,O=edgebox"
    )
    [crl] = known_crls(edge)
    assert crl.get_revoked_certificate_by_serial_number(12345) is not None
    # ... and so a stick this hub's technician signed adds users to it.
    service = UsbProvisioning(configured(edge, {}, {}), Lifecycle(edge, ensure_device(edge)),
                              FolderSticks())  # fmt: skip
    write_bundle(tmp_path / "stick", tech, answers=None, users=USERS_CSV)
    outcome = await service.handle(FolderStick(tmp_path / "stick"))
    assert outcome is not None
    assert (outcome.status, outcome.applied) == ("applied", ["add-users:2"])


async def test_a_stick_and_the_setup_path_at_once_provision_only_once(
    tmp_path: Path, tech: Technician
) -> None:
    data = tmp_path / "data"
    service = new_box(data, tech)
    write_bundle(tmp_path / "stick", tech)
    web = ProvisioningRequest(
        domain="web.go.th", agency_name_th="ทางเว็บ", agency_name_en=None,
        admin_address="admin@web.go.th", admin_name_th="ผู้ดูแล", admin_name_en=None,
        admin_password="web-setup-2569",
    )  # fmt: skip
    answers: dict[str, str] = {}

    async def by_web() -> None:
        try:
            answers["web"] = (await provision(data, web)).domain
        except ProvisioningError as exc:
            answers["web"] = exc.message_en

    async def by_stick() -> None:
        outcome = await service.handle(FolderStick(tmp_path / "stick"))
        assert outcome is not None
        answers["stick"] = outcome.status

    async with trio.open_nursery() as nursery:
        nursery.start_soon(by_web)
        nursery.start_soon(by_stick)
    identity = read_identity(data)
    assert identity is not None
    if identity.domain == DOMAIN:
        assert answers == {"stick": "applied", "web": answers["web"]}
        assert "already provisioned" in answers["web"]
    else:
        assert answers == {"web": "web.go.th", "stick": "refused"}


class FakeAttributes:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def asstring(self, name: str) -> str:
        return self.values[name]


class FakeDevice:
    """What the service reads of a pyudev device (kernel uevent, no udevd properties)."""

    def __init__(
        self, name: str, action: str, size: str = "32768", *,
        disk: FakeDevice | None = None, removable: str = "0",
    ) -> None:  # fmt: skip
        self.sys_name = name
        self.device_node = f"/dev/{name}"
        self.action = action
        self.device_type = "partition" if disk is not None else "disk"
        self._disk = disk
        self.attributes = FakeAttributes({"size": size, "removable": removable})

    def find_parent(self, subsystem: str) -> FakeDevice | None:
        return self._disk


def test_only_allowed_devices_with_a_medium_become_sticks_once_each() -> None:
    devices = UdevBlockDevices.__new__(UdevBlockDevices)  # no netlink socket needed here
    devices._accept = accepts("removable")
    devices._seen = set()
    usb = FakeDevice("sdb", "add", removable="1")
    assert devices._stick(FakeDevice("sda", "add")) is None  # the box's own disk
    assert devices._stick(FakeDevice("sdb1", "add", disk=usb)).devnode == "/dev/sdb1"  # type: ignore[union-attr]
    assert devices._stick(FakeDevice("sdb1", "change", disk=usb)) is None  # handled already
    assert devices._stick(FakeDevice("sdb1", "remove", disk=usb)) is None
    assert devices._stick(FakeDevice("sdb1", "add", disk=usb)) is not None  # back again
    assert devices._stick(FakeDevice("sdb", "add", size="0", removable="1")) is None  # no medium

    devices._accept = accepts("loop7, sdc*")
    devices._seen = set()
    assert devices._stick(FakeDevice("loop6", "change")) is None
    assert devices._stick(FakeDevice("loop7", "change")) is not None
    assert devices._stick(FakeDevice("loop7", "change", size="0")) is None  # detached
    assert devices._stick(FakeDevice("loop7", "change")) is not None  # a new image
    assert devices._stick(FakeDevice("sdc2", "add")) is not None


class WriteProtectedStick(FolderStick):
    async def make_writable(self) -> None:
        raise subprocess.CalledProcessError(32, ["mount", "-o", "remount,rw"])


async def test_a_write_protected_stick_still_applies_and_the_result_stays_on_the_box(
    tmp_path: Path, tech: Technician
) -> None:
    data = tmp_path / "data"
    service = new_box(data, tech)
    write_bundle(tmp_path / "stick", tech)
    outcome = await service.handle(WriteProtectedStick(tmp_path / "stick"))
    assert outcome is not None
    assert outcome.status == "applied"
    assert not (tmp_path / "stick" / RESULTS_DIR).exists()
    [kept] = results(data / "log")
    assert kept["status"] == "applied"


async def test_the_panel_hears_each_step_and_the_result(tmp_path: Path, tech: Technician) -> None:
    service = new_box(tmp_path / "data", tech)
    heard: list[tuple[str, bool]] = []
    tell = service.lifecycle.stick_news

    def record(text: str, *, final: bool = False) -> None:
        heard.append((text, final))
        tell(text, final=final)

    service.lifecycle.stick_news = record  # type: ignore[method-assign]
    good, spoiled = tmp_path / "good", tmp_path / "spoiled"
    write_bundle(good, tech, users=USERS_CSV)
    write_bundle(spoiled, tech)
    tamper(spoiled)
    await service.handle(FolderStick(spoiled))
    assert heard == [
        ("USB: checking bundle", False),
        ("USB: writing result", False),
        ("USB refused: tampered; nothing changed", True),
    ]
    heard.clear()
    await service.handle(FolderStick(good))
    assert heard == [
        ("USB: checking bundle", False),
        ("USB: applying, keep stick in", False),
        ("USB: writing result", False),
        ("USB done: provision, add-users:2; remove stick", True),
    ]
    news = service.lifecycle.stick
    assert news is not None
    assert news.final
    assert news.number == 7


SYSTEM_TOML = b"""
[network]
hostname = "stick-box"
interface = "eth0"
address = "10.20.30.40/24"
gateway = "10.20.30.1"
dns = ["10.20.30.1", "1.1.1.1"]

[time]
timezone = "Asia/Bangkok"
ntp = ["ntp.go.th"]
"""


async def test_a_stick_carries_the_wizards_network_and_time_answers(
    tmp_path: Path, tech: Technician
) -> None:
    service = new_box(tmp_path / "data", tech)
    stick = tmp_path / "stick"
    write_bundle(stick, tech, answers=ANSWERS_TOML + SYSTEM_TOML)
    outcome = await service.handle(FolderStick(stick))
    assert outcome is not None
    assert (outcome.status, outcome.applied) == ("applied", ["provision", "system"])
    system = tmp_path / "data" / "system"  # system_root: never the host's /etc in tests
    network = (system / "etc/systemd/network/10-edgebox-lan.network").read_text()
    assert "Address=10.20.30.40/24\nGateway=10.20.30.1\nDNS=10.20.30.1\nDNS=1.1.1.1\n" in network
    assert (system / "etc/hostname").read_text() == "stick-box\n"
    assert "NTP=ntp.go.th" in (system / "etc/systemd/timesyncd.conf.d/10-edgebox.conf").read_text()

    # On a provisioned box a stick never changes the network: refused, nothing written.
    again = tmp_path / "again"
    write_bundle(again, tech, answers=SYSTEM_TOML.replace(b"stick-box", b"other-box"))
    outcome = await service.handle(FolderStick(again))
    assert outcome is not None
    assert outcome.status == "already-provisioned"
    assert (system / "etc/hostname").read_text() == "stick-box\n"


def test_bad_network_answers_are_refused_at_the_desk(tmp_path: Path, tech: Technician) -> None:
    bad = ANSWERS_TOML + SYSTEM_TOML.replace(b'10.20.30.1"\n', b'192.168.9.1"\n')
    with pytest.raises(BundleError) as refused:
        write_bundle(tmp_path / "stick", tech, answers=bad)
    assert refused.value.reason == "refused"
    assert "gateway" in refused.value.message_en
    assert not (tmp_path / "stick" / BUNDLE_DIR).exists()
