"""Hub worker processes: `edgebox hub worker` ×2 share the sync port and the PostgreSQL store.

Real processes, the real mutual-TLS listener: a box enrols with whichever worker the
kernel hands its connection to, then asks both (new connections spread over the
workers by SO_REUSEPORT); after one worker stops, the other answers everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from appliance.box import init_box
from appliance.config import DEV_PORTS
from appliance.provisioning.enrol import enroll
from appliance.sync.clock import ManualClock
from appliance.sync.hub.ca import fingerprint
from appliance.sync.hub.chat import PULL_PATH
from appliance.sync.hub.enrolment import Enrolment, open_hub_database
from appliance.sync.hub_client import HubClient
from tests.harness import EDGEBOX, READY_TIMEOUT, free_port_offset


class _Worker:
    """One `edgebox hub worker` process, started and read until it says ``ready``."""

    def __init__(self, data: Path, offset: int, number: int, url: str) -> None:
        env = {**os.environ, "EDGEBOX_HUB_DATABASE": url, "EDGEBOX_ROLE": "hub"}
        args = [*EDGEBOX, "hub", "worker", "--data", str(data), "--port-offset", str(offset),
                "--worker", str(number)]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.output: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                if line.strip() == "ready":
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.wait(0.1) and time.monotonic() < deadline:
            pass
        if "ready" not in [line.strip() for line in self.output]:
            self.stop(signal.SIGKILL)
            raise AssertionError("hub worker did not start:\n" + "\n".join(self.output))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(30)
        self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


async def _pull(edge: Path, url: str) -> object:
    client = HubClient(edge / "keys", url, timeout=30)  # a new connection each time
    try:
        return await client(PULL_PATH, {"after": 0, "limit": 10})
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_two_worker_processes_share_the_port_and_the_store(
    tmp_path: Path, pg_url: str
) -> None:
    hub = tmp_path / "hub"
    await init_box(hub, "hub.go.th")
    offset = free_port_offset()
    url = f"https://127.0.0.1:{DEV_PORTS['hub-sync'] + offset}"
    workers = [_Worker(hub, offset, n, pg_url) for n in (1, 2)]
    try:
        for worker in workers:
            assert any("hub-sync worker" in line for line in worker.output)
        ca = x509.load_pem_x509_certificate((hub / "keys" / "ca.pem").read_bytes())
        async with open_hub_database(hub, pg_url) as db:
            token = await Enrolment(db, ManualClock()).issue_token("moe.go.th", fingerprint(ca))
        edge = tmp_path / "edge"
        await init_box(edge, "moe.go.th")
        await enroll(edge, url, str(token))
        for _ in range(8):
            assert await _pull(edge, url) == {"events": [], "cursor": 0, "more": False}
        assert workers[0].stop() == 0
        # The other worker now takes every new connection; the box notices nothing.
        for _ in range(4):
            assert await _pull(edge, url) == {"events": [], "cursor": 0, "more": False}
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)


def test_a_worker_needs_a_postgresql_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [*EDGEBOX, "hub", "worker", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "EDGEBOX_ROLE": "hub"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "hub_database" in done.stderr
