"""The hub's client CA: it signs the certificate each enrolled box presents to the hub.

A hub holds two CAs, on purpose:

- the box CA every edgebox has (``keys/ca.pem``, `appliance.security.tls`), which signs
  the hub's *server* certificate for HTTPS, SMTP and IMAP. Boxes install it as
  ``central-ca.pem`` and trust it for the hub and the hub's mail servers;
- this *sync CA* (``keys/sync-ca.pem`` / ``sync-ca.key.sealed``), which signs only *client*
  certificates of enrolled boxes and is the only CA the hub-sync listener accepts
  client certificates from.

Keeping them apart means a certificate the box CA signed for a server (the hub's own,
or one made for a technician's test host) can never pass as an enrolled box, and the
sync CA's trust is never handed to anyone: boxes never need it, only the hub does.

A box certificate (`issue_box_certificate`) has subject CN = box id, a SAN URI
``urn:edgebox:box:<box id>`` (RFC 5280 §4.2.1.6), the clientAuth EKU only, and is valid
for one year. The CSR's own signature is checked first (RFC 2986 §3: it proves the box
holds the key it asks a certificate for).

Both are made by the one certificate factory (`appliance.security.certificates`); this
module decides their names, usages and lifetimes.

What this is not: revocation lists or OCSP. The hub refuses a revoked box by looking up
the certificate's serial among the enrolled boxes (`enrolment`) on every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.security import keys
from appliance.security.certificates import (
    CertificateAuthority,
    ca_name,
    load_sealed_ca,
    new_ca,
    seal_legacy_key,
    store_sealed_ca,
)

SYNC_CA_CERT: Final = "sync-ca.pem"
#: The sync CA's private key, sealed under the provisioning secret like the data key
#: and the box CA's key (`appliance.security.keys.seal`; issue 16).
SYNC_CA_KEY: Final = "sync-ca.key.sealed"
#: Where a hub of an older version kept the key in the clear; sealed at the next start.
LEGACY_SYNC_CA_KEY: Final = "sync-ca.key"
SYNC_CA_KEY_PURPOSE: Final = "sync-ca-key"

CA_VALIDITY: Final = dt.timedelta(days=3650)
#: A box certificate lasts a year; re-enrolment (a new token) issues a fresh one.
BOX_VALIDITY: Final = dt.timedelta(days=365)
#: As in `appliance.security.tls`: a box whose clock is a few hours off must still
#: accept the certificate it was just given.
BACKDATE: Final = dt.timedelta(days=1)
#: A CA that ends sooner than this is replaced at the next start.
RENEW_BEFORE: Final = dt.timedelta(days=30)

#: The SAN URI that names a box (RFC 5280 §4.2.1.6 uniformResourceIdentifier).
BOX_URI_PREFIX: Final = "urn:edgebox:box:"

#: A box id as `init_box` makes it (uuid4 hex, 32 characters), or any short id of the
#: same alphabet; at most 40 so the service account ``sync-<id>@...`` keeps its local
#: part within RFC 5321's 64 octets.
_BOX_ID: Final = re.compile(r"[0-9a-z][0-9a-z-]{0,39}")


class CertificateRequestError(Exception):
    """A CSR that the hub will not sign; the message says why (for a 400 answer)."""


#: The hub's client CA, loaded.
SyncCA = CertificateAuthority


def valid_box_id(box_id: object) -> bool:
    """Return whether *box_id* is a well-formed box id (what goes into a certificate)."""
    return isinstance(box_id, str) and _BOX_ID.fullmatch(box_id) is not None


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's DER encoding, the value enrolment tokens pin."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def ensure_sync_ca(keys_dir: Path, now: dt.datetime | None = None) -> SyncCA:
    """Load the hub's sync CA from *keys_dir*, creating it if missing or near its end."""
    now = now or dt.datetime.now(dt.UTC)
    keys_dir = Path(keys_dir)
    cert_path, key_path = keys_dir / SYNC_CA_CERT, keys_dir / SYNC_CA_KEY
    keys.ensure_provisioning_secret(keys_dir)
    seal_legacy_key(keys_dir / LEGACY_SYNC_CA_KEY, key_path, SYNC_CA_KEY_PURPOSE)
    loaded = load_sealed_ca(
        cert_path, key_path, SYNC_CA_KEY_PURPOSE, now=now, renew_before=RENEW_BEFORE
    )
    if loaded is not None:
        return loaded
    # It signs box certificates only (pathLen 0), never another CA.
    ca = new_ca(
        ca_name("edgebox hub sync CA"), not_before=now - BACKDATE, not_after=now + CA_VALIDITY
    )
    store_sealed_ca(ca, cert_path, key_path, SYNC_CA_KEY_PURPOSE)
    return ca


def load_csr(pem: object) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature; `CertificateRequestError` if bad."""
    if not isinstance(pem, str) or len(pem) > 16 * 1024:
        raise CertificateRequestError("csr must be a PEM text of at most 16 KiB")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise CertificateRequestError("csr is not a PEM certificate signing request") from None
    # RFC 2986 §3: the signature proves the requester holds the private key.
    if not csr.is_signature_valid:
        raise CertificateRequestError("csr signature does not verify")
    key = csr.public_key()
    if not (
        isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1)
    ):
        raise CertificateRequestError("csr key must be EC P-256 or P-384")
    return csr


def issue_box_certificate(
    ca: SyncCA, csr: x509.CertificateSigningRequest, box_id: str, now: dt.datetime
) -> x509.Certificate:
    """Sign a client certificate for *box_id* with the key of *csr* (already checked).

    Only the key is taken from the CSR: subject, names and usages are the hub's, so a
    box cannot ask for a name or a usage it should not have.
    """
    if not valid_box_id(box_id):
        raise CertificateRequestError("box_id must be 1-40 lower-case letters, digits or -")
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # load_csr checked it
    return ca.issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, box_id)]),
        public_key,
        not_before=now - BACKDATE,
        not_after=min(now + BOX_VALIDITY, ca.cert.not_valid_after_utc),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        alt_names=[x509.UniformResourceIdentifier(BOX_URI_PREFIX + box_id)],
    )


def box_id_of(cert: x509.Certificate) -> str | None:
    """Return the box id a (verified) box certificate names, or None if it names none.

    The SAN URI is the name; the CN must agree with it, so a certificate cannot carry
    two identities.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    ids = [u.removeprefix(BOX_URI_PREFIX) for u in uris if u.startswith(BOX_URI_PREFIX)]
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(ids) != 1 or len(common_names) != 1 or common_names[0].value != ids[0]:
        return None
    return ids[0] if valid_box_id(ids[0]) else None
