"""``edgebox enroll``: join a box to its hub with one command and one token.

What happens, in order:

1. The token (`EnrolmentToken`) carries a one-time secret and the SHA-256 fingerprint of
   the hub's CA. The box first asks the hub for that CA (``/sync/v1/ca``) over a TLS
   connection it does not yet verify, and keeps the answer only if its fingerprint is
   the token's. Anyone in between could answer, but not with that CA: so the secret is
   never sent to a server that has not proved itself, and a man in the middle cannot
   hand the box a CA of its own.
2. Over a connection that verifies the hub against that CA (and its host name), the box
   sends the secret, its id and agency, and a CSR for a new EC P-256 key made here.
   The private key never leaves the box.
3. The answer is checked (the certificate is for our key, the CA is the pinned one, the
   endpoints parse) and installed under ``DATA/keys``: ``sync.key`` (0600) first, then
   ``sync.pem``, ``central-ca.pem`` and ``central.json`` (0600); then ``hub_url``,
   ``central_smtp`` and ``central_imap`` go into the ``config`` section of
   ``DATA/config.json``, and the addresses of the hub and the central relay join
   ``mx_trusted_relays`` (the centre may deliver mail from the agency's own domain on
   port 25; nobody else may). Every file is written atomically.

The hub spends the token when it answers. If the box loses power between that answer
and the last write, running ``edgebox enroll`` again needs a new token; the hub then
replaces the box's certificate and service password, so nothing half-installed stays
valid.
"""

from __future__ import annotations

import hmac
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.identity import read_identity
from appliance.provisioning.provisioning_ca import install_published
from appliance.security.tls import harden
from appliance.store.files import write_atomically
from appliance.store.settings import Settings
from appliance.sync.central import (
    CENTRAL_CA_FILE,
    SYNC_CERT_FILE,
    SYNC_KEY_FILE,
    CentralCredentials,
    CentralError,
    parse_endpoint,
    save_credentials,
)
from appliance.sync.hub.ca import fingerprint
from appliance.sync.hub.enrolment import EnrolmentToken, TokenFormatError
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubRefused, HubUnavailable


class EnrolError(Exception):
    """Enrolment did not happen; the message is for the technician."""


@dataclass(frozen=True)
class Enrolled:
    """What `enroll` installed."""

    box_id: str
    domain: str
    hub_url: str
    central_smtp: str
    central_imap: str
    username: str


async def enroll(
    data_dir: Path, hub_url: str, token: str, *, answer_within: float = 60.0
) -> Enrolled:
    """Enrol the box in *data_dir* with the hub at *hub_url*; raise `EnrolError` if not."""
    data_dir = Path(data_dir)
    identity = read_identity(data_dir)
    if identity is None:
        raise EnrolError(f"{data_dir} is not an edgebox data directory; run `edgebox init`")
    try:
        parsed = EnrolmentToken.parse(token)
        url = str(parse_endpoint(hub_url, ("https",)))
    except (TokenFormatError, CentralError) as exc:
        raise EnrolError(str(exc)) from None

    # 1. The hub's CA, accepted only if it is the one the token names.
    ca_cert, _ = await fetch_hub_ca(data_dir, url, parsed, answer_within)

    # 2. The CSR, over a connection verified against that CA.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.box_id)]))
        .sign(key, hashes.SHA256())
    )
    request = {
        "token": str(parsed),
        "box_id": identity.box_id,
        "domain": identity.domain,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    pinned = HubClient(data_dir, url, answer_within, context=_pinned_context(ca_cert))
    answer = await _call(pinned, "/sync/v1/enroll", request)

    # 3. Check, then install.
    enrolled, cert_pem, credentials = _checked(answer, key, ca_cert, identity.box_id, url)
    keys_dir = data_dir / "keys"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomically(keys_dir / SYNC_KEY_FILE, key_pem, mode=0o600)
    write_atomically(keys_dir / SYNC_CERT_FILE, cert_pem, mode=0o644)
    write_atomically(
        keys_dir / CENTRAL_CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    save_credentials(keys_dir, credentials)
    install_published(keys_dir, answer)  # the hub's provisioning CA, for USB sticks
    relays = await _centre_addresses([enrolled.hub_url, enrolled.central_smtp])
    settings = Settings(data_dir / "config.json")
    try:
        earlier = str(settings.get("config").get("mx_trusted_relays", ""))
        trusted = list(dict.fromkeys([*earlier.replace(",", " ").split(), *relays]))
        settings.update(
            "config",
            {
                "hub_url": enrolled.hub_url,
                "central_smtp": enrolled.central_smtp,
                "central_imap": enrolled.central_imap,
                "mx_trusted_relays": " ".join(trusted),
            },
        )
    finally:
        settings.close()
    return enrolled


async def fetch_hub_ca(
    data_dir: Path, url: str, token: EnrolmentToken, answer_within: float
) -> tuple[x509.Certificate, dict[str, Any]]:
    """Return the hub's CA, checked against *token*'s fingerprint, and the whole answer.

    The answer also names the central mail servers (``central_smtp``, ``central_imap``);
    the setup wizard's live check uses it before enrolling. Raises `EnrolError`.
    """
    answer = await _call(
        HubClient(data_dir, url, answer_within, context=_unverified()), "/sync/v1/ca", {}
    )
    return _pinned_ca(answer.get("ca"), token.ca_fingerprint), answer


async def _centre_addresses(urls: list[str]) -> list[str]:
    """Return the IP addresses the hosts of *urls* resolve to now (unresolvable: none)."""
    addresses: list[str] = []
    for url in urls:
        if not url:
            continue
        try:
            host = parse_endpoint(url, ("https", "smtp", "smtps")).host
            infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
        except (CentralError, OSError):
            # Not fatal: the admin can list the relay in mx_trusted_relays by hand.
            continue
        addresses += [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(addresses))


async def _call(client: HubClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        answer = await client(path, body)
    except HubRefused as exc:
        raise EnrolError(f"the hub refused enrolment: {exc.message} ({exc.code})") from None
    except HubUnavailable as exc:
        raise EnrolError(f"cannot reach the hub: {exc}") from None
    finally:
        await client.aclose()
    assert isinstance(answer, dict)
    return answer


def _unverified() -> ssl.SSLContext:
    # Only for fetching the CA, whose fingerprint is then checked against the token;
    # nothing secret is sent on this connection.
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _pinned_context(ca_cert: x509.Certificate) -> ssl.SSLContext:
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.load_verify_locations(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    return context


def _pinned_ca(pem: object, expected: bytes) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(str(pem).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise EnrolError("the hub sent no usable CA certificate") from None
    if not hmac.compare_digest(fingerprint(cert), expected):
        raise EnrolError(
            "the hub's CA is not the one the token names: either the token is for another"
            " hub, or something between this box and the hub is impersonating it"
        )
    return cert


def _checked(
    answer: dict[str, Any],
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    box_id: str,
    url: str,
) -> tuple[Enrolled, bytes, CentralCredentials]:
    """Validate the enrol answer before anything is written."""
    try:
        cert_pem = str(answer["certificate"]).encode("ascii")
        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.public_key() != key.public_key():
            raise EnrolError("the hub signed a certificate for another key")
        if (
            str(answer.get("ca", "")).strip()
            != ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii").strip()
        ):
            raise EnrolError("the hub changed its CA during enrolment")
        smtp = str(parse_endpoint(str(answer["central_smtp"]), ("smtp", "smtps")))
        imap = str(parse_endpoint(str(answer["central_imap"]), ("imap", "imaps")))
        creds = answer["credentials"]
        credentials = CentralCredentials(str(creds["username"]), str(creds["password"]))
        domain = str(answer["domain"])
    except (KeyError, TypeError, ValueError, UnicodeEncodeError, CentralError) as exc:
        raise EnrolError(f"the hub's enrol answer is unusable: {exc}") from None
    # The URL the technician typed reached the hub, so it is the one to keep; the
    # hub's own idea of its name may not resolve from the office.
    enrolled = Enrolled(box_id, domain, url, smtp, imap, credentials.username)
    return enrolled, cert_pem, credentials
