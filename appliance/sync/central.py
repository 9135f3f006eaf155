"""Where the central servers are, and what the box presents to them.

Enrolment (`edgebox enroll`) fills these in; a technician may point a box at another
central mail server afterwards (config ``central_smtp`` / ``central_imap``). Three kinds
of material, all under ``DATA/keys/`` beside the box's own TLS files:

- ``central.json`` (0600): the box's service credentials at the central mail server —
  the SASL identity the relay authenticates with and the IMAP replicator logs in as,
  acting for each user through an authorisation identity (RFC 4616 §2).
- ``central-ca.pem``: the CA(s) the box trusts for the hub and the central mail servers.
  Absent means "trust the system CAs" (a central server with a public certificate).
- ``sync.pem`` / ``sync.key``: the box's client certificate, signed by the hub's CA at
  enrolment; presented on every connection to the hub (mutual TLS).

Secrets in here are never logged: `CentralCredentials.__repr__` hides the password.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.security.tls import harden
from appliance.store.files import write_atomically

CREDENTIALS_FILE = "central.json"
CENTRAL_CA_FILE = "central-ca.pem"
SYNC_CERT_FILE = "sync.pem"
SYNC_KEY_FILE = "sync.key"

#: URL schemes of central mail servers and their default ports.
_DEFAULT_PORTS = {"smtp": 587, "smtps": 465, "imap": 143, "imaps": 993, "https": 7443}


class CentralError(Exception):
    """A central-server setting is malformed; the message says which and why."""


@dataclass(frozen=True)
class CentralCredentials:
    """The box's own account at the central mail server."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:  # never the password, even in a traceback
        return f"CentralCredentials(username={self.username!r})"


@dataclass(frozen=True)
class Endpoint:
    """A central server: ``smtp://host:port`` (STARTTLS), ``smtps://`` (TLS at once),
    ``imap://`` (STARTTLS), ``imaps://``, or ``https://`` (the hub's sync API)."""

    scheme: str
    host: str
    port: int

    @property
    def implicit_tls(self) -> bool:
        return self.scheme in ("smtps", "imaps", "https")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(url: str, schemes: tuple[str, ...]) -> Endpoint:
    """Parse *url* into an `Endpoint` whose scheme is one of *schemes*."""
    parts = urlsplit(url.strip())
    if parts.scheme not in schemes:
        raise CentralError(f"{url!r}: expected a URL starting with {' or '.join(schemes)}://")
    if not parts.hostname:
        raise CentralError(f"{url!r}: no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise CentralError(f"{url!r}: {exc}") from None
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise CentralError(f"{url!r}: only scheme, host and port are allowed")
    return Endpoint(parts.scheme, parts.hostname, port)


def load_credentials(keys_dir: Path) -> CentralCredentials | None:
    """Return the box's central credentials, or None before enrolment."""
    path = Path(keys_dir) / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    return CentralCredentials(username=data["username"], password=data["password"])


def save_credentials(keys_dir: Path, credentials: CentralCredentials) -> None:
    """Store the box's central credentials (0600, written atomically)."""
    body = {"username": credentials.username, "password": credentials.password}
    write_atomically(Path(keys_dir) / CREDENTIALS_FILE, json.dumps(body).encode(), mode=0o600)


def central_client_context(keys_dir: Path) -> ssl.SSLContext:
    """A client TLS context for the centre: trusts ``central-ca.pem`` (else the system
    CAs), checks the host name, and presents the box's sync certificate when it has one."""
    keys_dir = Path(keys_dir)
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ca = keys_dir / CENTRAL_CA_FILE
    if ca.exists():
        context.load_verify_locations(cafile=ca)
    else:
        context.load_default_certs()
    cert, key = keys_dir / SYNC_CERT_FILE, keys_dir / SYNC_KEY_FILE
    if cert.exists() and key.exists():
        context.load_cert_chain(cert, key)
    return context
