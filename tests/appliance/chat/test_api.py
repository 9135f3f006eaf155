"""The chat routes, called directly with constructed requests (no server needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.chat.api import chat_routes
from appliance.chat.errors import ChatError
from appliance.chat.hours import parse_hours
from appliance.chat.messages import parse_draft
from appliance.directory import User
from appliance.web.routes import ApiError, Request, Response, Route, StreamRoute, WebSocketClosed
from tests.appliance.chat.conftest import World


def _routes(world: World) -> dict[tuple[str, str], Route | StreamRoute]:
    found: dict[tuple[str, str], Route | StreamRoute] = {}
    for route in chat_routes(world.chat):
        method = route.method if isinstance(route, Route) else "WS"
        found[method, route.path] = route
    return found


async def call(
    world: World,
    method: str,
    path: str,
    user: User,
    *,
    params: dict[str, str] | None = None,
    json: Any = None,
    query: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    route = _routes(world)[method, path]
    assert isinstance(route, Route)
    request = Request(
        method=method,
        path=path,
        params=params or {},
        query=query or {},
        headers=headers or {},
        json=json,
        body=body,
        user=user,
        token="t",
        lang="th",
        client_ip="127.0.0.1",
    )
    result = await route.handler(request)
    if isinstance(result, Response):
        return result.status, result.body
    return route.status, result


async def test_every_route_is_under_api_v1_and_unique(world: World) -> None:
    routes = chat_routes(world.chat)
    keys = [(getattr(r, "method", "WS"), r.path) for r in routes]
    assert len(keys) == len(set(keys))
    assert all(r.path.startswith("/api/v1/") for r in routes)
    assert all(r.summary for r in routes)


async def test_create_room_post_and_list_via_handlers(world: World) -> None:
    status, room = await call(
        world,
        "POST",
        "/api/v1/rooms",
        world.lead,
        json={"kind": "group", "name": "ทีม", "members": [world.staff.address]},
    )
    assert status == 201
    params = {"room_id": room["id"]}
    status, message = await call(
        world,
        "POST",
        "/api/v1/rooms/{room_id}/messages",
        world.staff,
        params=params,
        json={"kind": "text", "text": "สวัสดีครับ", "client_id": "c1"},
    )
    assert (status, message["content"]["text"]) == (201, "สวัสดีครับ")
    status, again = await call(
        world,
        "POST",
        "/api/v1/rooms/{room_id}/messages",
        world.staff,
        params=params,
        json={"kind": "text", "text": "สวัสดีครับ", "client_id": "c1"},
    )
    assert (status, again["id"]) == (200, message["id"])
    _, listed = await call(
        world, "GET", "/api/v1/rooms/{room_id}/messages", world.lead, params=params
    )
    assert [m["id"] for m in listed] == [message["id"]]


async def test_domain_refusal_becomes_bilingual_api_error(world: World) -> None:
    with pytest.raises(ApiError) as exc:
        await call(world, "POST", "/api/v1/direct", world.staff, json={"with": world.boss.address})
    assert exc.value.status == 403
    body = exc.value.body("th")["error"]
    assert body["code"] == "higher_rank"
    assert body["message_th"]
    assert body["message_en"]


async def test_leave_endpoint_answers_403(world: World) -> None:
    _, room = await call(
        world,
        "POST",
        "/api/v1/rooms",
        world.lead,
        json={"kind": "group", "members": [world.staff.address]},
    )
    with pytest.raises(ApiError) as exc:
        await call(
            world,
            "POST",
            "/api/v1/rooms/{room_id}/leave",
            world.staff,
            params={"room_id": room["id"]},
        )
    assert exc.value.status == 403
    assert "ask the owner" in exc.value.message_en


async def test_upload_and_download_via_handlers(world: World) -> None:
    _, room = await call(
        world,
        "POST",
        "/api/v1/rooms",
        world.lead,
        json={"kind": "group", "members": [world.staff.address]},
    )
    status, upload = await call(
        world,
        "POST",
        "/api/v1/uploads",
        world.staff,
        body=b"\xff\xd8\xffjpeg",
        headers={"content-type": "image/jpeg"},
        query={"name": "ภาพ.jpg"},
    )
    assert status == 201
    _, message = await call(
        world,
        "POST",
        "/api/v1/rooms/{room_id}/messages",
        world.staff,
        params={"room_id": room["id"]},
        json={"kind": "image", "upload_id": upload["upload_id"]},
    )
    route = _routes(world)["GET", "/api/v1/rooms/{room_id}/messages/{message_id}/file"]
    assert isinstance(route, Route)
    response = await route.handler(
        Request(
            "GET",
            "/",
            {"room_id": room["id"], "message_id": message["id"]},
            {},
            {},
            None,
            b"",
            world.lead,
            None,
            "en",
            "127.0.0.1",
        )
    )
    assert isinstance(response, Response)
    assert (response.body, response.content_type) == (b"\xff\xd8\xffjpeg", "image/jpeg")
    assert "UTF-8''%E0%B8" in response.headers["content-disposition"]


async def test_directory_search_returns_profiles(world: World) -> None:
    _, people = await call(
        world, "GET", "/api/v1/directory/users", world.staff, query={"q": "สมหญิง"}
    )
    assert [p["address"] for p in people] == [world.peer.address]
    assert {"agency", "phone", "email", "position", "unit", "rank"} <= set(people[0])


# --- the stream handler over a fake WebSocket ---------------------------------------


class FakeSocket:
    """A WebSocket twin: what the server sends is collected; the test feeds the client side."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.got_one = trio.Event()
        self.inbox_send, self.inbox = trio.open_memory_channel[Any](10)
        self.closed = False

    async def send_json(self, message: Any) -> None:
        if self.closed:
            raise WebSocketClosed()
        self.sent.append(message)
        self.got_one.set()

    async def send_text(self, *messages: str) -> None:
        for text in messages:
            await self.send_json(json.loads(text))

    def try_send_text(self, messages: list[str]) -> bool:
        if self.closed:
            return False
        self.sent.extend(json.loads(text) for text in messages)
        self.got_one.set()
        return True

    async def receive_json(self) -> Any:
        return await self.inbox.receive()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def events(self) -> list[Any]:
        return [m for m in self.sent if m["type"] == "event"]


async def _until(socket: FakeSocket, predicate: Any) -> None:
    while not predicate():
        socket.got_one = trio.Event()
        await socket.got_one.wait()


async def test_stream_resumes_after_disconnect_without_gap_or_duplicate(world: World) -> None:
    route = _routes(world)["WS", "/api/v1/stream"]
    assert isinstance(route, StreamRoute)
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])

    def request(cursor: int) -> Request:
        return Request(
            "GET",
            "/api/v1/stream",
            {},
            {"cursor": str(cursor)},
            {},
            None,
            b"",
            world.staff,
            None,
            "th",
            "127.0.0.1",
        )

    first = FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(route.handler, request(0), first)
        await _until(first, lambda: len(first.events()) == 1)  # room.created
        for i in range(3):
            await world.chat.post(world.lead, room.id, {"kind": "text", "text": f"สด {i}"})
        await _until(first, lambda: len(first.events()) == 4)
        await first.inbox_send.send(None)  # the client disconnects
    last_cursor = first.events()[-1]["cursor"]
    # Meanwhile, more happens.
    for i in range(3):
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": f"ระหว่างหลุด {i}"})

    second = FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(route.handler, request(last_cursor), second)
        await _until(second, lambda: len(second.events()) == 3)
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": "หลังกลับมา"})
        await _until(second, lambda: len(second.events()) == 4)
        await second.inbox_send.send(None)
    ids = [m["event"]["id"] for m in first.events() + second.events()]
    assert len(ids) == len(set(ids)) == 8
    cursors = [m["cursor"] for m in first.events() + second.events()]
    assert cursors == sorted(cursors)


async def test_typing_goes_to_other_members_live_streams_only(world: World) -> None:
    route = _routes(world)["WS", "/api/v1/stream"]
    assert isinstance(route, StreamRoute)
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    head = world.chat.fanout.published

    def request(user: User) -> Request:
        return Request(
            "GET", "/", {}, {"cursor": str(head)}, {}, None, b"", user, None, "th", "::1"
        )

    lead_socket, boss_socket = FakeSocket(), FakeSocket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(route.handler, request(world.lead), lead_socket)
        nursery.start_soon(route.handler, request(world.boss), boss_socket)
        await trio.testing.wait_all_tasks_blocked()
        assert world.chat.typing(world.staff.address, room.id)
        await _until(lead_socket, lambda: lead_socket.sent)
        assert lead_socket.sent == [
            {"type": "typing", "room_id": room.id, "address": world.staff.address}
        ]
        await lead_socket.inbox_send.send(None)
        await boss_socket.inbox_send.send(None)
    assert boss_socket.sent == []
    assert world.chat.fanout.live_streams() == 0
    # Typing was not stored.
    assert (await world.chat.events_for(world.lead.address, head, 10)).events == []


# --- parsers under hypothesis --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "kind",
                        "text",
                        "url",
                        "location",
                        "lat",
                        "lon",
                        "upload_id",
                        "sticker_id",
                        "client_id",
                        "reply_to",
                        "title",
                        "label",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),
        max_leaves=12,
    )
)
def test_parse_draft_accepts_or_refuses_with_422(value: Any) -> None:
    try:
        draft = parse_draft(value)
    except ChatError as exc:
        refusal = exc
        assert (refusal.status, bool(refusal.message_th)) == (422, True)
    else:
        assert draft.kind in (
            "text",
            "image",
            "video",
            "voice",
            "file",
            "location",
            "sticker",
            "link",
        )


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["days", "start", "end", "x"]),
        st.one_of(
            st.lists(st.integers(-2, 9), max_size=8),
            st.from_regex(r"[0-9]{1,2}:[0-9]{2}", fullmatch=True),
            st.text(max_size=6),
            st.none(),
        ),
    )
)
def test_parse_hours_accepts_or_refuses_with_422(value: dict[str, Any]) -> None:
    try:
        hours = parse_hours(value)
    except ChatError as exc:
        assert exc.status == 422  # noqa: PT017 (either outcome is valid; only its shape is checked)
    else:
        assert hours.start < hours.end
        assert hours.days <= set(range(7))
        assert parse_hours(hours.to_json()) == hours


async def test_broadcast_creators_setting_via_the_api(world: World) -> None:
    """Issue 16: who creates broadcast rooms is an agency setting, admins only by default."""
    path = "/api/v1/chat/settings"
    _, shown = await call(world, "GET", path, world.staff)
    assert shown["broadcast_creators"] == "admins"
    with pytest.raises(ApiError) as exc:
        await call(world, "POST", "/api/v1/rooms", world.staff,
                   json={"kind": "broadcast", "name": "ประกาศ"})  # fmt: skip
    assert exc.value.body("en")["error"]["code"] == "broadcast_admins_only"
    with pytest.raises(ApiError) as exc:
        await call(world, "PUT", path, world.staff, json={"broadcast_creators": "everyone"})
    assert exc.value.status == 403
    await world.directory.grant_admin(world.lead.address, world.lead.agency_domain)
    _, changed = await call(world, "PUT", path, world.lead, json={"broadcast_creators": "everyone"})
    assert changed == {"agency": "a.go.th", "public_mode": False, "broadcast_creators": "everyone"}
    status, room = await call(world, "POST", "/api/v1/rooms", world.staff,
                              json={"kind": "broadcast", "name": "ประกาศ"})  # fmt: skip
    assert status == 201
    assert room["kind"] == "broadcast"
    with pytest.raises(ApiError) as exc:
        await call(world, "PUT", path, world.lead, json={})
    assert exc.value.status == 422


async def test_posts_and_uploads_at_the_disk_reserve_are_507_and_change_nothing(
    world: World,
) -> None:
    from pathlib import Path

    from appliance.health.disk_guard import DiskGuard
    from appliance.health.metrics import BoxMetrics
    from appliance.health.readings import DiskReading, FakeReadings

    readings = FakeReadings(default_disk=DiskReading(total=10**9, free=10**6))
    now = [0.0]
    guard = DiskGuard(Path("/data"), readings, hard_free=2 * 10**6, clock=lambda: now[0])
    metrics = BoxMetrics()
    routes = {
        (getattr(r, "method", "WS"), r.path): r for r in chat_routes(world.chat, guard, metrics)
    }

    async def guarded(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        route = routes[method, path]
        assert isinstance(route, Route)
        assert 507 in route.errors, "the OpenAPI document names the refusal"
        request = Request(method=method, path=path, params=kwargs.get("params", {}),
                          query=kwargs.get("query", {}), headers={}, json=kwargs.get("json"),
                          body=kwargs.get("body", b""), user=world.lead, token="t", lang="th",
                          client_ip="127.0.0.1")  # fmt: skip
        try:
            result = await route.handler(request)
        except ApiError as exc:
            return exc.status, exc
        return (result.status, result.body) if isinstance(result, Response) else (201, result)

    _, room = await call(world, "POST", "/api/v1/rooms", world.lead,
                         json={"kind": "group", "members": [world.staff.address]})  # fmt: skip
    post = {"params": {"room_id": room["id"]}, "json": {"kind": "text", "text": "ประชุม"},
            "body": b'{"kind": "text", "text": "x"}'}  # fmt: skip
    status, error = await guarded("POST", "/api/v1/rooms/{room_id}/messages", **post)
    assert status == 507
    assert error.code == "insufficient_storage"
    assert "เต็ม" in error.message_th
    status, _ = await guarded("POST", "/api/v1/uploads", body=b"\xff\xd8jpeg")
    assert status == 507
    _, page = await call(world, "GET", "/api/v1/rooms/{room_id}/messages", world.lead,
                         params={"room_id": room["id"]})  # fmt: skip
    assert not [m for m in page if m.get("kind") == "text"], "nothing was stored"
    assert b'edgebox_storage_refusals_total{service="chat-post"} 1.0' in metrics.render()

    # Space freed: the next reading lets posts in again.
    readings.default_disk = DiskReading(total=10**9, free=10**8)
    now[0] = 5.0
    status, _ = await guarded("POST", "/api/v1/rooms/{room_id}/messages", **post)
    assert status == 201
