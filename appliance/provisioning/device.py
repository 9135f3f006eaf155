"""The box's own identity: what survives a factory reset.

Files in ``DATA/device`` (mode 0700)::

    identity.json   {"box_id": 32 hex digits, "created_at": unix seconds}
    device.key      the device's private key (0600), EC P-256
    device.pem      its self-signed certificate: ``edgebox-<short id>.local``, localhost
    setup.code      the setup code (0600); made again after every factory reset
    wizard.json     the setup wizard's answers so far (0600); gone once set up

The device certificate is what the setup path (HTTPS while unprovisioned) presents;
its short fingerprint is in the mDNS TXT record and on the panel, so the technician can
check they reached the right box before typing the setup code. Once provisioned, the
agency's own TLS material in ``DATA/keys`` takes over (appliance.security.tls).

What this is not: the agency's keys, or anything a factory reset must destroy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.security.certificates import new_key, private_pem, self_signed
from appliance.security.keys import shred
from appliance.store.files import fsync_dir, write_atomically

DEVICE_DIR: Final = "device"
IDENTITY_FILE: Final = "identity.json"
DEVICE_KEY_FILE: Final = "device.key"
DEVICE_CERT_FILE: Final = "device.pem"
SETUP_CODE_FILE: Final = "setup.code"
#: The setup wizard's saved answers and claims (appliance.provisioning.wizard).
WIZARD_FILE: Final = "wizard.json"

#: Letters a person reads off a small panel and types without confusing them: no 0/O,
#: 1/I/L, 2/Z, 5/S, 8/B. 25 symbols; 10 of them give 46 bits, and the guard allows a
#: source about ten guesses before it refuses it for a quarter of an hour and longer.
SETUP_CODE_ALPHABET: Final = "34679ACDEFGHJKMNPQRTUVWXY"
SETUP_CODE_LENGTH: Final = 10

#: Ten years, like the agency CA: the device certificate lives as long as the box.
DEVICE_VALIDITY: Final = dt.timedelta(days=3650)


@dataclass(frozen=True)
class Device:
    """The box's identity as the running box, discovery and the panel show it."""

    box_id: str
    created_at: int
    #: ``DATA/device``.
    path: Path

    @property
    def short_id(self) -> str:
        """The first six hex digits of the box id: the host name and the panel show it."""
        return self.box_id[:6]

    @property
    def hostname(self) -> str:
        """The box's mDNS host name (RFC 6762 §3: a name under ``.local``)."""
        return f"edgebox-{self.short_id}.local"

    @property
    def key_file(self) -> Path:
        return self.path / DEVICE_KEY_FILE

    @property
    def cert_file(self) -> Path:
        return self.path / DEVICE_CERT_FILE

    def setup_code(self) -> str:
        """Return the current setup code (made at the first start after a reset)."""
        return (self.path / SETUP_CODE_FILE).read_text(encoding="ascii").strip()

    def check_setup_code(self, offered: str) -> bool:
        """Whether *offered* is the setup code; spaces, dashes and case do not matter."""
        wanted = self.setup_code().encode()
        given = normalise_setup_code(offered).encode()
        # Compared in constant time: the answer's timing must not tell a guesser how
        # many leading characters were right.
        return hmac.compare_digest(wanted, given)

    def ssl_context(self) -> ssl.SSLContext:
        """A server TLS context presenting the device certificate (setup path)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def normalise_setup_code(text: str) -> str:
    """Return *text* as stored: upper case, without the separators people type."""
    return "".join(ch for ch in text.upper() if ch not in " -\t")


def format_setup_code(code: str) -> str:
    """Return *code* in groups of five for the panel and console (``ABCDE-FGHJK``)."""
    return "-".join(code[i : i + 5] for i in range(0, len(code), 5))


def new_setup_code() -> str:
    """Return a fresh random setup code."""
    return "".join(secrets.choice(SETUP_CODE_ALPHABET) for _ in range(SETUP_CODE_LENGTH))


def ensure_device(data_dir: Path) -> Device:
    """Return the box's identity, creating what is missing (first start, after a reset).

    Each file is written atomically and only when absent, so a crash here leaves a
    directory the next start completes; an existing box id is never replaced.
    """
    path = data_dir / DEVICE_DIR
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)
        fsync_dir(path.parent)
    identity_file = path / IDENTITY_FILE
    if not identity_file.exists():
        body = {"box_id": uuid.uuid4().hex, "created_at": int(time.time())}
        write_atomically(identity_file, json.dumps(body).encode(), mode=0o644)
    identity = json.loads(identity_file.read_text(encoding="utf-8"))
    device = Device(box_id=identity["box_id"], created_at=identity["created_at"], path=path)
    if not device.key_file.exists() or not device.cert_file.exists():
        _make_device_certificate(device)
    if not (path / SETUP_CODE_FILE).exists():
        write_atomically(path / SETUP_CODE_FILE, new_setup_code().encode(), mode=0o600)
    return device


def read_device(data_dir: Path) -> Device | None:
    """Return the box's identity without creating anything; None if it has none yet."""
    identity_file = data_dir / DEVICE_DIR / IDENTITY_FILE
    if not identity_file.exists():
        return None
    identity = json.loads(identity_file.read_text(encoding="utf-8"))
    return Device(identity["box_id"], identity["created_at"], data_dir / DEVICE_DIR)


def forget_setup_code(data_dir: Path) -> None:
    """Remove the setup code and the wizard's claims (factory reset): the next start
    makes a new code, and nobody who held the old one is still let in."""
    (data_dir / DEVICE_DIR / SETUP_CODE_FILE).unlink(missing_ok=True)
    # The wizard's draft holds the first admin's password hash: overwritten, not only
    # unlinked (keys.shred), as apply does (wizard.forget_draft).
    with contextlib.suppress(FileNotFoundError):  # a box that never had a device folder
        shred(data_dir / DEVICE_DIR / WIZARD_FILE)


def certificate_fingerprint(cert_pem: bytes) -> str:
    """Return the short SHA-256 fingerprint of the first certificate in *cert_pem*.

    Sixteen hex digits in groups of four (``ab12-cd34-ef56-7890``): 64 bits, enough to
    tell two boxes on one LAN apart at a glance, short enough for a panel line.
    """
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def _make_device_certificate(device: Device) -> None:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device.hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgebox"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device.box_id),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName(device.hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = self_signed(
        name,
        key,
        # A day back: a box fresh out of the carton may have its clock hours off.
        not_before=now - dt.timedelta(days=1),
        not_after=now + DEVICE_VALIDITY,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        alt_names=names,
    )
    key_pem = private_pem(key)
    # The key first: a certificate without its key is useless, a key without its
    # certificate is simply made again with a new certificate.
    write_atomically(device.key_file, key_pem, mode=0o600)
    write_atomically(device.cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
