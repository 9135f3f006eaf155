"""Directory replication, the box's side: its own users up, everyone else's down.

Each box holds the whole directory it needs, so sign-in, delivery, the address book
and chat keep working through a days-long cut (issue 5, "Directory"). Two durable
cursors in the directory database (``sync_cursors``):

- ``directory.push``: the last change number (`users.change_seq`) of this box's own
  agency that the hub has acknowledged. The box sends the changes after it in batches,
  oldest first, and moves the cursor only after the hub answered, i.e. after the hub
  committed them. A batch sent twice (a cut after the hub's commit, before its answer)
  is applied twice with the effect of once.
- ``directory.pull``: the last hub change number applied here. The box asks for the
  changes after it and stores each batch *and* the new cursor in one transaction, so a
  crash never skips or repeats a batch.

Only what the address book and chat show is sent: names, rank, unit, position, phone,
disabled. Never password hashes, quotas or service accounts. Users pulled from the hub
become users of remote agencies here (`Directory.apply_entries`): visible, but they
cannot sign in here and mail to them goes out through the central relay.

Wire format (``POST /sync/v1/directory/push`` and ``/pull``, see `hub.directory`)::

    push  → {"entries": [ENTRY, ...]}              ← {"accepted": N}
    pull  → {"after": CURSOR, "limit": N}           ← {"entries": [...], "cursor": C, "more": B}
    ENTRY = {"seq", "address", "agency": {"domain", "name_th", "name_en"}, "name_th",
             "name_en", "position", "rank", "unit", "phone", "disabled"}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import trio

from appliance.directory import Directory, DirectoryEntry, DirectoryError
from appliance.sync.clock import Clock
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubCall, HubRefused, HubUnavailable

log = logging.getLogger("edgebox.sync.directory")

PUSH_PATH: Final = "/sync/v1/directory/push"
PULL_PATH: Final = "/sync/v1/directory/pull"
PUSH_CURSOR: Final = "directory.push"
PULL_CURSOR: Final = "directory.pull"
STREAM: Final = "directory"

#: Users per request: a few hundred rows are a few tens of KiB, quick even on a slow link.
BATCH: Final = 200
#: Largest batch a hub hands out or accepts.
MAX_BATCH: Final = 500
#: Batches per round and direction; a bigger backlog goes on in the next round.
MAX_BATCHES: Final = 1000


class DirectoryReplicator:
    """The box's directory-sync service: a round now, then every *interval* seconds."""

    name = "directory-sync"

    def __init__(
        self,
        directory: Directory,
        domain: str,
        hub: HubCall,
        status: SyncStatus,
        clock: Clock,
        *,
        interval: float = 60.0,
        batch: int = BATCH,
    ) -> None:
        self.directory = directory
        #: The agency the hub knows this box by (its certificate's).
        self.domain = domain
        self.hub = hub
        self.status = status
        self.clock = clock
        self.interval = interval
        self.batch = max(1, min(batch, MAX_BATCH))
        self._wake = trio.Event()

    def wake(self) -> None:
        """Start a round now (the link came back)."""
        self._wake.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            # Reset before the round: a wake during it (the link came back and cut
            # its dead wait short) starts the next round at once.
            self._wake = trio.Event()
            await self.sync_round()
            with trio.CancelScope() as pause:

                async def woken(scope: trio.CancelScope = pause) -> None:
                    await self._wake.wait()
                    scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(woken)
                    await self.clock.sleep(self.interval)
                    nursery.cancel_scope.cancel()

    async def sync_round(self) -> bool:
        """Push, then pull; report to `SyncStatus`; return whether the round succeeded."""
        try:
            pushed = await self.push()
            pulled = await self.pull()
        except (HubUnavailable, HubRefused) as exc:
            self.status.failure(STREAM, f"{type(exc).__name__}: {exc}")
            log.info("directory sync: %s", exc)
            return False
        self.status.success(STREAM, pushed=pushed, pulled=pulled)
        return True

    async def push(self) -> int:
        """Send this box's changed users after the push cursor; return how many."""
        directory = self.directory
        after = await directory.sync_cursor(PUSH_CURSOR)
        sent = 0
        for _ in range(MAX_BATCHES):
            entries = await directory.entries_after(after, self.batch, agency=self.domain)
            if not entries:
                break
            await self.hub(PUSH_PATH, {"entries": [entry_to_json(e) for e in entries]})
            # The hub answered, so it committed: now the cursor may move.
            after = entries[-1].seq
            await directory.set_sync_cursor(PUSH_CURSOR, after)
            sent += len(entries)
        return sent

    async def pull(self) -> int:
        """Apply the hub's changed users after the pull cursor; return how many."""
        directory = self.directory
        after = await directory.sync_cursor(PULL_CURSOR)
        applied = 0
        for _ in range(MAX_BATCHES):
            answer = await self.hub(PULL_PATH, {"after": after, "limit": self.batch})
            cursor, entries, more = _pull_answer(answer, after)
            await self._apply(entries, cursor)
            applied += len(entries)
            after = cursor
            if not more:
                break
        return applied

    async def _apply(self, entries: Sequence[DirectoryEntry], cursor: int) -> None:
        directory = self.directory
        try:
            await directory.apply_entries(entries, remote=True, cursor=(PULL_CURSOR, cursor))
            return
        except DirectoryError:
            pass
        # One entry the directory's rules refuse must not stop the rest for ever: the
        # others go in one by one, the bad ones are logged and passed over.
        for entry in entries:
            try:
                await directory.apply_entries([entry], remote=True)
            except DirectoryError as exc:
                log.warning("directory sync: skipped an entry from the hub: %s", exc)
        await directory.set_sync_cursor(PULL_CURSOR, cursor)


def _pull_answer(answer: JSON, after: int) -> tuple[int, list[DirectoryEntry], bool]:
    try:
        cursor, raw, more = answer["cursor"], answer["entries"], answer.get("more", False)
        if not _count(cursor) or cursor < after or not isinstance(raw, list):
            raise ValueError("bad cursor or entries")
    except (KeyError, TypeError, ValueError) as exc:
        raise HubUnavailable(f"{PULL_PATH}: malformed answer ({exc})") from None
    entries = []
    for item in raw:
        try:
            entries.append(entry_from_json(item))
        except ValueError as exc:
            log.warning("directory sync: skipped a malformed entry from the hub: %s", exc)
    return cursor, entries, more is True


# --- the wire form of an entry (shared with the hub's routes) -------------------------


def entry_to_json(entry: DirectoryEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "address": entry.address,
        "agency": {
            "domain": entry.agency_domain,
            "name_th": entry.agency_name_th,
            "name_en": entry.agency_name_en,
        },
        "name_th": entry.name_th,
        "name_en": entry.name_en,
        "position": entry.position,
        "rank": entry.rank,
        "unit": entry.unit,
        "phone": entry.phone,
        "disabled": entry.disabled,
    }


def entry_from_json(value: Any) -> DirectoryEntry:
    """Parse one wire entry; ValueError naming the field that is wrong."""
    if not isinstance(value, dict):
        raise ValueError("an entry must be an object")
    agency = value.get("agency")
    if not isinstance(agency, dict):
        raise ValueError("agency must be an object")
    seq: Any = value.get("seq")
    rank: Any = value.get("rank")
    disabled: Any = value.get("disabled")
    if not _count(seq):
        raise ValueError("seq must be a whole number >= 0")
    if not _count(rank):
        raise ValueError("rank must be a whole number >= 0")
    if not isinstance(disabled, bool):
        raise ValueError("disabled must be true or false")
    return DirectoryEntry(
        seq=seq,
        address=_text(value, "address", required=True),
        agency_domain=_text(agency, "domain", required=True),
        agency_name_th=_text(agency, "name_th"),
        agency_name_en=_text(agency, "name_en"),
        name_th=_text(value, "name_th", required=True),
        name_en=_text(value, "name_en"),
        position=_text(value, "position"),
        rank=rank,
        unit=_text(value, "unit"),
        phone=_text(value, "phone"),
        disabled=disabled,
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _text(value: dict[str, Any], name: str, *, required: bool = False) -> Any:
    found = value.get(name)
    if found is None and not required:
        return None
    if not isinstance(found, str) or len(found) > 1024:
        raise ValueError(f"{name} must be text")
    return found
