"""The secret sweeper: deletes secret messages whose time to live has passed.

Secret messages read by every recipient are deleted at the moment of the last read
(`Chat.mark_read`); this service catches the rest, those someone never read, a few
seconds after their TTL, and clears uploads that never became a message. It is a
supervisor service (``name`` and ``serve``) with no listeners.
"""

from __future__ import annotations

import logging

import trio

from appliance.chat.store import Chat

log = logging.getLogger("edgebox.chat")

#: Seconds between sweeps: how late past its TTL a secret message may still exist.
INTERVAL = 5.0


class SecretSweeper:
    name = "chat-secret-sweeper"

    def __init__(self, chat: Chat, interval: float = INTERVAL) -> None:
        self.chat = chat
        self.interval = interval
        #: Secret messages deleted since start (for `edgebox status`).
        self.swept = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        failing: str | None = None  # the repeating failure already logged, if any
        failed = 0
        while True:
            try:
                self.swept += await self.chat.sweep_secrets()
            except Exception as error:
                # A failed sweep (disk full, a hub's database failing over) is retried
                # next time; the messages wait a few seconds longer, which is better
                # than a dead sweeper. The same failure every 5 s is logged once, with
                # its traceback, not once a sweep.
                failed += 1
                reason = f"{type(error).__name__}: {error}"
                if reason != failing:
                    log.exception("chat: sweeping secret messages failed")
                    failing = reason
            else:
                if failing is not None:
                    log.info("chat: secret sweeps work again after %d failures", failed)
                failing, failed = None, 0
            await trio.sleep(self.interval)
