"""Outbound relay benchmark: box A's mail queue to the hub's submission port, mail only.

The mail half of bench_catchup, alone, so where the time goes per relayed mail can be
seen: the same hub (``hub.go.th``, central SMTP server for ``b.go.th``), the same box A
(enrolled, its users known at the hub), the same mails (`bench_catchup.make_mail`),
but no chat backlog and, by default, no throttled line: the figure is how many mails per
second the two processes can move, and the CPU seconds each spends per mail (from
/proc, all threads). ``--link BITS`` puts a 10 Mbit/s-style proxy in between;
``--profile`` records py-spy flame graphs of both processes (idle threads excluded).

    .venv/bin/python tests/bench/bench_relay.py --mails 2000
    .venv/bin/python tests/bench/bench_relay.py --mails 2000 --profile /tmp/prof
    .venv/bin/python tests/bench/bench_relay.py --prepared /tmp/relay-setup   # reuse set-up

Not part of ``make test``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from tests.bench.bench_catchup import (
    RECIPIENTS,
    Uplink,
    _add_users,
    directory_count,
    halt,
    hub_mail_arrived,
    hub_mail_count,
    log,
    make_mail,
    wait_until,
)
from tests.bench.common import RssSampler, commit, cpu_seconds
from tests.harness import edgebox, start_box

USERS = 50
FAST = {"EDGEBOX_LINK_PROBE_INTERVAL": "2", "EDGEBOX_SYNC_INTERVAL": "5"}
QUIET = {"EDGEBOX_SYNC_INTERVAL": "600"}


def prepare(root: Path) -> None:
    """A hub with b.go.th and box A with its users, enrolled, directory in step."""
    hub_data, a_data = root / "hub", root / "a"
    edgebox("init", "--data", str(hub_data), "--domain", "hub.go.th")
    edgebox("init", "--data", str(a_data), "--domain", "a.go.th")
    trio.run(_add_users, hub_data, "b.go.th", "person", RECIPIENTS)
    trio.run(_add_users, a_data, "a.go.th", "user", USERS)
    hub = start_box(hub_data, extra=["--role", "hub"], env=FAST)
    try:
        token = (
            edgebox("hub", "token", "--data", str(hub_data), "--agency", "a.go.th")
            .stdout.strip()
            .splitlines()[-1]
        )
        hub_url = f"https://127.0.0.1:{hub.port('hub-sync')}"
        edgebox("enroll", "--data", str(a_data), "--hub", hub_url, "--token", token)
        a = start_box(a_data, env=FAST)
        try:
            wait_until(
                "A's users at the hub", lambda: directory_count(hub_data, "a.go.th") >= USERS, 300
            )
            wait_until(
                "b.go.th on A", lambda: directory_count(a_data, "b.go.th") >= RECIPIENTS, 300
            )
            time.sleep(3)
        finally:
            halt(a)
    finally:
        hub.stop()


async def queue_mails(a_data: Path, mails: int, seed: int) -> dict[str, int]:
    from appliance.box import configured, open_box
    from appliance.mail.delivery import Delivery, Envelope, Recipient, Trace

    figures = {"mails": 0, "copies": 0, "bytes": 0}
    async with open_box(configured(a_data, {}, {})) as box:
        delivery = Delivery(box.directory, box.mailstore, box.hostname)
        trace = Trace("pc-42.a.go.th", "192.168.1.42", "ESMTPSA")

        async def deliver_from(indexes: range) -> None:
            for index in indexes:
                mail = make_mail(index, seed)
                sender = f"user{index % USERS:03d}@a.go.th"
                content = mail.content.replace(mail.sender.encode(), sender.encode(), 1)
                envelope = Envelope(
                    sender, [Recipient(r, local=False) for r in mail.recipients], trace
                )
                await delivery.deliver(envelope, content)
                figures["mails"] += 1
                figures["copies"] += len(mail.recipients)
                figures["bytes"] += len(content)

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(deliver_from, range(w, mails, 8))
    return figures


def py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    tool = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if tool is None:
        return None
    return subprocess.Popen(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "50",
            "--format",
            "raw",
            "--output",
            str(out),
            "--threads",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        if args.prepared and Path(args.prepared).exists():
            shutil.copytree(args.prepared, root, dirs_exist_ok=True)
        else:
            prepare(root)
            if args.prepared:
                shutil.copytree(root, args.prepared)
        hub_data, a_data = root / "hub", root / "a"
        backlog = trio.run(queue_mails, a_data, args.mails, args.seed)
        log(f"queued {backlog}")
        hub = start_box(hub_data, extra=["--role", "hub"], env=QUIET)
        spies = []
        try:
            base = hub_mail_arrived(hub_data)
            targets = {"hub-sync": hub.port("hub-sync"), "smtp": hub.port("smtp-submission")}
            with Uplink(targets, args.link or 10**12, full_duplex=args.full_duplex) as line:
                env = {
                    **QUIET,
                    "EDGEBOX_HUB_URL": f"https://127.0.0.1:{line.port('hub-sync')}",
                    "EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{line.port('smtp')}",
                }
                hub_cpu0 = cpu_seconds(hub.process.pid)
                with RssSampler(lambda: [hub.process.pid], interval=0.2) as hub_rss:
                    started = time.monotonic()
                    a = start_box(a_data, env=env)
                    if args.profile:
                        out = Path(args.profile)
                        out.mkdir(parents=True, exist_ok=True)
                        spies = [
                            py_spy(hub.process.pid, out / "hub.txt"),
                            py_spy(a.process.pid, out / "a.txt"),
                        ]
                    try:
                        done = wait_until(
                            "mail at the hub",
                            lambda: hub_mail_arrived(hub_data) - base >= backlog["copies"],
                            3600,
                            0.25,
                        )
                        a_cpu = cpu_seconds(a.process.pid)
                        hub_cpu = cpu_seconds(hub.process.pid) - hub_cpu0
                        wire = sum(line.wire().values())
                    finally:
                        for spy in spies:
                            if spy is not None:
                                spy.send_signal(2)
                                spy.wait(60)
                        halt(a)
            elapsed = done - started
            got, distinct = hub_mail_count(hub_data)
        finally:
            hub.stop()
        return {
            "mails": backlog["mails"],
            "copies": backlog["copies"],
            "bytes": backlog["bytes"],
            "seconds": round(elapsed, 2),
            "mails_per_s": round(backlog["mails"] / elapsed, 1),
            "kbytes_per_s": round(backlog["bytes"] / elapsed / 1024, 1),
            "wire_bytes": wire,
            "hub_cpu_ms_per_mail": round(hub_cpu * 1000 / backlog["mails"], 2),
            "box_cpu_ms_per_mail": round(a_cpu * 1000 / backlog["mails"], 2),
            "hub_peak_rss_mb": round(hub_rss.peak / 2**20, 1),
            "copies_at_hub": got - base,
            "distinct_at_hub": distinct,
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--link", type=float, default=0, help="bits/s; 0 = unthrottled")
    parser.add_argument("--full-duplex", action="store_true", help="the rate each way")
    parser.add_argument("--profile", help="directory for py-spy raw stacks (hub.txt, a.txt)")
    parser.add_argument("--prepared", help="keep/reuse the set-up (hub, enrolled A) here")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"commit": commit(), **run(args)}, indent=1))


if __name__ == "__main__":
    main()
