"""Signed signature sets: making, checking and installing them; the hub's routes and the
box's round against them (with a hub call that runs the real route handlers in-process)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import Config, load_config
from appliance.protection.engines import engine_dir
from appliance.protection.scanner import ClamdClient
from appliance.protection.signatures.commands import _sign_into
from appliance.protection.signatures.manifest import (
    INSTALLED,
    SignatureSetError,
    Targets,
    changed_files,
    check_file,
    collect_mirror,
    install_set,
    make_manifest,
    parse_manifest,
    read_installed,
    verify_set,
)
from appliance.protection.signatures.sync import (
    CHUNK,
    MIRROR_DIR,
    RELOAD_REQUEST,
    SignatureUpdater,
    read_state,
    reload_engines,
    signature_routes,
    targets,
)
from appliance.security.provisioning_ca import (
    CA_CERT,
    ensure_provisioning_ca,
    issue_technician_certificate,
    revoke_technician_certificate,
)
from appliance.sync.clock import SystemClock
from appliance.sync.hub.errors import HubError
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubRefused, Peer

#: The certificates are issued at the real time; the sets are checked then.
NOW = dt.datetime.now(dt.UTC)
FILES = {
    "clamd/edgebox-test.ndb": b"Edgebox-Test-1:0:*:6162636465666768\n",
    "rspamd/multimap.conf": b"# no maps yet\n",
}


@pytest.fixture
def hub_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "hub" / "keys"
    keys.mkdir(parents=True)
    ensure_provisioning_ca(keys)
    return keys


def signed(
    keys: Path, files: dict[str, bytes] = FILES, now: dt.datetime = NOW
) -> tuple[bytes, bytes, bytes]:
    key, chain = issue_technician_certificate(keys, "mirror", 365)
    raw, signature = make_manifest(files, key, now=now)
    return raw, signature, chain


def anchors(keys: Path) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate((keys / CA_CERT).read_bytes())]


def test_a_signed_set_verifies_and_names_its_files(hub_keys: Path) -> None:
    raw, signature, chain = signed(hub_keys)
    got = verify_set(raw, signature, chain, anchors=anchors(hub_keys), crls=[], now=NOW)
    assert set(got.files) == set(FILES)
    for name, data in FILES.items():
        check_file(got, name, data)


@pytest.mark.parametrize("flip", ["manifest", "signature"])
def test_a_changed_manifest_or_signature_is_tampered(hub_keys: Path, flip: str) -> None:
    raw, signature, chain = signed(hub_keys)
    if flip == "manifest":
        raw = raw.replace(b'"size": 14', b'"size": 15')
    else:
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    with pytest.raises(SignatureSetError) as refused:
        verify_set(raw, signature, chain, anchors=anchors(hub_keys), crls=[], now=NOW)
    assert refused.value.reason in ("tampered", "malformed")
    assert refused.value.message_th


def test_a_set_signed_under_another_ca_is_foreign(tmp_path: Path, hub_keys: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    raw, signature, chain = signed(other)
    with pytest.raises(SignatureSetError) as refused:
        verify_set(raw, signature, chain, anchors=anchors(hub_keys), crls=[], now=NOW)
    assert refused.value.reason == "foreign"


def test_a_revoked_signer_is_refused(hub_keys: Path) -> None:
    raw, signature, chain = signed(hub_keys)
    serial = x509.load_pem_x509_certificates(chain)[0].serial_number
    crl = x509.load_pem_x509_crl(revoke_technician_certificate(hub_keys, serial))
    with pytest.raises(SignatureSetError) as refused:
        verify_set(raw, signature, chain, anchors=anchors(hub_keys), crls=[crl], now=NOW)
    assert refused.value.reason == "revoked"


def test_a_set_not_newer_than_the_installed_one_is_old(hub_keys: Path) -> None:
    newer = verify_set(*signed(hub_keys), anchors=anchors(hub_keys), crls=[], now=NOW)
    older = signed(hub_keys, now=NOW - dt.timedelta(days=1))
    with pytest.raises(SignatureSetError) as refused:
        verify_set(*older, anchors=anchors(hub_keys), crls=[], now=NOW, installed=newer)
    assert refused.value.reason == "old"


def test_only_changed_files_are_fetched(hub_keys: Path) -> None:
    first = parse_manifest(signed(hub_keys)[0])
    second = parse_manifest(
        signed(hub_keys, {**FILES, "clamd/edgebox-test.ndb": b"Other:0:*:6162\n"})[0]
    )
    assert changed_files(first, None) == sorted(FILES)
    assert changed_files(second, first) == ["clamd/edgebox-test.ndb"]


def test_install_writes_nothing_when_one_file_is_bad(tmp_path: Path, hub_keys: Path) -> None:
    got = parse_manifest(signed(hub_keys)[0])
    targets = Targets(tmp_path / "clamav", tmp_path / "local.d")
    bad = {**FILES, "rspamd/multimap.conf": b"# changed\n"}
    with pytest.raises(SignatureSetError):
        install_set(tmp_path, got, bad, targets)
    assert not (tmp_path / "clamav").exists()
    assert read_installed(tmp_path) is None
    assert install_set(tmp_path, got, FILES, targets) == sorted(FILES)
    assert (tmp_path / "clamav" / "edgebox-test.ndb").read_bytes() == FILES[
        "clamd/edgebox-test.ndb"
    ]
    assert (tmp_path / "local.d" / "multimap.conf").exists()
    assert read_installed(tmp_path) == got


def test_a_mirror_folder_publishes_only_signature_files(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "rspamd").mkdir(parents=True)
    (mirror / "daily.cld").write_bytes(b"x")
    (mirror / "freshclam.dat").write_bytes(b"state")  # freshclam's own state: not a database
    (mirror / "notes.txt").write_bytes(b"not rspamd's")
    (mirror / "rspamd" / "local_bl.map").write_bytes(b"example.org\n")
    assert list(collect_mirror(mirror)) == ["clamd/daily.cld", "rspamd/local_bl.map"]


@given(st.binary(max_size=600))
def test_garbage_manifests_raise_only_the_set_error(data: bytes) -> None:
    try:
        parse_manifest(data)
    except SignatureSetError:
        pass


_ODD = st.sampled_from([None, True, -1, 0, 2**41, "", "x" * 32, "0" * 32, "a" * 64, [], {}])
_FILE = st.fixed_dictionaries({}, optional={"sha256": _ODD, "size": _ODD})
_NAMES = st.sampled_from(["clamd/a.ndb", "rspamd/x.map", "../x", "clamd/", "other/a", ""])


_BODY = st.fixed_dictionaries(
    {},
    optional={
        "set_id": _ODD,
        "created_at": _ODD,
        "files": _ODD | st.dictionaries(_NAMES, _FILE | _ODD, max_size=3),
    },
)


@given(_BODY)
def test_odd_json_manifests_raise_only_the_set_error(body: dict[str, object]) -> None:
    try:
        parse_manifest(json.dumps({"format": "edgebox-signatures/1", **body}).encode())
    except SignatureSetError:
        pass


# --- the hub's routes and the box's round ---------------------------------------------------


def box_config(root: Path) -> Config:
    """A box that trusts *root*/hub's provisioning CA (as enrolment installs it)."""
    data = root / "box"
    (data / "keys").mkdir(parents=True, exist_ok=True)
    (data / "keys" / CA_CERT).write_bytes((root / "hub" / "keys" / CA_CERT).read_bytes())
    return dataclasses.replace(
        load_config(data), protection=True, protection_clamd_database=str(root / "clamav")
    )


class InProcessHub:
    """The hub's signature routes called directly: what `HubClient` does, minus TLS."""

    def __init__(self, hub_data: Path) -> None:
        self.routes = {route.path: route.handler for route in signature_routes(hub_data)}
        self.calls: list[tuple[str, JSON]] = []

    async def __call__(self, path: str, body: JSON) -> JSON:
        self.calls.append((path, body))
        try:
            return await self.routes[path](Peer("box-1", "moe.go.th"), body)
        except HubError as exc:
            raise HubRefused(exc.status, exc.code, exc.message) from None


def publish(root: Path, files: dict[str, bytes]) -> None:
    key, chain = issue_technician_certificate(root / "hub" / "keys", "mirror", 365)
    _sign_into(root / "hub" / MIRROR_DIR, files, key, chain)


def updater(config: Config, hub: InProcessHub) -> SignatureUpdater:
    clock = SystemClock()
    # No clamd here: its reload fails and is reported; the files are installed anyway
    # (the real RELOAD is in tests/e2e/test_signatures.py).
    clamd = ClamdClient(config.data_dir / "no-clamd.sock", timeout=1)
    return SignatureUpdater(config, clamd, hub, SyncStatus(config.data_dir, clock), clock, pause=0)


async def test_a_round_installs_then_is_current_then_fetches_only_changes(
    tmp_path: Path, hub_keys: Path
) -> None:
    config = box_config(tmp_path)
    hub = InProcessHub(tmp_path / "hub")
    service = updater(config, hub)
    assert await service.update_round() == "none"
    big = bytes(range(256)) * (CHUNK // 256) + b"tail"  # two chunks
    publish(tmp_path, {**FILES, "clamd/main.cvd": big})
    assert await service.update_round() == "installed"
    assert (tmp_path / "clamav" / "main.cvd").read_bytes() == big
    assert [c[1]["offset"] for c in hub.calls if c[1].get("name") == "clamd/main.cvd"] == [
        0, CHUNK,
    ]  # fmt: skip
    state = read_state(config.data_dir)
    assert state is not None
    assert state["result"] == "installed"
    assert "clamd" in state["error"]  # the reload that could not reach clamd is said
    hub.calls.clear()
    assert await service.update_round() == "current"
    assert [path for path, _ in hub.calls] == ["/sync/v1/signatures/manifest"]
    await trio.sleep(1.1)  # created_at has a resolution of one second
    publish(tmp_path, {**FILES, "clamd/main.cvd": big, "clamd/edgebox-test.ndb": b"New:0:*:61\n"})
    hub.calls.clear()
    assert await service.update_round() == "installed"
    fetched = {c[1]["name"] for c in hub.calls if "name" in c[1]}
    assert fetched == {"clamd/edgebox-test.ndb"}


async def test_a_tampered_file_on_the_hub_changes_nothing_and_says_why(
    tmp_path: Path, hub_keys: Path
) -> None:
    config = box_config(tmp_path)
    publish(tmp_path, FILES)
    (tmp_path / "hub" / MIRROR_DIR / "clamd" / "edgebox-test.ndb").write_bytes(
        b"Evil:0:*:00000000\n"
    )
    service = updater(config, InProcessHub(tmp_path / "hub"))
    assert await service.update_round() == "refused"
    assert not (tmp_path / "clamav").exists()
    assert not (config.data_dir / INSTALLED).exists()
    state = read_state(config.data_dir)
    assert state is not None
    assert state["reason"] == "tampered"
    assert "edgebox-test.ndb" in state["error"]


async def test_a_set_from_an_untrusted_signer_is_refused(tmp_path: Path, hub_keys: Path) -> None:
    config = box_config(tmp_path)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    key, chain = issue_technician_certificate(stranger, "stranger", 30)
    _sign_into(tmp_path / "hub" / MIRROR_DIR, FILES, key, chain)
    service = updater(config, InProcessHub(tmp_path / "hub"))
    assert await service.update_round() == "refused"
    state = read_state(config.data_dir)
    assert state is not None
    assert state["reason"] == "foreign"
    assert not (tmp_path / "clamav").exists()


async def test_the_file_route_refuses_names_outside_the_set(tmp_path: Path, hub_keys: Path) -> None:
    publish(tmp_path, FILES)
    hub = InProcessHub(tmp_path / "hub")
    answer = await hub("/sync/v1/signatures/manifest", {})
    assert isinstance(answer, dict)
    set_id = parse_manifest(base64.b64decode(str(answer["manifest"]))).set_id
    for name in ("../keys/provisioning-ca.key.sealed", "clamd/../../keys/x", "clamd/missing.ndb"):
        with pytest.raises(HubRefused):
            await hub("/sync/v1/signatures/file", {"set_id": set_id, "name": name, "offset": 0})
    with pytest.raises(HubRefused) as stale:
        await hub("/sync/v1/signatures/file",
                  {"set_id": "0" * 32, "name": "clamd/edgebox-test.ndb", "offset": 0})  # fmt: skip
    assert stale.value.code == "stale_set"


async def test_a_box_enrolled_before_the_hub_had_a_ca_gets_it_over_the_sync_link(
    tmp_path: Path, hub_keys: Path
) -> None:
    config = box_config(tmp_path)
    (config.data_dir / "keys" / CA_CERT).unlink()
    publish(tmp_path, FILES)
    assert await updater(config, InProcessHub(tmp_path / "hub")).update_round() == "installed"
    assert (config.data_dir / "keys" / CA_CERT).read_bytes() == (hub_keys / CA_CERT).read_bytes()


async def test_rspamd_is_told_to_reload_with_a_hangup_to_its_main_process(
    tmp_path: Path, hub_keys: Path
) -> None:
    config = box_config(tmp_path)
    marker = tmp_path / "hangup"
    # A stand-in for rspamd's main process: it notes SIGHUP (rspamd(8): reload) and ends.
    script = (
        "import signal, sys, time\n"
        "def hup(*_): open(sys.argv[1], 'w').write('reload'); sys.exit(0)\n"
        "signal.signal(signal.SIGHUP, hup)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert b"ready" in await process.stdout.receive_some(64)
        run = engine_dir(config)
        await trio.Path(run).mkdir(parents=True, exist_ok=True)
        await trio.Path(run / "rspamd.pid").write_text(f"{process.pid}\n")
        failed = await reload_engines(config, updater(config, InProcessHub(tmp_path)).clamd,
                                      {"rspamd"})  # fmt: skip
        assert failed == []
        with trio.fail_after(30):
            assert await process.wait() == 0
        assert await trio.Path(marker).read_text() == "reload"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_on_the_image_rspamd_files_go_to_the_data_partition_and_systemd_reloads(
    tmp_path: Path,
) -> None:
    # The image's rspamd is systemd's, as _rspamd, under a read-only /etc: the set's
    # files land in the folder /etc/rspamd/local.d includes, and edgebox asks for the
    # reload with a request file a path unit watches (no signal to another user).
    config = dataclasses.replace(load_config(tmp_path / "data"), protection_engines="system")
    local = tmp_path / "var-lib-rspamd" / "local.d"
    local.mkdir(parents=True)
    where = targets(config, system_local=local)
    assert where.rspamd == local
    assert where.clamd == Path(config.protection_clamd_database)
    clamd = ClamdClient(tmp_path / "no-clamd.sock", timeout=1)
    assert await reload_engines(config, clamd, {"rspamd"}, system_local=local) == []
    first = (local / RELOAD_REQUEST).read_text()
    assert float(first) > 0
    # Each installed set asks again (the path unit sees the file change).
    await trio.sleep(0.01)
    assert await reload_engines(config, clamd, {"rspamd"}, system_local=local) == []
    assert (local / RELOAD_REQUEST).read_text() != first
    # A folder edgebox cannot write: said, not raised (the set is installed anyway).
    (tmp_path / "not-a-folder").write_text("")
    failed = await reload_engines(config, clamd, {"rspamd"},
                                  system_local=tmp_path / "not-a-folder")  # fmt: skip
    assert failed
    assert failed[0].startswith("rspamd: cannot ask for a reload")
