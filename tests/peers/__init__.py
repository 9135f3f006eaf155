"""Reference peers: private Postfix and Dovecot instances for e2e tests and benchmarks.

This package starts Debian's own ``postfix`` and ``dovecot`` binaries from a temporary
directory, on 127.0.0.1 only, with configuration written from scratch by
:mod:`tests.peers.postfix` and :mod:`tests.peers.dovecot`. It never reads or writes
/etc/postfix or /etc/dovecot and never binds a well-known mail port, so it can run next to
(or without) the system's own instances.

It is not a general Postfix/Dovecot configuration tool and not meant for production: auth
runs as root, passwords are stored in plain text, TLS uses a throw-away self-signed cert.

This module holds the small helpers both servers share (free ports, waiting for a port,
self-signed certificates, killing a process tree); import the servers from their modules::

    from tests.peers.dovecot import DovecotServer
    from tests.peers.postfix import PostfixServer
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

LOOPBACK = "127.0.0.1"


class PeerServer:
    """Lifecycle shared by the private peers: a context manager around start()/stop().

    Subclasses set ``self._proc`` when their server process runs.
    """

    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """Root of the instance's process tree."""
        return self._proc.pid if self._proc is not None else None


class PeerError(RuntimeError):
    """A reference peer failed to start, or a needed binary is missing."""


def require_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or raise with the Debian package that provides it."""
    # /usr/sbin is not on a non-root PATH on Debian; postfix and dovecot live there.
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if path is None:
        raise PeerError(f"{name} not found: apt-get install {package}")
    return path


def free_port(host: str = LOOPBACK) -> int:
    """Ask the kernel for a currently free TCP port on ``host``.

    There is a small window before the peer binds it; acceptable for tests, and explicit
    ports can always be passed instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_free(*ports: int | None, host: str = LOOPBACK) -> None:
    """Raise PeerError if an explicitly requested port already has a listener."""
    for port in ports:
        if port and port_answers(host, port):
            raise PeerError(f"{host}:{port} is already in use")


def wait_for_ports(
    host: str,
    ports: Iterable[int],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    what: str = "peer",
) -> None:
    """Block until every port accepts a TCP connection, or raise with the log tail.

    ``proc`` is the foreground master: if it exits early there is no point waiting.
    """
    pending = list(ports)
    deadline = time.monotonic() + timeout
    while pending:
        if port_answers(host, pending[0]):
            pending.pop(0)
            continue
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"{what} exited with {proc.returncode}\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise PeerError(
                f"{what}: {host}:{pending} not answering after {timeout}s\n{log_tail(log_path)}"
            )
        time.sleep(0.05)


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def self_signed_cert(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Write a throw-away EC P-256 cert + key for ``hostname`` and 127.0.0.1.

    EC rather than RSA because key generation is instant, which matters when every test
    starts its own server.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def traversable_by(path: Path, uid: int, gid: int) -> bool:
    """True if a process running as uid/gid can reach ``path`` (x on every ancestor).

    Dovecot's mail processes drop to an unprivileged uid before touching the maildir, and
    pytest's tmp_path lives under a 0700 root-owned directory, so this decides where the
    mail store can go.
    """
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty if it is already gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_leftovers(procs: Iterable[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL whatever of ``procs`` is still alive.

    psutil.Process checks the creation time, so a recycled pid is never signalled.
    """
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
            alive.append(p)
    _, still = psutil.wait_procs(alive, timeout=grace)
    for p in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(still, timeout=grace)
