"""Folder lists: sidebar and unread counts, rows and badges, paging, reading only one page."""

from __future__ import annotations

import re

import trio

from appliance.mail.mailboxes import FlagMode
from tests.appliance.mail.webmail.conftest import ADDRESS, Mail, deliver, message


def rows_of(page: str) -> list[str]:
    """The <tr> elements of the message table's body, in order ([] without a table)."""
    if '<table class="messages">' not in page:
        return []
    table = page.split('<table class="messages">', 1)[1]
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr\b.*?</tr>", body, re.S)


def sidebar_count(page: str, label: str) -> str | None:
    """The unread count shown next to folder *label*, or None if none is shown."""
    match = re.search(
        r'<span class="folder-name">' + re.escape(label) + r"</span>\s*"
        r'(?:<span class="count">(\d+)<)?',
        page,
    )
    assert match is not None, f"no folder {label!r} in the sidebar"
    return match.group(1)


async def test_inbox_lists_messages_newest_first_with_unread_count_and_badges(mail: Mail) -> None:
    await deliver(mail.box, message("First plain message"))
    await deliver(
        mail.box,
        message(
            "หนังสือราชการ ด่วนที่สุด",
            headers=[("X-Urgency", "ด่วนที่สุด"), ("X-Classification", "ลับ")],
        ),
    )
    # RFC 2047 (encoded word, Thai split across two words mid-character) and RFC 6532
    # (raw UTF-8 in the field) subjects both read as Thai.
    encoded = "=?UTF-8?B?4Lib4Lij4Liw4LiK4Li4?= =?UTF-8?B?4Lih4LiX4Li14Lih?="
    await deliver(
        mail.box,
        message(
            encoded.encode(), sender="=?UTF-8?B?4Lib4Lij4Liw4LmA4Liq4Lij4Li04LiQ?= <p@example.org>"
        ),
    )
    await deliver(mail.box, message("ข่าวประชาสัมพันธ์", sender="ฝ่ายประชาสัมพันธ์ <pr@example.org>"))

    page = await mail.me.page("/mail")

    rows = rows_of(page)
    assert len(rows) == 4
    assert "ข่าวประชาสัมพันธ์" in rows[0]
    assert "ฝ่ายประชาสัมพันธ์" in rows[0]
    assert "ประชุมทีม" in rows[1]
    assert "ประเสริฐ" in rows[1]
    assert "หนังสือราชการ ด่วนที่สุด" in rows[2]
    assert 'class="badge urgency level-3"><span lang="th">ด่วนที่สุด</span>' in rows[2]
    assert 'class="badge classification level-1"><span lang="th">ลับ</span>' in rows[2]
    assert "First plain message" in rows[3]
    assert "badge" not in rows[3]
    assert all('class="unread"' in row for row in rows)
    assert sidebar_count(page, "กล่องจดหมายเข้า") == "4"
    for name in ("จดหมายที่ส่งแล้ว", "ฉบับร่าง", "ถังขยะ", "จดหมายขยะ", "จดหมายเก่า"):
        assert sidebar_count(page, name) is None
    assert 'href="/mail/compose"' in page
    assert "เขียนจดหมาย" in page


async def test_read_flagged_and_attachment_markers(mail: Mail) -> None:
    await deliver(mail.box, message("plain"))
    attachment = (
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n"
        "--b1\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="report.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    )
    await deliver(
        mail.box,
        message("with file", attachment, content_type='multipart/mixed; boundary="b1"'),
    )
    inbox = await mail.mailboxes.get(ADDRESS, "INBOX")
    await mail.mailboxes.store_flags(inbox.id, [1], FlagMode.ADD, ["\\Seen", "\\Flagged"])

    page = await mail.me.page("/mail")

    newest, oldest = rows_of(page)
    assert 'class="unread"' in newest
    assert "📎" in newest
    assert "★" not in newest
    assert 'class="read flagged"' in oldest
    assert "★" in oldest
    assert "📎" not in oldest
    assert sidebar_count(page, "กล่องจดหมายเข้า") == "1"


async def test_english_labels(mail: Mail) -> None:
    await mail.box.mailstore.create_mailboxes(ADDRESS)
    from appliance.directory.preferences import Preferences

    await mail.pages.kit.preferences.set(ADDRESS, Preferences(language="en"))
    page = await mail.me.page("/mail/folder/Sent")
    assert "<title>Sent · edgebox</title>" in page
    assert ">Inbox<" in page
    assert ">Trash<" in page
    # Issue 14: the button is named like the compose page's heading ("New message").
    assert ">New message<" in page
    assert "This folder is empty." in page


async def test_paging_50_a_page_newest_first(mail: Mail) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(1, 106):
            nursery.start_soon(deliver, mail.box, message(f"message {n:03d}"))
    stored = sorted(await mail.stored(), key=lambda m: m.uid)
    subject_of = {}
    for row in stored:
        content = await mail.box.mailstore.content(row)
        subject_of[row.uid] = re.search(rb"Subject: (.*)\r\n", content).group(1).decode()

    pages = [await mail.me.page(f"/mail/folder/INBOX?page={n}") for n in (1, 2, 3)]

    shown = [[re.search(r"message \d{3}", row).group(0) for row in rows_of(p)] for p in pages]
    assert [len(s) for s in shown] == [50, 50, 5]
    expected = [subject_of[uid] for uid in sorted(subject_of, reverse=True)]
    assert shown[0] + shown[1] + shown[2] == expected
    assert "1–50 จาก 105" in pages[0]
    assert "51–100 จาก 105" in pages[1]
    assert 'href="/mail/folder/INBOX?page=2" rel="next"' in pages[0]
    assert 'rel="prev"' not in pages[0]
    assert 'href="/mail/folder/INBOX?page=2" rel="prev"' in pages[2]
    assert 'rel="next"' not in pages[2]
    # Past the last page: the last page.
    assert shown[2] == [
        re.search(r"message \d{3}", r).group(0)
        for r in rows_of(await mail.me.page("/mail/folder/INBOX?page=99"))
    ]


async def test_a_page_decrypts_only_its_own_rows_and_only_once(mail: Mail) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(70):
            nursery.start_soon(deliver, mail.box, message(f"distinct {n}", f"body {n}\r\n"))
    summaries = mail.pages.summaries
    await mail.me.page("/mail")
    assert summaries.reads == 50
    await mail.me.page("/mail")
    assert summaries.reads == 50  # cached: blobs never change
    await mail.me.page("/mail/folder/INBOX?page=2")
    assert summaries.reads == 70


async def test_unread_counts_follow_changes_without_rescanning(mail: Mail) -> None:
    for n in range(3):
        await deliver(mail.box, message(f"m{n}"))
    counts = mail.pages.unread
    assert sidebar_count(await mail.me.page("/mail"), "กล่องจดหมายเข้า") == "3"
    scans = counts.scans
    inbox = await mail.mailboxes.get(ADDRESS, "INBOX")
    await mail.mailboxes.store_flags(inbox.id, [2], FlagMode.ADD, ["\\Seen"])
    assert sidebar_count(await mail.me.page("/mail"), "กล่องจดหมายเข้า") == "2"
    await deliver(mail.box, message("m3"))
    await mail.mailboxes.store_flags(inbox.id, [1], FlagMode.ADD, ["\\Deleted"])
    await mail.mailboxes.expunge(inbox.id, ADDRESS)
    assert sidebar_count(await mail.me.page("/mail"), "กล่องจดหมายเข้า") == "2"
    await mail.mailboxes.store_flags(inbox.id, [2], FlagMode.REMOVE, ["\\Seen"])
    assert sidebar_count(await mail.me.page("/mail"), "กล่องจดหมายเข้า") == "3"
    assert counts.scans == scans  # every change above came from the MODSEQ bookkeeping


async def test_folder_names_are_one_percent_encoded_segment(mail: Mail) -> None:
    await mail.box.mailstore.create_mailboxes(ADDRESS)
    await mail.mailboxes.create(ADDRESS, "Archive/2569")
    await deliver(mail.box, message("to archive"))
    inbox = await mail.mailboxes.get(ADDRESS, "INBOX")
    await mail.mailboxes.copy(inbox.id, [1], ADDRESS, "Archive/2569", quota_bytes=10**9, move=True)

    page = await mail.me.page("/mail/folder/Archive%2F2569")

    assert "to archive" in page
    assert 'href="/mail/folder/Archive%2F2569"' in page  # the sidebar link
    assert 'href="/mail/folder/Archive%2F2569/1"' in page  # the row link
    assert (await mail.me.get("/mail/folder/Nope")).status == 404


async def test_drafts_open_in_compose_and_sent_shows_recipients(mail: Mail) -> None:
    await mail.box.mailstore.create_mailboxes(ADDRESS)
    quota = mail.me.user.quota_bytes
    await mail.mailboxes.append(ADDRESS, "Drafts", message("unfinished", to="boss@example.org"),
                                quota_bytes=quota, flags=["\\Draft"])  # fmt: skip
    await mail.mailboxes.append(ADDRESS, "Sent", message("done", to="Boss <boss@example.org>"),
                                quota_bytes=quota, flags=["\\Seen"])  # fmt: skip

    drafts = await mail.me.page("/mail/folder/Drafts")
    sent = await mail.me.page("/mail/folder/Sent")

    assert 'href="/mail/compose?draft=Drafts/1"' in drafts
    assert ">ถึง<" in sent
    assert 'title="boss@example.org">Boss<' in sent


async def test_without_a_session_the_list_sends_to_sign_in(mail: Mail) -> None:
    reply = await mail.server.request("GET", "/mail/folder/INBOX?page=2")
    assert reply.status == 303
    assert reply.header("Location") == "/signin?next=%2Fmail%2Ffolder%2FINBOX%3Fpage%3D2"
