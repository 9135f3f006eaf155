"""The box's own TLS material: a local CA and the server certificate it signs.

Every TLS service on the box (SMTP STARTTLS and 465, IMAP STARTTLS and 993, HTTPS)
uses one server certificate, issued by a CA that exists only on this box. Both are made
here with `cryptography`, so a box boots and serves TLS with no network and no outside
CA. Clients that should trust the box (mail clients, the hub, tests) import ``ca.pem``
once; the server certificate can then be reissued (new hostname, near expiry) without
anyone noticing.

Files in ``keys_dir``::

    ca.pem       the CA certificate (public; hand it to clients)
    ca.key       the CA private key (0600)
    server.pem   the server certificate followed by the CA certificate
    server.key   the server private key (0600)

What this is not: a certificate authority service, ACME, or revocation. Mutual TLS to
the hub and the data-key handling live with sync and the blob store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.store.files import write_atomically

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_VALIDITY: Final = dt.timedelta(days=3650)
#: 825 days: the longest server-certificate lifetime Apple platforms (iOS, macOS mail
#: clients) accept, so the box's certificate is usable by every client family listed in
#: REQUIREMENTS.md §2.
SERVER_VALIDITY: Final = dt.timedelta(days=825)
#: A certificate (or CA) that ends sooner than this is replaced at the next start.
RENEW_BEFORE: Final = dt.timedelta(days=30)
#: Certificates start one day in the past. A box fresh out of the box may have its RTC
#: set to Thai local time (UTC+7) or be a few hours off until NTP runs on GIN; a
#: certificate "not yet valid" would make every client refuse the box.
BACKDATE: Final = dt.timedelta(days=1)

#: Names the server certificate always carries, whatever the configured hostnames:
#: the technician's laptop and the box's own health checks connect through loopback.
ALWAYS_DNS: Final = ("localhost",)
ALWAYS_IP: Final = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True)
class TLSPaths:
    """Where the four TLS files of one box live."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, keys_dir: Path) -> TLSPaths:
        """Return the standard file names inside *keys_dir*."""
        keys_dir = Path(keys_dir)
        return cls(
            ca_cert=keys_dir / "ca.pem",
            ca_key=keys_dir / "ca.key",
            server_cert=keys_dir / "server.pem",
            server_key=keys_dir / "server.key",
        )


def ensure_tls_material(keys_dir: Path, hostnames: Sequence[str]) -> TLSPaths:
    """Create the CA and server certificate in *keys_dir* unless usable ones exist.

    Idempotent: files that are present, consistent and valid for 30 more days are left
    byte for byte as they are. The server certificate is reissued from the same CA when
    it lacks one of *hostnames* or is about to expire; the CA itself is replaced only if
    it is missing, unreadable, or about to expire (and then the server certificate too).
    """
    dns_names, ips = _subject_names(hostnames)
    paths = TLSPaths.in_dir(keys_dir)
    Path(keys_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca = _load_ca(paths, now)
    if ca is None:
        ca = _new_ca(dns_names[0], now)
        # Key first: if power fails between the two writes, the next start sees a
        # certificate that does not match its key and makes a new pair.
        write_atomically(paths.ca_key, _private_pem(ca[1]), mode=0o600)
        write_atomically(paths.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), mode=0o644)
    ca_cert, ca_key = ca

    if not _server_is_usable(paths, ca_cert, dns_names, ips, now):
        cert, key = _new_server(ca_cert, ca_key, dns_names, ips, now)
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
            serialization.Encoding.PEM
        )
        write_atomically(paths.server_key, _private_pem(key), mode=0o600)
        write_atomically(paths.server_cert, chain, mode=0o644)
    return paths


def server_ssl_context(keys_dir: Path) -> ssl.SSLContext:
    """Return a server-side context (TLS 1.2 or newer) with the box's certificate chain."""
    paths = _existing(keys_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.2 is the floor: older Outlook and Android clients still in government
    # offices speak it, and nothing below it is safe.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.server_cert, paths.server_key)
    return context


def client_ssl_context(keys_dir: Path) -> ssl.SSLContext:
    """Return a client-side context that trusts this box's CA and nothing else."""
    paths = _existing(keys_dir)
    # PROTOCOL_TLS_CLIENT already requires a valid certificate and checks the hostname.
    # No system CAs are loaded: this context is for talking to edgeboxes.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=paths.ca_cert)
    # Strict X.509 checks: what we issue must pass them, as newer Pythons turn them on
    # by default and real clients are at least this fussy.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


# --- names -------------------------------------------------------------------------


def _subject_names(hostnames: Sequence[str]) -> tuple[list[str], list[IPAddress]]:
    """Split *hostnames* into DNS names (first = primary) and IPs, adding loopback."""
    if isinstance(hostnames, str):
        # A bare string is a sequence of one-letter "hostnames"; catch it early.
        raise TypeError("hostnames must be a sequence of names, not a single string")
    dns_names: list[str] = []
    ips: list[IPAddress] = []
    for raw in hostnames:
        name = raw.strip().rstrip(".").lower()
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            dns = _dns_name(raw, name)
            if dns not in dns_names:
                dns_names.append(dns)
        else:
            if ip not in ips:
                ips.append(ip)
    for dns in ALWAYS_DNS:
        if dns not in dns_names:
            dns_names.append(dns)
    for ip in ALWAYS_IP:
        if ip not in ips:
            ips.append(ip)
    return dns_names, ips


def _dns_name(raw: str, name: str) -> str:
    """Return *name* as it goes into a certificate (ASCII, A-labels for Thai names)."""
    try:
        # Certificates carry IDNs as A-labels (RFC 5280 §7.2), e.g. a .ไทย domain.
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise ValueError(f"not a valid hostname: {raw!r}") from None
    labels = ascii_name.split(".")
    if not ascii_name or len(ascii_name) > 253 or not all(_is_ldh_label(lb) for lb in labels):
        raise ValueError(f"not a valid hostname: {raw!r}")
    return ascii_name


def _is_ldh_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    )


# --- checking what is on disk ------------------------------------------------------


def _load_ca(
    paths: TLSPaths, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """Return the CA on disk if it is whole, self-consistent and not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return cert, key


def _server_is_usable(
    paths: TLSPaths,
    ca_cert: x509.Certificate,
    dns_names: Sequence[str],
    ips: Sequence[IPAddress],
    now: dt.datetime,
) -> bool:
    """Return whether the server files on disk can be kept as they are."""
    try:
        chain = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    leaf = chain[0]
    if chain[1:] != [ca_cert] or leaf.public_key() != key.public_key():
        return False
    try:
        # Catches a server certificate left over from a CA that has since been replaced.
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return set(dns_names) <= have_dns and set(ips) <= have_ips


# --- making new material -----------------------------------------------------------


def _new_ca(primary: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgebox local CA {primary}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        # path_length=0: this CA signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str],
    ips: Sequence[IPAddress],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # A leaf must not outlive its issuer; clients would reject the tail end anyway.
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- files -------------------------------------------------------------------------


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted on purpose: the box must start unattended after a power cut, with no
    # one to type a passphrase. The file mode (0600) and the box's disk are the guard.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _existing(keys_dir: Path) -> TLSPaths:
    paths = TLSPaths.in_dir(keys_dir)
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise FileNotFoundError(
                f"TLS file {path} is missing; ensure_tls_material() creates it at start-up"
            )
    return paths
