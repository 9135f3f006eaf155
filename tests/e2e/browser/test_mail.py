"""Webmail in a real browser: read, compose with an attachment and see it arrive, search.

Mail enters the box the way it does in an office: through the SMTP port (smtplib on
127.0.0.1) or from another user's compose page.
"""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage
from pathlib import Path

from tests.e2e.browser.conftest import DOMAIN, Browsers
from tests.harness import RunningBox


def deliver(box: RunningBox, subject: str, body: str, *, to: str = f"malee@{DOMAIN}") -> None:
    message = EmailMessage()
    message["From"] = "สำนักงานจังหวัด <office@province.go.th>"
    message["To"] = to
    message["Subject"] = subject
    message["X-Urgency"] = "ด่วนที่สุด"
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30) as smtp:
        smtp.send_message(message)


def test_read_a_message(browsers: Browsers) -> None:
    deliver(browsers.box, "แจ้งประชุมคณะกรรมการ ครั้งที่ 3", "ขอเชิญประชุมวันพุธ เวลา 09.30 น.\nห้องประชุม 2")
    tab = browsers.signed_in(f"malee@{DOMAIN}")
    page = tab.page
    tab.go("/mail")
    row = page.locator("tr.unread", has_text="แจ้งประชุมคณะกรรมการ ครั้งที่ 3")
    assert row.count() == 1
    assert row.locator(".badge", has_text="ด่วนที่สุด").count() == 1
    tab.screenshot("mail-inbox")
    row.get_by_role("link").click()
    page.wait_for_url(re.compile(r".*/mail/folder/INBOX/\d+$"))
    assert page.locator("pre.plain").inner_text().startswith("ขอเชิญประชุมวันพุธ เวลา 09.30 น.")
    assert page.get_by_role("heading", name="แจ้งประชุมคณะกรรมการ ครั้งที่ 3").is_visible()
    tab.screenshot("mail-message")
    # Read now: the list shows it as read.
    tab.go("/mail")
    assert page.locator("tr.read", has_text="แจ้งประชุมคณะกรรมการ ครั้งที่ 3").count() == 1
    tab.assert_clean()


def test_compose_with_an_attachment_and_see_it_arrive(browsers: Browsers, tmp_path: Path) -> None:
    report = tmp_path / "รายงานผล.pdf"
    content = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    report.write_bytes(content)
    sender = browsers.signed_in(f"somchai@{DOMAIN}")
    page = sender.page
    sender.go("/mail/compose")
    page.get_by_label("ถึง", exact=True).fill(f"malee@{DOMAIN}")
    page.get_by_label("เรื่อง").fill("ส่งรายงานผลการดำเนินงาน ไตรมาส 4")
    page.get_by_label("ชั้นความเร็ว").select_option(label="ด่วน")
    page.get_by_label("ข้อความ").fill("เรียน คุณมาลี\nตามแนบครับ")
    page.get_by_label("เพิ่มไฟล์").set_input_files(str(report))
    sender.screenshot("mail-compose")
    page.locator("#compose-send").click()
    page.wait_for_url(re.compile(r".*/mail/folder/Sent\?sent=1$"))
    assert page.locator("tr", has_text="ส่งรายงานผลการดำเนินงาน ไตรมาส 4").count() == 1
    sender.assert_clean()

    reader = browsers.signed_in(f"malee@{DOMAIN}")
    reader.go("/mail")
    row = reader.page.locator("tr.unread", has_text="ส่งรายงานผลการดำเนินงาน ไตรมาส 4")
    assert row.locator(".badge", has_text="ด่วน").count() == 1
    row.get_by_role("link").click()
    reader.page.wait_for_url(re.compile(r".*/mail/folder/INBOX/\d+$"))
    with reader.page.expect_download() as download_info:
        reader.page.get_by_role("link", name="รายงานผล.pdf").click()
    download = download_info.value
    assert download.suggested_filename == "รายงานผล.pdf"
    assert Path(download.path()).read_bytes() == content
    reader.assert_clean()


def test_search_in_thai(browsers: Browsers) -> None:
    deliver(browsers.box, "ขออนุมัติเดินทางไปราชการ จังหวัดเชียงใหม่", "รายละเอียดตามเอกสารแนบ")
    deliver(browsers.box, "สรุปงบประมาณประจำปี", "ไม่เกี่ยวกับการเดินทาง")
    tab = browsers.signed_in(f"malee@{DOMAIN}")
    page = tab.page
    tab.go("/mail")
    search = page.get_by_label("ค้นหาจดหมาย")
    # The index is filled in the background; a just-delivered message may need a moment.
    for _ in range(20):
        search.fill("ไปราชการ")
        search.press("Enter")
        page.wait_for_url(re.compile(r".*/mail/search\?.*"))
        if page.locator("table.messages tbody tr").count():
            break
        page.wait_for_timeout(500)
    subjects = page.locator("table.messages tbody tr").all_inner_texts()
    assert len(subjects) == 1
    assert "ขออนุมัติเดินทางไปราชการ จังหวัดเชียงใหม่" in subjects[0]
    tab.screenshot("mail-search")
    tab.assert_clean()
