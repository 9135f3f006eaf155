"""The admin console in a real browser: scope per agency, adding a user who signs in."""

from __future__ import annotations

import re

from tests.e2e.browser.conftest import DOMAIN, OTHER, USERS, Browsers
from tests.e2e.test_auth_guard import web_sign_in


def test_agency_admin_adds_a_user_who_can_then_sign_in(browsers: Browsers) -> None:
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    page = admin.page
    admin.go("/admin")
    admin.screenshot("admin-overview")
    admin.go("/admin/users")
    page.get_by_test_id("add-address").fill(f"kanya@{DOMAIN}")
    page.get_by_test_id("add-name-th").fill("กัญญา รักงาน")
    page.get_by_test_id("add-name-en").fill("Kanya Rakngan")
    page.get_by_test_id("add-rank").fill("4")
    page.get_by_test_id("add-unit").fill("กองคลัง")
    page.get_by_test_id("add-password").fill("kanya-new-2026")
    page.get_by_test_id("add-password-confirm").fill("kanya-new-2026")
    page.get_by_test_id("add-submit").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("saved-notice").is_visible()
    admin.go("/admin/users")
    rows = page.get_by_test_id("user-row")
    assert f"kanya@{DOMAIN}" in [
        rows.nth(i).get_attribute("data-address") for i in range(rows.count())
    ]
    admin.screenshot("admin-users")
    admin.assert_clean()

    # The new person signs in with the password the admin gave.
    newcomer = browsers.new()
    newcomer.go("/signin")
    newcomer.page.get_by_label("ที่อยู่อีเมล").fill(f"kanya@{DOMAIN}")
    newcomer.page.get_by_label("รหัสผ่าน").fill("kanya-new-2026")
    newcomer.page.get_by_role("button", name="เข้าสู่ระบบ").click()
    newcomer.page.wait_for_url(re.compile(r".*/mail.*"))
    newcomer.go("/settings")
    assert newcomer.page.locator(".topbar .who").inner_text() == "กัญญา รักงาน"
    # An ordinary user has no admin console.
    assert newcomer.page.get_by_role("link", name="ผู้ดูแลระบบ").count() == 0
    response = newcomer.go("/admin")
    assert response.status == 403
    newcomer.assert_clean()


def test_agency_admin_sees_only_their_own_agency(browsers: Browsers) -> None:
    assert f"nida@{OTHER}" in USERS
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    page = admin.page
    admin.go("/admin/users")
    addresses = [row.get_attribute("data-address") for row in page.get_by_test_id("user-row").all()]
    assert f"malee@{DOMAIN}" in addresses
    assert not [a for a in addresses if a.endswith("@" + OTHER)]
    # Asking for the other agency directly does not show it either.
    admin.go(f"/admin/users?agency={OTHER}")
    addresses = [row.get_attribute("data-address") for row in page.get_by_test_id("user-row").all()]
    assert not [a for a in addresses if a.endswith("@" + OTHER)]
    response = admin.go(f"/admin/users/nida@{OTHER}")
    assert response.status == 404
    assert "นิดา" not in page.content()

    # And the other agency's admin sees only theirs.
    other = browsers.signed_in(f"nida@{OTHER}")
    other.go("/admin/users")
    addresses = [
        row.get_attribute("data-address") for row in other.page.get_by_test_id("user-row").all()
    ]
    assert addresses == [f"nida@{OTHER}"]
    assert other.go(f"/admin/users/malee@{DOMAIN}").status == 404


def test_agency_admin_sees_a_guessing_address_and_unlocks_it(browsers: Browsers) -> None:
    box = browsers.box
    attacker = "127.0.0.77"
    for _ in range(2):
        assert web_sign_in(box, attacker, f"malee@{DOMAIN}", "guess-wrong-42")[0] == 401
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    page = admin.page
    admin.go("/admin")
    page.get_by_test_id("admin-nav-security").click()
    page.wait_for_load_state()
    row = page.locator(f'[data-testid="guard-source"][data-source="{attacker}"]')
    assert row.count() == 1
    assert f"malee@{DOMAIN}" in row.inner_text()
    account = page.locator(f'[data-testid="guard-account"][data-account="malee@{DOMAIN}"]')
    assert account.count() == 1
    admin.screenshot("admin-failed-sign-ins")
    row.get_by_role("button", name="ปลดล็อก").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("saved-notice").is_visible()
    assert page.locator(f'[data-testid="guard-source"][data-source="{attacker}"]').count() == 0
    admin.assert_clean()


def test_agency_admin_sets_spam_scores_and_a_block_list(browsers: Browsers) -> None:
    admin = browsers.signed_in(f"somchai@{DOMAIN}")
    page = admin.page
    admin.go("/admin")
    page.get_by_test_id("admin-nav-protection").click()
    page.wait_for_url(re.compile(r".*/admin/protection$"))
    assert page.get_by_role("heading", name="การตรวจไวรัสและสแปม").is_visible()
    page.get_by_label("ย้ายเข้าจดหมายขยะตั้งแต่คะแนน").fill("5")
    page.get_by_label("ปฏิเสธตั้งแต่คะแนน (550)").fill("12")
    page.get_by_role("button", name="บันทึกคะแนน").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("saved-notice").is_visible()
    assert page.get_by_label("ย้ายเข้าจดหมายขยะตั้งแต่คะแนน").input_value() == "5.0"
    page.get_by_test_id("block-list").fill("spammer@example.org\nbad.example")
    page.get_by_role("button", name="บันทึกรายชื่อ").click()
    page.wait_for_load_state()
    assert page.get_by_test_id("block-list").input_value() == "spammer@example.org\nbad.example"
    page.get_by_test_id("allow-list").fill("not an address")
    page.get_by_role("button", name="บันทึกรายชื่อ").click()
    page.wait_for_load_state()
    assert "not an address" in page.get_by_test_id("form-error").inner_text()
    admin.screenshot("admin-protection")
    admin.assert_clean()
    assert admin.go(f"/admin/protection?agency={OTHER}").status == 404
