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

The wire format, and the check of an entry, are the pure codec
`appliance.sync.codec.directory`; the hub's side is `appliance.sync.hub.directory`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import trio

from appliance.directory import Directory, DirectoryEntry, DirectoryError
from appliance.sync.clock import Clock
from appliance.sync.codec.directory import (
    MAX_BATCH,
    PULL_PATH,
    PUSH_PATH,
    entry_from_json,
    entry_to_json,
    is_count,
)
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubBusy, HubCall, HubRefused, HubUnavailable

log = logging.getLogger("edgebox.sync.directory")

PUSH_CURSOR: Final = "directory.push"
PULL_CURSOR: Final = "directory.pull"
STREAM: Final = "directory"

#: Users per request: a few hundred rows are a few tens of KiB, quick even on a slow link.
BATCH: Final = 200
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
        #: Seconds the hub asked to be left alone after the last round (`HubBusy`), or 0.
        self.busy_wait = 0.0

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
                    if not self.busy_wait:
                        # A busy hub said when to come back: no wake before then.
                        nursery.start_soon(woken)
                    await self.clock.sleep(max(self.interval, self.busy_wait))
                    nursery.cancel_scope.cancel()

    async def sync_round(self) -> bool:
        """Push, then pull; report to `SyncStatus`; return whether the round succeeded."""
        self.busy_wait = 0.0
        try:
            pushed = await self.push()
            pulled = await self.pull()
        except HubBusy as exc:
            # The hub is there, only busy: come back when it said (appliance.sync.chat).
            self.busy_wait = exc.retry_after
            self.status.failure(STREAM, f"hub busy: {exc}")
            log.info("directory sync: %s", exc)
            return False
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
        if not is_count(cursor) or cursor < after or not isinstance(raw, list):
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
