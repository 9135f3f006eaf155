"""MX ingest with scanning on: edgebox against Postfix + rspamd as a milter, same run.

What it measures, in one run, for each workload (10 KiB messages, then 1 MiB messages,
then the attachment mix): Postfix's ``smtp-source`` (127.0.0.1 only, one recipient,
bounded count) — for the mix, `send_mix`'s smtplib sessions, because smtp-source cannot
make MIME — sent

(a) to edgebox's MX port with protection on: the box runs real clamd and rspamd itself
    (``protection_engines=box``, as tests/e2e/test_protection.py sets it up) and scans
    every message with both before its 250;
(b) to a private Postfix whose ``smtpd_milters`` is rspamd's proxy worker in milter mode
    (``milter = yes``, self-scan) — the way a Postfix shop runs rspamd — relaying over
    LMTP to a private Dovecot (tests/bench/bench_smtp.py's reference, with its milter
    option). ClamAV for Postfix: ``clamav-milter`` is used only if it is installed; it
    is not on this machine, so rspamd's ``antivirus`` module asks a clamd (same
    configuration, same signature database as the box's) over its unix socket, scanning
    the whole message as edgebox does. `REFERENCE_CLAMAV` records which.

Both sides' engines come from the box's own configuration generators
(appliance.protection.engines) with the e2e test's signature database and rule. The
figure is wall time until every message is delivered (edgebox: the sender returns, a
250 is an fsynced message; reference: the Dovecot Maildir holds every message).

The attachment mix (`mix_messages`, seeded, the same bytes to both sides): of every
`MIX_EVERY` messages one carries a real 1 MB attachment, base64 in multipart/mixed —
alternately PDF-like binary (``application/pdf``) and a docx-like zip (``[Content_Types]
.xml``, ``word/document.xml`` deflated, a stored JPEG-like image: clamd opens the zip) —
and the rest are 10 KiB text messages; no two attachments are alike (clamd caches clean
files by hash).

Not part of ``make test``: collected by pytest only with ``-m bench``. Run it directly:

    .venv/bin/python tests/bench/bench_protection.py [--small]

Results are printed and written to tests/bench/results/protection.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from appliance.config import load_config
from appliance.protection.engines import clamd_config, engine_dir, rspamd_config
from appliance.store.settings import Settings
from tests.appliance.protection.engines import EICAR, RSPAMD_RULE, START_TIMEOUT
from tests.bench.bench_smtp import _rate, bench_reference, finish, smtp_source
from tests.bench.common import (
    RCPT,
    REPO,
    RESULTS_DIR,
    SENDER,
    RssSampler,
    edgebox_server,
    log,
    ratio,
    stamp,
    write_results,
)
from tests.peers import LOOPBACK, PeerError, free_port, port_answers, require_binary

RESULTS = RESULTS_DIR / "protection.json"
#: How the reference's Postfix reaches ClamAV (see the module docstring).
REFERENCE_CLAMAV = "rspamd antivirus module -> clamd (clamav-milter not installed)"
#: (name, message size, default count, --small count)
WORKLOADS = (("10k", 10 * 1024, 1000, 200), ("1m", 1024 * 1024, 100, 20))
#: The attachment mix: (name, default count, --small count); one message in MIX_EVERY
#: carries a 1 MB attachment, the others are 10 KiB text.
MIX = ("mix", 250, 100)
MIX_EVERY = 5
ATTACHMENT_SIZE = 1_000_000
MIX_SEED = 23
WORKLOAD_NAMES = (*(w[0] for w in WORKLOADS), MIX[0])
SESSIONS = 10
PORT_OFFSET = 21000


def _time_limit(messages: int, size: int) -> float:
    # Bounded: generous for a loaded 2-core machine (2 msg/s, 0.5 MB/s) but never open-ended.
    return 120.0 + messages / 2.0 + messages * size / 500_000


def clamav_milter_installed() -> bool:
    done = subprocess.run(["dpkg", "-s", "clamav-milter"], capture_output=True, check=False)
    return done.returncode == 0 and b"Status: install ok installed" in done.stdout


def signature_files(root: Path) -> tuple[Path, Path]:
    """The e2e test's ClamAV database (EICAR .ndb) and rspamd rule; return their paths."""
    database = root / "clamav-db"
    database.mkdir(parents=True, exist_ok=True)
    (database / "edgebox-test.ndb").write_text(f"Edgebox-Test-EICAR:0:*:{EICAR.hex()}\n")
    rule = root / "rspamd-test-rules.conf"
    rule.write_text(RSPAMD_RULE)
    return database, rule


def refuses_eicar(port: int) -> None:
    """Raise unless the MX on *port* refuses a message carrying EICAR: scanning is on."""
    content = (
        f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: eicar\r\n\r\n".encode() + EICAR + b"\r\n"
    )
    with smtplib.SMTP(LOOPBACK, port, timeout=120) as client:
        client.ehlo("bench.test")
        client.mail(SENDER)
        client.rcpt(RCPT)
        code, text = client.data(content)
    if code < 500:
        raise RuntimeError(f"EICAR was not refused on port {port}: {code} {text!r}")


# -- the attachment mix: MIME messages smtp-source cannot make --------------------------

#: Thai and English office words; the text parts are drawn from these.
_WORDS = " ".join((
    "การ ประชุม หนังสือ ราชการ กรม สำนักงาน จังหวัด งบประมาณ รายงาน โครงการ meeting budget",
    "report project office province minutes draft annex approved schedule committee memo",
    "circular request reply attached signed director",
)).split()  # fmt: skip


def _text(rng: random.Random, size: int) -> str:
    """Seeded words in lines of ~70 characters, about *size* bytes of UTF-8."""
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(_WORDS, k=10))
        lines.append(line)
        total += len(line.encode()) + 2
    return "\r\n".join(lines)


def _pdf_like(rng: random.Random) -> bytes:
    body = rng.randbytes(ATTACHMENT_SIZE - 64)
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + body + b"\n%%EOF\n"


def _docx_like(rng: random.Random) -> bytes:
    """A zip laid out as a .docx: deflated XML text and a stored image, ~1 MB."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as docx:
        docx.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        paragraphs = "".join(f"<w:p><w:r><w:t>{_text(rng, 400)}</w:t></w:r></w:p>"
                             for _ in range(600))  # fmt: skip
        document = f"<w:document><w:body>{paragraphs}</w:body></w:document>"
        docx.writestr("word/document.xml", document)
        # The XML deflates to ~35 kB; the image (already compressed, so stored) is the rest.
        image = b"\xff\xd8\xff\xe0" + rng.randbytes(ATTACHMENT_SIZE - 60_000)
        docx.writestr("word/media/image1.jpeg", image, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def mix_messages(count: int, seed: int = MIX_SEED) -> list[bytes]:
    """*count* messages: every MIX_EVERY-th has a 1 MB attachment (PDF, docx in turn)."""
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        message = EmailMessage(policy=SMTP)
        message["From"] = f"<{SENDER}>"
        message["To"] = f"<{RCPT}>"
        message["Subject"] = f"bench mix {n}"
        message["Message-ID"] = f"<mix-{seed}-{n}@sender.bench.test>"
        if n % MIX_EVERY == MIX_EVERY - 1:
            message.set_content(_text(rng, 2048), cte="8bit")
            if (n // MIX_EVERY) % 2 == 0:
                message.add_attachment(_pdf_like(rng), maintype="application",
                                       subtype="pdf", filename=f"report-{n}.pdf")  # fmt: skip
            else:
                message.add_attachment(
                    _docx_like(rng), maintype="application",
                    subtype="vnd.openxmlformats-officedocument.wordprocessingml.document",
                    filename=f"minutes-{n}.docx",
                )  # fmt: skip
        else:
            message.set_content(_text(rng, 10 * 1024 - 300), cte="8bit")  # 10 KiB in all
        messages.append(message.as_bytes())
    return messages


def send_mix(port: int, messages: Sequence[bytes], sessions: int, deadline: float) -> None:
    """Send *messages* over *sessions* parallel smtplib sessions; raise unless all got 250.

    Session k sends messages k, k + sessions, ... one after another (MAIL, RCPT, DATA
    on one connection), as smtp-source does.
    """
    failures: list[str] = []

    def session(k: int) -> None:
        try:
            with smtplib.SMTP(LOOPBACK, port, timeout=max(1.0, deadline - time.monotonic())) as c:
                c.ehlo("bench.test")
                for content in messages[k::sessions]:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the mix did not finish in time")
                    refused = c.sendmail(SENDER, [RCPT], content)
                    if refused:
                        raise RuntimeError(f"refused: {refused}")
        except (OSError, smtplib.SMTPException, RuntimeError) as exc:
            failures.append(f"session {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 30)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a mix session did not finish in time")
    if failures:
        raise RuntimeError("mix sending failed: " + "; ".join(failures[:3]))


# -- (b) the reference's engines: clamd, rspamd with a milter proxy and the AV module ----


def _milter_answers(port: int) -> bool:
    return port_answers(LOOPBACK, port)


@contextmanager
def reference_engines(root: Path) -> Iterator[int]:
    """Run clamd and rspamd (proxy worker in milter mode); yield the milter's port."""
    clamd = require_binary("clamd", "clamav-daemon")
    rspamd = require_binary("rspamd", "rspamd")
    database, rule = signature_files(root)
    config = dataclasses.replace(
        load_config(root / "data"), protection=True, protection_clamd_database=str(database),
        protection_rspamd_local=str(rule), protection_rspamd_port=free_port(),
    )  # fmt: skip
    run = engine_dir(config)
    for sub in ("rspamd-db", "rspamd-log", "local.d"):
        (run / sub).mkdir(parents=True)
    milter_port = free_port()
    (run / "clamd.conf").write_text(clamd_config(config))
    # The box's rspamd configuration plus the proxy worker a Postfix shop adds: milter
    # mode, scanning in the proxy itself (one scanning process, as the box's one normal
    # worker).
    proxy = (
        'worker "rspamd_proxy" {\n'
        f'    bind_socket = "{LOOPBACK}:{milter_port}";\n'
        "    milter = yes;\n    timeout = 120s;\n    count = 1;\n"
        '    upstream "local" { default = yes; self_scan = yes; }\n'
        "}\n"
    )
    (run / "rspamd.conf").write_text(rspamd_config(config) + proxy)
    # LOCAL_CONFDIR is *run*: rspamd's antivirus module reads local.d/antivirus.conf.
    (run / "local.d" / "antivirus.conf").write_text(
        "clamav {\n"
        '    type = "clamav";\n'
        f'    servers = "{run / "clamd.sock"}";\n'
        "    scan_mime_parts = false;\n"  # the whole message, as edgebox sends it
        '    symbol = "CLAM_VIRUS";\n'
        '    action = "reject";\n'
        f"    max_size = {64 * 1024 * 1024};\n"
        "}\n"
    )
    # Greylisting (score 4) needs redis, which a Postfix shop would run; without it a
    # soft-reject on a plain load message would stall the reference, so it is off.
    (run / "local.d" / "actions.conf").write_text("greylist = null;\n")
    # The verdict in the delivered message's headers, as edgebox writes its own.
    (run / "local.d" / "milter_headers.conf").write_text(
        'use = ["x-spamd-result", "x-virus"];\nskip_local = false;\n'
    )
    out = (run / "engines.out").open("ab")
    processes = [
        subprocess.Popen([clamd, "-c", str(run / "clamd.conf")], stdout=out, stderr=out),
        subprocess.Popen([rspamd, "-f", "-i", "-c", str(run / "rspamd.conf"),
                          f"--var=RUNDIR={run}", f"--var=DBDIR={run / 'rspamd-db'}",
                          f"--var=LOGDIR={run / 'rspamd-log'}", f"--var=LOCAL_CONFDIR={run}"],
                         stdout=out, stderr=out),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ((run / "clamd.sock").exists() and _milter_answers(milter_port)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(
                    "reference clamd/rspamd did not start:\n"
                    + (run / "engines.out").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.5)
        yield milter_port
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        out.close()


# -- (a) edgebox with protection on ------------------------------------------------------


def _engines_answer(data: Path) -> bool:
    try:
        state = json.loads((data / "run" / "protection.json").read_text())
    except (OSError, ValueError):
        return False
    return all(isinstance(state.get(n), dict) and state[n].get("answering")
               for n in ("clamd", "rspamd"))  # fmt: skip


def bench_edgebox(
    workdir: Path, messages: int, size: int, mix: Sequence[bytes] | None = None
) -> dict[str, Any]:
    """edgebox with scanning on: smtp-source's *messages* of *size*, or the *mix*."""
    database, rule = signature_files(workdir)

    def protection_on(data: Path) -> None:
        settings = Settings(data / "config.json")
        try:
            settings.update("config", {
                "protection": True, "protection_clamd_database": str(database),
                "protection_rspamd_local": str(rule),
            })  # fmt: skip
        finally:
            settings.close()

    with edgebox_server(workdir, PORT_OFFSET, configure=protection_on) as (proc, port):
        data = workdir / "edgebox-data"
        deadline = time.monotonic() + START_TIMEOUT
        while not _engines_answer(data):  # the box probes its engines every 10 s
            if time.monotonic() > deadline:
                raise RuntimeError("edgebox's clamd/rspamd did not come up")
            time.sleep(1)
        refuses_eicar(port)
        with RssSampler(lambda: [proc.pid], interval=0.5, metric="pss") as mem:
            start = time.monotonic()
            if mix is not None:
                send_mix(port, mix, SESSIONS, start + _time_limit(messages, size))
            else:
                finish(smtp_source(port, messages, SESSIONS, size),
                       start + _time_limit(messages, size))  # fmt: skip
            delivered = time.monotonic() - start
    return {
        "delivered_s": round(delivered, 3),  # 250 from edgebox = scanned and fsynced
        "rate_msg_s": _rate(messages, delivered),
        "peak_pss_mb": round(mem.peak / 2**20, 1),
        "note": "edgebox MX -> clamd + rspamd (box-run) -> mailbox (fsync), then 250",
    }


# -- driver -----------------------------------------------------------------------------


def run(small: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """Both halves for each workload, reference first; never raises for a failed half."""
    own_tmp = workdir is None
    base = Path(tempfile.mkdtemp(prefix="bench-protection-")) if workdir is None else workdir
    reference_clamav = "clamav-milter -> clamd" if clamav_milter_installed() else REFERENCE_CLAMAV
    result = stamp("smtp ingest with clamd + rspamd scanning", {
        "sessions": SESSIONS, "small": small, "tool": "postfix smtp-source",
        "recipients_per_message": 1, "reference_clamav": reference_clamav,
        "reference_rspamd": "rspamd_proxy milter = yes, self_scan; smtpd_milters inet",
    })  # fmt: skip
    if reference_clamav != REFERENCE_CLAMAV:
        # Not wired up: no machine here has clamav-milter; say so rather than guess.
        result["error"] = "clamav-milter installed: this benchmark does not drive it yet"
        write_results(RESULTS, result)
        return result
    mix_count = MIX[2] if small else MIX[1]
    mix = mix_messages(mix_count)
    result["params"]["mix"] = {
        "messages": mix_count, "one_in": MIX_EVERY, "attachment_bytes": ATTACHMENT_SIZE,
        "attachments": "application/pdf-like binary and docx-like zip, alternately, base64",
        "others": "10 KiB text/plain", "seed": MIX_SEED, "sender": "smtplib, 10 sessions",
        "mean_message_bytes": round(sum(map(len, mix)) / len(mix)),
    }  # fmt: skip
    workloads = [(name, size, small_count if small else count, None)
                 for name, size, count, small_count in WORKLOADS]  # fmt: skip
    # The mix's time limit is figured as if every message were its mean size.
    workloads.append((MIX[0], round(sum(map(len, mix)) / len(mix)), mix_count, mix))
    try:
        for name, size, messages, messages_mix in workloads:
            entry: dict[str, Any] = {"messages": messages, "size_bytes": size}
            for half in ("reference", "edgebox"):
                d = base / f"{name}-{half}"
                d.mkdir()
                log(f"[bench_protection] {name} {half}: {messages} x {size} B")
                load = [round(x, 2) for x in os.getloadavg()]
                try:
                    if half == "reference":
                        send = None
                        if messages_mix is not None:

                            def send(port: int, deadline: float, m: Any = messages_mix) -> None:
                                send_mix(port, m, SESSIONS, deadline)

                        with reference_engines(d / "engines") as milter_port:
                            r = bench_reference(d, messages, SESSIONS, size,
                                                milter=(LOOPBACK, milter_port),
                                                check=refuses_eicar, send=send,
                                                limit=_time_limit(messages, size))  # fmt: skip
                    else:
                        r = bench_edgebox(d, messages, size, messages_mix)
                except (PeerError, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    log(f"[bench_protection] {name} {half} FAILED: {e}", file=sys.stderr)
                    entry[half] = {"error": str(e)}
                    continue
                r["loadavg_before"] = load
                entry[half] = r
                log(f"[bench_protection]   {r['rate_msg_s']} msg/s")
            ref, eb = entry.get("reference", {}), entry.get("edgebox", {})
            if "rate_msg_s" in ref and "rate_msg_s" in eb:
                entry["ratio_edgebox_over_reference"] = ratio(
                    float(eb["rate_msg_s"]), float(ref["rate_msg_s"])
                )
            result[name] = entry
    finally:
        if own_tmp:
            shutil.rmtree(base, ignore_errors=True)
    write_results(RESULTS, result)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [f"reference ClamAV: {result['params']['reference_clamav']}"]
    for name in WORKLOAD_NAMES:
        entry = result.get(name)
        if not isinstance(entry, dict):
            continue
        for half in ("edgebox", "reference"):
            r = entry.get(half, {})
            if "error" in r:
                lines.append(f"{name:4} {half:10} ERROR: {str(r['error']).splitlines()[0]}")
            else:
                lines.append(f"{name:4} {half:10} {r.get('rate_msg_s'):>8} msg/s  "
                             f"in {r.get('delivered_s')} s")  # fmt: skip
        if "ratio_edgebox_over_reference" in entry:
            figure = entry["ratio_edgebox_over_reference"]
            lines.append(f"{name:4} ratio edgebox/reference: {figure}")
    lines.append(f"written to {RESULTS.relative_to(REPO)}")
    return "\n".join(lines)


def _failed(result: dict[str, Any]) -> list[str]:
    return [f"{name} {half}" for name in WORKLOAD_NAMES
            for half in ("reference", "edgebox")
            if "error" in result.get(name, {}).get(half, {})]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="fewer messages (a loaded machine)")
    args = ap.parse_args(argv)
    result = run(small=args.small)
    print(report(result))
    return 1 if _failed(result) or "error" in result else 0


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_bench_protection(tmp_path: Path) -> None:
    require_binary("clamd", "clamav-daemon")
    require_binary("rspamd", "rspamd")
    result = run(small=os.environ.get("BENCH_SMALL", "1") == "1", workdir=tmp_path)
    print(report(result))
    assert "error" not in result, result.get("error")
    assert _failed(result) == []


if __name__ == "__main__":
    sys.exit(main())
