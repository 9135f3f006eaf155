"""The outbound queue as people see it: recipients waiting, by urgency, oldest first.

The queue itself is the ``outbound`` table of the mail database (`Mailstore`), filled
by delivery and emptied by the relay (appliance.sync.relay). This module folds its
read-only views into the figures every surface shows — the admin console, the uplink
API (``/api/v1/link``) and `edgebox status` — so they count the same way.

What this is not: queueing or sending (delivery.py, the relay), or who may see which
sender (appliance.directory.scope).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.compliance.classification import Urgency


@dataclass(frozen=True)
class QueueLevel:
    urgency: int
    count: int


@dataclass(frozen=True)
class QueueSummary:
    """The outbound queue as one reader may see it."""

    #: Every urgency level, most urgent first, with zero counts too.
    levels: tuple[QueueLevel, ...]
    total: int
    #: Unix seconds of the oldest waiting recipient, or None when empty.
    oldest: int | None


@dataclass(frozen=True)
class QueueItem:
    """One recipient waiting in the outbound queue (a `Mailstore.outbound_entries` row)."""

    id: int
    recipient: str
    sender: str
    urgency: int
    #: Unix seconds when it was queued.
    created_at: int
    attempts: int
    last_error: str | None


def summarise_queue(
    groups: Iterable[tuple[int, str, int, int]],
    sender_visible: Callable[[str], bool] | None = None,
) -> QueueSummary:
    """Fold `Mailstore.outbound_groups` rows into counts per urgency and the oldest.

    Rows are ``(urgency, sender, recipients waiting, oldest created_at)``; with
    *sender_visible*, only the senders it accepts are counted (an agency admin's view).
    An urgency outside the known levels counts as the nearest one.
    """
    counts = dict.fromkeys(Urgency, 0)
    oldest: int | None = None
    for urgency, sender, count, created_at in groups:
        if sender_visible is not None and not sender_visible(sender):
            continue
        level = Urgency(min(max(int(urgency), 0), max(Urgency)))
        counts[level] += int(count)
        oldest = created_at if oldest is None else min(oldest, created_at)
    levels = tuple(QueueLevel(int(level), counts[level]) for level in reversed(Urgency))
    return QueueSummary(levels, sum(counts.values()), oldest)
