"""One session's fault ends that session only (appliance.net.listeners `ConnectionGate`).

IMAP and SMTP are started in-process on a real box and driven with the standard
library's clients (imaplib, smtplib) in worker threads; a fault is injected into one
session by patching the server in-process to raise for one user's or sender's input.
The faulty session must get its protocol's last words, the log must hold the
traceback, and the other open session and a new connection must be served as before.
The HTTPS, WebSocket and hub-sync listeners have the same test beside their own
(tests/appliance/web/test_server.py, tests/appliance/sync/hub/test_server.py).

The per-source share beside the listener's total is checked on real sockets at the end.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import smtplib
import socket
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from appliance.box import Box
from appliance.config import Config, load_config
from appliance.mail.imap.session import ImapSession
from appliance.mail.smtp.policy import Port, SMTPPolicy
from appliance.net.listeners import ConnectionGate
from appliance.registry import imap_service, smtp_service
from appliance.security.tls import client_ssl_context
from tests.appliance.conftest import BoxFactory, Person
from tests.harness import free_port_offset

DOMAIN = "faults.go.th"
PASSWORD = "faults-test-2569"  # imaplib sends LOGIN in ASCII
GOOD = f"good@{DOMAIN}"
FAULTY = f"faulty@{DOMAIN}"
OUTSIDER = "colleague@other.example"

T = TypeVar("T")


def _ports_at_a_free_offset(data: Path) -> Config:
    return load_config(data, flags={"port_offset": free_port_offset()})


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    people = [Person(address, PASSWORD, "ผู้ทดสอบ") for address in (GOOD, FAULTY)]
    return await make_box(DOMAIN, people=people, config=_ports_at_a_free_offset)


async def in_thread(call: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(call)


def tls_context(box: Box) -> ssl.SSLContext:
    return client_ssl_context(box.config.data_dir / "keys")


# --- IMAP ------------------------------------------------------------------------------


async def test_imap_fault_ends_only_that_session(
    box: Box, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    original = ImapSession._on_noop

    async def faulty_noop(self: ImapSession, cmd: Any) -> None:
        if self.user is not None and self.user.address == FAULTY:
            raise RuntimeError("injected fault for one user")
        await original(self, cmd)

    monkeypatch.setattr(ImapSession, "_on_noop", faulty_noop)
    service = imap_service(box, "imaps")
    await nursery.start(service.serve)
    port = box.config.port("imaps")
    context = tls_context(box)

    def sign_in(user: str) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=30)
        client.login(user, PASSWORD)
        client.select("INBOX")
        return client

    good = await in_thread(lambda: sign_in(GOOD))
    faulty = await in_thread(lambda: sign_in(FAULTY))
    fresh: imaplib.IMAP4_SSL | None = None
    try:
        await in_thread(lambda: good.append("INBOX", None, None, b"Subject: kept\r\n\r\nhere\r\n"))
        with (
            caplog.at_level(logging.ERROR, "edgebox.listeners"),
            pytest.raises(imaplib.IMAP4.abort),
        ):
            await in_thread(faulty.noop)
        # RFC 5530 SERVERBUG, in the BYE imaplib keeps as an untagged response.
        bye = faulty.untagged_responses.get("BYE", [b""])[-1]
        assert bye.startswith(b"[SERVERBUG] internal error (reference ")
        reference = bye.split(b"reference ")[1][:8].decode()
        record = next(r for r in caplog.records if "failed" in r.getMessage())
        assert (
            f"imaps: session from 127.0.0.1 failed (reference {reference})" in record.getMessage()
        )
        assert record.exc_info is not None
        assert "injected fault" in str(record.exc_info[1])
        assert service.gate.faults == 1

        # The other session carries on, and the port still answers.
        assert (await in_thread(good.noop))[0] == "OK"
        typ, data = await in_thread(lambda: good.fetch("1", "(BODY.PEEK[])"))
        assert typ == "OK"
        assert b"here" in data[0][1]  # type: ignore[index]
        fresh = await in_thread(lambda: sign_in(GOOD))
        assert (await in_thread(fresh.noop))[0] == "OK"
        await in_thread(fresh.logout)
        await in_thread(good.logout)
    finally:
        for client in (good, faulty, fresh):
            if client is not None:
                with contextlib.suppress(OSError):  # closed by LOGOUT already
                    client.shutdown()


# --- SMTP ------------------------------------------------------------------------------


async def test_smtp_fault_ends_only_that_session(
    box: Box, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    original = SMTPPolicy.check_sender

    async def faulty_sender(self: SMTPPolicy, event: Any, *args: Any, **kwargs: Any) -> Any:
        if event.reverse_path == FAULTY:
            raise RuntimeError("injected fault for one sender")
        return await original(self, event, *args, **kwargs)

    monkeypatch.setattr(SMTPPolicy, "check_sender", faulty_sender)
    service = smtp_service(box, Port.MX)
    await nursery.start(service.serve)
    port = box.config.port(service.name)

    def connect() -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        client.ehlo("client.faults.go.th")
        return client

    good = await in_thread(connect)
    faulty = await in_thread(connect)
    fresh: smtplib.SMTP | None = None
    try:
        with caplog.at_level(logging.ERROR, "edgebox.listeners"):
            code, text = await in_thread(lambda: faulty.docmd(f"MAIL FROM:<{FAULTY}>"))
        # RFC 5321 §3.8: 421 before the server closes; RFC 3463 4.3.0.
        assert code == 421
        assert text.startswith(b"4.3.0 Internal error (reference ")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            await in_thread(faulty.noop)
        record = next(r for r in caplog.records if "failed" in r.getMessage())
        assert f"{service.name}: session from 127.0.0.1 failed" in record.getMessage()
        assert record.exc_info is not None

        # The other session delivers, and a new connection is served.
        # From outside: the MX port refuses senders in the box's own domains.
        message = f"From: <{OUTSIDER}>\r\nTo: <{GOOD}>\r\nSubject: after\r\n\r\nfine\r\n"
        assert await in_thread(lambda: good.sendmail(OUTSIDER, [GOOD], message)) == {}
        fresh = await in_thread(connect)
        assert (await in_thread(fresh.noop))[0] == 250
        await in_thread(fresh.quit)
        await in_thread(good.quit)
    finally:
        for client in (good, faulty, fresh):
            if client is not None:
                client.close()
    assert [m.uid for m in await box.mailstore.messages(GOOD)] == [1]


# --- the gate itself -------------------------------------------------------------------


class _Scripted:
    """A connection whose run raises *error*; records whether fault() was called."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.faulted: list[str] = []

    async def run(self) -> None:
        raise self.error

    async def fault(self, reference: str) -> None:
        self.faulted.append(reference)


@pytest.mark.parametrize(
    ("error", "is_fault"),
    [
        (trio.BrokenResourceError(), False),
        (ExceptionGroup("idle", [trio.BrokenResourceError(), trio.ClosedResourceError()]), False),
        (ssl.SSLError("bad record"), False),
        (RuntimeError("bug"), True),
        (ExceptionGroup("idle", [trio.BrokenResourceError(), KeyError("bug")]), True),
    ],
)
async def test_gate_tells_a_bug_from_a_client_that_left(
    error: Exception, is_fault: bool, caplog: Any
) -> None:
    gate = ConnectionGate(10, b"", service="test")
    connection = _Scripted(error)
    server, _client = trio.testing.memory_stream_pair()
    with caplog.at_level(logging.ERROR, "edgebox.listeners"):
        await gate.admit(server, lambda stream: connection)  # never raises
    assert gate.faults == int(is_fault)
    assert len(connection.faulted) == int(is_fault)
    assert bool(caplog.records) == is_fault
    assert gate.active == 0


async def test_gate_bounds_last_words_that_hang(autojump_clock: trio.abc.Clock) -> None:
    class Hanging(_Scripted):
        async def fault(self, reference: str) -> None:
            await trio.sleep_forever()

    gate = ConnectionGate(10, b"", service="test")
    server, _client = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await gate.admit(server, lambda stream: Hanging(RuntimeError("bug")))
    # LAST_WORDS_TIMEOUT on trio's mock clock: the connection is closed anyway.
    assert trio.current_time() - start == pytest.approx(5.0)
    assert gate.active == 0


# -- the per-source share ------------------------------------------------------------

REFUSAL = b"421 busy\r\n"


async def connect_from(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def first_bytes(stream: trio.SocketStream) -> bytes:
    with trio.fail_after(10):
        return await stream.receive_some(100)


async def test_one_source_at_its_share_does_not_keep_others_out() -> None:
    gate = ConnectionGate(4, REFUSAL, service="test", per_source=2)
    release = trio.Event()

    class Greeting:
        def __init__(self, stream: trio.abc.Stream) -> None:
            self.stream = stream

        async def run(self) -> None:
            await self.stream.send_all(b"220 hello\r\n")
            await release.wait()

        async def fault(self, reference: str) -> None:
            raise AssertionError("no fault expected")

    async def handler(stream: trio.SocketStream) -> None:
        await gate.admit(stream, Greeting)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        hog = [await connect_from(port, "127.0.0.2") for _ in range(2)]
        for stream in hog:
            assert await first_bytes(stream) == b"220 hello\r\n"
        assert gate.by_source == {"127.0.0.2": 2}
        refused = await connect_from(port, "127.0.0.2")
        assert await first_bytes(refused) == REFUSAL
        other = [await connect_from(port, "127.0.0.3") for _ in range(2)]
        for stream in other:
            assert await first_bytes(stream) == b"220 hello\r\n"
        # The total still holds: a fifth source finds the listener full.
        late = await connect_from(port, "127.0.0.4")
        assert await first_bytes(late) == REFUSAL
        release.set()
        for stream in [*hog, *other, refused, late]:
            await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()  # every handler has finished
        assert gate.active == 0
        assert gate.by_source == {}, "a source leaves the map with its last connection"
        nursery.cancel_scope.cancel()
