"""What the HTTPS listener answers: rendered results, error answers, common headers.

A handler's result becomes an `Answer` (`render`); an `ApiError` becomes a JSON error
body, or a short page in both languages outside ``/api/`` (`error_answer`); every
response carries `SECURITY_HEADERS`, a Date and ``Cache-Control: no-store``
(`response_headers`). The errors the listener itself gives (408, 413, 422, 500 …) are
made here, so each reads the same wherever it is raised.

What this is not: the writing of bytes (`appliance.net.http1.HTTPServerConnection`)
or a handler's own errors (each capability raises its `ApiError`).
"""

from __future__ import annotations

import email.utils
import html
from dataclasses import dataclass
from typing import Final

from appliance.net.jsonbody import encode_json
from appliance.web.routes import JSON, ApiError, Language, Response, Route
from appliance.web.schema import SchemaError

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


@dataclass
class Answer:
    """A response ready to be written: status, header fields by name, body."""

    status: int
    headers: dict[str, str]
    body: bytes


def render(route: Route, result: Response | JSON) -> Answer:
    """Turn a handler's result (a `Response`, or JSON for the route's status) into an answer."""
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
    return Answer(status, headers, raw)


def error_answer(error: ApiError, lang: Language, *, html_page: bool = False) -> Answer:
    """Turn *error* into its JSON body, or into a page in both languages (*html_page*)."""
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
    return Answer(error.status, headers, body)


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


def response_headers(answer: Answer) -> list[tuple[str, str]]:
    """The header fields of *answer*: the common ones, then its own, then the length."""
    headers = dict(SECURITY_HEADERS)
    headers["cache-control"] = "no-store"  # API answers are personal; never cache them
    headers["date"] = email.utils.formatdate(usegmt=True)  # RFC 9110 §6.6.1
    headers["server"] = "edgebox"
    headers.update(answer.headers)
    if answer.status not in (204, 304) and answer.status >= 200:
        # RFC 9110 §8.6: not on 204; for HEAD it tells the size GET would send.
        headers["content-length"] = str(len(answer.body))
    return list(headers.items())


def not_found() -> ApiError:
    """404: no route has this path."""
    return ApiError(404, "not_found", "No such address", "ไม่พบที่อยู่นี้")


class FieldError(ApiError):
    """A 422 that also says which field failed, as ``error.field``."""

    def __init__(self, path: str, message_en: str, message_th: str) -> None:
        super().__init__(422, "invalid", message_en, message_th)
        self.field = path

    def body(self, lang: Language) -> JSON:
        body = super().body(lang)
        body["error"]["field"] = self.field
        return body


def unprocessable(exc: SchemaError) -> ApiError:
    """422 naming the field a JSON Schema check refused."""
    return FieldError(
        exc.path,
        f"{exc.path} {exc.message}",
        f"ข้อมูลช่อง {exc.path} ไม่ถูกต้อง ({exc.message})",
    )


def internal_error(reference: str) -> ApiError:
    """500 with only a *reference* to the log entry (CWE-209: no detail to the client)."""
    return ApiError(
        500,
        "internal",
        f"Something went wrong on the box (reference {reference})",
        f"เกิดข้อผิดพลาดในเครื่องแม่ข่าย (รหัสอ้างอิง {reference})",
    )


def timeout_error() -> ApiError:
    """408: the request took longer than the listener allows."""
    # RFC 9110 §15.5.9: the server may send 408 and close.
    return ApiError(408, "timeout", "The request took too long", "คำขอใช้เวลานานเกินไป")


def malformed(status: int, exc: Exception) -> ApiError:
    """A 4xx for a request h11 could not read (*status* is h11's hint)."""
    return ApiError(status, "bad_request", f"Malformed HTTP request: {exc}",
                    "คำขอ HTTP ไม่ถูกต้อง")  # fmt: skip


def too_large(limit: int) -> ApiError:
    """413: the body is larger than the route's *limit*."""
    return ApiError(
        413,
        "too_large",
        f"The request body is larger than {limit} bytes",
        f"เนื้อหาของคำขอใหญ่เกิน {limit} ไบต์",
    )
