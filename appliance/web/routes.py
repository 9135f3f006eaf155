"""What an API endpoint is: the contract between the HTTPS server and the capabilities.

Every capability (chat, mail, admin) describes its endpoints as `Route` and
`StreamRoute` values: method, path template, JSON Schemas of the request and response
bodies, and an async handler. The server (`appliance.web.server`) matches requests to
routes, authenticates the caller, validates the body against the route's schema before
the handler runs, and turns `ApiError` into a JSON error. The OpenAPI 3.1 document at
``/api/v1/openapi.json`` is generated from the same values (`appliance.web.openapi`),
so the document cannot drift from the code.

What this is not: the HTTP machinery (server.py) or any capability's rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from appliance.directory import User

Language = Literal["th", "en"]
JSON = Any
Schema = Mapping[str, Any]


class ApiError(Exception):
    """A request the server refuses: becomes a 4xx JSON body, changes nothing.

    The body is ``{"error": {"code": ..., "message": ..., "message_th": ...,
    "message_en": ...}}`` where ``message`` is in the caller's language
    (Accept-Language, Thai first).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message_en: str,
        message_th: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message_en)
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_th = message_th
        self.headers = dict(headers or {})

    def body(self, lang: Language) -> JSON:
        message = self.message_th if lang == "th" else self.message_en
        return {
            "error": {
                "code": self.code,
                "message": message,
                "message_th": self.message_th,
                "message_en": self.message_en,
            }
        }


@dataclass(frozen=True)
class Upload:
    """One file of a ``multipart/form-data`` body (RFC 7578 §4.2)."""

    name: str
    #: The file name the browser sent, reduced to its last path segment; may be "".
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Form:
    """The fields and files of an HTML form post (urlencoded or multipart)."""

    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    files: Mapping[str, tuple[Upload, ...]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        """The first value of field *name*, or *default*."""
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> tuple[str, ...]:
        return self.fields.get(name, ())

    def uploads(self, name: str) -> tuple[Upload, ...]:
        """The non-empty files sent under *name* (an empty file input sends one empty)."""
        return tuple(f for f in self.files.get(name, ()) if f.filename or f.data)


@dataclass(frozen=True)
class Request:
    """One HTTP request as a handler sees it (body already parsed and validated)."""

    method: str
    #: The path without the query string, percent-decoded.
    path: str
    #: Values of the route's ``{name}`` path parameters.
    params: Mapping[str, str]
    query: Mapping[str, str]
    #: Lower-case header names; repeated headers joined with ", ".
    headers: Mapping[str, str]
    #: The validated JSON body for routes with a request schema, else None.
    json: JSON
    #: The raw body (for uploads, routes whose request is not JSON).
    body: bytes
    #: The signed-in user, or None on routes with ``auth=False``.
    user: User | None
    #: The session token the caller presented (cookie or bearer), if any.
    token: str | None
    lang: Language
    client_ip: str
    #: The parsed form of a page route's POST (empty for JSON routes and GETs).
    form: Form = field(default_factory=Form)


@dataclass
class Response:
    """What a handler returns when a bare JSON value is not enough."""

    body: JSON | bytes = None
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable["Response | JSON"]]

#: "json": an endpoint of the API under /api/v1, described in the OpenAPI document.
#: "page": a web page or form post (appliance.web.pages): not in the document; a caller
#: without a session is sent to the sign-in page; an unsafe request must carry the
#: session's CSRF token; form bodies arrive parsed in `Request.form`; errors are HTML.
RouteKind = Literal["json", "page"]


@dataclass(frozen=True)
class Route:
    """One endpoint: a JSON API call under /api/v1, or a web page."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    #: e.g. "/api/v1/rooms/{room_id}/messages"; a ``{name}`` matches one path segment.
    path: str
    handler: Handler
    summary: str
    tag: str
    #: JSON Schema of the request body (None: no JSON body). Checked before the handler.
    request: Schema | None = None
    #: JSON Schema of the success body (None: no body, e.g. 204).
    response: Schema | None = None
    status: int = 200
    #: Other success statuses answered with the same body (e.g. 200 for a retried
    #: create that found the first one).
    also: tuple[int, ...] = ()
    #: False only for sign-in and the OpenAPI document itself.
    auth: bool = True
    #: 4xx statuses the handler may answer with, for the document.
    errors: tuple[int, ...] = ()
    #: Schemas of the query parameters, by name (all optional strings unless stated).
    query: Mapping[str, Schema] = field(default_factory=dict)
    #: For non-JSON bodies (uploads): the accepted media type and size limit.
    upload: str | None = None
    max_body: int = 1024 * 1024
    kind: RouteKind = "json"


class WebSocket(Protocol):
    """An accepted WebSocket (RFC 6455) carrying JSON text messages."""

    async def send_json(self, message: JSON) -> None:
        """Send one JSON text message; raises `WebSocketClosed` if the peer has gone."""
        ...

    async def send_text(self, *messages: str) -> None:
        """Send already-encoded JSON text messages in one write (a stream's batch)."""
        ...

    def try_send_text(self, messages: list[str]) -> bool:
        """Send already-encoded messages now, without waiting, if the connection is free.

        True: they are on their way, before anything sent later (written, or their
        tail queued for the connection to write). False: nothing was sent (another
        send is under way, the client is behind, or the connection is closing); the
        caller sends them with `send_text` instead. Not a checkpoint.
        """
        ...

    async def receive_json(self) -> JSON | None:
        """Return the next JSON message from the client, or None once it has closed.

        A message that is not JSON closes the connection with code 1007.
        """
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebSocketClosed(Exception):
    """The peer closed or the connection broke while sending."""


StreamHandler = Callable[[Request, WebSocket], Awaitable[None]]


@dataclass(frozen=True)
class StreamRoute:
    """A WebSocket endpoint (GET with Upgrade) on the same HTTPS port."""

    path: str
    handler: StreamHandler
    summary: str
    tag: str
    query: Mapping[str, Schema] = field(default_factory=dict)
    auth: bool = True
