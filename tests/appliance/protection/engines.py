"""Real clamd and rspamd for in-process tests, configured by the box's own generators.

`running_engines` writes the test's ClamAV signature (EICAR, as a ``.ndb`` body
signature: freshclam cannot reach the internet here) and one scored rspamd rule, makes
the configuration files with `appliance.protection.engines` exactly as a box does, and
runs both daemons on a private socket and a free loopback port.
"""

from __future__ import annotations

import dataclasses
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_engines(root: Path, clamd: str, rspamd: str) -> Iterator[Config]:
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
        yield config
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
