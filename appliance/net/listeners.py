"""What every TCP service of the box does the same way: bind, start TLS, name addresses,
admit connections, and keep one session's fault from reaching the listener.

SMTP, IMAP, HTTPS and the hub's sync listener share these so that "port in use" reads
the same everywhere, every TLS handshake has the same deadline, and a bug met by one
session ends that session only: `ConnectionGate.admit` logs it with its traceback and a
reference, lets the connection say its protocol's last words (`ServedConnection.fault`:
IMAP ``* BYE [SERVERBUG]``, SMTP ``421 4.3.0``, HTTP 500, WebSocket close 1011) and
closes it, while the listener and every other session carry on. Without this, the
exception would reach `trio.serve_listeners`' nursery, which would cancel every other
connection and stop the port until the supervisor restarted the service.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from appliance.config import Config
from appliance.security.guard import source_key

log = logging.getLogger("edgebox.listeners")

#: Seconds a client gets to finish a TLS handshake before it is dropped.
TLS_HANDSHAKE_TIMEOUT = 30.0
#: Seconds a failed session's last words may take before its connection is dropped.
LAST_WORDS_TIMEOUT = 5.0
#: What a client that vanished or failed TLS raises: nothing was promised to it, so
#: these end its connection quietly.
CLIENT_GONE: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ssl.SSLError,
    TimeoutError,
)


async def open_listeners(
    name: str, config: Config, *, shared: bool = False
) -> list[trio.SocketListener]:
    """Bind service *name*'s port (with the offset); say which service failed and why.

    *shared*: several processes of the same user bind the port at once and the kernel
    spreads new connections among them (``SO_REUSEPORT``): the hub's workers.
    """
    port = config.port(name)
    try:
        if shared:
            return await _open_shared_listeners(port, config.bind)
        return await trio.open_tcp_listeners(port, host=config.bind)
    except OSError as exc:
        raise OSError(
            exc.errno, f"{name} cannot listen on {config.bind}:{port}: {exc.strerror}"
        ) from exc


#: Connections the kernel queues for a listener before accept (trio's default too).
_BACKLOG = 0xFFFF


async def _open_shared_listeners(port: int, host: str) -> list[trio.SocketListener]:
    # trio.open_tcp_listeners has no SO_REUSEPORT, so the sockets are made here the
    # way it makes them (SO_REUSEADDR, IPv6 sockets take IPv6 only), plus the option.
    found = await trio.socket.getaddrinfo(
        host or None, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners = []
    try:
        for family, kind, proto, _, address in found:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def serve_tcp(
    name: str,
    config: Config,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]],
    *,
    shared: bool = False,
) -> None:
    """Bind *name*'s port, report its addresses to the supervisor, serve forever.

    *shared*: see `open_listeners`.
    """
    listeners = await open_listeners(name, config, shared=shared)
    task_status.started(addresses(listeners))
    await trio.serve_listeners(handler, listeners)


def addresses(listeners: list[trio.SocketListener]) -> list[str]:
    """Printable ``host:port`` (``[v6]:port``) of each listener, for `edgebox run`."""
    out = []
    for listener in listeners:
        host, port = listener.socket.getsockname()[:2]
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


def peer_ip(stream: trio.abc.Stream) -> str | None:
    """The client's IP address, if the stream is a socket."""
    try:
        return str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None


async def start_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """Wrap *stream* in server-side TLS; TimeoutError if the handshake stalls."""
    tls = trio.SSLStream(stream, context, server_side=True)
    # TimeoutError, not trio's TooSlowError (which is no TimeoutError): the gate ends a
    # stalled client quietly rather than let the error reach the listener's nursery.
    with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as timer:
        await tls.do_handshake()
    if timer.cancelled_caught:
        raise TimeoutError("TLS handshake took too long")
    return tls


class ServedConnection(Protocol):
    """One client's connection as a listener runs it (IMAP, SMTP, HTTPS, hub sync)."""

    async def run(self) -> None:
        """Serve the client until it leaves or the protocol ends the session."""

    async def fault(self, reference: str) -> None:
        """Tell the client, in the protocol's own words, that the server failed.

        Called after `run` raised something unexpected; best effort (the stream may be
        broken too) and bounded by `LAST_WORDS_TIMEOUT`. The connection is closed after.
        """


#: Starts TLS on an admitted stream: a context (`start_tls`), or a function of the
#: listener's own (HTTPS moves the socket under `SocketTLSStream`).
TLSStarter = ssl.SSLContext | Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


def client_gone(exc: BaseException) -> bool:
    """Whether *exc* only says the client went away (also inside an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, CLIENT_GONE)


class ConnectionGate:
    """One listener's connection limits, and the life of each connection it admits.

    Over the limit — *maximum* in all, or *per_source* from one source (an IPv4
    address or an IPv6 /64, as the sign-in guard counts them) — a client gets
    *refusal* (a protocol's "try later" line) and is closed. The per-source limit is
    what keeps one host from taking every slot: others are still served while it
    floods. Admitted clients are served by the `ServedConnection` that *connect*
    makes, after implicit TLS if the listener has *tls*; a client that vanishes or
    fails TLS is not an error. Anything else the connection raises is a fault of this
    one session: logged with its traceback under *service*, answered with the
    connection's `fault` words, and the connection closed; it never reaches the
    listener (see the module docstring).
    """

    def __init__(
        self,
        maximum: int,
        refusal: bytes,
        tls: TLSStarter | None = None,
        *,
        service: str,
        per_source: int | None = None,
    ) -> None:
        self.maximum = maximum
        self.per_source = maximum if per_source is None else per_source
        self.refusal = refusal
        self.tls = tls
        self.service = service
        self.active = 0
        #: Connections per source; a source leaves the map with its last connection.
        self.by_source: dict[str, int] = {}
        #: Sessions ended by a fault since start.
        self.faults = 0

    async def admit(
        self, stream: trio.abc.Stream, connect: Callable[[trio.abc.Stream], ServedConnection]
    ) -> None:
        """Serve one accepted *stream* from admission to close; never raises Exception."""
        client_ip = peer_ip(stream)
        source = source_key(client_ip)
        held = self.by_source.get(source, 0)
        if self.active >= self.maximum or held >= self.per_source:
            with trio.move_on_after(5):
                try:
                    await stream.send_all(self.refusal)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        self.by_source[source] = held + 1
        connection: ServedConnection | None = None
        try:
            if isinstance(self.tls, ssl.SSLContext):
                stream = await start_tls(stream, self.tls)
            elif self.tls is not None:
                stream = await self.tls(stream)
            connection = connect(stream)
            await connection.run()
        except Exception as exc:
            if not client_gone(exc):
                await self._fault(connection, client_ip or "unknown", exc)
        finally:
            self.active -= 1
            left = self.by_source[source] - 1
            if left:
                self.by_source[source] = left
            else:
                del self.by_source[source]
            await trio.aclose_forcefully(stream)

    async def _fault(
        self, connection: ServedConnection | None, client_ip: str, exc: Exception
    ) -> None:
        self.faults += 1
        # The reference goes to the client too, so a user's report finds this entry.
        reference = secrets.token_hex(4)
        log.error(
            "%s: session from %s failed (reference %s): %s: %s; that session is closed,"
            " the listener and other sessions carry on",
            self.service, client_ip, reference, type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip
        if connection is None:
            return
        with trio.move_on_after(LAST_WORDS_TIMEOUT):
            try:
                await connection.fault(reference)
            except Exception:  # noqa: S110 - the stream may be broken too; logged above
                pass
