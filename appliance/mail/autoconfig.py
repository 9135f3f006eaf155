"""Mail client autoconfiguration documents: Thunderbird, Outlook and Apple, sans I/O.

A mail client told only an address and a password asks the box how to reach it. Three
families ask three ways, and this module writes (and, for Outlook, reads) their
documents as pure functions of `MailEndpoints` — no sockets, no files, no clock:

- Thunderbird (and Evolution, K-9/Thunderbird for Android, FairEmail): the
  ``clientConfig`` version 1.1 format of Mozilla's autoconfig/ISPDB, fetched from
  ``/.well-known/autoconfig/mail/config-v1.1.xml`` or ``/mail/config-v1.1.xml``;
- Outlook: the "POX" autodiscover exchange of [MS-OXDSCLI]: the client POSTs an
  ``Autodiscover`` request naming the address, the box answers its settings (the
  "outlook" response schema) or an ``Error`` (§2.2.4.1.1.3, with its ErrorCode table);
- Apple Mail on iPhone, iPad and Mac: a configuration profile (a property list with a
  ``com.apple.mail.managed`` and a ``com.apple.security.root`` payload), signed as CMS
  SignedData (RFC 5652) so the device can tell it has not been altered.

Every document offers implicit TLS first (RFC 8314 §3: IMAPS 993, submissions 465) and,
where the format allows a second choice, STARTTLS (RFC 3501 §6.2.1, RFC 3207). Passwords
are sent in clear text *inside* TLS: the box has no other way to check them.

The Outlook request is untrusted input from anyone on the network: it is parsed with the
standard library's expat only after a size limit, a UTF-8 check and a refusal of any
document type declaration, so no entity can be defined, let alone expanded (XXE, "billion
laughs"). What this is not: the HTTP routes (see `appliance.mail.autoconfig_pages`).
"""

from __future__ import annotations

import plistlib
import re
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal
from xml.etree import ElementTree as ET

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from appliance.config import Config

Language = Literal["th", "en"]

#: [MS-OXDSCLI]: the namespace of an Outlook autodiscover request.
OUTLOOK_REQUEST_NS: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
)
#: [MS-OXDSCLI]: the namespace of the ``Response`` an Outlook client accepts.
OUTLOOK_RESPONSE_NS: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
#: [MS-OXDSCLI]: the namespace of the outer ``Autodiscover`` element of every response.
AUTODISCOVER_NS: Final = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"

#: A real Outlook request is about 400 bytes; anything near this limit is not one.
MAX_REQUEST_BYTES: Final = 16 * 1024

#: [MS-OXDSCLI] ErrorCode values (child of Error, §2.2.4.1.1.3) the box answers with.
ERROR_ADDRESS_NOT_FOUND: Final = 500  # "The email address cannot be found."
ERROR_INVALID_REQUEST: Final = 600  # "Invalid Request."
ERROR_SCHEMA_NOT_PROVIDED: Final = 601  # no provider for the AcceptableResponseSchema

#: Media types of the answers. Thunderbird reads any XML type; Exchange itself answers
#: autodiscover with text/xml, which is what Outlook has always been given.
THUNDERBIRD_TYPE: Final = "application/xml"
AUTODISCOVER_TYPE: Final = "text/xml; charset=utf-8"
#: The type iOS and macOS open as a configuration profile.
PROFILE_TYPE: Final = "application/x-apple-aspen-config"


@dataclass(frozen=True)
class MailEndpoints:
    """Where a mail client reaches the box: one host name and the four client ports."""

    #: The box's host name as clients look it up: ASCII, Thai labels as A-labels.
    hostname: str
    #: IMAP over implicit TLS (RFC 8314 §3.3; 993 on a box).
    imaps: int
    #: IMAP with STARTTLS (RFC 3501 §6.2.1; 143).
    imap: int
    #: Message submission over implicit TLS (RFC 8314 §3.3; 465).
    submissions: int
    #: Message submission with STARTTLS (RFC 6409, RFC 3207; 587).
    submission: int

    @classmethod
    def of(cls, config: Config, hostname: str) -> MailEndpoints:
        """The endpoints a box with *config* listens on, offset included."""
        return cls(
            hostname=ascii_hostname(hostname),
            imaps=config.port("imaps"),
            imap=config.port("imap"),
            submissions=config.port("smtp-submissions"),
            submission=config.port("smtp-submission"),
        )


def ascii_hostname(name: str) -> str:
    """Return *name* as DNS carries it: Thai labels become A-labels (RFC 5890 §2.3.2.1).

    The TLS certificate holds the same A-labels, so a client that connects to the name
    given here finds it in the certificate.
    """
    name = name.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


# --- Thunderbird ----------------------------------------------------------------------


def thunderbird_config(
    endpoints: MailEndpoints,
    *,
    provider: str,
    domains: Iterable[str],
    display_name: str,
    short_name: str,
) -> bytes:
    """Return the ``clientConfig`` 1.1 document of Mozilla's autoconfig for the box.

    Servers are listed best first, which is the order Thunderbird tries them in:
    IMAP over TLS, then IMAP with STARTTLS; submission over TLS, then with STARTTLS.
    The user name is the whole address (``%EMAILADDRESS%``, filled in by the client).
    """
    root = ET.Element("clientConfig", version="1.1")
    provider_element = ET.SubElement(root, "emailProvider", id=provider)
    for domain in _domain_names(domains):
        _add(provider_element, "domain", domain)
    _add(provider_element, "displayName", display_name)
    _add(provider_element, "displayShortName", short_name)
    servers = (
        ("incomingServer", "imap", endpoints.imaps, "SSL"),
        ("incomingServer", "imap", endpoints.imap, "STARTTLS"),
        ("outgoingServer", "smtp", endpoints.submissions, "SSL"),
        ("outgoingServer", "smtp", endpoints.submission, "STARTTLS"),
    )
    for element, kind, port, socket_type in servers:
        server = ET.SubElement(provider_element, element, type=kind)
        _add(server, "hostname", endpoints.hostname)
        _add(server, "port", str(port))
        _add(server, "socketType", socket_type)
        _add(server, "username", "%EMAILADDRESS%")
        # "password-cleartext": AUTH PLAIN/LOGIN or IMAP LOGIN, always inside TLS here.
        _add(server, "authentication", "password-cleartext")
    return _serialise(root)


def _domain_names(domains: Iterable[str]) -> list[str]:
    """Each domain as stored, and for a Thai domain its A-label form as well.

    A user may type either form into the client; Thunderbird compares the domain of the
    address with these literally.
    """
    names: list[str] = []
    for domain in sorted(domains):
        for name in (domain, ascii_hostname(domain)):
            if name not in names:
                names.append(name)
    return names


# --- Outlook autodiscover -------------------------------------------------------------


class AutodiscoverRefused(ValueError):
    """The request body is not a safe, well-formed XML document; nothing was expanded."""


@dataclass(frozen=True)
class AutodiscoverRequest:
    """What a well-formed autodiscover request asks for ([MS-OXDSCLI] request schema)."""

    #: The ``Request/EMailAddress`` text, or None if the document has none.
    email: str | None
    #: The ``Request/AcceptableResponseSchema`` text, or None if absent.
    response_schema: str | None


_DECLARED_ENCODING = re.compile(r"""<\?xml[^>]*?\bencoding\s*=\s*["']([^"']*)["']""")


def parse_autodiscover_request(body: bytes) -> AutodiscoverRequest:
    """Read an autodiscover request; raise `AutodiscoverRefused` for a hostile or broken body.

    A document that parses but is not an autodiscover request (another root element,
    no address) is not refused: it gives an `AutodiscoverRequest` with ``email`` None,
    which the caller answers with error 600 as [MS-OXDSCLI] asks.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise AutodiscoverRefused(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        # UTF-16 and other encodings are refused outright: the DOCTYPE check below
        # must see the same characters expat will.
        raise AutodiscoverRefused("the request is not UTF-8") from None
    folded = text.upper()
    if "<!DOCTYPE" in folded or "<!ENTITY" in folded:
        # Without a document type declaration no entity can be declared, so none can
        # be expanded or fetched (XML 1.0 §4.1); only the five predefined ones remain.
        raise AutodiscoverRefused("document type declarations are not accepted")
    declared = _DECLARED_ENCODING.match(text)
    if declared and declared.group(1).lower() not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise AutodiscoverRefused(f"the request declares encoding {declared.group(1)!r}")
    try:
        # The checks above are what makes expat safe here (S314 is about entities).
        root = ET.fromstring(text.encode("utf-8"))  # noqa: S314
    except ET.ParseError as exc:
        raise AutodiscoverRefused(f"the request is not well-formed XML: {exc}") from None
    if _local_name(root.tag) != "Autodiscover":
        return AutodiscoverRequest(None, None)
    request = _child(root, "Request")
    if request is None:
        return AutodiscoverRequest(None, None)
    return AutodiscoverRequest(
        email=_child_text(request, "EMailAddress"),
        response_schema=_child_text(request, "AcceptableResponseSchema"),
    )


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    # By local name: the schema fixes the namespace, but a client that gets it slightly
    # wrong still names the address it wants, and answering does no harm.
    for child in parent:
        if isinstance(child.tag, str) and _local_name(child.tag) == name:
            return child
    return None


def _child_text(parent: ET.Element, name: str) -> str | None:
    child = _child(parent, name)
    if child is None:
        return None
    value = (child.text or "").strip()
    return value or None


def autodiscover_settings(endpoints: MailEndpoints, address: str) -> bytes:
    """Return the settings response for *address* ([MS-OXDSCLI] "outlook" response schema).

    One account of type "email" with Action "settings", one IMAP and one SMTP protocol,
    both over implicit TLS (Outlook takes the first protocol of each type, so the
    STARTTLS ports are not listed). The login name is the whole address; SPA (NTLM)
    is off because the box checks passwords itself.
    """
    root, response = _autodiscover_envelope(OUTLOOK_RESPONSE_NS)
    account = ET.SubElement(response, "Account")
    _add(account, "AccountType", "email")
    _add(account, "Action", "settings")
    for kind, port in (("IMAP", endpoints.imaps), ("SMTP", endpoints.submissions)):
        protocol = ET.SubElement(account, "Protocol")
        _add(protocol, "Type", kind)
        _add(protocol, "Server", endpoints.hostname)
        _add(protocol, "Port", str(port))
        _add(protocol, "DomainRequired", "off")
        _add(protocol, "LoginName", address)
        _add(protocol, "SPA", "off")
        _add(protocol, "SSL", "on")
        # "SSL" here is implicit TLS from the first byte, which is what both ports speak.
        _add(protocol, "Encryption", "SSL")
        _add(protocol, "AuthRequired", "on")
        if kind == "SMTP":
            _add(protocol, "UsePOPAuth", "off")
            _add(protocol, "SMTPLast", "off")
    return _serialise(root)


def autodiscover_error(code: int, message: str, *, now: datetime, hostname: str) -> bytes:
    """Return an error response ([MS-OXDSCLI] §2.2.4.1.1.3) with ErrorCode *code*.

    Sent with HTTP 200, as Exchange does: the client reads the code, not the status.
    ``Id`` is, as in Exchange, a number derived from the server's name.
    """
    root, response = _autodiscover_envelope(OUTLOOK_RESPONSE_NS)
    error = ET.SubElement(
        response,
        "Error",
        Time=now.strftime("%H:%M:%S.%f"),
        Id=str(zlib.crc32(hostname.encode("utf-8"))),
    )
    _add(error, "ErrorCode", str(code))
    _add(error, "Message", message)
    ET.SubElement(error, "DebugData")
    return _serialise(root)


def _autodiscover_envelope(response_ns: str) -> tuple[ET.Element, ET.Element]:
    # Default namespaces written as plain xmlns attributes, exactly as Exchange writes
    # them: ElementTree would otherwise invent ns0:/ns1: prefixes, which are the same
    # XML but not what Outlook has been tested against for twenty years.
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = ET.SubElement(root, "Response", xmlns=response_ns)
    return root, response


def _serialise(root: ET.Element) -> bytes:
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _add(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


# --- Apple configuration profile ------------------------------------------------------


@dataclass(frozen=True)
class ProfileUser:
    """Whom an Apple profile sets up."""

    address: str
    #: The name shown as the sender of the user's mail.
    name: str


def profile_uuids(box_id: str, address: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """The profile's, the mail payload's and the CA payload's PayloadUUIDs.

    Name-based (RFC 9562 §5.5, UUIDv5) from the box and the address, so the profile a
    user downloads again has the same identity, and installing it replaces the old one
    instead of adding a second account.
    """
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"edgebox:{box_id}")
    return (
        uuid.uuid5(namespace, f"profile:{address}"),
        uuid.uuid5(namespace, f"mail:{address}"),
        uuid.uuid5(namespace, f"ca:{address}"),
    )


def apple_profile(
    endpoints: MailEndpoints,
    user: ProfileUser,
    *,
    box_id: str,
    organisation: str,
    ca_der: bytes,
    lang: Language = "th",
) -> bytes:
    """Return the configuration profile (an XML property list) for *user*.

    Two payloads: ``com.apple.mail.managed`` (IMAP over TLS and submission over TLS,
    the address as user name, password authentication, no password: the device asks
    for it once), and ``com.apple.security.root`` with the box's CA certificate in
    DER, so the device trusts the certificate the box serves on every port.
    """
    profile_id, mail_id, ca_id = profile_uuids(box_id, user.address)
    identifier = f"edgebox.{profile_id}"
    thai = lang == "th"
    if thai:
        description = f"ตั้งค่าบัญชีอีเมล {user.address} และติดตั้งใบรับรองของเครื่องแม่ข่าย {endpoints.hostname}"
    else:
        description = (
            f"Sets up the mail account {user.address}"
            f" and trusts the certificate of {endpoints.hostname}"
        )
    mail_payload = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.mail",
        "PayloadUUID": str(mail_id).upper(),
        "PayloadDisplayName": f"อีเมล {user.address}" if thai else f"Mail {user.address}",
        "EmailAccountDescription": organisation,
        "EmailAccountName": user.name,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": user.address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": endpoints.hostname,
        "IncomingMailServerPortNumber": endpoints.imaps,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": user.address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": endpoints.hostname,
        "OutgoingMailServerPortNumber": endpoints.submissions,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": user.address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "SMIMEEnabled": False,
        # Official mail stays in official mail: no iCloud Mail Drop for attachments.
        "allowMailDrop": False,
    }
    ca_payload = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.ca",
        "PayloadUUID": str(ca_id).upper(),
        "PayloadDisplayName": (
            f"ใบรับรองหลักของ {endpoints.hostname}"
            if thai
            else f"Root certificate of {endpoints.hostname}"
        ),
        "PayloadCertificateFileName": "edgebox-ca.cer",
        "PayloadContent": ca_der,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(profile_id).upper(),
        "PayloadDisplayName": f"อีเมล {organisation}" if thai else f"{organisation} mail",
        "PayloadDescription": description,
        "PayloadOrganization": organisation,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [mail_payload, ca_payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


#: Keys `cryptography` can sign CMS SignedData with.
SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def sign_profile(
    profile: bytes,
    key: SigningKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """Wrap *profile* in CMS SignedData (RFC 5652 §5), DER, the content attached.

    Signed with SHA-256 by *key*, whose *certificate* and the *chain* above it travel in
    the SignedData, so the device can check the signature and show who signed it.
    """
    builder = pkcs7.PKCS7SignatureBuilder().set_data(profile)
    builder = builder.add_signer(certificate, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.DER, [])
