"""A loopback DNS server answering TXT queries from a dict, for DKIM tests.

Real DNS over UDP on 127.0.0.1 (dnspython's message codec), so an independent verifier
such as dkimpy's ``dkimverify`` script can look keys up exactly as it would on a real
network; `resolver_override` writes the ``sitecustomize`` that points its resolver here.
Names not in the dict get NXDOMAIN, and a name in it asked for another type an empty
answer; both carry an SOA in the authority section as a real server's do (RFC 2308 §3),
so the box's resolver cache keeps them for its MINIMUM (`NEGATIVE_TTL`). It serves in a
thread until the context exits; each wait is bounded by a socket timeout.

`no_records` is one such server knowing no names, shared by the whole test run: every
box a test starts asks it unless the test brings its own (tests/harness.py,
tests/conftest.py), so the MX's SPF and DMARC look-ups never leave the machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

#: The SOA's TTL and MINIMUM: how long a negative answer may be kept (RFC 2308 §5).
NEGATIVE_TTL = 60


def _quoted(value: str) -> str:
    # RFC 1035 §3.3.14: a TXT record is strings of at most 255 octets each.
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


@contextmanager
def txt_server(records: dict[str, str]) -> Iterator[int]:
    """Serve *records* (name without trailing dot -> TXT value); yield the UDP port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            value = records.get(name)
            if value is None or question.rdtype != dns.rdatatype.TXT:
                response.set_rcode(dns.rcode.NXDOMAIN if value is None else dns.rcode.NOERROR)
                response.authority.append(_soa(question.name))
            else:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, "TXT", _quoted(value))
                )
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def _soa(name: dns.name.Name) -> dns.rrset.RRset:
    # The stub plays the authority of the name's parent zone (the root for a TLD).
    zone = name.parent() if len(name) > 1 else name
    return dns.rrset.from_text(
        zone, NEGATIVE_TTL, dns.rdataclass.IN, "SOA",
        f"ns.invalid. hostmaster.invalid. 1 3600 600 86400 {NEGATIVE_TTL}",
    )  # fmt: skip


def resolver_override(directory: Path, port: int) -> Path:
    """Write a ``sitecustomize.py`` sending dnspython's queries to 127.0.0.1:*port*.

    Put the returned folder first on PYTHONPATH of a subprocess: Python imports
    ``sitecustomize`` at start-up, before the program runs, so the program itself is
    unchanged; only where its resolver asks is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # A folder written again for another port (a test's second server) must not run a
    # cached sitecustomize.pyc: Python trusts it when the source's size and mtime (whole
    # seconds) match, and the new port has as many digits, written in the same second.
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)
    (directory / "sitecustomize.py").write_text(
        "import dns.resolver\n"
        "_r = dns.resolver.Resolver(configure=False)\n"
        "_r.nameservers = ['127.0.0.1']\n"
        f"_r.port = {port}\n"
        "_r.timeout = _r.lifetime = 5\n"
        "dns.resolver.default_resolver = _r\n"
    )
    return directory


_shared: tuple[int, Path] | None = None
_shared_lock = threading.Lock()


def no_records() -> tuple[int, Path]:
    """Return the port of the run's shared empty DNS server and its override folder."""
    global _shared
    with _shared_lock:
        if _shared is None:
            stack = ExitStack()
            port = stack.enter_context(txt_server({}))
            atexit.register(stack.close)
            folder = Path(tempfile.mkdtemp(prefix="edgebox-dns-"))
            _shared = (port, resolver_override(folder, port))
        return _shared


def loopback_dns_env(env: dict[str, str]) -> dict[str, str]:
    """Return *env* for an edgebox process whose resolver asks the shared empty server.

    The MX's SPF and DMARC look-ups then stay on the machine (the network rule) and
    answer at once; an *env* that sets PYTHONPATH itself (a test with its own records)
    is returned unchanged.
    """
    if "PYTHONPATH" in env:
        return env
    _, site = no_records()
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
