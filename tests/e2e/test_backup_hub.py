"""Offsite backups to a real hub (``edgebox run --role hub``), from outside.

An enrolled box backs up to the hub by itself at start (the daily schedule: never
backed up, so due at once), then twice more by ``edgebox backup create --to hub`` while
smtplib and curl keep writing mail and chat. The box is then lost: on a blank data
directory the technician restores it from the hub with a fresh enrolment token, the
box's id and domain, and the recovery key that the hub's operator recovers from escrow.
Every message's and chat event's content hash must equal the original's, and the
restored box talks to the hub under its new certificate (it re-enrolled as itself).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from appliance.backup.hubstore import box_folder
from appliance.backup.service import read_state
from appliance.backup.snapshot import complete_backups
from appliance.identity import read_identity
from appliance.sync.status import read_sync_status
from tests.e2e.test_backup import (
    DOMAIN,
    USERS,
    _chat_hashes,
    _chat_load,
    _mail_hashes,
    _recovery_words,
    _sign_in,
    _smtp_load,
)
from tests.e2e.uplink import FAST, enrol, wait_for
from tests.harness import curl, edgebox, init_box, start_box


@pytest.mark.slow
def test_backup_under_load_to_the_hub_restores_onto_a_blank_box(tmp_path: Path) -> None:
    hub_data, data = tmp_path / "hub", tmp_path / "box"
    init_box(hub_data, "hub.go.th", {})
    init_box(data, DOMAIN, USERS)
    hub = start_box(hub_data, extra=["--role", "hub"], env=FAST)
    try:
        enrol(hub, hub_data, data, DOMAIN)
        identity = read_identity(data)
        assert identity is not None
        folder = box_folder(hub_data, identity.box_id)
        box = start_box(data, env=FAST)
        try:
            # The daily offsite backup runs at start: nothing was ever sent.
            wait_for("the scheduled offsite backup", lambda: complete_backups(folder))
            assert "backup-offsite running" in "\n".join(box.output)
            scheduled = read_state(data)["offsite_last_name"]

            boss, staff = sorted(USERS)[:2]
            token = _sign_in(box, boss)
            status, room = curl(box, "POST", "/api/v1/rooms",
                                {"kind": "group", "name": "สำรองนอกสถานที่", "members": [staff]},
                                token=token)  # fmt: skip
            assert status == 201, room
            stop = threading.Event()
            accepted: list[str] = []
            posted: list[str] = []
            loads = [
                threading.Thread(target=_smtp_load, args=(box, stop, accepted)),
                threading.Thread(target=_chat_load, args=(box, token, room["id"], stop, posted)),
            ]
            for thread in loads:
                thread.start()
            try:
                wait_for("the load to get going", lambda: len(accepted) >= 40 and len(posted) >= 10)
                edgebox("backup", "create", "--data", str(data), "--to", "hub")
                during = len(accepted)
                done = edgebox("backup", "create", "--data", str(data), "--to", "hub")
                assert "blobs (" in done.stdout
            finally:
                stop.set()
                for thread in loads:
                    thread.join(60)
            assert len(accepted) > during, "no mail was accepted while the backup ran"
            last = edgebox("backup", "create", "--data", str(data), "--to", "hub").stdout
        finally:
            box.stop()
        sets = complete_backups(folder)
        assert len(sets) == 4
        assert sets[0].name == scheduled
        assert sets[-1].name in last

        # The hub's operator recovers the key from escrow: the agency's sheet, again.
        words = _recovery_words(data)
        escrowed = edgebox("hub", "escrow", "--data", str(hub_data), identity.box_id)
        assert escrowed.stdout.strip().splitlines()[-1] == words

        # A blank box, restored from the hub with a fresh token of the agency.
        issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", DOMAIN)
        enrolment_token = issued.stdout.strip().splitlines()[-1]
        url = f"https://127.0.0.1:{hub.port('hub-sync')}"
        restored = tmp_path / "restored"
        done = edgebox("backup", "restore", "--data", str(restored), "--from", url,
                       "--token", enrolment_token, "--box", identity.box_id,
                       "--domain", DOMAIN, "--key", words)  # fmt: skip
        assert sets[-1].name in done.stdout
        assert "re-enrolled" in done.stdout

        original_mail = _mail_hashes(data)
        assert len(original_mail) == len(accepted)
        assert _mail_hashes(restored) == original_mail
        assert _chat_hashes(restored) == _chat_hashes(data)
        assert len(_chat_hashes(data)["messages"]) >= len(posted)

        # The restored box is the old box to the hub, under its new certificate.
        started = time.time()
        again = start_box(restored, env={**FAST, "EDGEBOX_BACKUP_OFFSITE": "0"})
        try:
            wait_for(
                "the restored box's directory sync with the hub",
                lambda: (
                    (read_sync_status(restored).get("directory", {}).get("last_success") or 0)
                    > started
                ),
            )
            status, page = curl(again, "GET", f"/api/v1/rooms/{room['id']}/messages?limit=200",
                                token=_sign_in(again, boss))  # fmt: skip
            assert status == 200, page
        finally:
            again.stop()
    finally:
        hub.stop()
