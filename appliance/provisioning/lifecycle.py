"""The box's state while it runs: unprovisioned or provisioned, and what moves it.

Rules (DESIGN.md "The appliance's life")::

    factory / reset ──> UNPROVISIONED ──(provision with the setup code)──> PROVISIONED
    PROVISIONED ──(factory reset: admin console, panel, CLI on a stopped box)──> UNPROVISIONED

One `Lifecycle` object per running box. The runner (appliance.cli) owns the switch
between the two service sets; the setup API reports ``provisioned()``, the admin
console and the panel ask for a reset; discovery and the panel read `status()` and
wait for `changed()`. The panel's reset is `ResetHold`: hold the button, then confirm.

What this is not: provisioning itself (provision.py), the erase (reset.py) or any I/O;
`ResetHold` takes the time from its caller, so it is tested without a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from appliance.identity import read_identity
from appliance.provisioning.device import Device, certificate_fingerprint, format_setup_code


class BoxState(enum.Enum):
    #: Fresh from the factory or a reset: serves only the setup path, discovery, panel.
    UNPROVISIONED = "unprovisioned"
    #: Has an agency and its first admin: serves mail, chat and the web.
    PROVISIONED = "provisioned"


def box_state(data_dir: Path) -> BoxState:
    """The state of the data directory at rest (provisioned = it holds an identity)."""
    if read_identity(data_dir) is None:
        return BoxState.UNPROVISIONED
    return BoxState.PROVISIONED


@dataclass(frozen=True)
class SetupStatus:
    """What the panel, discovery and the setup page show about the box."""

    state: BoxState
    box_id: str
    short_id: str
    #: ``edgebox-<short id>.local``.
    hostname: str
    #: Short SHA-256 fingerprint of the certificate the HTTPS port presents now.
    fingerprint: str
    #: Grouped for reading (``ABCDE-FGHJK``); None once provisioned.
    setup_code: str | None
    #: The agency's domain; None while unprovisioned.
    domain: str | None
    #: Ports served now, by service name (``https``, ``imaps``, ``smtp-submissions`` ...).
    ports: dict[str, int]


@dataclass(frozen=True)
class StickNews:
    """What a USB provisioning stick is going through, for the panel (usb.py tells)."""

    #: Counts up with every piece of news: the panel shows each one once.
    number: int
    #: One short ASCII line: the panel's font has no Thai.
    text: str
    #: The stick is done (applied or refused): the panel keeps showing this a while.
    final: bool


class Lifecycle:
    """The running box's state and the requests that change it."""

    def __init__(
        self, data_dir: Path, device: Device, *, reset_window: float | None = None
    ) -> None:
        self.data_dir = data_dir
        self.device = device
        self._state = box_state(data_dir)
        self._ports: dict[str, int] = {}
        self._changed = trio.Event()
        self._provisioned = trio.Event()
        self._reset = trio.Event()
        self.panel_reset = ResetHold(self, reset_window or ResetHold.CONFIRM_WINDOW)
        #: The last USB stick's progress or result (None: no stick since the start).
        self.stick: StickNews | None = None

    # --- reading -------------------------------------------------------------------

    @property
    def state(self) -> BoxState:
        return self._state

    def status(self) -> SetupStatus:
        """Return a snapshot for the panel, discovery and the setup page."""
        identity = read_identity(self.data_dir)
        unprovisioned = self._state is BoxState.UNPROVISIONED
        return SetupStatus(
            state=self._state,
            box_id=self.device.box_id,
            short_id=self.device.short_id,
            hostname=self.device.hostname,
            fingerprint=certificate_fingerprint(self._certificate().read_bytes()),
            setup_code=format_setup_code(self.device.setup_code()) if unprovisioned else None,
            domain=identity.domain if identity is not None and not unprovisioned else None,
            ports=dict(self._ports),
        )

    def changed(self) -> trio.Event:
        """An event set at the next change of state or ports (take it, then read)."""
        return self._changed

    def _certificate(self) -> Path:
        server = self.data_dir / "keys" / "server.pem"
        # Between a reset and the setup path's start the agency's certificate is gone
        # already: the device's is what will be served next.
        if self._state is BoxState.UNPROVISIONED or not server.exists():
            return self.device.cert_file
        return server

    # --- the runner ------------------------------------------------------------------

    def serving(self, state: BoxState, ports: dict[str, int]) -> None:
        """The runner has started *state*'s services on *ports*: announce it."""
        self._state = state
        self._ports = dict(ports)
        self.panel_reset.cancel()
        self._changed.set()
        self._changed = trio.Event()

    async def wait_provisioned(self) -> None:
        """Return once the setup path has provisioned the box."""
        await self._provisioned.wait()
        self._provisioned = trio.Event()  # consumed: the next unprovisioned term waits anew

    async def wait_reset_requested(self) -> None:
        """Return once someone confirmed a factory reset."""
        await self._reset.wait()
        self._reset = trio.Event()

    def stick_news(self, text: str, *, final: bool = False) -> None:
        """A USB stick's progress or result: the panel shows it (usb.py calls this)."""
        number = self.stick.number + 1 if self.stick is not None else 1
        self.stick = StickNews(number, text, final)

    # --- requests ----------------------------------------------------------------------

    def provisioned(self) -> None:
        """The setup path provisioned the box (on disk): switch to the full services."""
        self._provisioned.set()

    def request_reset(self) -> None:
        """Ask for a factory reset (admin console after the password, panel after the hold).

        The runner stops every service, closes the databases, erases and comes back
        unprovisioned.
        """
        if self._state is BoxState.PROVISIONED:
            self._reset.set()


class ResetHold:
    """The panel's factory reset: hold the reset button, then confirm on the panel.

    ``pressed(now)`` when the button goes down, ``released(now)`` when it comes up:
    held at least `HOLD` seconds, the panel asks "reset?" and `confirm(now)` within
    *window* seconds (`CONFIRM_WINDOW` unless the ``panel_reset_window`` setting
    says otherwise) resets. A shorter press, a late confirm or `cancel()`
    does nothing. Times are the caller's monotonic clock (trio or the panel loop).
    """

    HOLD: Final = 10.0
    CONFIRM_WINDOW: Final = 30.0

    def __init__(self, lifecycle: Lifecycle, window: float = CONFIRM_WINDOW) -> None:
        self._lifecycle = lifecycle
        self.window = window
        self._down_at: float | None = None
        self._armed_until: float | None = None

    @property
    def awaiting_confirmation(self) -> bool:
        """Whether the panel should show the confirm prompt now."""
        return self._armed_until is not None

    def pressed(self, now: float) -> None:
        self._down_at = now

    def released(self, now: float) -> bool:
        """Return True if the hold was long enough: show the confirm prompt."""
        down, self._down_at = self._down_at, None
        if down is None or now - down < self.HOLD:
            return False
        return self.held(now)

    def held(self, now: float) -> bool:
        """Arm the confirm prompt for a hold the panel timed itself; True if armed.

        The firmware measures the 10-s hold on the button and sends one
        ``factory-reset`` request (docs/front-panel.md), so the host sees the end of
        the hold, not its start.
        """
        self._down_at = None
        if self._lifecycle.state is not BoxState.PROVISIONED:
            return False  # nothing to reset: an unprovisioned box is already factory-new
        self._armed_until = now + self.window
        return True

    def lapse(self, now: float) -> bool:
        """Drop a confirm prompt whose window has passed; True if one was dropped."""
        if self._armed_until is None or now <= self._armed_until:
            return False
        self._armed_until = None
        return True

    def confirm(self, now: float) -> bool:
        """The technician confirmed on the panel: reset if still within the window."""
        until, self._armed_until = self._armed_until, None
        if until is None or now > until:
            return False
        self._lifecycle.request_reset()
        return True

    def cancel(self) -> None:
        self._down_at = None
        self._armed_until = None
