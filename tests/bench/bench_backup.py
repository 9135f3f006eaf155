"""Backup benchmark: back up and restore a generated 500-user office's data.

Builds a data directory in-process (500 users, 4 messages each in their INBOX: three
small notes and, for one user in five, a 300 KB attachment), then times:

- a full backup onto an empty target (MB/s over the bytes backed up: database snapshots,
  settings, keys, log and blobs);
- a second backup after 50 new messages (the incremental case: only new blobs copy);
- `verify` of the newest backup and a restore onto a blank directory (MB/s).

The figures go to tests/bench/results/backup.json and docs/BENCHMARKS.md. Not part of
`make test`:

    .venv/bin/python -m pytest tests/bench/bench_backup.py -m bench -s
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from appliance.backup.crypto import ensure_backup_key
from appliance.backup.restore import restore_backup, verify_backup
from appliance.backup.snapshot import create_backup
from appliance.box import add_user, configured, init_box, open_box
from appliance.mail.delivery import Envelope, Recipient, Trace
from tests.bench.common import RESULTS_DIR, commit, machine, write_results

DOMAIN = "office.go.th"
USERS = 500
MESSAGES_PER_USER = 4
ATTACHMENT = 300 * 1024
RESULTS = RESULTS_DIR / "backup.json"
TRACE = Trace(helo="hub.go.th", client_ip="192.0.2.1", protocol="ESMTPS")


def _message(rng: random.Random, user: int, n: int) -> bytes:
    head = f"From: staff{rng.randrange(USERS)}@{DOMAIN}\r\nSubject: หนังสือเวียน {user}-{n}\r\n"
    if n == 3 and user % 5 == 0:
        blob = rng.randbytes(ATTACHMENT * 3 // 4)
        import base64

        body = base64.encodebytes(blob).replace(b"\n", b"\r\n")
        return (head + "Content-Type: application/pdf\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body  # fmt: skip
    text = ("ขอเชิญประชุมคณะกรรมการ งบประมาณประจำปี " * rng.randrange(5, 120)).encode()
    return head.encode() + b"\r\n" + text + b"\r\n"


async def _deliver(data: Path, rng: random.Random, jobs: list[tuple[int, int]]) -> None:
    async with open_box(configured(data, {}, {})) as box:
        limiter = trio.Semaphore(32)

        async def one(user: int, n: int) -> None:
            async with limiter:
                to = Recipient(f"user{user}@{DOMAIN}", local=True)
                await box.delivery.deliver(
                    Envelope(sender=f"a@{DOMAIN}", recipients=[to], trace=TRACE),
                    _message(rng, user, n),
                )

        async with trio.open_nursery() as nursery:
            for user, n in jobs:
                nursery.start_soon(one, user, n)


async def _office(data: Path) -> None:
    await init_box(data, DOMAIN)
    async with open_box(configured(data, {}, {})) as box:
        for user in range(USERS):
            await add_user(box, f"user{user}@{DOMAIN}", f"password-{user}-x", name_th=f"ผู้ใช้ {user}")
    rng = random.Random(20)
    await _deliver(data, rng, [(u, n) for u in range(USERS) for n in range(MESSAGES_PER_USER)])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_bench_backup_500_users(tmp_path: Path) -> None:
    data, usb = tmp_path / "data", tmp_path / "usb"
    started = time.perf_counter()
    trio.run(_office, data)
    generated = time.perf_counter() - started
    data_bytes = _size(data)
    print(f"\ngenerated {USERS} users × {MESSAGES_PER_USER} messages: "
          f"{data_bytes / 1e6:.1f} MB in {generated:.0f} s")  # fmt: skip

    full = create_backup(data, usb)
    full_bytes = full.file_bytes + full.blob_bytes_copied
    print(f"full backup: {full_bytes / 1e6:.1f} MB ({full.files} files, {full.blobs} blobs) "
          f"in {full.seconds:.2f} s = {full_bytes / 1e6 / full.seconds:.1f} MB/s")  # fmt: skip

    trio.run(_deliver, data, random.Random(21), [(u, 9) for u in range(50)])
    second = create_backup(data, usb)
    print(f"second backup after 50 new messages: {second.blobs_copied} of {second.blobs} "
          f"blobs copied, {second.file_bytes / 1e6:.1f} MB of files, "
          f"{second.seconds:.2f} s")  # fmt: skip

    key = ensure_backup_key(data / "keys")
    began = time.perf_counter()
    verify_backup(usb, key)
    verified = time.perf_counter() - began
    restored = restore_backup(tmp_path / "restored", usb, key)
    rate = restored.bytes / 1e6 / restored.seconds
    print(f"verify: {verified:.2f} s; restore: {restored.bytes / 1e6:.1f} MB in "
          f"{restored.seconds:.2f} s = {rate:.1f} MB/s")  # fmt: skip
    target_bytes = _size(usb)
    print(f"target size after two backups: {target_bytes / 1e6:.1f} MB")
    write_results(RESULTS, {
        "benchmark": "backup and restore of a 500-user office",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "params": {"users": USERS, "messages_per_user": MESSAGES_PER_USER,
                   "attachment_bytes": ATTACHMENT},
        "machine": machine(),
        "commit": commit(),
        "data_dir_mb": round(data_bytes / 1e6, 1),
        "full": {"mb": round(full_bytes / 1e6, 1), "s": round(full.seconds, 2),
                 "mb_s": round(full_bytes / 1e6 / full.seconds, 1), "blobs": full.blobs},
        "second": {"blobs_copied": second.blobs_copied, "blobs": second.blobs,
                   "file_mb": round(second.file_bytes / 1e6, 1), "s": round(second.seconds, 2)},
        "verify_s": round(verified, 2),
        "restore": {"mb": round(restored.bytes / 1e6, 1), "s": round(restored.seconds, 2),
                    "mb_s": round(restored.bytes / 1e6 / restored.seconds, 1)},
        "target_mb": round(target_bytes / 1e6, 1),
    })  # fmt: skip
    assert second.blobs_copied == 50
