"""The setup wizard walked in Chromium, from a blank box to mail, chat and the hub.

A technician's whole visit: `edgebox run` on an empty directory, the claim page at
360 px (a wrong code refused; a stranger at another address guessing is rate-limited),
the steps on the phone, a reload and a second browser in the middle that continue
where the first stopped, the uplink's live check against a real hub, review, apply.
Afterwards the box takes mail (swaks) and chat (the API), is enrolled at the hub, and
``/setup`` refuses (a clear page; 403 for the API).

Screenshots (360 px and desktop) go to the test artefacts; with
``UPDATE_DOC_SCREENSHOTS=1`` they also replace the technician's guide's pictures in
``docs/images/setup/`` (docs/technician-guide.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.browser.conftest import Browsers, Watched
from tests.e2e.test_provisioning import console_value, setup_request, wait_for_line
from tests.harness import RunningBox, curl, edgebox, init_box, require_tool, start_box, stored

pytestmark = pytest.mark.slow

DOMAIN = "wizard.go.th"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "wizard-first-2569"
#: The guard, quick: three wrong codes from one address and it is refused for a while.
GUARD_ENV = {"EDGEBOX_AUTH_SOURCE_LIMIT": "3", "EDGEBOX_AUTH_DELAY": "0.05"}
DOC_SHOTS = Path(__file__).parents[3] / "docs" / "images" / "setup"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


def shot(watched: Watched, name: str) -> None:
    """Keep what the screen shows (not the whole page: small files for the guide)."""
    path = watched.screenshot(f"setup-{name}", full_page=False)
    if os.environ.get("UPDATE_DOC_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SHOTS / f"{name}.png")


def claim_form(box: RunningBox, code: str, source: str) -> int:
    """Post the claim form as a stranger's script would, from *source*; the status."""
    origin = f"https://localhost:{box.port('https')}"
    args = [require_tool("curl"), "-sSk", "--interface", source, "-o", "/dev/null",
            "-w", "%{http_code}", "-H", f"Origin: {origin}", "--data-urlencode", f"code={code}",
            f"{origin}/setup/claim"]  # fmt: skip
    return int(subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout)


def fits(watched: Watched, width: int) -> None:
    """Nothing wider than the screen: no sideways scrolling on a phone."""
    assert watched.page.evaluate("document.documentElement.scrollWidth") <= width


def save(watched: Watched, step: str) -> None:
    page = watched.page
    page.get_by_test_id("next").click()
    page.wait_for_url(re.compile(rf".*/setup/{step}$"))


def test_the_wizard_from_a_blank_box_to_mail_chat_and_the_hub(
    tmp_path: Path, chromium: Any
) -> None:
    hub_data = tmp_path / "hub"
    init_box(hub_data, "hub.go.th", {})
    hub = start_box(hub_data, extra=["--role", "hub"])
    box = start_box(tmp_path / "box", env={**GUARD_ENV, "EDGEBOX_SYNC_INTERVAL": "1"})
    browsers = Browsers(chromium, box)
    try:
        issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", DOMAIN)
        token = issued.stdout.strip().splitlines()[-1]
        hub_url = f"https://127.0.0.1:{hub.port('hub-sync')}"
        code = console_value(box, "setup code")
        assert not box.listeners.get("smtp-submission")

        # --- the phone: every page leads to the claim page; a wrong code is refused.
        phone = browsers.new(**PHONE)
        page = phone.page
        phone.go("/mail")
        page.wait_for_url(re.compile(r".*/setup$"))
        assert page.get_by_test_id("setup-fingerprint").inner_text() == console_value(
            box, "certificate fingerprint"
        )
        shot(phone, "1-claim-360")
        fits(phone, PHONE["width"])
        # English is one link away; Thai is where every page starts.
        page.get_by_role("link", name="English").click()
        assert page.get_by_role("heading").inner_text() == "Set up this box"
        page.get_by_role("link", name="ภาษาไทย").click()
        assert page.get_by_role("heading").inner_text() == "ตั้งค่าเครื่องแม่ข่าย"
        page.get_by_label(re.compile("รหัสตั้งค่า")).fill("AAAAA-AAAAA")
        with page.expect_response(re.compile(r".*/setup/claim$")) as answer:
            page.get_by_role("button", name="เริ่มตั้งค่า").click()
        assert answer.value.status == 403
        assert "รหัสตั้งค่าไม่ถูกต้อง" in page.get_by_test_id("setup-error").inner_text()

        # A stranger elsewhere on the LAN guessing: slowed, then refused outright,
        # while the technician's own address is not locked out by it.
        statuses = [claim_form(box, "CCCCC-CCCCC", "127.0.0.2") for _ in range(5)]
        assert statuses[:3] == [403, 403, 403]
        assert statuses[-1] == 429
        assert claim_form(box, code, "127.0.0.2") == 429  # even the right code, for now

        page.get_by_label(re.compile("รหัสตั้งค่า")).fill(code.lower().replace("-", " "))
        page.get_by_role("button", name="เริ่มตั้งค่า").click()
        page.wait_for_url(re.compile(r".*/setup/language$"))
        page.get_by_role("radio", name="ภาษาไทย").check()
        save(phone, "agency")
        page.get_by_label("โดเมนอีเมลของหน่วยงาน").fill(DOMAIN)
        page.get_by_label("ชื่อหน่วยงาน (ภาษาไทย)").fill("สำนักงานจังหวัดทดสอบ")
        page.get_by_label("ชื่อหน่วยงาน (ภาษาอังกฤษ)").fill("Provincial Test Office")
        page.get_by_label(re.compile("หน่วยงานย่อย")).fill("กองคลัง | Finance\nกองช่าง")
        shot(phone, "2-agency-360")
        fits(phone, PHONE["width"])
        save(phone, "admin")
        # A refused answer keeps the page, says why, and saves nothing.
        page.get_by_label("ชื่อผู้ใช้ของผู้ดูแลระบบ").fill("admin")
        page.get_by_label("ชื่อ-นามสกุล (ภาษาไทย)").fill("สมศักดิ์ ดูแลดี")
        page.get_by_label(re.compile(r"^รหัสผ่าน \(")).fill("short")
        page.get_by_label("รหัสผ่านอีกครั้ง").fill("short")
        page.evaluate(
            "document.querySelectorAll('[minlength]').forEach(e => e.removeAttribute('minlength'))"
        )
        page.get_by_test_id("next").click()
        assert "อย่างน้อย 10" in page.get_by_test_id("step-error").inner_text()
        page.get_by_label(re.compile(r"^รหัสผ่าน \(")).fill(PASSWORD)
        page.get_by_label("รหัสผ่านอีกครั้ง").fill(PASSWORD)
        save(phone, "network")

        # --- a reload in the middle continues at the same step with what was saved.
        page.reload()
        assert page.get_by_test_id("step-title").inner_text() == "เครือข่าย"
        phone.go("/setup")
        page.wait_for_url(re.compile(r".*/setup/network$"))
        phone.go("/setup/agency")
        assert page.get_by_label("โดเมนอีเมลของหน่วยงาน").input_value() == DOMAIN
        phone.assert_clean()

        # --- a second browser (the desktop) claims with the code and continues there.
        desk = browsers.new(**DESKTOP)
        dpage = desk.page
        desk.go("/setup")
        dpage.get_by_label(re.compile("รหัสตั้งค่า")).fill(code)
        dpage.get_by_role("button", name="เริ่มตั้งค่า").click()
        dpage.wait_for_url(re.compile(r".*/setup/network$"))
        dpage.get_by_role("radio", name="กำหนดเอง").check()
        dpage.get_by_label("ชื่อเครื่อง").fill("mail-box1")
        dpage.get_by_label(re.compile("ที่อยู่ IP / prefix")).fill("192.168.10.5/24")
        dpage.get_by_label("เกตเวย์").fill("192.168.10.1")
        dpage.get_by_label(re.compile("^DNS")).fill("192.168.10.1 1.1.1.1")
        shot(desk, "3-network-desktop")
        save(desk, "time")
        dpage.get_by_label("เขตเวลา").fill("Asia/Bangkok")
        save(desk, "uplink")
        dpage.get_by_role("radio", name="ลงทะเบียนกับศูนย์").check()
        dpage.get_by_label("ที่อยู่ของศูนย์").fill(hub_url)
        dpage.get_by_label(re.compile("รหัสลงทะเบียน")).fill(token)
        dpage.get_by_test_id("uplink-check").click()
        checks = dpage.get_by_test_id("uplink-checks")
        assert checks.locator("li.ok").count() == 3, checks.inner_text()
        shot(desk, "4-uplink-desktop")
        save(desk, "restore")
        save(desk, "review")
        review = dpage.get_by_test_id("review").inner_text()
        assert DOMAIN in review
        assert hub_url in review
        assert "192.168.10.5/24" in review
        desk.assert_clean()

        # The phone sees the review too (a second browser's answers are the same draft).
        phone.go("/setup/review")
        assert "mail-box1" in page.get_by_test_id("review").inner_text()
        shot(phone, "5-review-360")
        fits(phone, PHONE["width"])
        page.get_by_test_id("apply").click()
        page.wait_for_selector("[data-testid=done-title]")
        assert page.get_by_test_id("done-hub").inner_text() == hub_url
        shot(phone, "6-done-360")
        phone.assert_clean()

        # --- the box switches to its full services without a restart.
        wait_for_line(box, "ready", 2)
        assert box.process.poll() is None
        network = (box.data / "system/etc/systemd/network/10-edgebox-lan.network").read_text()
        assert "Address=192.168.10.5/24" in network
        assert (box.data / "system/etc/hostname").read_text() == "mail-box1\n"
        assert not (box.data / "device" / "wizard.json").exists()

        # /setup refuses from now on: a clear page, and 403 for the API.
        response = phone.go("/setup")
        assert response.status == 403
        assert "ล้างเครื่องเป็นค่าโรงงาน" in page.content()
        assert setup_request(box, "GET", "/api/v1/setup")[0] == 403
        assert setup_request(box, "GET", "/setup/review")[0] == 403

        # Mail: swaks over submission with the admin the wizard made.
        marker = uuid.uuid4().hex
        sent = subprocess.run(
            [require_tool("swaks"), "--server", "127.0.0.1", "--port",
             str(box.port("smtp-submission")), "--tls", "--tls-verify", "--tls-ca-path",
             str(box.ca), "--tls-sni", "localhost", "--auth", "PLAIN", "--auth-user", ADMIN,
             "--auth-password", PASSWORD, "--from", ADMIN, "--to", ADMIN,
             "--header", f"From: {ADMIN}", "--header", f"Subject: {marker}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 30
        while not any(marker.encode() in c for _, c in trio.run(stored, box.data, ADMIN)):
            assert time.monotonic() < deadline, "the test mail was not stored"
            time.sleep(0.2)

        # Chat: the admin opens a room with a colleague, who writes in it. The hub
        # refuses rooms of people it has not heard of: first the directory syncs.
        edgebox("user", "add", "--data", str(box.data), f"somsri@{DOMAIN}", "--name", "สมศรี",
                "--unit", "กองคลัง", "--password-stdin", input="somsri-pass-2569\n")  # fmt: skip
        deadline = time.monotonic() + 90
        while f"somsri@{DOMAIN}" not in edgebox("user", "list", "--data", str(hub_data)).stdout:
            assert time.monotonic() < deadline, "the directory did not reach the hub"
            time.sleep(0.5)
        admin_login = {"address": ADMIN, "password": PASSWORD, "client": "app"}
        status, session = curl(box, "POST", "/api/v1/session", admin_login)
        assert status == 201, session
        status, room = curl(box, "POST", "/api/v1/rooms",
                            {"kind": "group", "name": "กองคลัง", "members": [f"somsri@{DOMAIN}"]},
                            token=session["token"])  # fmt: skip
        assert status == 201, room
        status, staff = curl(box, "POST", "/api/v1/session", {"address": f"somsri@{DOMAIN}",
                             "password": "somsri-pass-2569", "client": "app"})  # fmt: skip
        assert status == 201, staff
        status, message = curl(box, "POST", f"/api/v1/rooms/{room['id']}/messages",
                               {"kind": "text", "text": "เครื่องพร้อมใช้งาน"},
                               token=staff["token"])  # fmt: skip
        assert status == 201, message
        status, read = curl(box, "GET", f"/api/v1/rooms/{room['id']}/messages",
                            token=session["token"])  # fmt: skip
        assert status == 200, read
        assert "เครื่องพร้อมใช้งาน" in json.dumps(read, ensure_ascii=False)

        # Enrolled: the box's settings name the hub, and the hub lists the box.
        settings = json.loads((box.data / "config.json").read_text())["config"]["1"]
        assert settings["hub_url"] == hub_url
        box_id = json.loads((box.data / "config.json").read_text())["box"]["1"]["box_id"]
        listed = edgebox("hub", "boxes", "--data", str(hub_data))
        assert f"{box_id}\t{DOMAIN}\tenrolled" in listed.stdout
    finally:
        browsers.close()
        box.stop()
        hub.stop()
