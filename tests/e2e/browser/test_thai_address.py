"""An official whose address has a Thai local part (RFC 6531) uses every address field.

Chromium refuses ``<input type="email">`` with a non-ASCII local part ("A part followed
by '@' should not contain the symbol 'ส'"), so a field of that type would stop the
form before it reaches the box. Here each address field of the pages takes one: the
admin's add-user form, the sign-in form, the chat "direct with" field and compose To.
"""

from __future__ import annotations

import re

from tests.e2e.browser.conftest import DOMAIN, Browsers

THAI = f"สมศรี@{DOMAIN}"
PASSWORD = "somsri-thai-2026"
#: Every input the pages use for mail addresses (none may be type="email").
ADDRESS_FIELDS = ("#address", "#with", "#compose-to", "#compose-cc", "#compose-bcc", "#add-address")


def test_a_thai_local_part_signs_in_chats_and_gets_mail(browsers: Browsers) -> None:
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    page = admin.page
    admin.go("/admin/users")
    page.get_by_test_id("add-address").fill(THAI)
    page.get_by_test_id("add-name-th").fill("สมศรี ใจงาม")
    page.get_by_test_id("add-rank").fill("4")
    page.get_by_test_id("add-password").fill(PASSWORD)
    page.get_by_test_id("add-password-confirm").fill(PASSWORD)
    page.get_by_test_id("add-submit").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("saved-notice").is_visible()

    # She signs in with the address as she knows it, through the browser's own form
    # validation (the check that refused type="email").
    official = browsers.new()
    official.go("/signin")
    field = official.page.get_by_label("ที่อยู่อีเมล")
    assert field.get_attribute("type") == "text"
    assert field.get_attribute("inputmode") == "email"
    assert field.get_attribute("autocomplete") == "username"
    field.fill(THAI)
    official.page.get_by_label("รหัสผ่าน").fill(PASSWORD)
    official.page.get_by_role("button", name="เข้าสู่ระบบ").click()
    official.page.wait_for_url(re.compile(r".*/mail.*"))
    assert official.page.locator(".topbar .who").get_attribute("title") == THAI
    official.assert_clean()

    # A colleague starts a direct chat with her by typing her address.
    admin.go("/chat/new")
    page.locator("#kind-direct").check()
    page.get_by_test_id("direct-with").fill(THAI)
    page.get_by_test_id("create-room").click()
    page.wait_for_url(re.compile(r".*/chat/rooms/[^/]+$"))
    members = [m.get_attribute("data-address") for m in page.get_by_test_id("member").all()]
    assert THAI in members

    # And writes to her: the compose fields take the address too.
    admin.go("/mail/compose")
    page.get_by_label("ถึง", exact=True).fill(THAI)
    page.get_by_label("เรื่อง").fill("ทดสอบที่อยู่ภาษาไทย")
    page.get_by_label("ข้อความ").fill("เรียน คุณสมศรี")
    page.locator("#compose-send").click()
    page.wait_for_url(re.compile(r".*/mail/folder/Sent\?sent=1$"))
    admin.assert_clean()
    official.go("/mail")
    assert official.page.locator("tr", has_text="ทดสอบที่อยู่ภาษาไทย").count() == 1
    official.assert_clean()


def test_no_address_field_is_type_email(browsers: Browsers) -> None:
    tab = browsers.new()
    tab.go("/signin")
    seen = tab.page.eval_on_selector_all("input", "(all) => all.map((i) => [i.id, i.type])")
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    for path in ("/chat/new", "/mail/compose", "/admin/users"):
        admin.go(path)
        seen += admin.page.eval_on_selector_all("input", "(all) => all.map((i) => [i.id, i.type])")
    types = dict(seen)
    assert not [name for name, kind in seen if kind == "email"]
    for field in ADDRESS_FIELDS:
        assert types[field.lstrip("#")] == "text", field


def test_a_half_typed_address_is_refused_by_the_box(browsers: Browsers) -> None:
    tab = browsers.new()
    tab.go("/signin")
    page = tab.page
    page.get_by_label("ที่อยู่อีเมล").fill("สมศรี")
    page.get_by_label("รหัสผ่าน").fill("anything")
    page.get_by_role("button", name="เข้าสู่ระบบ").click()
    page.wait_for_load_state()
    assert "ที่อยู่อีเมลให้ครบ" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("ที่อยู่อีเมล").input_value() == "สมศรี"
    tab.assert_clean()
