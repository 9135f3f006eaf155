"""The hardware-watchdog service: the kernel watchdog kept alive by the running box.

The runner (appliance.cli ``_run_box``) starts it beside discovery and the panel, so it
lives across the switch between the setup path and the provisioned services. It opens
the board's watchdog through `hw.watchdog.KernelWatchdog` (the kernel API for real:
``WDIOC_SETTIMEOUT``, keep-alive writes, the magic close), then writes a keep-alive
every quarter of the timeout from the same trio loop that runs every supervisor. What
it guards against is a hang: a wedged event loop, a stopped process, a stuck kernel.
A crashing service is the supervisor's to restart (and the health check's to report);
rebooting for it would only loop. On a clean stop (SIGTERM, SIGINT) it writes the
magic ``V`` so the driver disarms; any other end leaves the watchdog armed, and the
machine resets unless edgebox is back within the timeout (systemd's ``Restart=``).

Why here and not systemd's ``RuntimeWatchdogSec=``: docs/front-panel.md "The kernel
watchdog". Only one process may hold ``/dev/watchdog``; the image leaves systemd's off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from appliance.config import Config, ConfigError
from hw.boards import UnknownBoard, detect_board
from hw.watchdog import KernelWatchdog, Watchdog

log = logging.getLogger("edgebox.watchdog")

#: The watchdog device when neither the setting nor a board profile names one.
DEFAULT_DEVICE = Path("/dev/watchdog")
#: Seconds before a watchdog that cannot be opened is tried again.
REOPEN_DELAY = 60.0


class HardwareWatchdogService:
    """Arm the kernel watchdog, keep it alive while the box runs, disarm on a clean stop."""

    name = "hardware-watchdog"

    def __init__(
        self,
        open_watchdog: Callable[[int], Watchdog],
        timeout: int,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        #: Opens the device with a timeout (`KernelWatchdog`, or one over the twin).
        self.open_watchdog = open_watchdog
        self.timeout = timeout
        #: Asked before each keep-alive: False skips it (the machine resets if it stays
        #: False for the whole timeout).
        self.healthy = healthy

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        # Opening arms it. A watchdog that cannot be opened is an error in the log and
        # tried again, never a reason to keep mail down.
        while True:
            try:
                watchdog = self.open_watchdog(self.timeout)
                break
            except OSError as exc:
                log.error("cannot open the kernel watchdog: %s; retrying", exc.strerror or exc)
                await trio.sleep(REOPEN_DELAY)
        chosen = getattr(watchdog, "timeout", self.timeout)
        interval = max(chosen / 4, 0.5)
        log.info("kernel watchdog armed: %d s, kept alive every %.1f s", chosen, interval)
        try:
            while True:
                if self.healthy():
                    watchdog.keepalive()
                await trio.sleep(interval)
        except trio.Cancelled:
            # The runner is stopping in order: the magic close disarms the watchdog.
            watchdog.close()
            log.info("kernel watchdog disarmed (clean stop)")
            raise


def hardware_watchdog(config: Config) -> HardwareWatchdogService | None:
    """Return the watchdog service if the setting turns it on, else None."""
    if not config.hardware_watchdog:
        return None
    if config.watchdog_timeout < 1:
        raise ConfigError("watchdog_timeout must be at least 1 s")
    device = Path(config.watchdog_device) if config.watchdog_device else None
    if device is None:
        try:
            board = detect_board(override=config.board)
        except UnknownBoard as exc:
            raise ConfigError(str(exc)) from None
        device = board.watchdog if board else DEFAULT_DEVICE
    return HardwareWatchdogService(
        lambda timeout: KernelWatchdog(device, timeout), config.watchdog_timeout
    )
