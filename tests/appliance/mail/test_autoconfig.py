"""The autoconfiguration documents as pure functions: bytes in, bytes out (autoconfig.py)."""

from __future__ import annotations

import plistlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import load_config
from appliance.mail.autoconfig import (
    AUTODISCOVER_NS,
    MAX_REQUEST_BYTES,
    OUTLOOK_REQUEST_NS,
    OUTLOOK_RESPONSE_NS,
    AutodiscoverRefused,
    AutodiscoverRequest,
    MailEndpoints,
    ProfileUser,
    apple_profile,
    ascii_hostname,
    autodiscover_error,
    autodiscover_settings,
    parse_autodiscover_request,
    profile_uuids,
    sign_profile,
    thunderbird_config,
)
from appliance.security.tls import TLSPaths, ensure_tls_material

ENDPOINTS = MailEndpoints("mail.test.go.th", imaps=993, imap=143, submissions=465, submission=587)
R = f"{{{OUTLOOK_RESPONSE_NS}}}"


def parse(document: bytes) -> ET.Element:
    """Parse a document the box wrote (trusted here: S314 is about hostile input)."""
    return ET.fromstring(document)  # noqa: S314


def outlook_request(address: str, schema: str = OUTLOOK_RESPONSE_NS) -> bytes:
    """The body Outlook 2016 and later POST, byte for byte in form."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<Autodiscover xmlns="{OUTLOOK_REQUEST_NS}">\r\n'
        "  <Request>\r\n"
        f"    <EMailAddress>{address}</EMailAddress>\r\n"
        f"    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\r\n"
        "  </Request>\r\n"
        "</Autodiscover>"
    ).encode()


# --- endpoints ------------------------------------------------------------------------


def test_endpoints_are_the_configured_ports_with_the_offset(tmp_path: Path) -> None:
    config = load_config(tmp_path, flags={"port_offset": 100})
    endpoints = MailEndpoints.of(config, "Mail.Test.go.th.")
    assert endpoints == MailEndpoints("mail.test.go.th", 3093, 2243, 2565, 2687)


def test_a_thai_hostname_is_given_as_a_labels() -> None:
    assert ascii_hostname("mail.กระทรวง.ไทย") == "mail.xn--12cm1c6bby4d.xn--o3cw4h"
    assert ascii_hostname("mail.test.go.th") == "mail.test.go.th"


# --- Thunderbird ------------------------------------------------------------------------


def test_thunderbird_document_lists_tls_first_then_starttls() -> None:
    document = thunderbird_config(
        ENDPOINTS, provider="test.go.th", domains=["test.go.th", "กระทรวง.ไทย"],
        display_name="สำนักงานทดสอบ", short_name="test.go.th",
    )  # fmt: skip
    root = parse(document)
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "test.go.th"
    domains = [d.text for d in provider.findall("domain")]
    assert domains == ["test.go.th", "กระทรวง.ไทย", "xn--12cm1c6bby4d.xn--o3cw4h"]
    assert provider.findtext("displayName") == "สำนักงานทดสอบ"
    servers = [
        (s.tag, s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"))
        for s in provider
        if s.tag.endswith("Server")
    ]
    assert servers == [
        ("incomingServer", "imap", "mail.test.go.th", "993", "SSL"),
        ("incomingServer", "imap", "mail.test.go.th", "143", "STARTTLS"),
        ("outgoingServer", "smtp", "mail.test.go.th", "465", "SSL"),
        ("outgoingServer", "smtp", "mail.test.go.th", "587", "STARTTLS"),
    ]
    for server in provider.iter():
        if server.tag.endswith("Server"):
            assert server.findtext("username") == "%EMAILADDRESS%"
            assert server.findtext("authentication") == "password-cleartext"


def test_thunderbird_document_escapes_what_it_is_given() -> None:
    document = thunderbird_config(
        ENDPOINTS, provider="test.go.th", domains=["test.go.th"],
        display_name="A & B <agency>", short_name="x",
    )  # fmt: skip
    assert b"A &amp; B &lt;agency&gt;" in document
    assert parse(document).findtext("emailProvider/displayName") == "A & B <agency>"


# --- Outlook: reading the request ---------------------------------------------------------


def test_an_outlook_request_gives_its_address_and_schema() -> None:
    asked = parse_autodiscover_request(outlook_request("somchai@test.go.th"))
    assert asked == AutodiscoverRequest("somchai@test.go.th", OUTLOOK_RESPONSE_NS)


def test_a_byte_order_mark_and_thai_address_are_read() -> None:
    body = b"\xef\xbb\xbf" + outlook_request("สมชาย@กระทรวง.ไทย")
    assert parse_autodiscover_request(body).email == "สมชาย@กระทรวง.ไทย"


def test_a_document_that_is_not_a_request_has_no_address() -> None:
    assert parse_autodiscover_request(b"<Other/>") == AutodiscoverRequest(None, None)
    assert parse_autodiscover_request(
        f'<Autodiscover xmlns="{OUTLOOK_REQUEST_NS}"/>'.encode()
    ) == AutodiscoverRequest(None, None)
    assert parse_autodiscover_request(
        b"<Autodiscover><Request><EMailAddress>  </EMailAddress></Request></Autodiscover>"
    ) == AutodiscoverRequest(None, None)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Autodiscover><Request><EMailAddress>&lol3;</EMailAddress></Request></Autodiscover>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Autodiscover><Request><EMailAddress>&xxe;</EMailAddress></Request></Autodiscover>"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BILLION_LAUGHS, "document type"),
        (XXE, "document type"),
        (b"<!doctype a><a/>", "document type"),
        (b"<a><!ENTITY x 'y'></a>", "document type"),
        (b"<a>&undefined;</a>", "well-formed"),
        (b"", "well-formed"),
        (b"<Autodiscover><Request>", "well-formed"),
        (outlook_request("a@b.c").decode().encode("utf-16"), "UTF-8"),
        (b'<?xml version="1.0" encoding="iso-8859-1"?><a/>', "encoding"),
        (b"<a>" + b"x" * MAX_REQUEST_BYTES + b"</a>", "larger"),
    ],
)
def test_hostile_or_broken_bodies_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(AutodiscoverRefused, match=reason):
        parse_autodiscover_request(body)


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_a_request_or_a_refusal(body: bytes) -> None:
    try:
        asked = parse_autodiscover_request(body)
    except AutodiscoverRefused:
        return
    assert asked.email is None or (asked.email and asked.email == asked.email.strip())


_XML_TEXT = st.text(
    # Characters XML 1.0 allows in content (§2.2), less markup and the "]]>" of §2.4.
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="<>&]"),
    max_size=80,
)


@given(_XML_TEXT, _XML_TEXT, st.sampled_from(["", "<!DOCTYPE a>", "<!-- c -->"]))
def test_requests_built_from_arbitrary_text_round_trip_or_are_refused(
    address: str, schema: str, prolog: str
) -> None:
    body = (
        f'{prolog}<Autodiscover xmlns="{OUTLOOK_REQUEST_NS}"><Request>'
        f"<EMailAddress>{address}</EMailAddress>"
        f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    ).encode()
    try:
        asked = parse_autodiscover_request(body)
    except AutodiscoverRefused:
        assert "DOCTYPE" in prolog
        return
    assert "DOCTYPE" not in prolog
    # XML normalises line ends (§2.11); the parser strips surrounding white space.
    expected = address.replace("\r\n", "\n").replace("\r", "\n").strip() or None
    assert asked.email == expected


# --- Outlook: the answers ---------------------------------------------------------------


def test_settings_response_has_imap_and_smtp_over_tls() -> None:
    root = parse(autodiscover_settings(ENDPOINTS, "somchai@test.go.th"))
    assert root.tag == f"{{{AUTODISCOVER_NS}}}Autodiscover"
    account = root.find(f"{R}Response/{R}Account")
    assert account is not None
    assert account.findtext(f"{R}AccountType") == "email"
    assert account.findtext(f"{R}Action") == "settings"
    protocols = {p.findtext(f"{R}Type"): p for p in account.findall(f"{R}Protocol")}
    assert set(protocols) == {"IMAP", "SMTP"}
    for kind, port in (("IMAP", "993"), ("SMTP", "465")):
        protocol = protocols[kind]
        assert protocol.findtext(f"{R}Server") == "mail.test.go.th"
        assert protocol.findtext(f"{R}Port") == port
        assert protocol.findtext(f"{R}SSL") == "on"
        assert protocol.findtext(f"{R}SPA") == "off"
        assert protocol.findtext(f"{R}LoginName") == "somchai@test.go.th"


def test_error_response_carries_the_code() -> None:
    when = datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)
    root = parse(autodiscover_error(500, "not here", now=when, hostname="h"))
    error = root.find(f"{R}Response/{R}Error")
    assert error is not None
    assert error.get("Time") == "09:30:15.123456"
    assert error.findtext(f"{R}ErrorCode") == "500"
    assert error.findtext(f"{R}Message") == "not here"
    assert root.find(f"{R}Response/{R}Account") is None


# --- Apple --------------------------------------------------------------------------------


def test_profile_uuids_are_stable_per_box_and_user() -> None:
    first = profile_uuids("box-1", "a@test.go.th")
    assert first == profile_uuids("box-1", "a@test.go.th")
    assert len(set(first)) == 3
    assert profile_uuids("box-2", "a@test.go.th")[0] != first[0]
    assert profile_uuids("box-1", "b@test.go.th")[0] != first[0]


def test_profile_has_the_mail_and_root_payloads() -> None:
    user = ProfileUser("somchai@test.go.th", "สมชาย ใจดี")
    profile = plistlib.loads(
        apple_profile(ENDPOINTS, user, box_id="b1", organisation="สำนักงาน", ca_der=b"\x30\x03")
    )
    assert profile["PayloadType"] == "Configuration"
    mail, root = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == user.address
    assert mail["EmailAccountName"] == "สมชาย ใจดี"
    assert (mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"]) == (
        993,
        465,
    )
    assert mail["IncomingMailServerUseSSL"] is mail["OutgoingMailServerUseSSL"] is True
    assert "IncomingPassword" not in mail
    assert "OutgoingPassword" not in mail
    assert root["PayloadType"] == "com.apple.security.root"
    assert root["PayloadContent"] == b"\x30\x03"
    uuids = [str(u).upper() for u in profile_uuids("b1", user.address)]
    assert [profile["PayloadUUID"], mail["PayloadUUID"], root["PayloadUUID"]] == uuids


def test_signed_profile_verifies_with_openssl_against_the_box_ca(tmp_path: Path) -> None:
    paths = ensure_tls_material(tmp_path / "keys", ["mail.test.go.th"])
    leaf, *chain = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert not isinstance(key, ed25519.Ed25519PrivateKey)
    profile = b"<plist>the profile</plist>"
    signed = sign_profile(profile, key, leaf, chain)  # type: ignore[arg-type]
    assert verify_with_openssl(signed, tmp_path, paths) == profile
    # One byte changed in the signed content and the signature no longer holds.
    tampered = signed.replace(b"the profile", b"the Profile")
    with pytest.raises(subprocess.CalledProcessError):
        verify_with_openssl(tampered, tmp_path, paths)


def test_a_key_cms_cannot_use_is_refused_with_a_type_error(tmp_path: Path) -> None:
    paths = ensure_tls_material(tmp_path / "keys", ["mail.test.go.th"])
    leaf = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]
    with pytest.raises(TypeError):
        sign_profile(b"x", ed25519.Ed25519PrivateKey.generate(), leaf)  # type: ignore[arg-type]


def verify_with_openssl(signed: bytes, work: Path, paths: TLSPaths) -> bytes:
    """Check *signed* with openssl cms against the box CA; return the signed content."""
    signed_file, content_file = work / "signed.der", work / "content"
    signed_file.write_bytes(signed)
    # -purpose any: the box's certificate is a TLS server certificate (EKU serverAuth),
    # not an S/MIME one; what is checked here is the signature and the chain to the CA.
    subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(signed_file),
         "-CAfile", str(paths.ca_cert), "-purpose", "any", "-out", str(content_file)],
        check=True, capture_output=True,
    )  # fmt: skip
    return content_file.read_bytes()
