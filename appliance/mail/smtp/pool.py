"""MX sessions in worker processes: the pool in the main process, and the worker's forwarders.

Why: one interpreter thread ran every SMTP session's socket I/O, protocol and policy,
so ingest was bound by one core (docs/BENCHMARKS.md, issue 21). With ``smtp_workers``
above 1 the MX port's sessions run in that many worker processes instead, each a whole
`SMTPService` (the dialogue, the policy's read-only look-ups, SPF, DKIM, DMARC, the
scan), while every message's *commit* stays with the box's one writer here, in the
main process (docs/architecture.md, "The process model"):

- `SMTPWorkerPool` (main process) binds the MX port once, starts the workers with the
  listening socket inherited (the kernel hands each new connection to whichever worker
  accepts first, and a dead worker's queued connections stay queued for the others),
  gives each a unix socket to its `CommitDesk`, and starts a worker again when it dies.
- `CommitDesk` (main process) answers one worker: `DELIVER` → `Delivery.deliver` →
  `STORED` only after the fsync; `RECORD` → the traffic log (fsynced) → `RECORDED`;
  `COUNT` → `/metrics`. IDLE notifications and the index queue follow from the commit
  being made here, as before.
- `WorkerLink` (worker) is the other end: `ForwardedDelivery`, `ForwardedTrafficLog` and
  `ForwardedMetrics` stand where the service had the main process's objects.

The guarantees: a worker answers 250 only after `STORED`, which follows the fsync. A
worker killed mid-DATA has sent nothing, or half a frame, which the desk drops: nothing
stored, nothing acknowledged, the client retries. A worker killed after its `DELIVER`
was sent leaves the message stored without its 250: the window every SMTP server has
between its fsync and its reply (RFC 1047), here a little wider; the delivery's resend
key (appliance.mail.delivery) drops the copy the client sends again.

The wire is `appliance.mail.smtp.handoff` (sans-I/O); this module only moves its frames.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import math
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import trio

from appliance.compliance.traffic_log import TrafficRecord
from appliance.config import Config
from appliance.health.disk_guard import is_disk_full
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.mailstore import QuotaExceeded
from appliance.mail.smtp.handoff import Frame, FrameDecoder, FrameError, Kind, encode_head
from appliance.net.listeners import addresses, open_listeners

log = logging.getLogger("edgebox.smtp.pool")

RECEIVE_SIZE = 256 * 1024
#: Room in a frame for the envelope, the on-top fields and the header around a message
#: of the largest size the settings allow.
FRAME_SLACK = 4 * 1024 * 1024
#: Seconds the pool waits for every worker's READY at start before it gives up (the
#: supervisor then reports the MX as failed to start, like a port in use).
WORKER_START_TIMEOUT = 60.0
#: Longest pause between restarts of a worker that keeps dying.
MAX_BACKOFF = 30.0
#: Seconds a stopping worker gets after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


class Deliverer(Protocol):
    """What the pool needs of delivery (`appliance.mail.delivery.Delivery`)."""

    async def deliver(
        self,
        envelope: Envelope,
        content: bytes,
        *,
        folder: str = ...,
        on_top: Sequence[bytes] = ...,
    ) -> str: ...


class RecordLog(Protocol):
    """What the pool needs of the traffic log (`TrafficLog.append`)."""

    async def append(self, record: TrafficRecord) -> None: ...


class Incrementable(Protocol):
    def inc(self, amount: float = ...) -> None: ...


class LabelledCounter(Protocol):
    """A prometheus counter with labels, as SMTP uses it."""

    def labels(self, *values: Any) -> Incrementable: ...


class SMTPMetrics(Protocol):
    """The counters an SMTP service moves (`appliance.health.metrics.BoxMetrics`)."""

    @property
    def smtp_messages(self) -> LabelledCounter: ...

    @property
    def storage_refusals(self) -> LabelledCounter: ...


class DeliveryFailed(Exception):
    """The main process could not store the message (nothing was stored)."""


# --- the frames' contents ------------------------------------------------------------------


def config_values(config: Config) -> dict[str, Any]:
    """*config* as JSON values, for a worker's HELLO."""
    values = dataclasses.asdict(config)
    values["data_dir"] = str(config.data_dir)
    return values


def config_from_values(values: dict[str, Any]) -> Config:
    """The `Config` a HELLO carried."""
    values = dict(values)
    return Config(data_dir=Path(values.pop("data_dir")), **values)


def envelope_header(envelope: Envelope) -> dict[str, Any]:
    """*envelope* as a JSON object for a DELIVER frame."""
    return {
        "sender": envelope.sender,
        "recipients": [dataclasses.asdict(r) for r in envelope.recipients],
        "trace": dataclasses.asdict(envelope.trace),
        "ret": envelope.ret,
        "envid": envelope.envid,
    }


def envelope_from_header(value: Any) -> Envelope:
    """The `Envelope` of a DELIVER frame; FrameError if it is not one."""
    try:
        recipients = tuple(
            Recipient(**{**r, "mailboxes": tuple(r.get("mailboxes", ()))})
            for r in value["recipients"]
        )
        return Envelope(
            sender=str(value["sender"]),
            recipients=recipients,
            trace=Trace(**value["trace"]),
            ret=value.get("ret"),
            envid=value.get("envid"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise FrameError(f"DELIVER envelope is malformed: {exc!r}") from None


def record_header(record: TrafficRecord) -> dict[str, Any]:
    """*record* as a JSON object for a RECORD frame."""
    values = dataclasses.asdict(record)
    values["time"] = record.time.isoformat()
    values["recipients"] = list(record.recipients)
    return values


def record_from_header(value: Any) -> TrafficRecord:
    """The `TrafficRecord` of a RECORD frame; FrameError if it is not one."""
    try:
        values = dict(value)
        values["time"] = datetime.fromisoformat(values["time"])
        values["recipients"] = tuple(values.get("recipients", ()))
        return TrafficRecord(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"RECORD is malformed: {exc!r}") from None


# --- one end of a hand-off socket ---------------------------------------------------------


class Channel:
    """Frames over one stream: sends are serialised, receives decoded in order."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame)
        self._sending = trio.Lock()

    async def send(self, kind: Kind, header: dict[str, Any], *body: bytes) -> None:
        """Send one frame; *body* may come in parts (a message is not joined to be sent)."""
        head = encode_head(kind, header, sum(len(part) for part in body))
        async with self._sending:
            await self.stream.send_all(head)
            for part in body:
                if part:
                    await self.stream.send_all(part)

    async def receive(self) -> Frame | None:
        """Return the next frame, or None once the other end has closed; FrameError on a bad one.

        A frame cut short by the other end's death is dropped: it was never whole, so
        nothing it asked for was done.
        """
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return frame
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                if self.decoder.pending:
                    log.warning("hand-off closed inside a frame (%d bytes dropped)",
                                self.decoder.pending)  # fmt: skip
                return None
            self.decoder.receive_data(data)


# --- the main process's side ----------------------------------------------------------------


class CommitDesk:
    """Answer one worker: commit its messages, write its traffic lines, count its metrics."""

    def __init__(
        self,
        channel: Channel,
        *,
        delivery: Deliverer,
        traffic: RecordLog,
        metrics: SMTPMetrics,
        on_ready: Callable[[], None] = lambda: None,
        name: str = "smtp worker",
    ) -> None:
        self.channel = channel
        self.delivery = delivery
        self.traffic = traffic
        self.metrics = metrics
        self.on_ready = on_ready
        self.name = name

    async def serve(self) -> None:
        """Serve until the worker closes its end; requests in flight finish first.

        Raises `FrameError` (after those requests) if the worker broke the protocol.
        """
        bad: FrameError | None = None
        async with trio.open_nursery() as nursery:
            try:
                while (frame := await self.channel.receive()) is not None:
                    if frame.kind is Kind.DELIVER:
                        nursery.start_soon(self._deliver, frame)
                    elif frame.kind is Kind.RECORD:
                        nursery.start_soon(self._record, frame)
                    elif frame.kind is Kind.COUNT:
                        self._count(frame.header)
                    elif frame.kind is Kind.READY:
                        self.on_ready()
                    else:
                        raise FrameError(f"{frame.kind.name} is not sent by a worker")
            except FrameError as exc:
                bad = exc
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the worker died: as good as closed
        if bad is not None:
            raise bad

    async def _deliver(self, frame: Frame) -> None:
        header = frame.header
        ident = header.get("id")
        try:
            envelope = envelope_from_header(header.get("envelope"))
            lengths = [int(n) for n in header.get("on_top", ())]
            folder = str(header.get("folder", "INBOX"))
        except (FrameError, TypeError, ValueError) as exc:
            log.error("%s: bad DELIVER refused: %s", self.name, exc)
            await self._answer(Kind.REFUSED, {"id": ident, "error": "failed"})
            return
        body = frame.body
        on_top, at = [], 0
        for n in lengths:
            on_top.append(body[at : at + n])
            at += n
        try:
            queue_id = await self.delivery.deliver(
                envelope, body[at:], folder=folder, on_top=on_top
            )
        except QuotaExceeded as exc:
            await self._answer(Kind.REFUSED, {"id": ident, "error": "quota", "owner": exc.owner})
        except Exception as exc:
            log.exception("%s: delivery failed", self.name)
            error = "disk-full" if is_disk_full(exc) else "failed"
            await self._answer(Kind.REFUSED, {"id": ident, "error": error})
        else:
            if not await self._answer(Kind.STORED, {"id": ident, "queue_id": queue_id}):
                # RFC 1047's window: stored, but the client never heard 250.
                log.warning("%s: stored id=%s but the worker is gone before its 250",
                            self.name, queue_id)  # fmt: skip

    async def _record(self, frame: Frame) -> None:
        ident = frame.header.get("id")
        try:
            record = record_from_header(frame.header.get("record"))
            await self.traffic.append(record)
        except Exception:
            # As in the one-process service: a log failure must not turn into lost mail.
            log.exception("%s: traffic log write failed", self.name)
        await self._answer(Kind.RECORDED, {"id": ident})

    def _count(self, header: dict[str, Any]) -> None:
        name = header.get("metric")
        counter = {
            "smtp_messages": self.metrics.smtp_messages,
            "storage_refusals": self.metrics.storage_refusals,
        }.get(str(name))
        labels = header.get("labels")
        if counter is None or not isinstance(labels, list):
            log.warning("%s: unknown metric %r ignored", self.name, name)
            return
        counter.labels(*(str(v) for v in labels)).inc(float(header.get("amount", 1)))

    async def _answer(self, kind: Kind, header: dict[str, Any]) -> bool:
        try:
            await self.channel.send(kind, header)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


class SMTPWorkerPool:
    """The MX port served by ``smtp_workers`` worker processes; see the module docstring.

    *command* starts one worker (``python -m appliance.smtp_worker``); the pool adds
    the file descriptors of the listening sockets and of its hand-off socket.
    """

    name = "smtp-mx"

    def __init__(
        self,
        config: Config,
        command: Sequence[str],
        *,
        delivery: Deliverer,
        traffic: RecordLog,
        metrics: SMTPMetrics,
    ) -> None:
        self.config = config
        self.command = list(command)
        self.delivery = delivery
        self.traffic = traffic
        self.metrics = metrics
        self.workers = config.smtp_workers
        self.max_frame = config.max_message_size + FRAME_SLACK
        #: Worker starts after the first, by worker number.
        self.restarts: dict[int, int] = {}
        #: Process ids of the running workers, by worker number (tests kill one).
        self.pids: dict[int, int] = {}

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await open_listeners(self.name, self.config, shared=True)
        try:
            async with trio.open_nursery() as nursery:
                ready = [trio.Event() for _ in range(self.workers)]
                for number, event in enumerate(ready, start=1):
                    nursery.start_soon(self._keep_worker, number, listeners, event)
                with trio.fail_after(WORKER_START_TIMEOUT):
                    for event in ready:
                        await event.wait()
                task_status.started(addresses(listeners))
        finally:
            for listener in listeners:
                listener.socket.close()

    async def _keep_worker(
        self, number: int, listeners: list[trio.SocketListener], ready: trio.Event
    ) -> None:
        backoff = 1.0
        while True:
            began = trio.current_time()
            code = await self._run_worker(number, listeners, ready)
            log.error("smtp worker %d ended (%s); starting it again in %.0fs; its sessions"
                      " ended, the other workers carry on", number, code, backoff)  # fmt: skip
            self.restarts[number] = self.restarts.get(number, 0) + 1
            if trio.current_time() - began > MAX_BACKOFF:
                backoff = 1.0
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run_worker(
        self, number: int, listeners: list[trio.SocketListener], ready: trio.Event
    ) -> str:
        """Run worker *number* until it dies; return how it ended."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [listener.socket.fileno() for listener in listeners]
        argv = [*self.command, "--worker", str(number), "--desk-fd", str(theirs.fileno())]
        for fd in fds:
            argv += ["--listen-fd", str(fd)]
        try:
            process = await trio.lowlevel.open_process(argv, pass_fds=(theirs.fileno(), *fds))
        finally:
            theirs.close()
        self.pids[number] = process.pid
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        channel = Channel(stream, self.max_frame)
        desk = CommitDesk(
            channel, delivery=self.delivery, traffic=self.traffic, metrics=self.metrics,
            on_ready=ready.set, name=f"smtp worker {number}",
        )  # fmt: skip
        ended = "its hand-off closed"
        try:
            await channel.send(Kind.HELLO, {"worker": number, "config": config_values(self.config)})
            await desk.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            ended = f"hand-off broken: {exc}"
        except FrameError as exc:
            # The worker broke the protocol: it is a fault of that worker, ended here.
            log.error("smtp worker %d sent a bad frame: %s", number, exc)
            ended = f"bad frame: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)
                await stream.aclose()
            self.pids.pop(number, None)
        return f"{ended}, exit status {process.returncode}"


async def _stop(process: trio.Process) -> None:
    """End *process*: at once if its hand-off is gone, after SIGTERM's grace otherwise."""
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
    if process.returncode is None:
        process.kill()
    await process.wait()


# --- the worker's side ----------------------------------------------------------------------


class MainGone(Exception):
    """The main process closed the hand-off: the worker must stop."""


class WorkerLink:
    """The worker's end of the hand-off: asks, and matches each answer to its question."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Frame]]] = {}
        self._closed = False
        self._counts_send, self._counts = trio.open_memory_channel[tuple[str, list[str], float]](
            math.inf
        )

    async def hello(self) -> dict[str, Any]:
        """Wait for the main process's HELLO and return its header."""
        frame = await self.channel.receive()
        if frame is None:
            raise MainGone("the main process closed the hand-off before its HELLO")
        if frame.kind is not Kind.HELLO:
            raise FrameError(f"expected HELLO, got {frame.kind.name}")
        return frame.header

    async def run(self) -> None:
        """Read answers until the main process closes the hand-off; then raise MainGone."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_counts)
                while (frame := await self._receive()) is not None:
                    ident = frame.header.get("id")
                    waiting = self._waiting.pop(ident, None) if isinstance(ident, int) else None
                    if waiting is None:
                        raise FrameError(f"{frame.kind.name} answers no question (id {ident!r})")
                    event, answer = waiting
                    answer.append(frame)
                    event.set()
                raise MainGone("the main process closed the hand-off")
        finally:
            # Questions still open will get no answer: each asker hears "not stored"
            # (a 4xx to its client, which keeps the message) instead of waiting for ever.
            self._closed = True
            for event, answer in self._waiting.values():
                answer.append(Frame(Kind.REFUSED, {"error": "failed"}))
                event.set()
            self._waiting.clear()

    async def _receive(self) -> Frame | None:
        try:
            return await self.channel.receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None  # the main process died: as good as closed

    async def ready(self) -> None:
        """Tell the main process this worker serves its listener."""
        await self.channel.send(Kind.READY, {})

    async def ask(self, kind: Kind, header: dict[str, Any], *body: bytes) -> Frame:
        """Send a question and wait for its answer.

        Shielded, like `Database.write`: once asked, the session must learn whether
        the message was stored, or it could not tell its client the truth.
        """
        if self._closed:
            raise DeliveryFailed("the main process is gone")
        ident = next(self._ids)
        event = trio.Event()
        answer: list[Frame] = []
        self._waiting[ident] = (event, answer)
        with trio.CancelScope(shield=True):
            await self.channel.send(kind, {**header, "id": ident}, *body)
            await event.wait()
        return answer[0]

    def count(self, metric: str, labels: list[str], amount: float) -> None:
        """Queue a counter's increment for the main process (sent in order, not awaited)."""
        self._counts_send.send_nowait((metric, labels, amount))

    async def _send_counts(self) -> None:
        async for metric, labels, amount in self._counts:
            await self.channel.send(
                Kind.COUNT, {"metric": metric, "labels": labels, "amount": amount}
            )


class ForwardedDelivery:
    """`Delivery.deliver` of a worker: the main process commits; this waits for its fsync."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    async def deliver(
        self,
        envelope: Envelope,
        content: bytes,
        *,
        folder: str = "INBOX",
        on_top: Sequence[bytes] = (),
    ) -> str:
        """Return the queue id once the main process has fsynced the message.

        Raises `QuotaExceeded`, a disk-full `OSError` (ENOSPC) or `DeliveryFailed`
        as the main process's delivery did; nothing was stored then.
        """
        header = {
            "envelope": envelope_header(envelope),
            "folder": folder,
            "on_top": [len(field) for field in on_top],
        }
        answer = await self.link.ask(Kind.DELIVER, header, *on_top, content)
        if answer.kind is Kind.STORED:
            return str(answer.header["queue_id"])
        error = answer.header.get("error")
        if error == "quota":
            raise QuotaExceeded(str(answer.header.get("owner", "")))
        if error == "disk-full":
            raise OSError(errno.ENOSPC, "the main process found the data volume full")
        raise DeliveryFailed("the main process could not store the message")


class ForwardedTrafficLog:
    """`TrafficLog.append` of a worker: the main process writes; this waits for its fsync."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link

    async def append(self, record: TrafficRecord) -> None:
        await self.link.ask(Kind.RECORD, {"record": record_header(record)})


class _ForwardedCounter:
    def __init__(self, link: WorkerLink, metric: str, labels: list[str] | None = None) -> None:
        self.link = link
        self.metric = metric
        self.values = labels or []

    def labels(self, *values: Any) -> _ForwardedCounter:
        return _ForwardedCounter(self.link, self.metric, [str(v) for v in values])

    def inc(self, amount: float = 1) -> None:
        self.link.count(self.metric, self.values, amount)


class ForwardedMetrics:
    """The SMTP counters of a worker, counted in the main process's `/metrics`."""

    def __init__(self, link: WorkerLink) -> None:
        self.smtp_messages = _ForwardedCounter(link, "smtp_messages")
        self.storage_refusals = _ForwardedCounter(link, "storage_refusals")
