"""What happened to the box's updates, kept on the data partition: ``update/state.json``.

The data partition survives a slot switch, so the release that falls back reads what the
release that failed wrote, and the hub hears of a rollback even when the new system never
came up (rauc-hawkbit-updater#17: a rollback the server never hears of leaves it believing
the update worked). Written atomically (temp file, fsync, rename) at every change.

The file::

    {"pending": {version, bundle_sha256, from_slot, to_slot, boot_id, at} | null,
     "events": [{id, event, version, slot, at, reason}, ...]   newest last, at most 50
     "reported": id of the newest event the hub has acknowledged (0: none)}

Events: ``installed`` (written to the other slot, waiting for a reboot), ``good`` (the
new slot passed its health gate and is committed), ``rolled_back`` (with the reason),
``refused`` (RAUC would not install the bundle; nothing written).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from appliance.store.files import write_atomically

STATE_FILE: Final = Path("update") / "state.json"
KEEP_EVENTS: Final = 50
EVENTS: Final = ("installed", "good", "rolled_back", "refused")


@dataclass(frozen=True)
class Pending:
    """An installed update the box has not yet booted into and judged."""

    version: str
    bundle_sha256: str
    from_slot: str
    to_slot: str
    #: The kernel's boot id when it was installed: the same id means "not rebooted yet".
    boot_id: str
    at: float


@dataclass(frozen=True)
class Event:
    id: int
    event: str
    version: str
    slot: str
    at: float
    reason: str = ""


@dataclass
class UpdateState:
    pending: Pending | None
    events: list[Event]
    reported: int = 0

    def last(self) -> Event | None:
        """The newest event, or None."""
        return self.events[-1] if self.events else None

    def unreported(self) -> list[Event]:
        """Events the hub has not acknowledged yet, oldest first."""
        return [e for e in self.events if e.id > self.reported]


def read_state(data_dir: Path) -> UpdateState:
    """The box's update state; an absent or unreadable file is an empty history."""
    try:
        raw = json.loads((data_dir / STATE_FILE).read_text())
        pending = Pending(**raw["pending"]) if raw.get("pending") else None
        events = [Event(**e) for e in raw.get("events", [])]
        return UpdateState(pending, events, int(raw.get("reported", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return UpdateState(None, [])


def write_state(data_dir: Path, state: UpdateState) -> None:
    raw: dict[str, Any] = {
        "pending": asdict(state.pending) if state.pending else None,
        "events": [asdict(e) for e in state.events[-KEEP_EVENTS:]],
        "reported": state.reported,
    }
    write_atomically(data_dir / STATE_FILE, json.dumps(raw, indent=1).encode(), mode=0o644)


def record(
    data_dir: Path,
    event: str,
    version: str,
    slot: str,
    at: float,
    reason: str = "",
    *,
    pending: Pending | bool | None = False,
) -> Event:
    """Append *event* durably; *pending* (unless False) replaces the pending update."""
    if event not in EVENTS:
        raise ValueError(f"unknown update event {event!r}")
    state = read_state(data_dir)
    last = state.last()
    new = Event((last.id if last else 0) + 1, event, version, slot, at, reason)
    state.events.append(new)
    if pending is not False:
        state.pending = pending if isinstance(pending, Pending) else None
    write_state(data_dir, state)
    return new


def acknowledge(data_dir: Path, up_to: int) -> None:
    """Note that the hub holds every event up to id *up_to*."""
    state = read_state(data_dir)
    if up_to > state.reported:
        state.reported = up_to
        write_state(data_dir, state)
