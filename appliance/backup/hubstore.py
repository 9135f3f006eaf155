"""The hub's store of the boxes' offsite backups: one backup target per box.

Each enrolled box's backups live in ``HUB/backups/<box_id>/``, laid out exactly like an
onsite target (`appliance.backup.snapshot`): ``blobs/``, one folder per complete backup
set, ``.partial-<name>/`` for the set being uploaded. So a hub operator can restore a
box's set straight from that folder (``edgebox backup restore --from
HUB/backups/<box_id>``), and a copied folder is an ordinary backup target. Added here:

- ``.incoming/<object hash>``: an object (a blob or one of the set's files) whose
  upload has begun; pieces are appended in order, and the finished file is renamed into
  place. A piece is written only at the offset the file has reached, so a piece sent
  twice (its answer lost in a cut) is written once, and the box resumes from the offset
  the hub reports (`put_piece`);
- ``<name>/blobs.ids``: the blob ids the set needs, in clear, written at commit. The hub
  cannot read a manifest (only the box's backup key can); these lists are how retention
  knows which blobs a kept set still needs;
- ``escrow.json``: the box's backup keys wrapped to the hub's escrow key
  (`appliance.backup.escrow`).

Retention: the newest ``backup_hub_keep`` sets per box (`prune`), and at most
``backup_hub_quota`` bytes per box (`prune_to_quota`): beyond it the oldest sets go,
never the newest complete one (the last good backup). A box still over its quota with
only that set left is refused its next upload (``over_quota``), saying so; the set in
flight when the quota was reached is finished, so a box may overshoot by one set.

The hub never decrypts anything here. Every name comes from the caller's certificate
(the box id) or is checked against a strict pattern, so no request reaches outside its
box's folder.

What this is not: the HTTP routes (`appliance.backup.offsite.routes`) or the box's side.
Plain synchronous functions, run in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from appliance.backup.crypto import HEADER_SIZE, MAGIC
from appliance.backup.snapshot import (
    BLOBS_DIR,
    KEY_ID_FILE,
    MANIFEST,
    PARTIAL_PREFIX,
    complete_backups,
    sync_filesystem,
)
from appliance.store.files import fsync_dir, write_atomically

#: The hub's folder of every box's backups.
BACKUPS_DIR: Final = Path("backups")
INCOMING: Final = ".incoming"
BLOB_IDS: Final = "blobs.ids"
ESCROW_FILE: Final = "escrow.json"
#: Largest piece of an object in one request (raw bytes, before base64).
PIECE: Final = 1024 * 1024

_SET_NAME: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z(-[0-9a-f]{4})?")
_BLOB_ID: Final = re.compile(r"[0-9a-f]{64}")
_BOX_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_KEY_ID: Final = re.compile(r"[0-9a-f]{16}")


class BackupRefused(ValueError):
    """A request names something that is not a well-formed backup object or set."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotFound(LookupError):
    """The set or object asked for is not held for this box."""


@dataclass(frozen=True)
class SetInfo:
    """One complete backup set held for a box."""

    name: str
    key_id: str
    blobs: int
    bytes: int


def box_folder(data_dir: Path, box_id: str) -> Path:
    """Return the folder of *box_id*'s backups (checked: it names a folder)."""
    if not _BOX_ID.fullmatch(box_id):
        raise BackupRefused("bad_box", f"not a box id: {box_id!r}")
    return data_dir / BACKUPS_DIR / box_id


def check_set_name(name: object) -> str:
    """Return *name* if it is a backup set's name (a UTC time stamp), else refuse."""
    if not isinstance(name, str) or not _SET_NAME.fullmatch(name):
        raise BackupRefused("bad_set", "a set is named by its UTC time, like 20261207T020000Z")
    return name


def check_key_id(key_id: object) -> str:
    """Return *key_id* if it is a backup key's fingerprint (16 hex digits)."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise BackupRefused("bad_key_id", "a key id is 16 hex digits")
    return key_id


def object_path(folder: Path, set_name: str, name: object, *, partial: bool) -> Path:
    """Where object *name* of a set lives: ``blob/<id>``, ``data/<path>``, ``manifest``."""
    if not isinstance(name, str):
        raise BackupRefused("bad_object", "an object is named by a string")
    if name.startswith("blob/"):
        blob_id = name[len("blob/") :]
        if not _BLOB_ID.fullmatch(blob_id):
            raise BackupRefused("bad_object", f"not a blob id: {blob_id!r}")
        return folder / BLOBS_DIR / blob_id[:2] / blob_id
    base = folder / (f"{PARTIAL_PREFIX}{set_name}" if partial else set_name)
    if name in (MANIFEST, KEY_ID_FILE):
        return base / name
    pure = PurePosixPath(name)
    if (
        pure.parts[:1] != ("data",)
        or len(pure.parts) < 2
        or ".." in pure.parts
        or pure.is_absolute()
    ):
        raise BackupRefused("bad_object", f"not an object of a backup set: {name!r}")
    return base / pure


def begin(folder: Path, set_name: str, quota: int = 0) -> dict[str, Any]:
    """Open (or reopen) the upload of *set_name*; return what the hub already holds.

    With a *quota* (bytes; 0 = none), older sets are pruned to make room first; a box
    still over it is refused (`BackupRefused` ``over_quota``).

    Another set's unfinished upload is removed: a box uploads one set at a time, and a
    set it abandoned will not be finished. The set's own partial folder is kept, so a
    box that was cut off resumes it. A name already taken by a complete set is refused
    (two backups in one second): the box picks another.
    """
    if (folder / set_name).is_dir():
        raise BackupRefused("set_exists", f"set {set_name} exists already; name the new one anew")
    folder.mkdir(parents=True, exist_ok=True)
    if quota > 0:
        prune_to_quota(folder, quota)
        held = usage(folder)
        if held > quota:
            raise BackupRefused(
                "over_quota",
                f"the hub holds {held / 2**20:.1f} MiB of this box's backups, over its quota of "
                f"{quota / 2**20:.1f} MiB even with only the last good set kept; the hub's "
                "operator must raise backup_hub_quota",
            )
    for other in folder.glob(f"{PARTIAL_PREFIX}*"):
        if other.name != f"{PARTIAL_PREFIX}{set_name}":
            shutil.rmtree(other, ignore_errors=True)
    partial = folder / f"{PARTIAL_PREFIX}{set_name}"
    partial.mkdir(exist_ok=True)
    files = {
        path.relative_to(partial).as_posix(): path.stat().st_size
        for path in sorted(partial.rglob("*"))
        if path.is_file()
    }
    incoming = folder / INCOMING
    pending = {}
    if incoming.is_dir():
        for path in incoming.iterdir():
            meta = _read_json(path.with_suffix(".json")) if path.suffix == ".part" else None
            if isinstance(meta, dict) and isinstance(meta.get("object"), str):
                pending[meta["object"]] = path.stat().st_size
    return {"blobs": sorted(held_blobs(folder)), "files": files, "pending": pending}


def held_blobs(folder: Path) -> set[str]:
    """The ids of every complete blob held for the box."""
    root = folder / BLOBS_DIR
    if not root.is_dir():
        return set()
    return {
        path.name
        for sub in root.iterdir()
        if sub.is_dir()
        for path in sub.iterdir()
        if not path.name.startswith(".") and _BLOB_ID.fullmatch(path.name)
    }


def put_piece(
    folder: Path, set_name: str, name: str, offset: int, data: bytes, final: bool, size: int
) -> tuple[int, bool]:
    """Write one piece of object *name* at *offset*; return (offset reached, complete).

    The rules, so that a box can resend anything without harm:

    - an object already complete answers its size and "complete", writing nothing
      (a blob another set already brought, or a final piece whose answer was lost);
    - offset 0 starts the object afresh (the box encrypted it anew);
    - any other offset is written only if it is where the file has reached; otherwise
      nothing is written and the answer says where it is, and the box goes on from
      there;
    - with *final*, the file must then be *size* bytes and start like a backup file;
      it is renamed into place.
    """
    dest = object_path(folder, set_name, name, partial=True)
    if not name.startswith("blob/") and not (folder / f"{PARTIAL_PREFIX}{set_name}").is_dir():
        raise NotFound(f"no upload of set {set_name} is open; begin it first")
    if dest.exists():
        return dest.stat().st_size, True
    incoming = folder / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(f"{set_name}\0{name}".encode()).hexdigest()[:32]
    if name.startswith("blob/"):
        stem = hashlib.sha256(name.encode()).hexdigest()[:32]  # blobs outlive their set
    part = incoming / f"{stem}.part"
    reached = part.stat().st_size if part.exists() else 0
    if offset == 0:
        if not final:
            # What `begin` reports as begun; not fsynced: an upload lost to a power cut
            # on the hub starts again from 0. An object sent whole needs none.
            part.with_suffix(".json").write_text(json.dumps({"object": name}), "utf-8")
        with part.open("wb") as out:
            out.write(data)
        reached = len(data)
    elif offset == reached and part.exists():
        with part.open("ab") as out:
            out.write(data)
        reached += len(data)
    else:
        return reached, False
    if not final:
        return reached, False
    if reached != size:
        raise BackupRefused("bad_size", f"{name}: {reached} bytes arrived, {size} were announced")
    with part.open("rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[: len(MAGIC)] != MAGIC:
        part.unlink()
        raise BackupRefused("not_backup_file", f"{name}: not an encrypted backup file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not fsynced one by one: `commit` syncs the filesystem once before the set's
    # manifest, like an onsite backup (`sync_filesystem`).
    os.rename(part, dest)
    part.with_suffix(".json").unlink(missing_ok=True)
    return reached, True


def commit(
    folder: Path,
    set_name: str,
    manifest: bytes,
    key_id: str,
    blobs: list[str],
    files: list[str],
    keep: int,
    quota: int = 0,
) -> list[str]:
    """Finish set *set_name*: check it is whole, publish it, apply retention; return removed.

    Whole means: every blob the set needs is held, every file it lists has arrived.
    Then the manifest and key id are written, everything is synced, and the partial
    folder is renamed to the set's name (so a set is complete or absent, as onsite).
    """
    partial = folder / f"{PARTIAL_PREFIX}{set_name}"
    if (folder / set_name).is_dir():
        return []  # committed already; this is a retry whose answer was lost
    if not partial.is_dir():
        raise NotFound(f"no upload of set {set_name} is open")
    for blob_id in blobs:
        object_path(folder, set_name, f"blob/{blob_id}", partial=True)  # its shape
    held = held_blobs(folder)
    missing = [b for b in blobs if b not in held]
    if missing:
        raise BackupRefused(
            "incomplete", f"{len(missing)} blobs have not arrived, e.g. {missing[0]}"
        )
    for name in files:
        if not object_path(folder, set_name, name, partial=True).is_file():
            raise BackupRefused("incomplete", f"{name} has not arrived")
    if manifest[: len(MAGIC)] != MAGIC:
        raise BackupRefused("not_backup_file", "the manifest is not an encrypted backup file")
    (partial / MANIFEST).write_bytes(manifest)
    (partial / KEY_ID_FILE).write_text(key_id + "\n", encoding="ascii")
    (partial / BLOB_IDS).write_text("".join(f"{b}\n" for b in sorted(blobs)), encoding="ascii")
    sync_filesystem(folder)
    os.rename(partial, folder / set_name)
    fsync_dir(folder)
    # Uploads begun and never finished (a blob freed mid-way): the box starts its next
    # set with an empty spool, so none of them would be resumed.
    shutil.rmtree(folder / INCOMING, ignore_errors=True)
    return prune(folder, keep) + prune_to_quota(folder, quota)


def usage(folder: Path) -> int:
    """Bytes the hub holds for the box: its sets, blobs and uploads in flight."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prune_to_quota(folder: Path, quota: int) -> list[str]:
    """Delete the box's oldest sets while it holds more than *quota* bytes (0 = no
    quota), never its newest complete set; return the names removed."""
    removed: list[str] = []
    while quota > 0 and usage(folder) > quota:
        sets = complete_backups(folder)
        if len(sets) <= 1:
            break  # the last good backup stays, whatever its size
        gone = prune(folder, len(sets) - 1)
        if not gone:
            break  # a kept set without its blob list: `prune` sweeps nothing
        removed += gone
    return removed


def prune(folder: Path, keep: int) -> list[str]:
    """Keep the newest *keep* sets of a box; delete older ones and blobs no kept set needs."""
    sets = complete_backups(folder)
    if keep < 1 or len(sets) <= keep:
        return []
    old, kept = sets[:-keep], sets[-keep:]
    needed: set[str] = set()
    for each in kept:
        try:
            needed.update((each / BLOB_IDS).read_text("ascii").split())
        except OSError:
            return []  # a kept set without its list: sweep nothing rather than guess
    for each in old:
        doomed = folder / f".deleting-{each.name}"
        os.rename(each, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    fsync_dir(folder)
    for blob_id in held_blobs(folder) - needed:
        (folder / BLOBS_DIR / blob_id[:2] / blob_id).unlink(missing_ok=True)
    return [each.name for each in old]


def list_sets(folder: Path) -> list[SetInfo]:
    """The box's complete sets, oldest first."""
    found = []
    for each in complete_backups(folder):
        try:
            key_id = (each / KEY_ID_FILE).read_text("ascii").strip()
            blob_ids = (each / BLOB_IDS).read_text("ascii").split()
        except OSError:
            continue
        size = sum(p.stat().st_size for p in each.rglob("*") if p.is_file())
        found.append(SetInfo(each.name, key_id, len(blob_ids), size))
    return found


def read_piece(
    folder: Path,
    set_name: str,
    name: str,
    offset: int,
    length: int,
    set_blobs: set[str] | None = None,
) -> tuple[bytes, int]:
    """Return (up to *length* bytes of object *name* from *offset*, its whole size).

    *set_blobs* is the set's blob ids if the caller read them already (`set_blob_ids`).
    """
    path = object_path(folder, set_name, name, partial=False)
    if not (folder / set_name).is_dir():
        raise NotFound(f"no backup set {set_name}")
    if name.startswith("blob/"):
        # Only a blob the set needs: a set is what the box may read back.
        ids = set_blob_ids(folder, set_name) if set_blobs is None else set_blobs
        if name[len("blob/") :] not in ids:
            raise NotFound(f"set {set_name} has no {name}")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            return f.read(min(length, PIECE)), size
    except FileNotFoundError:
        raise NotFound(f"set {set_name} has no {name}") from None


def set_blob_ids(folder: Path, set_name: str) -> set[str]:
    """The blob ids a complete set needs."""
    try:
        return set((folder / set_name / BLOB_IDS).read_text("ascii").split())
    except FileNotFoundError:
        raise NotFound(f"no backup set {set_name}") from None


def set_objects(folder: Path, set_name: str) -> list[tuple[str, int]]:
    """Every object of a complete set and its size: files, then blobs (not the manifest)."""
    base = folder / set_name
    if not base.is_dir():
        raise NotFound(f"no backup set {set_name}")
    files = sorted(
        (p.relative_to(base).as_posix(), p.stat().st_size)
        for p in (base / "data").rglob("*")
        if p.is_file()
    )
    blobs = []
    for blob_id in (base / BLOB_IDS).read_text("ascii").split():
        path = folder / BLOBS_DIR / blob_id[:2] / blob_id
        blobs.append((f"blob/{blob_id}", path.stat().st_size if path.exists() else 0))
    return [*files, *blobs]


def store_escrow(folder: Path, key_id: str, wrapped: str, at: float) -> None:
    """Keep a wrapped backup key for the box (one per key id; the newest first)."""
    folder.mkdir(parents=True, exist_ok=True)
    held = read_escrow(folder)
    held = [e for e in held if e.get("key_id") != key_id]
    held.insert(0, {"key_id": key_id, "wrapped": wrapped, "at": at})
    write_atomically(folder / ESCROW_FILE, json.dumps(held, sort_keys=True).encode("utf-8"))


def read_escrow(folder: Path) -> list[dict[str, Any]]:
    """The box's escrowed keys, newest first."""
    held = _read_json(folder / ESCROW_FILE)
    return [e for e in held if isinstance(e, dict)] if isinstance(held, list) else []


def boxes_with_backups(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """(box id, folder) of every box that has a backup folder at this hub."""
    root = data_dir / BACKUPS_DIR
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and _BOX_ID.fullmatch(folder.name):
                yield folder.name, folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
