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

What this is not: any endpoint's logic (the capabilities' Route lists, session_api for
sign-in), the OpenAPI document (openapi.py), or the web pages (pages.py).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import html
import http
import json
import logging
import secrets
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import h11
import trio
import wsproto.connection
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState

from appliance.config import Config
from appliance.directory import User
from appliance.listeners import ConnectionGate, peer_ip, serve_tcp, start_tls
from appliance.security.tls import server_ssl_context
from appliance.security.untrusted import parse_media_type
from appliance.web.forms import FormError, parse_form
from appliance.web.http1 import BodyTooLarge, RequestReader, TooSlow
from appliance.web.routes import (
    JSON,
    ApiError,
    Form,
    Language,
    Request,
    Response,
    Route,
    Schema,
    StreamHandler,
    StreamRoute,
    WebSocketClosed,
)
from appliance.web.schema import SchemaError, validate
from appliance.web.tls_stream import start_socket_tls

log = logging.getLogger("edgebox.web")

#: The session cookie (RFC 6265); session_api sets it, the server reads it.
SESSION_COOKIE: Final = "edgebox_session"
#: The header value that marks a request as sent by our own pages (CSRF rule 3).
REQUESTED_WITH: Final = "edgebox"

#: RFC 9110 §9.2.1: methods that are not safe, i.e. may change something.
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The form field and header that carry a page's CSRF token.
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"

#: The Content-Security-Policy of every response (CSP Level 3). Only the box's own
#: files: no inline script or style at all (so injected markup cannot run or restyle
#: the page), images also as data:/blob: URLs (previews of a chosen file), no plugins,
#: no <base>, forms only to the box, and no framing by anyone (click-jacking). The one
#: page that is framed, a mail body, sets a stricter policy of its own.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:;"
    " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: On every response. HSTS (RFC 6797) without includeSubDomains: other hosts of an
#: agency's domain are not ours to promise HTTPS for.
SECURITY_HEADERS: Final = (
    ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
)


@dataclass(frozen=True)
class Limits:
    """Sizes and timeouts of the HTTPS listener."""

    #: Request line plus headers; h11 answers 431 beyond it (RFC 6585 §5).
    max_header_bytes: int = 16 * 1024
    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 60.0
    #: Seconds from a request's first byte to its last (slow-loris guard); 408 after.
    request_timeout: float = 30.0
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
    receive_size: int = 64 * 1024


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


def parse_cookie(header: str | None, name: str) -> str | None:
    """Return cookie *name* from a Cookie header (RFC 6265 §5.4), or None."""
    for pair in (header or "").split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            value = value.strip()
            # §4.1.1: a cookie value may be wrapped in double quotes.
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def same_origin(headers: Mapping[str, str]) -> bool:
    """Return whether the Origin header (RFC 6454) names this very host over HTTPS."""
    origin = headers.get("origin")
    host = headers.get("host")
    if not origin or not host or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme != "https" or parts.path not in ("", "/"):
        return False
    return _default_port(parts.netloc) == _default_port(host)


def csrf_token_for(session_token: str) -> str:
    """The CSRF token of a session: our pages put it in every form they render.

    Derived from the session token, so there is nothing more to store or expire, and a
    new sign-in gets a new one. A cross-site page cannot compute it: the session token
    is in an HttpOnly cookie, and SHA-256 does not give it back from the CSRF token.
    """
    digest = hashlib.sha256(b"edgebox csrf v1\0" + session_token.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode("ascii")


def _default_port(authority: str) -> str:
    authority = authority.strip().lower()
    return authority.removesuffix(":443")


def media_type(value: str | None) -> str:
    """The bare media type of a Content-Type value (RFC 9110 §8.3.1), lower case."""
    return (value or "").split(";")[0].strip().lower()


def _refuse_constant(name: str) -> NoReturn:
    # RFC 8259 has no NaN or Infinity; Python's json would accept them.
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> JSON:
    """Parse a request body as strict RFC 8259 JSON (UTF-8); ValueError otherwise."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def encode_json(value: JSON) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- routing -----------------------------------------------------------------------


def _template(path: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    """Split a path template into segments (None for ``{name}``) and parameter names."""
    if not path.startswith("/"):
        raise ValueError(f"route path must start with /: {path!r}")
    segments: list[str | None] = []
    names: list[str] = []
    for segment in path.split("/")[1:]:
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not name.isidentifier() or name in names:
                raise ValueError(f"bad path parameter {segment!r} in {path!r}")
            segments.append(None)
            names.append(name)
        else:
            segments.append(segment)
    return tuple(segments), tuple(names)


@dataclass(frozen=True)
class _Entry:
    route: Route | StreamRoute
    segments: tuple[str | None, ...]
    names: tuple[str, ...]

    def match(self, path: Sequence[str]) -> dict[str, str] | None:
        if len(path) != len(self.segments):
            return None
        values = []
        for want, have in zip(self.segments, path, strict=True):
            if want is None:
                if not have:
                    return None  # a parameter is never empty
                values.append(have)
            elif want != have:
                return None
        return dict(zip(self.names, values, strict=True))

    @property
    def specificity(self) -> tuple[bool, ...]:
        # A literal segment beats a parameter at the same place: /rooms/new before
        # /rooms/{room_id}, whatever order the routes were listed in.
        return tuple(segment is None for segment in self.segments)


class Router:
    """Finds the route for a method and a (percent-decoded, split) path."""

    def __init__(self, routes: Iterable[Route | StreamRoute]) -> None:
        self.routes: list[_Entry] = []
        self.streams: list[_Entry] = []
        seen: set[tuple[str, tuple[str | None, ...]]] = set()
        for route in routes:
            segments, names = _template(route.path)
            method = route.method if isinstance(route, Route) else "STREAM"
            if (method, segments) in seen:
                raise ValueError(f"two routes for {method} {route.path}")
            seen.add((method, segments))
            entry = _Entry(route, segments, names)
            (self.routes if isinstance(route, Route) else self.streams).append(entry)

    def match(self, method: str, path: Sequence[str]) -> tuple[Route, dict[str, str]]:
        """Return the route and its parameters; raise 404/405/426 `ApiError`s."""
        lookup = "GET" if method == "HEAD" else method
        allowed: set[str] = set()
        best: tuple[tuple[bool, ...], Route, dict[str, str]] | None = None
        for entry in self.routes:
            params = entry.match(path)
            if params is None:
                continue
            assert isinstance(entry.route, Route)
            allowed.add(entry.route.method)
            if entry.route.method == lookup and (best is None or entry.specificity < best[0]):
                best = (entry.specificity, entry.route, params)
        if best is not None:
            return best[1], best[2]
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here",
                f"ใช้ {method} กับที่อยู่นี้ไม่ได้",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        if lookup == "GET" and self.match_stream(path) is not None:
            raise ApiError(
                426,
                "upgrade_required",
                "This address is a WebSocket stream",
                "ที่อยู่นี้ใช้ได้กับ WebSocket เท่านั้น",
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        raise _not_found()

    def match_stream(self, path: Sequence[str]) -> tuple[StreamRoute, dict[str, str]] | None:
        best: tuple[tuple[bool, ...], StreamRoute, dict[str, str]] | None = None
        for entry in self.streams:
            params = entry.match(path)
            if params is not None and (best is None or entry.specificity < best[0]):
                assert isinstance(entry.route, StreamRoute)
                best = (entry.specificity, entry.route, params)
        return None if best is None else (best[1], best[2])


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such address", "ไม่พบที่อยู่นี้")


@dataclass(frozen=True)
class Target:
    """A request target (RFC 9112 §3.2) taken apart."""

    path: str
    segments: tuple[str, ...]
    query: dict[str, str]


def parse_target(raw: bytes) -> Target:
    """Split and percent-decode a request target; 400 `ApiError` if it is not one."""
    bad = ApiError(400, "bad_target", "The request address is malformed",
                   "ที่อยู่ของคำขอไม่ถูกต้อง")  # fmt: skip
    try:
        # h11 has already refused bytes outside the RFC 9112 target grammar.
        parts = urlsplit(raw.decode("ascii"))
        if not parts.path.startswith("/"):
            raise bad
        # Split before decoding, so an encoded "/" (%2F) stays inside its segment.
        segments = tuple(unquote(segment, errors="strict") for segment in parts.path.split("/")[1:])
        pairs = parse_qsl(parts.query, keep_blank_values=True, errors="strict", max_num_fields=100)
    except (UnicodeError, ValueError):
        raise bad from None
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)  # the first of repeated parameters counts
    return Target("/" + "/".join(segments), segments, query)


def check_query(schemas: Mapping[str, Schema], query: Mapping[str, str]) -> None:
    """Check query parameters against their schemas; a 422 `ApiError` names the bad one.

    Query values are text; a parameter whose schema says integer, number or boolean
    must be spelled as one, and its value is checked as that type. Handlers still
    receive the text.
    """
    for name, schema in schemas.items():
        if name not in query:
            continue
        text = query[name]
        value: Any = text
        types = schema.get("type")
        names = {types} if isinstance(types, str) else set(types or ())
        try:
            if "integer" in names and text.lstrip("-").isascii() and text.lstrip("-").isdigit():
                value = int(text)
            elif "number" in names and text:
                value = float(text)
            elif "boolean" in names and text in ("true", "false"):
                value = text == "true"
        except ValueError:
            value = text
        try:
            validate(schema, value, f"query.{name}")
        except SchemaError as exc:
            raise _unprocessable(exc) from None


class _FieldError(ApiError):
    """A 422 that also says which field failed, as ``error.field``."""

    def __init__(self, path: str, message_en: str, message_th: str) -> None:
        super().__init__(422, "invalid", message_en, message_th)
        self.field = path

    def body(self, lang: Language) -> JSON:
        body = super().body(lang)
        body["error"]["field"] = self.field
        return body


def _unprocessable(exc: SchemaError) -> ApiError:
    return _FieldError(
        exc.path,
        f"{exc.path} {exc.message}",
        f"ข้อมูลช่อง {exc.path} ไม่ถูกต้อง ({exc.message})",
    )


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
        # started by `_start_tls`: see `appliance.web.tls_stream`.
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


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Connection:
    """One client connection: a loop of request → response, keep-alive between."""

    def __init__(self, service: HTTPSService, stream: trio.abc.Stream, client_ip: str) -> None:
        self.service = service
        self.limits = service.limits
        self.stream = stream
        self.client_ip = client_ip
        self.reader = RequestReader(stream, self.limits)
        self.conn = self.reader.conn
        #: Set once the connection has become a WebSocket.
        self.websocket: _WebSocket | None = None

    async def fault(self, reference: str) -> None:
        """Say the server failed: 500 if no response was started, else WebSocket 1011."""
        if self.websocket is not None:
            # RFC 6455 §7.4.1: 1011, an unexpected condition on the server.
            await self.websocket.close(1011, f"internal error (reference {reference})")
            return
        await self._send_error(_internal_error(reference), "th")

    async def run(self) -> None:
        while True:
            try:
                request = await self.reader.next_request()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self._send_error(_malformed(status, exc), "th")
                # A refused head may have a body behind it (RFC 9112 §6.1 CL+TE): drain
                # it briefly so the client reads the 400 rather than a reset.
                await self.reader.linger()
                return
            except TooSlow:
                await self._send_error(_timeout_error(), "th")
                return
            if request is None:
                return
            try:
                await self._exchange(request)
            except _Upgraded:
                return
            if not self.reader.finished_exchange():
                await self.reader.linger()
                return
            self.conn.start_next_cycle()

    async def _exchange(self, request: h11.Request) -> None:
        headers = _header_map(request.headers)
        method = request.method.decode("ascii")
        lang = preferred_language(headers.get("accept-language"))
        # The path only: a query may carry a session token (`/api/v1/stream?token=`).
        path = request.target.partition(b"?")[0].decode("ascii", "replace")
        html_errors = not path.startswith("/api/")
        try:
            answer = await self._answer(request, method, headers, lang)
        except ApiError as exc:
            answer = _error_answer(exc, lang, html_page=html_errors)
        except h11.RemoteProtocolError as exc:
            error = _malformed(exc.error_status_hint, exc)
            answer = _error_answer(error, lang, html_page=html_errors)
        log.debug("%s %s %s %d", self.client_ip, method, path, answer.status)
        await self._send(answer, head=method == "HEAD")

    async def _answer(
        self, request: h11.Request, method: str, headers: dict[str, str], lang: Language
    ) -> _Answer:
        # h11 counts only heads that arrive over several reads; one read can carry a
        # whole head past the limit, so it is measured here too.
        head = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head > self.limits.max_header_bytes:
            raise ApiError(431, "headers_too_large", "The request headers are too large",
                           "ส่วนหัวของคำขอใหญ่เกินไป")  # fmt: skip
        target = parse_target(request.target)
        router = self.service.router
        if "websocket" in _tokens(headers.get("upgrade")):
            await self._upgrade(method, target, headers, lang)
        route, params = router.match(method, target.segments)
        token, via = _credentials(headers, target.query, allow_query=False)
        page = route.kind == "page"
        if method in UNSAFE_METHODS and (via == "cookie" or page):
            _check_csrf(headers)
        user = None
        if route.auth:
            user = await self._authenticate(token, sign_in_from=target if page else None)

        # The deadline of reading the body runs from the request's first byte.
        try:
            body = await self.reader.read_body(request, route.max_body)
        except BodyTooLarge as exc:
            raise _too_large(exc.limit) from None
        except TooSlow:
            raise _timeout_error() from None
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
            raise _internal_error(reference) from None
        return _render(route, result)

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

    async def _send(self, answer: _Answer, *, head: bool) -> None:
        headers = _response_headers(answer)
        if self.conn.their_state is not h11.DONE:
            # The body was not read (an early 4xx): the rest of it would be taken for
            # the next request, so this connection ends here (RFC 9112 §9.6).
            headers.append(("connection", "close"))
        data = self.conn.send(
            h11.Response(
                status_code=answer.status,
                headers=headers,
                reason=http.HTTPStatus(answer.status).phrase.encode("ascii"),
            )
        )
        if answer.body and not head:
            data += self.conn.send(h11.Data(data=answer.body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def _send_error(self, error: ApiError, lang: Language) -> None:
        """Answer *error* if a response can still be started, and end the connection."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        answer = _error_answer(error, lang)
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
            raise _not_found()
        route, params = found
        # §4.2.1: GET, HTTP/1.1, "Connection: Upgrade", a 16-byte key, version 13.
        if method != "GET":
            raise ApiError(405, "method_not_allowed", "A WebSocket opens with GET",
                           "WebSocket ต้องเปิดด้วย GET", headers={"Allow": "GET"})  # fmt: skip
        if headers.get("sec-websocket-version") != "13":
            # §4.4: say which version we speak.
            raise ApiError(426, "websocket_version", "Only WebSocket version 13 is spoken",
                           "รองรับ WebSocket รุ่น 13 เท่านั้น",
                           headers={"Sec-WebSocket-Version": "13"})  # fmt: skip
        key = headers.get("sec-websocket-key", "")
        if "upgrade" not in _tokens(headers.get("connection")) or not _valid_ws_key(key):
            raise ApiError(400, "bad_handshake", "Malformed WebSocket handshake",
                           "การเปิด WebSocket ไม่ถูกต้อง")  # fmt: skip
        token, via = _credentials(headers, target.query, allow_query=True)
        # Cross-site WebSocket hijacking: a page elsewhere may open a WebSocket to us
        # and the browser would add our cookie. Browsers always send Origin here
        # (§4.1 item 8), so a cookie-authenticated stream needs it to be ours.
        if via == "cookie" and "origin" in headers and not same_origin(headers):
            raise _csrf_error()
        user = await self._authenticate(token) if route.auth else None
        check_query(route.query, {k: v for k, v in target.query.items() if k != "token"})
        try:
            event = await self.reader.next_event()
        except TooSlow:
            raise _timeout_error() from None
        if not isinstance(event, h11.EndOfMessage):
            raise ApiError(400, "bad_handshake", "A WebSocket handshake has no body",
                           "การเปิด WebSocket ต้องไม่มีเนื้อหา")  # fmt: skip
        accept = wsproto.utilities.generate_accept_token(key.encode("ascii"))
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", accept.decode("ascii")),
            ],
        )
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
        socket = _WebSocket(self.stream, bytes(trailing), self.limits)
        self.websocket = socket
        await socket.serve(route.handler, call)
        raise _Upgraded


# --- WebSocket ---------------------------------------------------------------------

#: Frames of recent server→client messages, by their text: a chat event goes to every
#: member's stream as the same `str` object, so its frame is built once, not per
#: recipient. Bounded in entries and in the size of a frame worth keeping.
_FRAME_CACHE: dict[str, bytes] = {}
_FRAME_CACHE_ENTRIES: Final = 1024
_FRAME_CACHE_LARGEST: Final = 16 * 1024


def text_frame(text: str) -> bytes:
    """Return the single unmasked text frame (RFC 6455 §5.2, §5.6) that carries *text*.

    A server never masks (§5.1), so the bytes are the same for every recipient; built
    here rather than by wsproto's per-connection machinery, which costs several times
    more and adds nothing for a whole message with no extension. wsproto still makes
    the handshake's answer, pings, pongs and close frames, and reads the client's frames.
    """
    frame = _FRAME_CACHE.get(text)
    if frame is not None:
        return frame
    payload = text.encode("utf-8")
    size = len(payload)
    # §5.2: FIN + opcode 0x1 (text), then the payload length in 7, 7+16 or 7+64 bits.
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    frame = head + payload
    if len(frame) <= _FRAME_CACHE_LARGEST:
        if len(_FRAME_CACHE) >= _FRAME_CACHE_ENTRIES:
            del _FRAME_CACHE[next(iter(_FRAME_CACHE))]  # the oldest
        _FRAME_CACHE[text] = frame
    return frame


class _WebSocket:
    """An accepted WebSocket (RFC 6455): the `routes.WebSocket` a stream handler gets.

    A reader task answers pings, collects messages (at most `Limits.ws_max_message`
    bytes, text only, JSON only) and hands them to `receive_json` through a short
    queue: a handler that stops reading stops the reader too, so a fast client cannot
    fill memory. `send_json` waits for the stream (backpressure) at most
    `Limits.ws_send_timeout`; a send the socket takes at once does not pass through
    the scheduler (it is no checkpoint: a handler's schedule points are its own
    waits, as the chat stream's wait for news). When the client has gone,
    `receive_json` answers None and the handler has `Limits.ws_handler_grace` seconds
    to return before it is cancelled.
    """

    def __init__(self, stream: trio.abc.Stream, trailing: bytes, limits: Limits) -> None:
        self._stream = stream
        #: `SocketTLSStream.send_nowait`, when the stream has it.
        self._send_nowait: Callable[[bytes], int] | None = getattr(stream, "send_nowait", None)
        self._limits = limits
        self._ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
        self._trailing = trailing
        self._send_lock = trio.Lock()
        #: The unsent tail of a `try_send_text`: written before anything else.
        self._backlog = b""
        self._backlog_queued = trio.Event()
        self._inbox_in, self._inbox = trio.open_memory_channel[JSON](16)
        #: Set once no more frames will come: close handshake done or stream broken.
        self._finished = trio.Event()
        self._broken = False
        #: The frame reader failed on a bug of ours: the close says 1011, not 1000.
        self._faulted = False
        self._last_heard = trio.current_time()
        #: When the send under way began (None: not sending); see `_keep_alive`.
        self._sending_since: float | None = None

    # the WebSocket protocol of routes.py

    async def send_json(self, message: JSON) -> None:
        await self.send_text(json.dumps(message, ensure_ascii=False))

    async def send_text(self, *messages: str) -> None:
        for text in messages:
            if len(text) > self._limits.ws_max_message // 4 and (
                len(text.encode("utf-8")) > self._limits.ws_max_message
            ):
                raise ValueError("message larger than the WebSocket limit")
        await self._write((), b"".join([text_frame(text) for text in messages]))

    def try_send_text(self, messages: list[str]) -> bool:
        # Free means: no send under way (the lock), no tail of an earlier message
        # still queued, and the socket can be written without waiting.
        if (
            self._send_nowait is None
            or self._broken
            or self._backlog
            or self._send_lock.locked()
            or self._ws.state is not ConnectionState.OPEN
        ):
            return False
        if any(len(text) > self._limits.ws_max_message // 4 for text in messages):
            return False  # maybe too big: `send_text` checks it properly
        data = b"".join([text_frame(text) for text in messages])
        try:
            sent = self._send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            self._finished.set()
            return False
        if sent < len(data):
            # The socket took part: the rest must be the next bytes on the wire, so
            # it waits here, and `_flush` (or whichever send comes first) writes it.
            self._backlog = data[sent:]
            self._backlog_queued.set()
        return True

    async def receive_json(self) -> JSON | None:
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        # §5.5.1: a close reason is at most 123 bytes of UTF-8.
        reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        if self._ws.state is ConnectionState.OPEN and not self._broken:
            try:
                await self._send(wsproto.events.CloseConnection(code=code, reason=reason))
            except WebSocketClosed:
                pass
        # §7.1.1: wait for the client's close frame, then the server closes TCP first.
        with trio.move_on_after(self._limits.ws_close_timeout):
            await self._finished.wait()

    # machinery

    async def _send(self, *events: wsproto.events.Event) -> None:
        """Send control frames (ping, pong, close) through wsproto."""
        await self._write(events, b"")

    async def _write(self, events: tuple[wsproto.events.Event, ...], frames: bytes) -> None:
        """Send wsproto *events*, or else ready-made text *frames* (`text_frame`)."""
        # The lock keeps frames whole when tasks send at once. Taken without a
        # checkpoint when free, as it nearly always is: at thousands of sends a
        # second the scheduler round trips of `async with lock` are a large share.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self._write_locked(events, frames)
        finally:
            self._send_lock.release()

    async def _write_locked(self, events: tuple[wsproto.events.Event, ...], frames: bytes) -> None:
        if self._broken:
            raise WebSocketClosed("the connection is broken")
        if events:
            try:
                data = b"".join([self._ws.send(event) for event in events])
            except wsproto.utilities.LocalProtocolError:
                raise WebSocketClosed("the WebSocket is closing or closed") from None
        elif not frames:
            data = b""
        elif self._ws.state is ConnectionState.OPEN:
            # What wsproto itself allows: messages only while open (not after either
            # side's close frame, RFC 6455 §5.5.1). No extension is ever negotiated
            # here, so its frames would be these very bytes.
            data = frames
        else:
            raise WebSocketClosed("the WebSocket is closing or closed")
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        if not data:
            return
        try:
            if self._send_nowait is not None:
                # Most sends fit in the socket at once: then no trip through the
                # scheduler (the handler's own waits are its schedule points).
                sent = self._send_nowait(data)
                if sent == len(data):
                    return
                data = data[sent:]  # the rest must be the very next bytes sent
            # No cancel scope per send (at thousands of sends a second it is a good
            # part of the cost): `_keep_alive` watches this mark instead and drops a
            # client that has not taken a frame for `ws_send_timeout`.
            self._sending_since = trio.current_time()
            try:
                await self._stream.send_all(data)
            finally:
                self._sending_since = None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = True
            self._finished.set()
            raise WebSocketClosed("the client has gone") from exc

    async def serve(self, handler: StreamHandler, request: Request) -> None:
        handler_done = trio.Event()
        handler_scope = trio.CancelScope()

        async def run_handler() -> None:
            code = 1000
            with handler_scope:
                try:
                    await handler(request, self)
                except WebSocketClosed:
                    pass
                except Exception:
                    code = 1011  # §7.4.1: an unexpected condition on the server
                    log.exception("stream handler failed: %s ip=%s", request.path,
                                  request.client_ip)  # fmt: skip
            handler_done.set()
            self._inbox.close()
            await self.close(1011 if self._faulted else code)
            nursery.cancel_scope.cancel()

        async def reader() -> None:
            await self._read()
            with trio.move_on_after(self._limits.ws_handler_grace):
                await handler_done.wait()
            handler_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(self._keep_alive, nursery.cancel_scope)
            nursery.start_soon(self._flush)
            nursery.start_soon(run_handler)

    async def _flush(self) -> None:
        """Write what `try_send_text` left queued, unless another send does it first."""
        while True:
            await self._backlog_queued.wait()
            self._backlog_queued = trio.Event()
            try:
                await self._write((), b"")
            except WebSocketClosed:
                return

    async def _keep_alive(self, scope: trio.CancelScope) -> None:
        interval = self._limits.ws_ping_interval
        send_timeout = self._limits.ws_send_timeout
        tick = min(interval, send_timeout / 2)
        last_ping = trio.current_time()
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            sending_since = self._sending_since
            if sending_since is not None and now - sending_since > send_timeout:
                # Part of a frame may be on the wire: nothing more can be sent.
                log.debug("websocket client stopped reading; dropping it")
                self._broken = True
                self._finished.set()
                scope.cancel()
                return
            if now - self._last_heard > 2 * interval:
                log.debug("websocket client silent; dropping it")
                scope.cancel()
                return
            if now - last_ping < interval:
                continue
            last_ping = now
            if self._ws.state is ConnectionState.OPEN:
                try:
                    await self._send(wsproto.events.Ping())
                except WebSocketClosed:
                    return

    async def _read(self) -> None:
        """Read frames until the close handshake ends or the stream breaks."""
        parts: list[str] = []
        size = 0
        data: bytes | bytearray = self._trailing
        try:
            while True:
                if data:
                    self._ws.receive_data(bytes(data))
                    self._last_heard = trio.current_time()
                for event in self._ws.events():
                    if isinstance(event, wsproto.events.Ping):
                        if self._ws.state is ConnectionState.OPEN:
                            await self._send(event.response())
                    elif isinstance(event, wsproto.events.CloseConnection):
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send(event.response())  # §5.5.1: echo the close
                        elif self._ws.state is ConnectionState.OPEN:
                            # wsproto reports a malformed frame as a close it has not
                            # sent (§7.1.7 fail the connection): send it, then stop.
                            await self._send(event)
                        return
                    elif isinstance(event, wsproto.events.BytesMessage):
                        await self._fail(1003, "only JSON text messages")  # §7.4.1
                    elif isinstance(event, wsproto.events.TextMessage):
                        if self._ws.state is not ConnectionState.OPEN:
                            continue  # we are closing; late messages are dropped
                        parts.append(event.data)
                        size += len(event.data.encode("utf-8"))
                        if size > self._limits.ws_max_message:
                            await self._fail(1009, "message too big")
                            parts, size = [], 0
                        elif event.message_finished:
                            text, parts, size = "".join(parts), [], 0
                            try:
                                value = parse_json(text.encode("utf-8"))
                            except ValueError:
                                await self._fail(1007, "message is not JSON")
                            else:
                                await self._deliver(value)
                data = await self._stream.receive_some(self._limits.receive_size)
                if not data:
                    self._ws.receive_data(None)  # §7.1.5: closed without a close frame
                    return
        except WebSocketClosed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
        except Exception:
            # A bug of ours, not the client's: the handler sees the end of the stream,
            # the close says 1011 (RFC 6455 §7.4.1), and the error goes on to the
            # listener, which logs it (appliance.listeners).
            self._faulted = True
            raise
        finally:
            self._finished.set()
            self._inbox_in.close()

    async def _deliver(self, value: JSON) -> None:
        try:
            await self._inbox_in.send(value)
        except trio.BrokenResourceError:
            pass  # the handler has returned; nobody will read it

    async def _fail(self, code: int, reason: str) -> None:
        """Start the close handshake for a client's fault; keep reading for its reply."""
        if self._ws.state is ConnectionState.OPEN:
            await self._send(wsproto.events.CloseConnection(code=code, reason=reason))


# --- request and response helpers --------------------------------------------------


def _header_map(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    # h11 lower-cases names. Values are latin-1 per RFC 9110 §5.5 (obs-text).
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("ascii")
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _tokens(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


def _valid_ws_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeError):
        return False


def _credentials(
    headers: Mapping[str, str], query: Mapping[str, str], *, allow_query: bool
) -> tuple[str | None, str]:
    """The session token the caller presents and how: "bearer", "cookie", "query", ""."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():  # RFC 6750 §2.1
        return value.strip(), "bearer"
    cookie = parse_cookie(headers.get("cookie"), SESSION_COOKIE)
    if cookie:
        return cookie, "cookie"
    if allow_query and query.get("token"):
        # Browsers cannot set headers on a WebSocket; the app's pages pass the token
        # here. Never logged: the access log writes the route, not the target.
        return query["token"], "query"
    return None, ""


def _csrf_error() -> ApiError:
    return ApiError(
        403,
        "csrf",
        "Request refused: it did not come from the box's own pages",
        "ปฏิเสธคำขอ: คำขอไม่ได้มาจากหน้าเว็บของเครื่องนี้",
    )


def _check_csrf(headers: Mapping[str, str]) -> None:
    # A cross-site page can make a browser send our cookie (form posts, fetch with
    # credentials) but cannot add a custom header without a CORS preflight, which
    # this server never grants; and the Origin a browser sends cannot be forged by
    # the page. Either proves the request came from our own pages.
    if headers.get("x-requested-with", "").strip().lower() == REQUESTED_WITH:
        return
    if same_origin(headers):
        return
    raise _csrf_error()


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
        # Beyond the Origin check: a page's forms carry the session's token, so a
        # request forged by any means without reading our page is refused.
        sent = form.get(CSRF_FIELD) or headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode(), csrf_token_for(token).encode()):
            raise _csrf_error()
    return form


def _internal_error(reference: str) -> ApiError:
    return ApiError(
        500,
        "internal",
        f"Something went wrong on the box (reference {reference})",
        f"เกิดข้อผิดพลาดในเครื่องแม่ข่าย (รหัสอ้างอิง {reference})",
    )


def _timeout_error() -> ApiError:
    # RFC 9110 §15.5.9: the server may send 408 and close.
    return ApiError(408, "timeout", "The request took too long", "คำขอใช้เวลานานเกินไป")


def _malformed(status: int, exc: Exception) -> ApiError:
    return ApiError(status, "bad_request", f"Malformed HTTP request: {exc}",
                    "คำขอ HTTP ไม่ถูกต้อง")  # fmt: skip


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"The request body is larger than {limit} bytes",
        f"เนื้อหาของคำขอใหญ่เกิน {limit} ไบต์",
    )


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
            raise _unprocessable(exc) from None
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


def _render(route: Route, result: Response | JSON) -> _Answer:
    if isinstance(result, Response):
        status, body, content_type = result.status, result.body, result.content_type
        extra = {name.lower(): value for name, value in result.headers.items()}
    else:
        status, body, content_type, extra = route.status, result, "application/json", {}
    if status in (204, 304) or body is None:
        raw = b""
    elif isinstance(body, bytes | bytearray):
        raw = bytes(body)
    else:
        raw = encode_json(body)
    headers = {"content-type": content_type} if raw else {}
    headers.update(extra)
    return _Answer(status, headers, raw)


def _error_answer(error: ApiError, lang: Language, *, html_page: bool = False) -> _Answer:
    if html_page:
        headers = {"content-type": "text/html; charset=utf-8", "content-language": lang}
        body = _error_page(error, lang)
    else:
        headers = {"content-type": "application/json", "content-language": lang}
        body = encode_json(error.body(lang))
    headers.update({name.lower(): value for name, value in error.headers.items()})
    if error.status == 401:
        # RFC 9110 §15.5.2: a 401 names a scheme. Bearer, so browsers show no
        # password dialog of their own (they do for Basic).
        headers.setdefault("www-authenticate", 'Bearer realm="edgebox"')
    return _Answer(error.status, headers, body)


def _error_page(error: ApiError, lang: Language) -> bytes:
    """A page for an error a browser shows: both languages, escaped, no script."""
    first, second = (
        (error.message_th, error.message_en)
        if lang == "th"
        else (error.message_en, error.message_th)
    )
    home = "กลับหน้าแรก" if lang == "th" else "Back to the start page"
    text = (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{error.status} · edgebox</title>"
        '<link rel="stylesheet" href="/static/app.css"></head>'
        f'<body class="error-page"><main><h1>{error.status}</h1>'
        f'<p>{html.escape(first)}</p><p lang="{"en" if lang == "th" else "th"}">'
        f"{html.escape(second)}</p>"
        f'<p><a href="/">{home}</a></p></main></body></html>'
    )
    return text.encode("utf-8")


def _response_headers(answer: _Answer) -> list[tuple[str, str]]:
    headers = dict(SECURITY_HEADERS)
    headers["cache-control"] = "no-store"  # API answers are personal; never cache them
    headers["date"] = email.utils.formatdate(usegmt=True)  # RFC 9110 §6.6.1
    headers["server"] = "edgebox"
    headers.update(answer.headers)
    if answer.status not in (204, 304) and answer.status >= 200:
        # RFC 9110 §8.6: not on 204; for HEAD it tells the size GET would send.
        headers["content-length"] = str(len(answer.body))
    return list(headers.items())
