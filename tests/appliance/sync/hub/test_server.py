"""The hub-sync listener: mutual TLS, enrolment, and what it refuses."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.box import read_identity
from appliance.provisioning.enrol import EnrolError, enroll
from appliance.store.postgres import PostgreSQLUnavailable
from appliance.sync.central import central_client_context, load_credentials
from appliance.sync.hub import server as hub_server
from appliance.sync.hub.ca import ensure_sync_ca, issue_box_certificate
from appliance.sync.hub.enrolment import EnrolmentToken
from appliance.sync.hub.errors import HubError
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import (
    HubBusy,
    HubRefused,
    HubUnavailable,
    Peer,
    SyncDownload,
    SyncRoute,
)
from tests.appliance.sync.hub.hubfixture import Hub, new_edge, running_hub

PING = "/sync/v1/ping"


async def _ping(data: Path, url: str) -> object:
    client = HubClient(data / "keys", url, timeout=10)
    try:
        return await client(PING, {})
    finally:
        await client.aclose()


async def test_enrolled_box_is_known_by_its_certificate(tmp_path: Path, hub_store: str) -> None:
    async with running_hub(tmp_path, hub_database=hub_store) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        done = await enroll(edge, hub.url, await hub.token("moe.go.th"))
        identity = read_identity(edge)
        assert identity is not None
        assert await _ping(edge, hub.url) == {"box_id": identity.box_id, "domain": "moe.go.th"}
        # What the box learnt: the hub's own mail servers, on the host it used.
        port = hub.box.config.port
        assert done.central_smtp == f"smtp://127.0.0.1:{port('smtp-submission')}"
        assert done.central_imap == f"imaps://127.0.0.1:{port('imaps')}"
        config = json.loads((edge / "config.json").read_text())["config"]["1"]
        assert config["hub_url"] == hub.url
        assert config["central_imap"] == done.central_imap
        # The service account exists at the hub and may act for the agency only.
        creds = load_credentials(edge / "keys")
        assert creds is not None
        assert creds.username == done.username
        directory = hub.box.directory
        account = await directory.authenticate(creds.username, creds.password)
        assert account is not None
        assert await directory.granted_domains(creds.username) == frozenset({"moe.go.th"})
        assert (edge / "keys" / "sync.key").stat().st_mode & 0o077 == 0
        assert (edge / "keys" / "central.json").stat().st_mode & 0o077 == 0


async def test_no_client_certificate_is_refused_with_401(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        (edge / "keys" / "sync.pem").rename(edge / "keys" / "sync.pem.away")
        with pytest.raises(HubRefused) as refused:
            await _ping(edge, hub.url)
        assert (refused.value.status, refused.value.code) == (401, "certificate_required")


async def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        identity = read_identity(edge)
        assert identity is not None
        # Same box id, same key, but signed by a CA the hub never made.
        other = ensure_sync_ca(tmp_path / "rogue")
        key = serialization.load_pem_private_key(
            (edge / "keys" / "sync.key").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        forged = issue_box_certificate(other, csr, identity.box_id, dt.datetime.now(dt.UTC))
        (edge / "keys" / "sync.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
        # The TLS handshake itself fails: the hub trusts its sync CA only.
        with pytest.raises(HubUnavailable):
            await _ping(edge, hub.url)


async def test_revoked_and_replaced_certificates_are_refused(
    tmp_path: Path, hub_store: str
) -> None:
    async with running_hub(tmp_path, hub_database=hub_store) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        identity = read_identity(edge)
        assert identity is not None
        old_cert = (edge / "keys" / "sync.pem").read_bytes()
        old_key = (edge / "keys" / "sync.key").read_bytes()

        # Re-enrolment: the new certificate works, the old one no longer does.
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        assert await _ping(edge, hub.url)
        (edge / "keys" / "sync.pem").write_bytes(old_cert)
        (edge / "keys" / "sync.key").write_bytes(old_key)
        with pytest.raises(HubRefused) as refused:
            await _ping(edge, hub.url)
        assert (refused.value.status, refused.value.code) == (403, "not_enrolled")

        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        assert hub.service.enrolment is not None
        assert await hub.service.enrolment.revoke(identity.box_id)
        with pytest.raises(HubRefused) as refused:
            await _ping(edge, hub.url)
        assert refused.value.status == 403


async def test_used_token_is_refused(tmp_path: Path, hub_store: str) -> None:
    async with running_hub(tmp_path, hub_database=hub_store) as hub:
        token = await hub.token("moe.go.th")
        first = await new_edge(tmp_path, "moe.go.th", "first")
        second = await new_edge(tmp_path, "moe.go.th", "second")
        await enroll(first, hub.url, token)
        with pytest.raises(EnrolError, match="already used"):
            await enroll(second, hub.url, token)
        assert not (second / "keys" / "sync.pem").exists()


async def test_expired_token_is_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        token = await hub.token("moe.go.th", ttl=3600)
        await hub.clock.advance(3601)
        edge = await new_edge(tmp_path, "moe.go.th")
        with pytest.raises(EnrolError, match="expired"):
            await enroll(edge, hub.url, token)
        assert not (edge / "keys" / "central.json").exists()


async def test_token_for_another_agency_is_refused_and_stays_usable(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        token = await hub.token("moph.go.th")
        wrong = await new_edge(tmp_path, "moe.go.th", "wrong")
        with pytest.raises(EnrolError, match=r"moph\.go\.th"):
            await enroll(wrong, hub.url, token)
        right = await new_edge(tmp_path, "moph.go.th", "right")
        await enroll(right, hub.url, token)


async def test_token_naming_another_ca_is_not_sent(tmp_path: Path) -> None:
    """A man in the middle cannot pass the token's CA check; the secret stays unused."""
    async with running_hub(tmp_path) as hub:
        token = EnrolmentToken.parse(await hub.token("moe.go.th"))
        other = EnrolmentToken(token.secret, bytes(32))
        edge = await new_edge(tmp_path, "moe.go.th")
        with pytest.raises(EnrolError, match="impersonating"):
            await enroll(edge, hub.url, str(other))
        await enroll(edge, hub.url, str(token))  # not spent by the failed attempt


async def _raw(hub: Hub, edge: Path, request: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes over mutual TLS; return the status and the JSON body."""
    context = central_client_context(edge / "keys")
    port = int(hub.url.rpartition(":")[2])
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    data = b""
    with trio.fail_after(10):
        await stream.send_all(request)
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    await trio.aclose_forcefully(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /sync/v1/ping HTTP/1.1\r\nhost: h\r\n\r\n", 405, "method_not_allowed"),
        (b"POST /sync/v1/nope HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n{}", 404,
         "not_found"),
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: text/plain\r\n"
         b"content-length: 2\r\n\r\n{}", 415, "unsupported_media_type"),
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"content-length: 3\r\n\r\n{x}", 400, "bad_json"),
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"content-length: 2\r\n\r\n[]", 400, "bad_request"),
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"content-length: 999999\r\n\r\n{", 413, "too_large"),
        (b"POST /sync/v1/enroll HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"content-length: 2\r\n\r\n{}", 400, "bad_request"),
        # Issue 16: RFC 9112 §6.1 (CL with TE) and §5.2 (obs-fold) on the hub's reader too.
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400,
         "bad_request"),
        (b"POST /sync/v1/ping HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\n"
         b"transfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    ],
)  # fmt: skip
async def test_bad_requests_get_json_errors(
    tmp_path: Path, request_bytes: bytes, status: int, code: str
) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        got_status, body = await _raw(hub, edge, request_bytes)
        assert got_status == status
        error = body["error"]
        assert isinstance(error, dict)
        assert error["code"] == code
        assert error["message"]


async def test_handler_errors_map_to_refused_or_unavailable(tmp_path: Path) -> None:
    async def busy(peer: Peer, body: object) -> object:
        raise HubError(503, "busy", "try later")

    async def broken(peer: Peer, body: object) -> object:
        raise RuntimeError("secret detail")

    async def refuse(peer: Peer, body: object) -> object:
        raise HubError(409, "conflict", "no")

    extra = [
        SyncRoute("/sync/v1/t/busy", busy),
        SyncRoute("/sync/v1/t/broken", broken),
        SyncRoute("/sync/v1/t/refuse", refuse),
    ]
    async with running_hub(tmp_path, extra_routes=extra) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=10)
        try:
            with pytest.raises(HubUnavailable, match="busy"):
                await client("/sync/v1/t/busy", {})
            with pytest.raises(HubUnavailable) as unavailable:
                await client("/sync/v1/t/broken", {})
            assert "secret detail" not in str(unavailable.value)
            with pytest.raises(HubRefused) as refused:
                await client("/sync/v1/t/refuse", {})
            assert (refused.value.status, refused.value.code) == (409, "conflict")
            # The connection survives errors: the next call still works.
            assert await client(PING, {})
        finally:
            await client.aclose()


# --- content codings (RFC 9110 §8.4, §12.5.3) ------------------------------------------


async def _exchange(
    hub: Hub, edge: Path, path: str, body: bytes, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """POST *body* with *headers* over mutual TLS; return status, headers, raw body."""
    context = central_client_context(edge / "keys")
    port = int(hub.url.rpartition(":")[2])
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    conn = h11.Connection(h11.CLIENT)
    fields = [("host", "h"), ("content-length", str(len(body))), *headers]
    status, answer_headers, chunks = 0, {}, []
    try:
        with trio.fail_after(10):
            await stream.send_all(
                conn.send(h11.Request(method="POST", target=path, headers=fields))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            for _ in range(10_000):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    answer_headers = {n.decode(): v.decode() for n, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    finally:
        await trio.aclose_forcefully(stream)
    return status, answer_headers, b"".join(chunks)


async def _echo(peer: Peer, body: object) -> object:
    return {"echo": body}


ECHO = "/sync/v1/t/echo"
JSON_TYPE = ("content-type", "application/json")


async def test_gzip_requests_and_answers_and_identity_still_work(tmp_path: Path) -> None:
    routes = [SyncRoute(ECHO, _echo, max_body=64 * 1024)]
    async with running_hub(tmp_path, extra_routes=routes) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        text = {"text": "ข้อความภาษาไทย " * 200}
        plain = json.dumps(text).encode()
        # A box that gzips and takes gzip.
        status, headers, raw = await _exchange(
            hub, edge, ECHO, gzip.compress(plain),
            [JSON_TYPE, ("content-encoding", "gzip"), ("accept-encoding", "gzip")],
        )  # fmt: skip
        assert status == 200
        assert headers["content-encoding"] == "gzip"
        assert headers["accept-encoding"] == "gzip"
        assert int(headers["content-length"]) == len(raw) < len(plain)
        assert json.loads(gzip.decompress(raw)) == {"echo": text}
        # An older box: identity both ways, as before.
        status, headers, raw = await _exchange(hub, edge, ECHO, plain, [JSON_TYPE])
        assert status == 200
        assert "content-encoding" not in headers
        assert json.loads(raw) == {"echo": text}
        # gzip asked for, but an answer this small goes as it is.
        status, headers, raw = await _exchange(
            hub, edge, PING, b"{}", [JSON_TYPE, ("accept-encoding", "gzip, br")]
        )
        assert status == 200
        assert "content-encoding" not in headers
        assert json.loads(raw)["domain"] == "moe.go.th"


@pytest.mark.parametrize(
    ("make_body", "encoding", "status", "code"),
    [
        # A bomb: 32 MiB of zeros in about 32 KiB, against the route's 64 KiB limit.
        (lambda: gzip.compress(bytes(32 << 20), 9), "gzip", 413, "too_large"),
        # Inflates to one byte more than the limit.
        (lambda: gzip.compress(b" " * (64 * 1024 - 1) + b"{}"), "gzip", 413, "too_large"),
        (lambda: gzip.compress(b"{}")[:-4], "gzip", 400, "bad_encoding"),
        (lambda: b"{}", "gzip", 400, "bad_encoding"),
        (lambda: gzip.compress(b"{x"), "x-gzip", 400, "bad_json"),
        (lambda: b"{}", "br", 415, "unsupported_encoding"),
        (lambda: b"{}", "gzip, deflate", 415, "unsupported_encoding"),
    ],
)  # fmt: skip
async def test_bad_gzip_bodies_are_refused(
    tmp_path: Path, make_body: object, encoding: str, status: int, code: str
) -> None:
    routes = [SyncRoute(ECHO, _echo, max_body=64 * 1024)]
    async with running_hub(tmp_path, extra_routes=routes) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        assert callable(make_body)
        body = make_body()
        got, headers, raw = await _exchange(
            hub, edge, ECHO, body, [JSON_TYPE, ("content-encoding", encoding)]
        )
        assert got == status
        assert json.loads(raw)["error"]["code"] == code
        assert headers["accept-encoding"] == "gzip"  # what it takes instead


async def test_the_client_gzips_once_the_hub_says_it_takes_gzip(tmp_path: Path) -> None:
    seen: list[int] = []

    async def measure(peer: Peer, body: object) -> object:
        seen.append(len(json.dumps(body)))
        return {"n": len(seen), "pad": "ก" * 2000}

    routes = [SyncRoute(ECHO, measure)]
    async with running_hub(tmp_path, extra_routes=routes) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=10)
        sent: list[bytes] = []
        exchange = client._exchange

        async def spy(
            path: str, payload: bytes, limit: trio.CancelScope, *, gzipped: bool
        ) -> tuple[int, bytes]:
            sent.append(gzip.compress(payload) if gzipped else payload)
            return await exchange(path, payload, limit, gzipped=gzipped)

        client._exchange = spy  # type: ignore[method-assign]
        body = {"events": ["ข้อความ"] * 500}
        try:
            assert not client.hub_takes_gzip
            first = await client(ECHO, body)
            assert client.hub_takes_gzip  # the answer said Accept-Encoding: gzip
            second = await client(ECHO, body)
        finally:
            await client.aclose()
        assert (first["n"], second["n"]) == (1, 2)
        assert first["pad"] == second["pad"] == "ก" * 2000  # a gzip'ed answer, inflated
        assert len(sent[1]) < len(sent[0]) / 10  # identity first, then gzip
        assert seen[0] == seen[1]


# --- one connection's fault (appliance.net.listeners.ConnectionGate) ----------------------


async def test_a_fault_outside_any_handler_ends_only_that_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = hub_server._Connection._exchange

    async def faulty(self: Any, request: h11.Request) -> None:
        if request.target == b"/sync/v1/t/fault":
            raise RuntimeError("injected fault for one request")
        await original(self, request)

    monkeypatch.setattr(hub_server._Connection, "_exchange", faulty)
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=10)
        try:
            assert await client(PING, {})  # a kept-alive connection, open across the fault
            with caplog.at_level(logging.ERROR, logger="edgebox.listeners"):
                status, headers, body = await _exchange(
                    hub, edge, "/sync/v1/t/fault", b"{}", [JSON_TYPE]
                )
            assert status == 500
            assert headers["connection"] == "close"
            assert json.loads(body)["error"]["code"] == "internal"
            (record,) = caplog.records
            assert "hub-sync: session from 127.0.0.1 failed (reference" in record.getMessage()
            assert record.exc_info is not None
            assert hub.service.gate.faults == 1
            # The other connection and new ones are served as before.
            assert await client(PING, {})
            assert await _ping(edge, hub.url)
        finally:
            await client.aclose()


async def test_a_store_away_is_answered_503_with_retry_after(tmp_path: Path) -> None:
    """The hub's PostgreSQL gone (restart, failover): 503 + Retry-After, the box retries."""

    async def store_away(peer: Peer, body: object) -> object:
        raise PostgreSQLUnavailable("postgresql://hub@db1,db2/hub: connection refused")

    routes = [SyncRoute("/sync/v1/t/store", store_away)]
    async with running_hub(tmp_path, extra_routes=routes) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        json_type = [("content-type", "application/json")]
        status, headers, raw = await _exchange(hub, edge, "/sync/v1/t/store", b"{}", json_type)
        assert status == 503
        # RFC 9110 §10.2.3: delay-seconds, spread over the range; the body says the same.
        low, high = hub_server.STORE_RETRY_AFTER
        wait = int(headers["retry-after"])
        assert low <= wait <= high
        error = json.loads(raw)["error"]
        assert (error["code"], error["reason"], error["retry_after"]) == (
            "store_unavailable", "store", wait)  # fmt: skip
        assert "db1" not in raw.decode()  # the server's name stays in the hub's log
        client = HubClient(edge / "keys", hub.url, timeout=10)
        try:
            # The box's reading: the hub is there, its store is not; nothing was
            # promised, and the box holds its requests back as long as it was told.
            with pytest.raises(HubBusy, match="store_unavailable") as busy:
                await client("/sync/v1/t/store", {})
            assert low <= busy.value.retry_after <= high
            assert client.watch.busy_for() > 0
        finally:
            await client.aclose()


async def test_a_download_that_finds_the_store_away_is_answered_503(tmp_path: Path) -> None:
    def locate(peer: Peer, name: str) -> Path | None:
        raise PostgreSQLUnavailable("postgresql://hub@db1,db2/hub: connection refused")

    async with running_hub(tmp_path) as hub:
        hub.service.downloads = (SyncDownload("/sync/v1/t/files/", locate),)
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        context = central_client_context(edge / "keys")
        port = int(hub.url.rpartition(":")[2])
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname="127.0.0.1"
        )
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/sync/v1/t/files/b.raucb",
                              headers=[("host", "h")])  # fmt: skip
        try:
            with trio.fail_after(10):
                await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                event: object = h11.NEED_DATA
                while not isinstance(event, h11.Response):
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
        finally:
            await trio.aclose_forcefully(stream)
        assert isinstance(event, h11.Response)
        assert event.status_code == 503
        low, high = hub_server.STORE_RETRY_AFTER
        assert low <= int(dict(event.headers)[b"retry-after"]) <= high
