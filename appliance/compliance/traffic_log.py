"""The traffic log: who sent what to whom, when, from which address — kept 90 days.

Why: the Computer Crime Act B.E. 2550 (2007) makes a service provider keep *traffic
data* — sender, recipient, time, source IP address — for at least 90 days, and
REQUIREMENTS.md §2 asks for exactly that, in log files that "other systems can read
easily". So the log is plain JSON Lines, UTF-8 with Thai left readable, one file per UTC
day under ``log/traffic/``::

    traffic-2026-11-22.jsonl    {"time": "2026-11-22T03:04:05.000000Z", "seq": 1, ...
    anchor.json                 where verification starts once old days are pruned

Tamper evidence: every line carries ``seq`` (1, 2, ... within its file) and ``chain``,
the hex SHA-256 of the previous line's ``chain`` (64 ASCII hex digits) followed by this
line's *canonical JSON* without ``chain`` (keys sorted, separators ``,`` and ``:``, UTF-8,
non-ASCII not escaped). The first line of a day chains from the last line of the
previous day file, the very first line from 64 zeros, and after `TrafficLog.prune` from
the value kept in ``anchor.json``. Any edited, deleted, inserted or reordered line, a
cut file or a missing day file therefore breaks a link that `verify` names by file and
line; anyone can re-check the chain with ``sha256sum``-level tools.

Durability: `TrafficLog.append` returns only after the line is fsynced, so "logged" means
"on disk", like the 250 the SMTP server answers right after it (DESIGN.md principle 3).
Appends from many tasks at once share one write and one fsync (group commit). Writes
use O_APPEND under an flock, so the server and the ``edgebox`` CLI may append at once. A
line torn by a crash is cut off at the next write and the cut recorded as a
``log-recovered`` record.

What this is not:

- Not a mail archive: a record never holds a password, a subject or message content.
- Not proof against someone with root on the box: they can rewrite every file and
  recompute every link, and they can drop lines from the *end* of the newest file
  without breaking any link. Only a copy of the chain head kept elsewhere
  (`VerifyResult.head`) shows that; sending it off the box is the caller's job.
- Not a search index: `iter_records` reads files front to back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import trio

from appliance.store.files import fsync_dir, write_atomically

#: The legal minimum retention, in days (Computer Crime Act 2007, section 26).
MIN_RETENTION_DAYS = 90

#: Where the chain starts when nothing has been pruned yet.
GENESIS = "0" * 64

ANCHOR_NAME = "anchor.json"
LOCK_NAME = ".lock"

#: Log files are personal data (REQUIREMENTS.md §3, privacy): readable by the owner and
#: its group (a log shipper, an auditor's account), never by everyone.
FILE_MODE = 0o640
DIR_MODE = 0o750

_FILE_RE = re.compile(r"traffic-(\d{4}-\d{2}-\d{2})\.jsonl")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK = 64 * 1024


def file_name(day: date) -> str:
    """Return the name of the log file that holds *day* (UTC)."""
    return f"traffic-{day.isoformat()}.jsonl"


class TrafficLogError(Exception):
    """The log on disk cannot be continued (its last line is not a record of ours)."""


def _clean_text(text: str) -> str:
    # A client may hand us bytes that are not UTF-8 (decoded with surrogateescape by the
    # SMTP server). Such text cannot be written as UTF-8; spell the odd characters out
    # (\udcff) rather than lose the record or the whole batch it travels in.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True)
class TrafficRecord:
    """One traffic-data event: the Act's sender, recipient, time and IP, plus context.

    There is deliberately no field for a password, subject or body: what the law asks
    for is *traffic* data, and what is not logged cannot leak.
    """

    #: When it happened; any timezone-aware datetime, stored in UTC.
    time: datetime
    #: "smtp-mx", "smtp-submission", "imap", "chat", "web", ...
    service: str
    #: "accepted", "rejected", "auth-ok", "auth-failed", "login", "log-recovered", ...
    event: str
    #: The client's IP address, normalised; None only for the box's own events.
    client_ip: str | None
    #: Envelope sender (MAIL FROM) or chat sender.
    sender: str | None = None
    #: Envelope recipients (RCPT TO) or chat room members addressed.
    recipients: tuple[str, ...] = ()
    #: The authenticated user, if any.
    user: str | None = None
    #: The Message-ID or the box's queue id.
    message_id: str | None = None
    #: Message size in bytes.
    size: int | None = None
    #: Short outcome, e.g. "250 2.0.0" or "550 5.1.1".
    result: str = ""

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("TrafficRecord.time must be timezone-aware")
        object.__setattr__(self, "time", self.time.astimezone(UTC))
        if not self.service or not self.event:
            raise ValueError("TrafficRecord needs a service and an event")
        if self.client_ip is not None:
            # Normalised so that a search for "2001:db8::1" finds every spelling of it.
            object.__setattr__(self, "client_ip", str(ipaddress.ip_address(self.client_ip)))
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0
        ):
            raise ValueError(f"TrafficRecord.size must be a byte count, not {self.size!r}")
        # Accept any iterable of addresses from callers, but store the immutable tuple.
        object.__setattr__(self, "recipients", tuple(_clean_text(r) for r in self.recipients))
        for name in ("service", "event", "sender", "user", "message_id", "result"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _clean_text(value))


@dataclass(frozen=True)
class VerifyResult:
    """What `verify` found: ok, how much it checked, and the first problem if any."""

    ok: bool
    files: int
    records: int
    #: "traffic-2026-11-20.jsonl line 7: ..." or None when ok.
    problem: str | None
    #: The chain value of the last good line; compare with a copy kept off the box to
    #: detect lines cut from the end of the newest file.
    head: str = GENESIS


# --- the line format --------------------------------------------------------------------


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record_object(record: TrafficRecord, seq: int) -> dict[str, Any]:
    # Key order is for the human reader (time first); the hash uses sorted keys.
    return {
        "time": _format_time(record.time),
        "seq": seq,
        "service": record.service,
        "event": record.event,
        "client_ip": record.client_ip,
        "user": record.user,
        "sender": record.sender,
        "recipients": list(record.recipients),
        "message_id": record.message_id,
        "size": record.size,
        "result": record.result,
    }


def _canonical(obj: dict[str, Any]) -> bytes:
    body = {key: value for key, value in obj.items() if key != "chain"}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def chain_value(previous: str, obj: dict[str, Any]) -> str:
    """Return the chain value of line *obj* that follows a line whose chain is *previous*."""
    return hashlib.sha256(previous.encode("ascii") + _canonical(obj)).hexdigest()


def _encode_line(record: TrafficRecord, seq: int, previous: str) -> tuple[bytes, str]:
    obj = _record_object(record, seq)
    obj["chain"] = chain_value(previous, obj)
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n", obj["chain"]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key reads differently to a first-wins and a last-wins parser; a line we
    # wrote never has one, so one that does was edited.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"repeated field {key!r}")
        obj[key] = value
    return obj


def _parse_line(raw: bytes) -> dict[str, Any]:
    """Parse one line of a log file; raise ValueError if it is not one of our lines."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"not a JSON line ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    seq, chain = obj.get("seq"), obj.get("chain")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError("no seq number")
    if not isinstance(chain, str) or not _HEX64_RE.fullmatch(chain):
        raise ValueError("no chain value")
    return obj


def _record_from_object(obj: dict[str, Any]) -> TrafficRecord:
    try:
        return TrafficRecord(
            time=datetime.fromisoformat(obj["time"]),
            service=obj["service"],
            event=obj["event"],
            client_ip=obj["client_ip"],
            sender=obj["sender"],
            recipients=tuple(obj["recipients"]),
            user=obj["user"],
            message_id=obj["message_id"],
            size=obj["size"],
            result=obj["result"],
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a traffic record ({exc!r})") from None


# --- files on disk ----------------------------------------------------------------------


def _day_files(directory: Path) -> list[tuple[date, Path]]:
    """Return the day files in *directory*, oldest first; other files are ignored."""
    found: list[tuple[date, Path]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _FILE_RE.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            day = date.fromisoformat(match.group(1))
        except ValueError:
            continue
        found.append((day, Path(entry.path)))
    found.sort()
    return found


@dataclass(frozen=True)
class _Anchor:
    day: date
    file: str
    chain: str


def _read_anchor(directory: Path) -> _Anchor | None:
    """Return the anchor left by pruning, None if none; ValueError if it is damaged."""
    try:
        raw = (directory / ANCHOR_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
        name, chain = obj["file"], obj["chain"]
        match = _FILE_RE.fullmatch(name)
        if match is None or not _HEX64_RE.fullmatch(chain):
            raise ValueError("bad file name or chain value")
        return _Anchor(date.fromisoformat(match.group(1)), name, chain)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ANCHOR_NAME} is damaged ({exc})") from None


def _rfind_newline(handle: BinaryIO, limit: int) -> int:
    """Return the offset of the last b"\\n" before *limit*, or -1."""
    end = limit
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        handle.seek(start)
        found = handle.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


def _scan_tail(path: Path) -> tuple[int, int, bytes | None]:
    """Return (file size, size of its complete lines, last complete line or None)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        last_newline = _rfind_newline(handle, size)
        if last_newline < 0:
            return size, 0, None
        start = _rfind_newline(handle, last_newline) + 1
        handle.seek(start)
        return size, last_newline + 1, handle.read(last_newline - start)


def _last_chain(files: list[tuple[date, Path]], anchor: _Anchor | None) -> str:
    """Return the chain value the next line after *files* must follow."""
    for _day, path in reversed(files):
        _size, _complete, last = _scan_tail(path)
        if last is not None:
            try:
                return str(_parse_line(last)["chain"])
            except ValueError as exc:
                raise TrafficLogError(f"{path.name}: last line unreadable: {exc}") from None
        # An empty file (created, then a crash before the first line): look further back.
    return anchor.chain if anchor is not None else GENESIS


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # flock, not only a thread lock: the server and an `edgebox` CLI command are two
    # processes appending to the same chain, and each must see the other's last line.
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@dataclass
class _Tail:
    """Where the next line goes: what the writer knows about the end of the chain."""

    #: The newest day file and its day, or None before the first file (after pruning).
    path: Path | None
    day: date | None
    #: seq and chain of the last complete line in *path* (0 / the previous chain if none).
    seq: int
    chain: str
    #: No file may be written for a day at or before the anchor's (verify skips those).
    floor: date | None
    #: (name, size, inode) of the newest file when last seen: if it differs at the next
    #: write, another process wrote or something cut the file, so read the tail again.
    key: tuple[str, int, int] | None


def _newest_key(directory: Path) -> tuple[str, int, int] | None:
    files = _day_files(directory)
    if not files:
        return None
    path = files[-1][1]
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (path.name, st.st_size, st.st_ino)


@dataclass(eq=False)
class _Pending:
    record: TrafficRecord
    done: bool = False
    error: BaseException | None = None


# --- the writer -------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TrafficLog:
    """The traffic log in *directory*: append records, prune old days.

    One object per process is enough; it is safe to share between trio tasks (`append`)
    and threads (`append_sync`), and other processes may append to the same directory.
    """

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: int = MIN_RETENTION_DAYS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if retention_days < MIN_RETENTION_DAYS:
            raise ValueError(
                f"traffic data must be kept at least {MIN_RETENTION_DAYS} days "
                f"(Computer Crime Act 2007); got {retention_days}"
            )
        self.directory = directory
        self.retention_days = retention_days
        self._clock = clock if clock is not None else _utc_now
        self._thread_lock = threading.Lock()
        self._batch_lock = trio.Lock()
        self._queue: list[_Pending] = []
        self._tail: _Tail | None = None
        #: A "log-recovered" record waiting to be written first by the next batch.
        self._recovery: TrafficRecord | None = None
        #: Writes (each one fsync) and records since creation: their ratio shows how
        #: well group commit batches, for `edgebox status` and the benchmarks.
        self.writes = 0
        self.records = 0
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    async def append(self, record: TrafficRecord) -> None:
        """Write *record* in the next group write; return once it is fsynced."""
        pending = _Pending(record)
        self._queue.append(pending)
        # Shielded: once queued, the record is written whatever happens to the caller,
        # and the caller must learn whether it was, or it could not tell an SMTP client
        # "accepted" truthfully. The wait is bounded by one write of the batch ahead.
        with trio.CancelScope(shield=True):
            async with self._batch_lock:
                # Whoever holds the lock writes everything queued meanwhile, so tasks
                # arriving during one fsync share the next one.
                if not pending.done:
                    batch, self._queue = self._queue, []
                    try:
                        await trio.to_thread.run_sync(
                            self._write_batch, [item.record for item in batch]
                        )
                    except BaseException as exc:
                        for item in batch:
                            item.error = exc
                    for item in batch:
                        item.done = True
        if pending.error is not None:
            raise pending.error

    def append_sync(self, record: TrafficRecord) -> None:
        """Write *record* now and fsync it; for the CLI and other non-trio callers."""
        self._write_batch([record])

    def prune(self, now: datetime | None = None) -> list[Path]:
        """Delete day files older than the retention period; return the deleted paths.

        A day file is deleted only once its *last* possible record is older than
        ``retention_days``. Before anything is deleted, the chain value of the newest
        doomed file goes to ``anchor.json``, so `verify` still checks the survivors.
        """
        moment = (now if now is not None else self._clock()).astimezone(UTC)
        cutoff = moment.date() - timedelta(days=self.retention_days)
        with self._thread_lock, _locked(self.directory):
            anchor = _read_anchor(self.directory)
            doomed = [(day, path) for day, path in _day_files(self.directory) if day < cutoff]
            if not doomed:
                return []
            newest_day, newest_path = doomed[-1]
            if anchor is None or newest_day > anchor.day:
                live = [item for item in doomed if anchor is None or item[0] > anchor.day]
                payload = {
                    "file": newest_path.name,
                    "chain": _last_chain(live, anchor),
                    "pruned_at": _format_time(moment),
                    "note": "chain value of the last line of the newest pruned day file",
                }
                # The anchor is durable before any file goes: a crash in between leaves
                # old files that verify skips and the next prune deletes.
                write_atomically(
                    self.directory / ANCHOR_NAME,
                    json.dumps(payload, indent=2).encode() + b"\n",
                    mode=FILE_MODE,
                )
            for _day, path in doomed:
                path.unlink(missing_ok=True)
            fsync_dir(self.directory)
            self._tail = None  # re-read the end of the chain at the next write
        return [path for _day, path in doomed]

    # -- internals, run in a worker thread ---------------------------------------------

    def _write_batch(self, records: list[TrafficRecord]) -> None:
        with self._thread_lock, _locked(self.directory):
            tail = self._tail
            if tail is None or tail.key != _newest_key(self.directory):
                tail = self._load_tail()
            batch = [self._recovery, *records] if self._recovery is not None else records

            today = self._clock().astimezone(UTC).date()
            # Never write to a day before the newest file (the clock stepped back): the
            # chain runs through files in name order, so it must only ever grow forward.
            day = max(d for d in (today, tail.day, tail.floor) if d is not None)
            if tail.path is not None and day == tail.day:
                path, seq = tail.path, tail.seq
            else:
                path, seq = self.directory / file_name(day), 0
            chain = tail.chain
            lines = []
            for record in batch:
                seq += 1
                line, chain = _encode_line(record, seq, chain)
                lines.append(line)
            data = b"".join(lines)

            # Until this write is known complete, forget the tail: a failed or short
            # write may leave a torn line, which the next batch re-reads and cuts off.
            self._tail = None
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
            self._recovery = None
            self._tail = _Tail(
                path, day, seq, chain, tail.floor, (path.name, st.st_size, st.st_ino)
            )
            self.writes += 1
            self.records += len(batch)

    def _load_tail(self) -> _Tail:
        """Read where the chain ends on disk, cutting off a line torn by a crash."""
        anchor = _read_anchor(self.directory)
        floor = anchor.day + timedelta(days=1) if anchor is not None else None
        files = [
            item for item in _day_files(self.directory) if anchor is None or item[0] > anchor.day
        ]
        if not files:
            return _Tail(None, None, 0, _last_chain([], anchor), floor, None)
        day, path = files[-1]
        size, complete, last = _scan_tail(path)
        if complete < size:
            # A crash mid-write left bytes with no newline. They are not a record anyone
            # was told is logged (append returns only after the whole batch is
            # fsynced), so cut them off and say so in the log itself.
            with path.open("r+b") as handle:
                handle.truncate(complete)
                os.fsync(handle.fileno())
            self._recovery = TrafficRecord(
                time=self._clock(),
                service="traffic-log",
                event="log-recovered",
                client_ip=None,
                result=f"cut {size - complete} bytes of a torn last line from {path.name}",
            )
        if last is None:
            seq, chain = 0, _last_chain(files[:-1], anchor)
        else:
            try:
                obj = _parse_line(last)
            except ValueError as exc:
                raise TrafficLogError(f"{path.name}: last line unreadable: {exc}") from None
            seq, chain = obj["seq"], obj["chain"]
        st = path.stat()
        return _Tail(path, day, seq, chain, floor, (path.name, st.st_size, st.st_ino))


# --- reading and checking ---------------------------------------------------------------


def verify(directory: Path) -> VerifyResult:
    """Check every link of the chain, from the anchor (or the start) to the last line."""
    files = records = 0
    try:
        anchor = _read_anchor(directory)
    except ValueError as exc:
        return VerifyResult(False, 0, 0, str(exc), GENESIS)
    previous = anchor.chain if anchor is not None else GENESIS
    source = f"{ANCHOR_NAME} ({anchor.file})" if anchor is not None else "the start of the log"

    def fail(problem: str) -> VerifyResult:
        return VerifyResult(False, files, records, problem, previous)

    for day, path in _day_files(directory):
        if anchor is not None and day <= anchor.day:
            continue  # pruned already; only the deletion was interrupted
        files += 1
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                where = f"{path.name} line {number}"
                if not raw.endswith(b"\n"):
                    return fail(f"{where}: incomplete line (cut short, or torn by a crash)")
                try:
                    obj = _parse_line(raw)
                    expected = chain_value(previous, obj)
                except ValueError as exc:
                    return fail(f"{where}: {exc}")
                if obj["seq"] != number:
                    return fail(
                        f"{where}: seq {obj['seq']}, expected {number} "
                        "(a line was deleted, inserted or moved)"
                    )
                if obj["chain"] != expected:
                    if number == 1:
                        return fail(
                            f"{where}: chain does not follow {source} (a day file or lines "
                            "before it were deleted or cut, or the anchor was changed)"
                        )
                    return fail(f"{where}: chain does not match (this line was edited)")
                previous = obj["chain"]
                source = where
                records += 1
    return VerifyResult(True, files, records, None, previous)


def iter_records(
    directory: Path, since: datetime | None = None, until: datetime | None = None
) -> Iterator[TrafficRecord]:
    """Yield the records with ``since <= time < until``, in the order they were logged.

    Reading does not check the chain (that is `verify`'s job); a line that is not a
    record raises ValueError naming it, except an unfinished last line, which a crash
    leaves and the next write cuts off.
    """
    for day, path in _day_files(directory):
        # A record is written on or after its own time, so it is never in an earlier
        # day's file; it may be in a later one (written just after midnight).
        if since is not None and day < since.astimezone(UTC).date():
            continue
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    record = _record_from_object(_parse_line(raw))
                except ValueError as exc:
                    raise ValueError(f"{path.name} line {number}: {exc}") from None
                if since is not None and record.time < since:
                    continue
                if until is not None and record.time >= until:
                    continue
                yield record


__all__ = [
    "GENESIS",
    "MIN_RETENTION_DAYS",
    "TrafficLog",
    "TrafficLogError",
    "TrafficRecord",
    "VerifyResult",
    "chain_value",
    "file_name",
    "iter_records",
    "verify",
]
