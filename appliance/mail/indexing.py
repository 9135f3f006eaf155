"""Index new mail in the background, and catch the index up after a restart.

Indexing a message (MIME decoding, trigrams, an encrypted FTS5 insert) costs about as
much CPU as delivering it, so it stays off the delivery path: `Mailstore.index` queues
``(mailbox, uid)`` and this service indexes the queue in batches, one index transaction
per batch, once a burst of mail is over. SEARCH reads messages the index does not hold
yet, so a backlog only makes searches slower for a moment, never wrong. (Dovecot, by
default, indexes full text only when someone searches.)

At start-up it first reconciles: the index lives in its own database, so a crash can
leave it behind the mail database (or a rebuilt index starts empty).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from appliance.mail.mailstore import Mailstore

log = logging.getLogger("edgebox.mail")

#: Messages indexed per index transaction.
BATCH = 200
#: Index when no new message has arrived for this long...
QUIET_SECONDS = 1.0
#: ...or once this many wait (each queued entry is two integers).
MAX_BACKLOG = 20_000
#: Seconds between looks at the disk while indexing waits for space.
SPACE_RETRY_SECONDS = 5.0


class SearchIndexer:
    name = "search-index"

    def __init__(self, mailstore: Mailstore, may_write: Callable[[], bool] = lambda: True) -> None:
        self.mailstore = mailstore
        #: The disk guard's `room_for_background`: the index waits while the data
        #: volume nears its reserve (appliance.health.disk_guard).
        self.may_write = may_write

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        send, receive = trio.open_memory_channel[tuple[int, int]](math.inf)
        # Attach before reconciling: what arrives meanwhile is queued, not lost.
        self.mailstore.index_queue = send
        task_status.started([])
        try:
            added = await self.mailstore.reconcile_search_index()
            if added:
                log.info("search index: indexed %d messages it was missing", added)
            async for first in receive:
                # Let a burst of deliveries finish first (Python runs one thread at a
                # time, so indexing now would slow every SMTP session): index once the
                # queue has been quiet for a moment, or when the backlog grows large.
                backlog = [first]
                while len(backlog) < MAX_BACKLOG:
                    with trio.move_on_after(QUIET_SECONDS) as quiet:
                        backlog.append(await receive.receive())
                    if quiet.cancelled_caught:
                        break
                if not self.may_write():
                    log.warning("search index: waiting for disk space (%d queued)", len(backlog))
                    # Freed space announces itself to nobody: polling is the only way.
                    while not self.may_write():  # noqa: ASYNC110
                        await trio.sleep(SPACE_RETRY_SECONDS)
                for start in range(0, len(backlog), BATCH):
                    batch = backlog[start : start + BATCH]
                    try:
                        await self.mailstore.index_queued(batch)
                    except Exception:
                        log.exception("search index: batch of %d failed", len(batch))
        finally:
            # Restarted by the supervisor or stopping: index inline until attached again.
            self.mailstore.index_queue = None
