"""Start real `edgebox` processes for end-to-end tests, on ports no other test uses.

A box is started exactly as an operator would (`edgebox run --data DIR --port-offset N`)
and is ready when it prints ``ready``; the addresses it printed are what the tests
connect to. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from appliance.config import DEV_PORTS
from tests.peers.dns_stub import loopback_dns_env

if TYPE_CHECKING:
    from appliance.box import Box

EDGEBOX = [sys.executable, "-m", "appliance"]
READY_TIMEOUT = 60.0


def edgebox(
    *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run one `edgebox` CLI command and return its result."""
    result = subprocess.run(
        [*EDGEBOX, *args], input=input, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edgebox {' '.join(args)} failed: {result.stderr}")
    return result


#: Runs several `edgebox` commands in one interpreter: ``appliance.cli.main`` for each
#: (argv, stdin) pair of the JSON list in argv[1], stopping at the first that fails.
_COMMANDS = """
import io, json, sys
from appliance.cli import main
for argv, stdin in json.loads(sys.argv[1]):
    sys.stdin = io.StringIO(stdin)
    code = main(argv)
    if code:
        sys.exit(f"edgebox {' '.join(argv)} failed ({code})")
"""


def edgebox_commands(*commands: tuple[list[str], str]) -> None:
    """Run `edgebox` commands, each (argv, stdin), one after the other in one process.

    The same entry point as `edgebox` (``appliance.cli.main``) in one interpreter:
    importing the command's modules takes about 1.3 s of CPU, more than most of the
    set-up commands themselves, and a box made with ten users paid it eleven times.
    """
    done = subprocess.run(
        [sys.executable, "-c", _COMMANDS, json.dumps(commands)],
        capture_output=True, text=True, timeout=120 * len(commands),
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"edgebox commands failed: {done.stderr}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_offset() -> int:
    """Return an offset at which every dev port is free right now.

    Every port stays below the kernel's ephemeral range: an outgoing connection (of any
    process) takes its local port from there, and one that took a killed box's port
    would keep the box from listening again when the test restarts it.
    """
    highest = _ephemeral_ports_start() - max(DEV_PORTS.values()) - 1
    for _ in range(200):
        offset = random.randrange(10_000, highest, 10)
        if all(_port_free(port + offset) for port in DEV_PORTS.values()):
            return offset
    raise RuntimeError("no free port offset found")


#: Set to 1 by a developer who knowingly runs a subset without some tools or without root
#: (docs/testing.md); a missing tool is otherwise a failure, never a silent skip.
ALLOW_MISSING = "EDGEBOX_ALLOW_MISSING_TOOLS"


def missing_prerequisite(message: str) -> None:
    """Fail the test for a missing tool or privilege, or skip it under the opt-out."""
    if os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(f"{message} ({ALLOW_MISSING}=1)")
    pytest.fail(f"{message}; `make test` as root installs it, or set {ALLOW_MISSING}=1 to skip")


def require_tool(name: str) -> str:
    """Return the path of a Debian tool the test drives; fail if it is not installed."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        missing_prerequisite(f"{name} is not installed")
    assert path is not None
    return path


@dataclass
class RunningBox:
    data: Path
    offset: int
    process: subprocess.Popen[str]
    listeners: dict[str, list[str]] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def ca(self) -> Path:
        return self.data / "keys" / "ca.pem"

    def port(self, service: str) -> int:
        return DEV_PORTS[service] + self.offset

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_box(
    data: Path,
    *,
    demo: bool = False,
    offset: int | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> RunningBox:
    """Start `edgebox run` and wait until it prints ``ready``.

    *wrap* goes before the command, e.g. ``ip netns exec NS`` to run the box in a
    network namespace.
    """
    offset = free_port_offset() if offset is None else offset
    args = [*wrap, *EDGEBOX, "run", "--data", str(data), "--port-offset", str(offset), *extra]
    env = loopback_dns_env(dict(env or {}))
    if demo:
        args.append("--demo")
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, **env},
    )
    box = RunningBox(data, offset, process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            box.output.append(line.rstrip("\n"))
            name, sep, address = line.strip().partition(" listening on ")
            if sep:
                box.listeners.setdefault(name, []).append(address)
            if line.strip() == "ready":
                ready.set()
        ready.set()

    box.reader = threading.Thread(target=read, daemon=True)
    box.reader.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            box.kill()  # closes its output too, so nothing leaks into a later test
            raise AssertionError("edgebox did not become ready:\n" + "\n".join(box.output))
    if process.poll() is not None or "ready" not in [line.strip() for line in box.output]:
        box.kill()
        raise AssertionError("edgebox exited before ready:\n" + "\n".join(box.output))
    return box


def init_box(data: Path, domain: str, users: dict[str, str]) -> None:
    """`edgebox init` plus `edgebox user add` for each address → password."""
    edgebox_commands(
        (["init", "--data", str(data), "--domain", domain], ""),
        *(
            (["user", "add", "--data", str(data), address, "--name", address.split("@")[0],
              "--password-stdin"], password + "\n")
            for address, password in users.items()
        ),
    )  # fmt: skip


async def stored(data: Path, address: str, mailbox: str = "INBOX") -> list[tuple[object, bytes]]:
    """Open the box's store in-process and return (row, decrypted bytes) per message."""
    from appliance.box import configured, open_box

    async with open_box(configured(data, {}, {})) as box:
        rows = await box.mailstore.messages(address, mailbox)
        return [(row, await box.mailstore.content(row)) for row in rows]


def curl(box: RunningBox, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, Any]:  # fmt: skip
    """One JSON API request to *box* with Debian's curl, trusting the box's CA; return
    (status, parsed JSON body or None)."""
    args = [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-X", method,
            "-o", "-", "-w", "\n%{http_code}",
            f"https://127.0.0.1:{box.port('https')}{path}"]  # fmt: skip
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    done = subprocess.run(args, capture_output=True, timeout=60, check=True)
    text, _, status = done.stdout.decode().rpartition("\n")
    return int(status), json.loads(text) if text.strip() else None


def read_line(sock: socket.socket) -> bytes:
    """Read one CRLF-ended line (a greeting, a reply) from a plain socket; b"" if closed."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


async def assert_stored_once(
    box: Box,
    users: Sequence[str],
    attempted: dict[str, tuple[list[str], bytes]],
    acked: set[str],
) -> None:
    """Check a crash test's mailboxes: every acknowledged message stored, each once.

    *attempted* maps each message's Subject marker to (its recipients, its body as
    sent); *acked* holds the markers a 250 answered. Every stored copy must decrypt to
    its hash and end with the bytes sent; no marker may be stored twice for a user,
    only for some of its recipients, or be missing if it was acknowledged.
    """
    found: dict[str, list[str]] = {}
    for user in users:
        for row in await box.mailstore.messages(user):
            content = await box.mailstore.content(row)  # raises if not decryptable
            assert hashlib.sha256(content).hexdigest() == row.content_hash
            subject = next(line for line in content.split(b"\r\n") if line.startswith(b"Subject: "))
            marker = subject.removeprefix(b"Subject: ").decode()
            recipients, sent = attempted[marker]
            assert content.endswith(sent), f"{marker} is not byte-exact"
            assert user in recipients
            found.setdefault(marker, []).append(user)
    for marker, holders in found.items():
        assert len(holders) == len(set(holders)), f"{marker} stored twice"
        assert sorted(holders) == sorted(attempted[marker][0]), f"{marker} is half-stored"
    missing = [m for m in acked if m not in found]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
