"""The hub's half of ``edgebox enroll``: check a token and a CSR, hand a box its keys.

The one request a box makes without a client certificate. In order, and refusing with
nothing changed at the first failed check:

1. shape of the body (token, box_id, domain, csr);
2. the token could be redeemed now, and is for the agency the box serves;
3. the CSR's signature and key type (`ca.load_csr`);
4. the hub makes sure the agency exists in its directory and gives the box a service
   account there: ``sync-<box id>@<agency>``, a random password, allowed to act for the
   agency's users and no one else (RFC 4616 authorisation identity, `grant_delegation`);
5. the certificate is signed and the token redeemed in one transaction (`Enrolment`).

Step 4 runs before the token is spent so that a failure there leaves the token usable;
the account is idempotent (a second enrolment of the same box sets a new password). If
two boxes race with one token, the loser's account exists with a password nobody holds.

The answer tells the box everything it needs to work with the centre: its certificate,
the CA to trust for the hub and its mail servers, the hub URL and the central SMTP and
IMAP endpoints. By default those are the hub's own submission and IMAPS ports on the
host name the box used to reach the hub (which is reachable by construction); a hub
whose ``central_smtp`` / ``central_imap`` settings are set hands those out instead.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization

from appliance.config import Config
from appliance.directory import Directory, DirectoryError, normalise_domain
from appliance.mail.accounts import create_account
from appliance.mail.mailstore import Mailstore
from appliance.provisioning.provisioning_ca import published
from appliance.sync.clock import Clock
from appliance.sync.hub.ca import (
    CertificateRequestError,
    SyncCA,
    issue_box_certificate,
    load_csr,
    valid_box_id,
)
from appliance.sync.hub.enrolment import (
    Enrolment,
    EnrolmentRefused,
    EnrolmentToken,
    TokenFormatError,
)
from appliance.sync.hub.errors import HubError, bad_request
from appliance.sync.transport import Peer

#: Local part prefix of a box's service account at the hub.
SERVICE_PREFIX = "sync-"


def service_account(box_id: str, domain: str) -> str:
    """The address of *box_id*'s service account at the hub."""
    return f"{SERVICE_PREFIX}{box_id}@{domain}"


async def admit_box(
    enrolment: Enrolment,
    ca: SyncCA,
    clock: Clock,
    body: Any,
    host: str,
    *,
    config: Config,
    hostname: str,
    directory: Directory,
    mailstore: Mailstore,
) -> dict[str, Any]:
    """Enrol the box described by *body*; return the enrol answer or raise `HubError`.

    *config* and *hostname* say where the hub answers; the box's service account is
    made in the hub's *directory*, with its mailboxes in *mailstore*.
    """
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    token_text, box_id, domain, csr_pem = (
        body.get("token"),
        body.get("box_id"),
        body.get("domain"),
        body.get("csr"),
    )
    if not isinstance(token_text, str):
        raise bad_request("token is required")
    if not valid_box_id(box_id):
        raise bad_request("box_id must be 1-40 lower-case letters, digits or -")
    assert isinstance(box_id, str)
    try:
        token = EnrolmentToken.parse(token_text)
        domain = normalise_domain(domain) if isinstance(domain, str) else None
    except (TokenFormatError, DirectoryError) as exc:
        raise bad_request(str(exc)) from None
    if domain is None:
        raise bad_request("domain is required")

    try:
        agency = await enrolment.check_token(token)
    except EnrolmentRefused as exc:
        raise HubError(403, exc.code, exc.message) from None
    if agency != domain:
        raise HubError(
            403,
            "wrong_agency",
            f"this token enrols a box of {agency}, but the box serves {domain}",
        )
    try:
        csr = load_csr(csr_pem)
    except CertificateRequestError as exc:
        raise bad_request(str(exc), "bad_csr") from None

    username = service_account(box_id, agency)
    password = secrets.token_urlsafe(24)
    await _ensure_service_account(directory, mailstore, agency, username, password)

    now = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    cert = issue_box_certificate(ca, csr, box_id, now)
    try:
        await enrolment.redeem(token, box_id, cert.serial_number, username)
    except EnrolmentRefused as exc:
        raise HubError(403, exc.code, exc.message) from None

    host = url_host(host or hostname)
    return {
        "box_id": box_id,
        "domain": agency,
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "ca": (config.data_dir / "keys" / "ca.pem").read_text("ascii"),
        "hub_url": f"https://{host}:{config.port('hub-sync')}",
        **central_endpoints(config, host),
        "credentials": {"username": username, "password": password},
        # The USB stick's trust: boxes then take sticks this hub's technicians signed.
        **published(config.data_dir / "keys"),
    }


async def renew_box(
    enrolment: Enrolment,
    ca: SyncCA,
    clock: Clock,
    peer: Peer,
    calling_serial: int,
    body: Any,
) -> dict[str, Any]:
    """Sign a new certificate for the enrolled box *peer*, which called with *calling_serial*.

    A box renews well before its certificate expires (`appliance.sync.renewal`), over
    the mutual-TLS connection its current certificate opens, so no token is needed: the
    caller is already proven. The key is new (the CSR's); the box id is the caller's,
    whatever the CSR says.
    """
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    try:
        csr = load_csr(body.get("csr"))
    except CertificateRequestError as exc:
        raise bad_request(str(exc), "bad_csr") from None
    now = dt.datetime.fromtimestamp(clock.now(), dt.UTC)
    cert = issue_box_certificate(ca, csr, peer.box_id, now)
    if not await enrolment.renew(peer.box_id, calling_serial, cert.serial_number):
        raise HubError(403, "not_enrolled", "this box is no longer enrolled; enrol it again")
    return {
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


async def _ensure_service_account(
    directory: Directory, mailstore: Mailstore, agency: str, username: str, password: str
) -> None:
    # The hub serves every enrolled agency as their central mail server.
    await directory.add_agency(agency)
    if await directory.user(username) is None:
        name = f"sync {username.partition('@')[0]}"
        await create_account(directory, mailstore, username, password, name_th=name)
    else:
        await directory.set_password(username, password)
        await directory.set_disabled(username, False)
    await directory.grant_delegation(username, agency)


def central_endpoints(config: Any, host: str) -> dict[str, str]:
    """The central mail servers the hub hands a box: its settings, else itself at *host*.

    Public (no secret): the CA answer carries them too, so the setup wizard can check
    they answer before the box enrols (appliance.provisioning.uplink_check).
    """
    return {
        "central_smtp": config.central_smtp or f"smtp://{host}:{config.port('smtp-submission')}",
        "central_imap": config.central_imap or f"imaps://{host}:{config.port('imaps')}",
    }


def url_host(host: str) -> str:
    """The host part of a Host header value, ready to put back into a URL."""
    host = host.strip()
    if host.startswith("["):  # RFC 3986 §3.2.2: an IPv6 literal keeps its brackets
        return host.partition("]")[0] + "]"
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if ":" in name:
        return f"[{name}]"
    return name
