"""Search: Thai substrings in subject, body, from and to, per folder, listed like a folder."""

from __future__ import annotations

from urllib.parse import urlencode

from tests.appliance.mail.webmail.conftest import OTHER, Mail, deliver, message
from tests.appliance.mail.webmail.test_list import rows_of


def search(q: str, **extra: str) -> str:
    return "/mail/search?" + urlencode({"q": q, **extra})


async def test_thai_substring_in_subject_and_body(mail: Mail) -> None:
    await deliver(mail.box, message("ขอเชิญประชุมคณะกรรมการ", "รายละเอียดตามแนบ\r\n"))
    await deliver(mail.box, message("แจ้งเพื่อทราบ", "กำหนดการประชุมประจำปี\r\n"))
    await deliver(mail.box, message("เรื่องอื่น", "ไม่เกี่ยวข้อง\r\n"))

    # "ประชุม" sits inside both texts with no spaces around it: a substring, not a word.
    page = await mail.me.page(search("ประชุม"))

    rows = rows_of(page)
    assert len(rows) == 2
    assert "แจ้งเพื่อทราบ" in rows[0]
    assert "ขอเชิญประชุมคณะกรรมการ" in rows[1]
    assert "ผลการค้นหา" in page
    assert "“ประชุม”" in page
    assert 'value="ประชุม"' in page  # the query stays in the box

    only_body = rows_of(await mail.me.page(search("ประจำปี")))
    assert len(only_body) == 1
    assert "แจ้งเพื่อทราบ" in only_body[0]


async def test_sender_and_recipient_are_searched(mail: Mail) -> None:
    await deliver(mail.box, message("a", sender="กองคลัง <finance@example.go.th>"))
    await deliver(mail.box, message("b", to="ฝ่ายบุคคล <somchai@test.go.th>"))
    assert len(rows_of(await mail.me.page(search("กองคลัง")))) == 1
    assert len(rows_of(await mail.me.page(search("finance@example")))) == 1
    assert len(rows_of(await mail.me.page(search("ฝ่ายบุคคล")))) == 1


async def test_short_queries_fall_back_to_a_scan(mail: Mail) -> None:
    await deliver(mail.box, message("ภาษี", "x\r\n"))
    await deliver(mail.box, message("อื่น", "y\r\n"))
    rows = rows_of(await mail.me.page(search("ษี")))  # 2 characters: below a trigram
    assert len(rows) == 1
    assert "ภาษี" in rows[0]


async def test_search_is_per_folder_and_per_user(mail: Mail) -> None:
    await deliver(mail.box, message("งบประมาณ INBOX"))
    await deliver(mail.box, message("งบประมาณ ของสมศรี"), OTHER)
    await mail.me.post(
        "/mail/actions",
        [("folder", "INBOX"), ("action", "move"), ("target", "Archive"), ("uids", "1")],
    )
    await deliver(mail.box, message("งบประมาณ ใหม่"))

    inbox = rows_of(await mail.me.page(search("งบประมาณ")))
    archive = rows_of(await mail.me.page(search("งบประมาณ", folder="Archive")))

    assert len(inbox) == 1
    assert "งบประมาณ ใหม่" in inbox[0]
    assert len(archive) == 1
    assert "งบประมาณ INBOX" in archive[0]
    assert 'href="/mail/folder/Archive/1"' in archive[0]
    assert "ของสมศรี" not in "".join(inbox + archive)
    assert (await mail.me.get(search("x", folder="Nowhere"))).status == 404


async def test_query_syntax_is_literal_and_nothing_found_says_so(mail: Mail) -> None:
    await deliver(mail.box, message('quote " star * OR'))
    assert len(rows_of(await mail.me.page(search('" star *')))) == 1
    page = await mail.me.page(search("ไม่มีคำนี้แน่นอน"))
    assert "ไม่พบจดหมายที่ตรงกับคำค้น" in page
    assert rows_of(page) == []
    empty = await mail.me.page("/mail/search")
    assert rows_of(empty) == []
    assert "ผลการค้นหา" not in empty
