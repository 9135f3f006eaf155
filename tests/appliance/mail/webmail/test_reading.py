"""The reading view, the framed body and its policy, attachments, and whose mail is whose."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

from tests.appliance.mail.webmail.conftest import ADDRESS, OTHER, Mail, deliver, message

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

HTML_MAIL = (
    "--alt\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "plain alternative\r\n"
    "--alt\r\n"
    'Content-Type: multipart/related; boundary="rel"\r\n\r\n'
    "--rel\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n"
    "<html><head><style>p{}</style><script>alert(1)</script></head><body>"
    '<p onclick="steal()">เรียน ท่านผู้อำนวยการ</p>'
    '<img src="https://tracker.example/pixel.gif">'
    '<img src="cid:logo@example.go.th" alt="logo">'
    '<a href="javascript:alert(1)">click</a></body></html>\r\n'
    "--rel\r\n"
    "Content-Type: image/png\r\n"
    "Content-ID: <logo@example.go.th>\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG).decode() + "\r\n--rel--\r\n"
    "--alt--\r\n"
)

ATTACHMENTS = (
    "--mix\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "<b>not markup</b> & ตามที่แนบมา\r\n"
    "--mix\r\n"
    "Content-Type: application/pdf\r\n"
    "Content-Disposition: attachment;"
    " filename*=UTF-8''%E0%B8%A3%E0%B8%B2%E0%B8%A2%E0%B8%87%E0%B8%B2%E0%B8%99.pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.b64encode(b"%PDF-1.4 fake").decode()
    + "\r\n--mix\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    'Content-Disposition: attachment; filename="page.html"\r\n\r\n'
    "<script>alert(document.cookie)</script>\r\n"
    "--mix\r\n"
    'Content-Type: image/svg+xml; name="=?UTF-8?B?4LmC4Lil4LmC4LiB4LmJ?=.svg"\r\n\r\n'
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>\r\n'
    "--mix--\r\n"
)


async def test_reading_marks_seen_and_shows_headers_in_buddhist_era(mail: Mail) -> None:
    await deliver(
        mail.box,
        message(
            "รายงานประจำเดือน",
            "บรรทัดหนึ่ง\r\n<script>alert(1)</script>\r\n",
            headers=[
                ("Cc", "=?UTF-8?B?4Liq4Lih4Lio4Lij4Li1?= <somsri@test.go.th>"),
                ("X-Urgency", "ด่วน"),
            ],
        ),
    )
    assert "\\Seen" not in await mail.flags(1)

    page = await mail.me.page("/mail/folder/INBOX/1")

    assert "\\Seen" in await mail.flags(1)
    assert "<title>รายงานประจำเดือน · edgebox</title>" in page
    assert "17 พ.ย. 2569 09:30" in page  # 2026 + 543
    assert 'Prasert <span class="address">&lt;prasert@example.org&gt;</span>' in page
    assert 'สมศรี <span class="address">&lt;somsri@test.go.th&gt;</span>' in page
    assert '<span lang="th">ด่วน</span>' in page
    # The text body is escaped, in a wrapping <pre>.
    assert '<pre class="plain">บรรทัดหนึ่ง\n&lt;script&gt;alert(1)&lt;/script&gt;\n</pre>' in page
    assert "<iframe" not in page
    for kind in ("reply", "reply_all", "forward"):
        assert f'href="/mail/compose?{kind}=INBOX/1"' in page
    # The sidebar already counts it as read.
    assert '<span class="count">' not in page


async def test_english_dates_are_common_era(mail: Mail) -> None:
    from appliance.directory.preferences import Preferences

    await deliver(mail.box, message("report"))
    await mail.pages.kit.preferences.set(ADDRESS, Preferences(language="en"))
    page = await mail.me.page("/mail/folder/INBOX/1")
    assert "17 Nov 2026 09:30" in page
    assert ">Reply all<" in page


async def test_html_mail_is_framed_sandboxed_and_sanitised(mail: Mail) -> None:
    await deliver(
        mail.box, message("html", HTML_MAIL, content_type='multipart/alternative; boundary="alt"')
    )

    page = await mail.me.page("/mail/folder/INBOX/1")

    frame = re.search(r"<iframe[^>]*>", page, re.S).group(0)
    assert 'src="/mail/folder/INBOX/1/body"' in frame
    sandbox = re.search(r'sandbox="([^"]*)"', frame).group(1).split()
    assert "allow-scripts" not in sandbox
    assert "allow-same-origin" not in sandbox
    assert "เรียน ท่านผู้อำนวยการ" not in page  # the body is only in the frame
    # One remote image was blocked: the bar offers to load the frame with them.
    assert "รูปภาพจากภายนอกถูกบล็อก" in page
    assert 'href="/mail/folder/INBOX/1/body?images=1" target="mail-body"' in page
    assert 'name="mail-body"' in frame
    assert "logo@example.go.th" not in page  # inline image: not an attachment

    reply = await mail.me.get("/mail/folder/INBOX/1/body")

    assert reply.status == 200
    assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert reply.header("Content-Security-Policy") == (
        "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline';"
        " frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )
    assert reply.header("X-Frame-Options") == "SAMEORIGIN"
    assert reply.header("X-Content-Type-Options") == "nosniff"
    body = reply.body.decode()
    assert "เรียน ท่านผู้อำนวยการ" in body
    assert "<script" not in body
    assert "onclick" not in body
    assert "javascript:" not in body
    assert "tracker.example" not in body
    png = base64.b64encode(PNG).decode()
    assert f'<img src="data:image/png;base64,{png}" alt="logo">' in body
    assert "plain alternative" not in body

    shown = await mail.me.get("/mail/folder/INBOX/1/body?images=1")

    assert "img-src data: 'self' https: http:;" in shown.header("Content-Security-Policy")
    assert '<img src="https://tracker.example/pixel.gif">' in shown.body.decode()
    assert "<script" not in shown.body.decode()


async def test_attachments_are_listed_and_download_safely(mail: Mail) -> None:
    await deliver(
        mail.box, message("files", ATTACHMENTS, content_type='multipart/mixed; boundary="mix"')
    )

    page = await mail.me.page("/mail/folder/INBOX/1")

    assert "&lt;b&gt;not markup&lt;/b&gt; &amp; ตามที่แนบมา" in page
    assert '<a href="/mail/folder/INBOX/1/part/2" download="รายงาน.pdf">รายงาน.pdf</a>' in page
    assert '<a href="/mail/folder/INBOX/1/part/3" download="page.html">page.html</a>' in page
    assert 'download="โลโก้.svg"' in page  # an RFC 2047 name parameter, decoded
    assert "ไฟล์แนบ (3)" in page

    pdf = await mail.me.get("/mail/folder/INBOX/1/part/2")
    assert pdf.status == 200
    assert pdf.body == b"%PDF-1.4 fake"
    assert pdf.header("Content-Type") == "application/pdf"
    disposition = pdf.header("Content-Disposition")
    assert disposition.startswith('attachment; filename="')
    assert disposition.endswith(
        "filename*=UTF-8''%E0%B8%A3%E0%B8%B2%E0%B8%A2%E0%B8%87%E0%B8%B2%E0%B8%99.pdf"
    )
    assert unquote(disposition.rpartition("''")[2]) == "รายงาน.pdf"
    assert pdf.header("Content-Security-Policy") == "default-src 'none'; sandbox"

    for number, name in (("3", "page.html"), ("4", "โลโก้.svg")):
        hostile = await mail.me.get(f"/mail/folder/INBOX/1/part/{number}")
        assert hostile.status == 200
        assert hostile.header("Content-Type") == "application/octet-stream"
        assert hostile.header("Content-Disposition").startswith("attachment;")
        assert unquote(hostile.header("Content-Disposition").rpartition("''")[2]) == name
        assert hostile.header("Content-Security-Policy") == "default-src 'none'; sandbox"
        assert hostile.header("X-Content-Type-Options") == "nosniff"

    for missing in ("9", "0", "1.1", "2.1", "x", "1..2"):
        assert (await mail.me.get(f"/mail/folder/INBOX/1/part/{missing}")).status == 404
    assert (await mail.me.get("/mail/folder/INBOX/1/part/1")).status == 200


async def test_the_body_route_does_not_mark_read(mail: Mail) -> None:
    await deliver(mail.box, message("x", "<p>x</p>", content_type="text/html"))
    reply = await mail.me.get("/mail/folder/INBOX/1/body")
    assert reply.status == 200
    assert b"<p>x</p>" in reply.body
    assert "\\Seen" not in await mail.flags(1)


async def test_another_users_mail_is_not_found(mail: Mail) -> None:
    await deliver(mail.box, message("secret of somchai"), ADDRESS)
    await deliver(mail.box, message("for somsri"), OTHER)

    for path in (
        "/mail/folder/INBOX/1",
        "/mail/folder/INBOX/1/body",
        "/mail/folder/INBOX/1/part/1",
    ):
        # Somsri's own UID 1 exists, and is hers: she never sees Somchai's message.
        reply = await mail.other.get(path)
        assert b"secret of somchai" not in reply.body
    assert "for somsri" in await mail.other.page("/mail/folder/INBOX/1")
    for path in ("/mail/folder/INBOX/2", "/mail/folder/INBOX/2/body", "/mail/folder/INBOX/2/part/1",
                 "/mail/folder/somchai@test.go.th/1", "/mail/folder/INBOX/0",
                 "/mail/folder/INBOX/abc", "/mail/folder/INBOX/99999999999"):  # fmt: skip
        assert (await mail.other.get(path)).status == 404, path
    assert "\\Seen" not in await mail.flags(1)


async def test_message_without_a_session_is_refused(mail: Mail) -> None:
    await deliver(mail.box, message("x"))
    reply = await mail.server.request("GET", "/mail/folder/INBOX/1/part/1")
    assert reply.status == 303
    assert reply.header("Location").startswith("/signin?next=")
    assert "\\Seen" not in await mail.flags(1)
