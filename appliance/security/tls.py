"""The box's own TLS material: a local CA and the server certificate it signs.

Every TLS service on the box (SMTP STARTTLS and 465, IMAP STARTTLS and 993, HTTPS)
uses one server certificate, issued by a CA that exists only on this box. Both are made
here with `cryptography`, so a box boots and serves TLS with no network and no outside
CA. Clients that should trust the box (mail clients, the hub, tests) import ``ca.pem``
once; the server certificate can then be reissued (new hostname, near expiry) without
anyone noticing.

The rules the certificates keep, and why:

- The server certificate spans at most 397 days, backdating included: Apple platforms
  refuse a server certificate from a user-installed CA that spans more than 825 days and
  every public-CA rule since 2020 caps it at 398. It is reissued once two thirds of its
  life are gone (`server_renewal_due`), by `ensure_tls_material` at start and by
  `appliance.security.tls_renewal` while the box runs.
- The CA carries X.509 name constraints (RFC 5280 §4.2.1.10): it may vouch only for
  names under the agency's domains, the box's own host names and ``localhost``, and for
  the box's own IP addresses and loopback. A stolen CA key cannot then mint a
  certificate for a bank or a ministry web site that a phone trusting this CA accepts.
  A CA made before the constraints existed is kept (replacing it would make every
  phone and PC that trusts it refuse the box) and `appliance.health.certificates`
  warns until an admin replaces it; a constrained CA that does not cover the names the
  box now needs is replaced at once, since clients would refuse its certificates anyway.
- The CA private key is sealed under the provisioning secret like the data key
  (`appliance.security.keys.seal`); a plain ``ca.key`` left by an older version is
  sealed and shredded at the next start.

Files in ``keys_dir``::

    ca.pem          the CA certificate (public; hand it to clients)
    ca.key.sealed   the CA private key, sealed (0600)
    server.pem      the server certificate followed by the CA certificate
    server.key      the server private key (0600; the listeners read it at every start)

The certificates are made by the one certificate factory,
`appliance.security.certificates`; this module decides their names and lifetimes.

What this is not: a certificate authority service, ACME, or revocation. Mutual TLS to
the hub and the data-key handling live with sync and the blob store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.security import keys
from appliance.security.certificates import (
    CertificateAuthority,
    ca_name,
    load_sealed_ca,
    new_ca,
    new_key,
    private_pem,
    seal_legacy_key,
    store_sealed_ca,
)
from appliance.store.files import write_atomically

log = logging.getLogger("edgebox.tls")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_VALIDITY: Final = dt.timedelta(days=3650)
#: The whole span of a server certificate, from its (backdated) start to its end: 397
#: days is within every client's limit (Apple: 825 for a user-installed CA, 398 for
#: public CAs; browsers: 398), with a day to spare for clocks that round.
SERVER_VALIDITY: Final = dt.timedelta(days=397)
#: A CA that ends sooner than this is replaced at the next start.
RENEW_BEFORE: Final = dt.timedelta(days=30)
#: Certificates start one day in the past, inside `SERVER_VALIDITY`. A box fresh out
#: of the box may have its RTC set to Thai local time (UTC+7) or be a few hours off
#: until NTP runs on GIN; a certificate "not yet valid" would make every client refuse it.
BACKDATE: Final = dt.timedelta(days=1)

#: Names the server certificate always carries, whatever the configured hostnames:
#: the technician's laptop and the box's own health checks connect through loopback.
ALWAYS_DNS: Final = ("localhost",)
ALWAYS_IP: Final = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
#: IP ranges the CA may always vouch for: loopback, where the dev box and the box's
#: own checks connect.
LOOPBACK_NETWORKS: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

#: The `keys.seal` purpose of the CA key, and the file of a pre-sealing plain key.
CA_KEY_PURPOSE: Final = "tls-ca-key"
LEGACY_CA_KEY: Final = "ca.key"


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
            ca_key=keys_dir / "ca.key.sealed",
            server_cert=keys_dir / "server.pem",
            server_key=keys_dir / "server.key",
        )


def ensure_tls_material(
    keys_dir: Path,
    hostnames: Sequence[str],
    domains: Iterable[str] = (),
    *,
    now: dt.datetime | None = None,
) -> TLSPaths:
    """Create the CA and server certificate in *keys_dir* unless usable ones exist.

    Idempotent: files that are present, consistent and not yet due for renewal are left
    byte for byte as they are. The server certificate is reissued from the same CA when
    it lacks one of *hostnames* or two thirds of its life are gone. The CA is replaced
    if it is missing, unreadable, about to expire, or constrained to names that leave
    out one of *hostnames* (then the server certificate too). A new CA may vouch for
    names under *domains* (the agency's mail domains) and the host names only.
    """
    dns_names, ips = _subject_names(hostnames)
    paths = TLSPaths.in_dir(keys_dir)
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys.ensure_provisioning_secret(keys_dir)
    now = now or dt.datetime.now(dt.UTC)
    seal_legacy_key(keys_dir / LEGACY_CA_KEY, paths.ca_key, CA_KEY_PURPOSE)

    ca = load_sealed_ca(
        paths.ca_cert, paths.ca_key, CA_KEY_PURPOSE, now=now, renew_before=RENEW_BEFORE
    )
    if ca is not None and not _ca_covers(ca.cert, dns_names, ips):
        log.warning("the CA's name constraints leave out %s; making a new CA", hostnames)
        ca = None
    if ca is None:
        permitted = permitted_names(dns_names, ips, domains)
        ca = new_ca(
            ca_name(f"edgebox local CA {dns_names[0]}"),
            not_before=now - BACKDATE,
            not_after=now + CA_VALIDITY,
            name_constraints=permitted,
        )
        # Key first: if power fails between the two writes, the next start sees a
        # certificate that does not match its key and makes a new pair.
        store_sealed_ca(ca, paths.ca_cert, paths.ca_key, CA_KEY_PURPOSE)

    if not _server_is_usable(paths, ca.cert, dns_names, ips, now):
        cert, key = _new_server(ca, dns_names, ips, now)
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.pem
        write_atomically(paths.server_key, private_pem(key), mode=0o600)
        write_atomically(paths.server_cert, chain, mode=0o644)
    return paths


#: The TLS 1.2 cipher suites every listener and client of the box offers: ECDHE key
#: exchange (forward secrecy) with an AEAD cipher only, as in Mozilla's "intermediate"
#: profile and BSI TR-02102-2. CBC suites (Lucky 13, padding oracles) and static-RSA key
#: exchange are never offered. RSA authentication stays listed for peers with RSA
#: certificates (a central Postfix or Zimbra); the box's own certificates are ECDSA.
#: TLS 1.3 suites are all AEAD with forward secrecy and are not affected by this string.
TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """Restrict *context* to TLS 1.2+ with AEAD, forward-secret suites; return it.

    Every TLS context the box makes, server or client, goes through here.
    """
    # TLS 1.2 is the floor: older Outlook and Android clients still in government
    # offices speak it, and nothing below it is safe.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    return context


#: Every live server context and the keys directory it was loaded from, so a renewed
#: certificate reaches every listener (`reload_server_contexts`).
_SERVER_CONTEXTS: weakref.WeakKeyDictionary[ssl.SSLContext, Path] = weakref.WeakKeyDictionary()


def server_ssl_context(keys_dir: Path) -> ssl.SSLContext:
    """Return a server-side context (TLS 1.2 or newer) with the box's certificate chain."""
    paths = _existing(keys_dir)
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(paths.server_cert, paths.server_key)
    _SERVER_CONTEXTS[context] = Path(keys_dir)
    return context


def reload_server_contexts(keys_dir: Path) -> int:
    """Load the current chain into every live server context of *keys_dir*; return how many.

    OpenSSL copies the certificate into each new connection, so handshakes from now on
    present the new certificate and connections already open keep theirs.
    """
    paths = _existing(keys_dir)
    count = 0
    for context, where in list(_SERVER_CONTEXTS.items()):
        if where == Path(keys_dir):
            context.load_cert_chain(paths.server_cert, paths.server_key)
            count += 1
    return count


def server_renewal_due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """Return whether two thirds of *cert*'s life are gone (or it expires within 30 days)."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    left = cert.not_valid_after_utc - now
    return left < max(life / 3, RENEW_BEFORE)


def permitted_names(
    dns_names: Sequence[str], ips: Sequence[IPAddress], domains: Iterable[str] = ()
) -> x509.NameConstraints:
    """Return the name constraints of a CA for these host names, IPs and mail domains.

    A DNS subtree ``demo.go.th`` permits that name and every name below it (RFC 5280
    §4.2.1.10). IP addresses get a subtree too, even when the box has none of its own:
    without one, a CA with DNS constraints could still vouch for any IP address.
    """
    subtrees: list[str] = []
    for name in sorted({_dns_name(d, d.strip().rstrip(".").lower()) for d in domains}):
        subtrees.append(name)
    for name in dns_names:
        if not any(_within(name, tree) for tree in subtrees):
            subtrees.append(name)
    networks = list(LOOPBACK_NETWORKS)
    for ip in ips:
        if not any(ip in net for net in networks):
            networks.append(ipaddress.ip_network(ip))
    permitted: list[x509.GeneralName] = [x509.DNSName(tree) for tree in subtrees]
    permitted += [x509.IPAddress(net) for net in networks]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def ca_name_constraints(ca_cert: x509.Certificate) -> x509.NameConstraints | None:
    """Return the CA's name constraints, or None for an unconstrained (older) CA."""
    try:
        return ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def client_ssl_context(keys_dir: Path) -> ssl.SSLContext:
    """Return a client-side context that trusts this box's CA and nothing else."""
    paths = _existing(keys_dir)
    # PROTOCOL_TLS_CLIENT already requires a valid certificate and checks the hostname.
    # No system CAs are loaded: this context is for talking to edgeboxes.
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
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


def _within(name: str, tree: str) -> bool:
    return name == tree or name.endswith("." + tree)


def _ca_covers(
    ca_cert: x509.Certificate, dns_names: Sequence[str], ips: Sequence[IPAddress]
) -> bool:
    """Return whether the CA may vouch for every one of these names (unconstrained: yes)."""
    constraints = ca_name_constraints(ca_cert)
    if constraints is None:
        return True
    permitted = list(constraints.permitted_subtrees or ())
    trees = [g.value for g in permitted if isinstance(g, x509.DNSName)]
    networks = [
        g.value
        for g in permitted
        if isinstance(g, x509.IPAddress)
        and isinstance(g.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
    ]
    return all(any(_within(n, t) for t in trees) for n in dns_names) and all(
        any(ip in net for net in networks) for ip in ips
    )


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
    # A certificate from an older version may span more than clients take (825 days
    # and a day): replace it now rather than at two thirds of its long life.
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > SERVER_VALIDITY:
        return False
    if server_renewal_due(leaf, now):
        return False
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    return set(dns_names) <= have_dns and set(ips) <= have_ips


# --- making new material -----------------------------------------------------------


def _new_server(
    ca: CertificateAuthority,
    dns_names: Sequence[str],
    ips: Sequence[IPAddress],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    # The backdated day counts towards the span, so the whole span stays within limits.
    # A leaf must not outlive its issuer; clients would reject the tail end anyway.
    not_before = now - BACKDATE
    not_after = min(not_before + SERVER_VALIDITY, ca.cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = ca.issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]),
        key.public_key(),
        not_before=not_before,
        not_after=not_after,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        alt_names=sans,
    )
    return cert, key


# --- files -------------------------------------------------------------------------


def _existing(keys_dir: Path) -> TLSPaths:
    paths = TLSPaths.in_dir(keys_dir)
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise FileNotFoundError(
                f"TLS file {path} is missing; ensure_tls_material() creates it at start-up"
            )
    return paths
