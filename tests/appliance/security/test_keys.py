"""Tests for appliance.security.keys: creating, unwrapping and destroying box keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.security import keys
from appliance.security.keys import (
    DATA_KEY_SIZE,
    PROVISIONING_SECRET_FILE,
    SECRET_SIZE,
    WRAPPED_DATA_KEY_FILE,
    WRAPPED_SIZE,
    KeyMaterialError,
    create_box_keys,
    destroy_data_key,
    load_data_key,
)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    # A directory that does not exist yet, one level below another missing one, as on
    # a box whose data partition was just formatted.
    return tmp_path / "var" / "keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_then_load_gives_a_32_byte_key(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    key = load_data_key(keys_dir)
    assert len(key) == DATA_KEY_SIZE
    assert key == load_data_key(keys_dir)
    assert len((keys_dir / PROVISIONING_SECRET_FILE).read_bytes()) == 32
    assert len((keys_dir / WRAPPED_DATA_KEY_FILE).read_bytes()) == WRAPPED_SIZE


def test_data_key_is_not_stored_in_the_clear(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    key = load_data_key(keys_dir)
    for path in keys_dir.iterdir():
        assert key not in path.read_bytes(), path


def test_file_and_directory_modes(keys_dir: Path) -> None:
    # An odd umask that strips the owner's write bit: the modes must still come out
    # exactly 0700/0600, because they are set explicitly rather than left to the umask.
    keys_dir.parent.mkdir(parents=True)
    old_umask = os.umask(0o277)
    try:
        create_box_keys(keys_dir)
    finally:
        os.umask(old_umask)
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / PROVISIONING_SECRET_FILE) == 0o600
    assert mode(keys_dir / WRAPPED_DATA_KEY_FILE) == 0o600


def test_no_temp_files_left_behind(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    assert sorted(p.name for p in keys_dir.iterdir()) == sorted(
        [PROVISIONING_SECRET_FILE, WRAPPED_DATA_KEY_FILE]
    )


def test_create_is_idempotent_and_never_rewrites(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    key = load_data_key(keys_dir)
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in keys_dir.iterdir()}
    create_box_keys(keys_dir)
    after = {p.name: (p.read_bytes(), p.stat().st_ino) for p in keys_dir.iterdir()}
    assert after == before
    assert load_data_key(keys_dir) == key


def test_two_boxes_get_different_keys(tmp_path: Path) -> None:
    create_box_keys(tmp_path / "a")
    create_box_keys(tmp_path / "b")
    assert load_data_key(tmp_path / "a") != load_data_key(tmp_path / "b")
    a_secret = (tmp_path / "a" / PROVISIONING_SECRET_FILE).read_bytes()
    assert a_secret != (tmp_path / "b" / PROVISIONING_SECRET_FILE).read_bytes()


def test_existing_secret_is_used_to_wrap_a_new_data_key(keys_dir: Path) -> None:
    # The provisioning flow will put the secret in place first; create_box_keys must
    # then wrap a fresh data key under that secret and leave the secret alone.
    keys_dir.mkdir(parents=True)
    secret = bytes(range(32))
    (keys_dir / PROVISIONING_SECRET_FILE).write_bytes(secret)
    create_box_keys(keys_dir)
    assert (keys_dir / PROVISIONING_SECRET_FILE).read_bytes() == secret
    key = load_data_key(keys_dir)
    # The same wrapped file under another secret does not open: it really is bound to it.
    (keys_dir / PROVISIONING_SECRET_FILE).write_bytes(bytes(32))
    with pytest.raises(KeyMaterialError):
        load_data_key(keys_dir)
    (keys_dir / PROVISIONING_SECRET_FILE).write_bytes(secret)
    assert load_data_key(keys_dir) == key


def test_wrong_secret_is_reported(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    (keys_dir / PROVISIONING_SECRET_FILE).write_bytes(os.urandom(32))
    with pytest.raises(KeyMaterialError, match="wrong provisioning secret or corrupted file"):
        load_data_key(keys_dir)


@pytest.mark.parametrize("offset", [1, 5, 13, 30, WRAPPED_SIZE - 1])
def test_flipped_byte_in_wrapped_key_is_reported(keys_dir: Path, offset: int) -> None:
    create_box_keys(keys_dir)
    path = keys_dir / WRAPPED_DATA_KEY_FILE
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KeyMaterialError, match="cannot be unwrapped"):
        load_data_key(keys_dir)


@pytest.mark.parametrize("length", [0, 1, 13, WRAPPED_SIZE - 1])
def test_truncated_wrapped_key_is_reported(keys_dir: Path, length: int) -> None:
    create_box_keys(keys_dir)
    path = keys_dir / WRAPPED_DATA_KEY_FILE
    path.write_bytes(path.read_bytes()[:length])
    with pytest.raises(KeyMaterialError, match="truncated or corrupted"):
        load_data_key(keys_dir)


def test_unknown_wrap_version_is_reported(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    path = keys_dir / WRAPPED_DATA_KEY_FILE
    path.write_bytes(b"\x02" + path.read_bytes()[1:])
    with pytest.raises(KeyMaterialError, match="version 2"):
        load_data_key(keys_dir)


def test_truncated_secret_is_reported(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    path = keys_dir / PROVISIONING_SECRET_FILE
    path.write_bytes(path.read_bytes()[:31])
    with pytest.raises(KeyMaterialError, match=r"provisioning secret .* is corrupted"):
        load_data_key(keys_dir)


def test_missing_files_are_reported(keys_dir: Path) -> None:
    with pytest.raises(KeyMaterialError, match=r"provisioning secret .* is missing"):
        load_data_key(keys_dir)
    create_box_keys(keys_dir)
    (keys_dir / WRAPPED_DATA_KEY_FILE).unlink()
    with pytest.raises(KeyMaterialError, match=r"data key .* is missing"):
        load_data_key(keys_dir)


def test_missing_secret_with_existing_wrapped_key_is_refused(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    wrapped = (keys_dir / WRAPPED_DATA_KEY_FILE).read_bytes()
    (keys_dir / PROVISIONING_SECRET_FILE).unlink()
    with pytest.raises(KeyMaterialError, match="refusing to create a new secret"):
        create_box_keys(keys_dir)
    assert not (keys_dir / PROVISIONING_SECRET_FILE).exists()
    assert (keys_dir / WRAPPED_DATA_KEY_FILE).read_bytes() == wrapped


def test_destroy_makes_the_key_unloadable(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    load_data_key(keys_dir)
    destroy_data_key(keys_dir)
    assert not (keys_dir / WRAPPED_DATA_KEY_FILE).exists()
    with pytest.raises(KeyMaterialError, match="factory-reset"):
        load_data_key(keys_dir)
    destroy_data_key(keys_dir)  # a second reset (e.g. after an interrupted one) is fine


def test_destroy_overwrites_with_zeros_before_unlinking(keys_dir: Path) -> None:
    # A second hard link keeps the inode alive after the unlink, so we can see what
    # destroy_data_key left in the file's blocks.
    create_box_keys(keys_dir)
    witness = keys_dir.parent / "witness"
    os.link(keys_dir / WRAPPED_DATA_KEY_FILE, witness)
    destroy_data_key(keys_dir)
    assert witness.read_bytes() == bytes(WRAPPED_SIZE)


def test_destroy_also_removes_leftover_temp_copies(keys_dir: Path) -> None:
    # A crash inside create_box_keys can leave a temp copy of a wrapped key; factory
    # reset must not let it survive.
    create_box_keys(keys_dir)
    leftover = keys_dir / f".{WRAPPED_DATA_KEY_FILE}.0123456789abcdef.tmp"
    leftover.write_bytes((keys_dir / WRAPPED_DATA_KEY_FILE).read_bytes())
    destroy_data_key(keys_dir)
    assert not leftover.exists()
    assert (keys_dir / PROVISIONING_SECRET_FILE).exists()


def test_destroy_on_missing_directory_is_a_no_op(tmp_path: Path) -> None:
    destroy_data_key(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_create_after_destroy_gives_a_new_key(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    old = load_data_key(keys_dir)
    destroy_data_key(keys_dir)
    create_box_keys(keys_dir)
    assert load_data_key(keys_dir) != old


def test_failed_publish_leaves_no_partial_file(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_link(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(OSError, match="No space left"):
        create_box_keys(keys_dir)
    assert list(keys_dir.iterdir()) == []


def test_lost_creation_race_keeps_the_existing_file(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate another process publishing the secret between our existence check and
    # our publish: its file must survive and our data key must be wrapped under it.
    theirs = os.urandom(32)
    real_link = os.link

    def racing_link(src: str | Path, dst: str | Path) -> None:
        dst = Path(dst)
        if dst.name == PROVISIONING_SECRET_FILE and not dst.exists():
            dst.write_bytes(theirs)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    create_box_keys(keys_dir)
    assert (keys_dir / PROVISIONING_SECRET_FILE).read_bytes() == theirs
    assert len(load_data_key(keys_dir)) == DATA_KEY_SIZE
    assert not [p for p in keys_dir.iterdir() if p.name.endswith(".tmp")]


# --- sealing other private keys (issue 16: the TLS CA key) ---------------------------


def test_seal_round_trip_and_purpose_binding(keys_dir: Path) -> None:
    create_box_keys(keys_dir)
    sealed = keys.seal(keys_dir, "tls-ca-key", b"private key bytes")
    assert b"private key bytes" not in sealed
    assert keys.unseal(keys_dir, "tls-ca-key", sealed) == b"private key bytes"
    # Another purpose, or another box's secret, cannot open it.
    with pytest.raises(KeyMaterialError, match="cannot be opened"):
        keys.unseal(keys_dir, "dkim-key", sealed)
    (keys_dir / PROVISIONING_SECRET_FILE).write_bytes(os.urandom(SECRET_SIZE))
    with pytest.raises(KeyMaterialError, match="cannot be opened"):
        keys.unseal(keys_dir, "tls-ca-key", sealed)


def test_no_new_secret_over_sealed_keys(keys_dir: Path) -> None:
    keys.ensure_provisioning_secret(keys_dir)
    (keys_dir / "ca.key.sealed").write_bytes(keys.seal(keys_dir, "tls-ca-key", b"k"))
    (keys_dir / PROVISIONING_SECRET_FILE).unlink()
    with pytest.raises(KeyMaterialError, match=r"ca\.key\.sealed"):
        keys.ensure_provisioning_secret(keys_dir)
    assert not (keys_dir / PROVISIONING_SECRET_FILE).exists()
