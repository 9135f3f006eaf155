"""Telling the hub what became of the box's updates, when the link allows.

A rollback the server never hears of leaves it believing the update worked
(rauc-hawkbit-updater#17). The outcome file (appliance.update.outcome) is the durable
queue: `UpdateReporter` sends the events the hub has not acknowledged, oldest first,
whenever the link is up (woken by the link monitor, and on an interval), and moves the
``reported`` mark only after the hub answered, i.e. after the hub stored them. Each event
carries its id, so a batch sent twice (a cut after the hub's write, before its answer)
is stored once.

Wire format (``POST /sync/v1/update/report``, mutual TLS like every sync stream)::

    → {"events": [{"id", "event", "version", "slot", "at", "reason"}, ...]}
    ← {"acknowledged": ID}      the newest id the hub now holds for this box

The hub keeps each box's events in ``update-reports/<box_id>.json`` (`read_reports`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import trio

from appliance.store.files import write_atomically
from appliance.sync.clock import Clock
from appliance.sync.hub.errors import bad_request
from appliance.sync.rounds import Rounds
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubCall, HubRefused, HubUnavailable, Peer, SyncRoute
from appliance.update import outcome

log = logging.getLogger("edgebox.update.report")

REPORT_PATH: Final = "/sync/v1/update/report"
STREAM: Final = "update"
REPORTS_DIR: Final = Path("update-reports")
#: Events a hub keeps per box (the box keeps fewer; this only bounds a misbehaving one).
HUB_KEEP: Final = 200
_FIELDS: Final = {"id": int, "event": str, "version": str, "slot": str, "at": float, "reason": str}


class UpdateReporter:
    """The box's service: report unacknowledged update events now and on an interval."""

    name = "update-report"

    def __init__(
        self, data_dir: Path, hub: HubCall, status: SyncStatus, clock: Clock,
        *, interval: float = 600.0,
    ) -> None:  # fmt: skip
        self.data_dir = data_dir
        self.hub = hub
        self.status = status
        self.clock = clock
        self.interval = interval
        self.rounds = Rounds(self.name, lambda: self.interval)

    def wake(self) -> None:
        """Report now (the link came back)."""
        self.rounds.wake()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        await self.rounds.run(self.report_round)

    async def report_round(self) -> int:
        """Send what the hub lacks; return how many events it acknowledged (0 on failure)."""
        pending = outcome.read_state(self.data_dir).unreported()
        if not pending:
            return 0
        try:
            answer = await self.hub(REPORT_PATH, {"events": [asdict(e) for e in pending]})
        except (HubUnavailable, HubRefused) as exc:
            # Kept for the next round: the file is the queue.
            self.status.failure(STREAM, f"{type(exc).__name__}: {exc}")
            log.info("update report: %s", exc)
            return 0
        acknowledged = answer.get("acknowledged") if isinstance(answer, dict) else None
        if not isinstance(acknowledged, int):
            self.status.failure(STREAM, f"bad answer from the hub: {answer!r}")
            return 0
        # Never past what was sent: a confused hub must not swallow newer events.
        up_to = min(acknowledged, pending[-1].id)
        await trio.to_thread.run_sync(outcome.acknowledge, self.data_dir, up_to)
        self.status.success(STREAM, pushed=len(pending))
        return sum(1 for e in pending if e.id <= up_to)


def update_report_routes(data_dir: Path) -> list[SyncRoute]:
    """The hub's route that stores what boxes report."""

    async def report(peer: Peer, body: JSON) -> JSON:
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not all(_valid(e) for e in events):
            raise bad_request("events must be a list of update events", "bad_event")
        return {
            "acknowledged": await trio.to_thread.run_sync(_store, data_dir, peer.box_id, events)
        }

    return [SyncRoute(REPORT_PATH, report, max_body=256 * 1024)]


def read_reports(data_dir: Path, box_id: str) -> list[dict[str, Any]]:
    """The update events a box reported to this hub, oldest first."""
    path = data_dir / REPORTS_DIR / f"{box_id}.json"
    try:
        events = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return events if isinstance(events, list) else []


def _valid(event: object) -> bool:
    return isinstance(event, dict) and all(
        isinstance(event.get(name), kind) or (kind is float and isinstance(event.get(name), int))
        for name, kind in _FIELDS.items()
    )


def _store(data_dir: Path, box_id: str, events: list[dict[str, Any]]) -> int:
    """Merge *events* by id into the box's file; return the newest id held."""
    if not box_id.replace("-", "").isalnum():  # it names a file
        raise bad_request("bad box id")
    held = {e["id"]: e for e in read_reports(data_dir, box_id)}
    for event in events:
        held[event["id"]] = {name: event[name] for name in _FIELDS}
    kept = [held[i] for i in sorted(held)][-HUB_KEEP:]
    write_atomically(data_dir / REPORTS_DIR / f"{box_id}.json", json.dumps(kept).encode())
    return max(held) if held else 0
