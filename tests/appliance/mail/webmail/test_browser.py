"""The reading pages in Debian's Chromium: hostile mail is inert, shortcuts work, 360 px fits.

Strings can say a sanitiser removed a handler; only a browser can say that nothing ran.
The hostile message below tries every way we know to run script or to reach the box
from its frame: each would change the page's title, open a dialog or send a request,
and the test watches for all three. Remote images are answered by Playwright itself
(`BrowserContext.route`), so nothing leaves 127.0.0.1.

Screenshots go to tests/artifacts/screenshots, as in tests/e2e/browser.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import trio

from tests.appliance.mail.webmail.conftest import Mail, deliver, message
from tests.e2e.browser.conftest import ARTIFACTS, CHROMIUM_ARGS
from tests.harness import require_tool

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PWN = "parent.document.title='pwned';top.document.title='pwned';alert(1)"

HOSTILE = (
    "--rel\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    "<html><head><meta http-equiv=refresh content='0;url=/mail/actions'>"
    "<base href='https://evil.example/'><style>body{background:url(/signout)}</style>"
    f"<script>{PWN}</script></head>"
    f'<body onload="{PWN}"><p id="greeting">เรียน ท่านผู้อำนวยการ</p>'
    f'<img src="x" onerror="{PWN}">'
    f'<svg onload="{PWN}"><script>{PWN}</script></svg>'
    f'<a id="js" href="javascript:{PWN}">คลิก</a>'
    f'<iframe srcdoc="<script>{PWN}</script>"></iframe>'
    '<form action="/mail/actions" method="post"><input name="action" value="delete">'
    '<button id="submit">ส่ง</button></form>'
    '<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:red">overlay</div>'
    '<img id="remote" src="https://tracker.example/pixel.png" alt="remote">'
    '<img id="inline" src="cid:logo@example.go.th" alt="inline">'
    "</body></html>\r\n"
    "--rel\r\n"
    "Content-Type: image/png\r\nContent-ID: <logo@example.go.th>\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG).decode() + "\r\n"
    "--rel--\r\n"
)


def base_url(mail: Mail) -> str:
    return f"https://127.0.0.1:{mail.server.port}"


def drive(mail: Mail, chromium: str) -> dict[str, Any]:
    """Run the browser session (in a worker thread: the box's server runs meanwhile)."""
    from playwright.sync_api import sync_playwright

    base = base_url(mail)
    seen: dict[str, Any] = {"dialogs": [], "problems": [], "remote": [], "navigations": []}
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            context.add_cookies([{
                "name": "edgebox_session", "value": mail.me.token, "url": base,
                "secure": True, "httpOnly": True, "sameSite": "Strict",
            }])  # fmt: skip

            def remote(route: Any) -> None:
                seen["remote"].append(route.request.url)
                route.fulfill(status=200, content_type="image/png", body=PNG)

            context.route("https://tracker.example/**", remote)
            context.route("https://evil.example/**", remote)
            page = context.new_page()

            def dialog(opened: Any) -> None:
                seen["dialogs"].append(opened.message)
                opened.dismiss()

            def console(message: Any) -> None:
                # A CSP violation anywhere (page or frame) means something was refused
                # that our own markup asked for, or hostile markup got through.
                if message.type == "error" and "Content Security Policy" in message.text:
                    seen["problems"].append(message.text)

            page.on("dialog", dialog)
            page.on("console", console)
            page.on("pageerror", lambda exc: seen["problems"].append(f"script error: {exc}"))

            # -- the list: select all, j/k, open with o --------------------------------
            page.goto(base + "/mail")
            page.screenshot(path=str(shots / "mail-list.png"), full_page=True)
            select_all = page.locator("input.select-all")
            seen["select_all_visible"] = select_all.is_visible()
            select_all.check()
            seen["all_ticked"] = page.locator('input[name="uids"]:checked').count()
            select_all.uncheck()
            page.keyboard.press("j")
            page.keyboard.press("j")
            seen["current_after_jj"] = page.locator("tr.current").get_attribute("data-ref")
            page.keyboard.press("k")
            seen["current_after_k"] = page.locator("tr.current").get_attribute("data-ref")
            page.keyboard.press("/")
            seen["search_focused"] = page.evaluate("document.activeElement.id")
            page.keyboard.type("j")  # typed into the search box, not a shortcut
            seen["current_after_typing"] = page.locator("tr.current").get_attribute("data-ref")
            page.locator("#mail-search-q").fill("")
            page.evaluate("document.activeElement.blur()")
            page.keyboard.press("?")
            seen["help_open"] = page.locator("dialog#mail-shortcuts").evaluate("d => d.open")
            page.keyboard.press("Escape")
            page.keyboard.press("o")  # the current row: the hostile message (UID 3)
            page.wait_for_url(re.compile(r".*/mail/folder/INBOX/3$"))

            # -- the hostile message ------------------------------------------------
            frame = page.frame_locator("iframe.mail-frame")
            # (The sanitiser drops id attributes: elements are found by text and alt.)
            greeting = frame.locator("p", has_text="ท่านผู้อำนวยการ")
            greeting.wait_for()
            seen["greeting"] = greeting.inner_text()
            frame.locator("a", has_text="คลิก").click()  # no href left: no role "link"
            seen["form_in_frame"] = frame.locator("form, button, input").count()
            page.wait_for_timeout(300)
            seen["title"] = page.title()
            seen["remote_before"] = list(seen["remote"])
            inline = frame.locator('img[alt="inline"]')
            seen["inline_src"] = inline.get_attribute("src")
            box = page.locator("iframe.mail-frame").bounding_box()
            seen["frame_inside_page"] = box is not None and box["y"] > 100
            page.screenshot(path=str(shots / "mail-message-hostile.png"), full_page=True)
            page.get_by_role("link", name="แสดงรูปภาพ").click()
            frame.locator('img[alt="remote"][src^="https://tracker.example/"]').wait_for()
            seen["bar_hidden"] = page.locator("#remote-images").is_hidden()
            seen["remote_after"] = list(seen["remote"])
            seen["title_after_images"] = page.title()

            # -- shortcuts on the reading view: s flags, u goes back -------------------
            page.locator("h1").click()  # focus the page, not the frame
            with page.expect_navigation():
                page.keyboard.press("s")
            seen["flag_button"] = page.locator('[data-key="s"]').inner_text()
            page.keyboard.press("u")
            page.wait_for_url(re.compile(r".*/mail$"))
            # '#' on the current row deletes it (to Trash).
            page.keyboard.press("j")
            with page.expect_navigation():
                page.keyboard.press("#")
            seen["after_delete_rows"] = page.locator("table.messages tbody tr").count()

            # 'f' on a reading view follows its Forward link.
            page.goto(base + "/mail/folder/INBOX/1")
            with page.expect_navigation():
                page.keyboard.press("f")
            seen["forward_url"] = page.url

            # -- 360 px wide ------------------------------------------------------------
            narrow = context.new_page()
            narrow.set_viewport_size({"width": 360, "height": 740})
            for path, name in (
                ("/mail", "mail-list-360"),
                ("/mail/folder/INBOX/1", "mail-message-360"),
            ):
                narrow.goto(base + path)
                seen[f"overflow {path}"] = narrow.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                narrow.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        finally:
            browser.close()
    return seen


async def test_mail_pages_in_chromium(mail: Mail) -> None:
    chromium = require_tool("chromium")
    await deliver(mail.box, message("รายงานผลการดำเนินงาน", "เรียน ผู้อำนวยการ\r\n" * 30))
    await deliver(
        mail.box,
        message("ประกาศ", headers=[("X-Urgency", "ด่วนที่สุด"), ("X-Classification", "ลับ")]),
    )
    await deliver(
        mail.box,
        message("จดหมายอันตราย", HOSTILE, content_type='multipart/related; boundary="rel"'),
    )

    seen = await trio.to_thread.run_sync(drive, mail, chromium)

    assert seen["problems"] == []
    assert seen["dialogs"] == []
    assert seen["select_all_visible"]
    assert seen["all_ticked"] == 3
    assert seen["current_after_jj"] == "INBOX/2"
    assert seen["current_after_k"] == "INBOX/3"
    assert seen["search_focused"] == "mail-search-q"
    assert seen["current_after_typing"] == "INBOX/3"
    assert seen["help_open"] is True
    # Nothing ran: no dialog, no title change, the form is gone, nothing went remote.
    assert seen["greeting"] == "เรียน ท่านผู้อำนวยการ"
    assert seen["form_in_frame"] == 0
    assert "pwned" not in seen["title"]
    assert seen["remote_before"] == []
    assert seen["inline_src"].startswith("data:image/png;base64,")
    assert seen["frame_inside_page"]
    # Asked for: the remote image loads (answered by the route above), still no script.
    assert seen["remote_after"] == ["https://tracker.example/pixel.png"]
    assert seen["bar_hidden"]
    assert "pwned" not in seen["title_after_images"]
    assert "ติดดาวแล้ว" in seen["flag_button"]
    # Then '#' deleted the first row, the same (flagged) message: it is in Trash now.
    assert seen["after_delete_rows"] == 2
    assert [m.uid for m in await mail.stored()] == [1, 2]
    [trashed] = await mail.stored(folder="Trash")
    assert "\\Flagged" in trashed.flags
    assert seen["forward_url"] == base_url(mail) + "/mail/compose?forward=INBOX/1"
    assert seen["overflow /mail"] == 0
    assert seen["overflow /mail/folder/INBOX/1"] == 0
