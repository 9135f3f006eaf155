"""Hostile chat files in Chromium: opened, linked or loaded as script, none of them runs.

Issue 25's attack: an SVG served inline from the box's origin with ``<script href>``
pointing at a chat file uploaded as ``text/javascript`` ran as whoever opened it. Here
the same files are uploaded through the API, then a member's browser

- opens each file's URL directly (as a click on a posted link would): a download,
  never a page;
- loads a page *of the box's origin* that links them every way a document can: as
  ``<script src>``, ``<iframe>``, ``<object>``, ``<embed>`` and ``<img>``. Our box never
  serves such a page (that is the point), so Playwright answers one URL of the origin
  with it (`BrowserContext.route`); the files themselves come from the real box, with
  the member's session cookie.

Every hostile script would set ``document.title`` and ask for ``/__ran__/...``; the
test watches every request the browser makes. A control script served as
``text/javascript`` from the same page does run, so the probe can see a script run.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.browser.conftest import DOMAIN, USERS, Browsers
from tests.harness import RunningBox

pytestmark = pytest.mark.slow

MEMBER = f"malee@{DOMAIN}"
ADMIN = f"somchai@{DOMAIN}"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"


def hostile_script(tag: str) -> bytes:
    """Script that shows it ran in every way the test can see."""
    return (
        f"window.ran = (window.ran || []).concat('{tag}');"
        f"try {{ top.document.title = 'pwned-{tag}'; }} catch (e) {{}}"
        f"fetch('/__ran__/{tag}');"
    ).encode()


def api(
    box: RunningBox,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """The chat API as the phone app calls it (bearer token); (status, JSON body)."""
    context = ssl.create_default_context(cafile=str(box.ca))
    context.check_hostname = False
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"https://127.0.0.1:{box.port('https')}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310 (https only)
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def sign_in(box: RunningBox, address: str) -> str:
    body = {"address": address, "password": USERS[address][0], "client": "app"}
    status, signed = api(box, "POST", "/api/v1/session", body)
    assert status in (200, 201), signed
    return str(signed["token"])


def post_file(
    box: RunningBox, token: str, room_id: str, data: bytes, content_type: str, name: str
) -> str:
    """Upload and post a file message; return the URL the box serves it at."""
    status, upload = api(box, "POST", f"/api/v1/uploads?name={quote(name)}", data,
                         token=token, content_type=content_type)  # fmt: skip
    assert status == 201, upload
    draft = {"kind": "file", "upload_id": upload["upload_id"]}
    status, message = api(box, "POST", f"/api/v1/rooms/{room_id}/messages", draft, token=token)
    assert status == 201, message
    return f"/api/v1/rooms/{room_id}/messages/{message['id']}/file"


def test_uploaded_svg_and_javascript_never_run_in_the_box_origin(browsers: Browsers) -> None:
    box = browsers.box
    token = sign_in(box, ADMIN)
    status, room = api(box, "POST", "/api/v1/rooms",
                       {"kind": "group", "name": "ห้องไฟล์อันตราย", "members": [MEMBER]},
                       token=token)  # fmt: skip
    assert status == 201
    room_id = room["id"]

    js_url = post_file(box, token, room_id, hostile_script("js"), "text/javascript", "evil.js")
    # Starts as a PNG, goes on as script: served as an image, so never as script.
    polyglot_url = post_file(box, token, room_id, PNG + b"\n" + hostile_script("polyglot"),
                             "text/javascript", "polyglot.js")  # fmt: skip
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'/__ran__/svg-onload\')">'
        f'<script href="{js_url}"/>'
        "<script>document.title = 'pwned-svg'; fetch('/__ran__/svg-inline');</script>"
        "</svg>"
    ).encode()
    svg_url = post_file(box, token, room_id, svg, "image/svg+xml", "map.svg")
    html_url = post_file(box, token, room_id, b"<script>fetch('/__ran__/html')</script>",
                         "text/html", "page.html")  # fmt: skip

    # The sticker route: neither the SVG nor the smuggled type is taken.
    status, pack = api(box, "POST", "/api/v1/sticker-packs", {"name": "ชุดทดสอบ"}, token=token)
    assert status == 201
    stickers = f"/api/v1/sticker-packs/{pack['id']}/stickers?name=x"
    status, refused = api(box, "POST", stickers, svg, token=token, content_type="image/svg+xml")
    assert (status, refused["error"]["code"]) == (422, "invalid_sticker_image")
    status, refused = api(box, "POST", stickers, hostile_script("sticker"), token=token,
                          content_type="image/png, text/javascript")  # fmt: skip
    assert (status, refused["error"]["code"]) == (415, "unsupported_media_type")

    tab = browsers.signed_in(MEMBER)
    page = tab.page
    base = tab.base
    requests: list[str] = []
    console: list[str] = []
    dialogs: list[str] = []
    page.context.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: console.append(message.text))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    # 1. Opened directly, as a click on a posted link would: saved, never shown.
    for url, name in ((js_url, "evil.js"), (svg_url, "map.svg"), (html_url, "page.html")):
        with page.expect_download() as download, pytest.raises(Exception, match="Download is"):
            page.goto(base + url)
        assert download.value.suggested_filename == name
    # The polyglot's bytes are a PNG: shown as a picture, which runs nothing.
    shown = page.goto(base + polyglot_url)
    assert shown is not None
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-security-policy"] == "default-src 'none'; sandbox"

    # 2. Linked from a page of the box's own origin, every way a document can.
    probe = base + "/__probe__/page"
    markup = f"""<!doctype html><title>probe</title>
        <script src="{js_url}"></script>
        <script src="{polyglot_url}"></script>
        <script src="{svg_url}"></script>
        <iframe src="{svg_url}"></iframe>
        <iframe src="{html_url}"></iframe>
        <object data="{svg_url}" type="image/svg+xml"></object>
        <embed src="{svg_url}" type="image/svg+xml">
        <img src="{svg_url}">
        <script src="/__probe__/control.js"></script>"""

    def answer(route: Any) -> None:
        if route.request.url.endswith("control.js"):
            script = hostile_script("control")
            route.fulfill(status=200, content_type="text/javascript", body=script)
        else:
            route.fulfill(status=200, content_type="text/html", body=markup)

    page.context.route(re.compile(re.escape(base) + r"/__probe__/.*"), answer)
    # Scripts run in document order, so by the control's request every earlier script
    # has run (or not) and its request, had it made one, was already seen.
    with page.expect_request(re.compile(r".*/__ran__/control$")):
        page.goto(probe, wait_until="load")
    # The control ran (the probe sees scripts that run); nothing of the users' did.
    assert page.evaluate("window.ran") == ["control"]
    assert page.title() == "pwned-control"
    ran = [url.rpartition("/__ran__/")[2] for url in requests if "/__ran__/" in url]
    assert ran == ["control"]
    assert dialogs == []
    # Each user file was fetched with the member's session and refused as script by its
    # type (not missing, not forbidden): Chromium says so on the console.
    refusals = [line for line in console if "Refused to execute script" in line]
    for url, kind in ((js_url, "application/octet-stream"), (polyglot_url, "image/png"),
                      (svg_url, "application/octet-stream")):  # fmt: skip
        assert any(url in line and f"MIME type ('{kind}')" in line for line in refusals), (
            url, console)  # fmt: skip
    # The frames stayed empty: a download, or refused by X-Frame-Options.
    for frame in page.frames[1:]:
        assert "pwned" not in frame.url

    # 3. In the chat room, the posted files are download links.
    tab.go(f"/chat/rooms/{room_id}")
    page.locator("[data-stream='open']").wait_for()
    link = page.get_by_role("link", name="evil.js")
    assert link.get_attribute("download") == "evil.js"
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "evil.js"
    assert "pwned" not in page.title()

    # 4. Attached in the room: the page asks the box what a file is. A real PNG is a
    # picture; an SVG, whatever the browser calls it, is a file to download.
    attach = page.get_by_test_id("attach-input")
    attach.set_input_files(files=[{"name": "ภาพ.png", "mimeType": "image/png", "buffer": PNG}])
    picture = page.locator("a.image img[alt='ภาพ.png']")
    picture.wait_for()
    attach.set_input_files(files=[{"name": "map2.svg", "mimeType": "image/svg+xml", "buffer": svg}])
    page.get_by_role("link", name="map2.svg").wait_for()
    assert page.locator("img[alt='map2.svg']").count() == 0
    assert "pwned" not in page.title()
    assert [url for url in requests if "/__ran__/" in url and "control" not in url] == []
