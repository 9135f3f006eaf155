"""Files and text users put into chat, over real HTTPS: how each comes back out.

Every route that answers with bytes a user supplied (a chat file, a sticker) must
answer so that a browser can never run them in the box's origin: inline only for a
raster image, audio or video recognised by its bytes, else an octet-stream
attachment; always ``nosniff`` and ``default-src 'none'; sandbox``
(`appliance.web.user_content`). Mail parts are checked in tests/appliance/mail/webmail.
"""

# ruff: noqa: F811 (the "site" fixture of test_pages.py is imported, and named by the tests)
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote

import pytest
import trio

from appliance.chat.replication import parse_event
from appliance.chat.writer import wrap_blob as _wrap_blob
from tests.appliance.chat.test_pages import Site, site  # noqa: F401 (the fixture)
from tests.appliance.security.test_untrusted import GIF, JPEG, JS, PNG, WEBM
from tests.appliance.web.conftest import Reply

SANDBOX = "default-src 'none'; sandbox"
HTML = b"<!doctype html><script>document.title='pwned'</script>"
SVG_SCRIPT = (
    b'<svg xmlns="http://www.w3.org/2000/svg"><script href="/api/v1/rooms/r/messages/m/file"/>'
    b"</svg>"
)


async def upload(site: Site, who: str, data: bytes, content_type: str, name: str) -> Reply:
    headers = {**site.cookie(who), "X-Requested-With": "edgebox", "Content-Type": content_type}
    return await site.server.request(
        "POST", f"/api/v1/uploads?name={quote(name)}", data, headers=headers
    )


async def post_file(
    site: Site, data: bytes, content_type: str, name: str, kind: str = "file"
) -> tuple[str, Any]:
    """Upload as staff and post in a room with peer; return the file's URL and the message."""
    room = await site.room("staff", "peer")
    uploaded = await upload(site, "staff", data, content_type, name)
    assert uploaded.status == 201, uploaded.body
    posted = await site.api(
        "staff", "POST", f"/api/v1/rooms/{room.id}/messages",
        {"kind": kind, "upload_id": uploaded.json()["upload_id"]},
    )  # fmt: skip
    assert posted.status == 201, posted.body
    message = posted.json()
    return f"/api/v1/rooms/{room.id}/messages/{message['id']}/file", message


def assert_user_content(reply: Reply, content_type: str, disposition: str, name: str) -> None:
    """The headers every answer with a user's bytes carries."""
    assert reply.status == 200
    assert reply.header("Content-Type") == content_type
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert reply.header("Content-Security-Policy") == SANDBOX
    header = reply.header("Content-Disposition") or ""
    assert header.startswith(f"{disposition}; filename=")
    assert unquote(header.rpartition("''")[2]) == name


# --- chat files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "declared", "kind", "served", "disposition"),
    [
        (PNG, "image/png", "image", "image/png", "inline"),
        (JPEG, "image/jpeg", "image", "image/jpeg", "inline"),
        # The bytes decide: a PNG labelled SVG is a PNG, shown as a picture.
        (PNG, "image/svg+xml", "image", "image/png", "inline"),
        (WEBM, "audio/webm;codecs=opus", "voice", "audio/webm", "inline"),
        (WEBM, "video/webm", "video", "video/webm", "inline"),
        # Everything else is only ever saved, never shown, whatever it says it is.
        (SVG_SCRIPT, "image/svg+xml", "file", "application/octet-stream", "attachment"),
        (JS, "text/javascript", "file", "application/octet-stream", "attachment"),
        (HTML, "text/html", "file", "application/octet-stream", "attachment"),
        (b"%PDF-1.7 report", "application/pdf", "file", "application/octet-stream", "attachment"),
        (b"\x89PNG but not one", "image/png", "image", "application/octet-stream", "attachment"),
    ],
    ids=["png", "jpeg", "png-labelled-svg", "voice-webm", "video-webm", "svg-with-script",
         "javascript", "html", "pdf", "not-a-png"],
)  # fmt: skip
async def test_a_chat_file_is_inline_only_if_its_bytes_are_a_picture_or_sound(
    site: Site, data: bytes, declared: str, kind: str, served: str, disposition: str
) -> None:
    url, _ = await post_file(site, data, declared, "ไฟล์ทดสอบ", kind)
    reply = await site.get("peer", url)
    assert reply.body == data
    assert_user_content(reply, served, disposition, "ไฟล์ทดสอบ")


async def test_an_svg_is_never_an_image_message(site: Site) -> None:
    room = await site.room("staff", "peer")
    uploaded = await upload(site, "staff", SVG_SCRIPT, "image/svg+xml", "map.svg")
    assert uploaded.json()["media_type"] == "image/svg+xml"
    refused = await site.api(
        "staff", "POST", f"/api/v1/rooms/{room.id}/messages",
        {"kind": "image", "upload_id": uploaded.json()["upload_id"]},
    )  # fmt: skip
    assert refused.status == 422
    assert refused.json()["error"]["code"] == "invalid_upload"


async def test_an_upload_keeps_the_type_its_bytes_show(site: Site) -> None:
    uploaded = await upload(site, "staff", GIF, "text/html", "smile.gif")
    assert uploaded.json()["media_type"] == "image/gif"
    uploaded = await upload(site, "staff", JS, "text/javascript; charset=utf-8", "a.js")
    assert uploaded.json()["media_type"] == "text/javascript"


@pytest.mark.parametrize(
    "declared",
    ["image/png, text/javascript", "image/png;x=1,text/javascript", "text/javascript image/png",
     "image", "image/*"],
)  # fmt: skip
async def test_an_upload_declaring_anything_but_one_type_is_refused(
    site: Site, declared: str
) -> None:
    reply = await upload(site, "staff", JS, declared, "a.js")
    assert reply.status == 415
    assert reply.json()["error"]["code"] == "unsupported_media_type"


async def test_a_file_name_loses_its_right_to_left_override(site: Site) -> None:
    url, message = await post_file(site, b"MZ\x90\x00", "application/pdf", "invoice\u202efdp.exe")
    assert message["content"]["name"] == "invoicefdp.exe"
    reply = await site.get("peer", url)
    assert_user_content(reply, "application/octet-stream", "attachment", "invoicefdp.exe")


# --- stickers --------------------------------------------------------------------------


async def add_sticker(site: Site, data: bytes, content_type: str) -> Reply:
    made = await site.api("boss", "POST", "/api/v1/sticker-packs", {"name": "ชุดทดสอบ"})
    assert made.status == 201
    headers = {**site.cookie("boss"), "X-Requested-With": "edgebox", "Content-Type": content_type}
    return await site.server.request(
        "POST", f"/api/v1/sticker-packs/{made.json()['id']}/stickers?name=ok", data,
        headers=headers,
    )  # fmt: skip


async def test_a_sticker_is_a_raster_image_served_inline(site: Site) -> None:
    added = await add_sticker(site, PNG, "image/png")
    assert added.status == 201
    assert added.json()["media_type"] == "image/png"
    reply = await site.get("peer", f"/api/v1/stickers/{added.json()['id']}/image")
    assert reply.body == PNG
    assert_user_content(reply, "image/png", "inline", "sticker.png")
    assert reply.header("Cache-Control") == "private"


@pytest.mark.parametrize(
    ("data", "declared", "status", "code"),
    [
        (SVG_SCRIPT, "image/svg+xml", 422, "invalid_sticker_image"),
        (JS, "image/png", 422, "invalid_sticker_image"),
        (HTML, "image/gif", 422, "invalid_sticker_image"),
        # The trick: a list that starts like an image.
        (JS, "image/png, text/javascript", 415, "unsupported_media_type"),
        (PNG, "text/javascript", 415, "unsupported_media_type"),
    ],
    ids=["svg", "javascript", "html", "type-list", "not-an-image-type"],
)
async def test_a_sticker_that_is_not_a_raster_image_is_refused(
    site: Site, data: bytes, declared: str, status: int, code: str
) -> None:
    reply = await add_sticker(site, data, declared)
    assert reply.status == status
    assert reply.header("Content-Type") == "application/json"
    assert reply.json()["error"]["code"] == code
    assert reply.json()["error"]["message_th"]
    assert [
        s for p in await site.chat.sticker_packs(site.people["boss"]) for s in p["stickers"]
    ] == []


async def test_a_sticker_stored_before_the_check_is_only_a_download(site: Site) -> None:
    """An SVG sticker an older version accepted: served, but never as a document."""
    added = await add_sticker(site, PNG, "image/png")
    sticker_id = added.json()["id"]
    chat = site.chat
    blob_id = await trio.to_thread.run_sync(chat._blobs.put, _wrap_blob(SVG_SCRIPT))
    await chat._db.write(
        lambda conn: conn.execute(
            "UPDATE stickers SET blob_id = ?, media_type = 'image/svg+xml' WHERE id = ?",
            (blob_id, sticker_id),
        )
    )
    reply = await site.get("peer", f"/api/v1/stickers/{sticker_id}/image")
    assert reply.body == SVG_SCRIPT
    assert_user_content(reply, "application/octet-stream", "attachment", "sticker.svg")


# --- bidirectional controls in chat text and names -------------------------------------

RLO = "\u202e"


async def test_bidi_overrides_go_from_text_room_names_and_display_names(site: Site) -> None:
    created = await site.api(
        "staff", "POST", "/api/v1/rooms",
        {"kind": "group", "name": f"ห้อง{RLO}gnp.exe", "members": [site.people["peer"].address]},
    )  # fmt: skip
    room = created.json()
    assert room["name"] == "ห้องgnp.exe"
    renamed = await site.api(
        "staff", "PATCH", f"/api/v1/rooms/{room['id']}", {"name": f"\u2066ใหม่{RLO}\u2069"}
    )
    assert renamed.json()["name"] == "ใหม่"
    posted = await site.api(
        "staff", "POST", f"/api/v1/rooms/{room['id']}/messages",
        {"kind": "text", "text": f"ดู invoice{RLO}fdp.exe\nบรรทัดสอง\u200f"},
    )  # fmt: skip
    assert posted.json()["content"]["text"] == "ดู invoicefdp.exe\nบรรทัดสอง\u200f"
    edited = await site.api(
        "staff", "PATCH", f"/api/v1/rooms/{room['id']}/messages/{posted.json()['id']}",
        {"text": f"แก้{RLO}ไข"},
    )  # fmt: skip
    assert edited.json()["content"]["text"] == "แก้ไข"
    # Display names, from the directory.
    user = await site.box.directory.add_user(
        f"rlo@{site.people['staff'].agency_domain}", password="x" * 12,
        name_th=f"ชื่อ{RLO}ปลอม", name_en=f"Admin{RLO}nimda",
    )  # fmt: skip
    assert (user.name_th, user.name_en) == ("ชื่อปลอม", "Adminnimda")
    people = await site.api("staff", "GET", "/api/v1/directory/users?q=rlo")
    assert [p["name_en"] for p in people.json()] == ["Adminnimda"]


async def test_a_stored_row_from_before_the_rule_is_shown_without_them(site: Site) -> None:
    room = await site.room("staff", "peer")
    message_id = await site.say("staff", room, "ปกติ")
    dirty = json.dumps({"text": f"เก่า{RLO}ค้าง"})  # written by an older version
    await site.chat._db.write(
        lambda conn: conn.execute(
            "UPDATE messages SET content = ? WHERE id = ?", (dirty, message_id)
        )
    )
    got = await site.api("peer", "GET", f"/api/v1/rooms/{room.id}/messages/{message_id}")
    assert got.json()["content"]["text"] == "เก่าค้าง"


def test_an_event_from_another_box_loses_them_on_the_way_in() -> None:
    event = parse_event(
        {
            "id": "box-b:7",
            "type": "message.posted",
            "room_id": "box-b:1",
            "subject": "a@b.go.th",
            "payload": {"message_id": "box-b:7", "content": {"name": f"a{RLO}fdp.exe"}},
            "message": {"content": {"text": f"\u2067x{RLO}", "list": [f"{RLO}y"]}},
            "created_at": 1.0,
        }
    )
    assert event.payload["content"] == {"name": "afdp.exe"}
    assert event.message == {"content": {"text": "x", "list": ["y"]}}
