"""The HTTPS listener: h11 over TLS, JSON routes, and WebSocket streams via wsproto.

The thin I/O layer (STYLE.md) for the web: it moves bytes between TLS streams and h11
(HTTP/1.1, RFC 9112) or wsproto (RFC 6455), and applies the rules every endpoint shares,
in this order, before a handler runs:

1. route by method and path template (404, 405 with Allow; RFC 9110 §15.5.5-6);
2. authenticate: bearer header, else the ``edgebox_session`` cookie (401);
3. CSRF: an unsafe request (RFC 9110 §9.2.1) that authenticates by cookie must carry
   ``X-Requested-With: edgebox`` or an ``Origin`` equal to its ``Host`` (403). Bearer
   callers are exempt: a browser never adds that header on its own. A web page's form
   post must also carry the session's CSRF token (`csrf_token_for`) in the
   ``csrf_token`` field or the ``X-CSRF-Token`` header; a form posted without a
   session (sign-in) must come from our own Origin;
4. size: a declared Content-Length over the route's ``max_body`` gets 413 before any
   body byte is read (a ``100 Continue`` is not sent);
5. media type (415), JSON syntax (400) and the route's JSON Schema (422, naming the
   field) — see `appliance.web.schema`.

Errors are the JSON body of `ApiError` (a short HTML page outside ``/api/``, and a
redirect to the sign-in page for a page route without a session); anything else a
handler raises is logged with a reference and answered 500 without detail. Every
response carries the security headers of `SECURITY_HEADERS`. Limits and timeouts are in `Limits`.

The jobs live beside this file, each in its own module: `router` (path templates and
the request target), `csrf` (the session cookie, credentials and the CSRF rules),
`responses` (rendering, error answers, the common headers) and `websocket` (the
opening handshake and the connection a stream handler gets). Under all of them the
network layer, `appliance.net`: the connection gate, TLS, and the HTTP/1.1 request
loop this listener shares with the hub's sync listener. This module is the listener
and its connection: the order of the rules above, and reading the request.

What this is not: any endpoint's logic (the capabilities' Route lists, session_api for
sign-in), the OpenAPI document (openapi.py), or the web pages (pages.py).
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol
from urllib.parse import quote, urlencode

import h11
import trio

from appliance.config import Config
from appliance.directory import User
from appliance.net.http1 import (
    BodyTooLarge,
    HTTPLimits,
    HTTPServerConnection,
    TooSlow,
    header_fields,
    header_tokens,
)
from appliance.net.jsonbody import parse_json
from appliance.net.listeners import ConnectionGate, peer_ip, serve_tcp, start_tls
from appliance.net.tls_stream import start_socket_tls
from appliance.security.tls import server_ssl_context
from appliance.security.untrusted import parse_media_type
from appliance.web import websocket
from appliance.web.csrf import (
    UNSAFE_METHODS,
    check_csrf,
    check_form_token,
    credentials,
    csrf_error,
    same_origin,
)
from appliance.web.forms import FormError, parse_form
from appliance.web.responses import (
    Answer,
    error_answer,
    internal_error,
    malformed,
    not_found,
    render,
    response_headers,
    timeout_error,
    too_large,
    unprocessable,
)
from appliance.web.router import Router, Target, check_query, parse_target
from appliance.web.routes import (
    JSON,
    ApiError,
    Form,
    Language,
    Request,
    Route,
    StreamRoute,
)
from appliance.web.schema import SchemaError, validate
from appliance.web.websocket import ServerWebSocket

log = logging.getLogger("edgebox.web")


@dataclass(frozen=True)
class Limits(HTTPLimits):
    """Sizes and timeouts of the HTTPS listener (`HTTPLimits`, and the WebSocket's)."""

    #: Largest WebSocket message either way; bigger from the client closes with 1009.
    ws_max_message: int = 1024 * 1024
    #: Seconds between server pings; a client silent for two intervals is dropped.
    ws_ping_interval: float = 30.0
    #: Seconds one WebSocket send may wait on a client that does not read.
    ws_send_timeout: float = 60.0
    #: Seconds a stream handler gets to finish after its client has gone.
    ws_handler_grace: float = 10.0
    #: Seconds to wait for the peer's close frame after ours (RFC 6455 §7.1.1).
    ws_close_timeout: float = 5.0


# --- small pure helpers ------------------------------------------------------------


def preferred_language(header: str | None) -> Language:
    """Return "en" if Accept-Language (RFC 9110 §12.5.4) prefers English to Thai."""
    weights = {"th": 0.0, "en": 0.0}
    for item in (header or "").split(","):
        tag, *params = (part.strip() for part in item.split(";"))
        primary = tag.lower().split("-")[0]
        if primary not in weights:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[primary] = max(weights[primary], weight)
    return "en" if weights["en"] > weights["th"] else "th"


def media_type(value: str | None) -> str:
    """The bare media type of a Content-Type value (RFC 9110 §8.3.1), lower case."""
    return (value or "").split(";")[0].strip().lower()


# --- the service -------------------------------------------------------------------


class WebHost(Protocol):
    """What the HTTPS listener needs of the box: its settings (the full box, or the
    unprovisioned box's setup path, appliance.provisioning.setup_api)."""

    config: Config


class SessionResolver(Protocol):
    """Who a session token belongs to (appliance.directory.sessions.Sessions)."""

    async def resolve(self, token: str) -> User | None: ...


class HTTPSService:
    """The HTTPS listener of the box: routes, sign-in sessions, WebSocket streams."""

    name = "https"

    def __init__(
        self,
        box: WebHost,
        routes: Sequence[Route | StreamRoute],
        *,
        sessions: SessionResolver,
        limits: Limits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.box = box
        self.router = Router(routes)
        self.sessions = sessions
        self.limits = limits or Limits()
        # A context of our own, not box.tls: ALPN "http/1.1" must be offered only on
        # this port. On the shared context it would also answer on IMAPS/SMTPS, and a
        # server that accepts any protocol's ALPN is what the ALPACA cross-protocol
        # attacks need. Same key files, so the same certificate. The unprovisioned box
        # passes its device certificate's context (*tls*) instead.
        self.tls = tls or server_ssl_context(box.config.data_dir / "keys")
        self.tls.set_alpn_protocols(["http/1.1"])
        # Over the limit a client is closed without a word: the refusal would be
        # written before TLS, and plain text to a TLS client is noise to it. TLS is
        # started by `_start_tls`: see `appliance.net.tls_stream`.
        self.gate = ConnectionGate(
            box.config.max_web_connections,
            b"",
            self._start_tls,
            service=self.name,
            per_source=box.config.max_web_connections_per_source,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_tcp(self.name, self.box.config, self.handle, task_status)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection from accept to close."""
        client_ip = peer_ip(stream) or "unknown"
        await self.gate.admit(stream, lambda s: _Connection(self, s, client_ip))

    async def _start_tls(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Start TLS on an admitted connection (the gate closes it at the end).

        An accepted socket gets `SocketTLSStream` (OpenSSL writes the socket itself:
        the chat stream's thousands of small sends a second are cheap); any other
        stream `trio.SSLStream`. Handshake failures and time-outs end at the gate.
        """
        if isinstance(stream, trio.SocketStream):
            return await start_socket_tls(stream, self.tls)
        return await start_tls(stream, self.tls)


class _Upgraded(Exception):
    """The connection became a WebSocket and has been served to its end."""


class _Connection(HTTPServerConnection):
    """One client connection: a loop of request → response, keep-alive between."""

    def __init__(self, service: HTTPSService, stream: trio.abc.Stream, client_ip: str) -> None:
        super().__init__(stream, service.limits)
        self.service = service
        self.limits = service.limits
        self.client_ip = client_ip
        #: Set once the connection has become a WebSocket.
        self.websocket: ServerWebSocket | None = None

    async def fault(self, reference: str) -> None:
        """Say the server failed: 500 if no response was started, else WebSocket 1011."""
        if self.websocket is not None:
            # RFC 6455 §7.4.1: 1011, an unexpected condition on the server.
            await self.websocket.close(1011, f"internal error (reference {reference})")
            return
        await self._send_error(internal_error(reference), "th")

    async def refuse_malformed(self, exc: h11.RemoteProtocolError) -> None:
        await self._send_error(malformed(exc.error_status_hint, exc), "th")
        # A refused head may have a body behind it (RFC 9112 §6.1 CL+TE): drain it
        # briefly so the client reads the 400 rather than a reset.
        await self.reader.linger()

    async def refuse_slow(self) -> None:
        await self._send_error(timeout_error(), "th")

    async def exchange(self, request: h11.Request) -> bool:
        try:
            await self._exchange(request)
        except _Upgraded:
            return False
        return True

    async def _exchange(self, request: h11.Request) -> None:
        headers = header_fields(request.headers)
        method = request.method.decode("ascii")
        lang = preferred_language(headers.get("accept-language"))
        # The path only: a query may carry a session token (`/api/v1/stream?token=`).
        path = request.target.partition(b"?")[0].decode("ascii", "replace")
        html_errors = not path.startswith("/api/")
        try:
            answer = await self._answer(request, method, headers, lang)
        except ApiError as exc:
            answer = error_answer(exc, lang, html_page=html_errors)
        except h11.RemoteProtocolError as exc:
            error = malformed(exc.error_status_hint, exc)
            answer = error_answer(error, lang, html_page=html_errors)
        log.debug("%s %s %s %d", self.client_ip, method, path, answer.status)
        await self._send(answer, head=method == "HEAD")

    async def _answer(
        self, request: h11.Request, method: str, headers: dict[str, str], lang: Language
    ) -> Answer:
        # h11 counts only heads that arrive over several reads; one read can carry a
        # whole head past the limit, so it is measured here too.
        head = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head > self.limits.max_header_bytes:
            raise ApiError(431, "headers_too_large", "The request headers are too large",
                           "ส่วนหัวของคำขอใหญ่เกินไป")  # fmt: skip
        target = parse_target(request.target)
        router = self.service.router
        if "websocket" in header_tokens(headers.get("upgrade")):
            await self._upgrade(method, target, headers, lang)
        route, params = router.match(method, target.segments)
        token, via = credentials(headers, target.query, allow_query=False)
        page = route.kind == "page"
        if method in UNSAFE_METHODS and (via == "cookie" or page):
            check_csrf(headers)
        user = None
        if route.auth:
            user = await self._authenticate(token, sign_in_from=target if page else None)

        # The deadline of reading the body runs from the request's first byte.
        try:
            body = await self.reader.read_body(request, route.max_body)
        except BodyTooLarge as exc:
            raise too_large(exc.limit) from None
        except TooSlow:
            raise timeout_error() from None
        value = _parse_body(route, headers, body)
        form = _parse_form(route, method, headers, body, token)
        check_query(route.query, target.query)
        call = Request(
            method=method,
            path=target.path,
            params=params,
            query=target.query,
            headers=headers,
            json=value,
            body=body,
            user=user,
            token=token,
            lang=lang,
            client_ip=self.client_ip,
            form=form,
        )
        try:
            result = await route.handler(call)
        except ApiError:
            raise
        except Exception:
            reference = secrets.token_hex(4)
            # The detail goes to the log only: a traceback in a response tells an
            # attacker about the code and the data (CWE-209).
            log.exception("internal error ref=%s %s %s ip=%s", reference, method,
                          route.path, self.client_ip)  # fmt: skip
            raise internal_error(reference) from None
        return render(route, result)

    async def _authenticate(self, token: str | None, *, sign_in_from: Target | None = None) -> User:
        """The session's user; else 401, or for a page (*sign_in_from*) the sign-in page."""
        user = await self.service.sessions.resolve(token) if token else None
        if user is None:
            if sign_in_from is not None:
                raise _sign_in_first(sign_in_from)
            raise ApiError(
                401,
                "unauthenticated",
                "Sign in first (your session is missing or has ended)",
                "กรุณาเข้าสู่ระบบก่อน (ไม่มีการเข้าสู่ระบบหรือหมดเวลาแล้ว)",
            )
        return user

    # writing

    async def _send(self, answer: Answer, *, head: bool) -> None:
        await self.send_response(answer.status, response_headers(answer), answer.body, head=head)

    async def _send_error(self, error: ApiError, lang: Language) -> None:
        """Answer *error* if a response can still be started, and end the connection."""
        if not self.can_answer():
            return
        answer = error_answer(error, lang)
        answer.headers["connection"] = "close"
        try:
            await self._send(answer, head=False)
        except h11.LocalProtocolError:
            pass

    # WebSocket

    async def _upgrade(
        self, method: str, target: Target, headers: dict[str, str], lang: Language
    ) -> NoReturn:
        """Check and accept a WebSocket opening handshake (RFC 6455 §4.2), then serve it."""
        found = self.service.router.match_stream(target.segments)
        if found is None:
            raise not_found()
        route, params = found
        key = websocket.check_opening(method, headers)
        token, via = credentials(headers, target.query, allow_query=True)
        # Cross-site WebSocket hijacking: a page elsewhere may open a WebSocket to us
        # and the browser would add our cookie. Browsers always send Origin here
        # (§4.1 item 8), so a cookie-authenticated stream needs it to be ours.
        if via == "cookie" and "origin" in headers and not same_origin(headers):
            raise csrf_error()
        user = await self._authenticate(token) if route.auth else None
        check_query(route.query, {k: v for k, v in target.query.items() if k != "token"})
        try:
            event = await self.reader.next_event()
        except TooSlow:
            raise timeout_error() from None
        if not isinstance(event, h11.EndOfMessage):
            raise ApiError(400, "bad_handshake", "A WebSocket handshake has no body",
                           "การเปิด WebSocket ต้องไม่มีเนื้อหา")  # fmt: skip
        response = websocket.accept(key)
        await self.stream.send_all(self.conn.send(response))
        trailing, _ = self.conn.trailing_data
        call = Request(
            method="GET",
            path=target.path,
            params=params,
            query=target.query,
            headers=headers,
            json=None,
            body=b"",
            user=user,
            token=token,
            lang=lang,
            client_ip=self.client_ip,
        )
        log.debug("%s websocket %s", self.client_ip, route.path)
        socket = ServerWebSocket(self.stream, bytes(trailing), self.limits)
        self.websocket = socket
        await socket.serve(route.handler, call)
        raise _Upgraded


# --- request helpers --------------------------------------------------------------


def _sign_in_first(target: Target) -> ApiError:
    """A page asked for without a session: see other (RFC 9110 §15.4.4) at sign-in."""
    back = target.path + ("?" + urlencode(target.query) if target.query else "")
    return ApiError(
        303,
        "sign_in",
        "Sign in first",
        "กรุณาเข้าสู่ระบบก่อน",
        headers={"Location": "/signin?next=" + quote(back, safe="")},
    )


def _parse_form(
    route: Route, method: str, headers: Mapping[str, str], body: bytes, token: str | None
) -> Form:
    """A page route's form post, parsed, after its CSRF token is checked."""
    if route.kind != "page" or method not in UNSAFE_METHODS:
        return Form()
    try:
        form = parse_form(headers.get("content-type"), body)
    except FormError as exc:
        raise ApiError(400, "bad_form", f"The form is malformed: {exc}",
                       "ข้อมูลแบบฟอร์มไม่ถูกต้อง") from None  # fmt: skip
    if token is not None:
        check_form_token(form, headers, token)
    return form


def _parse_body(route: Route, headers: Mapping[str, str], body: bytes) -> JSON:
    kind = media_type(headers.get("content-type"))
    if route.request is not None:
        if kind != "application/json":
            raise ApiError(415, "unsupported_media_type", "Send the body as application/json",
                           "กรุณาส่งเนื้อหาเป็น application/json")  # fmt: skip
        try:
            value = parse_json(body)
        except ValueError as exc:
            raise ApiError(400, "bad_json", f"The body is not valid JSON: {exc}",
                           "เนื้อหาไม่ใช่ JSON ที่ถูกต้อง") from None  # fmt: skip
        try:
            validate(route.request, value, "body")
        except SchemaError as exc:
            raise unprocessable(exc) from None
        return value
    if route.upload is not None:
        wanted = route.upload.lower()
        # Exactly one declared type (RFC 9110 §8.3.1): "image/png, text/javascript"
        # must not pass as an image because it starts like one.
        declared = headers.get("content-type")
        parsed = parse_media_type(declared)
        if declared is not None and parsed is None:
            raise ApiError(415, "unsupported_media_type",
                           "The Content-Type is not one media type (type/subtype)",
                           "Content-Type ต้องเป็นประเภทสื่อเดียว (type/subtype)")  # fmt: skip
        kind = "" if parsed is None else parsed.essence
        # RFC 9110 §12.5.1 media ranges: "*/*" takes any type, "image/*" any image.
        ok = (
            wanted == "*/*"
            or kind == wanted
            or (wanted.endswith("/*") and kind.startswith(wanted[:-1]))
        )
        if not ok:
            raise ApiError(415, "unsupported_media_type", f"Send the body as {route.upload}",
                           f"กรุณาส่งเนื้อหาเป็น {route.upload}")  # fmt: skip
    return None
