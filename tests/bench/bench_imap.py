"""IMAP benchmark: edgebox's IMAP server against a private Dovecot on the same box.

What it measures, in one run: one mailbox of N messages (default 10,000, ~10 KB each,
varied, generated from a fixed seed) put into (a) edgebox, through its SMTP MX port with
20 parallel smtplib sessions (edgebox answers 250 only once the message is fsynced), and
(b) a private Dovecot 2.3 (Maildir), through its LMTP port with 20 parallel sessions.
Population is not timed as a result; the rounds start once both servers are idle
(edgebox's search indexer has indexed the new mail: Dovecot's LMTP indexed during its
delivery). Then, over TLS on both (edgebox: imaps; Dovecot: its
imaps listener), alternating server by server each round:

- ``login_select``: TCP + TLS connect, LOGIN, SELECT INBOX (the connect part is also
  recorded on its own as ``connect``);
- ``fetch_flags``: ``UID FETCH 1:* (FLAGS)``;
- ``fetch_bodies``: every message with ``UID FETCH a:b (BODY.PEEK[])`` in batches of 500;
- ``mbsync_full``: ``mbsync`` (isync 1.4) first sync of INBOX into a fresh Maildir;
- ``mbsync_noop``: ``mbsync`` again right after, nothing changed.

Each figure is the median over ``--rounds`` rounds (default 3); the ratio is edgebox /
Dovecot time (lower is better; the target is <= 2.0). Also recorded: edgebox's peak RSS
(summed over its process tree, sampled every 50 ms), and the client's own CPU time for the
imaplib operations, since the Python client is part of what is timed.

What it is not: a correctness test (it only checks counts and Message-IDs), or part of
``make test``. It is collected by pytest only with ``-m bench``; normally run it directly:

    .venv/bin/python tests/bench/bench_imap.py [--messages 1000] [--rounds 3]

Results are printed and written to tests/bench/results/imap.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import imaplib
import os
import random
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from tests.bench.common import (
    RCPT,
    RCPT_PASSWORD,
    REPO,
    RESULTS_DIR,
    SENDER,
    RssSampler,
    commit,
    edgebox_server,
    machine,
    median,
    ratio,
    wait_until_idle,
    write_results,
)
from tests.peers import LOOPBACK, PeerError, require_binary
from tests.peers.dovecot import DovecotServer

RESULTS = RESULTS_DIR / "imap.json"
# Both certificates name "localhost" (edgebox always does; Dovecot's is made for it), and
# mbsync checks DNS names, not IP addresses. Connections still go to 127.0.0.1 only.
TLS_NAME = "localhost"
BATCH = 500
SEED = 20261122
IMAPS_BASE_PORT = 2993  # edgebox's imaps port before --port-offset
IMAPS_RE = re.compile(r"^imaps listening on ([\d.]+):(\d+)", re.M)
MSGID_RE = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.M | re.I)
UID_RE = re.compile(rb"UID (\d+)")
OPS = ("connect", "login_select", "fetch_flags", "fetch_bodies", "mbsync_full", "mbsync_noop")
SERVERS = ("edgebox", "dovecot")
IO_TIMEOUT = 300.0  # per socket operation / per mbsync run: bounded, never open-ended

_WORD_TEXT = (
    "mail box edge school district report budget meeting agenda student teacher minutes "
    "network server backup update schedule invoice payment review project office notice "
    "the a of and to in for on with by from at is are was be this that it as not or "
    "สวัสดี ครับ ค่ะ โรงเรียน รายงาน ประชุม งบประมาณ นักเรียน ครู"
)
WORDS = _WORD_TEXT.split(" ")


# -- the mailbox -------------------------------------------------------------------------


def make_messages(count: int, seed: int = SEED) -> list[bytes]:
    """``count`` deterministic RFC 5322 messages, 6-14 KB (mean ~10 KB), CRLF line ends.

    Varied on purpose: sizes, subjects, a share of multipart/alternative with an HTML
    part, a share with base64 attachments, Thai text in UTF-8 bodies.
    """
    rng = random.Random(seed)
    base = datetime.datetime(2026, 1, 5, 8, 0, tzinfo=datetime.UTC)
    out = []
    for i in range(count):
        target = rng.randint(6000, 14000)
        date = (base + datetime.timedelta(minutes=7 * i)).strftime("%a, %d %b %Y %H:%M:%S +0000")
        subject = " ".join(rng.choice(WORDS[:30]) for _ in range(rng.randint(2, 8)))
        head = (
            f"From: Sender {i % 97} <s{i % 97}@sender.bench.test>\r\n"
            f"To: Bench Rcpt <{RCPT}>\r\n"
            f"Subject: [{i}] {subject}\r\n"
            f"Date: {date}\r\n"
            f"Message-ID: <bench-{seed}-{i}@sender.bench.test>\r\n"
            "MIME-Version: 1.0\r\n"
        )
        kind = rng.random()
        text_lines: list[str] = []
        size = len(head)
        while size < target * (0.45 if kind >= 0.7 else 0.95):
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 11)))
            text_lines.append(line)
            size += len(line.encode()) + 2
        text = "\r\n".join(text_lines) + "\r\n"
        if kind < 0.7:  # plain text
            msg = (
                head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + text
            )
        elif kind < 0.9:  # alternative: text + html
            html = (
                "<html><body>" + "".join(f"<p>{t}</p>\r\n" for t in text_lines) + "</body></html>"
            )
            msg = (
                head + f'Content-Type: multipart/alternative; boundary="b{i}"\r\n\r\n'
                f"--b{i}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
                f"--b{i}\r\nContent-Type: text/html; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--b{i}--\r\n"
            )
        else:  # text + a small binary attachment, base64
            blob = rng.randbytes(max(200, int(target * 0.4)))
            b64 = base64.encodebytes(blob).decode().replace("\n", "\r\n")
            msg = (
                head + f'Content-Type: multipart/mixed; boundary="m{i}"\r\n\r\n'
                f"--m{i}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
                f'--m{i}\r\nContent-Type: application/octet-stream; name="f{i}.bin"\r\n'
                f'Content-Disposition: attachment; filename="f{i}.bin"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{b64}--m{i}--\r\n"
            )
        out.append(msg.encode())
    return out


def _deliver(
    connect: Callable[[], smtplib.SMTP], messages: Sequence[bytes], sessions: int, limit: float
) -> float:
    """Send every message (one recipient) over ``sessions`` parallel connections.

    Each connection sends its share one after another (RSET-free: smtplib's sendmail runs
    MAIL/RCPT/DATA per message). Raises on any refusal. Returns the wall time.
    """
    deadline = time.monotonic() + limit
    shares = [messages[k::sessions] for k in range(sessions)]

    def one(share: Sequence[bytes]) -> int:
        conn = connect()
        try:
            for msg in share:
                if time.monotonic() > deadline:
                    raise RuntimeError("population overran its time limit")
                refused = conn.sendmail(SENDER, [RCPT], msg)
                if refused:
                    raise RuntimeError(f"recipient refused: {refused}")
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return len(share)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        sent = sum(pool.map(one, shares))
    if sent != len(messages):
        raise RuntimeError(f"sent {sent}/{len(messages)}")
    return time.monotonic() - start


# -- IMAP client -------------------------------------------------------------------------


class _IMAPS(imaplib.IMAP4_SSL):
    """IMAPS to 127.0.0.1, verifying the certificate against ``TLS_NAME``."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, self.port), timeout)
        wrapped: ssl.SSLSocket = self.ssl_context.wrap_socket(sock, server_hostname=TLS_NAME)
        return wrapped


def _ok(typ: str, data: Any, what: str) -> None:
    if typ != "OK":
        raise RuntimeError(f"{what}: {typ} {data!r}")


def imap_round(port: int, cafile: Path, expected: int, msgids: set[bytes]) -> dict[str, Any]:
    """One IMAP session: connect, LOGIN+SELECT, UID FETCH FLAGS, every body in batches."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    t: dict[str, Any] = {}
    typ: str
    data: Any
    cpu0 = time.process_time()
    start = time.perf_counter()
    m = _IMAPS(LOOPBACK, port, ssl_context=ctx, timeout=IO_TIMEOUT)
    t["connect"] = time.perf_counter() - start
    try:
        typ, data = m.login(RCPT, RCPT_PASSWORD)
        _ok(typ, data, "LOGIN")
        typ, data = m.select("INBOX")
        _ok(typ, data, "SELECT")
        t["login_select"] = time.perf_counter() - start
        exists = int(data[0] or 0)
        if exists != expected:
            raise RuntimeError(f"SELECT INBOX says {exists} EXISTS, expected {expected}")

        s = time.perf_counter()
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        t["fetch_flags"] = time.perf_counter() - s
        _ok(typ, data, "UID FETCH FLAGS")
        uids = sorted(
            int(u.group(1))
            for item in data
            if isinstance(item, bytes) and (u := UID_RE.search(item))
        )
        if len(uids) != expected:
            raise RuntimeError(f"UID FETCH 1:* (FLAGS) returned {len(uids)}/{expected}")

        s = time.perf_counter()
        got = 0
        nbytes = 0
        seen: set[bytes] = set()
        for k in range(0, len(uids), BATCH):
            chunk = uids[k : k + BATCH]
            typ, data = m.uid("FETCH", f"{chunk[0]}:{chunk[-1]}", "(BODY.PEEK[])")
            _ok(typ, data, "UID FETCH BODY.PEEK[]")
            for item in data:
                if isinstance(item, tuple):
                    got += 1
                    nbytes += len(item[1])
                    mid = MSGID_RE.search(item[1])
                    if mid:
                        seen.add(mid.group(1))
        t["fetch_bodies"] = time.perf_counter() - s
        if got != expected:
            raise RuntimeError(f"body fetch returned {got}/{expected} messages")
        t["body_bytes"] = nbytes
        t["message_ids_ok"] = seen == msgids
        t["client_cpu_s"] = round(time.process_time() - cpu0, 3)
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    return t


# -- mbsync ------------------------------------------------------------------------------


def mbsync_config(path: Path, port: int, cafile: Path, local: Path) -> None:
    """An isync 1.4 config syncing the remote INBOX into ``local`` (Far/Near names)."""
    path.write_text(
        f"""# Generated by tests/bench/bench_imap.py
IMAPAccount bench
Host {TLS_NAME}
Port {port}
User {RCPT}
Pass {RCPT_PASSWORD}
AuthMechs LOGIN
SSLType IMAPS
CertificateFile {cafile}
Timeout 120

IMAPStore bench-far
Account bench

MaildirStore bench-near
Path {local}/
Inbox {local}/INBOX

Channel bench
Far :bench-far:
Near :bench-near:
Patterns INBOX
Create Near
Sync All
SyncState *
"""
    )
    path.chmod(0o600)


def run_mbsync(config: Path) -> float:
    exe = shutil.which("mbsync")
    if exe is None:
        raise PeerError("mbsync not found: apt-get install isync")
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [exe, "-c", str(config), "-a"],
            capture_output=True,
            timeout=IO_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"mbsync did not finish in {IO_TIMEOUT:.0f}s") from None
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"mbsync exited {done.returncode}:\n{(done.stdout + done.stderr).decode()[-2000:]}"
        )
    return took


def maildir_count(inbox: Path) -> int:
    return sum(
        1 for sub in ("cur", "new") if (inbox / sub).is_dir() for e in os.scandir(inbox / sub)
    )


def mbsync_round(work: Path, port: int, cafile: Path, expected: int) -> dict[str, Any]:
    local = work / "near"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    cfg = work / "mbsyncrc"
    mbsync_config(cfg, port, cafile, local)
    full = run_mbsync(cfg)
    n = maildir_count(local / "INBOX")
    if n != expected:
        raise RuntimeError(f"mbsync full sync left {n}/{expected} messages in the Maildir")
    # mbsync's Maildir side sleeps 1 s ("sleeping due to recent directory modification")
    # when the directory changed within the current second, which would add a fixed 1 s
    # of client time to both servers' no-change figure. Let that second pass first.
    time.sleep(1.1)
    noop = run_mbsync(cfg)
    if maildir_count(local / "INBOX") != expected:
        raise RuntimeError("mbsync no-change sync changed the Maildir")
    shutil.rmtree(local, ignore_errors=True)
    return {"mbsync_full": full, "mbsync_noop": noop}


# -- servers -----------------------------------------------------------------------------


def _edgebox_imaps_port(log: Path, default: int, timeout: float = 60.0) -> int:
    """Wait for edgebox's 'ready' line; return the imaps port it says it bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(r"^ready$", text, re.M):
            m = IMAPS_RE.search(text)
            return int(m.group(2)) if m else default
        time.sleep(0.1)
    raise RuntimeError(f"edgebox did not print 'ready' in {timeout:.0f}s")


def run(
    messages: int = 10000,
    rounds: int = 3,
    sessions: int = 20,
    port_offset: int = 21000,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Populate both servers, measure every operation ``rounds`` times, write the JSON."""
    own_tmp = workdir is None
    base = Path(tempfile.mkdtemp(prefix="bench-imap-")) if workdir is None else workdir
    result: dict[str, Any] = {
        "benchmark": "imap read path",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "params": {
            "messages": messages,
            "rounds": rounds,
            "populate_sessions": sessions,
            "body_fetch": f"UID FETCH a:b (BODY.PEEK[]) in batches of {BATCH}",
            "tls": "imaps on both",
            "seed": SEED,
            "client": f"python imaplib {sys.version.split()[0]}; mbsync (isync)",
        },
        "machine": machine(),
        "commit": commit(),
    }
    t_start = time.monotonic()
    msgs = make_messages(messages)
    msgids = {m.group(1) for b in msgs if (m := MSGID_RE.search(b))}
    result["params"]["mean_size_bytes"] = round(sum(map(len, msgs)) / max(1, len(msgs)))
    limit = 120.0 + messages / 5.0  # population at >= 5 msg/s, else it is broken anyway
    try:
        with ExitStack() as stack:
            dc = stack.enter_context(
                DovecotServer(base, users={RCPT: RCPT_PASSWORD}, hostname=TLS_NAME)
            )
            assert dc.cert_path is not None
            assert dc.imaps_port is not None
            assert dc.lmtp_port is not None
            lmtp_port: int = dc.lmtp_port
            eb_dir = base / "edgebox"
            eb_dir.mkdir()
            proc, mx_port = stack.enter_context(edgebox_server(eb_dir, port_offset))
            eb_port = _edgebox_imaps_port(eb_dir / "edgebox.log", IMAPS_BASE_PORT + port_offset)
            eb_ca = eb_dir / "edgebox-data" / "keys" / "ca.pem"
            servers = {
                "edgebox": (eb_port, eb_ca),
                "dovecot": (dc.imaps_port, dc.cert_path),
            }
            rss = stack.enter_context(RssSampler(lambda: [proc.pid]))

            print(f"[bench_imap] populating edgebox: {messages} messages via SMTP ...", flush=True)
            pop_eb = _deliver(
                lambda: smtplib.SMTP(LOOPBACK, mx_port, timeout=60), msgs, sessions, limit
            )
            pop_rss = rss.peak
            print(f"[bench_imap]   {pop_eb:.1f} s", flush=True)
            print(f"[bench_imap] populating dovecot: {messages} messages via LMTP ...", flush=True)
            pop_dc = _deliver(
                lambda: smtplib.LMTP(LOOPBACK, lmtp_port, timeout=60), msgs, sessions, limit
            )
            print(f"[bench_imap]   {pop_dc:.1f} s", flush=True)
            if dc.message_count(RCPT) != messages:
                raise RuntimeError(f"dovecot Maildir holds {dc.message_count(RCPT)}/{messages}")
            result["populate_s"] = {
                "edgebox_smtp": round(pop_eb, 1),
                "dovecot_lmtp": round(pop_dc, 1),
            }

            # Both servers as they are once delivery's work is done: edgebox indexes the
            # new mail for search in the background after a burst, where Dovecot's LMTP
            # updated its index during the (untimed) delivery itself.
            print("[bench_imap] waiting for both servers to be idle ...", flush=True)
            waited, idle = wait_until_idle(lambda: [proc.pid, *([dc.pid] if dc.pid else [])])
            print(f"[bench_imap]   {waited:.1f} s{'' if idle else ' (still busy)'}", flush=True)
            result["idle_wait_s"] = {"waited": round(waited, 1), "idle": idle}

            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
            loads: list[list[float]] = []
            rss.peak = 0  # from here on: edgebox's peak while serving IMAP
            for rnd in range(rounds):
                loads.append([round(x, 2) for x in os.getloadavg()])
                for name in SERVERS:
                    port, ca = servers[name]
                    print(f"[bench_imap] {name} round {rnd + 1}/{rounds} ...", flush=True)
                    r = imap_round(port, ca, messages, msgids)
                    r.update(mbsync_round(base / f"mbsync-{name}", port, ca, messages))
                    runs[name].append(r)
                    print(
                        "[bench_imap]   "
                        + "  ".join(f"{op} {r[op]:.3f}s" for op in OPS)
                        + f"  ids {'ok' if r['message_ids_ok'] else 'MISMATCH'}",
                        flush=True,
                    )
            result["loadavg_before_rounds"] = loads
            result["edgebox_peak_rss_mb"] = {
                "populate": round(pop_rss / 2**20, 1),
                "imap": round(rss.peak / 2**20, 1),
            }
            for name in SERVERS:
                rs = runs[name]
                result[name] = {
                    "median_s": {op: median([r[op] for r in rs]) for op in OPS},
                    "all_s": {op: [round(r[op], 4) for r in rs] for op in OPS},
                    "body_bytes": rs[-1]["body_bytes"],
                    "message_ids_ok": all(r["message_ids_ok"] for r in rs),
                    "client_cpu_s": [r["client_cpu_s"] for r in rs],
                }
            result["dovecot"]["version"] = _dovecot_version()
            result["ratio_edgebox_over_dovecot"] = {
                op: ratio(result["edgebox"]["median_s"][op], result["dovecot"]["median_s"][op])
                for op in OPS
                if result["dovecot"]["median_s"][op] > 0
            }
    except (PeerError, RuntimeError, OSError, imaplib.IMAP4.error, smtplib.SMTPException) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        print(f"[bench_imap] FAILED: {result['error']}", file=sys.stderr, flush=True)
    finally:
        if own_tmp:
            shutil.rmtree(base, ignore_errors=True)
    result["bench_wall_s"] = round(time.monotonic() - t_start, 1)
    write_results(RESULTS, result)
    return result


def _dovecot_version() -> str:
    try:
        done = subprocess.run(
            [require_binary("dovecot", "dovecot-imapd"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, PeerError):
        return "unknown"
    return done.stdout.split()[0] if done.stdout else "unknown"


LABELS = {
    "connect": "TCP+TLS connect (part of the next)",
    "login_select": "connect + LOGIN + SELECT INBOX",
    "fetch_flags": "UID FETCH 1:* (FLAGS)",
    "fetch_bodies": f"all bodies, UID FETCH (BODY.PEEK[]) x{BATCH}",
    "mbsync_full": "mbsync first full sync",
    "mbsync_noop": "mbsync no-change resync",
}


def report(result: dict[str, Any]) -> str:
    lines = []
    if "error" in result:
        lines.append(f"ERROR: {result['error']}")
    if "ratio_edgebox_over_dovecot" in result:
        eb, dc = result["edgebox"]["median_s"], result["dovecot"]["median_s"]
        ratios = result["ratio_edgebox_over_dovecot"]
        lines.append(f"{'operation (median s)':46} {'edgebox':>9} {'dovecot':>9} {'ratio':>6}")
        for op in OPS:
            mark = "" if op == "connect" else ("  ok" if ratios[op] <= 2.0 else "  > 2x")
            lines.append(f"{LABELS[op]:46} {eb[op]:>9.3f} {dc[op]:>9.3f} {ratios[op]:>6.2f}{mark}")
        rss = result["edgebox_peak_rss_mb"]
        lines.append(
            f"edgebox peak RSS: {rss['populate']} MB while populating, {rss['imap']} MB serving"
        )
        lines.append(
            "Message-IDs all fetched: edgebox "
            f"{result['edgebox']['message_ids_ok']}, dovecot {result['dovecot']['message_ids_ok']}"
        )
    lines.append(f"bench wall time {result.get('bench_wall_s')} s")
    lines.append(f"written to {RESULTS.relative_to(REPO)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3, help="measure each operation N times")
    ap.add_argument("--sessions", type=int, default=20, help="parallel sessions to populate")
    ap.add_argument(
        "--port-offset",
        type=int,
        default=21000,
        help="edgebox --port-offset (imaps = 2993 + offset, MX = 2525 + offset)",
    )
    args = ap.parse_args(argv)
    if args.messages < 1 or args.rounds < 1:
        ap.error("--messages and --rounds must be >= 1")
    result = run(args.messages, args.rounds, args.sessions, args.port_offset)
    print(report(result))
    return 1 if "error" in result else 0


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_bench_imap(tmp_path: Path) -> None:
    messages = int(os.environ.get("BENCH_MESSAGES", "10000"))
    result = run(messages=messages, workdir=tmp_path)
    print(report(result))
    assert "error" not in result, result["error"]
    for name in SERVERS:
        assert result[name]["message_ids_ok"], f"{name} lost or garbled messages"


if __name__ == "__main__":
    sys.exit(main())
