"""The admin console's protection page: the quarantine view from the traffic log, the
spam scores and the sender lists, per agency and within the admin's scope."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from appliance.admin.protection import parse_entries, quarantine
from appliance.box import Box
from appliance.compliance.traffic_log import TrafficRecord
from appliance.protection.engines import protection_from_config
from appliance.protection.verdict import Listing, SenderLists
from appliance.store.settings import Settings
from tests.appliance.admin.conftest import ADMIN_A, ROOT, STAFF_A, A, B, Console
from tests.appliance.admin.test_pages import elements, text


def section(box: Box) -> dict[str, object]:
    settings = Settings(box.config.data_dir / "config.json")
    try:
        return settings.get("protection")
    finally:
        settings.close()


def record(result: str, to: str, sender: str = "x@example.org") -> TrafficRecord:
    return TrafficRecord(time=dt.datetime.now(dt.UTC), service="smtp-mx", event="rejected",
                         client_ip="192.0.2.1", sender=sender, recipients=(to,),
                         result=result)  # fmt: skip


async def test_the_quarantine_view_lists_the_agencys_verdicts_with_scores(
    console: Console, box: Box
) -> None:
    for one in (
        record("554 5.7.1 virus Edgebox-Test-EICAR.UNOFFICIAL", STAFF_A),
        record("550 5.7.1 spam score=21.40 spf=none dkim=none dmarc=none", STAFF_A),
        record("250 2.0.0 junk score=8.10", STAFF_A),
        record("250 2.0.0 clean score=0.30", STAFF_A),  # not shown: delivered to INBOX
        record("550 5.7.1 spam score=30.00", f"staff@{B}", sender="b-only@example.org"),
    ):
        await box.traffic.append(one)
    admin = await console.as_user(ADMIN_A)
    page = await admin.get("/admin/protection")
    assert page.status == 200
    rows = elements(page, "quarantine-row")
    assert [r["data-verdict"] for r in rows] == ["junk", "spam", "virus"]  # newest first
    assert "8.10" in text(page)
    assert "21.40" in text(page)
    assert "Edgebox-Test-EICAR.UNOFFICIAL" in text(page)
    assert "b-only@example.org" not in text(page)  # another agency's
    assert "จดหมายขยะ" in text(page)  # Thai first
    assert (await admin.get(f"/admin/protection?agency={B}")).status == 404

    root = await console.as_user(ROOT)
    other = await root.get(f"/admin/protection?agency={B}")
    assert [r["data-verdict"] for r in elements(other, "quarantine-row")] == ["spam"]
    staff = await console.as_user(STAFF_A)
    assert (await staff.get("/admin/protection")).status == 403


async def test_the_threshold_form_sets_what_the_verdict_reads(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    saved = await admin.post(f"/admin/protection/{A}/thresholds",
                             {"junk_score": "4.5", "reject_score": "12"})  # fmt: skip
    assert saved.status == 303
    assert section(box)[A] == {"junk_score": 4.5, "reject_score": 12.0}
    page = await admin.get("/admin/protection")
    # The console's own audit line ("junk=4.5 reject=12.0") is no verdict.
    assert not elements(page, "quarantine-row")
    protection = protection_from_config(box.config, lambda: section(box))
    assert protection.thresholds_for(A).junk_score == 4.5
    assert protection.thresholds_for(B).junk_score == box.config.protection_junk_score

    wrong = await admin.post(f"/admin/protection/{A}/thresholds",
                             {"junk_score": "20", "reject_score": "10"})  # fmt: skip
    assert wrong.status == 422
    assert elements(wrong, "form-error")
    assert section(box)[A] == {"junk_score": 4.5, "reject_score": 12.0}
    for bad in ("x", "nan", "inf"):
        refused = await admin.post(f"/admin/protection/{A}/thresholds", {"junk_score": bad})
        assert refused.status == 422
    # Another agency's form: answered like an unknown agency, nothing stored.
    beyond = await admin.post(f"/admin/protection/{B}/thresholds", {"junk_score": "1"})
    assert beyond.status == 404
    assert B not in section(box)
    # Empty fields: back to the box's scores.
    assert (await admin.post(f"/admin/protection/{A}/thresholds", {})).status == 303
    assert section(box)[A] == {}


async def test_sender_lists_are_saved_and_applied(console: Console, box: Box) -> None:
    admin = await console.as_user(ADMIN_A)
    saved = await admin.post(f"/admin/protection/{A}/lists", {
        "allow": "Partner@Example.ORG\nfriends.example\n", "block": "spam.example, bob@x.example",
    })  # fmt: skip
    assert saved.status == 303
    assert section(box)[A] == {
        "allow": ["partner@example.org", "friends.example"],
        "block": ["spam.example", "bob@x.example"],
    }
    lists = protection_from_config(box.config, lambda: section(box)).lists_for(A)
    assert SenderLists.listing([lists], "a@spam.example") is Listing.BLOCKED
    assert SenderLists.listing([lists], "partner@example.org") is Listing.ALLOWED
    page = await admin.get("/admin/protection")
    assert "partner@example.org" in text(page)

    await admin.post(f"/admin/protection/{A}/thresholds", {"junk_score": "3"})
    wrong = await admin.post(f"/admin/protection/{A}/lists", {"allow": "not an address"})
    assert wrong.status == 422
    assert "not an address" in text(wrong)
    assert 'value="3.0"' in text(wrong)  # the other form still shows what is stored
    assert section(box)[A]["allow"] == ["partner@example.org", "friends.example"]  # type: ignore[index]


async def test_forged_posts_without_the_csrf_token_change_nothing(
    console: Console, box: Box
) -> None:
    admin = await console.as_user(ADMIN_A)
    forged = await admin.post(f"/admin/protection/{A}/lists", {"allow": "evil.example"},
                              csrf=False)  # fmt: skip
    assert forged.status == 403
    forged = await admin.post(f"/admin/protection/{A}/thresholds", {"junk_score": "99"},
                              csrf=False)  # fmt: skip
    assert forged.status == 403
    assert A not in section(box)


def test_entries_are_addresses_or_domains() -> None:
    assert parse_entries(" A@B.example \n\nc.example,c.example\nไทย.example") == (
        ["a@b.example", "c.example", "xn--o3cw4h.example"], [])  # fmt: skip
    assert parse_entries("a b\n@x.example\nx\na@b@c.example")[0] == []


@given(st.text(max_size=200))
def test_any_text_is_split_into_entries_and_refusals(text: str) -> None:
    entries, _ = parse_entries(text)
    assert all(" " not in e and e == e.lower() for e in entries)


def test_quarantine_reads_only_scanner_verdicts_to_the_domain(tmp_path: Path) -> None:
    rows = quarantine([record("250 2.0.0 junk score=6.50 spf=pass to-junk", STAFF_A),
                       record("550 5.7.1 spf=fail", STAFF_A),
                       record("550 5.7.1 blocked sender on the block list score=0.00", STAFF_A)],
                      {A}, 10)  # fmt: skip
    assert [(r.verdict, r.score, r.detail) for r in rows] == [
        ("blocked", "0.00", "sender on the block list"), ("junk", "6.50", ""),
    ]  # fmt: skip
