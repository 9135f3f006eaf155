"""The box's side of chat sync: push its new events to the hub, pull its rooms' events.

One round (`ChatReplicator.sync_once`):

1. **Push.** The box's own events the hub has not answered (``events.pending``, in
   the order they were made) go in batches of `BATCH`. The hub answers each:
   accepted with its room order, or refused with a reason. The answers are
   committed (`Chat.settle`) before the next batch is read, so the queue moves only
   past events whose answer is on disk; a batch sent again after a cut (answer lost)
   is answered again with the same orders and no second effect.
2. **Pull.** The events of the box's rooms after the durable pull cursor come back
   in the hub's order; each page is applied and the cursor moved in one transaction
   (`Chat.apply_pulled`). A room the box's agency has just joined brings its earlier
   events first (``/history``). Applying an event twice has the effect of once.
3. **Files.** Events carry a file message's name, type and size, never its content.
   The contents of this box's file messages the hub has ordered go up next, one
   request each, up to `FILE_BYTES_PER_ROUND` a round (chat text goes first); a box
   of another agency fetches a file from the hub when one of its members opens it
   (`fetch_file`, installed as the chat store's ``fetch_shared_file``).

Rounds run at start-up, when a local event is written (so live chat between agencies
is quick), every `POLL_INTERVAL` for news from the hub, and after a failure with
exponential back-off, stretched by up to a quarter at random from the box's own
random source (appliance.sync.reconnect: boxes cut together do not retry in step);
`wake` starts one at once (the link monitor's return reaches it through the box's
`StaggeredWake`, spread over boxes). A hub that answers *busy* (`HubBusy`: 503 with
Retry-After, after a national cut) is not a failure of the link: the next round waits
that long plus up to a quarter more (jitter, so the boxes told together do not return
together), the exponential back-off does not grow, and neither a local post nor the
link monitor's wake cuts the wait short. Every round drains what is waiting in bounded
batches, so catch-up after a week's cut sends everything, not just the latest. Timing
reads the `Clock`.

Wire format: the first push of a run sends every event whole (format 1); once the
hub's answer says ``"wire": 2`` the next batches leave out the message snapshots that
repeat their event, so a message's text crosses the line once (a hub that never says
so keeps getting format 1). Pulls say ``"wire": 2`` to get the same from the hub.

What this is not: the link to the hub (a `HubCall`: HTTPS with mutual TLS in
production, a direct call in tests) or the rules (the hub's, `appliance.sync.hub.chat`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
from typing import Any

import trio

from appliance.chat import Chat
from appliance.chat.errors import ChatError
from appliance.sync.clock import Clock
from appliance.sync.codec.chat import PulledPage, parse_answers, parse_page
from appliance.sync.reconnect import jittered
from appliance.sync.status import SyncStatus
from appliance.sync.transport import HubBusy, HubCall, HubRefused, HubUnavailable

log = logging.getLogger(__name__)

PUSH_PATH = "/sync/v1/chat/push"
PULL_PATH = "/sync/v1/chat/pull"
HISTORY_PATH = "/sync/v1/chat/history"
FILE_PUT_PATH = "/sync/v1/chat/file/put"
FILE_GET_PATH = "/sync/v1/chat/file/get"
STREAM = "chat"
#: The name of the pull cursor in the chat database.
PULL_CURSOR = "hub.pull"

#: Events per push or pull request (the hub takes up to 500). The hub checks and orders
#: a batch in one job of its single chat writer, which stalls its SMTP sessions while a
#: mail backlog moves beside the chat. In one week's catch-up each, 500 and 100 moved
#: the mail 3-4 % more slowly than 200: no better, if within noise (docs/BENCHMARKS.md).
BATCH = 200
#: The chat wire format this box reads (docs/chat-sync.md): 2 leaves out snapshots
#: that repeat their event. Pushes use it only once the hub has said it reads it.
WIRE_FORMAT = 2
#: Requests of one kind in one round; a longer backlog continues in the next round.
MAX_REQUESTS = 1_000
#: Seconds between rounds when idle: how soon news from other boxes arrives.
POLL_INTERVAL = 5.0
#: Back-off after a failed round: 1 s, 2 s, 4 s ... up to this.
MAX_BACKOFF = 300.0
#: After a busy hub's Retry-After, up to this fraction more, at random.
BUSY_JITTER = 0.25
#: File contents sent up in one round, at most (at least one file goes): after a cut,
#: chat text keeps flowing between rounds while a backlog of files moves.
FILE_BYTES_PER_ROUND = 16 * 1024 * 1024
#: File messages looked at per round.
FILES_PER_ROUND = 100


class ChatReplicator:
    """The ``chat-sync`` service of a box: its chat, kept in step with the hub."""

    name = "chat-sync"

    def __init__(
        self,
        chat: Chat,
        domain: str,
        hub: HubCall,
        status: SyncStatus,
        clock: Clock,
        *,
        batch: int = BATCH,
        poll_interval: float = POLL_INTERVAL,
        max_backoff: float = MAX_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self.chat = chat
        #: The agency the hub knows this box by (its certificate's).
        self.domain = domain
        self.hub = hub
        self.status = status
        self.clock = clock
        self.batch = batch
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.failures = 0
        #: The wire format the hub said it reads (in its push answers); 1 until it has.
        self.hub_wire = 1
        #: True while waiting between rounds (tests move a manual clock only then).
        self.idle = False
        #: The last round ended with the hub busy (`HubBusy`): its wait is not cut short.
        self.hub_busy = False
        self._wake = trio.Event()
        self._local = trio.Event()
        self.chat.add_push_listener(self._local_event)
        self.chat.fetch_shared_file = self.fetch_file

    def wake(self) -> None:
        """Start a round now, even during back-off (the link is back)."""
        self._wake.set()

    def _local_event(self) -> None:
        self._local.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            # Reset before the round: an event written during it starts the next one.
            self._wake, self._local = trio.Event(), trio.Event()
            delay, local_cuts_short = await self.run_round()
            self.idle = True
            try:
                await self._idle(delay, local_cuts_short, busy=self.hub_busy)
            finally:
                self.idle = False

    async def run_round(self) -> tuple[float, bool]:
        """Run one round and report it; return (seconds to wait, may a local event cut it)."""
        self.hub_busy = False
        try:
            pushed, pulled, complete = await self.sync_once()
        except HubBusy as exc:
            self.hub_busy = True
            return self._busy(exc), False
        except HubUnavailable as exc:
            return self._failed(f"hub unavailable: {exc}", refused=False), False
        except HubRefused as exc:
            return self._failed(f"hub refused: {exc}", refused=True), False
        except ChatError as exc:  # the hub's answer was not what the protocol says
            return self._failed(f"bad answer from the hub: {exc.message_en}", refused=True), False
        self.failures = 0
        backlog = await self.chat.sync_backlog()
        self.status.success(STREAM, pushed=pushed, pulled=pulled, backlog=backlog)
        return (0.0 if not complete else self.poll_interval), True

    def _busy(self, exc: HubBusy) -> float:
        """Record a round the hub was too busy for; return its Retry-After, jittered."""
        self.status.failure(STREAM, f"hub busy: {exc}")
        log.info("chat sync: %s", exc)
        # Not a failure of the link: the back-off is not made longer by it.
        return exc.retry_after * (1.0 + BUSY_JITTER * self.rng.random())

    def _failed(self, reason: str, *, refused: bool) -> float:
        self.failures += 1
        self.status.failure(STREAM, reason)
        log.warning("chat sync round failed (%d in a row): %s", self.failures, reason)
        if refused:
            # Sent again unchanged it will be refused again: wait long, stay visible.
            return self.max_backoff
        # Stretched at random (never shortened): boxes cut together do not retry together.
        backoff = float(min(self.max_backoff, 2.0 ** min(self.failures - 1, 30)))
        return min(self.max_backoff, jittered(backoff, self.rng))

    async def _idle(self, seconds: float, local_cuts_short: bool, busy: bool = False) -> None:
        if seconds <= 0:
            await trio.lowlevel.checkpoint()
            return
        async with trio.open_nursery() as nursery:

            async def after(wait: Any) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(after, lambda: self.clock.sleep(seconds))
            if not busy:
                # A hub that said when to come back is not called before then.
                nursery.start_soon(after, self._wake.wait)
            if local_cuts_short:
                # During back-off a local post must not hammer a hub that is down.
                nursery.start_soon(after, self._local.wait)

    async def sync_once(self) -> tuple[int, int, bool]:
        """Push what waits, pull what is new, then send files; return (pushed, pulled, all done)."""
        pushed, push_done = await self.push()
        pulled, pull_done = await self.pull()
        files_done = await self.share_files()
        return pushed, pulled, push_done and pull_done and files_done

    async def push(self) -> tuple[int, bool]:
        """Send the box's unanswered events in batches; return (answered, queue empty)."""
        answered = 0
        for _ in range(MAX_REQUESTS):
            batch = await self.chat.outbox(self.batch, compact=self.hub_wire >= 2)
            if not batch:
                return answered, True
            reply = await self.hub(
                PUSH_PATH,
                {
                    "events": [e.to_json() for e in batch],
                    # The hub checks the room rules with the agency's own settings.
                    "agency": await self.chat.agency_settings(self.domain),
                },
            )
            wire = reply.get("wire", 1) if isinstance(reply, dict) else 1
            self.hub_wire = wire if isinstance(wire, int) and not isinstance(wire, bool) else 1
            sent = {e.id for e in batch}
            answers = [a for a in parse_answers(reply) if a.id in sent]
            if not answers:
                raise HubUnavailable("the hub answered none of the pushed events")
            _, refused = await self.chat.settle(answers)
            if refused:
                log.info("chat sync: the hub refused %d event(s)", refused)
            answered += len(answers)
        return answered, False

    async def pull(self) -> tuple[int, bool]:
        """Fetch and apply the hub's events after the pull cursor; return (new, caught up)."""
        new = 0
        for _ in range(MAX_REQUESTS):
            after = await self.chat.sync_cursor(PULL_CURSOR)
            request = {"after": after, "limit": self.batch, "wire": WIRE_FORMAT}
            page = parse_page(await self.hub(PULL_PATH, request))
            await self._fill_history(page)
            new += await self.chat.apply_pulled(page.events, cursor=(PULL_CURSOR, page.cursor))
            if not page.more:
                return new, True
        return new, False

    async def share_files(self) -> bool:
        """Send the hub the contents of this box's file messages it has ordered.

        Returns True once none is left. A file the hub will never take (refused: the
        message was refused or deleted meanwhile) is logged and not offered again.
        """
        sent = 0
        waiting = await self.chat.files_to_share(FILES_PER_ROUND)
        for message_id in waiting:
            if sent >= FILE_BYTES_PER_ROUND:
                return False
            data = await self.chat.own_file(message_id)
            if data is not None:
                request = {"message_id": message_id, "content": base64.b64encode(data).decode()}
                try:
                    await self.hub(FILE_PUT_PATH, request)
                except HubRefused as exc:
                    log.warning("chat sync: the hub refused the file of %s: %s", message_id, exc)
                sent += len(data)
            await self.chat.file_shared(message_id)
        return len(waiting) < FILES_PER_ROUND

    async def fetch_file(self, message_id: str) -> bytes:
        """Fetch the content of a file message posted on another box, from the hub."""
        try:
            answer = await self.hub(FILE_GET_PATH, {"message_id": message_id})
        except HubBusy as exc:
            seconds = max(1, round(exc.retry_after))
            raise ChatError(
                503,
                "hub_busy",
                f"The centre is busy; try again in {seconds} s",
                f"ส่วนกลางมีงานมาก กรุณาลองใหม่ใน {seconds} วินาที",
            ) from None
        except HubUnavailable:
            raise ChatError(
                503,
                "file_unavailable",
                "The file is not on this box yet and the centre cannot be reached; try again later",
                "ไฟล์นี้ยังไม่มาถึงเครื่องนี้ และติดต่อส่วนกลางไม่ได้ กรุณาลองใหม่ภายหลัง",
            ) from None
        except HubRefused as exc:
            if exc.status == 404:
                raise ChatError(
                    503,
                    "file_not_yet_shared",
                    "The file has not reached the centre yet; try again later",
                    "ไฟล์นี้ยังไม่ถึงส่วนกลาง กรุณาลองใหม่ภายหลัง",
                ) from None
            raise ChatError(exc.status, exc.code, exc.message, exc.message) from None
        content = answer.get("content") if isinstance(answer, dict) else None
        try:
            return base64.b64decode(content if isinstance(content, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise ChatError(
                502, "bad_hub_answer", "The centre sent a damaged file", "ส่วนกลางส่งไฟล์ที่เสียหายมา"
            ) from None

    async def _fill_history(self, page: PulledPage) -> None:
        """Fetch the earlier events of rooms this page brings to the box for the first time."""
        for room_id, first_order in await self.chat.rooms_needing_history(page.events, self.domain):
            after = 0
            for _ in range(MAX_REQUESTS):
                request = {
                    "room_id": room_id,
                    "before_order": first_order,
                    "after_order": after,
                    "limit": self.batch,
                    "wire": WIRE_FORMAT,
                }
                try:
                    history = parse_page(await self.hub(HISTORY_PATH, request))
                except HubRefused as exc:
                    if exc.status == 404:
                        break  # no longer a room of this agency: nothing to fill
                    raise
                await self.chat.apply_pulled(history.events)
                if not history.more or not history.events:
                    break
                after = max(e.room_order or 0 for e in history.events)
