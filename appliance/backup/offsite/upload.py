"""The box's offsite backup: the same backup as onsite, sent to the hub a piece at a time.

`create_offsite_backup` makes one backup set at the hub. It holds what an onsite backup
holds, in the same format (`appliance.backup.snapshot`), so the hub's folder of a box is
an ordinary backup target. What differs is the transport:

- **Incremental.** Blobs are content-addressed and already encrypted: the hub says which
  it holds (``begin``) and only the others are sent. Their sizes and hashes, which the
  manifest needs, come from the box's own record of what it sent
  (``DATA/backup/offsite-index.json`` and its journal), or, on a box restored from a
  backup (whose record is not in it), from the newest set's manifest at the hub.
- **Resumable.** Each object is encrypted once into a spool file (``DATA/backup/spool``)
  and sent in pieces of `PIECE` bytes; the hub appends a piece only at the offset it
  has reached and answers that offset, so after a cut the box goes on from there. A
  blob the hub holds whole is never sent again, by this run or the next. A run that
  gives up keeps its set's name and its database snapshots (``DATA/backup/outbox``), and
  the next run resumes that set rather than starting a new one.
- **Throttled.** A token bucket (`TokenBucket`) holds the average to ``rate`` bytes a
  second, and before each piece the backup waits (a bounded while) until no replicator
  has a request to the hub in flight and no mail waits to leave (`LinkShare`): mail and
  chat keep most of the link.
- **Escrowed.** When the hub does not yet hold this box's backup key, the key is wrapped
  to the hub's escrow public key (`appliance.backup.escrow`) and sent first.

Consistency is the onsite backup's: blobs before and after the databases' snapshots.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from appliance.backup.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    encrypt_bytes,
    encrypt_stream,
    ensure_backup_key,
    key_id,
)
from appliance.backup.escrow import wrap_key
from appliance.backup.offsite.protocol import (
    BEGIN_PATH,
    COMMIT_PATH,
    ESCROW_PATH,
    MAX_BATCH,
    PIECE,
    PUT_PATH,
    SMALL,
    STREAM,
)
from appliance.backup.service import read_state, record
from appliance.backup.snapshot import (
    MANIFEST,
    MANIFEST_FORMAT,
    BackupError,
    _blob_files,
    _copy_databases,
    _copy_plain_files,
    _identity,
)
from appliance.backup.throttle import TokenBucket
from appliance.identity import read_identity
from appliance.store.files import write_atomically
from appliance.sync.rounds import Rounds
from appliance.sync.share import LinkShare
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubCall, HubRefused, HubUnavailable

log = logging.getLogger("edgebox.backup.offsite")

BACKUP_DIR: Final = Path("backup")
INDEX_FILE: Final = "offsite-index.json"
JOURNAL_FILE: Final = "offsite-journal.jsonl"
SPOOL_DIR: Final = "spool"
OUTBOX_DIR: Final = "outbox"
#: The outbox's list of its files, written once the snapshot is complete.
OUTBOX_LIST: Final = "files.json"
#: Default rate limit: 2 Mbit/s, a fifth of a 10 Mbit/s provincial line.
DEFAULT_RATE: Final = 256 * 1024
#: Seconds a piece waits at most for the replicators to go quiet.
YIELD_LIMIT: Final = 10.0
#: What encryption adds to a small object (header, one tag; `appliance.backup.crypto`).
_SEAL_OVERHEAD: Final = HEADER_SIZE + TAG_SIZE
#: Tries of one request across cuts within a run, and the pause between them.
ATTEMPTS: Final = 4
PAUSE: Final = 15.0


@dataclass
class OffsiteReport:
    """What one offsite backup did."""

    name: str
    blobs: int = 0
    blobs_sent: int = 0
    files: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    bytes_total: int = 0
    escrowed: bool = False
    removed: tuple[str, ...] = ()
    seconds: float = 0.0


class _Sender:
    """Puts objects to the hub, piece by piece: throttled, yielding, resuming."""

    def __init__(
        self, hub: HubCall, name: str, rate: float, share: LinkShare | None,
        yield_limit: float, report: OffsiteReport,
    ) -> None:  # fmt: skip
        self.hub = hub
        self.name = name
        self.bucket = TokenBucket(rate, max(rate, PIECE))
        self.share = share
        self.yield_limit = yield_limit
        self.report = report

    async def call(self, path: str, body: JSON) -> JSON:
        """One request, tried again after a cut (every backup request is idempotent)."""
        for attempt in range(ATTEMPTS):
            try:
                return await self.hub(path, body)
            except HubUnavailable as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                log.info("offsite backup: %s; trying again in %.0f s", exc, PAUSE)
                await trio.sleep(PAUSE)
        raise AssertionError("unreachable")

    async def put_batch(self, pieces: list[tuple[str, bytes]]) -> list[tuple[int, bool]]:
        """Put small objects whole, in one request; return (offset, complete) of each."""
        size = sum(len(data) for _, data in pieces)
        wait = self.bucket.delay(trio.current_time(), size)
        if wait:
            await trio.sleep(wait)
        if self.share is not None:
            await self.share.wait_quiet(self.yield_limit)
        answer = await self.call(PUT_PATH, {"set": self.name, "pieces": [
            {"object": obj, "offset": 0, "data": base64.b64encode(data).decode("ascii"),
             "final": True, "size": len(data)} for obj, data in pieces
        ]})  # fmt: skip
        results = answer.get("pieces")
        if not isinstance(results, list) or len(results) != len(pieces):
            raise HubUnavailable(f"bad answer to a batched put: {answer!r}"[:300])
        return [(int(r.get("offset", -1)), r.get("complete") is True) for r in results]

    async def send(self, obj: str, spool: Path, size: int, start: int = 0) -> None:
        """Send the file *spool* as object *obj*, from offset *start* (the hub's)."""
        offset = start
        with spool.open("rb") as source:
            while True:
                source.seek(offset)
                data = source.read(PIECE)
                final = offset + len(data) >= size
                wait = self.bucket.delay(trio.current_time(), len(data))
                if wait:
                    await trio.sleep(wait)
                if self.share is not None:
                    await self.share.wait_quiet(self.yield_limit)
                answer = await self.call(PUT_PATH, {
                    "set": self.name, "object": obj, "offset": offset,
                    "data": base64.b64encode(data).decode("ascii"), "final": final,
                    "size": size,
                })  # fmt: skip
                reached, complete = answer.get("offset"), answer.get("complete")
                if not isinstance(reached, int) or not isinstance(complete, bool):
                    raise HubUnavailable(f"bad answer to a put: {answer!r}")
                if reached == offset + len(data):
                    self.report.bytes_sent += len(data)
                if complete:
                    return
                if reached > size:
                    raise HubUnavailable(f"{obj}: the hub holds {reached} of {size} bytes")
                # Written, or not (another offset): go on from where the hub is.
                offset = reached


async def create_offsite_backup(
    data_dir: Path,
    hub: HubCall,
    *,
    rate: float = DEFAULT_RATE,
    share: LinkShare | None = None,
    yield_limit: float = YIELD_LIMIT,
    now: float | None = None,
) -> OffsiteReport:
    """Make one backup set of *data_dir* at the hub *hub*; see the module docstring."""
    started = trio.current_time()
    keys_dir = data_dir / "keys"
    if not (data_dir / "config.json").exists() or not keys_dir.is_dir():
        raise BackupError(f"{data_dir} is not an edgebox data directory")
    key = await trio.to_thread.run_sync(ensure_backup_key, keys_dir)
    kid = key_id(key)
    work = data_dir / BACKUP_DIR
    with _exclusive(work / "offsite.lock"):
        state = read_state(data_dir)
        pending = state.get("offsite_pending")
        name = pending if isinstance(pending, str) else _set_name(now)
        record(data_dir, offsite_pending=name)
        report = OffsiteReport(name)
        sender = _Sender(hub, name, rate, share, yield_limit, report)
        try:
            begun = await sender.call(BEGIN_PATH, {"set": name, "key_id": kid})
        except HubRefused as exc:
            if exc.code != "set_exists":
                raise
            # Two backups in one second, or a set whose commit went through unheard.
            name = f"{_set_name(now)}-{secrets.token_hex(2)}"
            record(data_dir, offsite_pending=name)
            report.name = sender.name = name
            begun = await sender.call(BEGIN_PATH, {"set": name, "key_id": kid})
        held = set(_list(begun.get("blobs")))
        arrived: dict[str, int] = begun.get("files") or {}
        pending_objects: dict[str, int] = begun.get("pending") or {}
        report.escrowed = await _escrow(sender, data_dir, key, begun.get("escrow"))

        known = await trio.to_thread.run_sync(_known_blobs, data_dir, held)
        blobs: dict[str, dict[str, Any]] = {}
        journal = work / JOURNAL_FILE
        spool = work / SPOOL_DIR
        spool.mkdir(parents=True, exist_ok=True)
        # First blob pass: the bulk, before the databases' snapshots.
        await _send_blobs(data_dir, sender, key, known, blobs, spool, journal, pending_objects)
        outbox = work / OUTBOX_DIR / name
        files = await trio.to_thread.run_sync(_outbox, data_dir, outbox, key)
        # Second pass: mail and chat accepted while the first pass ran.
        await _send_blobs(data_dir, sender, key, known, blobs, spool, journal, pending_objects)
        for entry in files:
            obj = f"data/{entry['path']}"
            stored = outbox / obj
            size = stored.stat().st_size
            report.bytes_total += size
            if arrived.get(obj) == size:
                continue  # sent whole before a cut
            await sender.send(obj, stored, size, _resume_at(pending_objects, obj, size))
            report.files_sent += 1
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "created": int(time.time() if now is None else now),
            "box": _identity(data_dir),
            "key_id": kid,
            "files": files,
            "blobs": [{"id": i, **blobs[i]} for i in sorted(blobs)],
        }
        payload = json.dumps(manifest, ensure_ascii=False, sort_keys=True).encode("utf-8")
        sealed = encrypt_bytes(key, MANIFEST, payload)
        answer = await sender.call(COMMIT_PATH, {
            "set": name, "key_id": kid, "manifest": base64.b64encode(sealed).decode("ascii"),
            "blobs": sorted(blobs), "files": [f"data/{f['path']}" for f in files],
        })  # fmt: skip
        report.removed = tuple(_list(answer.get("removed")))
        report.files = len(files)
        report.blobs = len(blobs)
        await trio.to_thread.run_sync(_finish, data_dir, name, blobs)
    report.seconds = trio.current_time() - started
    return report


async def _escrow(sender: _Sender, data_dir: Path, key: bytes, escrow: object) -> bool:
    """Send the backup key wrapped to the hub's escrow key, if the hub lacks it."""
    if not isinstance(escrow, dict) or escrow.get("held") or not escrow.get("public_key"):
        return False
    identity = read_identity(data_dir)
    if identity is None:
        return False
    public = base64.b64decode(str(escrow["public_key"]))
    wrapped = wrap_key(public, identity.box_id, key)
    await sender.call(ESCROW_PATH, {"key_id": key_id(key), "wrapped": wrapped})
    record(data_dir, offsite_escrowed=key_id(key), offsite_escrowed_at=time.time())
    return True


def _known_blobs(data_dir: Path, held: set[str]) -> dict[str, dict[str, Any]]:
    """Size and hash of each blob the hub holds whole, for the manifest.

    From the box's record of what it sent; a blob the hub holds that the record lacks
    (a box restored from a backup, whose record is not in it, or a run cut between
    the hub's answer and the record) is hashed here from the box's own copy. A blob
    id names its content, so the hub's copy holds the same bytes; restore checks it.
    """
    known = {i: m for i, m in _read_index(data_dir / BACKUP_DIR).items() if i in held}
    for blob_id, path in _blob_files(data_dir / "blobs"):
        if blob_id in held and blob_id not in known:
            digest = hashlib.sha256()
            size = 0
            try:
                with path.open("rb") as f:
                    while chunk := f.read(1024 * 1024):
                        digest.update(chunk)
                        size += len(chunk)
            except FileNotFoundError:
                continue
            known[blob_id] = {"size": size, "sha256": digest.hexdigest()}
    return known


async def _send_blobs(
    data_dir: Path,
    sender: _Sender,
    key: bytes,
    known: dict[str, dict[str, Any]],
    done: dict[str, dict[str, Any]],
    spool: Path,
    journal: Path,
    pending: dict[str, int],
) -> None:
    listed = await trio.to_thread.run_sync(_unsent, data_dir, known, done)
    small: list[tuple[str, Path]] = []
    small_bytes = 0
    for blob_id, path, size in listed:
        if size <= SMALL:
            # A batch stays within one piece, the encryption's header and tag included.
            if small and (small_bytes + size + _SEAL_OVERHEAD > PIECE or len(small) >= MAX_BATCH):
                await _send_small(sender, key, small, done, journal)
                small, small_bytes = [], 0
            small.append((blob_id, path))
            small_bytes += size + _SEAL_OVERHEAD
            continue
        obj = f"blob/{blob_id}"
        prepared = await trio.to_thread.run_sync(_spool, key, obj, path, spool / blob_id)
        if prepared is None:
            continue  # freed since the listing (its message was deleted)
        meta, stored = prepared
        sender.report.bytes_total += stored
        await sender.send(obj, spool / blob_id, stored, _resume_at(pending, obj, stored))
        done[blob_id] = meta
        sender.report.blobs_sent += 1
        await trio.to_thread.run_sync(_journal, journal, [(blob_id, meta)], spool)
    if small:
        await _send_small(sender, key, small, done, journal)


def _unsent(
    data_dir: Path, known: dict[str, dict[str, Any]], done: dict[str, dict[str, Any]]
) -> list[tuple[str, Path, int]]:
    """The blobs still to send, with their sizes; those the hub holds join *done*."""
    found = []
    for blob_id, path in _blob_files(data_dir / "blobs"):
        if blob_id in done:
            continue
        if blob_id in known:
            done[blob_id] = known[blob_id]
            continue
        try:
            found.append((blob_id, path, path.stat().st_size))
        except FileNotFoundError:
            continue
    return found


async def _send_small(
    sender: _Sender,
    key: bytes,
    batch: list[tuple[str, Path]],
    done: dict[str, dict[str, Any]],
    journal: Path,
) -> None:
    """Send small blobs many to a request, each whole, encrypted in memory."""
    sealed = await trio.to_thread.run_sync(_seal_small, key, batch)
    if not sealed:
        return
    size = sum(len(data) for _, data, _ in sealed)
    sender.report.bytes_total += size
    answer = await sender.put_batch([(f"blob/{b}", data) for b, data, _ in sealed])
    for (blob_id, data, meta), (reached, complete) in zip(sealed, answer, strict=True):
        if not complete or reached != len(data):
            raise HubUnavailable(f"blob/{blob_id}: the hub holds {reached} of {len(data)} bytes")
        done[blob_id] = meta
    sender.report.blobs_sent += len(sealed)
    sender.report.bytes_sent += size
    await trio.to_thread.run_sync(_journal, journal, [(b, m) for b, _, m in sealed], None)


def _seal_small(
    key: bytes, batch: list[tuple[str, Path]]
) -> list[tuple[str, bytes, dict[str, Any]]]:
    sealed = []
    for blob_id, path in batch:
        out = io.BytesIO()
        try:
            with path.open("rb") as plain:
                size, digest = encrypt_stream(key, f"blob/{blob_id}", plain, out)
        except FileNotFoundError:
            continue  # freed since the listing
        sealed.append((blob_id, out.getvalue(), {"size": size, "sha256": digest}))
    return sealed


def _spool(key: bytes, obj: str, source: Path, dest: Path) -> tuple[dict[str, Any], int] | None:
    """Encrypt *source* into the spool file *dest* once; return (manifest entry, size)."""
    meta_path = dest.with_name(dest.name + ".json")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        if dest.stat().st_size == meta["stored"]:
            return {"size": meta["size"], "sha256": meta["sha256"]}, int(meta["stored"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        with source.open("rb") as plain, tmp.open("xb") as out:
            size, digest = encrypt_stream(key, obj, plain, out)
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, dest)
    stored = dest.stat().st_size
    meta_path.write_text(json.dumps({"size": size, "sha256": digest, "stored": stored}))
    return {"size": size, "sha256": digest}, stored


def _resume_at(pending: dict[str, int], obj: str, size: int) -> int:
    """The offset to go on from: what the hub holds of an upload begun in an earlier run.

    Only valid with the same spool file, which `_spool` keeps until the hub has the
    object whole; a spool made anew starts at 0 and the hub starts the object afresh.
    """
    reached = pending.pop(obj, 0)
    return reached if isinstance(reached, int) and 0 < reached < size else 0


def _journal(journal: Path, sent: list[tuple[str, dict[str, Any]]], spool: Path | None) -> None:
    # The record of blobs the hub holds whole, appended before their spools go: a run
    # cut off after this knows their sizes and hashes without sending them again. Not
    # fsynced: a line lost to a power cut only means the blob is hashed from the box's
    # own copy next time (`_known_blobs`), never sent again.
    with journal.open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps({"id": b, **meta}) + "\n" for b, meta in sent))
    if spool is not None:
        for blob_id, _ in sent:
            (spool / blob_id).unlink(missing_ok=True)
            (spool / f"{blob_id}.json").unlink(missing_ok=True)


def _read_index(work: Path) -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    try:
        loaded = json.loads((work / INDEX_FILE).read_text("utf-8"))
        if isinstance(loaded, dict):
            index.update(loaded)
    except (OSError, ValueError):
        pass
    try:
        with (work / JOURNAL_FILE).open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                    index[entry["id"]] = {"size": entry["size"], "sha256": entry["sha256"]}
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a power loss
    except OSError:
        pass
    return index


def _outbox(data_dir: Path, outbox: Path, key: bytes) -> list[dict[str, Any]]:
    """The set's encrypted database snapshots and files: kept from a cut run, else made."""
    listing = outbox / OUTBOX_LIST
    try:
        files = json.loads(listing.read_text("utf-8"))
        if isinstance(files, list) and all((outbox / "data" / f["path"]).is_file() for f in files):
            # The same snapshot a cut run began to send: the hub may hold part of it.
            return files
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir(parents=True)
    made = _copy_databases(data_dir, outbox, key)
    made += _copy_plain_files(data_dir, outbox, key)
    write_atomically(listing, json.dumps(made).encode("utf-8"))
    return made


def _finish(data_dir: Path, name: str, blobs: dict[str, dict[str, Any]]) -> None:
    work = data_dir / BACKUP_DIR
    write_atomically(work / INDEX_FILE, json.dumps(blobs, sort_keys=True).encode("utf-8"))
    (work / JOURNAL_FILE).unlink(missing_ok=True)
    shutil.rmtree(work / OUTBOX_DIR, ignore_errors=True)
    shutil.rmtree(work / SPOOL_DIR, ignore_errors=True)
    record(data_dir, offsite_pending=None, offsite_last_good=time.time(),
           offsite_last_name=name, offsite_last_error=None)  # fmt: skip


def _set_name(now: float | None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError("another offsite backup is running") from None
        yield
    finally:
        os.close(fd)


class OffsiteBackup:
    """Back the box up to its hub once a day (a supervised service of an enrolled box)."""

    name = "backup-offsite"

    def __init__(
        self,
        data_dir: Path,
        hub: HubCall,
        status: SyncStatus,
        *,
        rate: float = DEFAULT_RATE,
        share: LinkShare | None = None,
        interval: float = 24 * 3600.0,
        retry: float = 3600.0,
    ) -> None:
        self.data_dir = data_dir
        self.hub = hub
        self.status = status
        self.rate = rate
        self.share = share
        self.interval = interval
        self.retry = retry
        #: Whether the last round failed: the next waits `retry`, not the day.
        self._failed = False
        self.rounds = Rounds(self.name, self._until_next)

    def wake(self) -> None:
        """The link came back: a backup that failed for the cut need not wait its hour."""
        self.rounds.wake()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        await self.rounds.run(self.backup_round)

    def _until_due(self) -> float:
        """Seconds until a day has passed since the last good backup (<= 0: due now)."""
        last = read_state(self.data_dir).get("offsite_last_good")
        return self.interval - (time.time() - last) if isinstance(last, (int, float)) else 0.0

    def _until_next(self) -> float:
        # Woken before a backup is due, the round only looks and waits again.
        return self.retry if self._failed else self._until_due()

    async def backup_round(self) -> None:
        """Back up to the hub if one is due; a failure is recorded and tried again later."""
        self._failed = False
        if self._until_due() > 0:
            return
        try:
            report = await create_offsite_backup(
                self.data_dir, self.hub, rate=self.rate, share=self.share
            )
        except Exception as exc:  # a failed backup must not stop the box
            # The set is resumed next time; the health check reports the error.
            message = f"{type(exc).__name__}: {exc}"
            record(self.data_dir, offsite_last_error=message, offsite_last_error_at=time.time())
            self.status.failure(STREAM, message)
            log.error("offsite backup failed: %s; trying again in %.0f s", exc, self.retry)
            self._failed = True
            return
        self.status.success(STREAM, pushed=report.blobs_sent + report.files_sent)
        log.info(
            "offsite backup %s: %d files (%d sent), %d blobs (%d sent), %.1f MB sent in %.0f s",
            report.name, report.files, report.files_sent, report.blobs, report.blobs_sent,
            report.bytes_sent / 1e6, report.seconds,
        )  # fmt: skip
