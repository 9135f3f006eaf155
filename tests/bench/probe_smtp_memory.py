"""Memory of the MX under concurrent large messages, in one process (issue 21's probe).

Opens a box in this process, serves its MX on loopback and sends SESSIONS messages of
SIZE bytes at once, each from its own process with smtplib; meanwhile samples the
process's RSS every 20 ms (psutil) and traces Python's allocations (tracemalloc's
peak). Run it with the budget of message bytes at its default and with the budget
out of the way to see what the budget bounds:

    .venv/bin/python tests/bench/probe_smtp_memory.py              # default budget
    .venv/bin/python tests/bench/probe_smtp_memory.py --budget 0   # unbounded

What it is not: a throughput benchmark (bench_smtp.py) or a test (no assertions).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path

import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.box import add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.smtp.budget import DEFAULT_BUDGET, MessageBudget
from appliance.mail.smtp.policy import Port
from appliance.protection.authentication import InboundAuthenticator
from appliance.registry import smtp_service
from appliance.store.database import limit_allocator_retention
from tests.appliance.protection.records import DictResolver
from tests.harness import free_port_offset

DOMAIN = "a.go.th"
RCPT = f"somchai@{DOMAIN}"


def message(number: int, size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    head = (
        f"From: x@ok.go.th\r\nTo: {RCPT}\r\nSubject: probe {number}\r\n"
        f"Message-ID: <probe-{number}@ok.go.th>\r\n\r\n"
    ).encode()
    return head + line * (size // len(line))


#: The client, in a process of its own: smtplib's copies of what it sends (dot-quoting,
#: line endings) must not count in the box's memory.
CLIENT = """
import smtplib, sys
content = open(sys.argv[2], "rb").read()
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=300) as client:
    client.ehlo("client.ok.go.th")
    client.mail("x@ok.go.th")
    client.rcpt(sys.argv[3])
    sys.exit(0 if client.data(content)[0] == 250 else 1)
"""


async def probe(data: Path, sessions: int, size: int, budget_bytes: int) -> None:
    await init_box(data, DOMAIN, None)
    config = load_config(data, flags={"port_offset": free_port_offset()})
    process = psutil.Process()
    async with open_box(config) as box, trio.open_nursery() as nursery:
        await add_user(box, RCPT, "x-2569", name_th="สมชาย")
        budget = MessageBudget(budget_bytes or 1 << 40)
        service = smtp_service(box, Port.MX, budget)
        service.authenticate = InboundAuthenticator(
            box.hostname, DictResolver({"ok.go.th": "v=spf1 ip4:127.0.0.1 -all"})
        )
        await nursery.start(service.serve)
        port = box.config.port(service.name)
        files = []
        for n in range(sessions):
            files.append(data.parent / f"message-{n}.eml")
            files[-1].write_bytes(message(n, size))
        base = process.memory_info().rss
        tracemalloc.start()
        tracemalloc.reset_peak()
        traced_base = tracemalloc.get_traced_memory()[0]
        peak = base
        done = trio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                await trio.sleep(0.02)

        nursery.start_soon(sample)
        codes: list[int] = []

        async def client(path: Path) -> None:
            argv = [sys.executable, "-c", CLIENT, str(port), str(path), RCPT]
            done = await trio.run_process(argv, check=False)
            codes.append(250 if done.returncode == 0 else done.returncode)

        with trio.fail_after(600):
            async with trio.open_nursery() as clients:
                for path in files:
                    clients.start_soon(client, path)
        done.set()
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"sessions={sessions} size={size} budget={budget_bytes or 'none'}"
            f" codes={sorted(set(codes))} budget_peak={budget.peak / 2**20:.1f} MiB"
            f" waited={budget.waited}\n"
            f"RSS before {base / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB"
            f" (+{(peak - base) / 2**20:.1f}); tracemalloc peak"
            f" +{(traced_peak - traced_base) / 2**20:.1f} MB over the messages sent"
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="0: unbounded")
    args = ap.parse_args()
    # As `edgebox run` does first thing (appliance.cli).
    limit_allocator_retention()
    with tempfile.TemporaryDirectory(prefix="probe-smtp-") as tmp:
        trio.run(probe, Path(tmp) / "data", args.sessions, args.size, args.budget)


if __name__ == "__main__":
    main()
