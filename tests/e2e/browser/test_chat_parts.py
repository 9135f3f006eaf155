"""Each part of the chat pages' scripts in Chromium, against a real box.

test_chat.py drives the live path (send, receive, "read by"); this drives the rest of
what the page modules do (static/chat-*.js): the composer's replies, files, location and
stickers, editing, deleting and hiding, typing notices, earlier messages, the media
panel, alerts, the room list's live badges, the new-room form and the keyboard.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.e2e.browser.conftest import DOMAIN, Browsers
from tests.e2e.browser.test_chat import group_room, open_room
from tests.e2e.browser.test_user_content import api, sign_in

pytestmark = pytest.mark.slow

SOMCHAI = f"somchai@{DOMAIN}"
MALEE = f"malee@{DOMAIN}"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
BANGKOK = {"latitude": 13.7563, "longitude": 100.5018}


def message(tab: Any, text: str) -> Any:
    return tab.page.get_by_test_id("message").filter(has_text=text)


def say(tab: Any, text: str) -> None:
    """Type *text* in the composer and send it with Enter, as a person does."""
    tab.page.get_by_test_id("composer").fill(text)
    tab.page.get_by_test_id("composer").press("Enter")
    message(tab, text).wait_for()


def test_composer_actions_typing_files_location_and_stickers(browsers: Browsers) -> None:
    box = browsers.box
    token = sign_in(box, SOMCHAI)
    status, pack = api(box, "POST", "/api/v1/sticker-packs", {"name": "ทักทาย"}, token=token)
    assert status == 201, pack
    status, sticker = api(box, "POST", f"/api/v1/sticker-packs/{pack['id']}/stickers?name=wave",
                          PNG, token=token, content_type="image/png")  # fmt: skip
    assert status == 201, sticker
    room_id = group_room(box, "ห้องทดสอบส่วนต่างๆ")
    somchai = open_room(browsers, SOMCHAI, room_id)
    malee = open_room(browsers, MALEE, room_id)
    somchai.page.on("dialog", lambda dialog: dialog.accept())  # "Delete this message?"

    # Typing shows on the other page, with the typist's name.
    malee.page.get_by_test_id("composer").press_sequentially("กำลังพิม")
    somchai.page.get_by_test_id("typing").filter(has_text="มาลี ศรีสุข").wait_for()
    malee.page.get_by_test_id("composer").fill("")
    say(malee, "เอกสารถึงแล้วหรือยัง")
    # Her message arriving clears the typing line.
    message(somchai, "เอกสารถึงแล้วหรือยัง").wait_for()
    expect(somchai.page.get_by_test_id("typing")).to_have_text("")

    # A reply quotes the message, on both pages.
    message(somchai, "เอกสารถึงแล้วหรือยัง").get_by_test_id("reply").click()
    expect(somchai.page.get_by_test_id("replying")).to_be_visible()
    say(somchai, "ถึงแล้วครับ")
    expect(somchai.page.get_by_test_id("replying")).to_be_hidden()
    quote = message(malee, "ถึงแล้วครับ").get_by_test_id("quote")
    quote.filter(has_text="เอกสารถึงแล้วหรือยัง").wait_for()

    # Editing: the dialog, then the new text and "edited" on both pages.
    message(somchai, "ถึงแล้วครับ").get_by_test_id("edit").click()
    somchai.page.get_by_test_id("edit-text").fill("ถึงแล้วครับ วางไว้ที่โต๊ะ")
    somchai.page.get_by_test_id("edit-save").click()
    for tab in (somchai, malee):
        edited = message(tab, "วางไว้ที่โต๊ะ")
        edited.get_by_test_id("edited").wait_for()

    # Deleting leaves a tombstone everywhere; hiding only on the page that hid.
    say(somchai, "ข้อความที่จะลบ")
    message(malee, "ข้อความที่จะลบ").wait_for()
    message(somchai, "ข้อความที่จะลบ").get_by_test_id("delete").click()
    for tab in (somchai, malee):
        tab.page.locator(".message.deleted .tombstone").first.wait_for()
        assert message(tab, "ข้อความที่จะลบ").count() == 0
    message(malee, "วางไว้ที่โต๊ะ").get_by_test_id("hide").click()
    message(malee, "วางไว้ที่โต๊ะ").wait_for(state="detached")
    assert message(somchai, "วางไว้ที่โต๊ะ").count() == 1

    # A file with the typed text as its caption; the box's type decides the kind.
    somchai.page.get_by_test_id("composer").fill("รายงานประจำเดือน")
    somchai.page.get_by_test_id("attach-input").set_input_files(
        files=[{"name": "report.txt", "mimeType": "text/plain", "buffer": "รายงาน\n".encode()}]
    )
    sent = message(malee, "report.txt")
    sent.wait_for()
    assert sent.get_attribute("data-kind") == "file"
    assert "รายงานประจำเดือน" in sent.inner_text()
    # Once sent, the caption leaves the composer and the progress line clears.
    expect(somchai.page.get_by_test_id("composer")).to_have_value("")
    expect(somchai.page.get_by_test_id("upload-status")).to_have_text("")
    # An empty file is refused in the page, before any upload.
    somchai.page.get_by_test_id("attach-input").set_input_files(
        files=[{"name": "empty.txt", "mimeType": "text/plain", "buffer": b""}]
    )
    somchai.page.get_by_test_id("send-error").filter(has_text="ไฟล์ว่างเปล่า").wait_for()

    # The browser's location, as a map link.
    context = somchai.page.context
    context.grant_permissions(["geolocation"], origin=somchai.base)
    context.set_geolocation(BANGKOK)
    somchai.page.get_by_test_id("send-location").click()
    place = malee.page.locator('.message[data-kind="location"]')
    place.wait_for()
    assert "13.75630, 100.50180" in place.inner_text()
    assert "openstreetmap.org/?mlat=13.756300" in (place.locator("a").get_attribute("href") or "")

    # A sticker from the agency's pack.
    somchai.page.get_by_test_id("open-stickers").click()
    somchai.page.get_by_test_id("sticker").first.click()
    malee.page.locator('.message[data-kind="sticker"] img.sticker').wait_for()
    expect(somchai.page.get_by_test_id("sticker-dialog")).to_be_hidden()

    # The media panel lists the file under its tab.
    somchai.page.get_by_test_id("media-panel").locator("summary").click()
    # Opening it loads the links first; the files tab once that is done.
    listed = somchai.page.get_by_test_id("media-list").locator("li")
    listed.filter(has_not_text="กำลังโหลด").first.wait_for()
    somchai.page.locator('[data-media-kind="file"]').click()
    somchai.page.get_by_test_id("media-item").filter(has_text="report.txt").wait_for()
    somchai.assert_clean()
    malee.assert_clean()


def test_earlier_messages_list_badges_and_alerts(browsers: Browsers) -> None:
    box = browsers.box
    group_room(box, "ห้องข้างเคียง")  # so that the list has a room to move to
    room_id = group_room(box, "ห้องประวัติยาว")
    token = sign_in(box, SOMCHAI)
    for n in range(55):
        status, _ = api(box, "POST", f"/api/v1/rooms/{room_id}/messages",
                        {"kind": "text", "text": f"บันทึก {n:02d}"}, token=token)  # fmt: skip
        assert status == 201
    somchai = open_room(browsers, SOMCHAI, room_id)
    assert somchai.page.get_by_test_id("message").count() == 50
    somchai.page.get_by_test_id("load-earlier").click()
    message(somchai, "บันทึก 00").wait_for()
    assert somchai.page.get_by_test_id("message").count() == 55
    assert somchai.page.get_by_test_id("load-earlier").count() == 0

    # Malee's room list follows the stream: the room's badge and preview.
    malee = browsers.signed_in(MALEE)
    malee.go("/chat")
    malee.page.locator("[data-stream='open']").wait_for()
    row = malee.page.get_by_test_id("room-item").filter(has_text="ห้องประวัติยาว")
    say(somchai, "ข้อความใหม่ล่าสุด")
    row.get_by_test_id("room-preview").filter(has_text="ข้อความใหม่ล่าสุด").wait_for()
    expect(row.get_by_test_id("unread-count")).to_be_visible()
    # The newest room comes first, and the arrows move through the list.
    assert malee.page.get_by_test_id("room-item").first.get_attribute("data-room-id") == room_id
    malee.page.locator(".room-link").first.focus()
    malee.page.keyboard.press("ArrowDown")
    second = malee.page.locator(".room-link").nth(1)
    assert second.evaluate("(link) => link === document.activeElement")

    # An alert reaches a colleague who shares a location nearby, on the list page too.
    status, _ = api(box, "PUT", "/api/v1/me/location",
                    {"share": True, "location": {"lat": 13.75, "lon": 100.5}},
                    token=sign_in(box, MALEE))  # fmt: skip
    assert status == 200
    status, sent = api(box, "POST", "/api/v1/alerts",
                       {"location": {"lat": 13.75, "lon": 100.5}, "radius_m": 5000,
                        "text": "น้ำท่วมถนนหน้าสำนักงาน"}, token=token)  # fmt: skip
    assert status == 200, sent
    assert sent["recipients"] >= 1, sent
    notice = malee.page.get_by_test_id("alert-notice")
    notice.get_by_test_id("alert-text").filter(has_text="น้ำท่วมถนนหน้าสำนักงาน").wait_for()
    assert "สมชาย ใจดี" in notice.inner_text()
    notice.get_by_role("button").click()
    assert notice.count() == 0
    somchai.assert_clean()
    malee.assert_clean()


def test_new_room_form_and_search_keyboard(browsers: Browsers) -> None:
    room_id = group_room(browsers.box, "ห้องค้นหา")
    token = sign_in(browsers.box, SOMCHAI)
    for text in ("นัดตรวจพัสดุ เช้า", "นัดตรวจพัสดุ บ่าย"):
        status, _ = api(browsers.box, "POST", f"/api/v1/rooms/{room_id}/messages",
                        {"kind": "text", "text": text}, token=token)  # fmt: skip
        assert status == 201
    tab = browsers.signed_in(SOMCHAI)
    tab.go("/chat/new")
    page = tab.page
    form = page.get_by_test_id("new-room-form")
    page.locator("#kind-direct").check()
    expect(form.locator('[data-for="direct"]')).to_be_visible()
    expect(form.locator('[data-for="broadcast"]')).to_be_hidden()
    page.locator("#kind-broadcast").check()
    expect(form.locator('[data-for="broadcast"]')).to_be_visible()
    expect(form.locator('[data-for="direct"]')).to_be_hidden()
    # A preset ticks its rule, and the working hours appear with it.
    page.locator("#kind-working_hours").check()
    assert form.locator('input[name="working_hours"]').is_checked()
    expect(form.locator(".hours")).to_be_visible()

    # Finding a colleague fills the suggestions, and "Add" puts the address in the list.
    page.locator("#find-person").fill("malee")
    page.locator(f'#people option[value="{MALEE}"]').wait_for(state="attached")
    page.locator("#find-person").fill(MALEE)
    page.locator('[data-action="add-person"]').click()
    assert MALEE in page.locator("#members").input_value()

    # "/" goes to the search box from anywhere but a field; arrows move through results.
    tab.go("/chat/search?q=" + quote("ตรวจพัสดุ"))
    page.locator("body").press("/")
    assert page.locator("#chat-q").evaluate("(q) => q === document.activeElement")
    results = page.locator(".search-result a")
    assert results.count() >= 2
    results.first.focus()
    page.keyboard.press("ArrowDown")
    assert results.nth(1).evaluate("(link) => link === document.activeElement")
    tab.assert_clean()
