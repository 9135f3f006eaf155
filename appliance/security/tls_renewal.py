"""Keep the box's server certificate fresh while the box runs.

`ensure_tls_material` renews the server certificate at start once two thirds of its
397 days are gone, but an appliance may run for a year without a restart. This service
looks twice a day; when the certificate on disk was reissued it loads the new chain into
every live server context (`reload_server_contexts`), so the next handshake on every
listener presents it and open connections keep theirs. A failure is logged and retried
at the next look; `appliance.health.certificates` turns a renewal that keeps failing
into a warning, then an error, long before clients would see an expired certificate.

What this is not: the sync certificate the hub signs (`appliance.sync.renewal`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio

from appliance.security.keys import KeyMaterialError
from appliance.security.tls import TLSPaths, ensure_tls_material, reload_server_contexts

log = logging.getLogger("edgebox.tls")

#: Seconds between looks at the certificate: with a third of 397 days left at renewal,
#: a box has over four months of retries before anything expires.
CHECK_INTERVAL: Final = 12 * 3600.0


class TLSRenewal:
    """The service that renews the server certificate of a running box."""

    name = "tls-renewal"

    def __init__(
        self,
        keys_dir: Path,
        hostnames: Sequence[str],
        domains: Sequence[str],
        *,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.keys_dir = Path(keys_dir)
        self.hostnames = list(hostnames)
        self.domains = list(domains)
        self.interval = interval
        #: The chain the listeners were loaded with. Compared with the file rather than
        #: with the file before our own renewal: an `edgebox` command run beside the
        #: box (which opens the box, and so renews a due certificate) changes it too.
        self.loaded: bytes | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.loaded = TLSPaths.in_dir(self.keys_dir).server_cert.read_bytes()
        task_status.started([])
        while True:
            await trio.sleep(self.interval)
            await self.renew_if_due()

    async def renew_if_due(self) -> bool:
        """Reissue the certificate if due and reload the listeners; True if it changed."""
        chain = TLSPaths.in_dir(self.keys_dir).server_cert
        try:
            if self.loaded is None:
                self.loaded = chain.read_bytes()
            await trio.to_thread.run_sync(
                ensure_tls_material, self.keys_dir, self.hostnames, self.domains
            )
            current = chain.read_bytes()
            if current == self.loaded:
                return False
            count = reload_server_contexts(self.keys_dir)
            self.loaded = current
        except (OSError, ValueError, KeyMaterialError) as exc:
            log.warning("server certificate renewal failed: %s", exc)
            return False
        log.info("server certificate renewed; %d listener contexts reloaded", count)
        return True
