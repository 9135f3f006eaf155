"""What every TCP service of the box does the same way: bind, start TLS, name addresses.

SMTP and IMAP (and later HTTPS) listeners share these so that "port in use" reads the
same everywhere and every TLS handshake has the same deadline.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import trio

from appliance.config import Config
from appliance.security.guard import source_key

#: Seconds a client gets to finish a TLS handshake before it is dropped.
TLS_HANDSHAKE_TIMEOUT = 30.0


async def open_listeners(name: str, config: Config) -> list[trio.SocketListener]:
    """Bind service *name*'s port (with the offset); say which service failed and why."""
    port = config.port(name)
    try:
        return await trio.open_tcp_listeners(port, host=config.bind)
    except OSError as exc:
        raise OSError(
            exc.errno, f"{name} cannot listen on {config.bind}:{port}: {exc.strerror}"
        ) from exc


async def serve_tcp(
    name: str,
    config: Config,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """Bind *name*'s port, report its addresses to the supervisor, serve forever."""
    listeners = await open_listeners(name, config)
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


class ConnectionGate:
    """One listener's connection limits, and the life of each connection it admits.

    Over the limit — *maximum* in all, or *per_source* from one source (an IPv4
    address or an IPv6 /64, as the sign-in guard counts them) — a client gets
    *refusal* (a protocol's "try later" line) and is closed. The per-source limit is
    what keeps one host from taking every slot: others are still served while it
    floods. Admitted clients are served by *serve*, after implicit TLS if the
    listener has a *tls* context; a client that vanishes or fails TLS is not an error.
    """

    def __init__(
        self,
        maximum: int,
        refusal: bytes,
        tls: ssl.SSLContext | None = None,
        *,
        per_source: int | None = None,
    ) -> None:
        self.maximum = maximum
        self.per_source = maximum if per_source is None else per_source
        self.refusal = refusal
        self.tls = tls
        self.active = 0
        #: Connections per source; a source leaves the map with its last connection.
        self.by_source: dict[str, int] = {}

    async def admit(
        self, stream: trio.abc.Stream, serve: Callable[[trio.abc.Stream], Awaitable[None]]
    ) -> None:
        source = source_key(peer_ip(stream))
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
        try:
            if self.tls is not None:
                stream = await start_tls(stream, self.tls)
            await serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, TimeoutError):
            pass  # the client went away or failed TLS; nothing was promised to it
        finally:
            self.active -= 1
            left = self.by_source[source] - 1
            if left:
                self.by_source[source] = left
            else:
                del self.by_source[source]
            await trio.aclose_forcefully(stream)
