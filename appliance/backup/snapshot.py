"""`edgebox backup create`: a consistent, encrypted, incremental snapshot of a data directory.

Layout of a backup target (a USB disk's mount point, say)::

    TARGET/blobs/<id[0:2]>/<id>   every blob ever backed up, shared by all backups
    TARGET/<name>/key.id          which backup key the backup needs (a fingerprint)
    TARGET/<name>/data/<path>     a database snapshot, a settings or key file, a log day
    TARGET/<name>/manifest        what the backup holds, with sizes and SHA-256; last
    TARGET/.partial-<name>/       a backup being written (never read by a restore)

Every file is a backup file (`appliance.backup.crypto`) labelled with its path, so no
file can stand in for another. A backup is written under ``.partial-<name>``; only after
every file and the manifest are fsynced is the folder renamed to ``<name>`` and the
target fsynced. So a backup is complete or absent: one killed halfway leaves a
``.partial-`` folder that restore ignores and the next backup removes.

Consistency while the box serves:

- Databases are copied with SQLite's online backup API, through the driver that opens
  them (stdlib sqlite3 for plain files, apsw with SQLite3 Multiple Ciphers for the
  encrypted ones, with the same derived key): each copy is one read transaction, a
  consistent state of that file, while the writer carries on (WAL).
- Blobs are immutable and content-addressed, and a blob file is written before the row
  that names it commits and unlinked only after the row that freed it. So blobs are
  listed and copied once before the databases' snapshots (the bulk) and once after (the
  blobs of messages accepted meanwhile). A blob named by a snapshot existed when the
  snapshot was taken, so it is caught by one pass or the other unless it was freed and
  unlinked in the moment between the snapshot and the second listing; such a blob is
  logged (its message was deleted just then).
- A blob already in the target is not copied again (its size and hash come from the
  previous manifest): the second backup of a day costs the databases and new mail.
- Traffic-log days are append-only JSON lines; a day file is copied up to its last
  complete line, so a line being appended is not cut in half.

What this is not: the schedule (`appliance.backup.service`) or restore.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from appliance.backup.crypto import (
    BackupDamaged,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_stream,
    ensure_backup_key,
    key_id,
)
from appliance.security.keys import load_data_key
from appliance.store.files import fsync_dir

log = logging.getLogger("edgebox.backup")

MANIFEST_FORMAT = 1
MANIFEST = "manifest"
KEY_ID_FILE = "key.id"
PARTIAL_PREFIX = ".partial-"
LOCK_FILE = ".lock"
BLOBS_DIR = "blobs"
#: The data directory's folders a backup never holds: run-time state, and the blobs
#: and databases it copies its own way.
_SKIPPED_DIRS = frozenset({"run", "blobs", "db", "backup"})


class BackupError(Exception):
    """A backup could not be made; nothing was left that a restore would accept."""


@dataclass
class BackupReport:
    """What one `create_backup` did, for the log and the benchmark."""

    name: str
    path: Path
    files: int = 0
    file_bytes: int = 0
    blobs: int = 0
    blobs_copied: int = 0
    blob_bytes_copied: int = 0
    blobs_vanished: list[str] = field(default_factory=list)
    seconds: float = 0.0


#: The databases SQLite3 Multiple Ciphers encrypts (apsw's SQLite); the rest are plain.
ENCRYPTED_DATABASES = frozenset({"chat.sqlite", "search.sqlite"})


def encrypted_database_keys(data_key: bytes) -> dict[str, bytes]:
    """Return the SQLite3 Multiple Ciphers key of each encrypted database, by file name."""
    # Imported here: the chat and search modules are large and only this needs them.
    from appliance.chat.store import KEY_INFO as CHAT_KEY_INFO
    from appliance.mail.search_index import KEY_INFO as SEARCH_KEY_INFO
    from appliance.store.encrypted import derive_key

    return {
        "chat.sqlite": derive_key(data_key, CHAT_KEY_INFO),
        "search.sqlite": derive_key(data_key, SEARCH_KEY_INFO),
    }


def create_backup(data_dir: Path, target: Path, *, now: float | None = None) -> BackupReport:
    """Write one complete backup of *data_dir* under *target*; return what was done."""
    started = time.monotonic()
    keys_dir = data_dir / "keys"
    if not (data_dir / "config.json").exists() or not keys_dir.is_dir():
        raise BackupError(f"{data_dir} is not an edgebox data directory")
    key = ensure_backup_key(keys_dir)
    (target / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir / "backup" / "lock"), _exclusive(target / LOCK_FILE):
        return _create_locked(data_dir, target, key, now, started)


def _create_locked(
    data_dir: Path, target: Path, key: bytes, now: float | None, started: float
) -> BackupReport:
    # Only under both locks: another backup's partial folder or scratch copy is never
    # mistaken for a killed one's.
    _remove_partials(target)
    stamp = time.gmtime(time.time() if now is None else now)
    name = time.strftime("%Y%m%dT%H%M%SZ", stamp)
    while (target / name).exists():  # two backups in one second: keep both
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', stamp)}-{secrets.token_hex(2)}"
    partial = target / f"{PARTIAL_PREFIX}{name}"
    partial.mkdir()
    report = BackupReport(name, target / name)
    try:
        (partial / KEY_ID_FILE).write_text(key_id(key) + "\n", encoding="ascii")
        known = _previous_blobs(target, key)
        blobs: dict[str, dict[str, Any]] = {}
        # First blob pass: the bulk, before the databases' snapshots.
        _copy_blobs(data_dir / "blobs", target, key, known, blobs, report)
        files = _copy_databases(data_dir, partial, key)
        files += _copy_plain_files(data_dir, partial, key)
        # Second pass: blobs of mail and chat accepted while the first pass ran.
        _copy_blobs(data_dir / "blobs", target, key, known, blobs, report)
        # Every blob and file of this backup reaches the disk before the manifest
        # that vouches for them is written (see `sync_filesystem`).
        sync_filesystem(target)
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "created": int(time.time() if now is None else now),
            "box": _identity(data_dir),
            "key_id": key_id(key),
            "files": files,
            "blobs": [{"id": i, **blobs[i]} for i in sorted(blobs)],
        }
        payload = json.dumps(manifest, ensure_ascii=False, sort_keys=True).encode("utf-8")
        _write_durably(partial / MANIFEST, encrypt_bytes(key, MANIFEST, payload))
        fsync_dir(partial)
        os.rename(partial, target / name)
        fsync_dir(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.files = len(files)
    report.file_bytes = sum(int(f["size"]) for f in files)
    report.blobs = len(blobs)
    report.seconds = time.monotonic() - started
    return report


def complete_backups(target: Path) -> list[Path]:
    """Return the complete backups under *target*, oldest first (a manifest, no prefix)."""
    if not target.is_dir():
        return []
    found = [
        p
        for p in target.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def read_manifest(backup: Path, key: bytes) -> dict[str, Any]:
    """Decrypt and parse *backup*'s manifest; raise BackupDamaged saying what failed."""
    try:
        sealed = (backup / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupDamaged(MANIFEST, "missing: the backup is incomplete") from None
    manifest = json.loads(decrypt_bytes(key, MANIFEST, sealed))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupDamaged(MANIFEST, "unknown manifest format")
    return manifest


# -- databases --------------------------------------------------------------------------


def _copy_databases(data_dir: Path, partial: Path, key: bytes) -> list[dict[str, Any]]:
    db_dir = data_dir / "db"
    if not db_dir.is_dir():
        return []
    scratch = data_dir / "run" / "backup"
    # The snapshot passes through a scratch file on the data disk itself (the same disk
    # that holds the live database, so nothing new is exposed) before it is encrypted
    # onto the target; a scratch file left by a killed backup is removed here.
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, mode=0o700)
    encrypted_keys: dict[str, bytes] | None = None
    files = []
    try:
        for path in sorted(db_dir.glob("*.sqlite")):
            copy = scratch / path.name
            # Which driver reads a database is known by its name, never found by opening
            # the file: this runs inside the serving box, and closing any descriptor of
            # a database file drops every POSIX lock the process holds on it (fcntl), so
            # another process (`edgebox status`) could then take the file for its own,
            # checkpoint and delete the WAL under the box's writer: mail lost.
            if path.name in ENCRYPTED_DATABASES:
                if encrypted_keys is None:
                    encrypted_keys = encrypted_database_keys(load_data_key(data_dir / "keys"))
                _snapshot_apsw(path, copy, encrypted_keys[path.name])
            else:
                _snapshot_sqlite3(path, copy)
            rel = f"db/{path.name}"
            with copy.open("rb") as source:
                files.append(_write_backup_file(partial, key, rel, source))
            copy.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files


def _snapshot_sqlite3(path: Path, copy: Path) -> None:
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        source.execute("PRAGMA busy_timeout = 10000")
        dest = sqlite3.connect(copy)
        try:
            # pages=-1: the whole file in one step, i.e. in one read transaction, so the
            # copy is one committed state even while the writer commits (WAL).
            source.backup(dest, pages=-1)
            # The copy is a plain single file: restore puts it back without a WAL.
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()
    finally:
        source.close()


def _snapshot_apsw(path: Path, copy: Path, db_key: bytes) -> None:
    from appliance.store.encrypted import connect_encrypted

    source = connect_encrypted(path, db_key)
    try:
        # The copy is encrypted with the same key, page by page, by the same driver.
        dest = connect_encrypted(copy, db_key)
        try:
            with dest.backup("main", source, "main") as step:
                while not step.done:
                    step.step(-1)
            dest.pragma("journal_mode", "delete")
        finally:
            dest.close()
    finally:
        source.close()


# -- settings, keys, logs ---------------------------------------------------------------


def _copy_plain_files(data_dir: Path, partial: Path, key: bytes) -> list[dict[str, Any]]:
    files = []
    for path in _plain_files(data_dir):
        rel = path.relative_to(data_dir).as_posix()
        with path.open("rb") as source:
            reader: Any = source
            if path.suffix == ".jsonl":
                reader = _CompleteLines(source, os.fstat(source.fileno()).st_size)
            files.append(_write_backup_file(partial, key, rel, reader))
    return files


def _plain_files(data_dir: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(data_dir):
        here = Path(root)
        if here == data_dir:
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        dirs.sort()
        for name in sorted(names):
            # Temp files of atomic writes are half a file by definition.
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            path = here / name
            if path.is_file() and not path.is_symlink():
                yield path


class _CompleteLines:
    """Read a growing log file up to its last newline at or before *limit* bytes."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        data_end = limit
        if limit:
            # Find the last newline: back up in small steps from the end.
            step = 4096
            end = limit
            while end > 0:
                start = max(0, end - step)
                source.seek(start)
                block = source.read(end - start)
                at = block.rfind(b"\n")
                if at >= 0:
                    data_end = start + at + 1
                    break
                end = start
            else:
                data_end = 0
            source.seek(0)
        self._left = data_end

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._source.read(want)
        self._left -= len(data)
        return data


# -- blobs ------------------------------------------------------------------------------


def _copy_blobs(
    blob_root: Path,
    target: Path,
    key: bytes,
    known: dict[str, dict[str, Any]],
    done: dict[str, dict[str, Any]],
    report: BackupReport,
) -> None:
    for blob_id, path in _blob_files(blob_root):
        if blob_id in done:
            continue
        dest = target / BLOBS_DIR / blob_id[:2] / blob_id
        try:
            if dest.exists() and blob_id in known:
                done[blob_id] = known[blob_id]
                continue
            # A blob in the target that no manifest vouches for (left by a backup that
            # never finished) is copied again: its hash is not known to be this file's.
            with path.open("rb") as source:
                done[blob_id] = _write_blob(dest, key, blob_id, source)
        except FileNotFoundError:
            # Unlinked since the listing: freed after its message was deleted.
            report.blobs_vanished.append(blob_id)
            continue
        report.blobs_copied += 1
        report.blob_bytes_copied += int(done[blob_id]["size"])


def _blob_files(root: Path) -> Iterator[tuple[str, Path]]:
    if not root.is_dir():
        return
    for first in sorted(root.iterdir()):
        if first.name == "tmp" or not first.is_dir():
            continue
        for second in sorted(first.iterdir()):
            if not second.is_dir():
                continue
            for path in sorted(second.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    yield path.name, path


def _write_blob(dest: Path, key: bytes, blob_id: str, source: BinaryIO) -> dict[str, Any]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as out:
            size, digest = encrypt_stream(key, f"blob/{blob_id}", source, out)
        # Not fsynced one by one: `create_backup` syncs the whole target once before
        # the manifest. A blob renamed here but lost to a power cut is in no manifest,
        # so the next backup does not trust it and copies it again.
        os.rename(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"size": size, "sha256": digest}


def _previous_blobs(target: Path, key: bytes) -> dict[str, dict[str, Any]]:
    """Return the blobs (size, hash) of the newest readable backup under this key."""
    for backup in reversed(complete_backups(target)):
        try:
            manifest = read_manifest(backup, key)
        except (BackupDamaged, ValueError, OSError) as exc:
            log.warning("backup %s: cannot read its manifest (%s); looking further", backup, exc)
            continue
        return {b["id"]: {"size": b["size"], "sha256": b["sha256"]} for b in manifest["blobs"]}
    return {}


# -- helpers ----------------------------------------------------------------------------


def _write_backup_file(partial: Path, key: bytes, rel: str, source: Any) -> dict[str, Any]:
    dest = partial / "data" / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("xb") as out:
        size, digest = encrypt_stream(key, rel, source, out)
    return {"path": rel, "size": size, "sha256": digest}


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def sync_filesystem(path: Path) -> None:
    """Flush everything written to *path*'s filesystem to the disk, in one call.

    A backup writes thousands of small files (one per blob), and restore as many. An
    fsync per file and per folder made a 500-user office's backup 20 times slower than
    the encryption itself (docs/BENCHMARKS.md, "Backup and restore"); syncfs(2) flushes
    the one filesystem (the USB disk, or the data disk) once, and what matters is only
    that it happens before the manifest (backup) or the rename (restore). Where
    syncfs is missing, sync(2) flushes every filesystem, which is slower, never wrong.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS is None or _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _find_syncfs() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int,)
    function.restype = ctypes.c_int
    return function


_SYNCFS = _find_syncfs()


def _remove_partials(target: Path) -> None:
    for path in target.glob(f"{PARTIAL_PREFIX}*"):
        log.info("removing %s, left by a backup that did not finish", path)
        shutil.rmtree(path, ignore_errors=True)
    # Half-written blob files of a killed backup.
    blobs = target / BLOBS_DIR
    if blobs.is_dir():
        for tmp in blobs.glob("*/.*.tmp"):
            with suppress(FileNotFoundError):
                tmp.unlink()


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock on *path* (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup is running ({path} is locked)") from None
        yield
    finally:
        os.close(fd)


def _identity(data_dir: Path) -> dict[str, Any]:
    try:
        document = json.loads((data_dir / "config.json").read_text("utf-8"))
        box = document.get("box", {}).get("1", {})
        return {k: box.get(k) for k in ("box_id", "domain")}
    except (OSError, ValueError, AttributeError):
        return {}


def prune_backups(target: Path, key: bytes, keep: int) -> list[str]:
    """Delete all but the newest *keep* backups and the blobs only they used; return names.

    Blobs are shared between backups, so a blob is deleted only when no kept backup's
    manifest lists it. That needs every manifest in the target to be readable with this
    box's key: a target shared with another box, or a damaged manifest, stops the blob
    sweep (old folders are still removed; their blobs stay, which wastes space but loses
    nothing). Runs under the same locks as a backup, so no backup is half written.
    """
    if keep < 1:
        return []
    with _exclusive(target / LOCK_FILE):
        backups = complete_backups(target)
        if len(backups) <= keep:
            return []
        old, kept = backups[:-keep], backups[-keep:]
        referenced: set[str] = set()
        sweep = True
        for backup in kept:
            try:
                referenced.update(b["id"] for b in read_manifest(backup, key)["blobs"])
            except (BackupDamaged, ValueError, OSError, KeyError) as exc:
                log.warning("backup %s: manifest unreadable (%s); blobs are not swept", backup, exc)
                sweep = False
        for backup in old:
            # Renamed first: a prune killed halfway leaves a dot-folder no restore takes.
            doomed = target / f".deleting-{backup.name}"
            os.rename(backup, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        for leftover in target.glob(".deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        fsync_dir(target)
        if sweep:
            for blob_id, path in _target_blobs(target):
                if blob_id not in referenced:
                    path.unlink(missing_ok=True)
        return [b.name for b in old]


def _target_blobs(target: Path) -> Iterator[tuple[str, Path]]:
    root = target / BLOBS_DIR
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    yield path.name, path
