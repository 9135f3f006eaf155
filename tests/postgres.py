"""A private PostgreSQL server for tests: Debian's initdb and pg_ctl in a temporary directory.

One server per test session (`PrivatePostgres`), reached only over a Unix socket in
its own directory (``listen_addresses = ''``: nothing listens on the network), and a
fresh database per test (`PrivatePostgres.new_database`), so tests never see each
other's rows. PostgreSQL refuses to run as root; as root (the CI machine) the server
runs as Debian's ``postgres`` user. ``fsync = off``: the tests check order and rules,
not power cuts, and the machine is shared; a benchmark asks for ``durable=True`` (fsync
and synchronous commit on, as a production hub runs, and more shared buffers).

What this is not: a way to test against a real hub's server, or a replica set.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
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
