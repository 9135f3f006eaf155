"""Renewing the box's sync certificate before it expires.

A box certificate lives a year (`appliance.sync.hub.ca.BOX_VALIDITY`), and boxes of a
province are enrolled in the same weeks: without renewal they would all stop syncing
on the same day. `CertificateRenewal` checks twice a day and, once two thirds of the
certificate's life are gone (or fewer than `RENEW_BEFORE` days are left, whichever
comes first; issue 16: four months of retries, not one), makes a new EC P-256 key
here and sends a CSR to the hub's ``/sync/v1/renew`` over the mutual-TLS connection the
current certificate still opens. The hub keeps accepting the certificate the box
renewed with until the next renewal (`Enrolment.renew`), so an answer lost on a cut
link costs nothing: the box asks again.

Installing is crash-safe although it changes two files. The new key and certificate are
first written together to ``keys/sync-next.pem`` (0600); then ``sync.key`` and
``sync.pem`` are replaced, each atomically; then the pending file goes. A box that
stops between those steps finishes the install at its next start (`finish_renewal`,
called before any uplink service opens a connection), so the key and certificate on
disk never disagree for longer than a restart.

Connections already open keep their old certificate (the hub accepts it); the next
connection each replicator opens presents the new one, because `HubClient`, the relay
and the mailbox replicator build their TLS context from the files per connection.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.security.certificates import new_key, private_pem, signing_request
from appliance.store.files import write_atomically
from appliance.sync.central import SYNC_CERT_FILE, SYNC_KEY_FILE
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.hub.ca import box_id_of
from appliance.sync.status import SyncStatus
from appliance.sync.transport import HubCall, HubRefused, HubUnavailable

log = logging.getLogger("edgebox.sync.renewal")

RENEW_PATH: Final = "/sync/v1/renew"
#: Renew once fewer days than this are left: a month of retries through any outage.
RENEW_BEFORE: Final = dt.timedelta(days=30)
#: Seconds between looks at the certificate.
CHECK_INTERVAL: Final = 12 * 3600.0
#: Seconds before trying again after a failed renewal.
RETRY_INTERVAL: Final = 3600.0
#: The key and certificate of a renewal not yet installed.
PENDING_FILE: Final = "sync-next.pem"
#: The stream name in `SyncStatus` (``edgebox status``).
STREAM: Final = "certificate"


class RenewalError(Exception):
    """The hub's answer cannot be installed (nothing was written)."""


def certificate_expiry(keys_dir: Path) -> dt.datetime | None:
    """When the installed sync certificate expires; None if there is none."""
    try:
        cert = x509.load_pem_x509_certificate((Path(keys_dir) / SYNC_CERT_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return cert.not_valid_after_utc


def finish_renewal(keys_dir: Path) -> bool:
    """Install a renewal left pending by a stop mid-install; True if there was one."""
    pending = Path(keys_dir) / PENDING_FILE
    try:
        data = pending.read_bytes()
    except FileNotFoundError:
        return False
    key = serialization.load_pem_private_key(data, password=None)
    cert = x509.load_pem_x509_certificate(data)
    _install(Path(keys_dir), key, cert)
    return True


class CertificateRenewal:
    """The service that keeps the box's sync certificate from expiring."""

    name = "cert-renewal"

    def __init__(
        self,
        keys_dir: Path,
        hub: HubCall,
        status: SyncStatus,
        clock: Clock | None = None,
        *,
        renew_before: dt.timedelta = RENEW_BEFORE,
    ) -> None:
        self.keys_dir = Path(keys_dir)
        self.hub = hub
        self.status = status
        self.clock = clock or SystemClock()
        self.renew_before = renew_before

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started([])
        while True:
            ok = await self.renew_if_due()
            await self.clock.sleep(CHECK_INTERVAL if ok else RETRY_INTERVAL)

    def due(self) -> bool:
        """Whether two thirds of the certificate's life are gone, or `renew_before` is left."""
        try:
            cert = x509.load_pem_x509_certificate((self.keys_dir / SYNC_CERT_FILE).read_bytes())
        except (FileNotFoundError, ValueError):
            return False  # not enrolled: enrolment, not renewal, makes the first one
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        now = dt.datetime.fromtimestamp(self.clock.now(), dt.UTC)
        return cert.not_valid_after_utc - now <= max(self.renew_before, life / 3)

    async def renew_if_due(self) -> bool:
        """Renew if due; False after a failed attempt (to be retried sooner)."""
        if not self.due():
            return True
        try:
            expiry = await self.renew()
        except (HubUnavailable, HubRefused, RenewalError) as exc:
            # A refusal (revoked box) needs a technician; say so where status shows it.
            log.warning("certificate renewal failed: %s", exc)
            self.status.failure(STREAM, f"{type(exc).__name__}: {exc}")
            return False
        log.info("sync certificate renewed, valid until %s", expiry.isoformat())
        self.status.success(STREAM, not_after=expiry.isoformat())
        return True

    async def renew(self) -> dt.datetime:
        """Get and install a new certificate now; return its expiry."""
        current = x509.load_pem_x509_certificate((self.keys_dir / SYNC_CERT_FILE).read_bytes())
        box_id = box_id_of(current)
        if box_id is None:
            raise RenewalError("the installed certificate names no box")
        key = new_key()
        answer = await self.hub(RENEW_PATH, {"csr": signing_request(key, box_id)})
        cert = _checked(answer, key, box_id)
        pending = private_pem(key) + cert.public_bytes(serialization.Encoding.PEM)
        write_atomically(self.keys_dir / PENDING_FILE, pending, mode=0o600)
        _install(self.keys_dir, key, cert)
        return cert.not_valid_after_utc


def _checked(answer: Any, key: ec.EllipticCurvePrivateKey, box_id: str) -> x509.Certificate:
    # The answer came over a connection verified against the hub's CA; what is left
    # to check is that it is a certificate for this key and this box.
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode("ascii"))
    except (KeyError, TypeError, ValueError, UnicodeEncodeError) as exc:
        raise RenewalError(f"the hub's renewal answer is unusable: {exc}") from None
    if cert.public_key() != key.public_key():
        raise RenewalError("the hub signed a certificate for another key")
    if box_id_of(cert) != box_id:
        raise RenewalError("the hub's certificate names another box")
    return cert


def _install(keys_dir: Path, key: Any, cert: x509.Certificate) -> None:
    write_atomically(keys_dir / SYNC_KEY_FILE, private_pem(key), mode=0o600)
    write_atomically(
        keys_dir / SYNC_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    (keys_dir / PENDING_FILE).unlink(missing_ok=True)
