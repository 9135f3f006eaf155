"""The admin console over real HTTPS: scope, forms, audit, CSRF, queue order."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from appliance.admin import pages as admin_pages
from appliance.admin.pages import user_url
from appliance.box import Box
from appliance.compliance.traffic_log import iter_records
from appliance.directory.preferences import Preferences, PreferenceStore
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.sync.link import LINK_FILE, LinkReading, LinkSnapshot, LinkState
from appliance.sync.status import SyncStatus
from appliance.update import outcome
from appliance.web.i18n import THAILAND
from tests.appliance.admin.conftest import (
    ADMIN_A,
    PASSWORD,
    ROOT,
    STAFF_A,
    STAFF_B,
    Console,
)
from tests.appliance.web.conftest import Reply

NEW_PASSWORD = "ใหม่-เอี่ยม-2568"


class _Elements(HTMLParser):
    """Collects the attributes of every element that has a data-testid."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "data-testid" in values:
            self.found.append({"tag": tag, **values})


def elements(reply: Reply, testid: str) -> list[dict[str, str]]:
    parser = _Elements()
    parser.feed(reply.body.decode("utf-8"))
    return [e for e in parser.found if e["data-testid"] == testid]


def row_addresses(reply: Reply) -> list[str]:
    return [row["data-address"] for row in elements(reply, "user-row")]


def text(reply: Reply) -> str:
    return reply.body.decode("utf-8")


# --- scope ---------------------------------------------------------------------------


async def test_box_admin_sees_both_agencies_and_all_users(console: Console) -> None:
    root = await console.as_user(ROOT)

    overview = await root.get("/admin")
    users = await root.get("/admin/users")

    assert overview.status == 200
    assert [row["data-domain"] for row in elements(overview, "agency-row")] == [
        "a.go.th",
        "b.go.th",
    ]
    assert users.status == 200
    assert row_addresses(users) == [ADMIN_A, ROOT, STAFF_A, STAFF_B]
    only_b = await root.get("/admin/users?agency=b.go.th")
    assert row_addresses(only_b) == [STAFF_B]


async def test_agency_admin_sees_only_their_agency(console: Console) -> None:
    admin = await console.as_user(ADMIN_A)

    overview = await admin.get("/admin")
    users = await admin.get("/admin/users")

    assert [row["data-domain"] for row in elements(overview, "agency-row")] == ["a.go.th"]
    assert row_addresses(users) == [ADMIN_A, ROOT, STAFF_A]
    assert "b.go.th" not in text(users)
    assert STAFF_B not in text(overview)
    # A search cannot reach across either.
    assert row_addresses(await admin.get("/admin/users?q=" + quote("มาลี"))) == []


async def test_other_agencies_look_like_unknown_ones_to_an_agency_admin(
    console: Console,
) -> None:
    admin = await console.as_user(ADMIN_A)

    other = await admin.get(user_url(STAFF_B))
    unknown = await admin.get(user_url("nobody@a.go.th"))

    assert other.status == unknown.status == 404
    assert other.body == unknown.body
    assert (await admin.get("/admin/users?agency=b.go.th")).status == 404
    assert (await admin.get("/admin/org?agency=b.go.th")).status == 404
    assert (await admin.get("/admin/users?agency=nowhere.go.th")).status == 404


async def test_agency_admin_cannot_change_another_agencys_user(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    before = await box.directory.user(STAFF_B)

    for action, fields in [
        ("rank", {"rank": "9"}),
        ("names", {"name_th": "ถูกแก้", "name_en": "Changed"}),
        ("disable", {}),
        ("password", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}),
        ("quota", {"quota_mb": "1"}),
    ]:
        reply = await admin.post(f"{user_url(STAFF_B)}/{action}", fields)
        assert reply.status == 404, action

    assert await box.directory.user(STAFF_B) == before
    assert await box.directory.authenticate(STAFF_B, PASSWORD) is not None


async def test_agency_admin_cannot_add_a_user_to_another_agency(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    reply = await admin.post("/admin/users", {
        "address": "new@b.go.th", "name_th": "คนใหม่", "password": PASSWORD,
        "password_confirm": PASSWORD,
    })  # fmt: skip

    assert reply.status == 422
    assert await box.directory.user("new@b.go.th") is None
    # Adding an existing user of B gets the same answer: no probing.
    probe = await admin.post("/admin/users", {
        "address": STAFF_B, "name_th": "คนใหม่", "password": PASSWORD,
        "password_confirm": PASSWORD,
    })  # fmt: skip
    assert [e.get("data-testid") for e in elements(probe, "form-error")] == ["form-error"]
    assert "อยู่แล้ว" not in text(probe)


async def test_agency_admin_cannot_take_over_an_account_with_wider_rights(
    console: Console, box: Box
) -> None:
    # ROOT's address is in agency A, but ROOT administers the whole box: resetting
    # that password would make the agency admin a box admin.
    admin = await console.as_user(ADMIN_A)

    page = await admin.get(user_url(ROOT))
    reset = await admin.post(
        f"{user_url(ROOT)}/password", {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD}
    )

    assert page.status == 200
    assert elements(page, "beyond-scope")
    assert not elements(page, "edit-password")
    assert reset.status == 403
    assert await box.directory.authenticate(ROOT, PASSWORD) is not None
    # Disabled accounts keep their grants for this rule (re-enabling would restore them).
    await box.directory.set_disabled(ROOT, True)
    assert (await admin.post(f"{user_url(ROOT)}/enable")).status == 403
    assert (await box.directory.user(ROOT)).disabled  # type: ignore[union-attr]


async def test_box_admin_may_change_anyone(console: Console, box: Box) -> None:
    root = await console.as_user(ROOT)

    reply = await root.post(f"{user_url(STAFF_B)}/rank", {"rank": "7"})

    assert reply.status == 303
    assert (await box.directory.user(STAFF_B)).rank == 7  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "path", ["/admin", "/admin/users", "/admin/org", "/admin/queue", user_url(STAFF_A)]
)
async def test_non_admins_get_403_on_every_page(console: Console, path: str) -> None:
    staff = await console.as_user(STAFF_A)

    reply = await staff.get(path)

    assert reply.status == 403
    assert "หน้านี้สำหรับผู้ดูแลระบบเท่านั้น" in text(reply)


async def test_non_admins_get_403_on_every_action(console: Console, box: Box) -> None:
    staff = await console.as_user(STAFF_A)
    before = await box.directory.user(STAFF_A)

    add = await staff.post("/admin/users", {
        "address": "sneaky@a.go.th", "name_th": "แอบ", "password": PASSWORD,
        "password_confirm": PASSWORD,
    })  # fmt: skip
    rank = await staff.post(f"{user_url(STAFF_A)}/rank", {"rank": "99"})
    unit = await staff.post("/admin/org", {"agency": "a.go.th", "name_th": "กองลับ"})

    assert (add.status, rank.status, unit.status) == (403, 403, 403)
    assert await box.directory.user("sneaky@a.go.th") is None
    assert await box.directory.user(STAFF_A) == before
    assert "กองลับ" not in {u.name_th for u in await box.directory.units("a.go.th")}


async def test_signed_out_visitors_are_sent_to_sign_in(console: Console) -> None:
    reply = await console.server.request("GET", "/admin/users")

    assert reply.status == 303
    assert (reply.header("Location") or "").startswith("/signin?next=")


# --- users -------------------------------------------------------------------------


async def test_users_table_shows_details_and_quota(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    reply = await admin.get("/admin/users?q=" + quote("สมชาย"))

    assert row_addresses(reply) == [STAFF_A]
    page = text(reply)
    assert "Somchai Jaidee" in page
    assert "กองคลัง" in page
    assert "<meter" in page
    assert "10 GB" in page
    assert elements(reply, "agency-filter")
    assert {e["data-testid"] for e in elements(reply, "add-address")} == {"add-address"}


async def test_added_user_can_sign_in_and_has_mailboxes(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    reply = await admin.post("/admin/users", {
        "address": "Malai@A.go.th", "name_th": "มาลัย ดอกไม้", "name_en": "Malai Dokmai",
        "rank": "๕", "unit": "กองใหม่", "position": "นักวิชาการ", "quota_mb": "2048",
        "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD,
    })  # fmt: skip

    assert reply.status == 303
    assert reply.header("Location") == user_url("malai@a.go.th") + "?saved=added"
    user = await box.directory.authenticate("malai@a.go.th", NEW_PASSWORD)
    assert user is not None
    assert (user.name_en, user.rank, user.unit, user.position) == (
        "Malai Dokmai", 5, "กองใหม่", "นักวิชาการ",
    )  # fmt: skip
    assert user.quota_bytes == 2048 * 1024 * 1024
    names = await box.mail_db.read(
        lambda conn: {r[0] for r in conn.execute(
            "SELECT name FROM mailboxes WHERE owner = ?", (user.address,))}
    )  # fmt: skip
    assert {"INBOX", "Sent", "Drafts", "Trash"} <= names
    # And through the sign-in page itself.
    signin = await console.server.request(
        "POST",
        "/signin",
        f"address=malai%40a.go.th&password={quote(NEW_PASSWORD)}".encode(),
        {
            "Origin": f"https://127.0.0.1:{console.server.port}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert signin.status == 303
    assert "edgebox_session=" in (signin.header("Set-Cookie") or "")
    saved = await admin.get(reply.header("Location") or "")
    assert elements(saved, "saved-notice")


async def test_a_thai_address_works_end_to_end(console: Console, box: Box) -> None:
    root = await console.as_user(ROOT)
    address = "สมหญิง@b.go.th"

    added = await root.post("/admin/users", {
        "address": address, "name_th": "สมหญิง", "password": PASSWORD,
        "password_confirm": PASSWORD,
    })  # fmt: skip
    page = await root.get(user_url(address))

    assert added.status == 303
    assert page.status == 200
    assert address in text(page)


async def test_refused_add_keeps_the_form_but_not_the_password(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    reply = await admin.post("/admin/users", {
        "address": "typo@a.go.th", "name_th": "พิมพ์ ผิด", "password": "secret-one-2567",
        "password_confirm": "secret-two-2567",
    })  # fmt: skip

    assert reply.status == 422
    assert "รหัสผ่านทั้งสองช่องไม่ตรงกัน" in text(reply)
    [field] = elements(reply, "add-name-th")
    assert field["value"] == "พิมพ์ ผิด"
    assert "secret-one" not in text(reply)
    assert "secret-two" not in text(reply)
    assert await box.directory.user("typo@a.go.th") is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"address": "not-an-address"}, "ที่อยู่อีเมลไม่ถูกต้อง"),
        ({"address": STAFF_A}, "อยู่แล้ว"),
        ({"name_th": "  "}, "กรุณากรอกชื่อภาษาไทย"),
        ({"rank": "-1"}, "ระดับต้องเป็นจำนวนเต็ม"),
        ({"quota_mb": "0"}, "ไม่น้อยกว่า 1 MB"),
        ({"password": "", "password_confirm": ""}, "กรุณากรอกรหัสผ่าน"),
    ],
)
async def test_bad_new_users_are_refused(
    console: Console, box: Box, fields: dict[str, str], message: str
) -> None:
    admin = await console.as_user(ADMIN_A)
    form = {"address": "fresh@a.go.th", "name_th": "คนใหม่", "password": PASSWORD,
            "password_confirm": PASSWORD, **fields}  # fmt: skip
    before = len(await box.directory.users())

    reply = await admin.post("/admin/users", form)

    assert reply.status == 422
    assert message in text(reply)
    assert len(await box.directory.users()) == before


async def test_each_edit_saves_and_says_so(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    page = user_url(STAFF_A)

    for action, fields in [
        ("names", {"name_th": "สมชาย ใจงาม", "name_en": ""}),
        ("rank", {"rank": "6"}),
        ("unit", {"unit": "กองแผน"}),
        ("position", {"position": "ผู้อำนวยการกอง"}),
        ("phone", {"phone": "02 123 4567"}),
        ("quota", {"quota_mb": "500"}),
    ]:
        reply = await admin.post(f"{page}/{action}", fields)
        assert reply.status == 303, action
        assert reply.header("Location") == f"{page}?saved={action}"
        shown = await admin.get(reply.header("Location") or "")
        assert elements(shown, "saved-notice"), action

    user = await box.directory.user(STAFF_A)
    assert user is not None
    assert (user.name_th, user.name_en, user.rank, user.unit, user.position, user.phone) == (
        "สมชาย ใจงาม", None, 6, "กองแผน", "ผู้อำนวยการกอง", "02 123 4567",
    )  # fmt: skip
    assert user.quota_bytes == 500 * 1024 * 1024
    assert "กองแผน" in {unit.name_th for unit in await box.directory.units("a.go.th")}


async def test_a_bad_edit_changes_nothing(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    before = await box.directory.user(STAFF_A)

    rank = await admin.post(f"{user_url(STAFF_A)}/rank", {"rank": "สาม"})
    names = await admin.post(f"{user_url(STAFF_A)}/names", {"name_th": "ชื่อ\nปลอม"})

    assert (rank.status, names.status) == (422, 422)
    assert elements(rank, "form-error")
    assert await box.directory.user(STAFF_A) == before


async def test_disable_ends_sessions_and_enable_lets_back_in(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    staff = await console.as_user(STAFF_A)
    assert (await staff.get("/settings")).status == 200

    reply = await admin.post(f"{user_url(STAFF_A)}/disable")

    assert reply.status == 303
    assert await box.sessions.resolve(staff.token) is None
    assert (await staff.get("/settings")).status == 303  # to the sign-in page
    assert await box.directory.authenticate(STAFF_A, PASSWORD) is None
    assert (await admin.post(f"{user_url(STAFF_A)}/enable")).status == 303
    assert await box.directory.authenticate(STAFF_A, PASSWORD) is not None


async def test_an_admin_cannot_disable_themselves(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    reply = await admin.post(f"{user_url(ADMIN_A)}/disable")

    assert reply.status == 422
    assert not (await box.directory.user(ADMIN_A)).disabled  # type: ignore[union-attr]


async def test_reset_password_replaces_the_old_one_and_signs_out(
    console: Console, box: Box
) -> None:
    admin = await console.as_user(ADMIN_A)
    staff = await console.as_user(STAFF_A)

    reply = await admin.post(
        f"{user_url(STAFF_A)}/password",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )

    assert reply.status == 303
    assert await box.directory.authenticate(STAFF_A, PASSWORD) is None
    assert await box.directory.authenticate(STAFF_A, NEW_PASSWORD) is not None
    assert await box.sessions.resolve(staff.token) is None
    shown = await admin.get(reply.header("Location") or "")
    assert NEW_PASSWORD not in text(shown)


async def test_revoke_sessions_signs_the_user_out(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    staff = await console.as_user(STAFF_A)

    reply = await admin.post(f"{user_url(STAFF_A)}/sessions")

    assert reply.status == 303
    assert await box.sessions.resolve(staff.token) is None
    assert await box.directory.authenticate(STAFF_A, PASSWORD) is not None


async def test_forged_posts_without_the_csrf_token_change_nothing(
    console: Console, box: Box
) -> None:
    admin = await console.as_user(ADMIN_A)
    before = await box.directory.user(STAFF_A)

    rank = await admin.post(f"{user_url(STAFF_A)}/rank", {"rank": "9"}, csrf=False)
    password = await admin.post(
        f"{user_url(STAFF_A)}/password",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
        csrf=False,
    )
    add = await admin.post("/admin/users", {
        "address": "forged@a.go.th", "name_th": "ปลอม", "password": PASSWORD,
        "password_confirm": PASSWORD,
    }, csrf=False)  # fmt: skip

    assert (rank.status, password.status, add.status) == (403, 403, 403)
    assert await box.directory.user(STAFF_A) == before
    assert await box.directory.authenticate(STAFF_A, PASSWORD) is not None
    assert await box.directory.user("forged@a.go.th") is None


async def test_every_action_is_logged_and_recorded_without_the_password(
    console: Console, box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await console.as_user(ADMIN_A)
    caplog.set_level(logging.INFO, logger="edgebox")

    await admin.post(f"{user_url(STAFF_A)}/rank", {"rank": "8"})
    await admin.post(
        f"{user_url(STAFF_A)}/password",
        {"password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )

    lines = [r.getMessage() for r in caplog.records if r.name == "edgebox.admin"]
    assert any(f"admin={ADMIN_A} action=rank target={STAFF_A} rank=8" in m for m in lines)
    assert any("action=password" in m for m in lines)
    assert all(NEW_PASSWORD not in r.getMessage() for r in caplog.records)
    records = [r for r in iter_records(box.config.data_dir / "log" / "traffic")
               if r.event.startswith("admin-")]  # fmt: skip
    assert [(r.event, r.user, r.recipients) for r in records] == [
        ("admin-rank", ADMIN_A, (STAFF_A,)),
        ("admin-password", ADMIN_A, (STAFF_A,)),
    ]
    assert records[0].client_ip == "127.0.0.1"
    log_text = "".join(
        p.read_text() for p in (box.config.data_dir / "log" / "traffic").glob("*.jsonl")
    )
    assert NEW_PASSWORD not in log_text


# --- org chart ---------------------------------------------------------------------


async def test_org_chart_nests_units_and_adds_new_ones(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)

    added = await admin.post("/admin/org", {
        "agency": "a.go.th", "name_th": "ฝ่ายบัญชี", "name_en": "Accounts", "parent": "กองคลัง",
    })  # fmt: skip
    await box.directory.set_unit(ADMIN_A, "ฝ่ายบัญชี")
    chart = await admin.get("/admin/org")

    assert added.status == 303
    units = await box.directory.units("a.go.th")
    [child] = [u for u in units if u.name_th == "ฝ่ายบัญชี"]
    [parent] = [u for u in units if u.name_th == "กองคลัง"]
    assert child.parent_id == parent.id
    page = text(chart)
    # The child's list item sits inside the parent's: the parent's <li> is not yet
    # closed where the child appears.
    start = page.index('data-unit="กองคลัง"')
    inner = page.index('data-unit="ฝ่ายบัญชี"')
    assert start < inner
    assert page.count("</li>", start, inner) == 1  # only STAFF_A's member entry closed
    assert [m["data-address"] for m in elements(chart, "org-member")] == [STAFF_A, ADMIN_A, ROOT]


async def test_org_refuses_a_duplicate_or_an_out_of_scope_agency(
    console: Console, box: Box
) -> None:
    admin = await console.as_user(ADMIN_A)

    duplicate = await admin.post("/admin/org", {"agency": "a.go.th", "name_th": "กองคลัง"})
    elsewhere = await admin.post("/admin/org", {"agency": "b.go.th", "name_th": "กองแอบ"})

    assert duplicate.status == 422
    assert elsewhere.status == 404
    assert "กองแอบ" not in {u.name_th for u in await box.directory.units("b.go.th")}


# --- outbound queue ------------------------------------------------------------------


async def _queue(box: Box, sender: str, recipient: str, urgency: str) -> None:
    trace = Trace(helo="pc.a.go.th", client_ip="192.0.2.7", protocol="ESMTPSA")
    content = f"X-Urgency: {urgency}\r\nSubject: t\r\n\r\nbody\r\n".encode()
    await box.delivery.deliver(
        Envelope(sender=sender, recipients=[Recipient(recipient, local=False)], trace=trace),
        content,
    )


async def test_queue_lists_most_urgent_first_and_hides_other_agencies(
    console: Console, box: Box
) -> None:
    for recipient, urgency in [
        ("r1@far.example", "normal"),
        ("r2@far.example", "ด่วนที่สุด"),
        ("r3@far.example", "urgent"),
        ("r4@far.example", "ด่วนที่สุด"),
    ]:
        await _queue(box, STAFF_A, recipient, urgency)  # fmt: skip
    await _queue(box, STAFF_B, "b1@far.example", "very-urgent")
    root = await console.as_user(ROOT)
    admin = await console.as_user(ADMIN_A)

    everything = await root.get("/admin/queue")
    own = await admin.get("/admin/queue")
    overview = await admin.get("/admin")

    rows = [(r["data-recipient"], r["data-urgency"]) for r in elements(everything, "queue-row")]
    assert rows == [
        ("r2@far.example", "3"), ("r4@far.example", "3"), ("b1@far.example", "2"),
        ("r3@far.example", "1"), ("r1@far.example", "0"),
    ]  # fmt: skip
    assert [r["data-recipient"] for r in elements(own, "queue-row")] == [
        "r2@far.example", "r4@far.example", "r3@far.example", "r1@far.example",
    ]  # fmt: skip
    assert "ด่วนที่สุด" in text(own)
    assert STAFF_B not in text(own)
    levels = {e["data-urgency"]: e for e in elements(overview, "queue-level")}
    assert set(levels) == {"0", "1", "2", "3"}
    assert '<strong data-testid="queue-total">4</strong>' in text(overview)
    assert elements(overview, "queue-oldest")


async def test_overview_shows_health_and_the_link_status(console: Console) -> None:
    root = await console.as_user(ROOT)

    reply = await root.get("/admin")

    # No supervisor runs in this test, so the services check reports that.
    checks = elements(reply, "health-finding")
    assert {c["data-level"] for c in checks} >= {"error"}
    assert "พื้นที่ว่าง" in text(reply)
    assert "ยังไม่ได้เชื่อมต่อกับส่วนกลาง" in text(reply)
    [link] = elements(reply, "link-status")
    assert link["data-connected"] == "no"


async def test_health_page_lists_every_check_with_what_to_do_thai_first(
    console: Console, box: Box
) -> None:
    root = await console.as_user(ROOT)

    thai = await root.get("/admin/health")

    assert thai.status == 200
    findings = {e["data-check"]: e["data-level"] for e in elements(thai, "health-finding")}
    # No supervisor runs here: the services check says so, and the box is unhealthy.
    assert findings["services"] == "error"
    assert {"disk", "memory", "temperature", "clock", "queue", "link"} <= set(findings)
    [summary] = elements(thai, "health-summary")
    assert summary["data-level"] == "error"
    assert "edgebox ไม่ได้ทำงานอยู่" in text(thai)
    assert "สั่งเริ่มระบบ: systemctl start edgebox" in text(thai)
    assert "สถานะเครื่อง" in text(thai)
    assert elements(thai, "health-readings")
    assert elements(thai, "health-disk-free")

    await PreferenceStore(box.directory_db).set(ROOT, Preferences(language="en"))
    english = await root.get("/admin/health")
    assert "edgebox is not running" in text(english)
    assert "start it: systemctl start edgebox" in text(english)
    assert "Box health" in text(english)


async def test_health_page_is_for_admins_only(console: Console) -> None:
    staff = await console.as_user(STAFF_A)
    reply = await staff.get("/admin/health")
    assert reply.status != 200
    assert not elements(reply, "health-finding")


async def test_dates_are_in_the_buddhist_era_in_thai_and_not_in_english(
    console: Console, box: Box
) -> None:
    await _queue(box, STAFF_A, "far@far.example", "urgent")
    admin = await console.as_user(ADMIN_A)
    year = datetime.now(THAILAND).year

    thai = await admin.get("/admin/queue")
    await PreferenceStore(box.directory_db).set(ADMIN_A, Preferences(language="en"))
    english = await admin.get("/admin/queue")

    assert f" {year + 543} " in text(thai)
    assert f" {year} " in text(english)
    assert f" {year + 543} " not in text(english)
    assert "Urgent" in text(english)


@pytest.mark.parametrize(
    "path", ["/admin", "/admin/users", "/admin/org", "/admin/queue", user_url(STAFF_A)]
)
async def test_every_page_renders_in_english(console: Console, box: Box, path: str) -> None:
    await PreferenceStore(box.directory_db).set(ROOT, Preferences(language="en"))
    root = await console.as_user(ROOT)

    reply = await root.get(path)

    assert reply.status == 200
    assert '<html lang="en"' in text(reply)
    assert "Outbound queue" in text(reply)  # the admin menu


async def test_users_table_pages(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_pages, "PAGE_SIZE", 2)
    root = await console.as_user(ROOT)

    first = await root.get("/admin/users")
    second = await root.get("/admin/users?page=2")

    assert row_addresses(first) == [ADMIN_A, ROOT]
    assert row_addresses(second) == [STAFF_A, STAFF_B]
    assert 'href="/admin/users?page=2" rel="next"' in text(first)
    assert row_addresses(await root.get("/admin/users?page=0")) == row_addresses(first)
    assert row_addresses(await root.get("/admin/users?page=99")) == [STAFF_A, STAFF_B]
    filtered = await root.get("/admin/users?agency=a.go.th&q=a.go")
    assert row_addresses(filtered) == [ADMIN_A, ROOT]
    assert 'href="/admin/users?agency=a.go.th&amp;q=a.go&amp;page=2"' in text(filtered)


async def test_overview_shows_the_link_monitor_state(console: Console, box: Box) -> None:
    data_dir = box.config.data_dir
    since = time.time() - 3 * 3600
    snapshot = LinkSnapshot(gin=LinkReading(LinkState.UP, since, "https://hub:7443"))
    (data_dir / LINK_FILE).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / LINK_FILE).write_text(json.dumps(snapshot.to_json()))
    SyncStatus(data_dir).failure("chat", "HubUnavailable: timed out")
    root = await console.as_user(ROOT)

    reply = await root.get("/admin")

    [link] = elements(reply, "link-status")
    assert link["data-connected"] == "yes"
    assert [e["data-state"] for e in elements(reply, "link-gin")] == ["up"]
    assert [e["data-state"] for e in elements(reply, "link-international")] == ["not_probed"]
    streams = [e["data-stream"] for e in elements(reply, "link-stream")]
    assert streams == ["outbound", "mailbox", "chat", "directory"]
    assert "HubUnavailable: timed out" in text(reply)
    assert "3 ชั่วโมง" in text(reply)


async def test_health_page_shows_a_rolled_back_update_and_why(console: Console, box: Box) -> None:
    outcome.record(box.config.data_dir, "rolled_back", "2026.12.1", "B", 1.0,
                   "health gate failed: store: disk I/O error", pending=None)  # fmt: skip
    root = await console.as_user(ROOT)

    thai = await root.get("/admin/health")

    findings = {e["data-check"]: e["data-level"] for e in elements(thai, "health-finding")}
    assert findings["update"] == "warn"
    assert "ยกเลิกการปรับรุ่น 2026.12.1" in text(thai)
    assert "disk I/O error" in text(thai)
