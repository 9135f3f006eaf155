"""Everything the admin console shows about updates, gathered in one read.

The running slot and release (RAUC), the update waiting for its reboot, the last
outcomes with their reasons (appliance.update.outcome), the hub channel's offer and
what the box made of it (appliance.update.follow), the update in hand
(appliance.update.progress) and whether the admin's "install now" is waiting.
Blocking (RAUC is a subprocess): the console calls it in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.update import outcome, progress
from appliance.update.follow import OfferState, install_requested, read_offer_state
from appliance.update.outcome import Event, Pending
from appliance.update.rauc import Rauc, RaucError
from appliance.update.version import RELEASE_FILE, running_version

#: Outcomes the console lists, newest first.
SHOWN_EVENTS = 10


@dataclass(frozen=True)
class UpdateSummary:
    running: str
    #: The booted slot's name ("A"/"B"), "" when RAUC did not answer.
    slot: str
    #: Why RAUC did not answer ("" when it did).
    rauc_error: str
    pending: Pending | None
    events: list[Event]
    offer: OfferState | None
    progress: progress.Progress | None
    install_requested: dict[str, object] | None

    @property
    def may_install_now(self) -> bool:
        """Whether "install now" has something to install: a newer release, or one that
        rolled back here (the admin may try it again, knowingly)."""
        return self.offer is not None and self.offer.decision in ("newer", "rolled-back-before")


def update_summary(
    data_dir: Path, rauc: Rauc | None, now: float, release_file: Path = RELEASE_FILE
) -> UpdateSummary:
    """Gather the console's view of updates (see the module docstring)."""
    slot = error = booted_version = ""
    if rauc is None:
        error = "RAUC is not set up on this server"
    else:
        try:
            status = rauc.status()
            running_slot = status.running()
            slot, booted_version = running_slot.bootname, running_slot.version
        except (RaucError, StopIteration) as exc:
            error = str(exc) or "RAUC did not answer"
    state = outcome.read_state(data_dir)
    return UpdateSummary(
        running=running_version(booted_version, release_file),
        slot=slot,
        rauc_error=error,
        pending=state.pending,
        events=list(reversed(state.events))[:SHOWN_EVENTS],
        offer=read_offer_state(data_dir),
        progress=progress.read_progress(data_dir, now),
        install_requested=install_requested(data_dir),
    )
