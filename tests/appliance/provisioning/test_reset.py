"""Factory reset: crypto-erase first, then the data; the identity stays.

The proof that matters: a copy of the data taken before the reset (blobs, encrypted
databases, even the wrapped data key) cannot be decrypted with anything left on the
box afterwards — while the key the box had before does decrypt the same copy, so the
check itself is shown to work.
"""

from __future__ import annotations

import hashlib
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import appliance.provisioning.reset
from appliance.box import configured, open_box, read_identity
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import BoxState, box_state
from appliance.provisioning.provision import discard_unfinished, provision
from appliance.provisioning.reset import factory_reset
from appliance.security.keys import (
    PROVISIONING_SECRET_FILE,
    WRAPPED_DATA_KEY_FILE,
    KeyMaterialError,
    load_data_key,
)
from appliance.store.blobs import BlobCorrupt, BlobStore
from tests.appliance.provisioning.test_provision import REQUEST, _assert_factory_new

MAIL = b"Subject: secret\r\n\r\nthe budget of 2570 is 1.2 million baht\r\n"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _candidate_keys(root: Path) -> list[bytes]:
    """Every key a thief could try from what is left: each file, and each 32-byte run."""
    keys = []
    for path in _files(root):
        data = path.read_bytes()
        keys.append(data)
        keys.append(hashlib.sha256(data).digest())
        keys += [data[i : i + 32] for i in range(0, max(0, len(data) - 31), 8)]
    return [k for k in keys if k]


async def test_after_a_reset_nothing_left_decrypts_the_old_data(tmp_path: Path) -> None:
    data = tmp_path / "box"
    device = ensure_device(data)
    cert = device.cert_file.read_bytes()
    code = device.setup_code()
    await provision(data, REQUEST)
    async with open_box(configured(data, {}, {})) as box:
        blob_id = box.mailstore.blobs.put(MAIL)
    old_key = load_data_key(data / "keys")
    old_secret = (data / "keys" / PROVISIONING_SECRET_FILE).read_bytes()

    # The thief's copy: everything on the disk but the secrets the reset destroys —
    # the blobs, the encrypted search and chat databases and the wrapped data key.
    stolen = tmp_path / "stolen"
    shutil.copytree(data, stolen, ignore=shutil.ignore_patterns(
        PROVISIONING_SECRET_FILE, "ca.key", "server.key"))  # fmt: skip
    assert BlobStore(stolen / "blobs", old_key).get(blob_id) == MAIL  # the check works

    factory_reset(data)
    kept = ensure_device(data)

    assert box_state(data) is BoxState.UNPROVISIONED
    assert read_identity(data) is None
    _assert_factory_new(data)
    assert not (data / "keys").exists()
    # The identity stays; the setup code is new.
    assert kept.box_id == device.box_id
    assert kept.cert_file.read_bytes() == cert
    assert kept.setup_code() != code

    left = b"".join(p.read_bytes() for p in _files(data))
    assert old_key not in left
    assert old_secret not in left
    candidates = _candidate_keys(data)
    assert len(candidates) > 20
    trial = tmp_path / "trial"
    trial.mkdir()
    shutil.copy(stolen / "keys" / WRAPPED_DATA_KEY_FILE, trial / WRAPPED_DATA_KEY_FILE)
    for candidate in candidates:
        # As the provisioning secret that unwraps the stolen wrapped key ...
        (trial / PROVISIONING_SECRET_FILE).write_bytes(candidate)
        with pytest.raises(KeyMaterialError):
            load_data_key(trial)
        # ... and as the data key itself.
        if len(candidate) == 32:
            with pytest.raises(BlobCorrupt):
                BlobStore(stolen / "blobs", candidate).get(blob_id)


async def test_reset_is_rerun_safe_and_a_blank_directory_is_fine(tmp_path: Path) -> None:
    factory_reset(tmp_path / "never-made")
    data = tmp_path / "box"
    await provision(data, REQUEST)
    factory_reset(data)
    factory_reset(data)
    _assert_factory_new(data)
    await provision(data, REQUEST)
    assert box_state(data) is BoxState.PROVISIONED


async def test_a_reset_cut_short_is_finished_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "box"
    await provision(data, REQUEST)
    calls = 0

    def shred_then_fail(path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the wrapped data key and one more secret
            raise OSError("power cut")
        original(path)

    original = appliance.provisioning.reset._shred
    monkeypatch.setattr(appliance.provisioning.reset, "_shred", shred_then_fail)
    with pytest.raises(OSError, match="power cut"):
        factory_reset(data)
    monkeypatch.undo()
    # Already unprovisioned (the identity went first), key already destroyed ...
    assert box_state(data) is BoxState.UNPROVISIONED
    assert not (data / "keys" / WRAPPED_DATA_KEY_FILE).exists()
    # ... and the next start's discard finishes the erase.
    assert discard_unfinished(data)
    _assert_factory_new(data)


def test_the_cli_asks_for_the_short_id_on_a_terminal(tmp_path: Path) -> None:
    data = tmp_path / "box"
    trio.run(provision, data, REQUEST)
    short = ensure_device(data).short_id

    def reset_typing(text: str) -> tuple[int, str]:
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "factory-reset", "--data", str(data)],
                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                cwd=Path(__file__).resolve().parents[3],
            )  # fmt: skip
            os.write(controller, text.encode() + b"\n")
            out, _ = process.communicate(timeout=60)
        finally:
            os.close(controller)
            os.close(terminal)
        return process.returncode, out

    code, out = reset_typing("not-it")
    assert code == 1
    assert "not confirmed; nothing was changed" in out
    assert box_state(data) is BoxState.PROVISIONED
    code, out = reset_typing(short)
    assert code == 0, out
    assert f"Type {short} to go on" in out
    assert box_state(data) is BoxState.UNPROVISIONED


def test_the_cli_never_makes_a_box_of_a_mistyped_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import main

    missing = tmp_path / "no-such-box"
    assert main(["factory-reset", "--data", str(missing), "--yes"]) == 1
    assert "not an edgebox data directory" in capsys.readouterr().err
    assert not missing.exists()
