"""The OS settings the wizard's network and time steps write: systemd's own files.

The box's OS reads these at boot (and networkd/timesyncd on reload)::

    etc/systemd/network/10-edgebox-lan.network   systemd.network(5): DHCP or a fixed address
    etc/hostname                                  hostname(5)
    etc/systemd/timesyncd.conf.d/10-edgebox.conf  timesyncd.conf(5): NTP=
    etc/timezone, etc/localtime -> /usr/share/zoneinfo/ZONE   (Debian's pair)

They go under a root folder, the ``system_root`` setting; by default ``DATA/system``,
so `edgebox run` never writes a machine's ``/etc`` on its own — on a developer's or test
machine that is the point, and on the box's image edgebox runs unprivileged under
``ProtectSystem=strict`` and could not: there a root-owned script started by a path
unit watching these files (image_build/sbin/edgebox-apply-system-files) checks them
line by line and installs them into ``/run``, where networkd and timesyncd read
run-time configuration. ``system_root = "/"`` writes them in place where the process
may. Each file is
written atomically (temp, fsync, rename); the wizard writes them after provisioning
succeeded, so a refused provisioning leaves them as they were.

What this is not: applying them to the running OS (on the image the script does that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from appliance.store.files import fsync_dir, write_atomically

NETWORK_FILE: Final = "etc/systemd/network/10-edgebox-lan.network"
HOSTNAME_FILE: Final = "etc/hostname"
TIMESYNCD_FILE: Final = "etc/systemd/timesyncd.conf.d/10-edgebox.conf"
TIMEZONE_FILE: Final = "etc/timezone"
LOCALTIME_LINK: Final = "etc/localtime"

_HEADER: Final = "# Written by the edgebox setup wizard (docs/technician-guide.md).\n"


def system_root(config: Any) -> Path:
    """Where the OS files go: the ``system_root`` setting, else ``DATA/system``."""
    root = getattr(config, "system_root", "")
    return Path(root) if root else Path(config.data_dir) / "system"


def network_unit(network: dict[str, Any]) -> str:
    """Return the systemd.network(5) file for the wizard's network answers."""
    lines = [_HEADER, "[Match]", f"Name={network['interface']}", "", "[Network]"]
    if network["mode"] == "dhcp":
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={network['address']}")
        lines.append(f"Gateway={network['gateway']}")
        lines += [f"DNS={server}" for server in network["dns"]]
    # mDNS answers come from the box itself (appliance.discovery), not resolved.
    lines.append("MulticastDNS=no")
    return "\n".join(lines) + "\n"


def timesyncd_conf(time: dict[str, Any]) -> str:
    """Return the timesyncd.conf(5) drop-in for the wizard's NTP servers."""
    return f"{_HEADER}[Time]\nNTP={' '.join(time['ntp'])}\n"


def write_system_files(
    root: Path, network: dict[str, Any] | None, time: dict[str, Any] | None
) -> list[str]:
    """Write the OS files under *root*; return the paths written (relative to *root*)."""
    written: list[str] = []

    def put(relative: str, text: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text.encode("utf-8"), mode=0o644)
        written.append(relative)

    if network:
        put(NETWORK_FILE, network_unit(network))
        put(HOSTNAME_FILE, network["hostname"] + "\n")
    if time:
        put(TIMESYNCD_FILE, timesyncd_conf(time))
        put(TIMEZONE_FILE, time["timezone"] + "\n")
        link = root / LOCALTIME_LINK
        temporary = link.with_name(".localtime.new")
        temporary.unlink(missing_ok=True)
        os.symlink(f"/usr/share/zoneinfo/{time['timezone']}", temporary)
        os.replace(temporary, link)  # a symlink replaced in one rename, like the files
        fsync_dir(link.parent)
        written.append(LOCALTIME_LINK)
    return written
