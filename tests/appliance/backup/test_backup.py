"""Backup and restore of a data directory in-process: contents, faults, increments, state."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from appliance.backup import service as service_module
from appliance.backup.crypto import BackupDamaged, ensure_backup_key, key_to_words, words_to_key
from appliance.backup.health import check_last_backup
from appliance.backup.restore import RestoreError, restore_backup, verify_backup
from appliance.backup.service import DailyBackup, read_state
from appliance.backup.snapshot import (
    BLOBS_DIR,
    PARTIAL_PREFIX,
    _copy_databases,
    complete_backups,
    create_backup,
    prune_backups,
)
from appliance.box import add_user, configured, init_box, open_box
from appliance.cli import main
from appliance.health import Level
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.store.database import connect

DOMAIN = "backup.go.th"
USERS = [f"user{i}@{DOMAIN}" for i in range(3)]
TRACE = Trace(helo="pc.backup.go.th", client_ip="192.0.2.9", protocol="ESMTP")


async def deliver(data: Path, count: int, tag: str) -> None:
    async with open_box(configured(data, {}, {})) as box:
        for n in range(count):
            body = f"Subject: {tag} {n}\r\n\r\n{tag} body {n} ".encode() + b"x" * (n * 997)
            to = USERS[n % len(USERS)]
            await box.delivery.deliver(
                Envelope(sender="a@far.example", recipients=[Recipient(to, local=True)],
                         trace=TRACE),
                body,
            )  # fmt: skip


async def contents(data: Path) -> dict[tuple[str, int], str]:
    """Each message's content hash by (owner, uid), read through the box's own store."""
    found = {}
    async with open_box(configured(data, {}, {})) as box:
        for user in USERS:
            for row in await box.mailstore.messages(user, "INBOX"):
                content = await box.mailstore.content(row)
                found[(user, row.uid)] = hashlib.sha256(content).hexdigest()
    return found


async def _make_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    await init_box(data, DOMAIN)
    async with open_box(configured(data, {}, {})) as box:
        for address in USERS:
            await add_user(box, address, "pw-" + address, name_th=address)
    await deliver(data, 6, "first")
    return data


@pytest.fixture
async def data(tmp_path: Path) -> Path:
    return await _make_data(tmp_path)


@pytest.fixture
def plain_data(tmp_path: Path) -> Path:
    """The same data directory, for tests that are not trio tests (the CLI runs its own)."""
    return trio.run(_make_data, tmp_path)


def _key(data: Path) -> bytes:
    return ensure_backup_key(data / "keys")


async def test_restore_brings_back_every_message_settings_and_keys(
    data: Path, tmp_path: Path
) -> None:
    report = create_backup(data, tmp_path / "usb")
    assert report.blobs == report.blobs_copied == 6
    restored = tmp_path / "restored"
    done = restore_backup(restored, tmp_path / "usb", _key(data))
    assert (done.files, done.blobs) == (report.files, 6)
    assert await contents(restored) == await contents(data)
    for rel in ("config.json", "keys/provisioning.secret", "keys/data.key.wrapped",
                "keys/ca.key.sealed"):  # fmt: skip
        assert (restored / rel).read_bytes() == (data / rel).read_bytes(), rel
    async with open_box(configured(restored, {}, {})) as box:
        assert {u.address for u in await box.directory.users(DOMAIN)} == set(USERS)


async def test_second_backup_copies_only_new_blobs(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "usb"
    create_backup(data, target)
    again = create_backup(data, target)
    assert (again.blobs, again.blobs_copied) == (6, 0)
    await deliver(data, 2, "second")
    third = create_backup(data, target)
    assert (third.blobs, third.blobs_copied) == (8, 2)
    assert len(complete_backups(target)) == 3
    # The oldest backup still restores: blobs are shared, never rewritten.
    oldest = complete_backups(target)[0]
    restore_backup(tmp_path / "r", oldest, _key(data))
    assert len(await contents(tmp_path / "r")) == 6


async def test_wrong_key_fails_cleanly_and_leaves_target_alone(data: Path, tmp_path: Path) -> None:
    create_backup(data, tmp_path / "usb")
    target = tmp_path / "blank"
    target.mkdir()
    with pytest.raises(RestoreError, match="wrong key"):
        restore_backup(target, tmp_path / "usb", bytes(32))
    assert list(target.iterdir()) == []
    assert _staging_leftovers(tmp_path) == []


def _staging_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".restore-" in p.name]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset % len(raw)] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("part", ["blob", "db/mail.sqlite", "db/chat.sqlite", "manifest",
                                  "keys/provisioning.secret"])  # fmt: skip
async def test_a_flipped_byte_fails_the_restore_naming_the_part(
    data: Path, tmp_path: Path, part: str
) -> None:
    create_backup(data, tmp_path / "usb")
    (backup,) = complete_backups(tmp_path / "usb")
    if part == "blob":
        victim = sorted((tmp_path / "usb" / BLOBS_DIR).glob("*/*"))[-1]
        expected = f"blob/{victim.name}"
    elif part == "manifest":
        victim, expected = backup / "manifest", "manifest"
    else:
        victim, expected = backup / "data" / part, part
    _flip(victim, victim.stat().st_size // 2)
    target = tmp_path / "restored"
    with pytest.raises(BackupDamaged) as caught:
        restore_backup(target, backup, _key(data))
    assert caught.value.part == expected
    assert "authentication" in caught.value.check
    assert not target.exists()
    assert _staging_leftovers(tmp_path) == []
    with pytest.raises(BackupDamaged):
        verify_backup(backup, _key(data))


async def test_a_missing_blob_is_named(data: Path, tmp_path: Path) -> None:
    create_backup(data, tmp_path / "usb")
    victim = sorted((tmp_path / "usb" / BLOBS_DIR).glob("*/*"))[0]
    victim.unlink()
    with pytest.raises(BackupDamaged, match="missing") as caught:
        restore_backup(tmp_path / "r", tmp_path / "usb", _key(data))
    assert caught.value.part == f"blob/{victim.name}"


async def test_unfinished_backup_is_ignored_then_removed(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "usb"
    create_backup(data, target)
    (good,) = complete_backups(target)
    # What a SIGKILL mid-backup leaves: a partial folder with some files, no rename.
    partial = target / f"{PARTIAL_PREFIX}29990101T000000Z"
    shutil.copytree(good, partial)
    (partial / "manifest").unlink()
    assert complete_backups(target) == [good]
    restore_backup(tmp_path / "r", target, _key(data))  # the newest *complete* one
    create_backup(data, target)
    assert not partial.exists()


async def test_restore_refuses_a_data_directory_in_use(data: Path, tmp_path: Path) -> None:
    create_backup(data, tmp_path / "usb")
    before = _names(data)
    with pytest.raises(RestoreError, match="not empty"):
        restore_backup(data, tmp_path / "usb", _key(data))
    assert _names(data) == before


async def test_daily_service_backs_up_when_due_and_records_it(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "usb"
    done = trio.Event()
    original = service_module.backup_and_record

    def recorded(data_dir: Path, to: Path, keep: int) -> str:
        name = original(data_dir, to, keep)
        trio.from_thread.run_sync(done.set)
        return name

    monkeypatch.setattr(service_module, "backup_and_record", recorded)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(DailyBackup(data, target, keep=3).serve)
            await done.wait()
            nursery.cancel_scope.cancel()
    state = read_state(data)
    assert [p.name for p in complete_backups(target)] == [state["last_name"]]
    assert state["last_error"] is None


def test_health_check_warns_after_two_days(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (data / "backup").mkdir(parents=True)
    assert check_last_backup(data, "", 0).level is Level.WARN
    assert check_last_backup(data, "/media/usb", 0).level is Level.WARN  # never backed up
    now = time.time()
    (data / "backup" / "state.json").write_text(json.dumps({"last_good": now - 3600,
                                                            "last_name": "x"}))  # fmt: skip
    fresh = check_last_backup(data, "/media/usb", now)
    assert fresh.level is Level.OK
    assert fresh.th
    stale = check_last_backup(data, "/media/usb", now + 2 * 86400)
    assert stale.level is Level.WARN
    assert "days" in stale.en
    assert "วัน" in stale.th


def test_cli_prints_the_recovery_sheet_with_a_qr_code(
    plain_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qr = tmp_path / "key.svg"
    assert main(["backup", "key", "--data", str(plain_data), "--qr", str(qr)]) == 0
    lines = capsys.readouterr().out.splitlines()
    words = next(line for line in lines if len(line.split()) == 17)
    assert words_to_key(words) == _key(plain_data)
    assert qr.read_text().lstrip().startswith("<?xml")


def test_cli_restore_of_a_damaged_backup_names_the_file_and_check(
    plain_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usb = tmp_path / "usb"
    assert main(["backup", "create", "--data", str(plain_data), "--to", str(usb)]) == 0
    (backup,) = complete_backups(usb)
    _flip(backup / "data" / "db" / "mail.sqlite", 100)
    words = key_to_words(_key(plain_data))
    target = tmp_path / "r"
    capsys.readouterr()
    code = main(["backup", "restore", "--data", str(target), "--from", str(usb), "--key", words])
    assert code == 1
    error = capsys.readouterr().err
    assert "db/mail.sqlite: chunk 0 failed authentication" in error
    assert "left untouched" in error
    assert not target.exists()
    assert main(["backup", "verify", "--data", str(plain_data), "--from", str(usb)]) == 1
    assert "db/mail.sqlite" in capsys.readouterr().out


async def test_a_box_without_mail_backs_up_and_restores(tmp_path: Path) -> None:
    data = tmp_path / "empty"
    await init_box(data, DOMAIN)
    report = create_backup(data, tmp_path / "usb")
    assert report.blobs == 0
    restore_backup(tmp_path / "r", tmp_path / "usb", _key(data))
    assert await contents(tmp_path / "r") == {}


async def test_a_second_backup_at_the_same_time_is_refused(data: Path, tmp_path: Path) -> None:
    from appliance.backup.snapshot import BackupError, _exclusive

    with _exclusive(data / "backup" / "lock"), pytest.raises(BackupError, match="another"):
        create_backup(data, tmp_path / "usb")
    assert complete_backups(tmp_path / "usb") == []
    create_backup(data, tmp_path / "usb")  # the lock went with its holder


def test_pruning_keeps_the_newest_and_only_their_blobs(plain_data: Path, tmp_path: Path) -> None:
    usb, data = tmp_path / "usb", plain_data
    first = create_backup(data, usb, now=1_000_000)
    second = create_backup(data, usb, now=1_000_100)
    # A blob only the first two backups hold: gone from the box before the third.
    gone = sorted(data.glob("blobs/*/*/*"))[0]
    gone.rename(tmp_path / "aside")
    third = create_backup(data, usb, now=1_000_200)
    assert third.blobs == 5
    assert prune_backups(usb, _key(data), keep=1) == [first.name, second.name]
    assert [b.name for b in complete_backups(usb)] == [third.name]
    assert not (usb / BLOBS_DIR / gone.name[:2] / gone.name).exists()
    assert len(list((usb / BLOBS_DIR).glob("*/*"))) == 5
    verify_backup(usb, _key(data))
    assert prune_backups(usb, _key(data), keep=1) == []


def test_pruning_sweeps_no_blob_when_a_kept_manifest_is_unreadable(
    plain_data: Path, tmp_path: Path
) -> None:
    usb = tmp_path / "usb"
    create_backup(plain_data, usb, now=1_000_000)
    create_backup(plain_data, usb, now=1_000_100)
    _flip(complete_backups(usb)[-1] / "manifest", 40)
    before = len(list((usb / BLOBS_DIR).glob("*/*")))
    assert len(prune_backups(usb, _key(plain_data), keep=1)) == 1
    assert len(list((usb / BLOBS_DIR).glob("*/*"))) == before


async def test_daily_service_survives_a_failed_backup_and_tries_again(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = trio.Event()
    calls: list[str] = []
    original = service_module.backup_and_record

    def flaky(data_dir: Path, to: Path, keep: int) -> str:
        calls.append("try")
        if len(calls) == 1:
            raise OSError("No space left on device")
        name = original(data_dir, to, keep)
        trio.from_thread.run_sync(done.set)
        return name

    monkeypatch.setattr(service_module, "backup_and_record", flaky)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(DailyBackup(data, tmp_path / "usb", retry=0.01).serve)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert calls == ["try", "try"]
    assert read_state(data)["last_good"]


def test_a_snapshot_in_the_serving_process_keeps_its_database_locks(tmp_path: Path) -> None:
    """The backup runs inside the box: it must not drop the box's locks on a database.

    Closing any descriptor of a file drops all of a process's POSIX locks on it, so a
    snapshot that opened the file itself let another process (here: a short reader, as
    `edgebox status` is) take the database for the last user, checkpoint it and delete
    the WAL under the box's writer, whose later commits then went into a deleted file.
    """
    data = tmp_path / "data"
    db = data / "db" / "mail.sqlite"
    db.parent.mkdir(parents=True)
    writer = connect(db)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = connect(db)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
    (tmp_path / "partial").mkdir()
    _copy_databases(data, tmp_path / "partial", b"k" * 32)

    other = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT 1 FROM t'); c.close()"
    )
    subprocess.run([sys.executable, "-c", other, str(db)], check=True, timeout=60)
    assert Path(f"{db}-wal").exists()  # still the box's: nobody else checkpointed it away
    writer.execute("INSERT INTO t VALUES (2)")
    writer.close()
    reader.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone() == (2,)
