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
        while True:
            try:
                self.swept += await self.chat.sweep_secrets()
            except Exception:
                # A failed sweep (disk full, say) is retried next time; the messages
                # wait a few seconds longer, which is better than a dead sweeper.
                log.exception("chat: sweeping secret messages failed")
            await trio.sleep(self.interval)
