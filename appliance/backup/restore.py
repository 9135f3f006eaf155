"""`edgebox backup restore`: bring a backup back onto a blank data directory.

Nothing is written to the data directory itself until the whole backup has been
decrypted and checked: the files go to a temporary folder beside it (same filesystem),
and only when every file's tag, size and SHA-256 match the authenticated manifest, and
the restored keys unwrap the data key, is the folder renamed into place. A wrong key or
a damaged backup therefore fails with the part and the check named (`BackupDamaged`),
and the target is left as it was.

What this is not: a merge into a box that already holds data (the target must be blank)
or a way to pick single mailboxes out of a backup.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.backup.crypto import BackupDamaged, decrypt_stream, key_id
from appliance.backup.snapshot import (
    BLOBS_DIR,
    KEY_ID_FILE,
    MANIFEST,
    complete_backups,
    read_manifest,
    sync_filesystem,
)
from appliance.security.keys import KeyMaterialError, load_data_key
from appliance.store.files import fsync_dir

_BLOB_ID = re.compile(r"[0-9a-f]{64}")


class RestoreError(Exception):
    """The restore cannot start or was refused; the target directory is untouched."""


@dataclass
class RestoreReport:
    """What one `restore_backup` brought back."""

    name: str
    files: int
    blobs: int
    bytes: int
    seconds: float


def find_backup(source: Path) -> Path:
    """Return the backup *source* names: a backup folder, or a target's newest backup."""
    if (source / MANIFEST).is_file() or (source / KEY_ID_FILE).is_file():
        return source
    found = complete_backups(source)
    if not found:
        raise RestoreError(f"no complete backup in {source}")
    return found[-1]


def restore_backup(data_dir: Path, source: Path, key: bytes) -> RestoreReport:
    """Restore the backup at *source* onto the blank *data_dir*; see the module docstring."""
    started = time.monotonic()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RestoreError(f"{data_dir} is not empty; restore only onto a blank data directory")
    backup = find_backup(source)
    blob_root = backup.parent / BLOBS_DIR
    try:
        needed = (backup / KEY_ID_FILE).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        needed = ""
    if needed and needed != key_id(key):
        raise RestoreError(
            f"wrong key: backup {backup.name} was made with key {needed}, "
            f"the key given is {key_id(key)}"
        )
    manifest = read_manifest(backup, key)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = data_dir.parent / f".{data_dir.name}.restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    total = 0
    try:
        for entry in manifest["files"]:
            rel = _safe_relative(entry["path"])
            total += _restore_file(key, rel, backup / "data" / rel, staging / rel, entry)
        for entry in manifest["blobs"]:
            blob_id = entry["id"]
            if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
                raise BackupDamaged(MANIFEST, f"invalid blob id {blob_id!r}")
            total += _restore_file(
                key,
                f"blob/{blob_id}",
                blob_root / blob_id[:2] / blob_id,
                staging / "blobs" / blob_id[:2] / blob_id[2:4] / blob_id,
                entry,
            )
        try:
            load_data_key(staging / "keys")
        except KeyMaterialError as exc:
            raise BackupDamaged(
                "keys", f"the restored keys do not open the data key: {exc}"
            ) from None
        sync_filesystem(staging)
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        os.rename(staging, data_dir)
        fsync_dir(data_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreReport(
        name=backup.name,
        files=len(manifest["files"]),
        blobs=len(manifest["blobs"]),
        bytes=total,
        seconds=time.monotonic() - started,
    )


def verify_backup(source: Path, key: bytes) -> tuple[str, int, int]:
    """Check every file of a backup without writing it anywhere; return (name, files, blobs)."""
    backup = find_backup(source)
    manifest = read_manifest(backup, key)
    for entry in manifest["files"]:
        rel = _safe_relative(entry["path"])
        _check_file(key, rel, backup / "data" / rel, entry, None)
    for entry in manifest["blobs"]:
        blob_id = entry["id"]
        _check_file(key, f"blob/{blob_id}", backup.parent / BLOBS_DIR / blob_id[:2] / blob_id,
                    entry, None)  # fmt: skip
    return backup.name, len(manifest["files"]), len(manifest["blobs"])


def _restore_file(key: bytes, label: str, stored: Path, dest: Path, entry: dict[str, Any]) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with dest.open("xb") as out:
        # Made durable all at once by `sync_filesystem` before the rename.
        size = _check_file(key, label, stored, entry, out)
    os.chmod(dest, 0o600)
    return size


def _check_file(key: bytes, label: str, stored: Path, entry: dict[str, Any], out: Any) -> int:
    digest = hashlib.sha256()
    size = 0
    try:
        source = stored.open("rb")
    except FileNotFoundError:
        raise BackupDamaged(label, f"missing from the backup ({stored})") from None
    with source:
        for chunk in decrypt_stream(key, label, source):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    if size != entry["size"]:
        raise BackupDamaged(label, f"size {size} differs from the manifest's {entry['size']}")
    if digest.hexdigest() != entry["sha256"]:
        raise BackupDamaged(label, "SHA-256 differs from the manifest")
    return size


def _safe_relative(path: Any) -> str:
    # The manifest is authenticated, but a path is still checked: nothing a backup
    # holds may land outside the data directory.
    pure = PurePosixPath(str(path))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BackupDamaged(MANIFEST, f"unsafe path {path!r}")
    return pure.as_posix()
