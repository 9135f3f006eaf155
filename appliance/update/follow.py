"""The box's side of the hub's update channel: hear the offer, fetch, install in the window.

`ChannelFollower` runs beside the other replicators while the box has a hub
(``hub_url``), woken by the link monitor when GIN comes back and on the sync interval.
Each round:

1. ask the hub what the box's channel (``update_channel``) offers for its
   ``compatible`` (appliance.update.channel): a release, a size and a SHA-256;
2. decide (`decide`, pure): the same release as the running one is "up to date"; an
   older one is refused once, with the reason, into the outcome history (the console
   shows it, the reporter tells the hub); a release that rolled back on this box is
   not installed again unless the admin asks; a newer one is fetched;
3. fetch it while the link is up, throttled (``update_download_rate``), resumable,
   checked against the offer's size and SHA-256 (appliance.update.download); a cut
   leaves the part for the next round;
4. install it (appliance.update.install: RAUC verifies the signature, the release must
   be newer) inside the maintenance window (``update_window``, the box's local time,
   default at night) or at once when the admin pressed "install now" in the console
   (`request_install_now`), then reboot (``update_reboot``; "" leaves the reboot to the
   admin).

Downloading and installing happen only where the setting ``updates`` is on (the image
turns it on): a development box still hears and shows offers, and never runs RAUC.

What the round saw and did is kept in ``update/offer.json`` (`OfferState`) for the
console; progress goes to the panel through appliance.update.progress.

What this is not: the after-boot judgement (appliance.update.confirm) or the report of
outcomes to the hub (appliance.update.report).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shlex
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import trio

from appliance.store.files import fsync_dir, write_atomically
from appliance.sync.clock import Clock
from appliance.sync.status import SyncStatus
from appliance.sync.transport import HubCall, HubRefused, HubUnavailable
from appliance.update import outcome, progress
from appliance.update.channel import BUNDLE_PREFIX, OFFER_PATH
from appliance.update.confirm import boot_id
from appliance.update.download import (
    DownloadError,
    Expected,
    NotAsPromised,
    discard_part,
    download,
)
from appliance.update.install import UpdateError, install_bundle
from appliance.update.rauc import Rauc, RaucError
from appliance.update.version import RELEASE_FILE, is_newer, release_key, running_version

log = logging.getLogger("edgebox.update.follow")

STREAM: Final = "update-channel"
OFFER_FILE: Final = Path("update") / "offer.json"
READY_DIR: Final = Path("update") / "ready"
#: The console's "install now": the admin's request, kept until the install is tried.
INSTALL_NOW_FILE: Final = Path("update") / "install-now.json"


class Decision(enum.Enum):
    #: The hub offers nothing for this box.
    NONE = "none"
    #: The offer is the running release.
    UP_TO_DATE = "up-to-date"
    #: The offer is older than the running release: refused, with the reason.
    OLDER = "older"
    #: This release rolled back here; installed again only on the admin's request.
    ROLLED_BACK_BEFORE = "rolled-back-before"
    #: Installed, waiting for its reboot.
    INSTALLED = "installed"
    #: Newer: fetch it and install it when the time comes.
    NEWER = "newer"


@dataclass(frozen=True)
class Offer:
    version: str
    size: int
    sha256: str


@dataclass(frozen=True)
class OfferState:
    """What the box knows of its channel's offer (``update/offer.json``)."""

    channel: str
    offer: Offer | None
    running: str
    decision: str
    #: "", "downloading", "ready" (fetched and checked), "installed", "refused".
    stage: str = ""
    reason: str = ""
    checked_at: float = 0.0


def read_offer_state(data_dir: Path) -> OfferState | None:
    """The last round's view of the channel, or None before the first round."""
    try:
        raw = json.loads((data_dir / OFFER_FILE).read_text())
        offer = Offer(**raw["offer"]) if raw.get("offer") else None
        return OfferState(**{**raw, "offer": offer})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_offer_state(data_dir: Path, state: OfferState) -> None:
    write_atomically(data_dir / OFFER_FILE, json.dumps(asdict(state)).encode(), mode=0o644)


def request_install_now(data_dir: Path, who: str, at: float) -> None:
    """Ask the follower to install the offered release at once (the console's button)."""
    write_atomically(data_dir / INSTALL_NOW_FILE, json.dumps({"by": who, "at": at}).encode(),
                     mode=0o644)  # fmt: skip


class InstallNowBell:
    """Wake the channel's follower the moment the console's "Install now" is pressed.

    The console (a page of the HTTPS service) and the follower (an uplink service) run in
    one process but never see each other; appliance.registry hands both the same bell.
    The request itself is the file `request_install_now` writes, so a follower that
    was not listening (restarted, or the link down) still finds it at its next round.
    """

    def __init__(self) -> None:
        self._followers: list[Callable[[], None]] = []

    def listen(self, wake: Callable[[], None]) -> None:
        """Call *wake* whenever the bell rings."""
        self._followers.append(wake)

    def ring(self) -> None:
        """Wake every follower listening (none: the request waits for the next round)."""
        for wake in self._followers:
            wake()


def install_requested(data_dir: Path) -> dict[str, object] | None:
    """Who asked for "install now", and when; None if nobody has (or it was tried)."""
    try:
        raw = json.loads((data_dir / INSTALL_NOW_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def decide(
    offer: Offer | None, running: str, history: outcome.UpdateState, *, asked: bool
) -> Decision:
    """What to do with *offer*; see the module docstring. Pure."""
    if offer is None:
        return Decision.NONE
    if history.pending is not None and history.pending.bundle_sha256 == offer.sha256:
        return Decision.INSTALLED
    if release_key(offer.version) == release_key(running):
        return Decision.UP_TO_DATE
    if not is_newer(offer.version, running):
        return Decision.OLDER
    rolled = [e for e in history.events if e.event == "rolled_back" and e.version == offer.version]
    if rolled and not asked:
        return Decision.ROLLED_BACK_BEFORE
    return Decision.NEWER


def in_window(window: str, local: time.struct_time) -> bool:
    """Whether the local time *local* is inside *window* ("HH:MM-HH:MM", may wrap
    midnight; "" = never). Pure."""
    try:
        start, end = (_minutes(part) for part in window.split("-"))
    except ValueError:
        return False
    now = local.tm_hour * 60 + local.tm_min
    if start <= end:
        return start <= now < end
    return now >= start or now < end


def _minutes(text: str) -> int:
    hours, _, minutes = text.strip().partition(":")
    value = int(hours) * 60 + int(minutes or 0)
    if not 0 <= value <= 24 * 60:
        raise ValueError(text)
    return value


class ChannelFollower:
    """The box's service: follow the hub's update channel; see the module docstring."""

    name = "update-channel"

    def __init__(
        self,
        data_dir: Path,
        hub: HubCall,
        hub_url: str,
        context: Callable[[], ssl.SSLContext],
        rauc: Rauc,
        status: SyncStatus,
        clock: Clock,
        *,
        channel: str = "stable",
        compatible: str = "edgebox-amd64",
        installs: bool = False,
        window: str = "01:00-05:00",
        rate: int = 0,
        reboot: Callable[[], None] | None = None,
        interval: float = 600.0,
        release_file: Path = RELEASE_FILE,
        localtime: Callable[[float], time.struct_time] = time.localtime,
        on_outcome: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.hub = hub
        self.hub_url = hub_url.rstrip("/")
        self.context = context
        self.rauc = rauc
        self.status = status
        self.clock = clock
        self.channel = channel
        self.compatible = compatible
        self.installs = installs
        self.window = window
        self.rate = rate
        self.reboot = reboot
        self.interval = interval
        self.release_file = release_file
        self.localtime = localtime
        #: Told when the history got a new event (the reporter sends it to the hub).
        self.on_outcome = on_outcome
        self._wake = trio.Event()

    def wake(self) -> None:
        """Run a round now (the link came back, or the admin pressed "install now")."""
        self._wake.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            self._wake = trio.Event()
            await self.round()
            # A minute while a bundle waits for its window; the console's "install now"
            # rings the bell (`InstallNowBell`) and wakes this at once.
            with trio.move_on_after(min(self.interval, 60.0)):
                await self._wake.wait()

    async def round(self) -> OfferState:
        """One round: ask, decide, fetch, maybe install. Never raises for the hub's sake."""
        running = await trio.to_thread.run_sync(self._running)
        previous = await trio.to_thread.run_sync(read_offer_state, self.data_dir)
        try:
            answer = await self.hub(OFFER_PATH, {"channel": self.channel,
                                                 "compatible": self.compatible})  # fmt: skip
            offer = _offer(answer)
        except (HubUnavailable, HubRefused) as exc:
            self.status.failure(STREAM, f"{type(exc).__name__}: {exc}")
            # The last offer stands: a bundle already fetched still installs in its window.
            offer = previous.offer if previous is not None else None
            if offer is None:
                return await self._save(OfferState(self.channel, None, running, "none",
                                                   checked_at=self.clock.now()))  # fmt: skip
        else:
            self.status.success(STREAM)
        history = await trio.to_thread.run_sync(outcome.read_state, self.data_dir)
        asked = install_requested(self.data_dir) is not None
        decision = decide(offer, running, history, asked=asked)
        state = OfferState(self.channel, offer, running, decision.value,
                           checked_at=self.clock.now())  # fmt: skip
        if previous is not None and previous.offer == offer:
            state = replace(state, stage=previous.stage, reason=previous.reason)
        if decision is Decision.OLDER and offer is not None and state.stage != "refused":
            reason = f"the hub offers {offer.version}, older than the running {running}"
            await trio.to_thread.run_sync(self._refuse, offer, reason)
            state = replace(state, stage="refused", reason=reason)
        if asked and decision is not Decision.NEWER and decision is not Decision.INSTALLED:
            # Nothing to install: the console shows why.
            (self.data_dir / INSTALL_NOW_FILE).unlink(missing_ok=True)
        if decision is not Decision.NEWER or offer is None:
            return await self._save(state)
        if state.stage == "refused" and not asked:
            return await self._save(state)  # this very bundle was refused here: not again
        if not self.installs:
            return await self._save(replace(state, reason="updates are off on this box"))
        bundle = self.data_dir / READY_DIR / f"{offer.sha256}.raucb"
        if not bundle.exists():
            state = await self._save(replace(state, stage="downloading", reason=""))
            try:
                await self._fetch(offer, bundle)
            except NotAsPromised as exc:
                await trio.to_thread.run_sync(self._refuse, offer, str(exc))
                progress.write_progress(self.data_dir, progress.Progress(
                    progress.REFUSED, 0, offer.version, self.clock.now(), str(exc)))  # fmt: skip
                (self.data_dir / INSTALL_NOW_FILE).unlink(missing_ok=True)
                return await self._save(replace(state, stage="refused", reason=str(exc)))
            except DownloadError as exc:
                # A cut or a slow line: the part stays, the next round goes on from it.
                log.info("update %s not fetched yet: %s", offer.version, exc)
                self.status.failure(STREAM, str(exc))
                progress.clear_progress(self.data_dir)
                return await self._save(replace(state, reason=str(exc)))
            state = await self._save(replace(state, stage="ready", reason=""))
            progress.clear_progress(self.data_dir)
        local = self.localtime(self.clock.now())
        if not (asked or in_window(self.window, local)):
            return await self._save(replace(state, stage="ready"))
        return await self._save(await self._install(offer, bundle, state))

    # -- the steps ---------------------------------------------------------------

    def _running(self) -> str:
        try:
            booted = self.rauc.status().running().version
        except (RaucError, StopIteration, KeyError, ValueError):
            booted = ""  # no RAUC here (a development box): the image's release file
        return running_version(booted, self.release_file)

    async def _fetch(self, offer: Offer, bundle: Path) -> None:
        url = f"{self.hub_url}{BUNDLE_PREFIX}{offer.sha256}.raucb"
        host = urlsplit(url).hostname or ""

        def moved(held: int, total: int) -> None:
            percent = int(held * 100 / total) if total else 0
            progress.write_progress(self.data_dir, progress.Progress(
                progress.DOWNLOADING, percent, offer.version, self.clock.now()))  # fmt: skip

        log.info("fetching update %s (%d bytes) from %s", offer.version, offer.size, host)
        part = await download(url, self.data_dir, self.context(),
                              expected=Expected(offer.size, offer.sha256), rate=self.rate,
                              progress=moved)  # fmt: skip
        await trio.to_thread.run_sync(_keep, part, bundle)
        await trio.to_thread.run_sync(discard_part, self.data_dir)

    async def _install(self, offer: Offer, bundle: Path, state: OfferState) -> OfferState:
        (self.data_dir / INSTALL_NOW_FILE).unlink(missing_ok=True)

        def moved(phase: str, percent: int) -> None:
            progress.write_progress(self.data_dir, progress.Progress(
                phase, percent, offer.version, self.clock.now()))  # fmt: skip

        def run() -> None:
            install_bundle(self.data_dir, self.rauc, bundle, now=self.clock.now,
                           this_boot=boot_id(), release_file=self.release_file,
                           progress=moved)  # fmt: skip

        log.warning("installing update %s", offer.version)
        try:
            await trio.to_thread.run_sync(run)
        except UpdateError as exc:
            log.warning("update %s not installed: %s", offer.version, exc)
            progress.write_progress(self.data_dir, progress.Progress(
                progress.REFUSED, 0, offer.version, self.clock.now(), str(exc)))  # fmt: skip
            await trio.Path(bundle).unlink(missing_ok=True)
            return replace(state, stage="refused", reason=str(exc))
        # In the slot now: the data partition gets its space back.
        await trio.Path(bundle).unlink(missing_ok=True)
        if self.reboot is None:
            progress.clear_progress(self.data_dir)
            return replace(state, stage="installed",
                           reason="installed; it runs after the next reboot")  # fmt: skip
        progress.write_progress(self.data_dir, progress.Progress(
            progress.REBOOTING, 100, offer.version, self.clock.now()))  # fmt: skip
        await self._save(replace(state, stage="installed", reason="rebooting into it"))
        self.reboot()
        return replace(state, stage="installed", reason="rebooting into it")

    def _refuse(self, offer: Offer, reason: str) -> None:
        # No slot was touched: the slot field stays empty.
        outcome.record(self.data_dir, "refused", offer.version, "", self.clock.now(), reason)

    async def _save(self, state: OfferState) -> OfferState:
        await trio.to_thread.run_sync(_write_offer_state, self.data_dir, state)
        if state.stage in ("installed", "refused") and self.on_outcome is not None:
            self.on_outcome()  # the hub hears of it now, not at the reporter's next round
        return state


def _offer(answer: object) -> Offer | None:
    raw = answer.get("offer") if isinstance(answer, dict) else None
    if raw is None:
        return None
    if not (isinstance(raw, dict) and isinstance(raw.get("version"), str)
            and type(raw.get("size")) is int and isinstance(raw.get("sha256"), str)
            and len(raw["sha256"]) == 64):  # fmt: skip
        raise HubUnavailable(f"the hub's offer is malformed: {raw!r}")
    return Offer(raw["version"], raw["size"], raw["sha256"].lower())


def _keep(part: Path, bundle: Path) -> None:
    """Make the checked download the one bundle waiting to install."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    # An older offer's bundle will never install now: its hundreds of MiB go.
    for stale in bundle.parent.glob("*.raucb"):
        stale.unlink()
    os.replace(part, bundle)
    fsync_dir(bundle.parent)


def reboot_command(command: str) -> Callable[[], None] | None:
    """The ``update_reboot`` setting as a callable; None for "" (the admin reboots)."""
    if not command.strip():
        return None
    argv = shlex.split(command)

    def reboot() -> None:
        log.warning("rebooting into the new release: %s", command)
        # The operator's own setting, split like a shell would, run without one.
        subprocess.run(argv, check=False)  # noqa: S603

    return reboot
