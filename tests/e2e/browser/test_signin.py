"""Sign-in, settings and sign-out in a real browser."""

from __future__ import annotations

import re

from tests.e2e.browser.conftest import DOMAIN, Browsers


def test_sign_in_and_out_and_wrong_password(browsers: Browsers) -> None:
    tab = browsers.new()
    tab.go("/settings")
    page = tab.page
    # Not signed in: the browser lands on the sign-in page, Thai by default.
    assert "/signin?next=%2Fsettings" in page.url
    assert page.locator("html").get_attribute("lang") == "th"
    tab.screenshot("signin")
    page.get_by_label("ที่อยู่อีเมล").fill(f"malee@{DOMAIN}")
    page.get_by_label("รหัสผ่าน").fill("wrong password")
    page.get_by_role("button", name="เข้าสู่ระบบ").click()
    assert page.get_by_role("alert").inner_text() == "ที่อยู่อีเมลหรือรหัสผ่านไม่ถูกต้อง"
    page.get_by_label("รหัสผ่าน").fill("malee-demo-2026")
    page.get_by_role("button", name="เข้าสู่ระบบ").click()
    page.wait_for_url(re.compile(r".*/settings$"))
    assert page.get_by_role("heading", name="ตั้งค่า", exact=True).is_visible()
    page.get_by_role("button", name="ออกจากระบบ").click()
    page.wait_for_url(re.compile(r".*/signin$"))
    tab.go("/settings")
    assert "/signin" in page.url
    tab.assert_clean()


def test_settings_language_theme_font_size_follow_the_user(browsers: Browsers) -> None:
    tab = browsers.signed_in(f"somchai@{DOMAIN}")
    page = tab.page
    tab.go("/settings")
    page.get_by_label("English").check()
    page.get_by_label("มืด").check()
    page.get_by_label("ใหญ่").check()
    page.get_by_role("button", name="บันทึก").click()
    page.wait_for_url(re.compile(r".*/settings\?saved=1$"))
    html = page.locator("html")
    assert html.get_attribute("lang") == "en"
    assert html.get_attribute("data-theme") == "dark"
    # The dark theme and large font really apply (computed style, not just the attribute).
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 24, 28)"
    assert page.evaluate("getComputedStyle(document.documentElement).fontSize") == "19px"
    assert page.get_by_role("status").inner_text() == "Saved"
    tab.screenshot("settings-dark-english")
    # A second browser of the same person gets the same choices.
    other = browsers.signed_in(f"somchai@{DOMAIN}")
    other.go("/settings")
    assert other.page.locator("html").get_attribute("lang") == "en"
    # Back to Thai for the other tests.
    page.get_by_label("ภาษาไทย").check()
    page.get_by_label("Light").check()
    page.get_by_label("Medium").check()
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r".*/settings\?saved=1$"))
    assert html.get_attribute("lang") == "th"
    tab.assert_clean()
    other.assert_clean()


def test_a_phone_sized_screen_shows_the_whole_sign_in_form(browsers: Browsers) -> None:
    tab = browsers.new(width=360, height=740)
    tab.go("/signin")
    page = tab.page
    # Nothing wider than the screen: no sideways scrolling at 360 px.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.get_by_role("button", name="เข้าสู่ระบบ").is_visible()
    tab.screenshot("signin-phone")
    tab.assert_clean()
