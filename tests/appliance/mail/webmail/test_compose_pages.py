"""The compose page over real HTTPS: sending, drafts, limits, CSRF and whose mail it is.

A real box in tmp_path, the HTTPS service in-process on 127.0.0.1, http.client as the
browser. What arrives is read back from the store and parsed with the stdlib `email`.
Fixtures live here (tests/appliance/mail/webmail/conftest.py belongs to the reading pages).
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlencode

import pytest
import trio

from appliance.box import Box
from appliance.compliance.traffic_log import iter_records
from appliance.directory.sessions import BROWSER_TTL
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.mailboxes import Mailboxes
from appliance.mail.webmail.compose_pages import compose_routes
from appliance.registry import page_kit, session_api
from appliance.web.csrf import csrf_token_for
from appliance.web.pages import CommonPages
from tests.appliance.conftest import BoxFactory, Person
from tests.appliance.web.conftest import Reply, Server, start_server

DOMAIN = "test.go.th"
SOMCHAI = f"somchai@{DOMAIN}"
SOMYING = f"somying@{DOMAIN}"
PASSWORD = "รหัสลับ-ทดสอบ-2567"
MB = 1024 * 1024


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    people = [
        Person(SOMCHAI, PASSWORD, "สมชาย ใจดี", "Somchai Jaidee"),
        Person(SOMYING, PASSWORD, "สมหญิง รักดี", "Somying Rakdee"),
    ]
    return await make_box(DOMAIN, people=people)


@dataclass
class Browser:
    """One signed-in user's browser: the cookie, the CSRF token, the right Origin."""

    server: Server
    token: str

    @property
    def csrf(self) -> str:
        return csrf_token_for(self.token)

    def headers(self) -> dict[str, str]:
        return {
            "Cookie": f"edgebox_session={self.token}",
            "Origin": f"https://127.0.0.1:{self.server.port}",
        }

    async def get(self, path: str) -> Reply:
        return await self.server.request("GET", path, headers=self.headers())

    async def post(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[tuple[str, str, bytes]] = (),
        *,
        csrf: bool = True,
    ) -> Reply:
        fields = [*fields, ("csrf_token", self.csrf)] if csrf else list(fields)
        body, content_type = multipart(fields, files)
        headers = {**self.headers(), "Content-Type": content_type}
        return await self.server.request("POST", "/mail/compose", body, headers)


def multipart(
    fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, bytes]]
) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it (RFC 7578)."""
    boundary = "----edgebox" + secrets.token_hex(8)
    parts = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for filename, content_type, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="attachments";'
            f' filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
async def server(box: Box, nursery: trio.Nursery) -> Server:
    kit = page_kit(box)
    compose = compose_routes(
        kit,
        directory=box.directory,
        mailstore=box.mailstore,
        delivery=box.delivery,
        traffic=box.traffic,
        disk_guard=box.disk_guard,
        hostname=box.hostname,
        max_recipients=box.config.max_recipients,
    )
    routes = [*CommonPages(kit, session_api(box)).routes(), *compose]
    return await start_server(box, nursery, routes, sessions=box.sessions)


async def sign_in(server: Server, address: str) -> Browser:
    user = await server.box.directory.user(address)
    assert user is not None
    token, _ = await server.box.sessions.create(
        user, client_ip="127.0.0.1", user_agent=None, ttl=BROWSER_TTL
    )
    return Browser(server, token)


@pytest.fixture
async def somchai(server: Server) -> Browser:
    return await sign_in(server, SOMCHAI)


async def messages(
    box: Box, owner: str, mailbox: str
) -> list[tuple[tuple[str, ...], EmailMessage]]:
    found = []
    for stored in await box.mailstore.messages(owner, mailbox):
        content = await box.mailstore.content(stored)
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        found.append((stored.flags, parsed))
    return found


async def outbound(box: Box) -> list[tuple[str, str, int, int]]:
    return await box.mail_db.read(
        lambda conn: conn.execute(
            "SELECT sender, recipient, classification, urgency FROM outbound ORDER BY id"
        ).fetchall()
    )


async def deliver(box: Box, owner: str, content: bytes) -> None:
    envelope = Envelope(
        sender="someone@example.com",
        recipients=(Recipient(owner, local=True),),
        trace=Trace(helo="mx.example.com", client_ip="192.0.2.1", protocol="ESMTPS"),
    )
    await box.delivery.deliver(envelope, content)


def page_text(reply: Reply) -> str:
    return html.unescape(reply.body.decode("utf-8"))


def send(**fields: str) -> list[tuple[str, str]]:
    return [("action", "send"), *fields.items()]


# --- sending ---------------------------------------------------------------------------------


async def test_sending_to_a_local_user_delivers_and_keeps_a_sent_copy(
    box: Box, somchai: Browser
) -> None:
    attachment = bytes(range(256)) * 1000 + b"\r\n\x00end"
    reply = await somchai.post(
        send(to=f"สมหญิง <{SOMYING}>", subject="ขอเชิญประชุม", body="เรียน คุณสมหญิง\r\nพรุ่งนี้ 9 โมง",
             classification="1", urgency="2"),
        [("วาระการประชุม.pdf", "application/pdf", attachment)],
    )  # fmt: skip
    assert reply.status == 303, page_text(reply)
    assert reply.header("Location") == "/mail/folder/Sent?sent=1"

    [(_, received)] = await messages(box, SOMYING, "INBOX")
    assert str(received["Subject"]) == "ขอเชิญประชุม"
    assert received["From"].addresses[0].addr_spec == SOMCHAI
    assert received["From"].addresses[0].display_name == "สมชาย ใจดี"
    assert str(received["X-Classification"]) == "ลับ"
    assert str(received["X-Urgency"]) == "ด่วนมาก"
    # The same Received field an authenticated submission on port 587 gets.
    assert re.search(r"from webmail \(\[127\.0\.0\.1\]\)\s+by mail\.test\.go\.th \(edgebox\)"
                     r" with ESMTPSA id [0-9A-F]{16}", str(received["Received"]))  # fmt: skip
    body = received.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "เรียน คุณสมหญิง\nพรุ่งนี้ 9 โมง\n"
    [part] = received.iter_attachments()
    assert part.get_filename() == "วาระการประชุม.pdf"
    assert part.get_payload(decode=True) == attachment

    [(sent_flags, sent)] = await messages(box, SOMCHAI, "Sent")
    assert sent_flags == ("\\Seen",)
    assert sent["Message-ID"] == received["Message-ID"]
    assert sent["Received"] is None

    [record] = [r for r in iter_records(box.config.data_dir / "log" / "traffic")
                if r.service == "webmail"]  # fmt: skip
    assert (record.event, record.sender, record.recipients, record.user, record.client_ip) == (
        "accepted", SOMCHAI, (SOMYING,), SOMCHAI, "127.0.0.1",
    )  # fmt: skip


async def test_a_full_disk_sends_and_saves_nothing_and_keeps_the_form(
    box: Box, somchai: Browser
) -> None:
    from appliance.health.readings import DiskReading, FakeReadings

    readings = FakeReadings(default_disk=DiskReading(total=10**9, free=10**6))
    # The pages hold the box's own guard (the registry hands each part over once):
    # point that guard at the fake readings.
    guard = box.disk_guard
    guard.readings, guard.hard_free, guard.max_age = readings, 2 * 10**6, 0
    for action in ("send", "save_draft"):
        reply = await somchai.post([("action", action), ("to", SOMYING),
                                    ("subject", "ขอเชิญประชุม"), ("body", "เรียน")])  # fmt: skip
        assert reply.status == 507
        assert "พื้นที่เก็บข้อมูลของเครื่องแม่ข่ายเต็ม" in page_text(reply)
        assert "ขอเชิญประชุม" in page_text(reply), "the form comes back as typed"
    assert await messages(box, SOMYING, "INBOX") == []
    assert await messages(box, SOMCHAI, "Sent") == []
    assert await messages(box, SOMCHAI, "Drafts") == []

    readings.default_disk = DiskReading(total=10**9, free=10**8)
    reply = await somchai.post(send(to=SOMYING, subject="ขอเชิญประชุม", body="เรียน"))
    assert reply.status == 303, page_text(reply)


async def test_sending_outside_queues_it_with_its_urgency(box: Box, somchai: Browser) -> None:
    reply = await somchai.post(
        send(to="Official <Director@Other-Agency.go.th>", subject="Urgent", urgency="3",
             classification="0", body="Please reply today."),
    )  # fmt: skip
    assert reply.status == 303, page_text(reply)
    assert await outbound(box) == [(SOMCHAI, "director@other-agency.go.th", 0, 3)]
    assert len(await messages(box, SOMCHAI, "Sent")) == 1


async def test_bcc_reaches_its_recipient_without_showing_and_stays_in_sent(
    box: Box, somchai: Browser
) -> None:
    reply = await somchai.post(send(to="a@example.com", bcc=SOMYING, subject="bcc"))
    assert reply.status == 303, page_text(reply)
    [(_, received)] = await messages(box, SOMYING, "INBOX")
    assert received["Bcc"] is None
    assert received["To"].addresses[0].addr_spec == "a@example.com"
    [(_, sent)] = await messages(box, SOMCHAI, "Sent")
    assert [a.addr_spec for a in sent["Bcc"].addresses] == [SOMYING]
    assert [row[1] for row in await outbound(box)] == ["a@example.com"]


async def test_bad_addresses_show_the_form_again_with_what_was_typed(
    box: Box, somchai: Browser
) -> None:
    reply = await somchai.post(
        send(to="สมหญิง, ok@example.com", subject="ไม่ควรส่ง <b>", body="ข้อความที่พิมพ์ไว้"),
        [("a.txt", "text/plain", b"x")],
    )
    assert reply.status == 422
    text = page_text(reply)
    assert "ช่อง “ถึง”: “สมหญิง” ไม่ใช่ที่อยู่อีเมลที่ถูกต้อง" in text
    assert 'value="สมหญิง, ok@example.com"' in text
    assert 'value="ไม่ควรส่ง <b>"' in text  # escaped in the page, intact in the field
    assert "<b>" not in reply.body.decode()
    assert "ข้อความที่พิมพ์ไว้</textarea>" in text
    assert "กรุณาเลือกไฟล์ใหม่อีกครั้ง" in text
    assert 'aria-invalid="true"' in text
    assert await outbound(box) == []
    assert await messages(box, SOMCHAI, "Sent") == []


async def test_unknown_local_users_and_empty_recipients_are_refused(
    box: Box, somchai: Browser
) -> None:
    reply = await somchai.post(send(to=f"nobody@{DOMAIN}, a@example.com", subject="x"))
    assert reply.status == 422
    assert f"ไม่มีผู้ใช้ nobody@{DOMAIN} ในระบบ" in page_text(reply)
    reply = await somchai.post(send(to="", subject="x"))
    assert reply.status == 422
    assert "กรุณาระบุผู้รับอย่างน้อยหนึ่งคน" in page_text(reply)
    assert await outbound(box) == []
    assert await messages(box, SOMCHAI, "Sent") == []


async def test_attachments_over_25_mb_are_refused_and_nothing_is_sent(
    box: Box, somchai: Browser
) -> None:
    files = [(f"part{n}.bin", "application/octet-stream", b"\x00" * (13 * MB)) for n in range(2)]
    reply = await somchai.post(send(to=f"{SOMYING}, a@example.com", subject="big"), files)
    assert reply.status == 413
    text = page_text(reply)
    assert "ไฟล์แนบรวมกันได้ไม่เกิน 25 MB" in text
    assert "Attachments may total at most 25 MB" in text
    assert await messages(box, SOMYING, "INBOX") == []
    assert await messages(box, SOMCHAI, "Sent") == []
    assert await outbound(box) == []


async def test_a_post_without_the_csrf_token_is_refused(box: Box, somchai: Browser) -> None:
    reply = await somchai.post(send(to=SOMYING, subject="forged"), csrf=False)
    assert reply.status == 403
    reply = await somchai.post(send(to=SOMYING, subject="forged", csrf_token="x" * 32), csrf=False)
    assert reply.status == 403
    assert await messages(box, SOMYING, "INBOX") == []
    assert await messages(box, SOMCHAI, "Sent") == []


# --- drafts ----------------------------------------------------------------------------------


async def test_a_saved_draft_is_replaced_then_removed_when_sent(box: Box, somchai: Browser) -> None:
    reply = await somchai.post(
        [("action", "save_draft"), ("to", SOMYING), ("bcc", "hidden@example.com"),
         ("subject", "ร่างแรก"), ("body", "ยังไม่เสร็จ"), ("urgency", "1")],
        [("ร่าง.txt", "text/plain", "ไฟล์ร่าง".encode())],
    )  # fmt: skip
    assert reply.status == 303, page_text(reply)
    location = reply.header("Location")
    assert location is not None
    match = re.fullmatch(r"/mail/compose\?draft=Drafts/(\d+)&saved=1", location)
    assert match is not None
    [(flags, draft)] = await messages(box, SOMCHAI, "Drafts")
    assert set(flags) == {"\\Draft", "\\Seen"}
    assert [a.addr_spec for a in draft["Bcc"].addresses] == ["hidden@example.com"]

    page = await somchai.get(location)
    assert page.status == 200
    text = page_text(page)
    assert "บันทึกฉบับร่างแล้ว" in text
    assert 'value="ร่างแรก"' in text
    assert 'value="hidden@example.com"' in text
    assert "ยังไม่เสร็จ\n</textarea>" in text
    assert "ร่าง.txt" in text
    assert f'name="draft" value="Drafts/{match[1]}"' in text

    # Saved again: the new version replaces the old one.
    reply = await somchai.post(
        [("action", "save_draft"), ("to", SOMYING), ("subject", "ร่างสอง"), ("body", "เสร็จแล้ว"),
         ("draft", f"Drafts/{match[1]}"), ("attachments_from", f"Drafts/{match[1]}"),
         ("keep", "0")],
    )  # fmt: skip
    assert reply.status == 303
    [(_, second)] = await messages(box, SOMCHAI, "Drafts")
    assert str(second["Subject"]) == "ร่างสอง"
    [kept] = second.iter_attachments()
    assert kept.get_payload(decode=True) == "ไฟล์ร่าง".encode()
    location = reply.header("Location") or ""
    ref = location.partition("draft=")[2].partition("&")[0]

    reply = await somchai.post(
        send(to=SOMYING, subject="ร่างสอง", body="เสร็จแล้ว", draft=ref, attachments_from=ref)
    )
    assert reply.status == 303
    assert await messages(box, SOMCHAI, "Drafts") == []
    [(_, received)] = await messages(box, SOMYING, "INBOX")
    assert str(received["Subject"]) == "ร่างสอง"
    # The draft's attachment was not ticked this time: it is left out.
    assert list(received.iter_attachments()) == []


async def test_only_a_draft_is_removed_by_the_draft_field(box: Box, somchai: Browser) -> None:
    await deliver(box, SOMCHAI, b"Subject: keep me\r\n\r\nbody\r\n")
    reply = await somchai.post(send(to=SOMYING, subject="x", draft="INBOX/1"))
    assert reply.status == 303
    assert len(await messages(box, SOMCHAI, "INBOX")) == 1


# --- reply, forward, whose mail --------------------------------------------------------------

ORIGINAL = (
    "From: =?utf-8?b?4Liq4Lih4Lir4LiN4Li04LiH?= <somying@test.go.th>\r\n"
    "To: somchai@test.go.th, other@example.com\r\n"
    "Cc: boss@example.com\r\n"
    "Subject: =?utf-8?b?4LiB4Liy4Lij4Lib4Lij4Liw4LiK4Li44Lih?=\r\n"
    "Date: Sun, 22 Nov 2026 09:30:00 +0700\r\n"
    "Message-ID: <parent@test.go.th>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    "<script>alert(1)</script> ประชุมวันจันทร์\r\n"
    "--b1\r\n"
    'Content-Type: application/pdf; name="agenda.pdf"\r\n'
    "Content-Disposition: attachment; filename=agenda.pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n"
    "JVBERi0xLjcK\r\n"
    "--b1\r\n"
    'Content-Type: image/png; name="map.png"\r\n'
    "Content-Disposition: attachment; filename=map.png\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n"
    "iVBORw0KGgo=\r\n"
    "--b1--\r\n"
).encode()


async def test_reply_all_prefills_and_the_reply_threads_and_flags(
    box: Box, somchai: Browser
) -> None:
    await deliver(box, SOMCHAI, ORIGINAL)
    page = await somchai.get("/mail/compose?reply_all=INBOX/1")
    assert page.status == 200
    text = page_text(page)
    assert 'value="สมหญิง <somying@test.go.th>, other@example.com"' in text
    assert 'value="boss@example.com"' in text
    assert 'value="Re: การประชุม"' in text
    assert "เมื่อ 22 พ.ย. 2569 09:30 สมหญิง เขียนว่า:\n> <script>alert(1)</script>" in text
    assert "<script>alert" not in page.body.decode()
    assert 'name="in_reply_to" value="<parent@test.go.th>"' in text
    assert 'name="reply_of" value="INBOX/1"' in text

    reply = await somchai.post(
        send(to=SOMYING, subject="Re: การประชุม", body="รับทราบ",
             in_reply_to="<parent@test.go.th>", references="<parent@test.go.th>",
             reply_of="INBOX/1"),
    )  # fmt: skip
    assert reply.status == 303
    [(_, received)] = await messages(box, SOMYING, "INBOX")
    assert received["In-Reply-To"] == "<parent@test.go.th>"
    assert received["References"] == "<parent@test.go.th>"
    [(flags, _)] = await messages(box, SOMCHAI, "INBOX")
    assert "\\Answered" in flags


async def test_forward_carries_the_attachments_the_user_keeps(box: Box, somchai: Browser) -> None:
    await deliver(box, SOMCHAI, ORIGINAL)
    page = await somchai.get("/mail/compose?forward=INBOX/1")
    assert page.status == 200
    text = page_text(page)
    assert 'value="Fwd: การประชุม"' in text
    assert "---------- ข้อความที่ส่งต่อ ----------" in text
    assert 'name="keep" value="0"' in text
    assert "agenda.pdf" in text
    assert 'name="keep" value="1"' in text
    assert "map.png" in text

    reply = await somchai.post(
        send(to=SOMYING, subject="Fwd: การประชุม", body="ส่งต่อ", forward_of="INBOX/1",
             attachments_from="INBOX/1", keep="1"),
        [("new.txt", "text/plain", b"added")],
    )  # fmt: skip
    assert reply.status == 303, page_text(reply)
    [(_, received)] = await messages(box, SOMYING, "INBOX")
    parts = [(p.get_filename(), p.get_payload(decode=True)) for p in received.iter_attachments()]
    assert parts == [("map.png", b"\x89PNG\r\n\x1a\n"), ("new.txt", b"added")]
    [(flags, _)] = await messages(box, SOMCHAI, "INBOX")
    assert "$Forwarded" in flags


async def test_another_users_message_is_not_found(box: Box, server: Server) -> None:
    mailboxes = Mailboxes(box.mailstore)
    await mailboxes.create(SOMYING, "ส่วนตัว/2569")
    await mailboxes.append(SOMYING, "ส่วนตัว/2569", ORIGINAL, quota_bytes=10 * MB)
    await deliver(box, SOMYING, ORIGINAL)
    somchai = await sign_in(server, SOMCHAI)
    for name, value in (("reply", "ส่วนตัว/2569/1"), ("reply_all", "INBOX/1"),
                        ("forward", "INBOX/1"), ("draft", "INBOX/1"), ("reply", "INBOX"),
                        ("reply", "INBOX/0"), ("reply", "/1")):  # fmt: skip
        reply = await somchai.get("/mail/compose?" + urlencode({name: value}))
        assert reply.status == 404, (name, value)
        assert "ไม่พบข้อความนี้ในกล่องจดหมายของคุณ" in page_text(reply)
    # A post cannot borrow her attachments either.
    reply = await somchai.post(send(to=SOMCHAI, subject="x", attachments_from="INBOX/1"))
    assert reply.status == 404
    # Her own mailbox named with a "/" works for her.
    somying = await sign_in(server, SOMYING)
    reply = await somying.get("/mail/compose?" + urlencode({"reply": "ส่วนตัว/2569/1"}))
    assert reply.status == 200


# --- the page --------------------------------------------------------------------------------


async def test_the_empty_form_has_everything_a_browser_needs(somchai: Browser) -> None:
    page = await somchai.get(f"/mail/compose?to={SOMYING}")
    assert page.status == 200
    text = page_text(page)
    assert 'enctype="multipart/form-data"' in text
    assert f'name="csrf_token" value="{somchai.csrf}"' in text
    assert 'name="action" value="send"' in text
    assert 'name="action" value="save_draft"' in text
    assert 'type="file" id="compose-files" name="attachments" multiple' in text
    assert f'<option value="{SOMYING}" label="สมหญิง รักดี">' in text
    assert f'id="compose-to" name="to" value="{SOMYING}"' in text
    for word in ("ไม่มีชั้นความลับ", "ลับที่สุด", "ปกติ", "ด่วนที่สุด"):
        assert word in text
    assert "/static/compose.js" in text
    assert "/static/compose.css" in text
    assert "style=" not in text
    assert "<script>" not in text
    assert len(page.body) < 500 * 1024


async def test_signed_out_visitors_are_sent_to_sign_in(server: Server) -> None:
    reply = await server.request("GET", "/mail/compose?reply=INBOX/1")
    assert reply.status == 303
    assert (reply.header("Location") or "").startswith("/signin?next=")


async def test_the_static_files_are_served(server: Server) -> None:
    for name in ("compose.js", "compose.css"):
        reply = await server.request("GET", f"/static/{name}")
        assert reply.status == 200, name
