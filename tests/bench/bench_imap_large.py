"""Large-mailbox IMAP benchmark: 100,000 messages in one mailbox, edgebox beside Dovecot.

The issue's large-mailbox goals, measured: SELECT and ``UID FETCH 1:* (FLAGS)`` on a
100,000-message INBOX, memory per session that does not grow with the mailbox, and
SEARCH (Thai substrings through the encrypted trigram index, and flag keys) answering
in well under a second.

Set-up (not timed): one user with INBOX of ``--messages`` (default 100,000) and a
folder "Small" of ``--small`` (default 10,000) messages of ~2 KB with Thai subjects and
bodies from a fixed seed. edgebox is filled in-process through `Mailboxes.append` — the
same code path as IMAP APPEND, search indexing included — with fsync turned off for the
fill only (fsync costs are the SMTP benchmark's subject; here they would only make the
set-up take an hour). Dovecot gets the same messages written straight into its Maildir,
then one untimed SELECT so its index exists, as it would on a live server.

Measured over IMAPS, alternating servers, median of ``--rounds``:

- ``select_large``: SELECT INBOX (100k) on a signed-in connection;
- ``fetch_flags_large``: ``UID FETCH 1:* (FLAGS)`` on it;
- ``session_memory``: server RSS growth with ``--sessions`` connections holding
  INBOX selected, per session, against the same for "Small" (10x fewer messages) —
  the ratio of the two says whether memory grows with mailbox size;
- ``search_*``: SEARCH on INBOX with Thai SUBJECT/BODY/TEXT substrings of 3+
  characters, a 2-character query (scan path), FROM, and UNSEEN.

What it is not: part of ``make test``; run it directly (``make bench`` does):

    .venv/bin/python tests/bench/bench_imap_large.py [--messages 100000] [--rounds 3]

Results are printed and written to tests/bench/results/imap_large.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import imaplib
import os
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from email.utils import format_datetime
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from tests.bench.bench_imap import _IMAPS, TLS_NAME, _ok
from tests.bench.common import (
    REPO,
    RESULTS_DIR,
    commit,
    edgebox_exe,
    machine,
    ratio,
    running_edgebox,
    scratch_dir,
    timed,
    tree_memory,
    wait_until_idle,
    write_results,
)
from tests.peers import LOOPBACK, PeerError, require_binary
from tests.peers.dovecot import DovecotServer

RESULTS = RESULTS_DIR / "imap_large.json"
DOMAIN = "bench.go.th"
USER = f"reader@{DOMAIN}"
PASSWORD = "bench-reader-2026"
IMAPS_BASE_PORT = 2993
SEED = 100_000

SUBJECTS = ["รายงานผลการดำเนินงาน", "ขออนุมัติเดินทางไปราชการ", "ประชุมคณะกรรมการ",
            "แจ้งเวียนหนังสือราชการ", "งบประมาณประจำปี", "คำสั่งแต่งตั้ง", "Budget review",
            "สรุปการประชุม"]  # fmt: skip
PROVINCES = ["เชียงใหม่", "ขอนแก่น", "สงขลา", "นครราชสีมา", "ภูเก็ต", "อุบลราชธานี", "ลำปาง"]
WORDS = ["ราชการ", "โครงการ", "ดำเนินการ", "เอกสาร", "รายละเอียด", "ผู้อำนวยการ", "จังหวัด",
         "หน่วยงาน", "การประชุม", "ข้อมูล", "the", "report", "meeting", "schedule"]  # fmt: skip
#: (name, SEARCH key, its string sent as a UTF-8 literal or None): the index answers
#: the strings of 3+ characters; the 2-character one takes the scan path.
SEARCHES = [
    ("search_subject_thai", "SUBJECT", "เดินทางไปราชการ"),
    ("search_body_thai", "BODY", "เอกสาร รายละเอียด"),
    ("search_text_rare", "TEXT", "รหัสโครงการ-73131"),
    ("search_from", "FROM", "somsak"),
    ("search_two_chars", "SUBJECT", "งบ"),
    ("search_unseen", "UNSEEN", None),
]


def make_message(i: int, rng: random.Random) -> bytes:
    sender = rng.choice(["somsak", "malee", "pracha", "wanida", "director"])
    when = format_datetime(dt.datetime.fromtimestamp(1_700_000_000 + i * 60, dt.UTC))
    subject = f"{rng.choice(SUBJECTS)} {rng.choice(PROVINCES)} ฉบับที่ {i}"
    body_words = [rng.choice(WORDS) for _ in range(rng.randint(150, 260))]
    if i % 1000 == 731:
        body_words.append(f"รหัสโครงการ-{i * 100 + 31}")
    body = "\n".join(textwrap.wrap(" ".join(body_words), 70))
    text = (
        f"From: {sender}@{DOMAIN}\r\nTo: {USER}\r\nSubject: {subject}\r\nDate: {when}\r\n"
        f"Message-ID: <large-{i}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
    )
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def messages(count: int, seed: int) -> Iterator[tuple[bytes, bool]]:
    """(message, seen?) pairs; about a third unseen."""
    rng = random.Random(seed)
    for i in range(count):
        yield make_message(i, rng), rng.random() > 0.33


# -- filling -------------------------------------------------------------------------

FILL_SCRIPT = r"""
import os, sys, trio, pickle
os.fsync = lambda fd: None   # set-up only: see the module docstring
from appliance.box import configured, open_box
from appliance.mail.mailboxes import Mailboxes
sys.path.insert(0, sys.argv[4])
from tests.bench.bench_imap_large import messages

async def main(data, user, plan):
    async with open_box(configured(__import__("pathlib").Path(data), {}, {})) as box:
        boxes = Mailboxes(box.mailstore)
        for name, count, seed in plan:
            if name != "INBOX":
                try:
                    await boxes.create(user, name)
                except Exception:
                    pass
            send, receive = trio.open_memory_channel(256)
            async def producer():
                async with send:
                    for item in messages(count, seed):
                        await send.send(item)
            async def worker():
                async for message, seen in receive:
                    await boxes.append(user, name, message, quota_bytes=1 << 40,
                                       flags=["\\Seen"] if seen else [])
            async with trio.open_nursery() as n:
                n.start_soon(producer)
                for _ in range(32):
                    n.start_soon(worker)
            print(name, count, "filled", flush=True)
        # Appends indexed inline (no indexer service here); this finds nothing to add.
        await box.mailstore.reconcile_search_index()

trio.run(main, sys.argv[1], sys.argv[2], pickle.loads(bytes.fromhex(sys.argv[3])))
"""


def fill_edgebox(data: Path, plan: list[tuple[str, int, int]]) -> float:
    import pickle

    exe = edgebox_exe()
    for argv, stdin in (
        (["init", "--data", str(data), "--domain", DOMAIN], ""),
        (["user", "add", "--data", str(data), USER, "--name", "Reader", "--password-stdin"],
         PASSWORD + "\n"),
    ):  # fmt: skip
        subprocess.run([exe, *argv], input=stdin.encode(), check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FILL_SCRIPT, str(data), USER, pickle.dumps(plan).hex(), str(REPO)],
        check=True,
        cwd=REPO,
    )
    return time.perf_counter() - started


def cached_fill_edgebox(data: Path, plan: list[tuple[str, int, int]], cache: Path | None) -> float:
    """Fill edgebox's data folder, or copy it from *cache* when an earlier run filled it.

    The fill is set-up (~10 min for 110,000 messages on a quiet machine) and writes the
    same store for the same plan: a before/after comparison fills once and measures two
    commits on copies of it. A copy keeps the earlier fill's seconds in ``fill_s``.
    """
    if cache is None:
        return fill_edgebox(data, plan)
    key = cache / ("edgebox-" + "-".join(f"{name}{count}s{seed}" for name, count, seed in plan))
    stamp = key / "fill_s"
    if not stamp.exists():
        shutil.rmtree(key, ignore_errors=True)
        seconds = fill_edgebox(key / "data", plan)
        stamp.write_text(f"{seconds}\n")
    shutil.copytree(key / "data", data, symlinks=True)
    return float(stamp.read_text())


def fill_dovecot(dc: DovecotServer, plan: list[tuple[str, int, int]]) -> float:
    started = time.perf_counter()
    root = dc.maildir(USER)
    for name, count, seed in plan:
        folder = root if name == "INBOX" else root / f".{name}"
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for i, (message, seen) in enumerate(messages(count, seed)):
            suffix = ":2,S" if seen else ":2,"
            (folder / "cur" / f"{1_700_000_000 + i}.M{i}P1.bench,S={len(message)}{suffix}"
             ).write_bytes(message)  # fmt: skip
        if name != "INBOX":
            with (root / "subscriptions").open("a") as f:
                f.write(f"{name}\n")
    for path in [root, *root.rglob("*")]:
        os.chown(path, dc.mail_uid, dc.mail_gid)
    for parent in (root.parent, root.parent.parent):
        os.chown(parent, dc.mail_uid, dc.mail_gid)
    return time.perf_counter() - started


# -- measuring -----------------------------------------------------------------------


def connect(port: int, cafile: Path) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(cafile))
    client = _IMAPS(TLS_NAME, port, ssl_context=context, timeout=600)
    _ok(*client.login(USER, PASSWORD), "LOGIN")
    return client


def session_memory(port: int, cafile: Path, pids: Callable[[], list[int]], mailbox: str,
                   sessions: int) -> float:  # fmt: skip
    """Server RSS growth per session holding *mailbox* selected after a FLAGS fetch."""
    before = tree_memory(pids())
    clients = []
    try:
        for _ in range(sessions):
            client = connect(port, cafile)
            _ok(*client.select(mailbox, readonly=True), "SELECT")
            _ok(*client.uid("FETCH", "1:*", "(FLAGS)"), "FETCH")
            clients.append(client)
        time.sleep(0.5)
        after = tree_memory(pids())
    finally:
        for client in clients:
            client.logout()
    return max(0, after - before) / sessions


def search(client: imaplib.IMAP4_SSL, key: str, text: str | None) -> int:
    """Run one SEARCH (a Thai string goes as a literal); return the number of hits."""
    if text is None:
        typ, data = client.search(None, key)
    else:
        client.literal = text.encode()  # type: ignore[attr-defined]
        typ, data = client.search("UTF-8", key)
    _ok(typ, data, "SEARCH")
    return len(data[0].split())


def imap_round(port: int, cafile: Path, expected: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    client = connect(port, cafile)
    try:

        def select() -> None:
            typ, data = client.select("INBOX", readonly=True)
            _ok(typ, data, "SELECT")
            if int(data[0]) != expected:
                raise AssertionError(f"SELECT says {data[0]!r}, expected {expected}")

        figures["select_large"] = timed(select)

        def flags() -> None:
            typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
            _ok(typ, data, "FETCH")
            if len(data) != expected:
                raise AssertionError(f"FETCH gave {len(data)} lines, expected {expected}")

        figures["fetch_flags_large"] = timed(flags)
        for name, key, text in SEARCHES:
            figures[name] = timed(lambda k=key, t=text: search(client, k, t))
    finally:
        client.logout()
    return figures


def search_hits(port: int, cafile: Path) -> dict[str, int]:
    """How many messages each search finds (the two servers must agree)."""
    hits = {}
    client = connect(port, cafile)
    try:
        _ok(*client.select("INBOX", readonly=True), "SELECT")
        for name, key, text in SEARCHES:
            hits[name] = search(client, key, text)
    finally:
        client.logout()
    return hits


def _free_offset() -> int:
    for offset in range(7000, 20000, 97):
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, IMAPS_BASE_PORT + offset))
            except OSError:
                continue
        return offset
    raise RuntimeError("no free port offset")


def run(
    count: int, small: int, rounds: int, sessions: int, work: Path, cache: Path | None = None
) -> dict[str, Any]:
    require_binary("dovecot", "dovecot-imapd")
    plan = [("INBOX", count, SEED), ("Small", small, SEED + 1)]
    result: dict[str, Any] = {
        "commit": commit(), "machine": machine(), "messages": count, "small": small,
        "rounds": rounds, "sessions": sessions, "edgebox": {}, "dovecot": {},
    }  # fmt: skip
    with ExitStack() as stack:
        dc = stack.enter_context(DovecotServer(work, users={USER: PASSWORD}, hostname=TLS_NAME))
        assert dc.imaps_port is not None
        assert dc.cert_path is not None
        print(f"[large] filling Dovecot Maildir with {count}+{small} ...", flush=True)
        result["dovecot"]["fill_s"] = fill_dovecot(dc, plan)
        data = work / "edgebox-data"
        print(f"[large] filling edgebox with {count}+{small} via Mailboxes.append ...", flush=True)
        result["edgebox"]["fill_s"] = cached_fill_edgebox(data, plan, cache)
        offset = _free_offset()
        pid = stack.enter_context(running_edgebox(data, work / "edgebox.log", offset))
        eb_port = IMAPS_BASE_PORT + offset
        # The box catches its search index up at start if the fill left any behind:
        # time the rounds once that (and Dovecot's start) is done.
        waited, idle = wait_until_idle(lambda: [pid, *([dc.pid] if dc.pid else [])])
        result["idle_wait_s"] = {"waited": round(waited, 1), "idle": idle}
        servers = {
            "edgebox": (eb_port, data / "keys" / "ca.pem", lambda: [pid]),
            "dovecot": (dc.imaps_port, dc.cert_path, lambda: [dc.pid] if dc.pid else []),
        }
        # Untimed warm-up: Dovecot builds its index on first SELECT, edgebox warms caches.
        for name, (port, ca, _) in servers.items():
            result[name]["first_select_s"] = timed(lambda p=port, c=ca: imap_round(p, c, count))
            result[name]["hits"] = search_hits(port, ca)
        # A faster SEARCH that finds other messages is no result: stop before timing it.
        if result["edgebox"]["hits"] != result["dovecot"]["hits"]:
            raise SearchDisagrees(
                f"search hits differ: edgebox {result['edgebox']['hits']} "
                f"vs dovecot {result['dovecot']['hits']}"
            )
        samples: dict[str, dict[str, list[float]]] = {"edgebox": {}, "dovecot": {}}
        for r in range(rounds):
            for name, (port, ca, _) in servers.items():
                for key, value in imap_round(port, ca, count).items():
                    samples[name].setdefault(key, []).append(value)
            print(f"[large] round {r + 1}/{rounds} done", flush=True)
        for name, (port, ca, pids) in servers.items():
            for key, values in samples[name].items():
                result[name][key] = statistics.median(values)
                result[name][f"{key}_rounds"] = values
            result[name]["session_bytes_large"] = session_memory(port, ca, pids, "INBOX", sessions)
            result[name]["session_bytes_small"] = session_memory(port, ca, pids, "Small", sessions)
            result[name]["rss_after"] = tree_memory(pids())
    return result


class SearchDisagrees(AssertionError):
    """edgebox and Dovecot found different messages for the same SEARCH."""


def report(result: dict[str, Any]) -> str:
    eb, dc = result["edgebox"], result["dovecot"]
    lines = [f"{result['messages']} messages in INBOX, median of {result['rounds']} rounds",
             f"{'':24} {'edgebox':>10} {'dovecot':>10} {'ratio':>7}"]  # fmt: skip
    keys = ["select_large", "fetch_flags_large"] + [name for name, _, _ in SEARCHES]
    for key in keys:
        lines.append(f"{key:24} {eb[key]:10.3f} {dc[key]:10.3f} {ratio(eb[key], dc[key]):7.2f}")
    for key in ("session_bytes_large", "session_bytes_small"):
        lines.append(f"{key:24} {eb[key] / 1e6:9.2f}M {dc[key] / 1e6:9.2f}M")
    lines.append(f"fill (s): edgebox {eb['fill_s']:.0f}, dovecot {dc['fill_s']:.0f}")
    lines.append(f"hits edgebox {eb['hits']}")
    lines.append(f"hits dovecot {dc['hits']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument(
        "--fill-cache",
        type=Path,
        help="keep edgebox's filled data folder here and copy it on later runs (set-up only)",
    )
    args = parser.parse_args(argv)
    try:
        with scratch_dir("bench-imap-large-") as work:
            result = run(
                args.messages, args.small, args.rounds, args.sessions, work, args.fill_cache
            )
    except PeerError as exc:
        print(f"[large] cannot run: {exc}", file=sys.stderr)
        return 2
    except SearchDisagrees as exc:
        print(f"[large] FAILED: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    write_results(RESULTS, result)
    return 0


@pytest.mark.bench
def test_bench_imap_large(tmp_path: Path) -> None:
    run(2000, 200, 1, 2, tmp_path)


if __name__ == "__main__":
    sys.exit(main())
