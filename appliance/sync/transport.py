"""The contract between the hub's sync API and the parts of the box that use it.

The hub serves JSON over HTTPS with mutual TLS on the hub-sync port (DESIGN.md "Roles and
ports"). Each sync stream (directory, chat, ...) contributes `SyncRoute` values on the hub
side and calls the hub through a `HubCall` on the edge side; neither side knows about
sockets, certificates or HTTP, so each stream is tested against its hub handlers
directly and the same code runs over the real link.

Every route is ``POST /sync/v1/<stream>/<verb>`` with a JSON object body and a JSON object
answer: requests carry cursors and batches, never anything that depends on the verb's
HTTP semantics, and POST keeps request bodies out of URLs (and so out of access logs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

JSON = Any


@dataclass(frozen=True)
class Peer:
    """An enrolled box, as the hub knows it from its verified client certificate."""

    box_id: str
    #: The agency the box was enrolled for (the token's agency).
    domain: str


class HubUnavailable(Exception):
    """The hub could not be reached or did not answer in time: try again later."""


class HubBusy(HubUnavailable):
    """The hub answered 503 ``hub_busy``: it is there, but asks to be called again later.

    Not a cut: the link is up (the hub answered), so nothing about the link changes;
    the caller waits *retry_after* seconds (the hub's Retry-After, already spread
    between boxes) before it sends anything to the hub again. Nothing was applied.
    """

    def __init__(self, message: str, retry_after: float, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The hub's reason (appliance.sync.hub.fair_queue.BusyReason), "" if unsaid.
        self.reason = reason


class HubRefused(Exception):
    """The hub answered with a 4xx: the request as sent will never succeed."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class HubCall(Protocol):
    """Send one request to the hub and return its answer (edge side).

    Raises `HubUnavailable` on a cut, time-out or 5xx (`HubBusy`, a kind of it, when the
    hub said it is busy and when to come back), `HubRefused` on a 4xx.
    """

    async def __call__(self, path: str, body: JSON) -> JSON: ...


SyncHandler = Callable[[Peer, JSON], Awaitable[JSON]]


@dataclass(frozen=True)
class SyncRoute:
    """One hub endpoint: ``POST path`` from an enrolled box."""

    path: str
    handler: SyncHandler
    #: Largest request body accepted, in bytes (a batch of events or directory rows).
    max_body: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class SyncDownload:
    """Files an enrolled box may fetch: ``GET prefix + name`` (HEAD too), with ranges.

    The one exception to "POST and JSON": an update bundle is hundreds of MiB, and a
    box on a slow line must be able to resume it (``Range``, RFC 9110 §14) and to read it
    at its own pace. *locate* maps the name after the prefix to a file, or None (404);
    it must never let a name reach outside its folder.
    """

    prefix: str
    locate: Callable[[Peer, str], Path | None]
