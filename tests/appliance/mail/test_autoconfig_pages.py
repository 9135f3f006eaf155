"""Autoconfiguration over a running HTTPS service, as the mail clients ask for it.

The box under test has a port offset (its IMAP and SMTP listeners would bind the dev
ports plus 100), so the documents must carry those ports, not the standard ones. The
HTTPS listener itself binds a free port: it runs from a copy of the box whose offset
cancels the HTTPS dev port, as in tests/appliance/web/conftest.py.
"""

from __future__ import annotations

import dataclasses
import plistlib
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.box import Box
from appliance.config import Config, load_config
from appliance.directory.sessions import BROWSER_TTL
from appliance.mail.autoconfig import AUTODISCOVER_NS, OUTLOOK_RESPONSE_NS, profile_uuids
from appliance.mail.autoconfig_pages import autoconfig_routes
from appliance.registry import page_kit, session_api
from appliance.web.pages import CommonPages
from tests.appliance.conftest import Agency, BoxFactory, Person
from tests.appliance.web.conftest import Reply, Server, start_server

from .test_autoconfig import BILLION_LAUGHS, XXE, outlook_request, parse

DOMAIN = "test.go.th"
OTHER = "กระทรวง.ไทย"
ADDRESS = f"somchai@{DOMAIN}"
PASSWORD = "รหัสลับ-ทดสอบ-2567"
OFFSET = 100
HOSTNAME = "mail.test.go.th"
R = f"{{{OUTLOOK_RESPONSE_NS}}}"


def _ports_at_offset(data: Path) -> Config:
    return load_config(data, flags={"port_offset": OFFSET})


@pytest.fixture
async def office(make_box: BoxFactory) -> Box:
    return await make_box(
        DOMAIN,
        agency_name="สำนักงานทดสอบ",
        agencies=[Agency(OTHER, "กระทรวงตัวอย่าง")],
        people=[Person(ADDRESS, PASSWORD, "สมชาย ใจดี", "Somchai Jaidee")],
        mailboxes=False,
        config=_ports_at_offset,
    )


@pytest.fixture
async def server(office: Box, nursery: trio.Nursery) -> Server:
    kit = page_kit(office)
    routes = [
        *CommonPages(kit, session_api(office)).routes(),
        *autoconfig_routes(
            kit,
            config=office.config,
            directory=office.directory,
            identity=office.identity,
            hostname=office.hostname,
        ),
    ]
    free_port = dataclasses.replace(
        office.config, port_offset=office.config.port_offset - office.config.port("https")
    )
    listening = dataclasses.replace(office, config=free_port)
    return await start_server(listening, nursery, routes, sessions=office.sessions)


def media_type(reply: Reply) -> str:
    return (reply.header("content-type") or "").split(";")[0].strip()


# --- Thunderbird --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        "/mail/config-v1.1.xml",
        f"/mail/config-v1.1.xml?emailaddress={ADDRESS}",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=SOMCHAI%40Test.go.th",
    ],
)
async def test_thunderbird_gets_the_real_host_and_ports(server: Server, path: str) -> None:
    reply = await server.request("GET", path)
    assert reply.status == 200, reply.body
    assert media_type(reply) == "application/xml"
    root = parse(reply.body)
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.get("id") == DOMAIN
    assert [d.text for d in provider.findall("domain")] == [
        DOMAIN, OTHER, "xn--12cm1c6bby4d.xn--o3cw4h",
    ]  # fmt: skip
    assert provider.findtext("displayName") == "สำนักงานทดสอบ"
    servers = {
        (s.findtext("port"), s.findtext("socketType")): (s.tag, s.findtext("hostname"))
        for s in provider
        if s.tag.endswith("Server")
    }
    assert servers == {
        ("3093", "SSL"): ("incomingServer", HOSTNAME),  # IMAPS 2993 + 100
        ("2243", "STARTTLS"): ("incomingServer", HOSTNAME),  # IMAP 2143 + 100
        ("2565", "SSL"): ("outgoingServer", HOSTNAME),  # submissions 2465 + 100
        ("2687", "STARTTLS"): ("outgoingServer", HOSTNAME),  # submission 2587 + 100
    }


async def test_thunderbird_ports_follow_the_box_config(office: Box, server: Server) -> None:
    reply = await server.request("GET", "/mail/config-v1.1.xml")
    ports = [int(p.text or 0) for p in parse(reply.body).iter("port")]
    config = office.config
    assert ports == [
        config.port("imaps"), config.port("imap"),
        config.port("smtp-submissions"), config.port("smtp-submission"),
    ]  # fmt: skip


async def test_thunderbird_is_told_no_for_a_domain_the_box_does_not_serve(server: Server) -> None:
    reply = await server.request("GET", "/mail/config-v1.1.xml?emailaddress=a@elsewhere.go.th")
    assert reply.status == 404
    garbage = await server.request("GET", "/mail/config-v1.1.xml?emailaddress=not-an-address")
    assert garbage.status == 404


# --- Outlook --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
)
async def test_outlook_post_without_origin_or_cookie_gets_settings(
    server: Server, path: str
) -> None:
    # As Outlook sends it: text/xml, no Origin, no cookie, no X-Requested-With.
    reply = await server.request(
        "POST", path, outlook_request("Somchai@TEST.go.th"),
        {"Content-Type": "text/xml; charset=utf-8", "User-Agent": "Microsoft Office/16.0"},
    )  # fmt: skip
    assert reply.status == 200, reply.body
    assert media_type(reply) == "text/xml"
    root = parse(reply.body)
    assert root.tag == f"{{{AUTODISCOVER_NS}}}Autodiscover"
    account = root.find(f"{R}Response/{R}Account")
    assert account is not None
    assert account.findtext(f"{R}Action") == "settings"
    found = {
        p.findtext(f"{R}Type"): (
            p.findtext(f"{R}Server"), p.findtext(f"{R}Port"), p.findtext(f"{R}SSL"),
            p.findtext(f"{R}LoginName"), p.findtext(f"{R}SPA"),
        )
        for p in account.findall(f"{R}Protocol")
    }  # fmt: skip
    assert found == {
        "IMAP": (HOSTNAME, "3093", "on", ADDRESS, "off"),
        "SMTP": (HOSTNAME, "2565", "on", ADDRESS, "off"),
    }


async def test_outlook_get_with_email_answers_the_same(server: Server) -> None:
    posted = await server.request(
        "POST", "/autodiscover/autodiscover.xml", outlook_request(ADDRESS),
        {"Content-Type": "text/xml"},
    )  # fmt: skip
    got = await server.request("GET", f"/autodiscover/autodiscover.xml?email={ADDRESS}")
    assert got.status == 200
    assert got.body == posted.body


async def test_any_address_in_a_served_domain_gets_settings(server: Server) -> None:
    # No user lookup: an unauthenticated caller learns nothing about who exists.
    reply = await server.request(
        "POST", "/autodiscover/autodiscover.xml", outlook_request(f"nobody@{OTHER}"),
        {"Content-Type": "text/xml"},
    )  # fmt: skip
    login = parse(reply.body).findtext(f"{R}Response/{R}Account/{R}Protocol/{R}LoginName")
    assert login == f"nobody@{OTHER}"


async def error_code(server: Server, body: bytes) -> str | None:
    reply = await server.request(
        "POST", "/autodiscover/autodiscover.xml", body, {"Content-Type": "text/xml"}
    )
    assert reply.status == 200, reply.body
    root = parse(reply.body)
    assert root.find(f"{R}Response/{R}Account") is None
    code: str | None = root.findtext(f"{R}Response/{R}Error/{R}ErrorCode")
    return code


async def test_an_address_of_another_domain_gets_an_error_response(server: Server) -> None:
    assert await error_code(server, outlook_request("someone@elsewhere.go.th")) == "500"


async def test_a_request_without_an_address_gets_invalid_request(server: Server) -> None:
    assert await error_code(server, b"<Autodiscover><Request/></Autodiscover>") == "600"
    assert await error_code(server, outlook_request("no address at all")) == "600"
    get = await server.request("GET", "/autodiscover/autodiscover.xml")
    assert get.status == 200
    assert b"<ErrorCode>600</ErrorCode>" in get.body


async def test_another_response_schema_gets_error_601(server: Server) -> None:
    mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
    assert await error_code(server, outlook_request(ADDRESS, mobilesync)) == "601"


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, b"not xml at all"])
async def test_doctype_entities_and_garbage_are_refused_with_400(
    server: Server, body: bytes
) -> None:
    reply = await server.request(
        "POST", "/autodiscover/autodiscover.xml", body, {"Content-Type": "text/xml"}
    )
    assert reply.status == 400
    assert b"lollol" not in reply.body
    assert b"root:" not in reply.body


async def test_an_oversized_request_is_refused_before_it_is_read(server: Server) -> None:
    reply = await server.request(
        "POST", "/autodiscover/autodiscover.xml", b"<a>" + b"x" * 20_000 + b"</a>",
        {"Content-Type": "text/xml"},
    )  # fmt: skip
    assert reply.status == 413


# --- Apple -----------------------------------------------------------------------------------


async def signed_in(office: Box) -> dict[str, str]:
    user = await office.directory.user(ADDRESS)
    assert user is not None
    token, _ = await office.sessions.create(
        user, client_ip="127.0.0.1", user_agent=None, ttl=BROWSER_TTL
    )
    return {"Cookie": f"edgebox_session={token}"}


async def test_mobileconfig_needs_a_signed_in_user(server: Server) -> None:
    reply = await server.request("GET", "/settings/mobileconfig")
    assert reply.status == 303
    assert reply.header("location") == "/signin?next=%2Fsettings%2Fmobileconfig"


async def test_mobileconfig_is_a_signed_profile_for_the_user(
    office: Box, server: Server, tmp_path: Path
) -> None:
    reply = await server.request("GET", "/settings/mobileconfig", headers=await signed_in(office))
    assert reply.status == 200, reply.body
    assert reply.header("content-type") == "application/x-apple-aspen-config"
    assert (
        reply.header("content-disposition") == 'attachment; filename="edgebox-somchai.mobileconfig"'
    )
    keys = office.config.data_dir / "keys"
    content = openssl_verify(reply.body, tmp_path, keys / "ca.pem")
    profile = plistlib.loads(content)
    assert profile["PayloadType"] == "Configuration"
    mail, root = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == ADDRESS
    assert mail["EmailAccountName"] == "สมชาย ใจดี"  # Thai is the default language
    assert mail["IncomingMailServerHostName"] == mail["OutgoingMailServerHostName"] == HOSTNAME
    assert mail["IncomingMailServerPortNumber"] == 3093
    assert mail["OutgoingMailServerPortNumber"] == 2565
    assert mail["IncomingMailServerUseSSL"]
    assert mail["OutgoingMailServerUseSSL"]
    assert mail["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert "IncomingPassword" not in mail
    assert "OutgoingPassword" not in mail
    assert root["PayloadType"] == "com.apple.security.root"
    ca = x509.load_pem_x509_certificate((keys / "ca.pem").read_bytes())
    assert root["PayloadContent"] == ca.public_bytes(serialization.Encoding.DER)
    profile_id, mail_id, ca_id = profile_uuids(office.identity.box_id, ADDRESS)
    assert profile["PayloadUUID"] == str(profile_id).upper()
    assert (mail["PayloadUUID"], root["PayloadUUID"]) == (str(mail_id).upper(), str(ca_id).upper())


async def test_downloading_again_gives_the_same_profile_identity(
    office: Box, server: Server, tmp_path: Path
) -> None:
    cookie = await signed_in(office)
    ca = office.config.data_dir / "keys" / "ca.pem"
    first = plistlib.loads(
        openssl_verify((await server.request("GET", "/settings/mobileconfig", headers=cookie)).body,
                       tmp_path, ca)
    )  # fmt: skip
    second = plistlib.loads(
        openssl_verify((await server.request("GET", "/settings/mobileconfig", headers=cookie)).body,
                       tmp_path, ca)
    )  # fmt: skip
    assert first["PayloadUUID"] == second["PayloadUUID"]
    assert first["PayloadIdentifier"] == second["PayloadIdentifier"]


async def test_a_thai_address_gets_an_encoded_file_name(office: Box, server: Server) -> None:
    thai = f"สมหญิง@{DOMAIN}"
    user = await office.directory.add_user(thai, password=PASSWORD, name_th="สมหญิง")
    token, _ = await office.sessions.create(
        user, client_ip="127.0.0.1", user_agent=None, ttl=BROWSER_TTL
    )
    reply = await server.request(
        "GET", "/settings/mobileconfig", headers={"Cookie": f"edgebox_session={token}"}
    )
    disposition = reply.header("content-disposition") or ""
    assert disposition.startswith('attachment; filename="edgebox-')
    assert "filename*=UTF-8''edgebox-%E0%B8%AA" in disposition
    assert disposition.isascii()


def openssl_verify(signed: bytes, work: Path, ca_file: Path) -> bytes:
    """Verify the CMS signature with openssl (chain to *ca_file*); return the content."""
    signed_file, content_file = work / "profile.der", work / "profile.plist"
    signed_file.write_bytes(signed)
    subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(signed_file),
         "-CAfile", str(ca_file), "-purpose", "any", "-out", str(content_file)],
        check=True, capture_output=True,
    )  # fmt: skip
    # The form the brief names too: signature only, no chain (-noverify).
    subprocess.run(
        ["openssl", "smime", "-verify", "-inform", "DER", "-noverify", "-in", str(signed_file),
         "-out", str(work / "again.plist")],
        check=True, capture_output=True,
    )  # fmt: skip
    assert (work / "again.plist").read_bytes() == content_file.read_bytes()
    return content_file.read_bytes()
