"""Run and watch the scanning engines: clamd and rspamd, configured from the box's settings.

Two ways (``protection_engines``):

- ``box`` (development, tests, a box without the image's units): edgebox writes a
  configuration for each engine into ``DATA/run/protection/`` and runs them as its own
  children — clamd on a private unix socket, rspamd's normal worker on a loopback
  port — restarting one that exits, with back-off. A clean stop stops them; after a
  killed box, the next start stops what it left running (`stop_leftover`, from the
  ``<engine>.started`` run file the box writes at each start).
- ``system`` (the image): systemd runs them from the units in ``image_build/systemd/``
  on their Debian sockets; edgebox only watches them.

Either way `EngineWatch` asks each engine every `PROBE_INTERVAL` seconds whether it
answers (clamd ``PING``, rspamd ``/ping``) and writes ``DATA/run/protection.json``,
which the health check (appliance.health.checks.protection) and `edgebox status` read.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import psutil
import trio

from appliance.config import Config
from appliance.protection.scanner import (
    ClamdClient,
    Protection,
    RspamdClient,
    ScannerUnavailable,
)
from appliance.protection.verdict import SenderLists, Thresholds
from appliance.store.files import write_atomically

log = logging.getLogger("edgebox.protection")

STATE_FILE = Path("run") / "protection.json"
PROBE_INTERVAL = 10.0
#: Seconds between probes while an engine does not answer (starting, restarted after a
#: crash): the status and the health check say "answering" within a second of it.
PROBE_INTERVAL_DOWN = 1.0
MAX_BACKOFF = 30.0
#: On the image (``system``): Debian's clamd socket (clamav-daemon.socket) and rspamd's
#: normal worker.
SYSTEM_CLAMD_SOCKET = "/run/clamav/clamd.ctl"
SYSTEM_RSPAMD = ("127.0.0.1", 11333)


def engine_dir(config: Config) -> Path:
    return config.data_dir / "run" / "protection"


def clamd_socket(config: Config) -> Path:
    if config.protection_clamd_socket:
        return Path(config.protection_clamd_socket)
    if config.protection_engines == "system":
        return Path(SYSTEM_CLAMD_SOCKET)
    return engine_dir(config) / "clamd.sock"


def rspamd_address(config: Config) -> tuple[str, int]:
    if config.protection_engines == "system":
        return SYSTEM_RSPAMD
    # Beside the box's other ports: two boxes on one machine each have their own.
    return "127.0.0.1", config.protection_rspamd_port + config.port_offset


def clamd_config(config: Config) -> str:
    """clamd.conf(5) for a clamd the box runs itself."""
    run = engine_dir(config)
    # StreamMaxLength above the largest message the box accepts: a message clamd
    # cannot read whole is an error, never "clean".
    stream_max = max(config.max_message_size * 2, 25 * 1024 * 1024)
    return (
        "# Written by edgebox from its settings; edits are overwritten at start.\n"
        f"LocalSocket {clamd_socket(config)}\n"
        "LocalSocketMode 660\n"
        f"DatabaseDirectory {config.protection_clamd_database}\n"
        "Foreground yes\n"
        f"PidFile {run / 'clamd.pid'}\n"
        f"TemporaryDirectory {run}\n"
        f"LogFile {run / 'clamd.log'}\n"
        "LogFileMaxSize 1M\n"
        f"StreamMaxLength {stream_max}\n"
        "MaxThreads 4\n"
        "ScanMail yes\n"
        "ScanArchive yes\n"
        "SelfCheck 600\n"
    )


def rspamd_config(config: Config) -> str:
    """An rspamd.conf for a box-run rspamd: Debian's rules, one normal worker, no network.

    Debian's shared rules are included as they are; only the worker, the paths and
    DNS change. The box is often cut off, so DNS goes nowhere fast rather than
    timing out on every message (lookups simply find nothing); the GTUBE test
    patterns are on so an admin can test the path. ``protection_rspamd_local`` may
    name one more file of rules, included last (docs/protection.md).
    """
    host, port = rspamd_address(config)
    local = config.protection_rspamd_local
    include_local = f'.include(try=true,priority=10) "{local}"\n' if local else ""
    return (
        "# Written by edgebox from its settings; edits are overwritten at start.\n"
        '.include "$CONFDIR/common.conf"\n'
        "options {\n"
        '    pidfile = "$RUNDIR/rspamd.pid";\n'
        '    .include "$CONFDIR/options.inc"\n'
        '    gtube_patterns = "all";\n'
        '    dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\n'
        "}\n"
        'logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "warning"; }\n'
        'worker "normal" {\n'
        f'    bind_socket = "{host}:{port}";\n'
        '    .include "$CONFDIR/worker-normal.inc"\n'
        "    count = 1;\n"
        "}\n" + include_local
    )


def started_file(config: Config, name: str) -> Path:
    """The run file naming the *name* engine process this box started."""
    return engine_dir(config) / f"{name}.started"


def record_started(record: Path, pid: int, command: list[str]) -> None:
    """Write which engine process the box started, so a later start can stop it."""
    try:
        created: float | None = psutil.Process(pid).create_time()
    except psutil.Error:
        created = None
    document = {"pid": pid, "created": created, "command": command}
    write_atomically(record, json.dumps(document).encode())


def _is_ours(process: psutil.Process, command: list[str], created: object) -> bool:
    """Whether *process* is still the engine the record names, not a reused pid."""
    if isinstance(created, int | float) and abs(process.create_time() - created) > 1.0:
        return False
    cmdline = process.cmdline()
    if cmdline == command:
        return True
    # rspamd rewrites its title (/proc/PID/cmdline) to "rspamd: main process"; with the
    # start time and the executable matching that is still the one we ran.
    name = Path(command[0]).name
    return bool(
        cmdline
        and cmdline[0].startswith(f"{name}: main process")
        and Path(process.exe()).name == name
    )


def _running(process: psutil.Process) -> bool:
    try:
        # A zombie has stopped: its new parent (init, not the dead box) reaps it.
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to *timeout* seconds for *processes* to stop; return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def stop_leftover(record: Path) -> bool:
    """Stop the engine a killed box left running, as *record* names it; True if one was.

    The engines run in their own session (a signal to the box's process group must not
    reach them), so a box killed with SIGKILL leaves them running, holding their socket
    and port. rspamd started with ``-f`` writes no pid file, so the box keeps its own
    (`record_started`). Before a signal is sent, /proc/PID/cmdline and the start time
    must still be the ones recorded: a pid reused by another process is left alone.

    Not PR_SET_PDEATHSIG: trio forks from a worker thread, and the signal fires when
    that *thread* ends, killing a healthy engine a few seconds after its start.
    """
    try:
        document = json.loads(record.read_text())
        pid, command = document["pid"], document["command"]
        if not isinstance(pid, int) or not isinstance(command, list) or not command:
            return False
        process = psutil.Process(pid)
        if not _is_ours(process, command, document.get("created")):
            return False
        # rspamd's main process stops its workers; any it leaves are stopped too.
        family = [process, *process.children(recursive=True)]
        log.warning("stopping %s pid=%d left running by a box that was killed", command[0], pid)
        process.terminate()
        for leftover in _wait_gone(family, 10.0):
            leftover.kill()
        _wait_gone(family, 5.0)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False
    return True


def _append_to(path: Path) -> BinaryIO:
    # The engine's own output (start-up errors before its log file is open).
    return open(path, "ab")


@dataclass
class EngineState:
    answering: bool = False
    since: float = 0.0
    restarts: int = 0
    pid: int | None = None
    error: str = ""
    #: clamd only (VERSION): its loaded database's version and build date, if it has one.
    database: int | None = None
    built: str | None = None


def protection_from_config(
    config: Config, agencies: Any = None, hostname: str | None = None
) -> Protection:
    """The scanning façade for *config*; *agencies* reads the per-agency section."""
    defaults = Thresholds(config.protection_junk_score, config.protection_reject_score)

    def lookup(domain: str) -> Thresholds:
        section = agencies() if agencies is not None else {}
        values = section.get(domain) if isinstance(section, dict) else None
        if not isinstance(values, dict):
            return defaults
        try:
            return Thresholds(
                float(values.get("junk_score", defaults.junk_score)),
                float(values.get("reject_score", defaults.reject_score)),
            )
        except (TypeError, ValueError):
            log.warning("bad protection thresholds for %s; using the defaults", domain)
            return defaults

    def lists(domain: str) -> SenderLists:
        section = agencies() if agencies is not None else {}
        values = section.get(domain) if isinstance(section, dict) else None
        if not isinstance(values, dict):
            return SenderLists()
        return SenderLists(*(
            frozenset(str(e).lower() for e in values.get(name, ()) if isinstance(e, str))
            if isinstance(values.get(name), list) else frozenset()
            for name in ("allow", "block")
        ))  # fmt: skip

    host, port = rspamd_address(config)
    return Protection(
        ClamdClient(clamd_socket(config), config.protection_scan_timeout),
        RspamdClient(host, port, config.protection_scan_timeout),
        lookup,
        lists_for=lists,
        submission_unavailable=config.protection_submission_unavailable,
        hostname=hostname or config.hostname or "edgebox",
    )


@dataclass
class EngineWatch:
    """The ``protection`` service: start (``box``) and watch the two engines."""

    config: Config
    protection: Protection
    name: str = "protection"
    states: dict[str, EngineState] = field(
        default_factory=lambda: {"clamd": EngineState(), "rspamd": EngineState()}
    )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        # While the box runs, scans reuse clamd sessions (appliance.protection.scanner).
        async with self.protection.clamd.keep_connections(), trio.open_nursery() as nursery:
            if config.protection_engines == "box":
                run = engine_dir(config)
                run.mkdir(parents=True, exist_ok=True)
                for name in ("rspamd-db", "rspamd-log"):
                    (run / name).mkdir(exist_ok=True)
                for name in ("clamd", "rspamd"):
                    await trio.to_thread.run_sync(stop_leftover, started_file(config, name))
                write_atomically(run / "clamd.conf", clamd_config(config).encode())
                write_atomically(run / "rspamd.conf", rspamd_config(config).encode())
                nursery.start_soon(self._keep_running, "clamd", self._clamd_command())
                nursery.start_soon(self._keep_running, "rspamd", self._rspamd_command())
            self._write_state()
            task_status.started([])
            while True:
                await self._probe()
                answering = all(state.answering for state in self.states.values())
                await trio.sleep(PROBE_INTERVAL if answering else PROBE_INTERVAL_DOWN)

    def _clamd_command(self) -> list[str]:
        return ["clamd", "-c", str(engine_dir(self.config) / "clamd.conf")]

    def _rspamd_command(self) -> list[str]:
        run = engine_dir(self.config)
        return [
            "rspamd", "-f", "-i", "-c", str(run / "rspamd.conf"),
            f"--var=RUNDIR={run}", f"--var=DBDIR={run / 'rspamd-db'}",
            f"--var=LOGDIR={run / 'rspamd-log'}", f"--var=LOCAL_CONFDIR={run}",
        ]  # fmt: skip

    async def _keep_running(self, name: str, command: list[str]) -> None:
        """Run one engine; restart it when it exits, waiting longer each time."""
        state = self.states[name]
        backoff = 1.0
        log_path = engine_dir(self.config) / f"{name}.out"
        while True:
            started = trio.current_time()
            try:
                with _append_to(log_path) as output:
                    process = await trio.lowlevel.open_process(
                        command, stdin=subprocess.DEVNULL, stdout=output,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
            except OSError as exc:
                state.error = f"cannot start {command[0]}: {exc}"
                log.error("%s", state.error)
            else:
                state.pid = process.pid
                log.info("%s started pid=%d", name, process.pid)
                try:
                    record_started(started_file(self.config, name), process.pid, command)
                    code = await process.wait()
                finally:
                    if process.returncode is None:
                        process.terminate()
                        with trio.move_on_after(10) as cleanup:
                            cleanup.shield = True
                            await process.wait()
                        if process.returncode is None:
                            process.kill()
                state.pid = None
                state.error = f"{name} exited with status {code}"
                log.warning("%s", state.error)
            state.answering = False
            state.restarts += 1
            self._write_state()
            if trio.current_time() - started > 60:
                backoff = 1.0
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _probe(self) -> None:
        answers = {
            "clamd": await self.protection.clamd.ping(),
            "rspamd": await self.protection.rspamd.ping(),
        }
        now = time.time()
        for name, answering in answers.items():
            state = self.states[name]
            if answering != state.answering:
                state.since = now
                log.info("%s %s", name, "answers" if answering else "does not answer")
            state.answering = answering
            if answering:
                state.error = ""
            elif not state.error:
                state.error = f"{name} does not answer"
        if answers["clamd"]:
            # For the signature-age check: what clamd has loaded, not what is on disk.
            try:
                version = await self.protection.clamd.version()
            except ScannerUnavailable:
                pass
            else:
                self.states["clamd"].database = version.database
                self.states["clamd"].built = version.built
        self._write_state()

    def _write_state(self) -> None:
        document = {
            "time": time.time(),
            "engines": self.config.protection_engines,
            **{name: state.__dict__ for name, state in self.states.items()},
        }
        path = self.config.data_dir / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(document).encode())


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """``run/protection.json`` as the watch wrote it, or None."""
    try:
        document = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
