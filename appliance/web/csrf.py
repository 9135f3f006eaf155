"""Who a request comes from: the session cookie, bearer tokens, and the CSRF rules.

The session token travels as a bearer header (RFC 6750 §2.1), the ``edgebox_session``
cookie (RFC 6265), or, for a WebSocket only, a ``token`` query parameter
(`credentials`). A request that authenticates by cookie may have been sent by a
browser on behalf of another site, so an unsafe one (RFC 9110 §9.2.1) must prove it
came from our own pages (`check_csrf`: ``X-Requested-With: edgebox``, or an Origin
equal to its Host, RFC 6454), and a page's form post also carries the session's CSRF
token (`csrf_token_for`, checked by `check_form_token`). Bearer callers are exempt: a
browser never adds that header on its own.

What this is not: sessions themselves (appliance.directory.sessions) or sign-in
(appliance.web.session_api).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from appliance.web.routes import ApiError, Form

#: The session cookie (RFC 6265); session_api sets it, the server reads it.
SESSION_COOKIE: Final = "edgebox_session"
#: The header value that marks a request as sent by our own pages (CSRF rule 3).
REQUESTED_WITH: Final = "edgebox"

#: RFC 9110 §9.2.1: methods that are not safe, i.e. may change something.
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The form field and header that carry a page's CSRF token.
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"


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


def credentials(
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


def csrf_error() -> ApiError:
    """403: the request did not come from the box's own pages."""
    return ApiError(
        403,
        "csrf",
        "Request refused: it did not come from the box's own pages",
        "ปฏิเสธคำขอ: คำขอไม่ได้มาจากหน้าเว็บของเครื่องนี้",
    )


def check_csrf(headers: Mapping[str, str]) -> None:
    """Refuse (403) an unsafe cookie-authenticated request not sent by our own pages."""
    # A cross-site page can make a browser send our cookie (form posts, fetch with
    # credentials) but cannot add a custom header without a CORS preflight, which
    # this server never grants; and the Origin a browser sends cannot be forged by
    # the page. Either proves the request came from our own pages.
    if headers.get("x-requested-with", "").strip().lower() == REQUESTED_WITH:
        return
    if same_origin(headers):
        return
    raise csrf_error()


def check_form_token(form: Form, headers: Mapping[str, str], token: str) -> None:
    """Refuse a page's form post whose CSRF token is not the session's (403)."""
    # Beyond the Origin check: a page's forms carry the session's token, so a
    # request forged by any means without reading our page is refused.
    sent = form.get(CSRF_FIELD) or headers.get(CSRF_HEADER, "")
    if not secrets.compare_digest(sent.encode(), csrf_token_for(token).encode()):
        raise csrf_error()
