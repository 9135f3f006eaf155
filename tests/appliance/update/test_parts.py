"""The pure parts of updates: the gate, the after-boot rule, the outcome file, the
health finding, the keyrings' certificates, system.conf and the manifest."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.health import Level
from appliance.health.snapshot import ServiceState
from appliance.sync.hub.errors import HubError
from appliance.sync.status import SyncStatus
from appliance.sync.transport import HubUnavailable, Peer
from appliance.update import outcome
from appliance.update.confirm import Action, decide
from appliance.update.download import DownloadError, download
from appliance.update.gate import GateReading, judge, passed
from appliance.update.health import check_updates
from appliance.update.keyring import KeyringError, ensure_keyring, open_keyring
from appliance.update.manifest import Manifest
from appliance.update.outcome import Pending
from appliance.update.report import UpdateReporter, read_reports, update_report_routes
from appliance.update.system_conf import box_system_conf

LISTENING = ServiceState(running=True, addresses=("127.0.0.1:2525",))


def reading(**changes: object) -> GateReading:
    values: dict[str, object] = {
        "data_dir": Path("/nonexistent"), "now": 100.0, "box_running": True,
        "services": {"smtp": LISTENING}, "schemas": {"mail": (5, 5), "directory": (3, 3)},
        "store_error": "",
    }  # fmt: skip
    values.update(changes)
    return GateReading(**values)  # type: ignore[arg-type]


def test_a_healthy_box_passes_the_gate() -> None:
    findings = judge(reading())
    assert passed(findings)
    assert {f.check for f in findings} == {"smtp", "migrations", "store"}


@pytest.mark.parametrize(
    ("changes", "check", "words"),
    [
        ({"box_running": False}, "services", "not running"),
        ({"services": {"smtp": ServiceState(running=False, addresses=("127.0.0.1:25",))}},
         "smtp", "stopped"),
        ({"services": {"smtp": ServiceState(True, 0, ("127.0.0.1:25",), ("127.0.0.1:25",))}},
         "smtp", "not answering"),
        ({"services": {}}, "services", "no listener"),
        ({"schemas": {"mail": (4, 5)}}, "migrations", "mail 4/5"),
        ({"schemas": {"mail": (6, 5), "directory": (2, 3)}}, "migrations", "directory 2/3"),
        ({"schemas": {}}, "migrations", "no database"),
        ({"open_error": "schema is version 9", "store_error": None}, "migrations", "version 9"),
        ({"store_error": "disk I/O error"}, "store", "disk I/O error"),
        ({"panel_device": "/dev/ttyACM0", "panel_present": False}, "panel", "missing"),
    ],
)  # fmt: skip
def test_each_failing_part_fails_the_gate_and_says_which(
    changes: dict[str, object], check: str, words: str
) -> None:
    findings = judge(reading(**changes))
    assert not passed(findings)
    errors = [f for f in findings if f.level is Level.ERROR]
    assert [f.check for f in errors] == [check]
    assert words in errors[0].en
    assert errors[0].th


def test_uplink_services_failing_against_a_dead_link_do_not_fail_the_gate() -> None:
    """meta-seapath#287: the gate must not need the network."""
    dead = ServiceState(running=False, restarts=40, last_error="connection refused")
    findings = judge(reading(services={"smtp": LISTENING, "chat-sync": dead, "link-monitor": dead}))
    assert passed(findings)
    assert "chat-sync" not in {f.check for f in findings}


def test_a_flapping_listener_warns_but_passes() -> None:
    flapping = ServiceState(running=True, restarts=5, addresses=("127.0.0.1:2525",))
    findings = judge(reading(services={"smtp": flapping}))
    assert passed(findings)
    assert Level.WARN in {f.level for f in findings}


PENDING = Pending("2.0", "ab" * 32, "A", "B", "boot-1", 10.0)
OK = judge(reading())
FAILING = judge(reading(box_running=False))


@pytest.mark.parametrize(
    ("pending", "booted", "boot", "findings", "action"),
    [
        (None, "A", "boot-2", OK, Action.KEEP),
        (None, "A", "boot-2", FAILING, Action.NOTHING),
        (PENDING, "A", "boot-1", OK, Action.WAIT_FOR_REBOOT),
        (PENDING, "A", "boot-1", FAILING, Action.WAIT_FOR_REBOOT),
        (PENDING, "B", "boot-2", OK, Action.COMMIT),
        (PENDING, "B", "boot-2", FAILING, Action.FALL_BACK),
        (PENDING, "A", "boot-2", OK, Action.FELL_BACK),
        (PENDING, "A", "boot-2", FAILING, Action.FELL_BACK),
    ],
)
def test_the_after_boot_rule(
    pending: Pending | None, booted: str, boot: str, findings: list[object], action: Action
) -> None:
    verdict = decide(pending, booted, boot, findings)  # type: ignore[arg-type]
    assert verdict.action is action
    if action is Action.FALL_BACK:
        assert "edgebox is not running" in verdict.reason


def test_outcome_is_kept_across_reads_and_acknowledged_up_to_an_id(tmp_path: Path) -> None:
    assert outcome.read_state(tmp_path).events == []
    outcome.record(tmp_path, "installed", "2.0", "B", 1.0, pending=PENDING)
    outcome.record(tmp_path, "rolled_back", "2.0", "B", 2.0, "gate failed", pending=None)
    state = outcome.read_state(tmp_path)
    assert state.pending is None
    assert [(e.id, e.event) for e in state.events] == [(1, "installed"), (2, "rolled_back")]
    assert [e.id for e in state.unreported()] == [1, 2]
    outcome.acknowledge(tmp_path, 1)
    outcome.acknowledge(tmp_path, 0)  # an older acknowledgement never goes backwards
    assert [e.id for e in outcome.read_state(tmp_path).unreported()] == [2]
    with pytest.raises(ValueError, match="unknown"):
        outcome.record(tmp_path, "exploded", "", "A", 3.0)


def test_an_unreadable_outcome_file_is_an_empty_history(tmp_path: Path) -> None:
    (tmp_path / "update").mkdir()
    (tmp_path / "update" / "state.json").write_text("{not json")
    assert outcome.read_state(tmp_path).events == []


def test_status_warns_after_a_rollback_or_refusal_and_informs_otherwise(tmp_path: Path) -> None:
    assert check_updates(tmp_path) == []
    outcome.record(tmp_path, "installed", "2.0", "B", 1.0, pending=PENDING)
    assert [f.level for f in check_updates(tmp_path)] == [Level.OK]
    assert "after a reboot" in check_updates(tmp_path)[0].en
    outcome.record(tmp_path, "rolled_back", "2.0", "B", 2.0, "health gate failed", pending=None)
    (finding,) = check_updates(tmp_path)
    assert finding.level is Level.WARN
    assert "health gate failed" in finding.en
    assert finding.todo_th
    outcome.record(tmp_path, "refused", "", "B", 3.0, "signature verification failed")
    assert "signature" in check_updates(tmp_path)[0].en
    outcome.record(tmp_path, "good", "2.1", "B", 4.0)
    assert [f.level for f in check_updates(tmp_path)] == [Level.OK]


def test_keyrings_are_separate_and_sign_with_code_signing_only(tmp_path: Path) -> None:
    dev = ensure_keyring(tmp_path, "development")
    rel = ensure_keyring(tmp_path, "release")
    dev_ca = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    rel_ca = x509.load_pem_x509_certificate(rel.ca_cert.read_bytes())
    assert dev_ca.public_key() != rel_ca.public_key()
    signing = x509.load_pem_x509_certificate(rel.signing_cert.read_bytes())
    assert signing.issuer == rel_ca.subject
    eku = signing.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert not signing.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert rel.signing_key.stat().st_mode & 0o077 == 0
    # Made again, the CA stays (boxes trust it); only a missing signing pair is reissued.
    rel.signing_cert.unlink()
    again = ensure_keyring(tmp_path, "release")
    assert again.ca_cert.read_bytes() == rel.ca_cert.read_bytes()
    renewed = x509.load_pem_x509_certificate(again.signing_cert.read_bytes())
    assert renewed.serial_number != signing.serial_number
    assert renewed.not_valid_after_utc <= rel_ca.not_valid_after_utc


def test_keyring_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="unknown update channel"):
        ensure_keyring(tmp_path, "staging")
    with pytest.raises(KeyringError, match=r"lacks ca\.pem, signing\.pem, signing\.key"):
        open_keyring(tmp_path, "release")


def test_signing_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    late = dt.datetime(2035, 10, 1, tzinfo=dt.UTC)
    ensure_keyring(tmp_path, "release", now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    (tmp_path / "release" / "signing.pem").unlink()
    ring = ensure_keyring(tmp_path, "release", now=late)
    ca = x509.load_pem_x509_certificate(ring.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(ring.signing_cert.read_bytes())
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    (tmp_path / "release" / "signing.pem").unlink()
    with pytest.raises(KeyringError, match="has expired"):
        ensure_keyring(tmp_path, "release", now=dt.datetime(2036, 6, 1, tzinfo=dt.UTC))


def test_the_box_system_conf_trusts_one_keyring_and_checks_the_purpose() -> None:
    text = box_system_conf("edgebox-arm64").render()
    assert "compatible=edgebox-arm64\n" in text
    assert "bootloader=grub\ngrubenv=/boot/efi/EFI/edgebox/grubenv\n" in text
    assert "custom" not in text
    assert "path=/etc/rauc/keyring.pem\ncheck-purpose=codesign\n" in text
    assert text.count("[slot.rootfs.") == 2
    assert "bootname=A" in text
    assert "bootname=B" in text
    assert "data-directory=/var/lib/edgebox/rauc\n" in text


def test_the_manifest_names_version_format_and_image() -> None:
    text = Manifest("edgebox-amd64", "2026.12.1").render()
    assert "version=2026.12.1\n" in text
    assert "format=verity\n" in text
    assert "[image.rootfs]\nfilename=rootfs.ext4\n" in text
    with pytest.raises(ValueError, match="bad version"):
        Manifest("edgebox-amd64", "1.0\n[hooks]").render()
    with pytest.raises(ValueError, match="bad bundle format"):
        Manifest("edgebox-amd64", "1.0", bundle_format="casync").render()


class FakeClock:
    def now(self) -> float:
        return 1000.0

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class LinkToHub:
    """The hub's route called in-process; down raises what `HubClient` raises on a cut."""

    def __init__(self, hub_data: Path, box_id: str) -> None:
        (self.route,) = update_report_routes(hub_data)
        self.peer = Peer(box_id=box_id, domain="a.go.th")
        self.down = False
        self.calls = 0

    async def __call__(self, path: str, body: Any) -> Any:
        assert path == self.route.path
        self.calls += 1
        if self.down:
            raise HubUnavailable("GIN down")
        return await self.route.handler(self.peer, body)


async def test_rollback_reaches_the_hub_when_the_link_is_back_and_only_once(tmp_path: Path) -> None:
    box_data, hub_data = tmp_path / "box", tmp_path / "hub"
    outcome.record(box_data, "installed", "2.0", "B", 1.0, pending=PENDING)
    outcome.record(box_data, "rolled_back", "2.0", "B", 2.0, "health gate failed", pending=None)
    hub = LinkToHub(hub_data, "box-1")
    reporter = UpdateReporter(box_data, hub, SyncStatus(box_data, FakeClock()), FakeClock())
    hub.down = True
    assert await reporter.report_round() == 0
    assert [e.id for e in outcome.read_state(box_data).unreported()] == [1, 2]
    assert read_reports(hub_data, "box-1") == []

    hub.down = False
    assert await reporter.report_round() == 2
    assert [e["event"] for e in read_reports(hub_data, "box-1")] == ["installed", "rolled_back"]
    assert read_reports(hub_data, "box-1")[1]["reason"] == "health gate failed"
    assert outcome.read_state(box_data).unreported() == []
    calls = hub.calls
    assert await reporter.report_round() == 0
    assert hub.calls == calls, "nothing new: no request"

    # An answer lost on the way back: the batch is sent again and stored once.
    outcome.record(box_data, "good", "2.1", "B", 3.0)
    outcome.acknowledge(box_data, 2)
    await reporter.report_round()
    state = outcome.read_state(box_data)
    state.reported = 2
    outcome.write_state(box_data, state)
    await reporter.report_round()
    assert [e["id"] for e in read_reports(hub_data, "box-1")] == [1, 2, 3]


async def test_the_hub_refuses_malformed_reports(tmp_path: Path) -> None:
    (route,) = update_report_routes(tmp_path)
    peer = Peer(box_id="box-1", domain="a.go.th")
    for body in ({}, {"events": "x"}, {"events": [{"id": "1"}]}):
        with pytest.raises(HubError) as refused:
            await route.handler(peer, body)
        assert refused.value.status == 400
    assert read_reports(tmp_path, "box-1") == []


async def test_only_https_urls_are_fetched(tmp_path: Path) -> None:
    context = ssl.create_default_context()
    with pytest.raises(DownloadError, match="only https"):
        await download("http://127.0.0.1:1/edgebox.raucb", tmp_path, context)
    with pytest.raises(DownloadError, match="cannot download"):
        await download("https://127.0.0.1:1/edgebox.raucb", tmp_path, context)
    # Nothing was fetched: the part is empty.
    assert (tmp_path / "update" / "incoming.part").stat().st_size == 0
