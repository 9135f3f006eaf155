"""One IMAP connection to the central server: the thin trio layer over `ClientConnection`.

It moves bytes between a TCP (+TLS) stream and the sans-I/O client core, and adds what
only the I/O layer can: TLS, time-outs and the order of the opening exchange.

- ``imaps://`` starts TLS at once; ``imap://`` must offer STARTTLS and gets it before
  anything else is said (RFC 9051 §6.2.1). Credentials never cross an unencrypted
  connection: there is no fallback, a server without STARTTLS is an error.
- Certificates are verified with the context the caller gives (`central_client_context`:
  the centre's CA, host name checked).
- Every read waits at most `timeout` seconds without a byte, the connect and the TLS
  handshake seconds (`appliance.sync.liveness`); a silent server (a black-holed link) is
  a `LinkDown`, never a hang, and the link monitor cuts a wait short when the link
  comes back. Every `LinkDown` says why (the step, the host, the seconds).

What this is not: replication logic (`appliance.sync.mailbox`), or an IMAP library for
the rest of the box.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trio

from appliance.mail.imap.client import (
    ClientConnection,
    Done,
    Event,
    ImapProtocolError,
    Sentinel,
    Status,
)
from appliance.sync.central import Endpoint
from appliance.sync.liveness import (
    CONNECT_DEADLINE,
    HANDSHAKE_DEADLINE,
    LinkStalled,
    LinkWatch,
    StepKind,
    describe,
    open_tcp,
    start_tls,
)

#: Bytes handed to the stream at once when sending (a step's deadline restarts after each).
_SEND_PIECE = 64 * 1024


class LinkDown(Exception):
    """The server could not be reached, went silent, closed, or spoke garbage: retry later."""


class CommandFailed(Exception):
    """The server answered NO or BAD; `done` says why (its response code, if any)."""

    def __init__(self, what: str, done: Done) -> None:
        code = f"[{done.code.name}] " if done.code else ""
        super().__init__(f"{what}: {done.status} {code}{done.text}")
        self.done = done


class ImapLink:
    """An open, TLS-protected IMAP connection; use `connect`, then `authenticate`."""

    def __init__(
        self, stream: trio.abc.Stream, timeout: float, watch: LinkWatch | None = None
    ) -> None:
        self.stream = stream
        self.conn = ClientConnection()
        self.timeout = timeout
        self.watch = watch or LinkWatch()
        self.host = ""
        #: Bytes read and written, for the status figures (payload vs wire).
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    async def connect(
        cls,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        *,
        io_timeout: float = 60.0,
        watch: LinkWatch | None = None,
    ) -> ImapLink:
        """Open a connection to *endpoint* and bring TLS up; raise `LinkDown` if not."""
        if endpoint.scheme not in ("imap", "imaps"):
            raise ValueError(f"not an IMAP endpoint: {endpoint}")
        watch = watch or LinkWatch()
        try:
            tcp: trio.abc.Stream = await open_tcp(
                watch, endpoint.host, endpoint.port, deadline=min(io_timeout, CONNECT_DEADLINE)
            )
        except LinkStalled as exc:
            raise LinkDown(f"cannot connect to {endpoint}: {exc}") from None
        except OSError as exc:
            raise LinkDown(f"cannot connect to {endpoint}: {describe(exc)}") from None
        link = cls(tcp, io_timeout, watch)
        link.host = endpoint.host
        try:
            if endpoint.implicit_tls:
                await link._start_tls(context, endpoint.host)
            greeting = await link._greeting()
            if not endpoint.implicit_tls:
                if "STARTTLS" not in link.conn.capabilities:
                    await link.check(link.conn.capability(), "CAPABILITY")
                if "STARTTLS" not in link.conn.capabilities:
                    raise LinkDown(f"{endpoint} does not offer STARTTLS; refusing plaintext")
                await link.check(link.conn.starttls(), "STARTTLS")
                await link._start_tls(context, endpoint.host)
                link.conn.tls_started()
            elif greeting.code is None or greeting.code.name != "CAPABILITY":
                await link.check(link.conn.capability(), "CAPABILITY")
            if not link.conn.capabilities:
                await link.check(link.conn.capability(), "CAPABILITY")
        except BaseException:
            await link.aclose()
            raise
        return link

    async def _start_tls(self, context: ssl.SSLContext, host: str) -> None:
        deadline = min(self.timeout, HANDSHAKE_DEADLINE)
        try:
            tls = await start_tls(self.watch, self.stream, context, host, deadline=deadline)
        except LinkStalled as exc:
            raise LinkDown(str(exc)) from None
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            # An empty reason once hid a time-out here (issue 24): always name the error.
            raise LinkDown(f"TLS handshake with {host} failed: {describe(exc)}") from None
        self.stream = tls

    async def _greeting(self) -> Status:
        # RFC 9051 §7.1: the server greets at once; a silent one is a dead connection.
        event = await self._next(min(self.timeout, HANDSHAKE_DEADLINE), StepKind.HANDSHAKE)
        if not isinstance(event, Status) or event.kind not in ("OK", "PREAUTH"):
            raise LinkDown(f"unexpected greeting: {event!r}"[:200])
        return event

    async def authenticate(self, authzid: str, authcid: str, password: str) -> None:
        """AUTHENTICATE PLAIN as *authcid*, acting for *authzid* (RFC 4616)."""
        await self.check(self.conn.authenticate_plain(authzid, authcid, password),
                         "AUTHENTICATE")  # fmt: skip
        # RFC 9051 §6.2.2: capabilities may change after login; the OK usually says so.
        await self.check(self.conn.capability(), "CAPABILITY")

    # -- commands ---------------------------------------------------------------------

    async def run(self, tag: str, on_event: Callable[[Event], None] | None = None) -> Done:
        """Send what is queued and read until *tag* completes; untagged events go to
        *on_event* as they arrive (so a large answer is never held whole)."""
        await self._flush()
        while True:
            event = await self._next()
            if isinstance(event, Done) and event.tag == tag:
                return event
            if isinstance(event, Status) and event.kind == "BYE":
                raise LinkDown(f"server closed the session: {event.text}"[:200])
            if on_event is not None and not isinstance(event, Done):
                on_event(event)

    async def check(
        self, tag: str, what: str, on_event: Callable[[Event], None] | None = None
    ) -> Done:
        """`run`, raising `CommandFailed` unless the answer is OK."""
        done = await self.run(tag, on_event)
        if not done.ok:
            raise CommandFailed(what, done)
        return done

    async def collect(self, tag: str, what: str) -> tuple[list[Event], Done]:
        """`check`, returning the untagged events too (for small answers only)."""
        events: list[Event] = []
        done = await self.check(tag, what, events.append)
        return events, done

    async def logout(self) -> None:
        """Say LOGOUT politely (best effort), then close."""
        try:
            with trio.move_on_after(5):
                await self.run(self.conn.logout())
        except LinkDown:
            pass
        finally:  # also when cancelled: the socket must not outlive the link
            await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, OSError):
                pass

    # -- bytes ------------------------------------------------------------------------

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            with self.watch.step(f"sending to {self.host}", self.timeout) as step:
                # In pieces, so a large APPEND earns its time as it goes.
                for start in range(0, len(data), _SEND_PIECE):
                    piece = data[start : start + _SEND_PIECE]
                    await self.stream.send_all(piece)
                    step.moved(len(piece))
        except LinkStalled as exc:
            raise LinkDown(f"send failed: {exc}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError,
                ssl.SSLError, OSError) as exc:  # fmt: skip
            raise LinkDown(f"send failed: {describe(exc)}") from None
        self.bytes_out += len(data)

    async def _next(self, idle: float | None = None, kind: StepKind = StepKind.EXCHANGE) -> Event:
        """The next event, reading (and sending literal continuations) as needed.

        Each read waits at most *idle* seconds (default: the link's time-out).
        """
        idle = self.timeout if idle is None else idle
        for _ in range(10_000_000):  # bounded: each pass reads or returns
            try:
                event = self.conn.next_event()
            except ImapProtocolError as exc:
                raise LinkDown(f"protocol error: {exc}") from None
            if not isinstance(event, Sentinel):
                # A continuation may have released a literal: send it now.
                await self._flush()
                return event
            if self.conn.at_eof:
                raise LinkDown("server closed the connection")
            try:
                with self.watch.step(f"waiting for {self.host}", idle, kind):
                    data = await self.stream.receive_some(256 * 1024)
            except LinkStalled as exc:
                raise LinkDown(f"receive failed: {exc}") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError,
                    ssl.SSLError, OSError) as exc:  # fmt: skip
                raise LinkDown(f"receive failed: {describe(exc)}") from None
            self.bytes_in += len(data)
            self.conn.receive_data(bytes(data))
        raise LinkDown("no response")
