"""The pages' common ground: sign-in, settings, static files, CSRF on forms (pages.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from fractions import Fraction
from urllib.parse import urlencode

import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.box import Box
from appliance.registry import web_routes
from appliance.web.csrf import csrf_token_for
from appliance.web.i18n import (
    SERVICE_LABELS,
    SIZE_UNITS,
    format_date,
    format_short,
    format_size,
    service_label,
)
from appliance.web.pages import STATIC, safe_next

from .conftest import ADDRESS, PASSWORD, Reply, Server, start_server

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
async def server(box: Box, nursery: trio.Nursery) -> Server:
    return await start_server(box, nursery, web_routes(box), sessions=box.sessions)


def origin(server: Server) -> dict[str, str]:
    return {"Origin": f"https://127.0.0.1:{server.port}"}


async def post_form(
    server: Server, path: str, form: dict[str, str], token: str | None = None
) -> Reply:
    """A browser's form post from our own page (our Origin), signed in if *token* is given."""
    headers = {"Content-Type": FORM, **origin(server), **(cookie(token) if token else {})}
    return await server.request("POST", path, urlencode(form).encode(), headers)


async def sign_in(server: Server) -> str:
    reply = await post_form(server, "/signin", {"address": ADDRESS, "password": PASSWORD})
    assert reply.status == 303, reply.body
    match = re.match(r"edgebox_session=([^;]+);", reply.header("set-cookie") or "")
    assert match
    return match.group(1)


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"edgebox_session={token}"}


async def test_a_page_without_a_session_sends_the_browser_to_sign_in(server: Server) -> None:
    reply = await server.request("GET", "/settings?x=1")
    assert reply.status == 303
    assert reply.header("location") == "/signin?next=%2Fsettings%3Fx%3D1"
    # The API keeps answering 401 JSON.
    api = await server.request("GET", "/api/v1/session")
    assert api.status == 401
    assert api.json()["error"]["code"] == "unauthenticated"


async def test_sign_in_page_is_thai_first_and_has_no_inline_script_or_style(server: Server) -> None:
    reply = await server.request("GET", "/signin")
    text = reply.body.decode()
    assert reply.status == 200
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert '<html lang="th"' in text
    assert "เข้าสู่ระบบ" in text
    assert not re.search(r"<script(?![^>]*\bsrc=)", text)
    assert "style=" not in text
    assert "<style" not in text
    english = await server.request("GET", "/signin", headers={"Accept-Language": "en"})
    assert '<html lang="en"' in english.body.decode()


async def test_sign_in_sets_the_cookie_and_goes_to_next(server: Server) -> None:
    reply = await server.request(
        "POST", "/signin",
        urlencode({"address": ADDRESS, "password": PASSWORD, "next": "/settings"}).encode(),
        {"Content-Type": FORM, **origin(server)},
    )  # fmt: skip
    assert reply.status == 303
    assert reply.header("location") == "/settings"
    set_cookie = reply.header("set-cookie") or ""
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in set_cookie


async def test_wrong_password_shows_the_form_again_with_the_error(server: Server) -> None:
    reply = await post_form(server, "/signin", {"address": ADDRESS, "password": "wrong"})
    assert reply.status == 401
    text = reply.body.decode()
    assert "ที่อยู่อีเมลหรือรหัสผ่านไม่ถูกต้อง" in text
    assert f'value="{ADDRESS}"' in text
    assert reply.header("set-cookie") is None


async def test_sign_in_from_another_site_is_refused(server: Server) -> None:
    # Login CSRF: a foreign page must not sign the browser into an account it chose.
    reply = await server.request(
        "POST", "/signin", urlencode({"address": ADDRESS, "password": PASSWORD}).encode(),
        {"Content-Type": FORM, "Origin": "https://evil.example"},
    )  # fmt: skip
    assert reply.status == 403
    assert reply.header("set-cookie") is None


@pytest.mark.parametrize(
    "next_value",
    ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"],
)
def test_safe_next_never_leaves_the_box(next_value: str) -> None:
    assert safe_next(next_value) == "/"


def test_safe_next_keeps_local_paths() -> None:
    assert safe_next("/mail/folder/INBOX?page=2") == "/mail/folder/INBOX?page=2"


async def test_settings_change_language_theme_and_font(server: Server) -> None:
    token = await sign_in(server)
    form = {
        "language": "en",
        "theme": "dark",
        "font_size": "large",
        "csrf_token": csrf_token_for(token),
    }
    reply = await post_form(server, "/settings", form, token)
    assert reply.status == 303
    page = (await server.request("GET", "/settings?saved=1", headers=cookie(token))).body.decode()
    assert '<html lang="en" data-theme="dark" data-font="large">' in page
    assert "Saved" in page


async def test_a_form_post_without_the_csrf_token_is_refused(server: Server) -> None:
    token = await sign_in(server)
    for form in ({"language": "en", "theme": "dark", "font_size": "large"},
                 {"language": "en", "theme": "dark", "font_size": "large", "csrf_token": "x" * 32},
                 {"language": "en", "theme": "dark", "font_size": "large",
                  "csrf_token": csrf_token_for("another-session")}):  # fmt: skip
        reply = await post_form(server, "/settings", form, token)
        assert reply.status == 403
        assert "text/html" in (reply.header("content-type") or "")
    page = (await server.request("GET", "/settings", headers=cookie(token))).body.decode()
    assert '<html lang="th" data-theme="light"' in page  # nothing changed


async def test_a_bad_choice_is_refused_with_an_html_error(server: Server) -> None:
    token = await sign_in(server)
    form = {
        "language": "fr",
        "theme": "dark",
        "font_size": "large",
        "csrf_token": csrf_token_for(token),
    }
    reply = await post_form(server, "/settings", form, token)
    assert reply.status == 422
    assert "<h1>422</h1>" in reply.body.decode()


async def test_sign_out_ends_the_session(server: Server) -> None:
    token = await sign_in(server)
    reply = await post_form(server, "/signout", {"csrf_token": csrf_token_for(token)}, token)
    assert reply.status == 303
    assert reply.header("location") == "/signin"
    assert "Max-Age=0" in (reply.header("set-cookie") or "")
    assert (await server.request("GET", "/settings", headers=cookie(token))).status == 303


async def test_static_files_revalidate_with_etag(server: Server) -> None:
    first = await server.request("GET", "/static/common.js")
    assert first.status == 200
    assert first.header("content-type") == "text/javascript; charset=utf-8"
    etag = first.header("etag")
    assert etag
    assert first.header("cache-control") == "no-cache"
    again: Reply = await server.request("GET", "/static/common.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    missing = await server.request("GET", "/static/nope.js")
    assert missing.status == 404


async def test_every_script_is_served_as_a_module_the_csp_allows(server: Server) -> None:
    # A browser runs a module only with a JavaScript MIME type (nosniff: no guessing),
    # and the pages' CSP must let scripts come from the box itself.
    scripts = sorted(p.name for p in STATIC.glob("*.js"))
    assert "chat-room.js" in scripts
    for name in scripts:
        reply = await server.request("GET", f"/static/{name}")
        assert reply.status == 200, name
        assert reply.header("content-type") == "text/javascript; charset=utf-8", name
        assert reply.header("x-content-type-options") == "nosniff", name
        policy = reply.header("content-security-policy") or ""
        assert "default-src 'self'" in policy, name
        assert "script-src" not in policy, name


async def test_unknown_pages_get_an_html_404_and_api_paths_json(server: Server) -> None:
    page = await server.request("GET", "/no/such/page")
    assert page.status == 404
    assert "text/html" in (page.header("content-type") or "")
    api = await server.request("GET", "/api/v1/nope")
    assert api.status == 404
    assert api.json()["error"]["code"] == "not_found"


async def test_error_page_escapes_what_it_shows(server: Server) -> None:
    # The 404 page shows no part of the path; a 400 for a malformed target neither.
    reply = await server.request("GET", "/<script>alert(1)</script>")
    assert b"<script>alert" not in reply.body


def test_dates_are_buddhist_era_in_thai_and_thailand_time() -> None:
    moment = datetime(2026, 11, 22, 7, 5, tzinfo=UTC)  # 14:05 in Bangkok
    assert format_date(moment, "th") == "22 พ.ย. 2569 14:05"
    assert format_date(moment, "en") == "22 Nov 2026 14:05"
    assert (
        format_date(datetime(2026, 12, 31, 17, 30, tzinfo=UTC), "th", time=False) == "1 ม.ค. 2570"
    )
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert format_short(moment, "th", now) == "14:05"
    assert format_short(datetime(2026, 1, 2, tzinfo=UTC), "th", now) == "2 ม.ค. 2569"


def test_sizes() -> None:
    # Issue 14: one unit system, the same in both languages ("419 ไบต์" beside "1.3 KB"
    # read as two); below 1 KB a size is a fraction of a KB.
    assert format_size(512, "th") == "0.5 KB"
    assert format_size(2048, "en") == "2.0 KB"
    assert format_size(25 * 1024 * 1024, "en") == "25 MB"
    assert format_size(0, "th") == "0 KB"
    assert format_size(1, "th") == "0.1 KB"  # not empty, so never shown as nothing
    assert format_size(419, "th") == format_size(419, "en") == "0.4 KB"
    assert format_size(256, "en") == "0.3 KB"  # halves round up, as in the script's twin
    assert format_size(1300, "th") == "1.3 KB"
    assert format_size(10 * 1024 - 1, "th") == "10 KB"
    assert format_size(1024 * 1024 - 1, "th") == "1.0 MB"  # never "1024 KB"
    assert format_size(3 * 1024**3 // 2, "th") == "1.5 GB"


@given(st.integers(min_value=0, max_value=2**50))
@example(768)  # exactly half a step from 0.8 KB
def test_every_size_reads_in_one_system_and_keeps_its_order(size: int) -> None:
    text = format_size(size, "th")
    assert text == format_size(size, "en")
    match = re.fullmatch(r"(\d+)(?:\.(\d))? (KB|MB|GB|TB)", text)
    assert match, text
    scale = 1024 ** (SIZE_UNITS.index(match.group(3)) + 1)
    # Off by at most half the last digit shown (a tenth or a whole unit), except that
    # a tiny file shows as 0.1 KB rather than as nothing.
    step = (Fraction(1, 10) if match.group(2) else 1) * scale
    assert abs(_bytes(text) - size) <= step / 2 or text == "0.1 KB"
    # A bigger size never reads smaller.
    assert _bytes(format_size(size + 1024, "th")) >= _bytes(text)


def _bytes(text: str) -> Fraction:
    # Exact: in floats 0.8 KB is 819.2000000000001 bytes, and a size exactly half a
    # step away (768 bytes) failed the bound by that last bit.
    number, unit = text.split()
    return Fraction(number) * 1024 ** (SIZE_UNITS.index(unit) + 1)


def test_every_service_and_health_check_has_words_in_both_languages() -> None:
    """The admin overview names services in words; a new service needs its label."""
    from appliance.backup.offsite.upload import OffsiteBackup
    from appliance.backup.service import DailyBackup
    from appliance.chat.secrets import SecretSweeper
    from appliance.compliance.retention import TrafficLogRetention
    from appliance.config import DEV_PORTS
    from appliance.directory.sessions import SessionExpiry
    from appliance.discovery import DiscoveryService
    from appliance.health.checks import CHECKS
    from appliance.health.metrics_service import MetricsService
    from appliance.health.monitor import HealthMonitor
    from appliance.mail.indexing import SearchIndexer
    from appliance.mail.smtp.server import Port
    from appliance.panel import PanelService
    from appliance.protection.engines import EngineWatch
    from appliance.protection.signatures.sync import SignatureUpdater
    from appliance.security.tls_renewal import TLSRenewal
    from appliance.sync.chat import ChatReplicator
    from appliance.sync.directory import DirectoryReplicator
    from appliance.sync.hub.server import HubSyncService
    from appliance.sync.link import LinkMonitor
    from appliance.sync.mailbox import MailboxReplicator
    from appliance.sync.relay import OutboundRelay
    from appliance.sync.renewal import CertificateRenewal
    from appliance.update.report import UpdateReporter
    from appliance.web.server import HTTPSService

    background = [SecretSweeper, TrafficLogRetention, SessionExpiry, SearchIndexer,
                  ChatReplicator, DirectoryReplicator, HubSyncService, LinkMonitor,
                  MailboxReplicator, OutboundRelay, CertificateRenewal, TLSRenewal,
                  HTTPSService, DailyBackup, DiscoveryService, HealthMonitor,
                  MetricsService, PanelService, UpdateReporter, EngineWatch,
                  SignatureUpdater, OffsiteBackup]  # fmt: skip
    ids = {*DEV_PORTS, *(f"smtp-{port.value}" for port in Port),
           *(service.name for service in background), *(check.name for check in CHECKS),
           "certificate", "ca", "sync-certificate", "backup-offsite"}  # fmt: skip
    assert ids <= set(SERVICE_LABELS), ids - set(SERVICE_LABELS)
    for check, (thai, english) in SERVICE_LABELS.items():
        assert thai
        assert english
        assert check not in (thai, english)
        assert service_label(check, "th") == thai
        assert service_label(check, "en") == english
    assert service_label("some-new-thing", "th") == "some-new-thing"


async def test_sign_in_page_says_whose_box_it_is(server: Server, box: Box) -> None:
    await box.directory.add_agency("other.go.th", name_th="กรมอื่น")
    reply = await server.request("GET", "/signin")
    text = reply.body.decode()
    # The box's own agency (test.go.th, named after its domain by init), and its name.
    assert 'data-testid="agency-domain">(test.go.th)</span>' in text
    assert f'data-testid="box-name">{box.hostname}</dd>' in text
    assert "กรมอื่น" not in text


async def test_sign_in_takes_a_thai_local_part_and_refuses_half_an_address(
    server: Server, box: Box
) -> None:
    thai = "สมศรี@test.go.th"
    await box.directory.add_user(thai, password=PASSWORD, name_th="สมศรี ใจงาม")
    page = (await server.request("GET", "/signin")).body.decode()
    field = re.search(r'<input id="address"[^>]*>', page)
    assert field
    assert 'type="text"' in field[0]
    assert 'inputmode="email"' in field[0]
    reply = await post_form(server, "/signin", {"address": thai, "password": PASSWORD})
    assert reply.status == 303
    assert "edgebox_session=" in (reply.header("set-cookie") or "")
    for half in ("สมศรี", "สมศรี@", "@test.go.th", "a b@test.go.th"):
        reply = await post_form(server, "/signin", {"address": half, "password": PASSWORD})
        assert reply.status == 422, half
        assert "กรุณากรอกที่อยู่อีเมลให้ครบ" in reply.body.decode()
        assert reply.header("set-cookie") is None
