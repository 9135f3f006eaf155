"""Fetching a box's backup set back from the hub, for a restore.

`fetch_set` copies one set (its files, the blobs it needs, its manifest last) into a
local folder laid out as an onsite backup target, so that the one restore
(`appliance.backup.restore.restore_backup`) checks and restores it: the hub is trusted
to keep the files, never to say what they hold. Each object is fetched in pieces into
``<file>.part`` and renamed when whole; a fetch cut off goes on from the pieces it has.
Small objects (most mail) come many to a request, whole.

What this is not: the restore itself, or how the blank box gets a certificate to ask
with (`appliance.backup.hub_restore`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from appliance.backup.crypto import BackupDamaged, decrypt_bytes
from appliance.backup.hubstore import object_path
from appliance.backup.offsite.protocol import (
    GET_PATH,
    MAX_BATCH,
    OBJECTS_PATH,
    PIECE,
    SETS_PATH,
    SMALL,
)
from appliance.backup.snapshot import KEY_ID_FILE, MANIFEST, MANIFEST_FORMAT

Call = Callable[[str, Any], Awaitable[Any]]


class NoBackupAtHub(LookupError):
    """The hub holds no (such) backup set for the box."""


async def list_sets(call: Call, box: str | None = None) -> list[dict[str, Any]]:
    """The box's complete sets at the hub, oldest first."""
    answer = await call(SETS_PATH, {"box": box} if box else {})
    sets = answer.get("sets") if isinstance(answer, dict) else None
    return [s for s in sets if isinstance(s, dict)] if isinstance(sets, list) else []


async def fetch_set(
    call: Call, dest: Path, *, set_name: str | None = None, box: str | None = None
) -> Path:
    """Copy set *set_name* (default: the newest) into *dest*; return the set's folder."""
    sets = await list_sets(call, box)
    if set_name is None:
        if not sets:
            raise NoBackupAtHub("the hub holds no backup set for this box")
        set_name = str(sets[-1]["name"])
    elif not any(s.get("name") == set_name for s in sets):
        raise NoBackupAtHub(f"the hub holds no backup set {set_name} for this box")
    scope = {"box": box} if box else {}
    listed = await call(OBJECTS_PATH, {**scope, "set": set_name})
    objects = [
        (str(o["object"]), int(o["size"]))
        for o in listed.get("objects", [])
        if isinstance(o, dict) and isinstance(o.get("object"), str)
    ]
    await _fetch(call, scope, set_name, KEY_ID_FILE, object_path(dest, set_name, KEY_ID_FILE,
                                                                 partial=False))  # fmt: skip
    batch: list[str] = []
    batch_bytes = 0
    # One look at the disk for all (a thread hop per object costs more than its bytes).
    missing = await trio.to_thread.run_sync(_missing, dest, set_name, objects)
    for obj, size in missing:
        local = object_path(dest, set_name, obj, partial=False)
        if size <= SMALL:
            if batch and (batch_bytes + size > PIECE or len(batch) >= MAX_BATCH):
                await _fetch_batch(call, scope, set_name, dest, batch)
                batch, batch_bytes = [], 0
            batch.append(obj)
            batch_bytes += size
            continue
        await _fetch(call, scope, set_name, obj, local)
    if batch:
        await _fetch_batch(call, scope, set_name, dest, batch)
    # The manifest last: a folder with a manifest is a whole set (`complete_backups`).
    await _fetch(call, scope, set_name, MANIFEST, object_path(dest, set_name, MANIFEST,
                                                              partial=False))  # fmt: skip
    return dest / set_name


async def _fetch_batch(
    call: Call, scope: dict[str, str], set_name: str, dest: Path, batch: list[str]
) -> None:
    """Fetch small objects whole, many in one request."""
    answer = await call(GET_PATH, {**scope, "set": set_name, "objects": batch})
    pieces = answer.get("pieces") if isinstance(answer, dict) else None
    if not isinstance(pieces, list) or len(pieces) != len(batch):
        raise BackupDamaged("hub", "an unreadable answer to a batched get")
    whole: list[tuple[Path, bytes, str]] = []
    partial: list[tuple[Path, bytes, str]] = []
    for obj, each in zip(batch, pieces, strict=True):
        data, size = _piece(each)
        local = object_path(dest, set_name, obj, partial=False)
        (whole if len(data) == size else partial).append((local, data, obj))
    await trio.to_thread.run_sync(_write_whole, whole)
    for local, _, obj in partial:  # grown since it was listed: the long way
        await _fetch(call, scope, set_name, obj, local)


def _missing(dest: Path, set_name: str, objects: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The objects not yet fetched (a fetch cut off has the others)."""
    return [
        (o, n) for o, n in objects if not object_path(dest, set_name, o, partial=False).exists()
    ]


def _write_whole(written: list[tuple[Path, bytes, str]]) -> None:
    # Not fsynced one by one: restore syncs the filesystem before it renames the box
    # into place, and a file lost to a power cut here fails its check and is fetched
    # again by the next run.
    for local, data, _ in written:
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        part.write_bytes(data)
        part.rename(local)


async def fetch_manifest(call: Call, set_name: str, key: bytes) -> dict[str, Any]:
    """Return a set's manifest at the hub, decrypted; raise BackupDamaged if it fails."""
    data = bytearray()
    while True:
        answer = await call(GET_PATH, {"set": set_name, "object": MANIFEST, "offset": len(data)})
        piece, size = _piece(answer)
        data += piece
        if len(data) >= size or not piece:
            break
    manifest = json.loads(decrypt_bytes(key, MANIFEST, bytes(data)))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupDamaged(MANIFEST, "unknown manifest format")
    return manifest


async def _fetch(call: Call, scope: dict[str, str], set_name: str, obj: str, local: Path) -> None:
    part = local.with_name(local.name + ".part")
    await trio.to_thread.run_sync(lambda: local.parent.mkdir(parents=True, exist_ok=True))
    offset = part.stat().st_size if part.exists() else 0
    with part.open("ab") as out:
        while True:
            answer = await call(GET_PATH, {**scope, "set": set_name, "object": obj,
                                           "offset": offset})  # fmt: skip
            piece, size = _piece(answer)
            out.write(piece)
            offset += len(piece)
            if offset >= size:
                break
            if not piece:
                raise BackupDamaged(obj, f"the hub sent {offset} of {size} bytes")
    part.rename(local)


def _piece(answer: Any) -> tuple[bytes, int]:
    try:
        return base64.b64decode(answer["data"], validate=True), int(answer["size"])
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BackupDamaged("hub", f"an unreadable answer to get: {exc}") from None
