"""Who is using the uplink right now, so that a bulk transfer can step aside.

The offsite backup (appliance.backup.offsite) may move gigabytes over a provincial line
that mail and chat need more: besides its own rate limit it waits, before each piece,
until no replicator has a request to the hub in flight and no mail is waiting to leave
(`LinkShare.wait_quiet`). Each replicator's `HubCall` is wrapped in `SharedHubCall`
by the registry, which counts its requests; the replicators themselves do not change.

The wait is bounded (`wait_quiet`'s *longest*): chat that polls every few seconds would
otherwise starve a backup for ever; after the bound the backup sends one piece at its
rate limit and asks again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from appliance.sync.transport import JSON, HubCall


class LinkShare:
    """Counts the replicators' requests in flight; lets bulk work wait for a quiet link."""

    def __init__(self, mail_waiting: Callable[[], Awaitable[bool]] | None = None) -> None:
        #: Whether the outbound queue holds mail due to leave (it uses the link too).
        self.mail_waiting = mail_waiting
        self._in_flight = 0
        self._quiet = trio.Event()
        self._quiet.set()

    @property
    def busy(self) -> bool:
        """Whether a replicator's request is in flight now."""
        return self._in_flight > 0

    def started(self) -> None:
        """A replicator's request left."""
        self._in_flight += 1
        self._quiet = trio.Event() if self._quiet.is_set() else self._quiet

    def finished(self) -> None:
        """A replicator's request was answered (or failed)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._quiet.set()

    async def wait_quiet(self, longest: float, *, poll: float = 1.0) -> bool:
        """Wait up to *longest* s for no request in flight and no mail waiting; return if quiet."""
        with trio.move_on_after(longest):
            while True:
                await self._quiet.wait()
                if self.mail_waiting is None or not await self.mail_waiting():
                    return True
                await trio.sleep(poll)
        return False


class SharedHubCall:
    """A replicator's `HubCall` that tells *share* while each request is in flight."""

    def __init__(self, inner: HubCall, share: LinkShare) -> None:
        self.inner = inner
        self.share = share

    async def __call__(self, path: str, body: JSON) -> JSON:
        self.share.started()
        try:
            return await self.inner(path, body)
        finally:
            self.share.finished()
