"""The hub's side of offsite backups: the ``/sync/v1/backup/*`` routes.

Thin: each handler checks the body's shape, scopes it to the calling box
(`Peer.box_id`, from its verified certificate) and runs the store's function
(`appliance.backup.hubstore`) in a worker thread. A body that names another box is
refused 403 ``wrong_box`` before anything is read: a box's backup sets are its own,
and a box restored onto new hardware re-enrols as the same box to read them back.
"""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path
from typing import Any

import trio

from appliance.backup import hubstore
from appliance.backup.escrow import ensure_escrow_key
from appliance.backup.hubstore import BackupRefused, NotFound
from appliance.backup.offsite.protocol import (
    BEGIN_PATH,
    COMMIT_PATH,
    ESCROW_PATH,
    GET_PATH,
    MAX_BATCH,
    OBJECTS_PATH,
    PIECE,
    PUT_MAX_BODY,
    PUT_PATH,
    SETS_PATH,
)
from appliance.sync.hub.errors import HubError, bad_request
from appliance.sync.transport import JSON, Peer, SyncRoute

#: A commit carries the manifest and the list of blob ids: about 200 bytes a blob.
COMMIT_MAX_BODY = 64 * 1024 * 1024


def backup_hub_routes(data_dir: Path, keep: int, quota: int = 0) -> list[SyncRoute]:
    """The hub's backup routes over *data_dir*, keeping the newest *keep* sets per box and
    at most *quota* bytes of a box's backups (0: no quota; hubstore's retention)."""
    keys_dir = data_dir / "keys"

    def folder(peer: Peer, body: JSON) -> Path:
        named = body.get("box")
        if named is not None and named != peer.box_id:
            raise HubError(403, "wrong_box",
                           "a box reads and writes only its own backup sets")  # fmt: skip
        try:
            return hubstore.box_folder(data_dir, peer.box_id)
        except BackupRefused as exc:
            raise bad_request(str(exc), exc.code) from None

    async def run(function: Any, *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(function, *args)
        except BackupRefused as exc:
            if exc.code == "over_quota":
                # 4xx, not 5xx: trying again later will not help until the operator acts.
                raise HubError(409, exc.code, str(exc)) from None
            raise bad_request(str(exc), exc.code) from None
        except NotFound as exc:
            raise HubError(404, "not_found", str(exc)) from None

    async def begin(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        name, key_id = _checked(hubstore.check_set_name, body.get("set")), body.get("key_id")
        key_id = _checked(hubstore.check_key_id, key_id)
        answer: dict[str, Any] = await run(hubstore.begin, where, name, quota)
        public = await trio.to_thread.run_sync(ensure_escrow_key, keys_dir)
        held = any(e.get("key_id") == key_id for e in hubstore.read_escrow(where))
        answer["escrow"] = {"public_key": base64.b64encode(public).decode(), "held": held}
        return answer

    async def put(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        name = _checked(hubstore.check_set_name, body.get("set"))
        batch = body.get("pieces")
        if batch is None:
            piece = _piece(body)
            reached, complete = await run(hubstore.put_piece, where, name, *piece)
            return {"offset": reached, "complete": complete}
        # Many small objects in one request: a day's new mail is mostly notes of a few
        # KB, and a round trip each would cost more than the bytes.
        if not isinstance(batch, list) or not batch or len(batch) > MAX_BATCH:
            raise bad_request(f"pieces is a list of 1 to {MAX_BATCH} pieces")
        pieces = [_piece(each) for each in batch]
        if sum(len(p[2]) for p in pieces) > PIECE:
            raise HubError(413, "too_large", f"the pieces of one put are at most {PIECE} bytes")

        def put_all() -> list[tuple[int, bool]]:
            return [hubstore.put_piece(where, name, *piece) for piece in pieces]

        done = await run(put_all)
        return {"pieces": [{"offset": r, "complete": c} for r, c in done]}

    async def commit(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        name = _checked(hubstore.check_set_name, body.get("set"))
        key_id = _checked(hubstore.check_key_id, body.get("key_id"))
        blobs, files = body.get("blobs"), body.get("files")
        if not _strings(blobs) or not _strings(files):
            raise bad_request("commit lists the set's blobs and files")
        manifest = _bytes(body.get("manifest"))
        removed = await run(
            hubstore.commit, where, name, manifest, key_id, blobs, files, keep, quota
        )
        return {"set": name, "removed": removed}

    async def escrow(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        key_id = _checked(hubstore.check_key_id, body.get("key_id"))
        wrapped = body.get("wrapped")
        if not isinstance(wrapped, str) or len(wrapped) > 1024:
            raise bad_request("escrow carries the wrapped key")
        await run(hubstore.store_escrow, where, key_id, wrapped, time.time())
        return {"held": True}

    async def sets(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        found = await run(hubstore.list_sets, where)
        return {"sets": [{"name": s.name, "key_id": s.key_id, "blobs": s.blobs,
                          "bytes": s.bytes} for s in found]}  # fmt: skip

    async def objects(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        name = _checked(hubstore.check_set_name, body.get("set"))
        listed = await run(hubstore.set_objects, where, name)
        return {"objects": [{"object": o, "size": n} for o, n in listed]}

    async def get(peer: Peer, body: JSON) -> JSON:
        where = folder(peer, body)
        name = _checked(hubstore.check_set_name, body.get("set"))
        wanted = body.get("objects")
        if wanted is not None:
            # Small objects whole, many at once (the answer stays within a piece).
            if not _strings(wanted) or not wanted or len(wanted) > MAX_BATCH:
                raise bad_request(f"objects is a list of 1 to {MAX_BATCH} names")

            def read_all() -> list[tuple[str, bytes, int]]:
                found, total = [], 0
                ids = hubstore.set_blob_ids(where, name)
                for obj in wanted:
                    data, size = hubstore.read_piece(where, name, obj, 0, PIECE - total, ids)
                    total += len(data)
                    found.append((obj, data, size))
                return found

            pieces = await run(read_all)
            return {"pieces": [{"object": o, "data": base64.b64encode(d).decode("ascii"),
                                "size": n} for o, d, n in pieces]}  # fmt: skip
        obj, offset = body.get("object"), body.get("offset")
        if not isinstance(obj, str) or not _count(offset):
            raise bad_request("get needs object and offset")
        data, size = await run(hubstore.read_piece, where, name, obj, offset, PIECE)
        return {"data": base64.b64encode(data).decode("ascii"), "size": size}

    return [
        SyncRoute(BEGIN_PATH, begin, max_body=4096),
        SyncRoute(PUT_PATH, put, max_body=PUT_MAX_BODY),
        SyncRoute(COMMIT_PATH, commit, max_body=COMMIT_MAX_BODY),
        SyncRoute(ESCROW_PATH, escrow, max_body=8192),
        SyncRoute(SETS_PATH, sets, max_body=4096),
        SyncRoute(OBJECTS_PATH, objects, max_body=4096),
        SyncRoute(GET_PATH, get, max_body=64 * 1024),
    ]


def _piece(body: object) -> tuple[str, int, bytes, bool, int]:
    """(object, offset, data, final, size) of one piece of a put."""
    if not isinstance(body, dict):
        raise bad_request("a piece is an object")
    obj, offset, final, size = (body.get(k) for k in ("object", "offset", "final", "size"))
    if not isinstance(obj, str) or not _count(offset) or not isinstance(final, bool):
        raise bad_request("put needs object, offset and final")
    if final and not _count(size):
        raise bad_request("a final piece says the object's size")
    data = _bytes(body.get("data"))
    if len(data) > PIECE:
        raise HubError(413, "too_large", f"a piece is at most {PIECE} bytes")
    assert isinstance(offset, int)
    return obj, offset, data, final, int(size or 0)


def _checked(check: Any, value: object) -> Any:
    try:
        return check(value)
    except BackupRefused as exc:
        raise bad_request(str(exc), exc.code) from None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _bytes(value: object) -> bytes:
    if not isinstance(value, str):
        raise bad_request("data is base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("data is not base64") from None
