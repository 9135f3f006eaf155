"""Install a bundle that is on the box: RAUC writes the other slot. Every path ends here:
``edgebox update install FILE|URL``, the hub's update channel (appliance.update.follow)
and a provisioning stick (appliance.provisioning.usb).

In order, each step able to refuse with nothing written:

1. RAUC checks the CMS signature against the box's one keyring (``rauc info``);
2. the bundle's release must be newer than the running one (appliance.update.version):
   a box never goes backwards;
3. RAUC checks the ``compatible`` string and writes the other slot (``rauc install``).

What is refused is recorded as ``refused`` with the reason, what is written as
``installed`` with the `Pending` update the next boot judges (appliance.update.confirm).
A URL is fetched first (appliance.update.download): a partial download never reaches
RAUC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.update import outcome
from appliance.update.download import sha256_of
from appliance.update.outcome import Pending
from appliance.update.rauc import Rauc, RaucError
from appliance.update.version import RELEASE_FILE, is_newer, running_version


class UpdateError(Exception):
    """An update that was not installed; the message says why, for the operator."""


@dataclass(frozen=True)
class Installed:
    version: str
    to_slot: str


def install_bundle(
    data_dir: Path,
    rauc: Rauc,
    bundle: Path,
    *,
    now: Callable[[], float],
    this_boot: str,
    release_file: Path = RELEASE_FILE,
    progress: Callable[[str, int], None] | None = None,
) -> Installed:
    """Install *bundle* into the other slot and record it; raise `UpdateError` if refused.

    *progress* hears ("verifying" | "installing", percent) as RAUC works.
    """
    status = rauc.status()
    target = status.other().bootname
    running = running_version(status.running().version, release_file)

    def refuse(reason: str, version: str = "") -> UpdateError:
        outcome.record(data_dir, "refused", version, target, now(), reason)
        return UpdateError(f"{bundle.name} refused: {reason}")

    if progress is not None:
        progress("verifying", 0)
    try:
        version = rauc.info(bundle)
    except RaucError as exc:
        raise refuse(f"RAUC: {exc}") from None
    if not is_newer(version, running):
        raise refuse(f"release {version} is not newer than the running {running}", version)
    try:
        if progress is None:
            rauc.install(bundle)
        else:
            progress("installing", 0)
            rauc.install(bundle, lambda percent: progress("installing", percent))
    except RaucError as exc:
        raise refuse(f"RAUC: {exc}", version) from None
    pending = Pending(version, sha256_of(bundle), status.booted, target, this_boot, now())
    outcome.record(data_dir, "installed", version, target, now(), pending=pending)
    return Installed(version, target)
