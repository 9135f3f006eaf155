"""Update signing keyrings: who may sign the bundles a box installs.

Two channels, each with its own CA, so that a box can never be talked into the other's
bundles: ``development`` (the developers' machines, CI) and ``release`` (the release
machine only). A box trusts exactly one CA certificate, its channel's ``ca.pem``, written
into RAUC's system.conf as the keyring; a development bundle on a release box fails
RAUC's signature check before a byte is written.

Files of one keyring folder (on the build machine, never on a box)::

    <dir>/<channel>/ca.pem         the channel's CA; copied into the image as the keyring
    <dir>/<channel>/ca.key         its key (0600), used only to certify signing keys
    <dir>/<channel>/signing.pem    the signing certificate: codeSigning EKU only
    <dir>/<channel>/signing.key    its key (0600), used by `rauc bundle`

The signing certificate carries the codeSigning extended key usage (and the box's
system.conf sets ``check-purpose=codesign``), so a TLS certificate issued by a CA the box
happens to trust cannot sign an update. What this is not: the box's own TLS CA, the sync
CA or the provisioning CA (appliance.provisioning.provisioning_ca); those certify other
things and RAUC never sees them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.store.files import write_atomically

CHANNELS: Final = ("development", "release")
CA_VALIDITY: Final = dt.timedelta(days=3650)
#: A signing key lives two years: long enough between release-machine ceremonies, short
#: enough that a leaked one stops working by itself.
SIGNING_VALIDITY: Final = dt.timedelta(days=730)
BACKDATE: Final = dt.timedelta(hours=1)


class KeyringError(Exception):
    """A keyring that cannot be made or used; the message is for the operator."""


@dataclass(frozen=True)
class Keyring:
    """The paths of one channel's keyring."""

    channel: str
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def signing_cert(self) -> Path:
        return self.folder / "signing.pem"

    @property
    def signing_key(self) -> Path:
        return self.folder / "signing.key"


def open_keyring(directory: Path, channel: str) -> Keyring:
    """Return *channel*'s keyring in *directory*; raise `KeyringError` if incomplete."""
    keyring = _keyring(directory, channel)
    missing = [p.name for p in (keyring.ca_cert, keyring.signing_cert, keyring.signing_key)
               if not p.is_file()]  # fmt: skip
    if missing:
        raise KeyringError(f"{channel} keyring in {keyring.folder} lacks {', '.join(missing)}")
    return keyring


def ensure_keyring(directory: Path, channel: str, *, now: dt.datetime | None = None) -> Keyring:
    """Return *channel*'s keyring in *directory*, making the missing parts.

    An existing CA is never replaced (boxes trust it); a missing signing pair is issued
    by it again.
    """
    keyring = _keyring(directory, channel)
    keyring.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = now or dt.datetime.now(dt.UTC)
    ca_key_path = keyring.folder / "ca.key"
    if keyring.ca_cert.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(keyring.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise KeyringError(f"{ca_key_path} is not an EC private key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = _ca_certificate(channel, ca_key, now)
        write_atomically(ca_key_path, _private_pem(ca_key), mode=0o600)
        write_atomically(keyring.ca_cert, _pem(ca_cert), mode=0o644)
    if not (keyring.signing_cert.exists() and keyring.signing_key.exists()):
        if ca_cert.not_valid_after_utc <= now:
            # A new CA means every box in the field needs a new keyring: a ceremony, not
            # something a build script does by itself.
            raise KeyringError(f"the {channel} update CA has expired; make a new keyring")
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _signing_certificate(channel, key, ca_cert, ca_key, now)
        write_atomically(keyring.signing_key, _private_pem(key), mode=0o600)
        write_atomically(keyring.signing_cert, _pem(cert), mode=0o644)
    return keyring


def _keyring(directory: Path, channel: str) -> Keyring:
    if channel not in CHANNELS:
        raise KeyringError(f"unknown update channel {channel!r}; one of {', '.join(CHANNELS)}")
    return Keyring(channel, directory / channel)


def _ca_certificate(
    channel: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgebox {channel} update CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: it certifies signing keys, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _signing_certificate(
    channel: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"edgebox {channel} update signing"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SIGNING_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        # RFC 5280 §4.2.1.12: id-kp-codeSigning, and nothing else.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
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


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
