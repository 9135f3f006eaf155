"""What the benchmarks share: the machine and commit measured, edgebox started for a run,
memory and CPU of a process tree, medians and ratios, and where the results go.

Each benchmark stays a script of its own (``.venv/bin/python tests/bench/bench_X.py``)
and a pytest module collected only with ``-m bench``; this module holds the set-up that
more than one of them does, so a figure in docs/BENCHMARKS.md always comes with the same
description of the machine and the same commit stamp. It is not a benchmark itself:
pytest collects ``bench_*.py`` only.

A benchmark makes the repository root importable before importing this module (it runs
as a plain script, without the package on ``sys.path``):

    REPO = Path(__file__).resolve().parents[2]
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import psutil

from tests.peers import LOOPBACK, port_answers
from tests.peers.dns_stub import loopback_dns_env

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: The one mailbox the SMTP and IMAP benchmarks fill: its agency, address and password.
DOMAIN = "bench.go.th"
RCPT = f"rcpt@{DOMAIN}"
RCPT_PASSWORD = "secret-pass-1"
SENDER = "load@sender.bench.test"
MX_BASE_PORT = 2525  # edgebox's MX port before --port-offset
LISTEN_RE = re.compile(r"smtp-mx listening on ([\d.]+):(\d+)")


# -- what was measured, on what ----------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine a figure was taken on (CPU, memory, kernel, Python)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def commit() -> str:
    """The edgebox source measured (``git describe --always --dirty``): the lead reruns
    benchmarks as the code changes, and a figure names the commit it measured."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def stamp(benchmark: str, params: dict[str, Any]) -> dict[str, Any]:
    """The head of a result: what ran, when, with which parameters, on what, at which commit."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "params": params,
        "machine": machine(),
        "commit": commit(),
    }


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write *result* as JSON to *path* (tests/bench/results/NAME.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def passwords_unhashed() -> Iterator[None]:
    """Within the block, new accounts get a fixed hash instead of running scrypt.

    For set-up that makes hundreds of users nobody signs in as (scrypt costs tens of
    milliseconds each). Scoped, never left on: pytest runs many modules in one process,
    and a later test whose user really signs in would be refused (tests/conftest.py
    checks that every test leaves the hashing as it found it).
    """
    from appliance.security import passwords

    real = passwords.hash_password
    passwords.hash_password = lambda password: passwords.DUMMY_HASH
    try:
        yield
    finally:
        passwords.hash_password = real


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh temporary folder for one run, removed with everything in it afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def log(text: str, *, file: TextIO | None = None) -> None:
    """Print a progress line with the time of day, at once (a run takes minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=file or sys.stdout, flush=True)


# -- timing and figures ------------------------------------------------------------------


def timed(action: Callable[[], Any]) -> float:
    """Seconds *action* took (a benchmark's figure, never a test's assertion)."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank *p*-th percentile of *values*."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ratio(edgebox: float, reference: float) -> float:
    """edgebox's figure over the reference's, as docs/BENCHMARKS.md quotes it."""
    return round(edgebox / reference, 2) if reference else float("inf")


# -- memory and CPU of a process tree ----------------------------------------------------


def _tree_sum(pids: list[int], measure: Callable[[psutil.Process], float]) -> float:
    """*measure* of every process in the trees rooted at *pids*, summed; a process that
    ends (or hides from us) meanwhile counts nothing."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                total += measure(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total


def tree_memory(pids: list[int], metric: str = "rss") -> int:
    """Bytes of the process trees rooted at *pids*, summed (``rss`` or ``pss``)."""
    if metric == "pss":
        return int(_tree_sum(pids, lambda p: p.memory_full_info().pss))
    return int(_tree_sum(pids, lambda p: p.memory_info().rss))


class RssSampler:
    """Peak memory of one or more process trees, summed, sampled every ``interval`` s.

    Summed over the tree because a server may fork workers. ``metric="rss"`` (cheap, read
    from /proc/PID/statm) counts shared pages once per process, which overstates a
    many-process server like Postfix+Dovecot several-fold; ``metric="pss"`` splits shared
    pages fairly but reads smaps, so it is sampled less often to not steal CPU from the
    servers being measured.
    """

    def __init__(
        self, pids: Callable[[], list[int]], interval: float = 0.05, metric: str = "rss"
    ) -> None:
        self._pids = pids
        self._interval = interval
        self._metric = metric
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_memory(self._pids(), self._metric))
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of *pid*, all threads (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the process trees rooted at *pids*, summed."""
    return _tree_sum(pids, lambda p: sum(p.cpu_times()[:2]))


def wait_until_idle(
    pids: Callable[[], list[int]],
    *,
    quiet: float = 3.0,
    share: float = 0.05,
    limit: float = 900.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    cpu: Callable[[list[int]], float] = tree_cpu_seconds,
) -> tuple[float, bool]:
    """Wait until the servers of *pids* use under *share* of a core for *quiet* seconds.

    A server that indexes what it was just given in the background (edgebox's search
    indexer) would otherwise be measured against one that did that work during its
    untimed population (Dovecot's LMTP updates its index as it delivers). Bounded by
    *limit*. Returns (seconds waited, whether the servers were idle at the end).
    """
    start = clock()
    window_start, used_at_start = start, cpu(pids())
    while True:
        sleep(min(0.5, quiet))
        now, used = clock(), cpu(pids())
        if now - window_start >= quiet:
            if used - used_at_start <= share * (now - window_start):
                return now - start, True
            window_start, used_at_start = now, used
        if now - start >= limit:
            return now - start, False


# -- edgebox for a run -------------------------------------------------------------------


def box_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a benchmarked box runs in: ours, *extra*, and a DNS stub.

    The MX asks DNS for SPF and DMARC on every message. A box under a benchmark asks a
    loopback DNS server that knows no names (as every test box does, tests/harness.py):
    a shared machine's resolver answered ~30 queries a second here, with 2-5 s stalls,
    which made SMTP ingest measure that resolver instead of the mail path.
    """
    return {**os.environ, **loopback_dns_env(dict(extra or {}))}


def edgebox_exe() -> str:
    """The ``edgebox`` command of this checkout's .venv, else the one on PATH."""
    exe = REPO / ".venv" / "bin" / "edgebox"
    if exe.exists():
        return str(exe)
    found = shutil.which("edgebox")
    if found is None:
        raise RuntimeError("edgebox CLI not installed (pip install -e . into .venv)")
    return found


@contextmanager
def running_edgebox(data: Path, log_path: Path, offset: int, timeout: float = 600) -> Iterator[int]:
    """Run `edgebox run` on an initialised *data* dir until the block ends; yield its pid.

    Returns once it printed ``ready`` (its ports are the dev ports + *offset*).
    """
    # Every simulated user connects from LOOPBACK: the per-source share of each listener
    # (docs/sign-in-protection.md) would cap the load, so it is lifted to the totals.
    env = box_environment({"EDGEBOX_MAX_CONNECTIONS_PER_SOURCE": "200",
                           "EDGEBOX_MAX_WEB_CONNECTIONS_PER_SOURCE": "5000"})  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [edgebox_exe(), "run", "--data", str(data), "--port-offset", str(offset),
             "--bind", LOOPBACK],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while "ready" not in log_path.read_text(errors="replace").split("\n"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("edgebox did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def edgebox_server(
    workdir: Path,
    port_offset: int,
    timeout: float = 60.0,
    configure: Callable[[Path], None] | None = None,
) -> Iterator[tuple[psutil.Process, int]]:
    """Init a fresh data dir, add the recipient, run edgebox; yield (process, MX port).

    *configure*, if given, is called with the data dir after init and before the run
    (to change settings, e.g. turn scanning on).
    """
    exe = edgebox_exe()
    data = workdir / "edgebox-data"
    log_path = workdir / "edgebox.log"
    for argv, stdin in (
        (["init", "--data", str(data), "--domain", DOMAIN], b""),
        (
            ["user", "add", "--data", str(data), RCPT, "--name", "Bench Rcpt", "--password-stdin"],
            RCPT_PASSWORD.encode(),
        ),
    ):
        done = subprocess.run(
            [exe, *argv], input=stdin, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"edgebox {argv[0]} failed ({done.returncode}):\n"
                f"{(done.stdout + done.stderr).decode(errors='replace')}"
            )
    if configure is not None:
        configure(data)
    port = MX_BASE_PORT + port_offset
    if port_answers(LOOPBACK, port):
        raise RuntimeError(f"port {port} already in use; pass another --port-offset")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                exe,
                "run",
                "--data",
                str(data),
                "--port-offset",
                str(port_offset),
                "--bind",
                LOOPBACK,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=box_environment(),
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            # Trust the port edgebox says it bound, if it says so.
            m = LISTEN_RE.search(log_path.read_text(errors="replace"))
            if m:
                port = int(m.group(2))
            if port_answers(LOOPBACK, port):
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"edgebox run exited {proc.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"edgebox MX port {port} not answering after {timeout}s")
            time.sleep(0.1)
        yield psutil.Process(proc.pid), port
    finally:
        tree = []
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for child in tree:  # a worker that outlived its parent would skew the next run
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
