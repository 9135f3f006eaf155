"""``GET /api/v1/link`` over real HTTPS: who sees what, and the OpenAPI description."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from appliance.box import Box
from appliance.directory.sessions import BROWSER_TTL
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.sync.clock import ManualClock
from appliance.sync.link import LINK_FILE, LinkReading, LinkSnapshot, LinkState
from appliance.sync.link_api import PATH, RESPONSE_SCHEMA, link_routes
from appliance.sync.status import SyncStatus
from appliance.web.openapi import openapi_route
from appliance.web.schema import validate
from tests.appliance.admin.conftest import ADMIN_A, ROOT, STAFF_A, STAFF_B, two_agencies
from tests.appliance.conftest import BoxFactory
from tests.appliance.web.conftest import Server, start_server

SINCE = 1_800_000_000.0


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    # The admin console's people: a box-wide admin, an admin of A, staff of A and B.
    return await two_agencies(make_box)


@pytest.fixture
async def server(box: Box, nursery: trio.Nursery) -> Server:
    routes = link_routes(box.config.data_dir, box.directory, box.mailstore)
    document = openapi_route(list(routes), title="edgebox API", version="0")
    return await start_server(box, nursery, [*routes, document], sessions=box.sessions)


async def get(server: Server, box: Box, address: str | None) -> tuple[int, Any]:
    headers = {}
    if address is not None:
        user = await box.directory.user(address)
        assert user is not None
        token, _ = await box.sessions.create(
            user, client_ip="127.0.0.1", user_agent="pytest", ttl=BROWSER_TTL
        )
        headers["Authorization"] = f"Bearer {token}"
    reply = await server.request("GET", PATH, headers=headers)
    return reply.status, reply.json()


async def queue(box: Box, sender: str, urgency: str) -> None:
    trace = Trace(helo="pc.a.go.th", client_ip="192.0.2.7", protocol="ESMTPSA")
    content = f"X-Urgency: {urgency}\r\nSubject: t\r\n\r\nbody\r\n".encode()
    envelope = Envelope(
        sender=sender, recipients=[Recipient("far@far.example", local=False)], trace=trace
    )
    await box.delivery.deliver(envelope, content)


def write_link(box: Box) -> None:
    snapshot = LinkSnapshot(
        gin=LinkReading(LinkState.DOWN, SINCE, "https://hub.gin.go.th:7443", "no answer in time"),
        international=LinkReading(),  # not probed
    )
    path = box.config.data_dir / LINK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot.to_json()))


async def test_staff_see_only_whether_the_links_are_up(server: Server, box: Box) -> None:
    write_link(box)
    await queue(box, STAFF_A, "ด่วนที่สุด")

    status, body = await get(server, box, STAFF_A)

    assert status == 200
    assert body == {
        "gin": {"state": "down", "since": "2027-01-15T08:00:00Z"},
        "international": {"state": "not_probed", "since": None},
    }
    validate(RESPONSE_SCHEMA, body)


async def test_admins_see_queue_targets_and_streams_within_their_scope(
    server: Server, box: Box
) -> None:
    write_link(box)
    await queue(box, STAFF_A, "ด่วนที่สุด")
    await queue(box, STAFF_A, "normal")
    await queue(box, STAFF_B, "ด่วน")
    clock = ManualClock(SINCE - 60)
    SyncStatus(box.config.data_dir, clock).success("outbound", sent=3)
    SyncStatus(box.config.data_dir, clock).failure("chat", "HubUnavailable: timed out")

    _, everything = await get(server, box, ROOT)
    _, own = await get(server, box, ADMIN_A)

    for body in (everything, own):
        validate(RESPONSE_SCHEMA, body)
        assert body["gin"] == {
            "state": "down",
            "since": "2027-01-15T08:00:00Z",
            "target": "https://hub.gin.go.th:7443",
            "error": "no answer in time",
        }
        assert body["streams"]["outbound"] == {
            "last_success": "2027-01-15T07:59:00Z",
            "last_error": None,
        }
        assert body["streams"]["chat"] == {
            "last_success": None,
            "last_error": "HubUnavailable: timed out",
        }
        assert body["streams"]["mailbox"]["last_success"] is None
        assert body["queue"]["oldest"] is not None
    counts = {level["urgency"]: level["count"] for level in everything["queue"]["levels"]}
    assert counts == {3: 1, 2: 0, 1: 1, 0: 1}
    assert [level["name_th"] for level in everything["queue"]["levels"]] == [
        "ด่วนที่สุด", "ด่วนมาก", "ด่วน", "ปกติ",
    ]  # fmt: skip
    # Agency A's admin counts agency A's senders only.
    assert own["queue"]["total"] == 2
    assert {level["urgency"]: level["count"] for level in own["queue"]["levels"]}[1] == 0


async def test_before_the_monitor_ran_the_links_are_unknown(server: Server, box: Box) -> None:
    _, body = await get(server, box, STAFF_B)
    assert body == {
        "gin": {"state": "unknown", "since": None},
        "international": {"state": "unknown", "since": None},
    }
    _, admin = await get(server, box, ROOT)
    assert admin["gin"]["error"] == "link monitor has not run"
    assert admin["queue"]["total"] == 0
    assert admin["queue"]["oldest"] is None


async def test_signed_out_callers_are_refused(server: Server, box: Box) -> None:
    status, body = await get(server, box, None)
    assert status == 401
    assert body["error"]["code"]


async def test_the_route_is_in_the_openapi_document(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/openapi.json")
    operation = reply.json()["paths"][PATH]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["gin", "international"]
    assert set(schema["properties"]) == {"gin", "international", "queue", "streams"}
    assert "401" in operation["responses"]
