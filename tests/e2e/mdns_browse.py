"""An independent mDNS / DNS-SD browser for the discovery tests: python-zeroconf's own
ServiceBrowser (avahi-browse needs avahi-daemon and D-Bus, which a test's network
namespace does not have).

Usage: ``mdns_browse.py INTERFACE_ADDRESS TYPE...``; prints one JSON line per event
(added, updated, removed) with the resolved TXT, port and addresses, until killed.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf


def main() -> None:
    interface, *types = sys.argv[1:]
    zc = Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(event), flush=True)

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        event: dict[str, Any] = {"event": state_change.name.lower(), "type": service_type,
                                 "name": name}  # fmt: skip
        if state_change is not ServiceStateChange.Removed:
            info = zeroconf.get_service_info(service_type, name, timeout=3000)
            if info is not None:
                event["port"] = info.port
                event["server"] = info.server
                event["addresses"] = sorted(info.parsed_addresses())
                event["txt"] = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        emit(event)

    browser = ServiceBrowser(zc, types, handlers=[changed])
    print(json.dumps({"event": "browsing"}), flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin or kills us
    finally:
        browser.cancel()
        zc.close()


if __name__ == "__main__":
    main()
