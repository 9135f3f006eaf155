"""The outbound relay against a scripted SMTP relay on 127.0.0.1.

The scripted relay is edgebox's own SMTP server core (`ServerConnection`, an independent
state machine from the client under test) behind a few lines of trio, so each test can
say which recipient gets a 4xx or 5xx, when the relay hangs, and whether it offers TLS.
Time is a `ManualClock`: days of back-off and the 14-day expiry pass in milliseconds.
Waits are bounded polls for an outcome, never assertions about how long something took.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import shutil
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.box import Box
from appliance.config import load_config
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.smtp import protocol as server
from appliance.protection import dkim
from appliance.sync import relay as relay_module
from appliance.sync.central import CENTRAL_CA_FILE, CentralCredentials, save_credentials
from appliance.sync.clock import ManualClock
from appliance.sync.relay import PARALLEL_FROM, OutboundRelay, Timeouts
from appliance.sync.status import SyncStatus, read_sync_status
from tests.appliance.conftest import BoxFactory, Person
from tests.peers import self_signed_cert

DOMAIN = "a.go.th"
SENDER = f"somchai@{DOMAIN}"
PASSWORD = "รหัส-ทดสอบ-2567"
BOX_SECRET = "box-a-central-secret"
# Generous: a loaded CI machine must not turn into a "link down" the test never expects.
FAST = Timeouts(connect=15, greeting=15, command=15, data_start=15, data_block=15, data_end=15)


# -- a scripted relay ----------------------------------------------------------------


@dataclass
class Accepted:
    sender: str
    recipients: tuple[str, ...]
    content: bytes
    mail_params: dict[str, str | None]
    tls: bool

    @property
    def subject(self) -> str:
        return str(email.message_from_bytes(self.content)["Subject"])


@dataclass
class ScriptedRelay:
    """An SMTP relay whose answers a test decides."""

    directory: Path
    starttls: bool = True
    #: Offer CHUNKING (RFC 3030); without it the relay must use DATA.
    chunking: bool = True
    #: Recipient address -> the refusal its RCPT gets.
    refuse_rcpt: dict[str, server.Reply] = field(default_factory=dict)
    #: Subject -> the refusal its content gets.
    refuse_subject: dict[str, server.Reply] = field(default_factory=dict)
    #: Subjects whose content is read and never answered (the link dies after the dot).
    hang_subject: set[str] = field(default_factory=set)
    #: Recipients whose RCPT gets 421 and a closed connection (a relay shutting down).
    shutdown_on_rcpt: set[str] = field(default_factory=set)
    #: Accept the TCP connection, then say nothing (a black-holed relay).
    silent: bool = False
    accepted: list[Accepted] = field(default_factory=list)
    #: Every content received, answered or not, by subject.
    contents: list[str] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)
    #: RSET, DATA and BDAT commands received (counted in the bytes; test contents never
    #: hold one).
    rsets: int = 0
    datas: int = 0
    bdats: int = 0
    auths: list[tuple[str, str, str]] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    #: The test's clock, to note when each RCPT came (the relay's time of attempt).
    clock: ManualClock | None = None
    rcpt_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cert, self.key = self_signed_cert(self.directory, "relay.centre.test")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, self.key)

    async def serve(self, nursery: trio.Nursery, port: int = 0) -> int:
        listeners = await nursery.start(trio.serve_tcp, self.handle, port)
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        config = server.SessionConfig(
            hostname="relay.centre.test", starttls_available=self.starttls, auth_offered=True
        )
        conn = server.ServerConnection(config)
        conn.greet()
        try:
            if self.silent:
                await trio.sleep_forever()
            await self._run(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        finally:
            await stream.aclose()

    async def _run(self, conn: server.ServerConnection, stream: trio.abc.Stream) -> None:
        while True:
            event = conn.next_event()
            if event is server.NEED_DATA or event is server.CLOSED:
                if out := conn.data_to_send():
                    if not self.chunking:
                        out = out.replace(b"250-CHUNKING\r\n", b"")
                    await stream.send_all(out)
                if event is server.CLOSED:
                    return
                data = await stream.receive_some(65536)
                self.rsets += data.count(b"RSET\r\n")
                self.datas += data.count(b"DATA\r\n")
                self.bdats += data.count(b"BDAT ")
                conn.receive_data(data)
            elif isinstance(event, server.StartTLS):
                await stream.send_all(conn.data_to_send())
                stream = trio.SSLStream(stream, self.context, server_side=True)
                await stream.do_handshake()
                conn.tls_started()
            elif isinstance(event, server.AuthAttempt):
                self.auths.append((event.authzid, event.authcid, event.password))
                if event.password == BOX_SECRET:
                    conn.accept()
                else:
                    conn.reject(server.AUTH_FAILED)
            elif isinstance(event, server.MailFrom):
                conn.accept()
            elif isinstance(event, server.RcptTo):
                self.rcpts.append(event.forward_path)
                if self.clock is not None:
                    self.rcpt_times.append(self.clock.now())
                if event.forward_path in self.shutdown_on_rcpt:
                    conn.close(server.SHUTTING_DOWN)
                    continue
                refusal = self.refuse_rcpt.get(event.forward_path)
                conn.reject(refusal) if refusal else conn.accept()
            elif isinstance(event, server.MessageData):
                subject = str(email.message_from_bytes(event.content)["Subject"])
                self.contents.append(subject)
                if subject in self.hang_subject:
                    await trio.sleep_forever()
                refusal = self.refuse_subject.get(subject)
                if refusal:
                    conn.reject(refusal)
                    continue
                self.accepted.append(
                    Accepted(
                        event.reverse_path,
                        tuple(r.forward_path for r in event.recipients),
                        event.content,
                        event.mail_params,
                        conn.tls_active,
                    )
                )
                conn.accept()


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    opened = await make_box(DOMAIN, people=[Person(SENDER, PASSWORD, "สมชาย")], config=load_config)
    save_credentials(opened.config.data_dir / "keys", CentralCredentials("box-a", BOX_SECRET))
    return opened


@pytest.fixture
def relay_server(tmp_path: Path, box: Box) -> ScriptedRelay:
    (tmp_path / "relay").mkdir()
    scripted = ScriptedRelay(tmp_path / "relay")
    shutil.copy(scripted.cert, box.config.data_dir / "keys" / CENTRAL_CA_FILE)
    return scripted


def manual_clock() -> ManualClock:
    """A manual clock a minute ahead of the wall clock.

    Rows are stamped with the wall clock when queued; starting ahead makes every row
    queued during the test due at once, however slowly the machine ran meanwhile.
    """
    return ManualClock(start=time.time() + 60)


def point_at(box: Box, port: int) -> None:
    box.config = dataclasses.replace(box.config, central_smtp=f"smtp://127.0.0.1:{port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def queue(
    box: Box,
    subject: str,
    *,
    urgency: str | None = None,
    recipients: tuple[str, ...] = ("khun.b@b.go.th",),
    sender: str = SENDER,
    notify: str | None = None,
    ret: str | None = None,
    padding: int = 0,
) -> None:
    head = f"From: {sender or 'x@a.go.th'}\r\nTo: someone@b.go.th\r\nSubject: {subject}\r\n"
    if urgency:
        head += f"X-Urgency: {urgency}\r\n"
    body = f"body of {subject}\r\n" + ("x" * 70 + "\r\n") * (padding // 72)
    content = (head + f"Message-ID: <{subject}@a.go.th>\r\n\r\n{body}").encode()
    envelope = Envelope(
        sender,
        tuple(Recipient(r, local=False, notify=notify) for r in recipients),
        Trace("client.a.go.th", "127.0.0.1", "ESMTPSA"),
        ret=ret,
    )
    await box.delivery.deliver(envelope, content)


async def until(predicate: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait (bounded) until *predicate* holds."""
    with trio.fail_after(40):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)
    raise AssertionError(what)  # pragma: no cover


async def advance_until(
    clock: ManualClock, predicate: Callable[[], Awaitable[bool]], step: float
) -> None:
    """Move the clock in *step*s until *predicate* holds (bounded)."""
    for _ in range(2000):
        if await predicate():
            return
        await clock.advance(step)
        await trio.sleep(0.005)
    raise AssertionError("condition not reached")


async def rows(box: Box) -> list[tuple[Any, ...]]:
    return await box.mail_db.read(
        lambda conn: conn.execute(
            "SELECT recipient, attempts, next_attempt_at, last_error FROM outbound ORDER BY id"
        ).fetchall()
    )


async def inbox(box: Box) -> list[email.message.EmailMessage]:
    messages = []
    for row in await box.mailstore.messages(SENDER):
        raw = await box.mailstore.content(row)
        messages.append(email.message_from_bytes(raw, policy=email.policy.default))
    return messages  # type: ignore[return-value]


def start_relay(box: Box, clock: ManualClock, **kwargs: Any) -> OutboundRelay:
    status = SyncStatus(box.config.data_dir, clock)
    kwargs.setdefault("timeouts", FAST)
    return OutboundRelay(
        status, clock, config=box.config, hostname=box.hostname, directory=box.directory,
        mailstore=box.mailstore, **kwargs,
    )  # fmt: skip


def delivery_status(report: email.message.EmailMessage) -> str:
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    return parts[1].as_string()


# -- tests ---------------------------------------------------------------------------


async def test_most_urgent_first_over_one_authenticated_tls_session(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    for subject, urgency in [
        ("normal-1", None),
        ("urgent", "ด่วน"),
        ("normal-2", None),
        ("most-urgent", "ด่วนที่สุด"),
        ("very-urgent", "very-urgent"),
    ]:
        await queue(box, subject, urgency=urgency)
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await until(lambda: len(relay_server.accepted) == 5, "all five relayed")
        await until(_queue_empty(box), "queue drained")
        await until(lambda: relay.rounds >= 2, "round reported")
        nursery.cancel_scope.cancel()
    assert [a.subject for a in relay_server.accepted] == [
        "most-urgent",
        "very-urgent",
        "urgent",
        "normal-1",
        "normal-2",
    ]
    assert relay_server.connections == 1  # one session for all five
    assert relay_server.rsets == 0  # each transaction ended with its 250: no RSET needed
    assert relay_server.auths == [("", "box-a", BOX_SECRET)]
    assert all(a.tls and a.sender == SENDER for a in relay_server.accepted)
    assert relay_server.accepted[0].mail_params.get("SIZE") is not None
    report = read_sync_status(box.config.data_dir)["outbound"]
    assert report["sent"] == 5
    assert report["last_error"] is None
    assert report["queued"] == 0
    assert BOX_SECRET not in (box.config.data_dir / "run" / "sync.json").read_text()


def _queue_empty(box: Box) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await box.mailstore.outbound_length() == 0

    return check


async def relay_until_drained(
    box: Box, relay_server: ScriptedRelay, clock: ManualClock, what: str, **options: Any
) -> None:
    """Point *box* at the scripted relay, run its outbound relay until the queue is empty."""
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock, **options)
        await nursery.start(relay.serve)
        await until(_queue_empty(box), what)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_each_recipient_settled_by_its_own_reply(
    box: Box, relay_server: ScriptedRelay, chunking: bool
) -> None:
    clock = manual_clock()
    relay_server.chunking = chunking
    relay_server.refuse_rcpt = {
        "busy@b.go.th": server.Reply(450, "4.2.1", "Mailbox busy, try later"),
        "nobody@b.go.th": server.Reply(550, "5.1.1", "No such user here"),
    }
    await queue(box, "three", recipients=("ok@b.go.th", "busy@b.go.th", "nobody@b.go.th"))
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await until(lambda: len(relay_server.accepted) == 1, "first transaction")
        await until(lambda: _count_inbox(box, 1), "bounce for nobody@")
        (waiting,) = await rows(box)
        recipient, attempts, next_attempt_at, last_error = waiting
        assert (recipient, attempts) == ("busy@b.go.th", 1)
        assert "450 4.2.1" in last_error
        # 1 minute, less up to 20 % jitter.
        assert 0.8 * 60 - 1 <= next_attempt_at - clock.now() <= 60

        relay_server.refuse_rcpt.clear()
        await advance_until(clock, lambda: _accepted(relay_server, 2), step=10)
        await until(_queue_empty(box), "queue drained")
        nursery.cancel_scope.cancel()
    one, two = relay_server.accepted
    assert one.recipients == ("ok@b.go.th",)
    assert two.recipients == ("busy@b.go.th",)
    (bounce,) = await inbox(box)  # only the 5xx recipient was bounced, once
    status = delivery_status(bounce)
    assert "Final-Recipient: rfc822; nobody@b.go.th" in status
    assert "Status: 5.1.1" in status
    assert "Action: failed" in status
    assert "busy@b.go.th" not in status
    assert "ok@b.go.th" not in status
    assert bounce["From"].addresses[0].username == "MAILER-DAEMON"
    # The content went as one BDAT chunk where CHUNKING was offered, else after DATA.
    assert (relay_server.bdats, relay_server.datas) == ((2, 0) if chunking else (0, 2))


async def _count_inbox(box: Box, count: int) -> bool:
    return len(await box.mailstore.messages(SENDER)) == count


async def _accepted(relay_server: ScriptedRelay, count: int) -> bool:
    return len(relay_server.accepted) >= count


async def test_transient_failures_back_off_doubling(box: Box, relay_server: ScriptedRelay) -> None:
    clock = manual_clock()
    relay_server.clock = clock
    relay_server.refuse_rcpt = {"busy@b.go.th": server.Reply(451, "4.3.0", "Try again")}
    await queue(box, "retry", recipients=("busy@b.go.th",))
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        waits, schedule = [], []
        for attempt in range(1, 5):

            async def attempted(n: int = attempt) -> bool:
                return (await rows(box))[0][1] == n

            await advance_until(clock, attempted, step=20)
            (_, _, next_attempt_at, _) = (await rows(box))[0]
            # Measured from when the relay made the attempt, not from when we looked.
            waits.append(next_attempt_at - relay_server.rcpt_times[-1])
            schedule.append(next_attempt_at)
        nursery.cancel_scope.cancel()
    assert len(relay_server.rcpt_times) == 4
    for tried, due in zip(relay_server.rcpt_times[1:], schedule, strict=False):
        assert tried >= due  # never before its time
    for wait, full in zip(waits, (60, 120, 240, 480), strict=True):
        assert 0.8 * full - 1 <= wait <= full, waits
    assert relay_server.accepted == []


async def test_unreachable_relay_burns_no_attempts_and_wake_retries_at_once(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    port = free_port()
    point_at(box, port)  # nothing listens there: the uplink is down
    await queue(box, "during-the-cut")
    async with trio.open_nursery() as nursery:
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await until(lambda: relay.rounds >= 1, "first round")
        for _ in range(60):  # three hours of a cut, a round every few minutes
            await clock.advance(180)
            await trio.sleep(0.005)
        ((_, attempts, _, last_error),) = await rows(box)
        assert attempts == 0
        assert last_error is None
        state = await relay.status()
        assert state.link == "down"
        assert state.queued == {0: 1}
        assert state.last_error is not None
        assert "cannot connect" in state.last_error
        assert "cannot connect" in read_sync_status(box.config.data_dir)["outbound"]["last_error"]

        await relay_server.serve(nursery, port)
        relay.wake()  # the link monitor saw the link come back
        await until(lambda: len(relay_server.accepted) == 1, "sent after wake()")
        await until(_queue_empty(box), "queue drained")

        async def link_up() -> bool:
            return (await relay.status()).link == "up"

        await until(link_up, "round reported")
        nursery.cancel_scope.cancel()
    assert await inbox(box) == []  # no delay notice, no bounce


async def test_silent_relay_times_out_without_burning_attempts(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    relay_server.silent = True
    await queue(box, "black-hole")
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock, timeouts=dataclasses.replace(FAST, greeting=0.2))
        await nursery.start(relay.serve)
        await until(lambda: relay.rounds >= 1, "first round")
        ((_, attempts, _, _),) = await rows(box)
        assert attempts == 0
        assert "timed out" in str((await relay.status()).last_error)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("problem", ["no-starttls", "bad-credentials"])
async def test_relay_without_tls_or_refusing_credentials_holds_the_queue(
    box: Box, relay_server: ScriptedRelay, problem: str
) -> None:
    clock = manual_clock()
    if problem == "no-starttls":
        relay_server.starttls = False
    else:
        save_credentials(box.config.data_dir / "keys", CentralCredentials("box-a", "wrong"))
    await queue(box, "held")
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await until(lambda: relay.rounds >= 1, "first round")
        nursery.cancel_scope.cancel()
    ((_, attempts, _, _),) = await rows(box)
    assert attempts == 0
    assert relay_server.accepted == []
    error = read_sync_status(box.config.data_dir)["outbound"]["last_error"]
    if problem == "no-starttls":
        assert "STARTTLS" in error
        assert relay_server.auths == []
    else:
        assert "refused the box's credentials" in error
        assert "wrong" not in error


async def test_expiry_after_14_days_bounces_to_the_sender(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    point_at(box, free_port())  # the centre stays unreachable for the whole time
    await queue(box, "too-long", ret="FULL")
    await queue(box, "never-tell", notify="NEVER")
    await queue(box, "a-bounce", sender="")
    async with trio.open_nursery() as nursery:
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await advance_until(clock, _queue_empty(box), step=6 * 3600)
        nursery.cancel_scope.cancel()
    assert clock.now() - time.time() >= 14 * 86400 - 6 * 3600
    (bounce,) = await inbox(box)  # not for NOTIFY=NEVER, never for a null sender
    status = delivery_status(bounce)
    assert "Status: 4.4.7" in status
    assert "Action: failed" in status
    assert "Final-Recipient: rfc822; khun.b@b.go.th" in status
    returned = list(bounce.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"  # RET=FULL
    assert "body of too-long" in returned.as_string()
    human = next(iter(bounce.iter_parts())).get_content()
    assert "14 วัน" in human
    assert "14 days" in human
    assert await rows(box) == []
    # The three originals' blobs are released; only the bounce's own remains.
    assert len(list(box.mailstore.blobs.iter_ids())) == 1


async def test_restart_mid_queue_sends_nothing_twice(box: Box, relay_server: ScriptedRelay) -> None:
    clock = manual_clock()
    for subject in ("first", "second", "third"):
        await queue(box, subject)
    # The relay takes "second" and the link dies before its reply: the box is stopped.
    relay_server.hang_subject = {"second"}
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        async with trio.open_nursery() as relay_nursery:
            relay = start_relay(box, clock)
            await relay_nursery.start(relay.serve)
            await until(lambda: relay_server.contents == ["first", "second"], "hung on second")
            relay_nursery.cancel_scope.cancel()
        assert [r[0] for r in await rows(box)] == ["khun.b@b.go.th"] * 2  # "first" is gone

        relay_server.hang_subject = set()
        restarted = start_relay(box, clock)
        await nursery.start(restarted.serve)
        await until(_queue_empty(box), "queue drained after restart")
        nursery.cancel_scope.cancel()
    assert [a.subject for a in relay_server.accepted] == ["first", "second", "third"]


async def test_refused_content_bounces_every_accepted_recipient(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    relay_server.refuse_subject = {"virus": server.Reply(554, "5.7.1", "Message rejected")}
    await queue(box, "virus", recipients=("one@b.go.th", "two@c.go.th"), ret="HDRS")
    await relay_until_drained(box, relay_server, clock, "queue settled")
    (bounce,) = await inbox(box)
    status = delivery_status(bounce)
    assert status.count("Action: failed") == 2
    assert "Status: 5.7.1" in status
    returned = list(bounce.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: virus" in returned.get_content()
    assert "body of" not in bounce.as_string()


async def test_421_mid_session_is_the_link_not_the_message(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    relay_server.shutdown_on_rcpt = {"khun.b@b.go.th"}
    await queue(box, "shut-out")
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock)
        await nursery.start(relay.serve)
        await until(lambda: relay.rounds >= 1, "first round")
        ((_, attempts, _, _),) = await rows(box)
        assert attempts == 0
        assert "421" in str((await relay.status()).last_error)

        relay_server.shutdown_on_rcpt = set()
        relay.wake()
        await until(_queue_empty(box), "sent once the relay is back")
        nursery.cancel_scope.cancel()
    assert [a.subject for a in relay_server.accepted] == ["shut-out"]


async def test_a_row_with_control_characters_bounces_instead_of_crashing(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    await queue(box, "tampered")
    await box.mail_db.write(
        lambda conn: conn.execute(
            "UPDATE outbound SET recipient = ?", ("x@b.go.th>\r\nRCPT TO:<evil@z.go.th",)
        )
    )
    await relay_until_drained(box, relay_server, clock, "row settled")
    assert relay_server.rcpts == []
    (bounce,) = await inbox(box)
    assert "Status: 5.1.3" in delivery_status(bounce)


async def test_a_backlog_goes_over_several_sessions_each_level_before_the_next(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    normal = [f"normal-{n}" for n in range(PARALLEL_FROM + 5)]
    urgent = [f"urgent-{n}" for n in range(PARALLEL_FROM)]
    for subject in normal:
        await queue(box, subject)
    for subject in urgent:
        await queue(box, subject, urgency="ด่วน")
    await relay_until_drained(box, relay_server, clock, "queue drained", sessions=3)
    subjects = [a.subject for a in relay_server.accepted]
    assert sorted(subjects) == sorted(normal + urgent)  # each once
    assert set(subjects[: len(urgent)]) == set(urgent)  # the whole level first
    assert relay_server.connections == 3


async def test_a_session_breaking_in_a_backlog_stops_the_round_and_loses_nothing(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    subjects = [f"m-{n}" for n in range(PARALLEL_FROM + 10)]
    for subject in subjects:
        await queue(box, subject)
    relay_server.hang_subject = {"m-3"}
    quick = Timeouts(connect=15, greeting=15, command=15, data_start=15, data_block=15, data_end=1)
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        relay = start_relay(box, clock, sessions=3, timeouts=quick)
        await nursery.start(relay.serve)
        await until(lambda: relay.rounds >= 1, "the round with the hung message")
        assert (await relay.status()).link == "down"
        relay_server.hang_subject = set()
        relay.wake()
        await until(_queue_empty(box), "the rest sent")
        nursery.cancel_scope.cancel()
    accepted = [a.subject for a in relay_server.accepted]
    assert sorted(accepted) == sorted(subjects)  # m-3 was never answered: sent again once


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
async def test_rset_only_after_a_transaction_the_relay_cut_short(
    box: Box, relay_server: ScriptedRelay, chunking: bool
) -> None:
    clock = manual_clock()
    relay_server.chunking = chunking
    relay_server.refuse_rcpt = {"nobody@b.go.th": server.Reply(550, "5.1.1", "No such user")}
    await queue(box, "refused", recipients=("nobody@b.go.th",))
    await queue(box, "ok-1")
    await queue(box, "ok-2")
    await relay_until_drained(box, relay_server, clock, "queue drained")
    # MAIL was taken, RCPT and DATA (or BDAT) refused: the server's transaction is
    # still open, so the next one starts with RSET; after ok-1's 250 none is needed.
    assert [a.subject for a in relay_server.accepted] == ["ok-1", "ok-2"]
    assert relay_server.rsets == 1
    assert relay_server.connections == 1


async def test_large_messages_in_a_backlog_all_go_once(
    box: Box, relay_server: ScriptedRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "LARGE_MESSAGE", 2000)
    clock = manual_clock()
    subjects = [f"m-{n}" for n in range(PARALLEL_FROM + 4)]
    for n, subject in enumerate(subjects):
        await queue(box, subject, padding=5000 if n % 3 == 0 else 0)
    await relay_until_drained(box, relay_server, clock, "queue drained", sessions=3)
    accepted = sorted(a.subject for a in relay_server.accepted)
    assert accepted == sorted(subjects)
    assert all(len(a.content) > 5000 for a in relay_server.accepted if int(a.subject[2:]) % 3 == 0)


# -- DKIM (appliance.protection.dkim) ------------------------------------------------


def _dkim_dns(box: Box) -> Callable[..., bytes | None]:
    keyring = dkim.DkimKeyring(box.config.data_dir / "keys")
    records = {r.name: r.value for r in keyring.records(DOMAIN)}
    return lambda name, timeout=5: (records.get(name.decode().rstrip(".")) or "").encode() or None


@pytest.mark.slow
async def test_mail_leaves_signed_once_even_when_sent_again(
    box: Box, relay_server: ScriptedRelay
) -> None:
    clock = manual_clock()
    await queue(box, "signed")
    await queue(box, "foreign", sender="someone@elsewhere.example")
    # The link dies after "signed" was sent and before its reply: it goes again.
    relay_server.hang_subject = {"signed"}
    async with trio.open_nursery() as nursery:
        point_at(box, await relay_server.serve(nursery))
        # The hung reply is waited for 5 s, not FAST's 15: this test only needs it to end.
        relay = start_relay(box, clock, timeouts=dataclasses.replace(FAST, data_end=5))
        await nursery.start(relay.serve)
        await until(lambda: "signed" in relay_server.contents, "first attempt sent")
        await until(lambda: relay.rounds >= 1, "the round with the hung message")
        relay_server.hang_subject = set()
        relay.wake()
        await until(_queue_empty(box), "sent again")
        nursery.cancel_scope.cancel()
    by_subject = {a.subject: a.content for a in relay_server.accepted}
    signed = by_subject["signed"]
    assert signed.count(b"DKIM-Signature:") == 1
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=a.go.th;")
    results = dkim.verify(signed, _dkim_dns(box))
    assert [r.result for r in results] == ["pass"]
    # The author is not of an agency this box serves: not ours to sign.
    assert b"DKIM-Signature:" not in by_subject["foreign"]


async def test_a_damaged_dkim_key_lets_mail_go_unsigned(
    box: Box, relay_server: ScriptedRelay, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = dkim.DkimKeyring(box.config.data_dir / "keys")
    keys = keyring.ensure(DOMAIN, date(2026, 12, 7))
    (box.config.data_dir / "keys" / f"dkim-{DOMAIN}-{keys.active}.sealed").write_bytes(b"\1junk")
    await queue(box, "unsigned")
    await relay_until_drained(box, relay_server, manual_clock(), "sent unsigned")
    (accepted,) = relay_server.accepted
    assert b"DKIM-Signature:" not in accepted.content
    assert "sending unsigned" in caplog.text
