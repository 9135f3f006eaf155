"""What a screen shows before anyone scrolls, at a laptop's and a phone's size.

- compose: the Send button is in sight (1280x800 and 360x740);
- the inbox's first message row, and a message's text in the reading view;
- no Thai word broken across lines in a table header (Thai has no spaces between
  words, so a narrow header cell breaks inside one: "ผู้|ใช้");
- the chat composer's sticker button on one line and wholly on screen;
- the admin overview in words an official reads, never internal service ids;
- sizes from one formatter: the scripts' twin gives the server's text;
- the sign-in page names the agency, its domain and the server.

"In sight" means the element's box lies inside the viewport with the page scrolled to
the top; nothing may make the page itself scroll sideways.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from appliance.web.i18n import SERVICE_LABELS, format_size
from tests.e2e.browser.conftest import DOMAIN, Browsers, Watched
from tests.e2e.browser.test_chat import group_room
from tests.e2e.browser.test_mail import deliver

SIZES = [pytest.param(1280, 800, id="1280x800"), pytest.param(360, 740, id="360x740")]

#: Where *selector*'s first match is, relative to the viewport at the page's top.
BOX = """(selector) => {
  window.scrollTo(0, 0);
  const r = document.querySelector(selector).getBoundingClientRect();
  return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, height: r.height};
}"""

#: How many lines each visible header cell's text takes (one rectangle per line box).
HEADER_LINES = """() => [...document.querySelectorAll("th")]
  .filter((th) => th.offsetWidth > 1 && th.textContent.trim())
  .map((th) => {
    const range = document.createRange();
    range.selectNodeContents(th);
    const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0)
      .map((r) => Math.round(r.top)));
    return [th.textContent.trim(), tops.size];
  })"""


def in_sight(tab: Watched, selector: str, width: int, height: int) -> dict[str, float]:
    """Assert *selector* is wholly on screen before scrolling; return its box."""
    box: dict[str, float] = tab.page.evaluate(BOX, selector)
    assert box["height"] > 0, f"{selector} is not shown"
    assert box["top"] >= 0, (selector, box)
    assert box["bottom"] <= height, (selector, box, height)
    assert box["left"] >= 0, (selector, box)
    assert box["right"] <= width, (selector, box, width)
    return box


def no_sideways_scroll(tab: Watched, width: int) -> None:
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_compose_shows_send_and_names_itself_like_its_button(
    browsers: Browsers, width: int, height: int
) -> None:
    tab = browsers.signed_in(f"somchai@{DOMAIN}", width=width, height=height)
    page = tab.page
    tab.go("/mail")
    button = page.locator("a.compose-button").inner_text().strip()
    page.locator("a.compose-button").click()
    page.wait_for_url(re.compile(r".*/mail/compose$"))
    in_sight(tab, "#compose-send", width, height)
    no_sideways_scroll(tab, width)
    # The button that opens the page and the page's heading use the same words.
    assert page.locator(".compose h1").inner_text().strip() == button == "เขียนจดหมายใหม่"
    tab.screenshot(f"layout-compose-{width}", full_page=False)
    tab.assert_clean()


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_first_message_and_its_text_before_scrolling(
    browsers: Browsers, width: int, height: int
) -> None:
    subject = f"แจ้งเวียนหนังสือราชการ ฉบับที่ {width}"
    deliver(browsers.box, subject, "เรียน ทุกท่าน\n" + "รายละเอียดตามหนังสือที่แนบ\n" * 60)
    tab = browsers.signed_in(f"malee@{DOMAIN}", width=width, height=height)
    page = tab.page
    tab.go("/mail")
    first = "table.messages tbody tr"
    assert subject in page.locator(first).first.inner_text()
    row = in_sight(tab, first, width, height)
    # Near the top, not under the menus: the folders, search and actions take at most
    # the top third of the screen (on a phone they were 519 px of 740).
    assert row["top"] <= height / 3, row
    no_sideways_scroll(tab, width)
    tab.screenshot(f"layout-inbox-{width}", full_page=False)

    page.locator(first).first.locator("a.open").click()
    page.wait_for_url(re.compile(r".*/mail/folder/INBOX/\d+$"))
    body = tab.page.evaluate(BOX, "pre.plain")
    line = float(
        page.evaluate(
            "parseFloat(getComputedStyle(document.querySelector('pre.plain')).lineHeight)"
        )
    )
    # The text starts on screen with at least its first lines, not just its border.
    assert body["top"] + 3 * line <= height, (body, line, height)
    no_sideways_scroll(tab, width)
    tab.screenshot(f"layout-message-{width}", full_page=False)
    tab.assert_clean()


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_no_thai_word_broken_in_a_table_header(browsers: Browsers, width: int, height: int) -> None:
    deliver(browsers.box, "ทดสอบหัวตาราง", "เนื้อความ")
    tab = browsers.signed_in(f"somchai@{DOMAIN}", width=width, height=height)
    checked: list[str] = []
    for path in ("/admin", "/admin/users", "/admin/queue", "/mail"):
        tab.go(path)
        headers = tab.page.evaluate(HEADER_LINES)
        broken = [text for text, lines in headers if lines != 1]
        assert not broken, (path, headers)
        checked += [text for text, _ in headers]
        no_sideways_scroll(tab, width)
    tab.go("/admin")
    tab.screenshot(f"layout-admin-{width}")
    # The overview's agency table is among them, at both sizes.
    assert {"ผู้ใช้", "ระงับการใช้งาน"} <= set(checked)
    tab.assert_clean()


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_sticker_button_on_one_line(browsers: Browsers, width: int, height: int) -> None:
    room_id = group_room(browsers.box, "ห้องทดสอบปุ่ม")
    tab = browsers.signed_in(f"somchai@{DOMAIN}", width=width, height=height)
    tab.go(f"/chat/rooms/{room_id}")
    tab.page.locator("[data-stream='open']").wait_for()
    button = tab.page.get_by_test_id("open-stickers")
    assert button.inner_text().strip() == "สติกเกอร์"
    lines = tab.page.evaluate(
        """() => {
          const range = document.createRange();
          range.selectNodeContents(document.querySelector("[data-testid='open-stickers']"));
          return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
        }"""
    )
    assert lines == 1
    box = button.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= width
    # Not clipped: the button's box holds its whole text.
    assert button.evaluate(
        "(b) => b.scrollWidth <= b.clientWidth && b.scrollHeight <= b.clientHeight"
    )
    no_sideways_scroll(tab, width)
    tab.screenshot(f"layout-chat-room-{width}", full_page=False)
    tab.assert_clean()


def test_admin_overview_speaks_words_not_service_ids(browsers: Browsers) -> None:
    tab = browsers.signed_in(f"somchai@{DOMAIN}")
    page = tab.page
    tab.go("/admin")
    findings = page.get_by_test_id("health-finding")
    assert findings.count() >= 6
    for finding in findings.all():
        check = finding.get_attribute("data-check")
        assert check in SERVICE_LABELS, check
        assert finding.locator("strong").inner_text() == SERVICE_LABELS[check][0]
    text = page.locator("main").inner_text()
    shown = [check for check in SERVICE_LABELS if re.search(rf"(?<![\w-]){check}(?![\w-])", text)]
    assert not shown, shown
    assert "GIN:" not in text
    assert "ยังไม่ทราบ" not in text
    assert "เครือข่ายภาครัฐ (GIN)" in text
    tab.assert_clean()


def test_sizes_share_one_formatter(browsers: Browsers) -> None:
    sizes = [0, 1, 51, 256, 419, 512, 1023, 1024, 1300, 10188, 10189, 10240, 1047552,
             1048575, 1048576, 26214400, 1024**3 * 3 // 2, 5 * 1024**4]  # fmt: skip
    deliver(browsers.box, "ทดสอบขนาด", "ข้อความสั้น")
    tab = browsers.signed_in(f"malee@{DOMAIN}")
    page = tab.page
    tab.go("/mail")
    # The scripts (compose's file list, chat's files) format with common.js's twin.
    scripted: list[Any] = page.evaluate(
        """async (sizes) => {
          const common = await import("/static/common.js");
          return sizes.map((size) => common.formatSize(size));
        }""",
        sizes,
    )
    assert scripted == [format_size(size, "th") for size in sizes]
    assert [format_size(size, "th") for size in sizes] == [format_size(s, "en") for s in sizes]
    # What the server printed in the list is in the same units.
    shown = page.locator("table.messages td.size").all_inner_texts()
    assert shown
    assert all(re.fullmatch(r"\d+(\.\d)? (KB|MB|GB|TB)", s) for s in shown), shown
    tab.assert_clean()


def test_sign_in_page_names_agency_domain_and_server(browsers: Browsers) -> None:
    tab = browsers.new(width=360, height=740)
    tab.go("/signin")
    page = tab.page
    assert page.get_by_test_id("agency-name").inner_text() == "สำนักงานสาธิต"
    assert page.get_by_test_id("agency-domain").inner_text() == f"({DOMAIN})"
    assert page.get_by_test_id("box-name").inner_text() == f"mail.{DOMAIN}"
    in_sight(tab, "button.primary", 360, 740)
    tab.screenshot("layout-signin-360", full_page=False)
    tab.assert_clean()
