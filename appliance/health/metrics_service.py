"""The ``metrics`` listener: ``GET /metrics`` on loopback for a Prometheus scraper.

Why loopback and not the HTTPS port: see `appliance.health.metrics`. This is a plain
HTTP/1.1 server of one route (h11 parses, as on the HTTPS port); anything else is a
404, a method other than GET or HEAD a 405, and a malformed request a 400. One request
per connection keeps it small: a scraper connects every 15-60 seconds.
"""

from __future__ import annotations

import logging

import h11
import trio

from appliance.config import Config
from appliance.health.metrics import CONTENT_TYPE, BoxMetrics
from appliance.net.listeners import addresses

log = logging.getLogger("edgebox.metrics")

#: The only address it listens on, whatever ``bind`` says for the other services.
LOOPBACK = "127.0.0.1"
#: Seconds a client gets to send its request.
REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 16 * 1024


class MetricsService:
    name = "metrics"

    def __init__(self, config: Config, metrics: BoxMetrics) -> None:
        self.config = config
        self.metrics = metrics

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        port = self.config.port("metrics")
        try:
            listeners = await trio.open_tcp_listeners(port, host=LOOPBACK)
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics cannot listen on {LOOPBACK}:{port}: {exc.strerror}"
            ) from exc
        task_status.started(addresses(listeners))
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Answer one request and close."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = await _read_request(conn, stream)
                if request is None:
                    return
                status, body, ctype = self._answer(request)
                headers = [("content-type", ctype), ("content-length", str(len(body))),
                           ("connection", "close")]  # fmt: skip
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                if request.method != b"HEAD":
                    await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
        except h11.RemoteProtocolError:
            await _send_bad_request(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _answer(self, request: h11.Request) -> tuple[int, bytes, str]:
        target = request.target.split(b"?", 1)[0]
        if target != b"/metrics":
            return 404, b"not found; try /metrics\n", "text/plain; charset=utf-8"
        if request.method not in (b"GET", b"HEAD"):
            return 405, b"GET only\n", "text/plain; charset=utf-8"
        return 200, self.metrics.render(), CONTENT_TYPE


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(bytes(data))
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        return None


async def _send_bad_request(conn: h11.Connection, stream: trio.abc.Stream) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        body = b"bad request\n"
        await stream.send_all(conn.send(h11.Response(status_code=400, headers=[
            ("content-length", str(len(body))), ("connection", "close")])))  # fmt: skip
        await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
