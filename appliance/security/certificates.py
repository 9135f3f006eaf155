"""The one certificate factory: every CA the box or the hub keeps, and what each signs.

Three CAs are made with it, each for one job (DESIGN.md "Security"), the device
certificate an unprovisioned box shows on its setup path (`self_signed`), and the
request a box sends the hub to enrol or renew (`signing_request`):

- the box CA (`appliance.security.tls`): signs the box's *server* certificate, under
  X.509 name constraints;
- the hub's sync CA (`appliance.sync.hub.ca`): signs enrolled boxes' *client*
  certificates;
- the hub's provisioning CA (`appliance.security.provisioning_ca`): signs the
  technicians' *code-signing* certificates for USB sticks.

They differ in names, lifetimes and one or two extensions, which their modules choose;
what they share is here, so the shape of a CA and of a certificate is written once:
EC P-256 keys, SHA-256 signatures, ``basicConstraints`` critical (a CA with
``pathLen 0``: it signs certificates, never another CA), ``keyUsage`` critical (a CA
signs certificates and CRLs, a leaf only makes signatures), one extended key usage per
leaf, and key identifiers (RFC 5280 §4.2.1.1-2) so a client finds the issuer of a
certificate without guessing. A CA's private key is kept sealed under the provisioning
secret (`appliance.security.keys.seal`), written key first: a power cut between the two
writes leaves a pair that does not match, which the next start replaces.

The update keyring (`appliance.update.keyring`, P-384 and SHA-384, on the build machine
only) shares the key usages and the PEM form; its two certificates are still built there.

What this is not: policy. When a CA is replaced, which names a certificate carries and
how long it lives are decided by the modules above.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.security import keys
from appliance.store.files import write_atomically

#: The public keys a certificate of ours may carry: the box's own are P-256; a box's
#: CSR to the hub may also be P-384 (`appliance.sync.hub.ca.load_csr`).
CertifiedKey = ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key, loaded."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        """Return the CA certificate in PEM (what clients are handed to trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        subject: x509.Name,
        public_key: CertifiedKey,
        *,
        not_before: dt.datetime,
        not_after: dt.datetime,
        usage: x509.ObjectIdentifier,
        alt_names: Sequence[x509.GeneralName] = (),
        key_identifiers: bool = True,
    ) -> x509.Certificate:
        """Sign a leaf certificate for *public_key*: one extended key *usage*, no CA.

        *alt_names* become the subjectAltName extension (none if empty);
        *key_identifiers* adds the subject and authority key identifiers.
        """
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(list(alt_names)), critical=False
            )
        if key_identifiers:
            ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())


def new_key() -> ec.EllipticCurvePrivateKey:
    """Return a new EC P-256 private key, the kind every certificate of ours carries."""
    return ec.generate_private_key(ec.SECP256R1())


def ca_name(common_name: str) -> x509.Name:
    """Return a CA's subject (and issuer): organisation ``edgebox``, then *common_name*."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_ca(
    name: x509.Name,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    name_constraints: x509.NameConstraints | None = None,
    authority_key_identifier: bool = True,
) -> CertificateAuthority:
    """Make a self-signed CA that signs leaf certificates only (``pathLen 0``).

    With *name_constraints* the CA may vouch only for the names they permit; RFC 5280
    §4.2.1.10 says the extension MUST be critical, so a client that cannot apply them
    refuses the CA rather than trusting it for everything.
    """
    key = new_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    builder = builder.add_extension(ski, critical=False)
    if authority_key_identifier:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return CertificateAuthority(builder.sign(key, hashes.SHA256()), key)


def self_signed(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usage: x509.ObjectIdentifier,
    alt_names: Sequence[x509.GeneralName],
) -> x509.Certificate:
    """Make a self-signed leaf (not a CA): the unprovisioned box's device certificate.

    Nobody is asked to trust it as an issuer; the technician compares its fingerprint
    with the one the panel shows (`appliance.provisioning.device`).
    """
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )


def signing_request(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """Return a PEM certificate signing request for *key*, naming *common_name*.

    What a box sends the hub to enrol or renew: the hub takes only the key from it
    (RFC 2986 §3: the signature proves the box holds it) and writes the rest itself.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """Return the key usage of a CA (sign certificates and CRLs) or a leaf (signatures)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Return *key* as unencrypted PKCS #8 PEM.

    No passphrase: the box and the hub start unattended after a power cut, with no one
    to type one. A CA key is sealed by `store_sealed_ca` instead.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- a CA kept on disk, its key sealed -----------------------------------------------


def store_sealed_ca(
    ca: CertificateAuthority, cert_path: Path, key_path: Path, purpose: str
) -> None:
    """Write *ca*'s sealed key, then its certificate (key first, both fsynced)."""
    sealed = keys.seal(key_path.parent, purpose, private_pem(ca.key))
    write_atomically(key_path, sealed, mode=0o600)
    write_atomically(cert_path, ca.pem, mode=0o644)


def load_sealed_ca(
    cert_path: Path,
    key_path: Path,
    purpose: str,
    *,
    now: dt.datetime,
    renew_before: dt.timedelta,
) -> CertificateAuthority | None:
    """Return the CA on disk if it is whole, self-consistent and not about to expire.

    None when a file is missing or unreadable, the key does not unseal or does not
    match the certificate, or the CA ends within *renew_before*: the caller makes a new one.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        pem = keys.unseal(key_path.parent, purpose, key_path.read_bytes())
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError, keys.KeyMaterialError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - now < renew_before:
        return None
    return CertificateAuthority(cert, key)


def seal_legacy_key(legacy: Path, key_path: Path, purpose: str) -> None:
    """Seal a CA key an older version left in the clear at *legacy*, then shred it.

    An unreadable legacy key is only shredded: the CA it belonged to is replaced, as it
    always was. The plain file goes only once the sealed copy is on disk (fsynced).
    """
    if not legacy.exists():
        return
    if not key_path.exists():
        try:
            key = serialization.load_pem_private_key(legacy.read_bytes(), password=None)
        except (ValueError, TypeError):
            key = None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            sealed = keys.seal(key_path.parent, purpose, private_pem(key))
            write_atomically(key_path, sealed, mode=0o600)
    keys.shred(legacy)
