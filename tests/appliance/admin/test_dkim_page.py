"""The admin console's DKIM page: the TXT records to publish, per agency, read-only."""

from __future__ import annotations

from datetime import date

from appliance.box import Box
from appliance.directory.preferences import Preferences, PreferenceStore
from appliance.protection.dkim import DkimKeyring
from tests.appliance.admin.conftest import ADMIN_A, ROOT, STAFF_A, A, B, Console
from tests.appliance.admin.test_pages import elements, text


async def test_each_admin_sees_the_records_of_their_agencies_only(
    console: Console, box: Box
) -> None:
    keyring = DkimKeyring(box.config.data_dir / "keys")
    keyring.ensure(A, date(2026, 12, 7))
    keyring.rotate(A, date(2027, 6, 1))

    root = await console.as_user(ROOT)
    page = await root.get("/admin/dkim")
    assert page.status == 200
    assert [e["data-domain"] for e in elements(page, "dkim-agency")] == [A, B]
    records = elements(page, "dkim-record")
    assert [r["data-active"] for r in records] == ["yes", "no"]
    assert "eb20270601._domainkey.a.go.th" in text(page)
    assert "eb20261207._domainkey.a.go.th" in text(page)
    assert text(page).count("v=DKIM1; k=rsa; p=") == 2
    assert len(elements(page, "dkim-none")) == 1  # agency B has no key yet
    assert "edgebox dkim show --agency b.go.th" in text(page)
    assert "ลายเซ็น DKIM" in text(page)

    admin = await console.as_user(ADMIN_A)
    own = await admin.get("/admin/dkim")
    assert [e["data-domain"] for e in elements(own, "dkim-agency")] == [A]
    assert B not in text(own)

    await PreferenceStore(box.directory_db).set(ADMIN_A, Preferences(language="en"))
    assert "DKIM signing of outbound mail" in text(await admin.get("/admin/dkim"))

    staff = await console.as_user(STAFF_A)
    refused = await staff.get("/admin/dkim")
    assert refused.status != 200
    assert not elements(refused, "dkim-record")


async def test_each_agency_gets_its_spf_and_dmarc_records(console: Console) -> None:
    root = await console.as_user(ROOT)
    page = await root.get("/admin/dkim")
    records = elements(page, "sender-record")
    assert [r["data-kind"] for r in records] == ["spf", "dmarc", "spf", "dmarc"]
    assert f"_dmarc.{A}" in text(page)
    assert f"_dmarc.{B}" in text(page)
    assert text(page).count("v=DMARC1; p=reject; adkim=r; aspf=r") == 2
    assert text(page).count("v=spf1 mx -all") == 2
