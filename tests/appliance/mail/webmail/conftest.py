"""A real box with the HTTPS service and the webmail pages, and two signed-in users.

`Browser` is one user's signed-in client: it sends the session cookie, and on a POST
the Origin and the page's CSRF token, as a browser on our own page would. Mail arrives
through `box.delivery.deliver`, the path SMTP takes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import trio

from appliance.box import Box
from appliance.directory import User
from appliance.directory.sessions import BROWSER_TTL
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.mailboxes import Mailboxes
from appliance.mail.mailstore import StoredMessage
from appliance.mail.webmail.pages import MailPages
from appliance.registry import page_kit, session_api
from appliance.web.csrf import csrf_token_for
from appliance.web.pages import CommonPages
from tests.appliance.conftest import BoxFactory, Person
from tests.appliance.web.conftest import Reply, Server, start_server

DOMAIN = "test.go.th"
ADDRESS = f"somchai@{DOMAIN}"
OTHER = f"somsri@{DOMAIN}"
PASSWORD = "รหัสลับ-ทดสอบ-2567"
_serial = itertools.count(1)
TRACE = Trace(helo="client.test.go.th", client_ip="192.0.2.7", protocol="ESMTPSA")


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    # No mailboxes yet: the first delivery or webmail visit makes them (tests rely on it).
    people = [
        Person(ADDRESS, PASSWORD, "สมชาย ใจดี", "Somchai Jaidee"),
        Person(OTHER, PASSWORD, "สมศรี รักงาน", "Somsri Rakngan"),
    ]
    return await make_box(DOMAIN, people=people, mailboxes=False)


def message(
    subject: str | bytes = "Hello",
    body: str | bytes = "Hello.\r\n",
    *,
    sender: str = "Prasert <prasert@example.org>",
    to: str = ADDRESS,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    """A simple RFC 5322 message; bytes values go in unchanged (RFC 2047 tests)."""
    subject_bytes = subject if isinstance(subject, bytes) else subject.encode("utf-8")
    body_bytes = body if isinstance(body, bytes) else body.encode("utf-8")
    head = [
        f"From: {sender}".encode(),
        f"To: {to}".encode(),
        b"Subject: " + subject_bytes,
        b"Date: Tue, 17 Nov 2026 09:30:00 +0700",
        f"Message-ID: <{next(_serial)}@example.org>".encode(),
        b"MIME-Version: 1.0",
        f"Content-Type: {content_type}".encode(),
        *(f"{name}: {value}".encode() for name, value in headers),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body_bytes


async def deliver(box: Box, raw: bytes, *recipients: str) -> None:
    envelope = Envelope(
        sender="prasert@example.org",
        recipients=[Recipient(address, local=True) for address in (recipients or (ADDRESS,))],
        trace=TRACE,
    )
    await box.delivery.deliver(envelope, raw)


async def deliver_many(box: Box, raws: Sequence[bytes]) -> None:
    """Deliver in order of *raws* (UIDs follow it), in one group commit each batch."""
    for raw in raws:
        await deliver(box, raw)


@dataclass
class Browser:
    """One signed-in user's browser."""

    server: Server
    user: User
    token: str

    @property
    def csrf(self) -> str:
        return csrf_token_for(self.token)

    def _headers(self) -> dict[str, str]:
        return {"Cookie": f"edgebox_session={self.token}"}

    async def get(self, path: str) -> Reply:
        return await self.server.request("GET", path, headers=self._headers())

    async def post(
        self, path: str, fields: Sequence[tuple[str, str]], *, csrf: bool = True
    ) -> Reply:
        pairs = list(fields)
        if csrf:
            pairs.append(("csrf_token", self.csrf))
        headers = self._headers() | {
            "Origin": f"https://127.0.0.1:{self.server.port}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return await self.server.request("POST", path, urlencode(pairs).encode(), headers)

    async def page(self, path: str) -> str:
        reply = await self.get(path)
        assert reply.status == 200, (path, reply.status, reply.body[:500])
        return reply.body.decode("utf-8")


@dataclass
class Mail:
    box: Box
    server: Server
    pages: MailPages
    me: Browser
    other: Browser

    @property
    def mailboxes(self) -> Mailboxes:
        return self.pages.mailboxes

    async def stored(self, owner: str = ADDRESS, folder: str = "INBOX") -> list[StoredMessage]:
        return await self.box.mailstore.messages(owner, folder)

    async def flags(self, uid: int, owner: str = ADDRESS, folder: str = "INBOX") -> set[str]:
        found = [m for m in await self.stored(owner, folder) if m.uid == uid]
        assert found, f"no UID {uid} in {folder}"
        return set(found[0].flags)


async def _browser(box: Box, server: Server, address: str) -> Browser:
    user = await box.directory.user(address)
    assert user is not None
    token, _ = await box.sessions.create(
        user, client_ip="127.0.0.1", user_agent=None, ttl=BROWSER_TTL
    )
    return Browser(server, user, token)


@pytest.fixture
async def mail(box: Box, nursery: trio.Nursery) -> Mail:
    kit = page_kit(box)
    pages = MailPages(box.mailstore, kit)
    routes = [*CommonPages(kit, session_api(box)).routes(), *pages.routes()]
    server = await start_server(box, nursery, routes, sessions=box.sessions)
    return Mail(
        box, server, pages, await _browser(box, server, ADDRESS), await _browser(box, server, OTHER)
    )
