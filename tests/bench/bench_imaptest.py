"""imaptest against edgebox and a private Dovecot, one after the other in one run.

What it measures: Dovecot's own IMAP tester, imaptest, in its stress mode (random
commands from ``--clients`` concurrent sessions of one user for ``--secs`` seconds, with
its state tracking, which reports every answer that breaks IMAP's rules as an
"Error:" line) against (a) edgebox over IMAPS and (b) a private Dovecot 2.3 (Maildir)
over IMAPS, each started fresh and empty, both fed the same mbox (``--messages`` varied
messages from bench_imap's fixed seed; imaptest APPENDs from it). Recorded per server:
commands per second by type (imaptest's own columns: LOGIN, LIST, STATUS, SELECT, FETCH,
FETCH of bodies, STORE, DELETE (flag), EXPUNGE, APPEND, LOGOUT), the total, imaptest's
error lines, and for edgebox the service restarts its supervisor logged ("service imaps
crashed"). The ratio is edgebox / Dovecot commands per second (higher is better; the
target is >= 1.0 with zero errors and zero restarts).

With ``--scripted DIR`` (imaptest's ``src/tests`` folder) it also runs imaptest's
scripted conformance tests against both and records groups run / failed / skipped and
the failed commands.

imaptest is not packaged in Debian 12 and nothing of it is in this repository: build it
yourself from its public repository (see docs/imap.md) and pass the binary with
``--imaptest PATH`` or the ``IMAPTEST`` environment variable. Without it the benchmark
fails at once and says so.

What it is not: part of ``make test`` (collected by pytest only with ``-m bench``), or a
latency benchmark (imaptest's clients pipeline and wait on each other's state).

    .venv/bin/python tests/bench/bench_imaptest.py --imaptest /path/to/imaptest \\
        [--secs 60] [--clients 10] [--scripted /path/to/imaptest/src/tests]

Results are printed and written to tests/bench/results/imaptest.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from tests.bench.bench_imap import IMAPS_RE, make_messages
from tests.bench.common import (
    RCPT,
    RCPT_PASSWORD,
    REPO,
    RESULTS_DIR,
    commit,
    edgebox_server,
    machine,
    ratio,
    write_results,
)
from tests.peers import LOOPBACK
from tests.peers.dovecot import DovecotServer

RESULTS = RESULTS_DIR / "imaptest.json"
SERVERS = ("edgebox", "dovecot")
#: imaptest's column heads (src/client-state.c) and what they count.
COLUMNS = {
    "Logi": "LOGIN",
    "List": "LIST",
    "Stat": "STATUS",
    "Sele": "SELECT",
    "Fetc": "FETCH (flags, envelope, ...)",
    "Fet2": "FETCH (bodies)",
    "Stor": "STORE",
    "Dele": "STORE \\Deleted",
    "Expu": "EXPUNGE",
    "Appe": "APPEND",
    "Logo": "LOGOUT",
}
GROUPS_RE = re.compile(r"(\d+) test groups: (\d+) failed, (\d+) skipped")
COMMANDS_RE = re.compile(
    r"^(base protocol|extensions): (\d+)/(\d+) individual commands failed", re.M
)
CRASH_RE = re.compile(r"service imaps crashed")
#: The last line of a logged traceback: what the crash was.
EXCEPTION_RE = re.compile(r"^(?:\w+\.)*\w+(?:Error|Exception|Missing): .*$", re.M)
#: imaptest's lines about the connection, not about an answer (a refused connect while
#: the port is down, a reset when a service stops): counted apart from protocol errors.
CONNECTION_ERROR_RE = re.compile(r"connect\(\) failed|Client disconnected|Connection reset")
IMAPTEST_SLACK = 120.0  # seconds beyond --secs before a run counts as hung


def find_imaptest(explicit: str | None) -> Path:
    """The imaptest binary from --imaptest or $IMAPTEST; a clear error without one."""
    value = explicit or os.environ.get("IMAPTEST") or shutil.which("imaptest")
    if not value:
        raise SystemExit(
            "imaptest not found: build it from https://github.com/dovecot/imaptest (see"
            " docs/imap.md) and pass --imaptest PATH or set IMAPTEST=PATH"
        )
    path = Path(value)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"imaptest {path} is not an executable file")
    return path


def write_mbox(path: Path, count: int) -> None:
    """The benchmark's messages as an mbox (mboxrd quoting of "From " lines)."""
    with path.open("wb") as out:
        for message in make_messages(count):
            out.write(b"From bench@sender.bench.test Mon Jan  5 08:00:00 2026\n")
            for line in message.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n"):
                if line.lstrip(b">").startswith(b"From "):
                    line = b">" + line
                out.write(line + b"\n")
            out.write(b"\n")


def _imaptest(binary: Path, port: int, args: list[str], timeout: float) -> str:
    argv = [
        str(binary),
        f"host={LOOPBACK}",
        f"port={port}",
        "ssl=any-cert",  # both servers use throw-away self-signed certificates
        f"user={RCPT}",
        f"pass={RCPT_PASSWORD}",
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def parse_totals(output: str) -> dict[str, int]:
    """imaptest's "Totals:" block: column head -> commands answered."""
    tail = output[output.rindex("Totals:") :].splitlines()
    heads = tail[1].split()
    for line in tail[2:]:
        fields = line.split()
        if len(fields) == len(heads) and all(f.isdigit() for f in fields):
            return dict(zip(heads, map(int, fields), strict=True))
    raise ValueError("no totals line in imaptest's output")


def parse_scripted(output: str) -> dict[str, Any]:
    """Groups run / failed / skipped and failed commands from a scripted run."""
    groups = GROUPS_RE.search(output)
    if groups is None:
        raise ValueError("no summary line in imaptest's scripted output")
    total, failed, skipped = map(int, groups.groups())
    result: dict[str, Any] = {
        "groups": total,
        "groups_run": total - skipped,
        "groups_failed": failed,
        "groups_skipped": skipped,
        "failed_tests": sorted(set(re.findall(r"^\*\*\* Test (\S+)", output, re.M))),
    }
    for kind, bad, of in COMMANDS_RE.findall(output):
        key = "base" if kind == "base protocol" else "extensions"
        result[f"{key}_commands_failed"] = int(bad)
        result[f"{key}_commands"] = int(of)
    return result


def stress(binary: Path, port: int, mbox: Path, clients: int, secs: int) -> dict[str, Any]:
    """One stress run: commands per second by type, and imaptest's error lines."""
    output = _imaptest(
        binary,
        port,
        [f"mbox={mbox}", f"clients={clients}", f"secs={secs}"],
        timeout=secs + IMAPTEST_SLACK,
    )
    totals = parse_totals(output)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    protocol = [line for line in errors if not CONNECTION_ERROR_RE.search(line)]
    return {
        "commands": totals,
        "per_second": {k: round(v / secs, 1) for k, v in totals.items()},
        "total_per_second": round(sum(totals.values()) / secs, 1),
        "errors": len(errors),
        "connection_errors": len(errors) - len(protocol),
        "protocol_errors": len(protocol),
        "first_errors": errors[:5],
        "first_protocol_errors": protocol[:5],
    }


def run(
    imaptest: Path,
    *,
    secs: int = 60,
    clients: int = 10,
    messages: int = 50,
    scripted: Path | None = None,
    port_offset: int = 22000,
    workdir: Path | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": machine(),
        "commit": commit(),
        "secs": secs,
        "clients": clients,
        "messages": messages,
    }
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imaptest-")))
        mbox = workdir / "bench.mbox"
        write_mbox(mbox, messages)
        # edgebox: fresh data dir, one user; its IMAPS port as it logs it.
        _, _ = stack.enter_context(edgebox_server(workdir, port_offset))
        box_log = workdir / "edgebox.log"
        deadline = time.monotonic() + 30
        while (found := IMAPS_RE.search(box_log.read_text(errors="replace"))) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("edgebox did not log its imaps port within 30 s")
            time.sleep(0.1)
        ports = {"edgebox": int(found.group(2))}
        dovecot = stack.enter_context(
            DovecotServer(workdir / "dovecot", users={RCPT: RCPT_PASSWORD}, tls=True)
        )
        assert dovecot.imaps_port is not None
        ports["dovecot"] = dovecot.imaps_port
        for name in SERVERS:
            crashes_before = len(CRASH_RE.findall(box_log.read_text(errors="replace")))
            result[name] = stress(imaptest, ports[name], mbox, clients, secs)
            if name == "edgebox":
                log = box_log.read_text(errors="replace")
                result[name]["service_restarts"] = len(CRASH_RE.findall(log)) - crashes_before
                result[name]["exceptions_logged"] = sorted(set(EXCEPTION_RE.findall(log)))[:10]
        if scripted is not None:
            for name in SERVERS:
                output = _imaptest(imaptest, ports[name], [f"test={scripted}"], timeout=600)
                result[name]["scripted"] = parse_scripted(output)
    edge, dove = result["edgebox"], result["dovecot"]
    result["ratio"] = {
        head: ratio(edge["per_second"][head], dove["per_second"][head])
        for head in COLUMNS
        if dove["per_second"].get(head)
    }
    result["ratio_total"] = ratio(edge["total_per_second"], dove["total_per_second"])
    result["bench_wall_s"] = round(time.monotonic() - started, 1)
    write_results(RESULTS, result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        f"imaptest stress: {result['clients']} clients, {result['secs']} s, "
        f"{result['messages']}-message mbox, commit {result['commit']}",
        f"{'command':<30} {'edgebox/s':>10} {'dovecot/s':>10} {'ratio':>6}",
    ]
    edge, dove = result["edgebox"], result["dovecot"]
    for head, what in COLUMNS.items():
        of_head = result["ratio"].get(head, "-")
        lines.append(
            f"{what:<30} {edge['per_second'].get(head, 0):>10} "
            f"{dove['per_second'].get(head, 0):>10} {of_head:>6}"
        )
    lines.append(
        f"{'all commands':<30} {edge['total_per_second']:>10} "
        f"{dove['total_per_second']:>10} {result['ratio_total']:>6}"
    )
    lines.append(
        f"errors: edgebox {edge['errors']} ({edge['protocol_errors']} about answers,"
        f" {edge['connection_errors']} about connections), dovecot {dove['errors']};"
        f" edgebox service restarts {edge.get('service_restarts')}"
    )
    for exception in edge.get("exceptions_logged", []):
        lines.append(f"  edgebox logged: {exception[:160]}")
    for name in SERVERS:
        scripted = result[name].get("scripted")
        if scripted:
            lines.append(
                f"scripted {name}: {scripted['groups_run']} groups run, "
                f"{scripted['groups_failed']} failed, {scripted['groups_skipped']} skipped; "
                f"base {scripted.get('base_commands_failed')}/{scripted.get('base_commands')}"
                f" extensions {scripted.get('extensions_commands_failed')}/"
                f"{scripted.get('extensions_commands')} commands failed"
                + (f" ({', '.join(scripted['failed_tests'])})" if scripted["failed_tests"] else "")
            )
    lines.append(f"bench wall time {result['bench_wall_s']} s")
    lines.append(f"written to {RESULTS.relative_to(REPO)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imaptest", help="the imaptest binary (default: $IMAPTEST)")
    ap.add_argument("--secs", type=int, default=60, help="stress run length per server")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--messages", type=int, default=50, help="messages in the mbox")
    ap.add_argument("--scripted", type=Path, help="imaptest's tests folder: run them too")
    ap.add_argument(
        "--port-offset",
        type=int,
        default=22000,
        help="edgebox --port-offset (imaps = 2993 + offset, MX = 2525 + offset)",
    )
    args = ap.parse_args(argv)
    if args.secs < 1 or args.clients < 1 or args.messages < 1:
        ap.error("--secs, --clients and --messages must be >= 1")
    binary = find_imaptest(args.imaptest)
    result = run(
        binary,
        secs=args.secs,
        clients=args.clients,
        messages=args.messages,
        scripted=args.scripted,
        port_offset=args.port_offset,
    )
    print(report(result))
    edge = result["edgebox"]
    return 0 if edge["errors"] == 0 and edge["service_restarts"] == 0 else 1


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_bench_imaptest(tmp_path: Path) -> None:
    binary = find_imaptest(None)
    result = run(binary, workdir=tmp_path)
    print(report(result))
    assert result["edgebox"]["service_restarts"] == 0
    assert result["edgebox"]["errors"] == 0, result["edgebox"]["first_errors"]


if __name__ == "__main__":
    sys.exit(main())
