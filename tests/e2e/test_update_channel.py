"""The hub's update channel end to end: a real hub process, a real box process, the real
RAUC of tests/appliance/update/sandbox.py, and the admin's "install now" through the
console, as an operator and an admin do it.

- the hub operator publishes with ``edgebox hub update publish`` (checked against the
  release keyring);
- ``edgebox update install URL`` fetches it with the box's mutual-TLS identity;
- a running box hears the offer in its sync round, fetches it, waits (no maintenance
  window here) until the admin presses "install now", installs and "reboots" (the
  reboot command is a file the test watches); the hub hears the outcome; an older
  release offered next is refused, and the console and the hub's report say why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.update import outcome
from appliance.update.download import sha256_of
from appliance.update.follow import read_offer_state
from appliance.update.keyring import Keyring, ensure_keyring
from appliance.update.report import read_reports
from appliance.web.csrf import csrf_token_for
from tests.appliance.update.channelkit import random_bundle
from tests.appliance.update.sandbox import COMPATIBLE, RaucSandbox, release_of
from tests.e2e.uplink import enrol, wait_for
from tests.harness import RunningBox, edgebox, init_box, require_tool, start_box

pytestmark = pytest.mark.slow

ROOT = "root@moe.go.th"
PASSWORD = "root-pass-2026-update"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return ensure_keyring(tmp_path / "keys", "release")


@pytest.fixture
def sandbox(tmp_path: Path, keyring: Keyring) -> Iterator[RaucSandbox]:
    box = RaucSandbox.create(tmp_path / "rauc", keyring)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningBox]:
    init_box(tmp_path / "hub", "hub.go.th", {})
    running = start_box(tmp_path / "hub", extra=["--role", "hub"])
    try:
        yield running
    finally:
        assert running.stop() == 0


def new_box(tmp_path: Path, hub: RunningBox) -> Path:
    data = tmp_path / "box"
    init_box(data, "moe.go.th", {})
    edgebox("user", "add", "--data", str(data), ROOT, "--name", "root", "--box-admin",
            "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
    enrol(hub, tmp_path / "hub", data, "moe.go.th")
    return data


def publish(hub: RunningBox, bundle: Path, keyring: Keyring) -> str:
    done = edgebox("hub", "update", "publish", str(bundle), "--channel", "stable",
                   "--keyring", str(keyring.ca_cert), "--data", str(hub.data))  # fmt: skip
    assert "channel stable: edgebox" in done.stdout
    return done.stdout


def test_install_from_a_url_on_the_hub_with_the_box_identity(
    tmp_path: Path, hub: RunningBox, sandbox: RaucSandbox, keyring: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in sandbox.env.items():
        monkeypatch.setenv(name, value)
    data = new_box(tmp_path, hub)
    bundle = random_bundle(tmp_path, keyring, "2.0", size=1 << 20)
    publish(hub, bundle, keyring)
    digest = sha256_of(bundle)
    url = f"https://127.0.0.1:{hub.port('hub-sync')}/sync/v1/update/bundle/{digest}.raucb"
    args = ("--data", str(data), "--rauc-conf", str(sandbox.conf), "--boot-id", sandbox.boot_id)
    untouched = sandbox.fingerprint()

    # A promise the bytes do not keep: refused before RAUC sees it.
    wrong = edgebox("update", "install", url, "--sha256", "0" * 64,
                    "--size", str(bundle.stat().st_size), *args, check=False)  # fmt: skip
    assert wrong.returncode == 1
    assert "the hub promised" in wrong.stderr
    assert sandbox.fingerprint() == untouched

    done = edgebox("update", "install", url, "--sha256", digest,
                   "--size", str(bundle.stat().st_size), *args)  # fmt: skip
    assert "edgebox 2.0 written to slot B" in done.stdout
    assert release_of(sandbox.slot("B")) == "2.0"
    assert not (data / "update" / "incoming.part").exists()  # the space is given back


def admin_post(box: RunningBox, path: str) -> tuple[int, str]:
    """A form POST from a signed-in box admin's page (session cookie, origin, CSRF)."""
    origin = f"https://localhost:{box.port('https')}"
    signed = subprocess.run(
        [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-H",
         "Content-Type: application/json", "--data-binary",
         f'{{"address": "{ROOT}", "password": "{PASSWORD}"}}', f"{origin}/api/v1/session"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = signed.stdout.split('"token":')[1].split('"')[1]
    done = subprocess.run(
        [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-o", "-", "-w", "\n%{http_code}",
         "-H", f"Cookie: edgebox_session={token}", "-H", f"Origin: {origin}",
         "-d", f"csrf_token={csrf_token_for(token)}", f"{origin}{path}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def admin_get(box: RunningBox, path: str) -> str:
    origin = f"https://localhost:{box.port('https')}"
    signed = subprocess.run(
        [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-H",
         "Content-Type: application/json", "--data-binary",
         f'{{"address": "{ROOT}", "password": "{PASSWORD}"}}', f"{origin}/api/v1/session"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = signed.stdout.split('"token":')[1].split('"')[1]
    return subprocess.run(
        [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-H",
         f"Cookie: edgebox_session={token}", f"{origin}{path}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


def test_a_running_box_follows_the_channel_and_installs_when_the_admin_asks(
    tmp_path: Path, hub: RunningBox, sandbox: RaucSandbox, keyring: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in sandbox.env.items():
        monkeypatch.setenv(name, value)  # `edgebox update confirm` finds the sandbox's RAUC
    data = new_box(tmp_path, hub)
    rebooted = tmp_path / "rebooted"
    env = {
        **sandbox.env,
        "EDGEBOX_SYNC_INTERVAL": "2", "EDGEBOX_LINK_PROBE_INTERVAL": "1",
        "EDGEBOX_UPDATES": "1", "EDGEBOX_RAUC_CONF": str(sandbox.conf),
        "EDGEBOX_UPDATE_COMPATIBLE": COMPATIBLE, "EDGEBOX_UPDATE_WINDOW": "",
        "EDGEBOX_UPDATE_REBOOT": f"touch {rebooted}",
    }  # fmt: skip
    bundle = random_bundle(tmp_path, keyring, "2.0", size=1 << 20)
    publish(hub, bundle, keyring)
    untouched = sandbox.fingerprint()
    box = start_box(data, env=env)
    try:
        # The offer arrives in a sync round and is fetched at once, not installed.
        wait_for("the offer fetched", lambda: (s := read_offer_state(data)) and s.stage == "ready")
        page = admin_get(box, "/admin/update")
        assert 'data-testid="offer-version">2.0<' in page
        assert 'data-testid="install-now"' in page
        assert sandbox.fingerprint() == untouched
        assert not rebooted.exists()

        status, _ = admin_post(box, "/admin/update/install-now")
        assert status == 303
        wait_for("the reboot after the install", rebooted.exists)
        assert release_of(sandbox.slot("B")) == "2.0"
        pending = outcome.read_state(data).pending
        assert pending is not None
        assert pending.version == "2.0"
        box_id = (data / "device" / "identity.json").read_text().split('"box_id": "')[1][:32]
        reported = lambda: [e["event"] for e in read_reports(hub.data, box_id)]  # noqa: E731
        wait_for("the hub hears of the install", lambda: reported() == ["installed"])

        # The reboot (the sandbox plays the firmware) and the after-boot check: 2.0 runs.
        assert sandbox.boot() == "B"
        confirmed = edgebox("update", "confirm", "--data", str(data), "--rauc-conf",
                            str(sandbox.conf), "--boot-id", sandbox.boot_id, "--wait", "30",
                            "--no-reboot")  # fmt: skip
        assert confirmed.stdout.splitlines()[-1] == "commit", confirmed.stdout

        # The channel goes backwards by mistake: the box refuses and says why.
        (tmp_path / "old").mkdir()
        publish(hub, random_bundle(tmp_path / "old", keyring, "0.9", size=1 << 20), keyring)
        wait_for("the refusal", lambda: (s := read_offer_state(data)) and s.stage == "refused")
        why = "the hub offers 0.9, older than the running 2.0"
        assert why in admin_get(box, "/admin/update")
        wait_for("the hub hears of the refusal",
                 lambda: any(e["event"] == "refused" and e["reason"] == why
                             for e in read_reports(hub.data, box_id)))  # fmt: skip
    finally:
        assert box.stop() == 0
