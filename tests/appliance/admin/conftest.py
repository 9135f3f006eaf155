"""A real box serving two agencies, with the admin console on a running HTTPS server.

People on the box (every password is `PASSWORD`):

- ``root@a.go.th``: box-wide administrator (address in agency A);
- ``admin@a.go.th``: administrator of agency A only;
- ``staff@a.go.th``, ``staff@b.go.th``: ordinary users, one per agency.

`Console.as_user(address)` signs someone in (a session made directly in the store) and
returns a client that sends the session cookie and, on POST, the same-origin headers
and the CSRF token a page of ours would carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import trio

from appliance.box import Box
from appliance.directory.sessions import BROWSER_TTL
from appliance.registry import admin_console, page_kit, session_api
from appliance.web.csrf import csrf_token_for
from appliance.web.pages import CommonPages
from tests.appliance.conftest import Agency, BoxFactory, Person
from tests.appliance.web.conftest import Reply, Server, start_server

A = "a.go.th"
B = "b.go.th"
ROOT = f"root@{A}"
ADMIN_A = f"admin@{A}"
STAFF_A = f"staff@{A}"
STAFF_B = f"staff@{B}"
PASSWORD = "รหัสผ่าน-ทดสอบ-2567"


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    return await two_agencies(make_box)


async def two_agencies(make_box: BoxFactory) -> Box:
    """Open the box described above: agencies A and B, their admins and staff."""
    people = [
        Person(ROOT, PASSWORD, "ผู้ดูแล ส่วนกลาง", "Root Admin", box_admin=True),
        Person(ADMIN_A, PASSWORD, "ผู้ดูแล กรมเอ", admin=True),
        Person(STAFF_A, PASSWORD, "สมชาย ใจดี", "Somchai Jaidee", unit="กองคลัง", rank=3),
        Person(STAFF_B, PASSWORD, "มาลี ศรีสุข", "Malee Srisuk", unit="กองการเจ้าหน้าที่", rank=4),
    ]
    return await make_box(
        A, agency_name="กรมเอ", agencies=[Agency(B, "กรมบี", "Department B")], people=people
    )


@dataclass
class Client:
    """One signed-in browser: cookie, origin and CSRF token of its session."""

    server: Server
    token: str

    async def get(self, path: str) -> Reply:
        return await self.server.request("GET", path, headers={"Cookie": self._cookie()})

    async def post(
        self, path: str, fields: dict[str, str] | None = None, *, csrf: bool = True
    ) -> Reply:
        form = dict(fields or {})
        if csrf:
            form["csrf_token"] = csrf_token_for(self.token)
        headers = {
            "Cookie": self._cookie(),
            "Origin": f"https://127.0.0.1:{self.server.port}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return await self.server.request("POST", path, urlencode(form).encode(), headers)

    def _cookie(self) -> str:
        return f"edgebox_session={self.token}"


@dataclass
class Console:
    box: Box
    server: Server

    async def as_user(self, address: str) -> Client:
        user = await self.box.directory.user(address)
        assert user is not None
        token, _ = await self.box.sessions.create(
            user, client_ip="127.0.0.1", user_agent="pytest", ttl=BROWSER_TTL
        )
        return Client(self.server, token)


@pytest.fixture
async def console(box: Box, nursery: trio.Nursery) -> Console:
    # The box's own Sessions, as in production (appliance.registry): a revoke through
    # box.sessions must clear the very cache the server resolves tokens with.
    kit = page_kit(box)
    routes = [*CommonPages(kit, session_api(box)).routes(), *admin_console(box, kit)]
    server = await start_server(box, nursery, routes, sessions=box.sessions)
    return Console(box, server)
