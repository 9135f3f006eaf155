"""Tests for appliance.store.blobs: round trips, durability layout, tampering, ids."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store import blobs as blobs_module
from appliance.store.blobs import (
    CHUNK_SIZE,
    HEADER_SIZE,
    TAG_SIZE,
    BlobCorrupt,
    BlobMissing,
    BlobStore,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", KEY)


def blob_path(store: BlobStore, blob_id: str) -> Path:
    return store.root / blob_id[:2] / blob_id[2:4] / blob_id


def chunk_offset(index: int) -> int:
    return HEADER_SIZE + index * (CHUNK_SIZE + TAG_SIZE)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [0, 1, 15, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 36 * MiB + 12345],
)
def test_round_trip(store: BlobStore, length: int) -> None:
    content = os.urandom(length)
    blob_id = store.put(content)
    assert store.get(blob_id) == content
    assert store.size(blob_id) == length
    assert store.exists(blob_id)
    assert b"".join(store.iter_plaintext(blob_id)) == content


def test_stored_size_matches_the_format(store: BlobStore) -> None:
    # header + plaintext + one tag per chunk: a 1 MiB + 1 blob has two chunks.
    blob_id = store.put(os.urandom(CHUNK_SIZE + 1))
    assert blob_path(store, blob_id).stat().st_size == HEADER_SIZE + CHUNK_SIZE + 1 + 2 * TAG_SIZE
    empty_id = store.put(b"")
    assert blob_path(store, empty_id).stat().st_size == HEADER_SIZE + TAG_SIZE


@given(content=st.binary(max_size=4096))
@settings(deadline=None, max_examples=50)
def test_any_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    store = BlobStore(tmp_path_factory.getbasetemp() / "hypothesis-blobs", KEY)
    blob_id = store.put(content)
    assert store.get(blob_id) == content
    assert store.size(blob_id) == len(content)


def test_iter_plaintext_respects_chunk_size(store: BlobStore) -> None:
    content = os.urandom(2 * CHUNK_SIZE + 777)
    blob_id = store.put(content)
    pieces = list(store.iter_plaintext(blob_id, chunk_size=100_000))
    assert all(0 < len(p) <= 100_000 for p in pieces)
    assert b"".join(pieces) == content
    default = list(store.iter_plaintext(blob_id))
    assert [len(p) for p in default] == [CHUNK_SIZE, CHUNK_SIZE, 777]


def test_iter_plaintext_rejects_bad_chunk_size(store: BlobStore) -> None:
    blob_id = store.put(b"x")
    with pytest.raises(ValueError, match="chunk_size"):
        store.iter_plaintext(blob_id, chunk_size=0)


def test_iter_plaintext_of_empty_blob_yields_nothing(store: BlobStore) -> None:
    assert list(store.iter_plaintext(store.put(b""))) == []


def test_concurrent_puts_from_threads(store: BlobStore) -> None:
    # Async callers run puts in worker threads; racing puts of the same content must
    # all succeed and leave one readable file.
    shared = os.urandom(CHUNK_SIZE + 3)
    distinct = [os.urandom(1000) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        shared_ids = list(pool.map(store.put, [shared] * 16))
        distinct_ids = list(pool.map(store.put, distinct))
    assert len(set(shared_ids)) == 1
    assert store.get(shared_ids[0]) == shared
    assert [store.get(i) for i in distinct_ids] == distinct
    assert sorted(store.iter_ids()) == sorted({shared_ids[0], *distinct_ids})
    assert list((store.root / "tmp").iterdir()) == []


# -- ids ---------------------------------------------------------------------------


def test_ids_are_content_addressed_and_keyed(tmp_path: Path) -> None:
    a = BlobStore(tmp_path / "a", KEY)
    again = BlobStore(tmp_path / "a", KEY)  # e.g. after a restart
    other = BlobStore(tmp_path / "b", OTHER_KEY)
    content = b"Subject: hello\r\n\r\nbody\r\n"
    blob_id = a.blob_id(content)
    assert len(blob_id) == 64
    assert blob_id == blob_id.lower()
    int(blob_id, 16)
    assert again.blob_id(content) == blob_id
    assert a.blob_id(content + b"!") != blob_id
    assert other.blob_id(content) != blob_id
    # The id is not a plain hash someone with the disk could match against a guess.
    assert blob_id != hashlib.sha256(content).hexdigest()


def test_put_is_idempotent_and_writes_once(store: BlobStore) -> None:
    content = os.urandom(3000)
    first = store.put(content)
    path = blob_path(store, first)
    before = path.stat()
    on_disk = path.read_bytes()
    second = store.put(content)
    after = path.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert path.read_bytes() == on_disk
    assert len(files_under(store.root)) == 1


def test_same_content_for_five_users_is_stored_once(store: BlobStore) -> None:
    message = b"From: a@example.go.th\r\n\r\n" + os.urandom(10_000)
    ids = {store.put(message) for _ in range(5)}
    assert len(ids) == 1
    assert list(store.iter_ids()) == list(ids)


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "g" * 64,
        "a" * 63 + "\n",
        "a" * 64 + "\n",
        "../" + "a" * 61,
        "aa/aa/" + "a" * 58,
        "/etc/passwd",
        "٠" * 64,  # Arabic-Indic zero: a Unicode digit, not an ASCII hex digit
        "a" * 63 + "\x00",
    ],
)
def test_invalid_ids_are_rejected_everywhere(store: BlobStore, bad_id: str) -> None:
    calls = [
        store.get,
        store.exists,
        store.delete,
        store.size,
        store.iter_plaintext,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid blob id"):
            call(bad_id)


def test_non_string_id_is_rejected(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="invalid blob id"):
        store.get(b"a" * 64)  # type: ignore[arg-type]


# -- encryption at rest ------------------------------------------------------------


def test_no_plaintext_on_disk(store: BlobStore) -> None:
    marker = b"EDGEBOX-MARKER-7f3c1a9e-do-not-store-in-clear"
    thai = "หนังสือราชการลับ ห้ามเผยแพร่".encode()
    content = (marker + b" " + thai + b"\r\n") * 50_000  # several chunks
    blob_id = store.put(content)
    store.put(marker)
    store.put(thai)
    files = files_under(store.root)
    assert len(files) == 3
    plain_hash = hashlib.sha256(content).hexdigest()
    for path in files:
        data = path.read_bytes()
        assert marker not in data, path
        assert thai not in data, path
        assert plain_hash.encode() not in data, path
        assert plain_hash not in str(path)
    assert store.get(blob_id) == content


def test_file_and_directory_modes(tmp_path: Path) -> None:
    # With an odd umask (owner write stripped) the modes are still exactly 0700/0600.
    old_umask = os.umask(0o277)
    try:
        store = BlobStore(tmp_path / "blobs", KEY)
        blob_id = store.put(b"secret memo")
    finally:
        os.umask(old_umask)
    path = blob_path(store, blob_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in [store.root, store.root / "tmp", path.parent, path.parent.parent]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_wrong_data_key_cannot_read(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blob_id = BlobStore(root, KEY).put(b"confidential")
    with pytest.raises(BlobCorrupt):
        BlobStore(root, OTHER_KEY).get(blob_id)


def test_data_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BlobStore(tmp_path / "blobs", b"short")


# -- tampering ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset",
    [
        0,  # magic
        4,  # version
        5,  # plaintext length
        13,  # nonce prefix
        HEADER_SIZE,  # first ciphertext byte
        HEADER_SIZE + CHUNK_SIZE + 3,  # inside chunk 0's tag
        chunk_offset(1) + 10,  # inside chunk 1
        -1,  # last tag byte
    ],
)
def test_flipped_byte_is_detected(store: BlobStore, offset: int) -> None:
    blob_id = store.put(os.urandom(CHUNK_SIZE + 500))
    path = blob_path(store, blob_id)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt):
        store.get(blob_id)


@pytest.mark.parametrize("keep", [0, 3, HEADER_SIZE, HEADER_SIZE + 100, chunk_offset(1), -1])
def test_truncation_is_detected(store: BlobStore, keep: int) -> None:
    blob_id = store.put(os.urandom(CHUNK_SIZE + 500))
    path = blob_path(store, blob_id)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(BlobCorrupt):
        store.get(blob_id)


def test_appended_bytes_are_detected(store: BlobStore) -> None:
    blob_id = store.put(b"hello")
    path = blob_path(store, blob_id)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(BlobCorrupt):
        store.get(blob_id)


def test_truncation_at_chunk_boundary_with_forged_length_is_detected(store: BlobStore) -> None:
    # The attacker drops the last chunk and rewrites the header length to match, so
    # the file looks well formed; only the final-chunk flag in the AAD catches it.
    content = os.urandom(3 * CHUNK_SIZE)
    blob_id = store.put(content)
    path = blob_path(store, blob_id)
    data = bytearray(path.read_bytes()[: chunk_offset(2)])
    data[5:13] = (2 * CHUNK_SIZE).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    assert store.size(blob_id) == 2 * CHUNK_SIZE  # the header alone is not authenticated
    with pytest.raises(BlobCorrupt, match="chunk 1"):
        store.get(blob_id)
    # Streaming hands out the authenticated first chunk, then fails before the end.
    stream = store.iter_plaintext(blob_id)
    assert next(stream) == content[:CHUNK_SIZE]
    with pytest.raises(BlobCorrupt):
        next(stream)


def test_swapped_chunks_are_detected(store: BlobStore) -> None:
    blob_id = store.put(os.urandom(2 * CHUNK_SIZE + 10))
    path = blob_path(store, blob_id)
    data = path.read_bytes()
    c0 = data[chunk_offset(0) : chunk_offset(1)]
    c1 = data[chunk_offset(1) : chunk_offset(2)]
    path.write_bytes(data[:HEADER_SIZE] + c1 + c0 + data[chunk_offset(2) :])
    with pytest.raises(BlobCorrupt, match="chunk 0"):
        store.get(blob_id)


def test_dropped_middle_chunk_is_detected(store: BlobStore) -> None:
    content = os.urandom(3 * CHUNK_SIZE)
    blob_id = store.put(content)
    path = blob_path(store, blob_id)
    data = bytearray(path.read_bytes())
    del data[chunk_offset(1) : chunk_offset(2)]
    data[5:13] = (2 * CHUNK_SIZE).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt, match="chunk 1"):
        store.get(blob_id)


def test_file_copied_to_another_id_is_detected(store: BlobStore) -> None:
    real = store.put(b"transfer 1,000,000 baht to account A")
    other = store.blob_id(b"transfer 1,000,000 baht to account B")
    target = blob_path(store, other)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob_path(store, real).read_bytes())
    with pytest.raises(BlobCorrupt):
        store.get(other)


def test_unknown_version_is_reported(store: BlobStore) -> None:
    blob_id = store.put(b"x")
    path = blob_path(store, blob_id)
    data = bytearray(path.read_bytes())
    data[4] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupt, match="version 9"):
        store.size(blob_id)


# -- missing, delete, listing, housekeeping ----------------------------------------


def test_missing_blob(store: BlobStore) -> None:
    blob_id = store.blob_id(b"never stored")
    assert not store.exists(blob_id)
    with pytest.raises(BlobMissing):
        store.get(blob_id)
    with pytest.raises(BlobMissing):
        store.size(blob_id)
    # Raised at the call, before iteration, so a server can answer "not found" first.
    with pytest.raises(BlobMissing):
        store.iter_plaintext(blob_id)


def test_delete(store: BlobStore) -> None:
    keep = store.put(b"keep")
    gone = store.put(b"gone")
    store.delete(gone)
    assert not store.exists(gone)
    with pytest.raises(BlobMissing):
        store.get(gone)
    store.delete(gone)  # absent: no error
    assert store.get(keep) == b"keep"


def test_only_a_durable_delete_fsyncs_the_directory(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable, quick = store.put(b"durable"), store.put(b"quick")
    synced: list[Path] = []
    monkeypatch.setattr(blobs_module, "fsync_dir", synced.append)
    store.delete(quick, durable=False)
    assert synced == []
    assert not store.exists(quick)
    store.delete(durable)
    assert synced == [blob_path(store, durable).parent]
    assert not store.exists(durable)


def test_iter_ids_lists_every_blob_and_nothing_else(store: BlobStore) -> None:
    ids = {store.put(os.urandom(n)) for n in (0, 10, 20, 30)}
    some = next(iter(ids))
    (blob_path(store, some).parent / "notes.txt").write_text("stray")
    (store.root / "tmp" / ("b" * 64)).write_bytes(b"half-written")
    (store.root / "zz").mkdir()
    misplaced = store.root / some[:2] / some[2:4] / ("c" * 64)  # wrong fan-out prefix
    misplaced.write_bytes(b"")
    assert sorted(store.iter_ids()) == sorted(ids)


def test_clean_temp_removes_only_leftovers(store: BlobStore) -> None:
    blob_id = store.put(b"durable")
    for name in ("a1", "b2", "c3"):
        (store.root / "tmp" / name).write_bytes(b"partial ciphertext")
    assert store.clean_temp() == 3
    assert list((store.root / "tmp").iterdir()) == []
    assert store.get(blob_id) == b"durable"
    assert store.clean_temp() == 0


def test_put_leaves_no_temp_file(store: BlobStore) -> None:
    store.put(os.urandom(CHUNK_SIZE + 1))
    assert list((store.root / "tmp").iterdir()) == []


def test_failed_put_cleans_its_temp_file(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.put(b"will not fit")
    monkeypatch.undo()
    assert list((store.root / "tmp").iterdir()) == []
    assert list(store.iter_ids()) == []


def test_disk_usage_tracks_blobs(store: BlobStore) -> None:
    empty = store.disk_usage()
    blob_id = store.put(os.urandom(2 * MiB))
    grown = store.disk_usage()
    assert grown >= empty + 2 * MiB
    store.delete(blob_id)
    assert store.disk_usage() < grown - MiB
