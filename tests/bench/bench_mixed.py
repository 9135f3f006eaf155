"""Mixed benchmark: chat fan-out latency while SMTP ingest runs beside it on the same box.

The chat load is `bench_chat`'s (1,000 WebSocket streams in 20 rooms of 50, 200
messages/s posted over HTTPS, every (message, member) delivery timed and checked for
exactly-once). Beside it, one more load process sends mail into the same box's MX at a
fixed ``--smtp-rate`` (default 100 messages/s, 10 KiB each, one local recipient each,
the chat users in turn) over ``--smtp-sessions`` keep-alive smtplib sessions, paced
open-loop: each session sends on its own schedule and a late message goes at once, so
a slow server shows as a lower achieved rate and longer SMTP latencies, not as a
quietly lighter load. The SMTP load starts ``LEAD`` seconds before the first chat post
and ends after the last, so the whole chat window is under mail load.

Printed: the chat figures of `bench_chat` (median / p90 / p99 / max send-to-delivery),
the SMTP rate achieved over its window, SMTP per-message latency (MAIL FROM to the 250
after DATA, i.e. until edgebox fsynced it), refusals, and peak RSS of the server's
whole process tree. Targets (issue 21): chat p99 < 50 ms with SMTP at 100 msg/s;
peak RSS <= 256 MB.

Bounded: the SMTP sender stops after ``rate * (LEAD + seconds + TAIL)`` messages or
``SMTP_DEADLINE_SLACK`` seconds past its window, whichever comes first; the chat part
has `bench_chat`'s bounds.

    .venv/bin/python tests/bench/bench_mixed.py [--clients 1000] [--rate 200] [--smtp-rate 100]

What it is not: part of ``make test`` (pytest collects it only with ``-m bench``), nor a
comparison with a reference server (there is no chat reference here; the SMTP side
alone is `bench_smtp`'s). The load generators share the box's 2 cores with the server,
as they do in `bench_chat`. Results go to tests/bench/results/mixed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import smtplib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from tests.bench.bench_chat import HTTPS_BASE_PORT, drive, set_up
from tests.bench.common import (
    LISTEN_RE,
    MX_BASE_PORT,
    RESULTS_DIR,
    SENDER,
    RssSampler,
    commit,
    machine,
    running_edgebox,
    scratch_dir,
    write_results,
)
from tests.peers import LOOPBACK

RESULTS = RESULTS_DIR / "mixed.json"
#: Seconds of mail load before the first chat post, and after the last one.
LEAD = 2.0
TAIL = 1.0
#: How long past its planned window the SMTP sender may run before it gives up.
SMTP_DEADLINE_SLACK = 30.0


def _message(n: int, recipient: str, size: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: mixed load {n}\r\n"
        f"Message-ID: <mixed-{n}@sender.bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def smtp_session(port: int, recipients: list[str], interval: float, count: int, first: int,
                 step: int, start: float, deadline: float, size: int,
                 results: list[tuple[float, float, bool]]) -> None:  # fmt: skip
    """Send *count* messages on one keep-alive session, one every *interval* s from *start*.

    Message *k* of this session is number ``first + k * step`` overall and goes to the
    recipient of that number. Each result is (send time, seconds to the answer, 250?).
    """
    smtp = smtplib.SMTP(LOOPBACK, port, timeout=30)
    try:
        smtp.ehlo("load.sender.bench.test")
        for k in range(count):
            due = start + k * interval
            now = time.perf_counter()
            if now > deadline:
                return
            if due > now:
                time.sleep(due - now)
            n = first + k * step
            recipient = recipients[n % len(recipients)]
            sent = time.perf_counter()
            try:
                refused = smtp.sendmail(SENDER, [recipient], _message(n, recipient, size))
                ok = not refused
            except smtplib.SMTPException:
                ok = False
                smtp.rset()
            results.append((sent, time.perf_counter() - sent, ok))
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def smtp_load(port: int, recipients: list[str], rate: float, seconds: float, sessions: int,
              size: int, started: Any, out: str) -> None:  # fmt: skip
    """The SMTP load process: *rate* msg/s for *seconds* s over *sessions* sessions."""
    total = int(rate * seconds)
    interval = sessions / rate
    results: list[tuple[float, float, bool]] = []
    start = time.perf_counter() + 0.5  # time for every session to connect first
    deadline = start + seconds + SMTP_DEADLINE_SLACK
    threads = []
    for s in range(sessions):
        count = len(range(s, total, sessions))
        # Session s is offset by s/rate, so the sessions' messages interleave evenly.
        thread = threading.Thread(target=smtp_session, args=(
            port, recipients, interval, count, s, sessions, start + s / rate, deadline,
            size, results), daemon=True)  # fmt: skip
        thread.start()
        threads.append(thread)
    started.set()
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()) + 5)
    Path(out).write_text(json.dumps({"start": start, "planned": total, "results": results}))


def smtp_summary(report: dict[str, Any], planned_rate: float) -> dict[str, Any]:
    results = report["results"]
    accepted = [(t, d) for t, d, ok in results if ok]
    latencies = sorted(d for _, d in accepted)
    window = (max(t + d for t, d in accepted) - report["start"]) if accepted else 0.0

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "smtp_planned": report["planned"],
        "smtp_planned_msgs_per_s": planned_rate,
        "smtp_accepted": len(accepted),
        "smtp_refused": len(results) - len(accepted),
        "smtp_msgs_per_s": len(accepted) / window if window else 0.0,
        "smtp_ms_median": statistics.median(latencies) * 1000 if latencies else None,
        "smtp_ms_p99": pct(0.99) if latencies else None,
        "smtp_ms_max": latencies[-1] * 1000 if latencies else None,
    }


def mx_port(log_path: Path, offset: int) -> int:
    """The MX port edgebox says it bound, else the dev port + *offset*."""
    found = LISTEN_RE.search(log_path.read_text(errors="replace"))
    return int(found.group(2)) if found else MX_BASE_PORT + offset


def run(clients: int, rooms: int, rate: float, seconds: float, smtp_rate: float,
        smtp_sessions: int, smtp_size: int, work: Path, offset: int,
        processes: int = 2) -> dict[str, Any]:  # fmt: skip
    data = work / "data"
    print(f"[mixed] setting up {clients} users, {rooms} rooms ...", flush=True)
    setup = set_up(data, clients, rooms, work / "setup.json")
    recipients = list(setup["tokens"])
    log_path = work / "edgebox.log"
    mp = multiprocessing.get_context("fork")
    smtp_out = work / "smtp.json"
    smtp_seconds = LEAD + seconds + TAIL
    loader: list[Any] = []

    def start_mail() -> None:
        started = mp.Event()
        process = mp.Process(target=smtp_load, args=(
            mx_port(log_path, offset), recipients, smtp_rate, smtp_seconds, smtp_sessions,
            smtp_size, started, str(smtp_out)))  # fmt: skip
        process.start()
        loader.append(process)
        if not started.wait(60):
            raise RuntimeError("the SMTP load did not start")
        time.sleep(0.5 + LEAD)  # its sessions connect, then LEAD s of mail alone

    with running_edgebox(data, log_path, offset) as pid:
        with RssSampler(lambda: [pid]) as rss:
            print(f"[mixed] {clients} streams, chat {rate}/s for {seconds}s, "
                  f"SMTP {smtp_rate}/s ...", flush=True)  # fmt: skip
            result = drive(HTTPS_BASE_PORT + offset, data / "keys" / "ca.pem", setup, clients,
                           rate, seconds, work, processes, pid, start_mail)  # fmt: skip
            for process in loader:
                process.join(SMTP_DEADLINE_SLACK + 10)
                if process.is_alive():
                    process.kill()
        result["peak_rss_mb"] = rss.peak / 1e6
    if not smtp_out.exists():
        raise RuntimeError("the SMTP load left no report")
    result.update(smtp_summary(json.loads(smtp_out.read_text()), smtp_rate))
    result.update(smtp_sessions=smtp_sessions, smtp_size=smtp_size)
    result.update(commit=commit(), machine=machine())
    return result


def report(result: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        value = result.get(key)
        return "-" if value is None else f"{value:.1f}"

    return (
        f"chat: {result['deliveries']}/{result['expected_deliveries']} deliveries, "
        f"median {ms('latency_ms_median')} / p90 {ms('latency_ms_p90')} / "
        f"p99 {ms('latency_ms_p99')} / max {ms('latency_ms_max')} ms, "
        f"{result['sustained_msgs_per_s']:.1f} msg/s posted\n"
        f"smtp: {result['smtp_accepted']}/{result['smtp_planned']} accepted at "
        f"{result['smtp_msgs_per_s']:.1f} msg/s (planned {result['smtp_planned_msgs_per_s']:g}), "
        f"median {ms('smtp_ms_median')} / p99 {ms('smtp_ms_p99')} ms, "
        f"{result['smtp_refused']} refused\n"
        f"server CPU {result['server_cpu_s_per_s']:.2f} s/s, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB (whole tree)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200, help="chat messages/s")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--smtp-rate", type=float, default=100, help="SMTP messages/s")
    parser.add_argument("--smtp-sessions", type=int, default=10)
    parser.add_argument("--smtp-size", type=int, default=10240, help="bytes per message")
    parser.add_argument("--port-offset", type=int, default=3300)
    parser.add_argument("--processes", type=int, default=2, help="listener processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with scratch_dir("bench-mixed-") as work:
        result = run(args.clients, args.rooms, args.rate, args.seconds, args.smtp_rate,
                     args.smtp_sessions, args.smtp_size, work, args.port_offset,
                     args.processes)  # fmt: skip
    print(json.dumps(result, indent=2))
    print(report(result))
    write_results(args.out, result)
    return 0


@pytest.mark.bench
def test_bench_mixed(tmp_path: Path) -> None:
    result = run(100, 4, 20, 3, 10, 2, 2048, tmp_path, 3400)
    assert result["deliveries"] == result["expected_deliveries"]
    assert result["duplicate_deliveries"] == result["unexpected_deliveries"] == 0
    assert result["smtp_accepted"] == result["smtp_planned"]


if __name__ == "__main__":
    sys.exit(main())
