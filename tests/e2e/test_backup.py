"""`edgebox backup` against a real `edgebox run` under SMTP and chat load, from outside.

The box serves while backups are taken (smtplib and curl keep writing); the last backup
is restored onto a fresh data directory, a box is started on it and read with imaplib
and curl, and every message's and chat event's content hash must equal the original's.
A backup taken mid-load restores to a consistent subset. A backup killed with SIGKILL
leaves nothing a restore accepts.
"""

from __future__ import annotations

import hashlib
import imaplib
import secrets
import signal
import smtplib
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio

from appliance.backup.crypto import key_to_words
from appliance.backup.service import read_state
from appliance.backup.snapshot import PARTIAL_PREFIX, complete_backups
from appliance.chat.store import KEY_INFO as CHAT_KEY_INFO
from appliance.security.keys import load_data_key
from appliance.store.blobs import BlobStore
from appliance.store.encrypted import connect_encrypted, derive_key
from tests.harness import EDGEBOX, RunningBox, curl, edgebox, init_box, start_box, stored

DOMAIN = "backup.go.th"
USERS = {f"clerk{i}@{DOMAIN}": f"clerk-{i}-password" for i in range(4)}
#: Bounds of the load: at most this many messages / chat posts, for at most this long.
MAX_MESSAGES = 300
MAX_POSTS = 120
LOAD_SECONDS = 90.0


def _smtp_load(box: RunningBox, stop: threading.Event, accepted: list[str]) -> None:
    addresses = sorted(USERS)
    deadline = time.monotonic() + LOAD_SECONDS
    with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30) as smtp:
        for n in range(MAX_MESSAGES):
            if stop.is_set() or time.monotonic() > deadline:
                return
            marker = f"load-{n}"
            text = f"{marker} " + "สวัสดี " * (n % 50)
            body = (f"From: sender@far.example\r\nTo: {addresses[n % 4]}\r\n"
                    f"Subject: {marker}\r\n\r\n{text}\r\n")  # fmt: skip
            smtp.sendmail("sender@far.example", [addresses[n % 4]], body.encode())
            accepted.append(marker)  # only after the 250


def _chat_load(
    box: RunningBox, token: str, room: str, stop: threading.Event, posted: list[str]
) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    for n in range(MAX_POSTS):
        if stop.is_set() or time.monotonic() > deadline:
            return
        status, _ = curl(box, "POST", f"/api/v1/rooms/{room}/messages",
                         {"kind": "text", "text": f"ข้อความ {n}"}, token=token)  # fmt: skip
        assert status == 201
        posted.append(f"ข้อความ {n}")


def _sign_in(box: RunningBox, address: str) -> str:
    credentials = {"address": address, "password": USERS[address], "client": "app"}
    status, body = curl(box, "POST", "/api/v1/session", credentials)
    assert status == 201, body
    return str(body["token"])


def _mail_hashes(data: Path) -> dict[tuple[str, int], str]:
    found = {}
    for address in USERS:
        for row, content in trio.run(stored, data, address):
            found[(address, row.uid)] = hashlib.sha256(content).hexdigest()  # type: ignore[attr-defined]
    return found


def _chat_hashes(data: Path) -> dict[str, list[str]]:
    """The sorted content hashes of every chat event and message row."""
    key = derive_key(load_data_key(data / "keys"), CHAT_KEY_INFO)
    conn = connect_encrypted(data / "db" / "chat.sqlite", key)
    try:
        return {
            table: sorted(
                hashlib.sha256(repr(row).encode()).hexdigest()
                for row in conn.execute(f"SELECT * FROM {table}")  # noqa: S608 -- fixed names
            )
            for table in ("events", "messages", "rooms", "members")
        }
    finally:
        conn.close()


def _recovery_words(data: Path) -> str:
    return edgebox("backup", "key", "--data", str(data)).stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_backup_under_load_restores_every_message_and_chat_event(tmp_path: Path) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    init_box(data, DOMAIN, USERS)
    box = start_box(data)
    try:
        boss, staff = sorted(USERS)[:2]
        token = _sign_in(box, boss)
        status, room = curl(box, "POST", "/api/v1/rooms",
                            {"kind": "group", "name": "สำรองข้อมูล", "members": [staff]},
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
            deadline = time.monotonic() + 60
            while (len(accepted) < 40 or len(posted) < 10) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(accepted) >= 40, "the SMTP load did not get going"
            # Two backups while both loads run: the box keeps answering meanwhile.
            edgebox("backup", "create", "--data", str(data), "--to", str(usb))
            during = len(accepted)
            edgebox("backup", "create", "--data", str(data), "--to", str(usb))
        finally:
            stop.set()
            for thread in loads:
                thread.join(60)
        assert len(accepted) > during, "no mail was accepted while the backup ran"
        edgebox("backup", "create", "--data", str(data), "--to", str(usb))
    finally:
        box.stop()
    backups = complete_backups(usb)
    assert len(backups) == 3
    words = _recovery_words(data)

    restored = tmp_path / "restored"
    done = edgebox("backup", "restore", "--data", str(restored), "--from", str(usb),
                   input=words + "\n")  # fmt: skip
    assert backups[-1].name in done.stdout
    again = start_box(restored)
    try:
        context = ssl.create_default_context(cafile=str(again.ca))
        client = imaplib.IMAP4_SSL("127.0.0.1", again.port("imaps"), ssl_context=context,
                                   timeout=30)  # fmt: skip
        client.login(boss, USERS[boss])
        _, count = client.select("INBOX", readonly=True)
        client.logout()
        assert int(count[0]) == sum(1 for n in range(len(accepted)) if n % 4 == 0)
        status, page = curl(again, "GET", f"/api/v1/rooms/{room['id']}/messages?limit=200",
                            token=token)  # fmt: skip
        assert status == 200, page
    finally:
        again.stop()

    original_mail = _mail_hashes(data)
    assert len(original_mail) == len(accepted)
    assert _mail_hashes(restored) == original_mail
    assert _chat_hashes(restored) == _chat_hashes(data)
    assert len(_chat_hashes(data)["messages"]) >= len(posted)

    # The first backup, taken mid-load, is a consistent earlier state: each message it
    # holds is one of the original's, byte for byte, and its blobs all decrypt.
    early = tmp_path / "early"
    edgebox("backup", "restore", "--data", str(early), "--from", str(backups[0]),
            "--key", words)  # fmt: skip
    early_mail = _mail_hashes(early)
    assert 40 <= len(early_mail) < len(original_mail)
    assert all(original_mail[k] == v for k, v in early_mail.items())

    # A wrong key: a clean refusal that names the problem, nothing created.
    wrong = edgebox("backup", "restore", "--data", str(tmp_path / "wrong"), "--from", str(usb),
                    "--key", key_to_words(secrets.token_bytes(32)), check=False)  # fmt: skip
    assert wrong.returncode == 1
    assert "wrong key" in wrong.stderr
    assert not (tmp_path / "wrong").exists()


@pytest.mark.slow
def test_sigkill_during_backup_leaves_nothing_a_restore_accepts(tmp_path: Path) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    init_box(data, DOMAIN, {})
    # Enough blob data that a backup takes a while: 160 blobs of 256 KiB.
    blobs = BlobStore(data / "blobs", load_data_key(data / "keys"))
    for n in range(160):
        blobs.put(n.to_bytes(4, "big") * 65536)
    words = _recovery_words(data)
    killed_midway = 0
    for round_no, delay in enumerate((0.0, 0.05, 0.2)):
        process = subprocess.Popen(
            [*EDGEBOX, "backup", "create", "--data", str(data), "--to", str(usb)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not any(usb.glob(f"{PARTIAL_PREFIX}*")) and time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                time.sleep(0.005)
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        complete = complete_backups(usb)
        target = tmp_path / f"restore-{round_no}"
        result = edgebox("backup", "restore", "--data", str(target), "--from", str(usb),
                         "--key", words, check=False)  # fmt: skip
        if complete:
            # The kill came after the rename: the backup is whole and restores.
            assert result.returncode == 0, result.stderr
        else:
            killed_midway += 1
            assert result.returncode == 1
            assert "no complete backup" in result.stderr
            assert not target.exists()
    assert killed_midway, "every backup finished before its SIGKILL; the test proved nothing"
    # The next backup clears what the killed ones left and restores.
    edgebox("backup", "create", "--data", str(data), "--to", str(usb))
    assert not any(usb.glob(f"{PARTIAL_PREFIX}*"))
    assert not any(usb.glob("blobs/*/.*.tmp"))
    final = tmp_path / "final"
    edgebox("backup", "restore", "--data", str(final), "--from", str(usb), "--key", words)
    assert sorted(p.name for p in (final / "blobs").glob("*/*/*")) == sorted(blobs.iter_ids())


@pytest.mark.slow
def test_edgebox_run_backs_up_to_the_configured_target(tmp_path: Path) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    init_box(data, DOMAIN, dict(list(USERS.items())[:1]))
    box = start_box(data, env={"EDGEBOX_BACKUP_TARGET": str(usb)})
    try:
        assert "backup running" in box.output
        # Never backed up, so the first backup is due at start; bounded wait for it.
        deadline = time.monotonic() + 60
        while not complete_backups(usb) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(complete_backups(usb)) == 1
    finally:
        box.stop()
    # What the health check reads: the last good backup, recorded after its rename.
    assert read_state(data)["last_name"] == complete_backups(usb)[0].name


@pytest.mark.slow
def test_restore_of_a_damaged_backup_names_the_part_from_the_command_line(
    tmp_path: Path,
) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    init_box(data, DOMAIN, dict(list(USERS.items())[:1]))
    blobs = BlobStore(data / "blobs", load_data_key(data / "keys"))
    blob_id = blobs.put(b"a message body " * 1000)
    edgebox("backup", "create", "--data", str(data), "--to", str(usb))
    words = _recovery_words(data)
    (backup,) = complete_backups(usb)
    for victim, part in [
        (usb / "blobs" / blob_id[:2] / blob_id, f"blob/{blob_id}"),
        (backup / "data" / "db" / "directory.sqlite", "db/directory.sqlite"),
        (backup / "manifest", "manifest"),
    ]:
        original = victim.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        victim.write_bytes(bytes(damaged))
        target = tmp_path / "restored"
        done = edgebox("backup", "restore", "--data", str(target), "--from", str(usb),
                       "--key", words, check=False)  # fmt: skip
        assert done.returncode == 1
        assert f"damaged backup: {part}: chunk 0 failed authentication" in done.stderr
        assert not target.exists()
        victim.write_bytes(original)
    edgebox("backup", "restore", "--data", str(tmp_path / "restored"), "--from", str(usb),
            "--key", words)  # fmt: skip
