"""Real clamd and rspamd for in-process tests, configured by the box's own generators.

`running_engines` writes the test's ClamAV signature (EICAR, as a ``.ndb`` body
signature: freshclam cannot reach the internet here) and one scored rspamd rule, makes
the configuration files with `appliance.protection.engines` exactly as a box does, and
runs both daemons on a private socket and a free loopback port.

`CompiledRules` keeps rspamd's compiled hyperscan databases for the whole test session:
rspamd compiles its regular expressions on the first start in an empty database folder
(about 30 s on the 2-core machine, the longest part of every engine start), and loads
them from that folder when they are there. Each test's rspamd still reads the same
rules and runs the same checks; only the compilation is done once.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from appliance.config import Config, load_config
from appliance.protection.engines import (
    clamd_config,
    engine_dir,
    protection_from_config,
    rspamd_config,
)

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-" + b"ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-" + b"ANTI-UBE-TEST-EMAIL*C.34X"
RSPAMD_RULE = """
regexp {
  EDGEBOX_TEST_JUNK {
    re = "Subject=/edgebox-test-junk/i{header}";
    score = 8.0;
  }
}
"""
START_TIMEOUT = 240.0


class CompiledRules:
    """rspamd's compiled hyperscan databases, shared by every rspamd a test session starts.

    rspamd names each file by a hash of the expressions and the hyperscan build it
    holds, and checks that hash when it loads one: a file that does not fit the rules
    is ignored and those rules are compiled again, so sharing can only save time.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def seed(self, database: Path) -> None:
        """Copy the compiled databases into rspamd's *database* folder (DBDIR) before it starts."""
        database.mkdir(parents=True, exist_ok=True)
        for compiled in _compiled_files(self.folder):
            _copy_if_there(compiled, database / compiled.name)

    def keep(self, database: Path) -> None:
        """Keep what an rspamd that answers has compiled into *database* for the next start."""
        for compiled in _compiled_files(database):
            if (self.folder / compiled.name).exists():
                continue
            # Two pytest workers may keep the same file: each writes its own copy and
            # renames it into place, so a reader never sees half a file.
            partial = self.folder / f".{compiled.name}.{os.getpid()}"
            if _copy_if_there(compiled, partial):
                partial.replace(self.folder / compiled.name)


def _compiled_files(folder: Path) -> list[Path]:
    """The compiled databases in *folder*: ``.hs`` (regexp), ``.hsmc``/``.hsmp``
    (multipattern). Not rspamd's ``.unser`` copies, which it remakes from them in well
    under a second: they would double the 90 MB each box's start copies."""
    return [path for suffix in (".hs", ".hsmc", ".hsmp") for path in folder.glob(f"*{suffix}")]


def _copy_if_there(source: Path, target: Path) -> bool:
    """Copy *source* to *target*; False if rspamd replaced or removed it meanwhile."""
    try:
        shutil.copy(source, target)
    except FileNotFoundError:
        return False
    return True


def box_rspamd_database(data: Path) -> Path:
    """The DBDIR of the rspamd a box with data directory *data* runs (engines.engine_dir)."""
    return data / "run" / "protection" / "rspamd-db"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_engines(
    root: Path, clamd: str, rspamd: str, compiled: CompiledRules | None = None
) -> Iterator[Config]:
    """Run clamd and rspamd for a box whose data directory is *root*/data."""
    database = root / "clamav-db"
    database.mkdir(parents=True)
    (database / "edgebox-test.ndb").write_text(f"Edgebox-Test-EICAR:0:*:{EICAR.hex()}\n")
    rules = root / "rules.conf"
    rules.write_text(RSPAMD_RULE)
    config = dataclasses.replace(
        load_config(root / "data"), protection=True, protection_clamd_database=str(database),
        protection_rspamd_local=str(rules), protection_rspamd_port=_free_port(),
    )  # fmt: skip
    run = engine_dir(config)
    for sub in ("rspamd-db", "rspamd-log"):
        (run / sub).mkdir(parents=True)
    if compiled is not None:
        compiled.seed(run / "rspamd-db")
    (run / "clamd.conf").write_text(clamd_config(config))
    (run / "rspamd.conf").write_text(rspamd_config(config))
    processes = [
        subprocess.Popen([clamd, "-c", str(run / "clamd.conf")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([rspamd, "-f", "-i", "-c", str(run / "rspamd.conf"),
                          f"--var=RUNDIR={run}", f"--var=DBDIR={run / 'rspamd-db'}",
                          f"--var=LOGDIR={run / 'rspamd-log'}", f"--var=LOCAL_CONFDIR={run}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        protection = protection_from_config(config)

        async def both_answer() -> bool:
            return await protection.clamd.ping() and await protection.rspamd.ping()

        deadline = time.monotonic() + START_TIMEOUT
        while not trio.run(both_answer):
            assert time.monotonic() < deadline, "clamd or rspamd did not start"
            assert all(p.poll() is None for p in processes), "an engine exited"
            time.sleep(0.5)
        if compiled is not None:
            compiled.keep(run / "rspamd-db")
        yield config
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
