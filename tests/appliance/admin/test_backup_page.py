"""The admin console's backup page and the agency's recovery sheet (QR code and words)."""

from __future__ import annotations

import base64
import html
import urllib.parse

from appliance.backup.crypto import ensure_backup_key, key_id, key_to_words
from appliance.backup.service import record
from appliance.box import Box
from tests.appliance.admin.conftest import ADMIN_A, PASSWORD, ROOT, Console


async def test_a_box_admin_sees_both_backups_and_prints_the_sheet_after_the_password(
    console: Console, box: Box
) -> None:
    record(box.config.data_dir, offsite_last_name="20270115T080000Z",
           offsite_last_error="HubUnavailable: cut")  # fmt: skip
    root = await console.as_user(ROOT)
    page = await root.get("/admin/backup")
    assert page.status == 200
    text = page.body.decode()
    assert 'data-testid="backup-onsite"' in text
    assert 'data-testid="backup-offsite"' in text
    assert 'data-testid="sheet-words"' not in text  # not without the password
    key = ensure_backup_key(box.config.data_dir / "keys")
    assert key_to_words(key) not in text

    wrong = await root.post("/admin/backup/recovery-sheet", {"password": "nope"})
    assert wrong.status == 403
    assert key_to_words(key) not in wrong.body.decode()
    no_csrf = await root.post("/admin/backup/recovery-sheet", {"password": PASSWORD},
                              csrf=False)  # fmt: skip
    assert no_csrf.status == 403

    sheet = await root.post("/admin/backup/recovery-sheet", {"password": PASSWORD})
    assert sheet.status == 200
    text = sheet.body.decode()
    assert f'data-testid="sheet-words">{key_to_words(key)}<' in text
    assert f'data-testid="sheet-key-id">{key_id(key)}<' in text
    assert f'data-testid="sheet-box-id">{box.identity.box_id}<' in text
    # The QR code is an SVG drawn by segno, inline as a data: URI (img-src allows it).
    src = html.unescape(text.split('class="recovery-qr" src="', 1)[1].split('"', 1)[0])
    assert src.startswith("data:image/svg+xml")
    header, _, payload = src.partition(",")
    svg = (
        base64.b64decode(payload)
        if header.endswith(";base64")
        else urllib.parse.unquote(payload).encode()
    )
    assert b"<svg" in svg
    assert b"<path" in svg


async def test_an_agency_admin_sees_no_backup_page(console: Console) -> None:
    admin = await console.as_user(ADMIN_A)
    assert (await admin.get("/admin/backup")).status == 403
    assert (await admin.post("/admin/backup/recovery-sheet", {"password": PASSWORD})).status == 403
