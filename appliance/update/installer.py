"""The box's installer as other capabilities see it: install a bundle that is on the box,
say why one was refused, reboot into it. The provisioning stick uses it
(appliance.provisioning.usb declares the `Protocol` it needs; the registry hands it
this), so the stick and the channel install through the one path,
appliance.update.install, and show their progress the same way (appliance.update.progress).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.update import outcome, progress
from appliance.update.confirm import boot_id
from appliance.update.install import UpdateError, install_bundle
from appliance.update.rauc import Rauc


class UpdateInstaller:
    """Install bundles on this box with *rauc*; *reboot* None leaves it to the admin."""

    def __init__(self, data_dir: Path, rauc: Rauc, reboot: Callable[[], None] | None) -> None:
        self.data_dir = data_dir
        self.rauc = rauc
        self._reboot = reboot

    def install(self, bundle: Path, news: Callable[[str], None]) -> tuple[bool, str]:
        """Install *bundle* (blocking); (True, its release) or (False, why not).

        *news* hears a short English line at the start, middle and end of writing.
        """
        data_dir = self.data_dir

        def moved(phase: str, percent: int) -> None:
            progress.write_progress(data_dir, progress.Progress(phase, percent, "", time.time()))
            if phase == progress.INSTALLING and percent in (0, 50, 99):
                news(f"installing update {percent}%")

        try:
            done = install_bundle(data_dir, self.rauc, bundle, now=time.time,
                                  this_boot=boot_id(), progress=moved)  # fmt: skip
        except UpdateError as exc:  # recorded in the history by install_bundle
            progress.write_progress(data_dir, progress.Progress(progress.REFUSED, 0, "",
                                                                time.time(), str(exc)))  # fmt: skip
            return False, str(exc)
        progress.clear_progress(data_dir)
        return True, done.version

    def refuse(self, reason: str) -> None:
        """Record a bundle refused before RAUC saw it (the stick's own checks)."""
        outcome.record(self.data_dir, "refused", "", "", time.time(), reason)
        progress.write_progress(self.data_dir, progress.Progress(progress.REFUSED, 0, "",
                                                                 time.time(), reason))  # fmt: skip

    def reboot(self) -> None:
        """Reboot into the installed update, if the settings say to."""
        if self._reboot is None:
            return
        progress.write_progress(self.data_dir, progress.Progress(progress.REBOOTING, 100, "",
                                                                 time.time()))  # fmt: skip
        self._reboot()
