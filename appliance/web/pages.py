"""The web pages' common ground: templates, static files, sign-in, settings.

Every page is rendered on the server from a Jinja2 template with autoescaping on for
every template, so a value from a message, a chat or a form is always HTML-escaped; a
template that means to insert markup must say so with ``|safe`` on a value it built
itself (the sanitised mail body never is: it goes to a sandboxed frame, see webmail).
Pages use no inline script or style (the CSP forbids both): behaviour lives in small ES
modules under ``static/``, loaded with ``<script type="module" src=...>``.

What every template gets (`PageKit.context`):

- ``user`` (or None), ``lang`` ("th"/"en"), ``prefs`` (theme, font size),
  ``tr(thai, english)`` to write both languages side by side;
- ``csrf_token``: put ``<input type="hidden" name="csrf_token" value="{{ csrf_token }}">``
  in every form that posts, or send it as ``X-CSRF-Token`` from a script (server.py
  refuses unsafe page requests without it);
- ``is_admin``: whether to show the admin console link;
- filters ``date`` (Buddhist Era in Thai), ``short_date`` (time today, else date) and
  ``size``; the global ``static(name)``.

Capabilities add their own pages as `Route` values with ``kind="page"`` and render with
`PageKit.render`; see appliance.mail.webmail, appliance.chat.pages, appliance.admin.

What this is not: the HTTP machinery and the CSRF rule (server.py) or the JSON API.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jinja2

from appliance.directory import Directory, DirectoryError, User, normalise_address
from appliance.directory.preferences import (
    FONT_SIZES,
    LANGUAGES,
    THEMES,
    Preferences,
    PreferenceStore,
)
from appliance.directory.sessions import BROWSER_TTL, Sessions
from appliance.identity import Identity
from appliance.web import i18n
from appliance.web.csrf import CSRF_FIELD, csrf_token_for
from appliance.web.routes import ApiError, Language, Request, Response, Route
from appliance.web.session_api import SessionApi, session_cookie

log = logging.getLogger("edgebox.web")

TEMPLATES: Final = Path(__file__).parent / "templates"
STATIC: Final = Path(__file__).parent / "static"
HTML: Final = "text/html; charset=utf-8"


@dataclass(frozen=True)
class StaticFile:
    content: bytes
    content_type: str
    etag: str


def load_static(root: Path = STATIC) -> dict[str, StaticFile]:
    """Read every file under *root* once, at start-up (a few tens of KB in all)."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        content = path.read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".js"):
            kind = "text/javascript"  # RFC 9239: the one type for JavaScript
        if kind.startswith("text/") or kind == "image/svg+xml":
            kind += "; charset=utf-8"
        etag = '"' + hashlib.sha256(content).hexdigest()[:20] + '"'
        files[name] = StaticFile(content, kind, etag)
    return files


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a path on this box only, never another site."""
    if not target:
        return "/"
    parts = urlsplit(target)
    # "//evil.example" and "/\\evil.example" are other hosts to a browser.
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in "/\\":
        return "/"
    return target


class PageKit:
    """Renders templates with the shared context; one per HTTPS service.

    It is handed what every page shows: the directory (who is signed in, whether they
    administer anything, the agency's names), the sessions, the users' preferences,
    whose box this is and its host name.
    """

    def __init__(
        self,
        *,
        directory: Directory,
        sessions: Sessions,
        preferences: PreferenceStore,
        identity: Identity,
        hostname: str,
        templates: Path = TEMPLATES,
    ) -> None:
        self.directory = directory
        self.sessions = sessions
        self.preferences = preferences
        self.identity = identity
        self.hostname = hostname
        self.static_files = load_static()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates),
            # Every template, whatever its name: escaping is never opt-in.
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["static"] = self.static_url

    def static_url(self, name: str) -> str:
        """The URL of a static file, versioned so a new release is fetched anew."""
        file = self.static_files.get(name)
        if file is None:
            raise KeyError(f"no static file {name!r}")
        return f"/static/{name}?v={file.etag.strip(chr(34))[:10]}"

    async def language(self, request: Request) -> Language:
        if request.user is not None:
            return (await self.preferences.get(request.user.address)).language
        chosen = request.query.get("lang")
        return chosen if chosen in ("th", "en") else request.lang  # type: ignore[return-value]

    async def context(self, request: Request) -> dict[str, Any]:
        user = request.user
        prefs = await self.preferences.get(user.address) if user else Preferences()
        lang: Language = prefs.language if user else await self.language(request)
        scope = await self.directory.admin_scope(user.address) if user else frozenset()
        return {
            "user": user,
            "lang": lang,
            "prefs": prefs,
            "tr": i18n.translator(lang),
            "csrf_token": csrf_token_for(request.token) if request.token else "",
            "csrf_field": CSRF_FIELD,
            "is_admin": scope is None or bool(scope),
            "date": lambda moment: i18n.format_date(moment, lang),
            "short_date": lambda moment: i18n.format_short(moment, lang),
            "size": lambda size: i18n.format_size(size, lang),
            "display_name": lambda person: _display_name(person, lang),
            "path": request.path,
        }

    async def render(
        self,
        request: Request,
        template: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> Response:
        """Render *template* with the shared context plus *values* into an HTML response."""
        context = await self.context(request)
        context.update(values)
        text = self.env.get_template(template).render(context)
        return Response(
            body=text.encode("utf-8"), status=status, content_type=HTML, headers=dict(headers or {})
        )


def redirect(location: str, *, headers: Mapping[str, str] | None = None) -> Response:
    """303 See Other (RFC 9110 §15.4.4): after a form post, the browser GETs *location*."""
    return Response(status=303, headers={"Location": location, **(headers or {})})


def _display_name(person: User | None, lang: Language) -> str:
    return person.display_name(lang) if person is not None else ""


class CommonPages:
    """Start page, sign-in, sign-out, settings and static files."""

    def __init__(self, kit: PageKit, session_api: SessionApi) -> None:
        self.kit = kit
        self.session_api = session_api

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
            return Route(method, path, handler, summary, tag="pages", kind="page", **extra)

        return [
            page("GET", "/", self.start, "Start page: the inbox"),
            page("GET", "/signin", self.sign_in_form, "Sign-in page", auth=False),
            page("POST", "/signin", self.sign_in, "Sign in", auth=False, max_body=8 * 1024),
            page("POST", "/signout", self.sign_out, "Sign out", max_body=8 * 1024),
            page("GET", "/settings", self.settings_form, "Language, theme and font size"),
            page("POST", "/settings", self.save_settings, "Save settings", max_body=8 * 1024),
            page("GET", "/static/{name}", self.static, "Style sheet, scripts", auth=False),
        ]

    async def start(self, request: Request) -> Response:
        return redirect("/mail")

    async def sign_in_form(self, request: Request) -> Response:
        if request.token and await self.kit.sessions.resolve(request.token):
            return redirect(safe_next(request.query.get("next")))
        return await self._sign_in_page(
            request, next=safe_next(request.query.get("next")), error=None, address=""
        )

    async def _sign_in_page(
        self,
        request: Request,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> Response:
        """The sign-in form, saying whose box this is: agency, domain and server name."""
        domain = self.kit.identity.domain
        agency = await self.kit.directory.agency(domain)
        lang = await self.kit.language(request)
        names = (agency.name_th, agency.name_en) if agency else (None, None)
        chosen = names[1] if lang == "en" else names[0]
        name = chosen or names[0] or names[1] or self.kit.identity.agency_name or domain
        return await self.kit.render(
            request, "signin.html", status=status, headers=headers, agency_name=name,
            agency_domain=domain, box_name=self.kit.hostname, **values,
        )  # fmt: skip

    async def sign_in(self, request: Request) -> Response:
        form = request.form
        address = form.get("address").strip()
        target = safe_next(form.get("next"))
        try:
            # The field is plain text (a Thai local part must get through, RFC 6531),
            # so the server is where a mistyped address is caught; it costs no
            # lock-out attempt, as no password was tried.
            normalise_address(address)
        except DirectoryError:
            lang = await self.kit.language(request)
            return await self._sign_in_page(
                request, status=422, next=target, address=address,
                error=i18n.translator(lang)(
                    "กรุณากรอกที่อยู่อีเมลให้ครบ เช่น สมชาย@หน่วยงาน.go.th",
                    "Enter a whole email address, such as somchai@agency.go.th",
                ),
            )  # fmt: skip
        try:
            token, _expires, _user = await self.session_api.open_session(
                address,
                form.get("password"),
                client_ip=request.client_ip,
                user_agent=request.headers.get("user-agent"),
                ttl=BROWSER_TTL,
            )
        except ApiError as exc:
            lang = await self.kit.language(request)
            message = exc.message_th if lang == "th" else exc.message_en
            return await self._sign_in_page(
                request, status=exc.status, headers=exc.headers, next=target,
                error=message, address=address,
            )  # fmt: skip
        cookie = session_cookie(token, int(BROWSER_TTL.total_seconds()))
        return redirect(target, headers={"Set-Cookie": cookie})

    async def sign_out(self, request: Request) -> Response:
        ended = await self.session_api.sign_out(request)
        return redirect("/signin", headers=ended.headers)

    async def settings_form(self, request: Request) -> Response:
        saved = request.query.get("saved") == "1"
        return await self.kit.render(request, "settings.html", saved=saved)

    async def save_settings(self, request: Request) -> Response:
        assert request.user is not None
        form = request.form
        chosen = Preferences(
            language=_choice(form.get("language"), LANGUAGES),  # type: ignore[arg-type]
            theme=_choice(form.get("theme"), THEMES),  # type: ignore[arg-type]
            font_size=_choice(form.get("font_size"), FONT_SIZES),  # type: ignore[arg-type]
        )
        await self.kit.preferences.set(request.user.address, chosen)
        return redirect("/settings?saved=1")

    async def static(self, request: Request) -> Response:
        file = self.kit.static_files.get(request.params["name"])
        if file is None:
            raise ApiError(404, "not_found", "No such file", "ไม่พบไฟล์")
        # Revalidated on every use (ETag, RFC 9110 §13.1.2): after an update the
        # pages and their scripts always match; an unchanged file costs a 304.
        headers = {"ETag": file.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == file.etag:
            return Response(status=304, headers=headers)
        return Response(body=file.content, content_type=file.content_type, headers=headers)


def _choice(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ApiError(422, "bad_choice", f"Choose one of {', '.join(allowed)}",
                       f"กรุณาเลือกหนึ่งใน {', '.join(allowed)}")  # fmt: skip
    return value
