"""The admin console's sign-in protection page: who guessed wrong, in scope, and unlocks."""

from __future__ import annotations

from appliance.box import Box
from appliance.compliance.traffic_log import iter_records
from tests.appliance.admin.conftest import ADMIN_A, ROOT, STAFF_A, STAFF_B, Console
from tests.appliance.admin.test_pages import elements, text

ONLY_A = "10.0.0.1"
ONLY_B = "10.0.0.2"
BOTH = "10.0.0.3"


def guess(box: Box, account: str, source: str, times: int) -> None:
    for _ in range(times):
        assert not box.guard.admit(account, source).refused
        box.guard.failed(account, source)


def seed(box: Box) -> None:
    limit = box.guard.policy.source_limit
    guess(box, STAFF_A, ONLY_A, limit)  # refused now
    guess(box, STAFF_B, ONLY_B, 2)
    guess(box, STAFF_A, BOTH, 1)
    guess(box, STAFF_B, BOTH, limit - 1)  # refused now


async def test_the_box_admin_sees_every_source_and_account(console: Console, box: Box) -> None:
    seed(box)
    page = await (await console.as_user(ROOT)).get("/admin/security")
    assert page.status == 200
    sources = {row["data-source"]: row["data-refused"] for row in elements(page, "guard-source")}
    assert sources == {ONLY_A: "yes", ONLY_B: "no", BOTH: "yes"}
    accounts = [row["data-account"] for row in elements(page, "guard-account")]
    assert sorted(accounts) == [STAFF_A, STAFF_B]
    assert len(elements(page, "unlock-source")) == 3


async def test_an_agency_admin_sees_only_their_agencys_accounts(console: Console, box: Box) -> None:
    seed(box)
    page = await (await console.as_user(ADMIN_A)).get("/admin/security")
    sources = [row["data-source"] for row in elements(page, "guard-source")]
    assert sorted(sources) == [ONLY_A, BOTH]
    assert [row["data-account"] for row in elements(page, "guard-account")] == [STAFF_A]
    assert STAFF_B not in text(page)
    # The source that also guessed at agency B's staff has no unlock button for A.
    assert len(elements(page, "unlock-source")) == 1


async def test_an_agency_admin_unlocks_a_source_of_their_own(console: Console, box: Box) -> None:
    seed(box)
    admin = await console.as_user(ADMIN_A)
    reply = await admin.post("/admin/security/unlock-source", {"source": ONLY_A})
    assert reply.status == 303
    assert reply.header("Location") == "/admin/security?saved=source-unlocked"
    assert not box.guard.admit(STAFF_A, ONLY_A).refused
    box.guard.abandoned(ONLY_A)
    records = list(iter_records(box.config.data_dir / "log" / "traffic"))
    assert any(r.event == "admin-unlock-source" and r.user == ADMIN_A
               and r.result == f"source={ONLY_A}" for r in records)  # fmt: skip


async def test_an_agency_admin_cannot_unlock_what_protects_another_agency(
    console: Console, box: Box
) -> None:
    seed(box)
    admin = await console.as_user(ADMIN_A)
    mixed = await admin.post("/admin/security/unlock-source", {"source": BOTH})
    assert mixed.status == 422
    assert "other agencies" in text(mixed) or "หน่วยงานอื่น" in text(mixed)
    assert box.guard.admit(STAFF_A, BOTH).refused
    foreign = await admin.post("/admin/security/unlock-source", {"source": ONLY_B})
    assert foreign.status == 422
    assert (await admin.post("/admin/security/unlock-account", {"account": STAFF_B})).status == 422
    # The box-wide admin may.
    root = await console.as_user(ROOT)
    assert (await root.post("/admin/security/unlock-source", {"source": BOTH})).status == 303
    assert not box.guard.admit(STAFF_A, BOTH).refused
    box.guard.abandoned(BOTH)


async def test_an_admin_forgets_an_accounts_failures(console: Console, box: Box) -> None:
    for n in range(8):
        guess(box, STAFF_A, f"10.9.0.{n}", 1)
    assert box.guard.admit(STAFF_A, "10.0.0.99").delay > 0
    box.guard.abandoned("10.0.0.99")
    admin = await console.as_user(ADMIN_A)
    reply = await admin.post("/admin/security/unlock-account", {"account": STAFF_A})
    assert reply.status == 303
    assert box.guard.admit(STAFF_A, "10.0.0.99").delay == 0


async def test_non_admins_and_forged_posts_get_nothing(console: Console, box: Box) -> None:
    seed(box)
    staff = await console.as_user(STAFF_A)
    assert (await staff.get("/admin/security")).status == 403
    assert (await staff.post("/admin/security/unlock-source", {"source": ONLY_A})).status == 403
    root = await console.as_user(ROOT)
    forged = await root.post("/admin/security/unlock-source", {"source": ONLY_A}, csrf=False)
    assert forged.status == 403
    assert box.guard.admit(STAFF_A, ONLY_A).refused
