"""The hub's provisioning CA: it certifies the technicians' USB-stick signing keys.

Files in the hub's ``keys`` folder::

    provisioning-ca.pem            the CA certificate; boxes trust it (copy it into the
                                   image as ``device/provisioning-ca.pem``)
    provisioning-ca.key.sealed     its key, sealed like the sync CA's
    provisioning-crl.pem           the certificates revoked so far (RFC 5280 §5), signed
                                   by the CA, made again at every revocation

A technician's certificate (`issue_technician_certificate`) has CN = the technician's
name, the codeSigning EKU only and a short life (30 days by default): revocation reaches
a box only through a CRL the box has seen, so a short life bounds how long a stolen key
works on a box that never saw the newer list.

What this is not: the box CA (server TLS) or the sync CA (enrolled boxes' client
certificates); a provisioning key can sign a stick and nothing else. All three are made
by the one certificate factory, `appliance.security.certificates`. It is in `security/`
rather than `provisioning/` because the hub's sync routes publish it to enrolling boxes
(`published`) and the box's provisioning trusts it: both build on it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.security import keys
from appliance.security.certificates import (
    CertificateAuthority,
    ca_name,
    new_ca,
    new_key,
    private_pem,
    store_sealed_ca,
)
from appliance.store.files import write_atomically

CA_CERT: Final = "provisioning-ca.pem"
CA_KEY: Final = "provisioning-ca.key.sealed"
CRL_FILE: Final = "provisioning-crl.pem"
_KEY_PURPOSE: Final = "provisioning-ca-key"
CA_VALIDITY: Final = dt.timedelta(days=3650)
DEFAULT_DAYS: Final = 30
BACKDATE: Final = dt.timedelta(hours=1)


#: The provisioning CA, loaded.
ProvisioningCA = CertificateAuthority


def ensure_provisioning_ca(keys_dir: Path) -> ProvisioningCA:
    """Load the provisioning CA from *keys_dir*, creating it on first use."""
    keys.ensure_provisioning_secret(keys_dir)
    cert_path, key_path = keys_dir / CA_CERT, keys_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        pem = keys.unseal(keys_dir, _KEY_PURPOSE, key_path.read_bytes())
        key = serialization.load_pem_private_key(pem, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.public_key() == key.public_key():
            return ProvisioningCA(cert, key)
    # Never silently replaced once boxes trust it: only a missing or broken pair is made.
    # It certifies technicians' keys only (pathLen 0), never another CA.
    now = dt.datetime.now(dt.UTC)
    ca = new_ca(
        ca_name("edgebox hub provisioning CA"),
        not_before=now - BACKDATE,
        not_after=now + CA_VALIDITY,
        authority_key_identifier=False,
    )
    store_sealed_ca(ca, cert_path, key_path, _KEY_PURPOSE)
    _write_crl(keys_dir, ca, [])
    return ca


def issue_technician_certificate(
    keys_dir: Path, name: str, days: int = DEFAULT_DAYS
) -> tuple[bytes, bytes]:
    """Make a signing key for technician *name*; return (key PEM, certificate chain PEM)."""
    if not name.strip() or days < 1:
        raise ValueError("a technician's name and a positive number of days are required")
    ca = ensure_provisioning_ca(keys_dir)
    now = dt.datetime.now(dt.UTC)
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox technician"),
            x509.NameAttribute(NameOID.COMMON_NAME, name.strip()),
        ]
    )
    cert = ca.issue(
        subject,
        key.public_key(),
        not_before=now - BACKDATE,
        not_after=now + dt.timedelta(days=days),
        usage=ExtendedKeyUsageOID.CODE_SIGNING,
        key_identifiers=False,
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.pem
    return private_pem(key), chain


def revoke_technician_certificate(keys_dir: Path, serial: int) -> bytes:
    """Add *serial* to the provisioning CRL; return the new CRL (PEM)."""
    ca = ensure_provisioning_ca(keys_dir)
    revoked = [entry.serial_number for entry in _crl(keys_dir)]
    if serial not in revoked:
        revoked.append(serial)
    return _write_crl(keys_dir, ca, revoked)


def _crl(keys_dir: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((keys_dir / CRL_FILE).read_bytes())


def _write_crl(keys_dir: Path, ca: ProvisioningCA, serials: list[int]) -> bytes:
    now = dt.datetime.now(dt.UTC)
    number = 1
    if (keys_dir / CRL_FILE).exists():
        ext = _crl(keys_dir).extensions.get_extension_for_class(x509.CRLNumber)
        number = ext.value.crl_number + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + CA_VALIDITY)
        # RFC 5280 §5.2.3: a monotonically increasing number, so a box keeps the newest.
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    pem = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    write_atomically(keys_dir / CRL_FILE, pem, mode=0o644)
    return pem


def published(keys_dir: Path) -> dict[str, str]:
    """What the hub hands an enrolling box: its provisioning CA and CRL, if it has them."""
    answer = {}
    for field, name in (("provisioning_ca", CA_CERT), ("provisioning_crl", CRL_FILE)):
        if (keys_dir / name).exists():
            answer[field] = (keys_dir / name).read_text("ascii")
    return answer


def install_published(keys_dir: Path, answer: dict[str, object]) -> bool:
    """Install the provisioning CA and CRL from the hub's enrolment answer; return whether.

    The answer came over the connection pinned to the hub's CA (appliance.provisioning.enrol),
    so it is the hub's own. Anything unreadable is skipped: enrolment does not fail for
    the stick's trust, and the image's CA still applies.
    """
    ca_pem, crl_pem = answer.get("provisioning_ca"), answer.get("provisioning_crl")
    if not isinstance(ca_pem, str):
        return False
    try:
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
        crl = None
        if isinstance(crl_pem, str):
            crl = x509.load_pem_x509_crl(crl_pem.encode("ascii"))
            if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                crl = None
    except (ValueError, UnicodeEncodeError, x509.ExtensionNotFound):
        return False
    write_atomically(keys_dir / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    if crl is not None:
        write_atomically(
            keys_dir / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
    return True
