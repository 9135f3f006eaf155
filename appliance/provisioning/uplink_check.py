"""The wizard's live check of the uplink: the hub, then the central mail servers.

Before the wizard keeps a hub address and token, it checks them the way enrolment will
use them, and says which part failed:

1. the token parses, and the hub's address is an ``https://`` URL;
2. the hub answers ``/sync/v1/ca`` with the CA whose fingerprint the token carries
   (appliance.sync.enrol.fetch_hub_ca) — so a wrong hub or a man in the middle is caught
   here, before the one-time token is spent at apply;
3. the central mail servers that answer names (submission and IMAP) greet as mail
   servers do: ``220`` from SMTP (RFC 5321 §4.2), ``* OK`` from IMAP (RFC 9051 §7.1.1),
   over TLS for ``smtps://`` and ``imaps://`` (certificate checked at enrolment, not
   here: the box does not trust the centre's CA yet).

Nothing is sent but the CA request and the greetings are only read; the token is not
used up. `greeting_ok` is the pure part; `check_uplink` does the I/O.

What this is not: enrolment (appliance.sync.enrol, run at apply).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from appliance.security.tls import harden
from appliance.sync.central import CentralError, parse_endpoint
from appliance.sync.enrol import EnrolError, fetch_hub_ca
from appliance.sync.hub.enrolment import EnrolmentToken, TokenFormatError

#: Seconds each part of the check may take: a technician is waiting at the page.
CHECK_TIMEOUT: Final = 10.0
#: A greeting longer than this is not a mail server's.
MAX_GREETING: Final = 1024


@dataclass(frozen=True)
class CheckLine:
    """One part of the check: what, whether it passed, and why (Thai and English)."""

    what: str
    ok: bool
    en: str
    th: str


def greeting_ok(scheme: str, greeting: bytes) -> bool:
    """Whether *greeting* is how a server of *scheme* opens a session."""
    line = greeting.split(b"\r\n", 1)[0]
    if scheme in ("smtp", "smtps"):
        return line.startswith(b"220")  # RFC 5321 §4.2: 220 <domain> greeting
    return line.upper().startswith((b"* OK", b"* PREAUTH"))  # RFC 9051 §7.1.1 / §7.1.4


def _insecure_tls() -> ssl.SSLContext:
    # Only a greeting is read on this connection; nothing is sent.
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def read_greeting(url: str) -> tuple[str, bytes]:
    """Connect to the mail server at *url* and return its scheme and first line."""
    endpoint = parse_endpoint(url, ("smtp", "smtps", "imap", "imaps"))
    stream: trio.abc.Stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    try:
        if endpoint.scheme in ("smtps", "imaps"):
            tls = trio.SSLStream(stream, _insecure_tls(), server_hostname=endpoint.host)
            await tls.do_handshake()
            stream = tls
        data = b""
        while b"\r\n" not in data and len(data) < MAX_GREETING:
            chunk = await stream.receive_some(MAX_GREETING)
            if not chunk:
                break
            data += chunk
        return endpoint.scheme, data
    finally:
        await stream.aclose()


async def check_uplink(data_dir: Path, hub_url: str, token_text: str) -> list[CheckLine]:
    """Check the hub and the central mail servers; one `CheckLine` per part."""
    try:
        token = EnrolmentToken.parse(token_text.strip())
        url = str(parse_endpoint(hub_url, ("https",)))
    except (TokenFormatError, CentralError) as exc:
        return [CheckLine("token", False, f"the address or token is not valid: {exc}",
                          f"ที่อยู่หรือรหัสลงทะเบียนไม่ถูกต้อง: {exc}")]  # fmt: skip
    lines: list[CheckLine] = []
    with trio.move_on_after(CHECK_TIMEOUT) as scope:
        try:
            _ca, answer = await fetch_hub_ca(data_dir, url, token, CHECK_TIMEOUT)
        except EnrolError as exc:
            return [CheckLine("hub", False, str(exc), f"ติดต่อศูนย์ไม่สำเร็จ: {exc}")]
    if scope.cancelled_caught:
        return [CheckLine("hub", False, f"no answer from {url} in {CHECK_TIMEOUT:g} s",
                          f"ศูนย์ที่ {url} ไม่ตอบภายใน {CHECK_TIMEOUT:g} วินาที")]  # fmt: skip
    lines.append(CheckLine("hub", True, f"{url} answered with the CA the token names",
                           f"ศูนย์ {url} ตอบด้วยใบรับรองตรงกับรหัสลงทะเบียน"))  # fmt: skip
    for name in ("central_smtp", "central_imap"):
        server = answer.get(name)
        if not isinstance(server, str) or not server:
            continue
        lines.append(await _check_server(name, server))
    return lines


async def _check_server(name: str, url: str) -> CheckLine:
    greeting = b""
    scheme = ""
    problem = ""
    with trio.move_on_after(CHECK_TIMEOUT) as scope:
        try:
            scheme, greeting = await read_greeting(url)
        except (OSError, CentralError, trio.BrokenResourceError, ssl.SSLError) as exc:
            problem = str(exc) or type(exc).__name__
    if scope.cancelled_caught:
        problem = f"no answer in {CHECK_TIMEOUT:g} s"
    if not problem and not greeting_ok(scheme, greeting):
        problem = f"it did not greet as a mail server ({greeting[:60]!r})"
    if problem:
        return CheckLine(name, False, f"{url}: {problem}", f"{url}: ติดต่อไม่สำเร็จ ({problem})")
    return CheckLine(name, True, f"{url} answered", f"{url} ตอบรับ")
