"""A TLS stream over a non-blocking stdlib `ssl.SSLSocket`: the record layer runs in C.

`trio.SSLStream` drives OpenSSL through memory BIOs: every ``send_all`` and
``receive_some`` goes through a few dozen lines of Python (a retry loop, a conflict
detector, moving ciphertext between the BIO and the socket stream, and that stream's own
checkpoints). The chat stream makes thousands of small sends a second, one per recipient
of each message, and that machinery was the largest share of the server's CPU.

`SocketTLSStream` lets OpenSSL read and write the socket itself: a send is one
``SSL_write`` on a non-blocking socket. Only when OpenSSL says it cannot go on
(``SSLWantReadError`` / ``SSLWantWriteError``) does the task wait for the socket in
trio's I/O loop, then try again with the same bytes (Python sets OpenSSL's partial-write
and moving-buffer modes, so a retried write continues where it stopped). A TLS 1.3 key
update or any other record that makes a read want to write, or a write want to read, is
handled by the same loop.

The rules of `trio.abc.Stream` hold: every call is a checkpoint, two tasks may not send
(or receive) at once (`trio.BusyResourceError`), a failed or broken connection raises
`trio.BrokenResourceError`, and a closed one `trio.ClosedResourceError`. Semantics match
`trio.SSLStream(..., https_compatible=False)`: the peer's close_notify reads as end of
stream (``b""``); a TCP close without it (a truncation attack, or a careless client) is a
broken stream. `aclose` sends our close_notify without waiting for the peer's (as
`trio.SSLStream` does) and closes the socket.

What this is not: a TLS client (the tests use `trio.SSLStream`), or a
place for the box's TLS settings (`appliance.security.tls` makes the context).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from appliance.net.listeners import TLS_HANDSHAKE_TIMEOUT

#: Largest plaintext handed to one SSL_write: OpenSSL cuts it into 16 KiB records
#: anyway, and a bounded slice keeps one call from holding the loop for long.
_WRITE_CHUNK: Final = 256 * 1024


class SocketTLSStream(trio.abc.Stream):
    """Server-side TLS on a connected non-blocking socket, as a `trio.abc.Stream`."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self._tls = tls
        #: The TCP socket, for `appliance.net.listeners.peer_ip` and socket options.
        self.socket = tls
        self._sending = False
        self._receiving = False
        self._closed = False
        #: Failed, or a write was abandoned part-way (OpenSSL may hold half a record,
        #: and a later write of other bytes would corrupt the stream): no more I/O.
        self._broken = False
        #: The last write has bytes not yet taken; only their rest may be sent next.
        self._write_pending = False

    @classmethod
    def wrap(cls, sock: socket.socket, context: ssl.SSLContext) -> SocketTLSStream:
        """Take ownership of connected *sock* and wrap it for a server-side handshake."""
        sock.setblocking(False)
        tls = context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        return cls(tls)

    @property
    def selected_alpn_protocol(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def do_handshake(self) -> None:
        """Run the TLS handshake (no deadline here: see `start_socket_tls`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            self._check_open()
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._tls)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._tls)
            except ssl.SSLError:
                self._broken = True
                raise
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(exc) from exc
            else:
                break
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            self._abandon_write()
            raise
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            waited = False
            while view:
                try:
                    view = view[self._write(view) :]
                except ssl.SSLWantWriteError:
                    waited = True
                    await self._wait(trio.lowlevel.wait_writable)
                except ssl.SSLWantReadError:
                    waited = True
                    await self._wait(trio.lowlevel.wait_readable)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes now, without waiting; return how many bytes went.

        Not a checkpoint, and no wait: for a sender that makes thousands of small
        writes a second and has its own schedule points (the chat stream), where a
        trip through the scheduler per write would cost more than the write. If it
        returns less than ``len(data)``, the rest must be what is sent next, by
        `send_all` or `send_nowait` (OpenSSL may hold part of a record); a caller
        that gives up there must close the stream.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            try:
                view = view[self._write(view) :]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
        return total - len(view)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_open()
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self._tls)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._check_open()
        size = 65536 if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._receiving = True
        try:
            while True:
                try:
                    data = self._tls.recv(size)
                except ssl.SSLWantReadError:
                    # Nothing decrypted is held inside OpenSSL (it would have returned
                    # it), so the socket is the only place more can come from.
                    await trio.lowlevel.wait_readable(self._tls)
                    self._check_open()
                    continue
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(self._tls)
                    self._check_open()
                    continue
                except ssl.SSLZeroReturnError:
                    data = b""  # the peer's close_notify: a clean end of stream
                except (OSError, ValueError) as exc:  # ragged EOF, reset, bad record
                    self._broken = True
                    raise trio.BrokenResourceError(exc) from exc
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Send close_notify if the connection is healthy, then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if not self._broken and not self._sending:
            # One SSL_shutdown: it writes our close_notify if the socket takes it now,
            # and does not wait for the peer's (RFC 8446 §6.1 allows closing at once).
            try:
                self._tls.unwrap()
            except (OSError, ValueError):
                pass  # SSLWantReadError: sent, the peer's is not here yet; or broken
        # Wake any task waiting on this socket (it gets ClosedResourceError), then close.
        trio.lowlevel.notify_closing(self._tls)
        self._tls.close()
        await trio.lowlevel.checkpoint()

    # machinery

    def _write(self, view: memoryview) -> int:
        """One SSL_write of the head of *view*; SSLWant*Error if the socket is full."""
        self._write_pending = True
        try:
            # Under partial-write mode SSL_write returns once whole records are out;
            # the rest goes on the next turn.
            sent = self._tls.send(view[:_WRITE_CHUNK])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._broken = True
            raise trio.BrokenResourceError(exc) from exc
        if sent == len(view):
            self._write_pending = False
        return sent

    def _abandon_write(self) -> None:
        """A write stopped part-way will not be finished: no more writes are safe."""
        if self._write_pending:
            self._broken = True

    async def _wait(self, wait: Callable[[Any], Awaitable[None]]) -> None:
        """Wait for the socket in the middle of a write; a cancel breaks the stream."""
        try:
            await wait(self._tls)
        except BaseException:
            # OpenSSL may hold part of a record: no other bytes can follow it safely.
            self._abandon_write()
            raise
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._broken:
            raise trio.BrokenResourceError("this TLS connection is broken")


async def start_socket_tls(stream: trio.SocketStream, context: ssl.SSLContext) -> SocketTLSStream:
    """Move accepted *stream*'s socket under `SocketTLSStream` and run the handshake.

    The trio stream gives up its file descriptor (closing it afterwards is a no-op);
    socket options set on it (TCP_NODELAY) stay. TimeoutError if the handshake
    stalls past `TLS_HANDSHAKE_TIMEOUT`; the socket is closed on any failure.
    """
    fd = stream.socket.detach()
    tls = SocketTLSStream.wrap(socket.socket(fileno=fd), context)
    try:
        with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as timer:
            await tls.do_handshake()
        if timer.cancelled_caught:
            # TimeoutError, which the connection gate ends quietly (trio's
            # TooSlowError is not one).
            raise TimeoutError("TLS handshake took too long")
    except BaseException:
        with trio.CancelScope(shield=True):
            await tls.aclose()
        raise
    return tls
