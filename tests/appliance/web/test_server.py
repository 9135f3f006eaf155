"""The HTTPS server driven over real TLS on loopback: routing, limits, errors, auth,
CSRF, languages and WebSocket streams."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import trio
import wsproto.events

from appliance.box import Box
from appliance.directory.sessions import Sessions
from appliance.web import server as web_server
from appliance.web import websocket as web_websocket
from appliance.web.csrf import parse_cookie
from appliance.web.openapi import openapi_route
from appliance.web.router import parse_target
from appliance.web.routes import ApiError, Request, Response, Route, StreamRoute, WebSocket
from appliance.web.server import Limits, preferred_language
from tests.appliance.web.conftest import ADDRESS, Server, WebSocketClient, start_server

ITEM = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}

seen: list[Request] = []


async def echo(request: Request) -> Any:
    seen.append(request)
    return {
        "params": dict(request.params),
        "query": dict(request.query),
        "json": request.json,
        "user": request.user.address if request.user else None,
        "lang": request.lang,
        "path": request.path,
    }


async def boom(request: Request) -> Any:
    raise RuntimeError("secret-detail-xyz in the database")


async def refuse(request: Request) -> Any:
    raise ApiError(409, "conflict", "Already there", "มีอยู่แล้ว", headers={"X-Why": "dup"})


async def upload(request: Request) -> Any:
    return Response(body=request.body[::-1], content_type="application/octet-stream")


async def nothing(request: Request) -> Any:
    return Response(status=204)


async def ws_echo(request: Request, socket: WebSocket) -> None:
    await socket.send_json({"hello": request.user.address if request.user else None})
    while True:
        message = await socket.receive_json()
        if message is None:
            return
        if message == {"bye": True}:
            await socket.close(4000, "bye")
            return
        await socket.send_json({"echo": message})


ROUTES: list[Route | StreamRoute] = [
    Route("GET", "/api/v1/open", echo, "open", "test", auth=False),
    Route("GET", "/api/v1/items/{item_id}", echo, "get", "test",
          query={"limit": {"type": "integer", "minimum": 1, "maximum": 50}}),
    Route("GET", "/api/v1/items/new", echo, "literal beats parameter", "test"),
    Route("POST", "/api/v1/items", echo, "create", "test", request=ITEM, max_body=1000),
    Route("DELETE", "/api/v1/items/{item_id}", nothing, "delete", "test", status=204),
    Route("GET", "/api/v1/boom", boom, "fails", "test", auth=False),
    Route("POST", "/api/v1/refuse", refuse, "refuses", "test", auth=False, errors=(409,)),
    Route("PUT", "/api/v1/upload", upload, "upload", "test", upload="image/png", max_body=100),
    StreamRoute("/api/v1/stream", ws_echo, "echo stream", "test"),
]  # fmt: skip


@pytest.fixture
async def server(box: Box, nursery: trio.Nursery) -> AsyncIterator[Server]:
    seen.clear()
    routes = [*ROUTES, openapi_route(ROUTES)]
    return await start_server(box, nursery, routes, limits=Limits(max_header_bytes=4096))


async def sign_in(server: Server) -> str:
    user = await server.box.directory.user(ADDRESS)
    assert user is not None
    token, _ = await server.sessions.create(
        user, client_ip="127.0.0.1", user_agent="test", ttl=timedelta(hours=1)
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- pure helpers ------------------------------------------------------------------


def test_language_prefers_thai_unless_english_ranks_higher() -> None:
    assert preferred_language(None) == "th"
    assert preferred_language("en-US,en;q=0.9") == "en"
    assert preferred_language("th-TH,th;q=0.9,en;q=0.8") == "th"
    assert preferred_language("en;q=0.5, th;q=0.6") == "th"
    assert preferred_language("fr, en;q=0.1") == "en"
    assert preferred_language("en;q=bogus") == "th"


def test_cookie_parsing() -> None:
    assert parse_cookie("a=1; edgebox_session=abc; b=2", "edgebox_session") == "abc"
    assert parse_cookie('edgebox_session="q"', "edgebox_session") == "q"
    assert parse_cookie("xedgebox_session=abc", "edgebox_session") is None
    assert parse_cookie(None, "edgebox_session") is None


def test_target_is_split_before_percent_decoding() -> None:
    target = parse_target(b"/api/v1/items/%E0%B8%81%2Fx?limit=5&limit=6&q=%20")
    assert target.segments == ("api", "v1", "items", "ก/x")
    assert target.query == {"limit": "5", "q": " "}
    with pytest.raises(ApiError) as bad:
        parse_target(b"/api/%FF")
    assert bad.value.status == 400


# --- requests ----------------------------------------------------------------------


async def test_json_answer_carries_security_headers(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/open")
    assert reply.status == 200
    assert reply.json()["path"] == "/api/v1/open"
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("Strict-Transport-Security") == "max-age=31536000"
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert reply.header("Cache-Control") == "no-store"
    assert "default-src 'self'" in (reply.header("Content-Security-Policy") or "")
    assert reply.header("Referrer-Policy") == "same-origin"
    assert reply.header("Date")


async def test_tls_offers_http11_by_alpn(server: Server) -> None:
    client = await server.raw()
    await client.stream.do_handshake()
    assert client.stream.selected_alpn_protocol() == "http/1.1"
    await client.aclose()


async def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    client = await server.raw()
    request = b"GET /api/v1/open HTTP/1.1\r\nHost: x\r\n\r\n"
    await client.send(request + request)
    await client.send(b"GET /api/v1/open HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await client.read_all()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    await client.aclose()


async def test_head_answers_headers_without_body(server: Server) -> None:
    get = await server.request("GET", "/api/v1/open")
    head = await server.request("HEAD", "/api/v1/open")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == str(len(get.body))


async def test_unknown_path_is_404_json(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/nowhere", headers={"Accept-Language": "en"})
    assert reply.status == 404
    error = reply.json()["error"]
    assert error["code"] == "not_found"
    assert error["message"] == error["message_en"] == "No such address"
    assert error["message_th"]
    assert reply.header("Content-Language") == "en"


async def test_errors_default_to_thai(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/nowhere")
    error = reply.json()["error"]
    assert error["message"] == error["message_th"] != error["message_en"]


async def test_wrong_method_is_405_with_allow(server: Server) -> None:
    reply = await server.request("PATCH", "/api/v1/items/7", headers=bearer(await sign_in(server)))
    assert reply.status == 405
    assert reply.header("Allow") == "DELETE, GET, HEAD"


async def test_path_parameters_are_percent_decoded(server: Server) -> None:
    token = await sign_in(server)
    reply = await server.request("GET", "/api/v1/items/%E0%B8%81%2Fx", headers=bearer(token))
    assert reply.status == 200
    assert reply.json()["params"] == {"item_id": "ก/x"}
    literal = await server.request("GET", "/api/v1/items/new", headers=bearer(token))
    assert literal.json()["params"] == {}


async def test_query_is_checked_against_its_schema(server: Server) -> None:
    token = await sign_in(server)
    ok = await server.request("GET", "/api/v1/items/1?limit=5", headers=bearer(token))
    assert ok.json()["query"] == {"limit": "5"}
    for bad in ("0", "x", "51"):
        reply = await server.request("GET", f"/api/v1/items/1?limit={bad}", headers=bearer(token))
        assert reply.status == 422, bad
        assert reply.json()["error"]["field"] == "query.limit"


async def test_body_is_validated_before_the_handler(server: Server) -> None:
    token = await sign_in(server)
    headers = bearer(token)
    ok = await server.request("POST", "/api/v1/items", {"name": "ปากกา"}, headers)
    assert ok.status == 200
    assert ok.json()["json"] == {"name": "ปากกา"}
    missing = await server.request("POST", "/api/v1/items", {"tags": []}, headers)
    assert missing.status == 422
    assert missing.json()["error"]["field"] == "body.name"
    assert "body.name" in missing.json()["error"]["message_en"]
    nested = await server.request("POST", "/api/v1/items", {"name": "a", "tags": [1]}, headers)
    assert nested.json()["error"]["field"] == "body.tags[0]"
    assert len(seen) == 1, "the handler must only see the valid body"


async def test_bad_json_is_400_and_wrong_type_415(server: Server) -> None:
    headers = {**bearer(await sign_in(server)), "Content-Type": "application/json"}
    for body in (b"{", b"NaN", b"\xff", b""):
        reply = await server.request("POST", "/api/v1/items", body, headers)
        assert reply.status == 400, body
        assert reply.json()["error"]["code"] == "bad_json"
    headers["Content-Type"] = "text/plain"
    reply = await server.request("POST", "/api/v1/items", b'{"name":"a"}', headers)
    assert reply.status == 415
    assert seen == []


async def test_upload_checks_media_type_and_passes_bytes(server: Server) -> None:
    headers = {**bearer(await sign_in(server)), "Content-Type": "image/png"}
    reply = await server.request("PUT", "/api/v1/upload", b"\x89PNG", headers)
    assert reply.status == 200
    assert reply.body == b"GNP\x89"
    assert reply.header("Content-Type") == "application/octet-stream"
    headers["Content-Type"] = "image/gif"
    assert (await server.request("PUT", "/api/v1/upload", b"GIF8", headers)).status == 415


async def test_oversized_body_is_refused_before_it_is_read(server: Server) -> None:
    token = await sign_in(server)
    client = await server.raw()
    # The body is never sent: a server that waited for it would hang this test.
    await client.send(
        b"PUT /api/v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
    )
    data = await client.read_all()
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data
    assert b"connection: close" in data.lower()
    await client.aclose()


async def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    token = await sign_in(server)
    client = await server.raw()
    chunk = b"64\r\n" + b"a" * 100 + b"\r\n"
    await client.send(
        b"PUT /api/v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk + chunk
    )
    assert (await client.read_all()).startswith(b"HTTP/1.1 413 ")
    await client.aclose()


async def test_malformed_request_is_400(server: Server) -> None:
    client = await server.raw()
    await client.send(b"NOT HTTP AT ALL\r\n\r\n")
    data = await client.read_all()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"bad_request"' in data
    await client.aclose()


async def test_content_length_and_transfer_encoding_is_400_and_closes(server: Server) -> None:
    # RFC 9112 §6.1: the smuggling shape; the pipelined GET behind it is never answered.
    client = await server.raw()
    await client.send(
        b"POST /api/v1/open HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /api/v1/open HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = await client.read_all()  # returns only once the server has closed
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.count(b"HTTP/1.1 ") == 1
    assert b"connection: close" in data.lower()
    await client.aclose()


async def test_obs_fold_is_400(server: Server) -> None:
    # RFC 9112 §5.2, in Transfer-Encoding and in any other header.
    for head in (b"Transfer-Encoding:\r\n chunked", b"X-Note: a\r\n\tb"):
        client = await server.raw()
        await client.send(b"GET /api/v1/open HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
        data = await client.read_all()
        assert data.startswith(b"HTTP/1.1 400 ")
        assert b"folding" in data
        await client.aclose()


async def test_oversized_header_is_431(server: Server) -> None:
    client = await server.raw()
    await client.send(
        b"GET /api/v1/open HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
    )
    assert (await client.read_all()).startswith(b"HTTP/1.1 431 ")
    await client.aclose()


async def test_handler_crash_is_500_without_detail(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="edgebox.web"):
        reply = await server.request("GET", "/api/v1/boom")
    assert reply.status == 500
    assert b"secret-detail" not in reply.body
    assert reply.json()["error"]["code"] == "internal"
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    reference = reply.json()["error"]["message_en"].rpartition(" ")[2].rstrip(")")
    assert reference in logged
    assert any(r.exc_info and "secret-detail" in str(r.exc_info[1]) for r in caplog.records)


async def test_api_error_keeps_status_and_headers(server: Server) -> None:
    reply = await server.request("POST", "/api/v1/refuse", {})
    assert reply.status == 409
    assert reply.header("X-Why") == "dup"
    assert reply.json()["error"]["code"] == "conflict"


async def test_204_has_no_body(server: Server) -> None:
    reply = await server.request("DELETE", "/api/v1/items/1", headers=bearer(await sign_in(server)))
    assert reply.status == 204
    assert reply.body == b""


async def test_openapi_document_is_served_without_sign_in(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/openapi.json")
    assert reply.status == 200
    document = reply.json()
    assert document["openapi"] == "3.1.0"
    assert "/api/v1/openapi.json" in document["paths"]


# --- timeouts ----------------------------------------------------------------------


async def test_idle_connection_is_closed(box: Box, nursery: trio.Nursery) -> None:
    server = await start_server(box, nursery, ROUTES, limits=Limits(idle_timeout=0.2))
    client = await server.raw()
    await client.stream.do_handshake()
    assert await client.read_all() == b""  # closed without a word
    await client.aclose()


async def test_slow_request_gets_408(box: Box, nursery: trio.Nursery) -> None:
    server = await start_server(box, nursery, ROUTES, limits=Limits(request_timeout=0.2))
    client = await server.raw()
    await client.send(b"GET /api/v1/open HTTP/1.1\r\nHost:")
    assert (await client.read_all()).startswith(b"HTTP/1.1 408 ")
    await client.aclose()


# --- authentication and CSRF -------------------------------------------------------


async def test_auth_routes_need_a_valid_session(server: Server) -> None:
    for headers in ({}, bearer("x" * 43), {"Cookie": "edgebox_session=nope"}):
        reply = await server.request("GET", "/api/v1/items/1", headers=headers)
        assert reply.status == 401, headers
        assert reply.header("WWW-Authenticate") == 'Bearer realm="edgebox"'
        assert reply.json()["error"]["code"] == "unauthenticated"
    token = await sign_in(server)
    reply = await server.request("GET", "/api/v1/items/1", headers=bearer(token))
    assert reply.json()["user"] == ADDRESS
    reply = await server.request(
        "GET", "/api/v1/items/1", headers={"Cookie": f"edgebox_session={token}"}
    )
    assert reply.json()["user"] == ADDRESS


async def test_cookie_callers_need_csrf_proof_for_unsafe_methods(server: Server) -> None:
    token = await sign_in(server)
    cookie = {"Cookie": f"edgebox_session={token}"}
    body = {"name": "a"}
    refused = await server.request("POST", "/api/v1/items", body, cookie)
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "csrf"
    foreign = {**cookie, "Origin": "https://evil.example", "Host": "127.0.0.1"}
    assert (await server.request("POST", "/api/v1/items", body, foreign)).status == 403
    marked = {**cookie, "X-Requested-With": "edgebox"}
    assert (await server.request("POST", "/api/v1/items", body, marked)).status == 200
    same = {**cookie, "Origin": f"https://127.0.0.1:{server.port}"}
    assert (await server.request("POST", "/api/v1/items", body, same)).status == 200
    # Bearer callers are exempt, and safe methods need no proof.
    assert (await server.request("POST", "/api/v1/items", body, bearer(token))).status == 200
    assert (await server.request("GET", "/api/v1/items/1", headers=cookie)).status == 200


async def test_revoked_session_is_refused(server: Server) -> None:
    token = await sign_in(server)
    assert (await server.request("GET", "/api/v1/items/1", headers=bearer(token))).status == 200
    await server.sessions.revoke(token)
    assert (await server.request("GET", "/api/v1/items/1", headers=bearer(token))).status == 401


# --- WebSocket ---------------------------------------------------------------------


async def test_websocket_echoes_json(server: Server) -> None:
    token = await sign_in(server)
    client, answer = await WebSocketClient.connect(
        server, "/api/v1/stream", [("Authorization", f"Bearer {token}")]
    )
    assert isinstance(answer, wsproto.events.AcceptConnection)
    assert json.loads(await client.receive_text()) == {"hello": ADDRESS}
    await client.send_json({"text": "สวัสดี"})
    assert json.loads(await client.receive_text()) == {"echo": {"text": "สวัสดี"}}
    # Ping is answered even while the handler waits for a message.
    await client.send(wsproto.events.Ping(b"are you there"))
    pong = await client.next_event()
    assert isinstance(pong, wsproto.events.Pong)
    assert pong.payload == b"are you there"
    await client.send(wsproto.events.CloseConnection(code=1000))
    closing = await client.next_event()
    assert isinstance(closing, wsproto.events.CloseConnection)
    assert closing.code == 1000
    await client.aclose()


async def test_websocket_token_in_query(server: Server) -> None:
    token = await sign_in(server)
    client, answer = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    assert json.loads(await client.receive_text()) == {"hello": ADDRESS}
    await client.aclose()


async def test_a_token_in_a_query_never_reaches_the_log(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    token = await sign_in(server)
    with caplog.at_level(logging.DEBUG, logger="edgebox.web"):
        reply = await server.request("GET", f"/api/v1/items/1?token={token}", headers=bearer(token))
        client, _ = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
        await client.receive_text()
        await client.aclose()
    assert reply.status == 200
    assert any("/api/v1/items/1" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if token in r.getMessage()]


async def test_websocket_without_session_is_401_before_upgrade(server: Server) -> None:
    for target in ("/api/v1/stream", "/api/v1/stream?token=wrong"):
        client, answer = await WebSocketClient.connect(server, target)
        assert isinstance(answer, wsproto.events.RejectConnection)
        assert answer.status_code == 401
        await client.aclose()


async def test_websocket_cookie_from_foreign_origin_is_refused(server: Server) -> None:
    token = await sign_in(server)
    headers = [("Cookie", f"edgebox_session={token}"), ("Origin", "https://evil.example")]
    client, answer = await WebSocketClient.connect(server, "/api/v1/stream", headers)
    assert isinstance(answer, wsproto.events.RejectConnection)
    assert answer.status_code == 403
    await client.aclose()
    headers[1] = ("Origin", f"https://127.0.0.1:{server.port}")
    client, answer = await WebSocketClient.connect(server, "/api/v1/stream", headers)
    assert isinstance(answer, wsproto.events.AcceptConnection)
    await client.aclose()


async def test_websocket_oversize_message_closes_1009(server: Server) -> None:
    token = await sign_in(server)
    client, _ = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
    await client.receive_text()
    await client.send(wsproto.events.TextMessage(json.dumps("x" * (1024 * 1024 + 1))))
    event = await client.next_event()
    assert isinstance(event, wsproto.events.CloseConnection)
    assert event.code == 1009
    await client.aclose()


async def test_websocket_non_json_closes_1007(server: Server) -> None:
    token = await sign_in(server)
    client, _ = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
    await client.receive_text()
    await client.send(wsproto.events.TextMessage("{not json"))
    event = await client.next_event()
    assert isinstance(event, wsproto.events.CloseConnection)
    assert event.code == 1007
    await client.aclose()


async def test_websocket_handler_close_runs_the_handshake(server: Server) -> None:
    token = await sign_in(server)
    client, _ = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
    await client.receive_text()
    await client.send_json({"bye": True})
    event = await client.next_event()
    assert isinstance(event, wsproto.events.CloseConnection)
    assert (event.code, event.reason) == (4000, "bye")
    await client.send(event.response())
    # §7.1.1: after the handshake the server closes the TCP connection.
    # (Abruptly, without a TLS close_notify, which is allowed after a close handshake.)
    with trio.fail_after(30):
        try:
            assert await client.stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass
    await client.aclose()


async def test_plain_get_on_a_stream_is_426(server: Server) -> None:
    reply = await server.request("GET", "/api/v1/stream")
    assert reply.status == 426
    assert reply.header("Upgrade") == "websocket"


async def test_stream_handler_sees_none_after_client_leaves(
    box: Box, nursery: trio.Nursery
) -> None:
    finished = trio.Event()
    results: list[Any] = []

    async def listener(request: Request, socket: WebSocket) -> None:
        results.append(await socket.receive_json())
        finished.set()

    sessions = Sessions(box.directory_db)
    server = await start_server(
        box, nursery, [StreamRoute("/s", listener, "s", "t", auth=False)], sessions=sessions
    )
    client, answer = await WebSocketClient.connect(server, "/s")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    await client.aclose()  # gone without a close frame
    with trio.fail_after(30):
        await finished.wait()
    assert results == [None]


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
    box: Box, nursery: trio.Nursery
) -> None:
    stopped = trio.Event()

    async def flood(request: Request, socket: WebSocket) -> None:
        chunk = "ก" * 60_000
        try:
            for _ in range(100_000):  # bounded; the client stops reading at once
                await socket.send_text(chunk, chunk)
        finally:
            stopped.set()

    limits = Limits(ws_send_timeout=0.6, ws_ping_interval=30)
    server = await start_server(box, nursery, [StreamRoute("/flood", flood, "f", "t", auth=False)],
                                sessions=Sessions(box.directory_db), limits=limits)  # fmt: skip
    client, answer = await WebSocketClient.connect(server, "/flood")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    # Read nothing: the server's socket buffer fills, its send blocks, and the
    # watchdog (not a per-send timeout) ends the stream.
    with trio.fail_after(30):
        await stopped.wait()
    await client.aclose()


# --- one connection's fault (appliance.net.listeners.ConnectionGate) ----------------------


async def test_a_fault_outside_any_handler_ends_only_that_connection(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = await sign_in(server)
    stream, answer = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    assert json.loads(await stream.receive_text()) == {"hello": ADDRESS}
    original = web_server._Connection._exchange

    async def faulty(self: Any, request: Any) -> None:
        if request.target == b"/api/v1/open?fault=1":
            raise RuntimeError("injected fault for one request")
        await original(self, request)

    monkeypatch.setattr(web_server._Connection, "_exchange", faulty)
    try:
        with caplog.at_level(logging.ERROR, logger="edgebox.listeners"):
            reply = await server.request("GET", "/api/v1/open?fault=1")
        # No response was started: a 500 with the JSON error body, and the connection ends.
        assert reply.status == 500
        assert reply.header("Content-Type") == "application/json"
        assert reply.json()["error"]["code"] == "internal"
        assert reply.will_close
        reference = reply.json()["error"]["message_en"].rpartition(" ")[2].rstrip(")")
        (record,) = caplog.records
        assert (
            f"https: session from 127.0.0.1 failed (reference {reference})" in record.getMessage()
        )
        assert record.exc_info is not None
        assert "injected fault" in str(record.exc_info[1])
        # The open WebSocket and new requests are served as before.
        await stream.send_json({"after": 1})
        assert json.loads(await stream.receive_text()) == {"echo": {"after": 1}}
        assert (await server.request("GET", "/api/v1/open")).status == 200
        assert server.service.gate.faults == 1
    finally:
        await stream.aclose()


async def test_a_websocket_fault_outside_its_handler_closes_it_with_1011(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = await sign_in(server)
    original = web_websocket.ServerWebSocket._deliver

    async def faulty(self: Any, value: Any) -> None:
        if value == {"fault": True}:
            raise RuntimeError("injected fault in the frame reader")
        await original(self, value)

    monkeypatch.setattr(web_websocket.ServerWebSocket, "_deliver", faulty)
    streams = []
    try:
        for _ in range(2):
            stream, answer = await WebSocketClient.connect(server, f"/api/v1/stream?token={token}")
            assert isinstance(answer, wsproto.events.AcceptConnection)
            assert json.loads(await stream.receive_text()) == {"hello": ADDRESS}
            streams.append(stream)
        faulty_stream, other = streams
        with caplog.at_level(logging.ERROR, logger="edgebox.listeners"):
            await faulty_stream.send_json({"fault": True})
            closing = await faulty_stream.next_event()
            # RFC 6455 §7.4.1: 1011, an unexpected condition on the server.
            assert isinstance(closing, wsproto.events.CloseConnection)
            assert closing.code == 1011
            await faulty_stream.send(closing.response())
            # The gate logs before it closes the connection: wait for the close.
            with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
                while await faulty_stream.stream.receive_some(65536):
                    pass
        assert any("https: session from 127.0.0.1 failed" in r.getMessage() for r in caplog.records)
        await other.send_json({"still": "here"})
        assert json.loads(await other.receive_text()) == {"echo": {"still": "here"}}
        assert (await server.request("GET", "/api/v1/open")).status == 200
    finally:
        for stream in streams:
            await stream.aclose()
