"""Sign-in over HTTPS: create, read and end a session (``/api/v1/session``).

``POST`` checks the password through `SignIn` (the sign-in guard shared with IMAP and
SMTP: back-off delays, and 429 for a source that guessed wrong too often; unknown and
disabled users fail in the time of a wrong password), and answers a
token plus the ``edgebox_session`` cookie: ``HttpOnly`` (page scripts cannot read it),
``Secure``, ``SameSite=Strict`` (RFC 6265bis §4.1.2.7: never sent on cross-site
requests) and ``Path=/``. Browsers use the cookie; the phone app sends
``{"client": "app"}``, keeps the token (30 days instead of 12 hours) and sends it as
``Authorization: Bearer``.

Every sign-in, failure and sign-out is logged and written to the traffic log with the
address and the client's IP (sign-ins and failures by `SignIn`); the password never is.

What this is not: the session store (directory/sessions.py), the guard's counting
(security/guard.py), or checking a session on other routes (server.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from appliance.compliance.traffic_log import TrafficLog, TrafficRecord
from appliance.directory import User
from appliance.directory.sessions import APP_TTL, BROWSER_TTL, Sessions
from appliance.directory.signin import Refused, SignIn
from appliance.web.csrf import SESSION_COOKIE
from appliance.web.routes import JSON, ApiError, Request, Response, Route

log = logging.getLogger("edgebox.web")

SESSION_PATH: Final = "/api/v1/session"

PROFILE_SCHEMA: Final = {
    "type": "object",
    "required": ["address", "agency_domain", "name_th", "name_en", "display_name", "rank"],
    "properties": {
        "address": {"type": "string"},
        "agency_domain": {"type": "string"},
        "name_th": {"type": "string"},
        "name_en": {"type": ["string", "null"]},
        "display_name": {"type": "string", "description": "In the caller's language."},
        "position": {"type": ["string", "null"]},
        "rank": {"type": "integer"},
        "unit": {"type": ["string", "null"]},
        "phone": {"type": ["string", "null"]},
    },
}

SIGN_IN_SCHEMA: Final = {
    "type": "object",
    "required": ["address", "password"],
    "additionalProperties": False,
    "properties": {
        # 254: the longest mail address (RFC 5321 §4.5.3.1); passwords are capped so a
        # megabyte "password" cannot tie up the hashing workers.
        "address": {"type": "string", "minLength": 1, "maxLength": 254},
        "password": {"type": "string", "minLength": 1, "maxLength": 1024},
        "client": {"enum": ["browser", "app"], "description": "app: 30-day token"},
    },
}

SIGNED_IN_SCHEMA: Final = {
    "type": "object",
    "required": ["token", "expires_at", "user"],
    "properties": {
        "token": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
        "user": PROFILE_SCHEMA,
    },
}

WHO_AM_I_SCHEMA: Final = {
    "type": "object",
    "required": ["user"],
    "properties": {"user": PROFILE_SCHEMA},
}


def user_profile(user: User, lang: str = "th") -> dict[str, Any]:
    """The user as the API shows them (no quota, no flags: only what a person sees)."""
    return {
        "address": user.address,
        "agency_domain": user.agency_domain,
        "name_th": user.name_th,
        "name_en": user.name_en,
        "display_name": user.display_name("en" if lang == "en" else "th"),
        "position": user.position,
        "rank": user.rank,
        "unit": user.unit,
        "phone": user.phone,
    }


def session_cookie(token: str, max_age: int) -> str:
    """A Set-Cookie value (RFC 6265 §4.1) for the session; max_age 0 deletes it."""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict"


def _wrong_password() -> ApiError:
    # One answer for unknown address, wrong password and disabled account, so the
    # API does not tell a guesser which addresses exist.
    return ApiError(
        401,
        "wrong_password",
        "The address or password is wrong",
        "ที่อยู่อีเมลหรือรหัสผ่านไม่ถูกต้อง",
    )


def _locked(refused: Refused) -> ApiError:
    minutes = refused.minutes
    return ApiError(
        429,
        "locked_out",
        f"Too many wrong passwords from this device; try again in {minutes} minutes",
        f"มีการใส่รหัสผ่านผิดจากอุปกรณ์นี้หลายครั้งเกินไป กรุณาลองใหม่ในอีก {minutes} นาที",
        # RFC 6585 §4 / RFC 9110 §10.2.3: seconds, a whole number.
        headers={"Retry-After": str(max(1, math.ceil(refused.retry_after)))},
    )


class SessionApi:
    """The handlers of ``/api/v1/session``; `routes` lists them.

    *on_sign_in* runs after each sign-in (the chat adds staff new to the agency or a
    unit to its broadcasts): the web layer calls the capability without knowing it.
    """

    def __init__(
        self,
        sessions: Sessions,
        signin: SignIn,
        traffic: TrafficLog,
        on_sign_in: Callable[[User], Awaitable[object]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.signin = signin
        self.traffic = traffic
        self.on_sign_in = on_sign_in

    def routes(self) -> list[Route]:
        return [
            Route(
                method="POST",
                path=SESSION_PATH,
                handler=self.sign_in,
                summary="Sign in with address and password",
                tag="session",
                request=SIGN_IN_SCHEMA,
                response=SIGNED_IN_SCHEMA,
                status=201,
                auth=False,
                errors=(401, 429),
                max_body=8 * 1024,
            ),
            Route(
                method="GET",
                path=SESSION_PATH,
                handler=self.who_am_i,
                summary="The signed-in user",
                tag="session",
                response=WHO_AM_I_SCHEMA,
            ),
            Route(
                method="DELETE",
                path=SESSION_PATH,
                handler=self.sign_out,
                summary="Sign out: end this session and clear the cookie",
                tag="session",
                status=204,
            ),
        ]

    async def open_session(
        self,
        address: str,
        password: str,
        *,
        client_ip: str,
        user_agent: str | None,
        ttl: timedelta,
    ) -> tuple[str, datetime, User]:
        """Check the password under the sign-in guard and start a session.

        Shared by this API and the sign-in page; raises `ApiError` 401 or 429.
        """
        checked = await self.signin.check("web", address, password, client_ip)
        if isinstance(checked, Refused):
            raise _locked(checked)
        if checked is None:
            log.warning("sign-in failed user=%r ip=%s", address[:320], client_ip)
            raise _wrong_password()
        user = checked
        token, expires_at = await self.sessions.create(
            user, client_ip=client_ip, user_agent=user_agent, ttl=ttl
        )
        log.info("sign-in ok user=%s ip=%s", user.address, client_ip)
        if self.on_sign_in is not None:
            # E.g. staff new to the agency (or to a unit) start receiving its broadcasts.
            await self.on_sign_in(user)
        return token, expires_at, user

    async def sign_in(self, request: Request) -> Response:
        ttl = APP_TTL if request.json.get("client") == "app" else BROWSER_TTL
        token, expires_at, user = await self.open_session(
            request.json["address"],
            request.json["password"],
            client_ip=request.client_ip,
            user_agent=request.headers.get("user-agent"),
            ttl=ttl,
        )
        body: JSON = {
            "token": token,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
            "user": user_profile(user, request.lang),
        }
        return Response(
            body=body,
            status=201,
            headers={"Set-Cookie": session_cookie(token, int(ttl.total_seconds()))},
        )

    async def who_am_i(self, request: Request) -> JSON:
        assert request.user is not None  # auth=True: the server checked
        return {"user": user_profile(request.user, request.lang)}

    async def sign_out(self, request: Request) -> Response:
        if request.token is not None:
            await self.sessions.revoke(request.token)
        address = request.user.address if request.user else None
        log.info("sign-out user=%s ip=%s", address, request.client_ip)
        if address is not None:
            await self._record("logout", address, request.client_ip, "204")
        return Response(body=None, status=204, headers={"Set-Cookie": session_cookie("", 0)})

    async def _record(self, event: str, user: str, ip: str, result: str) -> None:
        try:
            client_ip: str | None = ip if ip != "unknown" else None
            record = TrafficRecord(
                time=datetime.now(UTC),
                service="web",
                event=event,
                client_ip=client_ip,
                user=user[:320],
                result=result,
            )
            await self.traffic.append(record)
        except Exception:
            # A full log disk must not lock everybody out; the operator sees it here.
            log.exception("traffic log write failed")


def session_routes(
    sessions: Sessions,
    signin: SignIn,
    traffic: TrafficLog,
    on_sign_in: Callable[[User], Awaitable[object]] | None = None,
) -> list[Route]:
    """Return the three ``/api/v1/session`` routes (sign in, who am I, sign out)."""
    return SessionApi(sessions, signin, traffic, on_sign_in).routes()
