"""Sign-in, who-am-I and sign-out over real HTTPS, with lock-out and what gets logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from appliance.box import Box
from appliance.compliance.traffic_log import iter_records
from appliance.directory.sessions import Sessions
from appliance.directory.signin import SignIn
from appliance.security.guard import AuthGuard, GuardPolicy
from appliance.web.session_api import session_routes
from tests.appliance.web.conftest import ADDRESS, PASSWORD, Server, start_server

SESSION = "/api/v1/session"
MARK = {"X-Requested-With": "edgebox"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(box: Box, nursery: trio.Nursery, clock: FakeClock) -> AsyncIterator[Server]:
    sessions = Sessions(box.directory_db)
    # No back-off delays here (the guard's tests and e2e cover them): refusals only.
    guard = AuthGuard(GuardPolicy(delay=0, source_limit=5), clock=clock)
    routes = session_routes(
        sessions, SignIn(box.directory, guard, box.traffic), box.traffic, box.chat.join_audiences
    )
    return await start_server(box, nursery, routes, sessions=sessions)


def cookie_attributes(set_cookie: str) -> tuple[str, set[str]]:
    first, *rest = (part.strip() for part in set_cookie.split(";"))
    return first, {part.lower() for part in rest}


async def test_sign_in_answers_token_profile_and_cookie(server: Server) -> None:
    reply = await server.request(
        "POST", SESSION, {"address": "Somchai@TEST.go.th", "password": PASSWORD}
    )
    assert reply.status == 201
    body = reply.json()
    assert len(body["token"]) == 43
    assert body["user"]["address"] == ADDRESS
    assert body["user"]["display_name"] == "สมชาย ใจดี"
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=11) < expires - datetime.now(UTC) <= timedelta(hours=12)
    first, attributes = cookie_attributes(reply.header("Set-Cookie") or "")
    assert first == f"edgebox_session={body['token']}"
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
    assert "max-age=43200" in attributes


async def test_signing_in_joins_the_broadcasts_of_ones_agency(server: Server, box: Box) -> None:
    owner = await box.directory.add_user(
        "head@test.go.th", password="หัวหน้า-2567", name_th="หัวหน้า ใหญ่"
    )
    # Only agency admins create broadcast rooms by default (issue 16).
    await box.directory.grant_admin(owner.address, owner.agency_domain)
    room = await box.chat.create_room(owner, "broadcast", name="ประกาศ")
    assert ADDRESS in room.members  # there when the room was made
    newcomer = await box.directory.add_user(
        "new@test.go.th", password="ใหม่-รหัส-2567", name_th="พนักงาน ใหม่"
    )
    reply = await server.request(
        "POST", SESSION, {"address": "new@test.go.th", "password": "ใหม่-รหัส-2567"}
    )
    assert reply.status == 201
    assert newcomer.address in (await box.chat.room(newcomer, room.id)).members


async def test_app_sign_in_lasts_thirty_days(server: Server) -> None:
    reply = await server.request(
        "POST", SESSION, {"address": ADDRESS, "password": PASSWORD, "client": "app"}
    )
    expires = datetime.fromisoformat(reply.json()["expires_at"].replace("Z", "+00:00"))
    assert expires - datetime.now(UTC) > timedelta(days=29)


async def test_who_am_i_by_cookie_and_by_bearer(server: Server) -> None:
    token = (
        await server.request("POST", SESSION, {"address": ADDRESS, "password": PASSWORD})
    ).json()["token"]
    by_cookie = await server.request("GET", SESSION, headers={"Cookie": f"edgebox_session={token}"})
    by_bearer = await server.request(
        "GET", SESSION, headers={"Authorization": f"Bearer {token}", "Accept-Language": "en"}
    )
    assert by_cookie.status == by_bearer.status == 200
    assert by_cookie.json()["user"]["address"] == ADDRESS
    assert by_bearer.json()["user"]["display_name"] == "Somchai Jaidee"
    assert (await server.request("GET", SESSION)).status == 401


async def test_sign_out_revokes_and_clears_the_cookie(server: Server) -> None:
    token = (
        await server.request("POST", SESSION, {"address": ADDRESS, "password": PASSWORD})
    ).json()["token"]
    cookie = {"Cookie": f"edgebox_session={token}"}
    reply = await server.request("DELETE", SESSION, headers={**cookie, **MARK})
    assert reply.status == 204
    first, attributes = cookie_attributes(reply.header("Set-Cookie") or "")
    assert first == "edgebox_session="
    assert "max-age=0" in attributes
    assert (await server.request("GET", SESSION, headers=cookie)).status == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await server.request("GET", SESSION, headers=bearer)).status == 401


async def test_sign_out_by_cookie_needs_csrf_proof(server: Server) -> None:
    token = (
        await server.request("POST", SESSION, {"address": ADDRESS, "password": PASSWORD})
    ).json()["token"]
    cookie = {"Cookie": f"edgebox_session={token}"}
    assert (await server.request("DELETE", SESSION, headers=cookie)).status == 403
    assert (await server.request("GET", SESSION, headers=cookie)).status == 200


async def test_wrong_password_unknown_and_disabled_users_get_one_answer(server: Server) -> None:
    await server.box.directory.add_user(f"off@{ADDRESS.split('@')[1]}", password=PASSWORD,
                                        name_th="ปิดแล้ว")  # fmt: skip
    await server.box.directory.set_disabled(f"off@{ADDRESS.split('@')[1]}", True)
    bodies = []
    for address, password in (
        (ADDRESS, "wrong"),
        ("nobody@test.go.th", PASSWORD),
        ("off@test.go.th", PASSWORD),
        ("not an address", PASSWORD),
    ):
        reply = await server.request("POST", SESSION, {"address": address, "password": password})
        assert reply.status == 401, address
        assert reply.header("Set-Cookie") is None
        bodies.append(reply.json())
    assert all(body == bodies[0] for body in bodies)
    error = bodies[0]["error"]
    assert error["code"] == "wrong_password"
    assert error["message_th"] == error["message"] == "ที่อยู่อีเมลหรือรหัสผ่านไม่ถูกต้อง"
    assert error["message_en"] == "The address or password is wrong"


async def test_sign_in_body_is_validated(server: Server) -> None:
    missing = await server.request("POST", SESSION, {"address": ADDRESS})
    assert missing.status == 422
    assert missing.json()["error"]["field"] == "body.password"
    extra = await server.request(
        "POST", SESSION, {"address": ADDRESS, "password": "x", "admin": True}
    )
    assert extra.json()["error"]["field"] == "body.admin"


async def test_five_failures_refuse_the_source_not_the_owner(
    server: Server, clock: FakeClock
) -> None:
    # Issue 16: the old lock of the *address* kept its owner out from everywhere.
    wrong = {"address": ADDRESS, "password": "wrong"}
    statuses = [(await server.request("POST", SESSION, wrong)).status for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 401]
    # The source is refused: even the right password, with a Retry-After in seconds.
    right = {"address": ADDRESS.upper(), "password": PASSWORD}
    locked = await server.request("POST", SESSION, right)
    assert locked.status == 429
    assert locked.json()["error"]["code"] == "locked_out"
    assert locked.header("Retry-After") == "900"
    # The owner, from another address, signs in at once.
    assert (await server.request("POST", SESSION, right, source="127.0.0.2")).status == 201
    clock.now += 899
    assert (await server.request("POST", SESSION, right)).status == 429
    clock.now += 2
    assert (await server.request("POST", SESSION, right)).status == 201


async def test_failures_are_logged_and_recorded_without_the_password(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "ความลับ-ห้ามบันทึก-42"
    with caplog.at_level(logging.DEBUG):
        await server.request("POST", SESSION, {"address": ADDRESS, "password": secret})
        await server.request("POST", SESSION, {"address": ADDRESS, "password": PASSWORD})
    web = [r for r in caplog.records if r.name == "edgebox.web"]
    failed = [r for r in web if "sign-in failed" in r.getMessage()]
    assert len(failed) == 1
    assert ADDRESS in failed[0].getMessage()
    assert "127.0.0.1" in failed[0].getMessage()
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        assert secret not in text
        assert PASSWORD not in text
    traffic = server.box.config.data_dir / "log" / "traffic"
    records = list(iter_records(traffic))
    events = [(r.service, r.event, r.user, r.client_ip) for r in records]
    assert ("web", "auth-failed", ADDRESS, "127.0.0.1") in events
    assert ("web", "auth-ok", ADDRESS, "127.0.0.1") in events
    for path in traffic.iterdir():
        content = path.read_text(encoding="utf-8")
        assert secret not in content
        assert PASSWORD not in content
