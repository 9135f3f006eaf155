"""Chat in two browsers at once: live delivery, "read by" names, hostile text stays text."""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

from tests.e2e.browser.conftest import DOMAIN, USERS, Browsers
from tests.harness import RunningBox


def call(
    box: RunningBox, method: str, path: str, body: Any = None, token: str | None = None
) -> Any:
    """The chat API as the phone app calls it (bearer token)."""
    context = ssl.create_default_context(cafile=str(box.ca))
    context.check_hostname = False
    request = urllib.request.Request(
        f"https://127.0.0.1:{box.port('https')}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {token}"} if token else {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310 (https only)
        return json.loads(response.read() or b"null")


def group_room(box: RunningBox, name: str) -> str:
    owner = f"somchai@{DOMAIN}"
    signed = call(box, "POST", "/api/v1/session",
                  {"address": owner, "password": USERS[owner][0], "client": "app"})  # fmt: skip
    room = call(box, "POST", "/api/v1/rooms",
                {"kind": "group", "name": name, "members": [f"malee@{DOMAIN}"]},
                token=signed["token"])  # fmt: skip
    return str(room["id"])


def open_room(browsers: Browsers, address: str, room_id: str) -> Any:
    tab = browsers.signed_in(address)
    tab.go(f"/chat/rooms/{room_id}")
    # The page says when its event stream is connected.
    tab.page.locator("[data-stream='open']").wait_for()
    return tab


def test_two_browsers_chat_live_with_read_by_names(browsers: Browsers) -> None:
    room_id = group_room(browsers.box, "ทีมงานจัดประชุม")
    somchai = open_room(browsers, f"somchai@{DOMAIN}", room_id)
    malee = open_room(browsers, f"malee@{DOMAIN}", room_id)

    composer = somchai.page.get_by_test_id("composer")
    composer.fill("สวัสดีครับ ประชุมเลื่อนเป็นบ่ายสองโมง")
    somchai.page.get_by_test_id("send").click()

    # Malee's page shows it without a reload.
    arrived = malee.page.get_by_test_id("message").filter(has_text="ประชุมเลื่อนเป็นบ่ายสองโมง")
    arrived.wait_for()
    assert arrived.get_attribute("data-mine") in (None, "0", "false")
    # Seeing it marks it read; Somchai's page names her under his message.
    mine = somchai.page.get_by_test_id("message").filter(has_text="ประชุมเลื่อนเป็นบ่ายสองโมง")
    read_by = mine.get_by_test_id("read-by")
    read_by.filter(has_text="มาลี ศรีสุข").wait_for()
    assert "มาลี ศรีสุข" in read_by.inner_text()
    somchai.screenshot("chat-room-read-by")
    malee.screenshot("chat-room-live")

    # And back the other way.
    malee.page.get_by_test_id("composer").fill("รับทราบค่ะ")
    malee.page.get_by_test_id("composer").press("Enter")
    somchai.page.get_by_test_id("message").filter(has_text="รับทราบค่ะ").wait_for()
    somchai.go("/chat")
    somchai.screenshot("chat-list")
    somchai.assert_clean()
    malee.assert_clean()


def test_hostile_chat_text_renders_inert(browsers: Browsers) -> None:
    room_id = group_room(browsers.box, "ห้องทดสอบความปลอดภัย")
    reader = open_room(browsers, f"malee@{DOMAIN}", room_id)
    dialogs: list[str] = []
    reader.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    hostile = [
        "<img src=x onerror=\"document.title='pwned';alert(1)\">",
        "<script>document.title='pwned'</script>",
        '<a href="javascript:alert(1)">คลิก</a>',
        "javascript:alert(1)",
        '<svg onload="alert(1)"></svg>',
        '"><iframe src="javascript:alert(1)"></iframe>',
    ]
    sender = open_room(browsers, f"somchai@{DOMAIN}", room_id)
    for text in hostile:
        sender.page.get_by_test_id("composer").fill(text)
        sender.page.get_by_test_id("send").click()
    for text in hostile:
        reader.page.get_by_test_id("message-body").filter(has_text=text).first.wait_for()
    # Reload: the server-rendered copy must be inert too.
    reader.page.reload()
    page = reader.page
    bodies = page.get_by_test_id("message-body").all_inner_texts()
    for text in hostile:
        assert text in bodies
    assert dialogs == []
    assert page.title() != "pwned"
    # Nothing from the messages became an element or a javascript: link.
    messages = page.get_by_test_id("messages")
    assert messages.locator("img[src='x'], script, svg, iframe").count() == 0
    assert messages.locator("a[href^='javascript']").count() == 0
    reader.assert_clean()
    sender.assert_clean()
