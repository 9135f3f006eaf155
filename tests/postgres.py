"""A private PostgreSQL server for tests: Debian's initdb and pg_ctl in a temporary directory.

One server per test session (`PrivatePostgres`), reached only over a Unix socket in
its own directory (``listen_addresses = ''``: nothing listens on the network), and a
fresh database per test (`PrivatePostgres.new_database`), so tests never see each
other's rows. PostgreSQL refuses to run as root; as root (the CI machine) the server
runs as Debian's ``postgres`` user. ``fsync = off``: the tests check order and rules,
not power cuts, and the machine is shared; a benchmark asks for ``durable=True`` (fsync
and synchronous commit on, as a production hub runs, and more shared buffers).

`ReplicatedPostgres` is the other shape, for failover tests: a primary and its
synchronous streaming standby (``pg_basebackup -R``), each on a private TCP port of
127.0.0.1, one test each (the test kills the primary), reached through a multi-host
URL that names both.

What this is not: a way to test against a real hub's server.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.harness import missing_prerequisite

#: Where Debian's postgresql-15 puts its server programs (not on PATH).
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_server_user(args: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(args)
    return ["runuser", "-u", "postgres", "--", *args]


class PrivatePostgres:
    """A PostgreSQL server of our own under a temporary directory; see the module doc."""

    def __init__(self, *, durable: bool = False) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                missing_prerequisite(f"{PG_BIN / tool} is not installed (Debian postgresql-15)")
        self.root = Path(tempfile.mkdtemp(prefix="edgebox-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self._names = itertools.count(1)
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        options = f"-k {self.root} -c listen_addresses='' -c max_connections=200" + (
            " -c shared_buffers=256MB"
            if durable
            else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c shared_buffers=32MB"
        )
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options,
                  "-l", self.root / "server.log", "-w", "-t", "60", "start")  # fmt: skip

    def _run(self, *args: object) -> None:
        command = _as_server_user([str(a) for a in args])
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        """The URL of *database* on this server, over its Unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}"

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    """A port of 127.0.0.1 free now, below the ephemeral range (tests.harness's reason)."""
    for _ in range(200):
        port = random.randrange(20_000, 30_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def _children(pid: int) -> list[int]:
    """The processes whose parent is *pid* (a postmaster's backends), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces, so read after its ")".
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether *pid* still runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class ReplicatedPostgres:
    """A primary and a synchronous streaming standby of it, for failover tests.

    The primary listens on 127.0.0.1:`primary_port` with ``synchronous_standby_names
    = 'hub_replica'`` and ``synchronous_commit = on``: a COMMIT returns only once the
    standby has the transaction's WAL, so what a hub was told is committed is on the
    standby when the primary dies. The standby is made with ``pg_basebackup -R``
    (PostgreSQL writes its ``primary_conninfo`` and ``standby.signal``) and started as
    ``cluster_name = 'hub_replica'``, the name its WAL receiver reports. The primary's
    replication settings are given on its command line, not in the data directory, so
    the standby's copy does not carry them: promoted, it commits without waiting for a
    standby of its own (docs/hub-postgresql.md says what an operator does instead).

    ``fsync = off`` on both: the failure here is a process killed, not a power cut,
    and what was written stays in the kernel's cache.
    """

    STANDBY_NAME = "hub_replica"

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "pg_basebackup"):
            if not (PG_BIN / tool).exists():
                missing_prerequisite(f"{PG_BIN / tool} is not installed (Debian postgresql-15)")
        self.root = Path(tempfile.mkdtemp(prefix="edgebox-pgrep-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.primary = self.root / "primary"
        self.replica = self.root / "replica"
        self.primary_port = _free_port()
        self.replica_port = _free_port()
        while self.replica_port == self.primary_port:
            self.replica_port = _free_port()
        self._names = itertools.count(1)
        self._started: list[Path] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._run(PG_BIN / "initdb", "-D", self.primary, "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        # track_commit_timestamp: a failover test reads when each row committed.
        common = (
            f"-k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200 -c shared_buffers=32MB -c track_commit_timestamp=on"
        )
        primary = (
            f"{common} -p {self.primary_port} -c wal_level=replica -c max_wal_senders=4"
            f" -c synchronous_standby_names={self.STANDBY_NAME} -c synchronous_commit=on"
        )
        self._pg_ctl_start(self.primary, primary)
        # Its own connection string and standby.signal in the copy (-R); WAL streamed
        # during the copy (-X stream), so the standby starts consistent.
        self._run(PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", self.primary_port,
                  "-U", "postgres", "-D", self.replica, "-R", "-X", "stream",
                  "-c", "fast", "--no-sync")  # fmt: skip
        replica = f"{common} -p {self.replica_port} -c cluster_name={self.STANDBY_NAME}"
        self._pg_ctl_start(self.replica, replica)
        self._wait_until_synchronous()

    def _pg_ctl_start(self, data: Path, options: str) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", data, "-o", options,
                  "-l", self.root / f"{data.name}.log", "-w", "-t", "60", "start")  # fmt: skip
        self._started.append(data)

    def _wait_until_synchronous(self) -> None:
        import psycopg

        deadline = time.monotonic() + 60
        with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (self.STANDBY_NAME,),
                ).fetchone()
                if row is not None and row[0] == "sync":
                    return
                time.sleep(0.1)
        raise RuntimeError("the standby never became synchronous:\n" + self.logs())

    def _run(self, *args: object) -> None:
        command = _as_server_user([str(a) for a in args])
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        """The multi-host URL of *database*: both servers, whichever takes writes."""
        hosts = f"127.0.0.1:{self.primary_port},127.0.0.1:{self.replica_port}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    @staticmethod
    def url_of(port: int, database: str = "postgres") -> str:
        """The URL of *database* on the one server at *port*."""
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    def new_database(self) -> str:
        """Create an empty database on the primary; return its multi-host URL."""
        import psycopg

        name = f"failover_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def wait_for_replay(self) -> None:
        """Wait until the standby has applied everything the primary wrote so far.

        A synchronous COMMIT waits for the standby to have the WAL on disk, not to
        have applied it: a test reading the standby right after a write waits here.
        """
        import psycopg

        with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as primary:
            row = primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        deadline = time.monotonic() + 30
        with psycopg.connect(self.url_of(self.replica_port), autocommit=True) as standby:
            while time.monotonic() < deadline:
                done = standby.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
                ).fetchone()
                if done is not None and done[0]:
                    return
                time.sleep(0.05)
        raise RuntimeError("the standby did not catch up in 30 s:\n" + self.logs())

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every backend of it at once: a crash.

        Nothing is shut down cleanly: no checkpoint, no goodbye to clients or to the
        standby, as when the machine under it dies.
        """
        pid = int((self.primary / "postmaster.pid").read_text().split()[0])
        # Stopped first, the postmaster forks no new backend while its children are
        # listed (on a busy machine that takes a while) and killed.
        os.kill(pid, signal.SIGSTOP)
        for victim in [*_children(pid), pid]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def promote(self) -> None:
        """Promote the standby (``pg_ctl promote``) and wait until it takes writes."""
        self._run(PG_BIN / "pg_ctl", "-D", self.replica, "-w", "-t", "60", "promote")

    def logs(self) -> str:
        """Both servers' logs, for a failing test's output."""
        parts = []
        for data in (self.primary, self.replica):
            log = self.root / f"{data.name}.log"
            if log.exists():
                parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        try:
            for data in self._started:
                if (data / "postmaster.pid").exists():
                    try:
                        self._run(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
                    except RuntimeError:
                        pass  # killed already (the primary, by the test)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
