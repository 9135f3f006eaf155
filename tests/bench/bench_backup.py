"""Backup benchmark: back up and restore a generated 500-user office's data.

Builds a data directory in-process (500 users, 4 messages each in their INBOX: three
small notes and, for one user in five, a 300 KB attachment), then times:

- a full backup onto an empty target (MB/s over the bytes backed up: database snapshots,
  settings, keys, log and blobs);
- a second backup after 50 new messages (the incremental case: only new blobs copy);
- `verify` of the newest backup and a restore onto a blank directory (MB/s).

`test_bench_backup_to_and_from_the_hub` backs the same office up to a real hub
(``edgebox run --role hub`` on loopback; mutual TLS, the sync API's JSON pieces) with no
rate limit, then again after 50 new messages, then restores it from the hub onto a blank
directory the way a technician does (a fresh enrolment token, re-enrolment as the old
box, fetch, restore): MB/s over the bytes sent and restored.

The figures go to tests/bench/results/backup.json (backup-hub.json) and
docs/BENCHMARKS.md. Not part of `make test`:

    .venv/bin/python -m pytest tests/bench/bench_backup.py -m bench -s
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from appliance.backup.crypto import ensure_backup_key
from appliance.backup.hub_restore import restore_from_hub
from appliance.backup.offsite.upload import OffsiteReport, create_offsite_backup
from appliance.backup.restore import restore_backup, verify_backup
from appliance.backup.snapshot import create_backup
from appliance.box import add_user, configured, init_box, open_box
from appliance.identity import read_identity
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.sync.hub_client import HubClient
from tests.bench.common import RESULTS_DIR, commit, machine, write_results
from tests.harness import edgebox, start_box
from tests.harness import init_box as init_cli_box

DOMAIN = "office.go.th"
USERS = 500
MESSAGES_PER_USER = 4
ATTACHMENT = 300 * 1024
RESULTS = RESULTS_DIR / "backup.json"
HUB_RESULTS = RESULTS_DIR / "backup-hub.json"
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


async def _offsite(data: Path, url: str) -> OffsiteReport:
    client = HubClient(data / "keys", url, timeout=300)
    try:
        # No rate limit: the figure is what the path itself costs.
        return await create_offsite_backup(data, client, rate=1e12)
    finally:
        await client.aclose()


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_bench_backup_to_and_from_the_hub(tmp_path: Path) -> None:
    data, hub_data = tmp_path / "data", tmp_path / "hub"
    trio.run(_office, data)
    data_bytes = _size(data)
    init_cli_box(hub_data, "hub.go.th", {})
    hub = start_box(hub_data, extra=["--role", "hub"])
    try:
        url = f"https://127.0.0.1:{hub.port('hub-sync')}"

        def token() -> str:
            issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", DOMAIN)
            return issued.stdout.strip().splitlines()[-1]

        edgebox("enroll", "--data", str(data), "--hub", url, "--token", token())
        full = trio.run(_offsite, data, url)
        full_rate = full.bytes_sent / 1e6 / full.seconds
        print(f"\nfull backup to the hub: {full.bytes_sent / 1e6:.1f} MB sent "
              f"({full.files} files, {full.blobs} blobs) in {full.seconds:.2f} s "
              f"= {full_rate:.1f} MB/s")  # fmt: skip

        trio.run(_deliver, data, random.Random(21), [(u, 9) for u in range(50)])
        second = trio.run(_offsite, data, url)
        sent_mb = second.bytes_sent / 1e6
        print(f"second backup after 50 new messages: {second.blobs_sent} of {second.blobs} "
              f"blobs sent, {sent_mb:.1f} MB sent in {second.seconds:.2f} s")  # fmt: skip

        key = ensure_backup_key(data / "keys")
        identity = read_identity(data)
        assert identity is not None
        began = time.perf_counter()
        done = trio.run(
            lambda: restore_from_hub(tmp_path / "restored", url, token(), identity.box_id,
                                     DOMAIN, key)
        )  # fmt: skip
        restore_s = time.perf_counter() - began
        restored = done.restored
        rate = restored.bytes / 1e6 / restore_s
        print(f"restore from the hub (re-enrol, fetch, check, restore): "
              f"{restored.bytes / 1e6:.1f} MB in {restore_s:.2f} s = {rate:.1f} MB/s "
              f"(of which the local restore {restored.seconds:.2f} s)")  # fmt: skip
    finally:
        hub.stop()
    hub_bytes = _size(hub_data / "backups")
    write_results(HUB_RESULTS, {
        "benchmark": "backup to and restore from the hub of a 500-user office",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "params": {"users": USERS, "messages_per_user": MESSAGES_PER_USER,
                   "attachment_bytes": ATTACHMENT, "rate_limit": None},
        "machine": machine(),
        "commit": commit(),
        "data_dir_mb": round(data_bytes / 1e6, 1),
        "full": {"mb_sent": round(full.bytes_sent / 1e6, 1), "s": round(full.seconds, 2),
                 "mb_s": round(full_rate, 1), "blobs": full.blobs},
        "second": {"blobs_sent": second.blobs_sent, "blobs": second.blobs,
                   "mb_sent": round(second.bytes_sent / 1e6, 1), "s": round(second.seconds, 2)},
        "restore": {"mb": round(restored.bytes / 1e6, 1), "s": round(restore_s, 2),
                    "mb_s": round(rate, 1), "local_restore_s": round(restored.seconds, 2)},
        "hub_mb": round(hub_bytes / 1e6, 1),
    })  # fmt: skip
    assert second.blobs_sent == 50
