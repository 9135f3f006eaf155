"""The ``/admin`` pages: overview, users, one user's settings, org chart, outbound queue,
sign-in protection (wrong passwords by source and account, and unlocking), system
updates and the factory reset (both box-wide: only an admin of the whole box).

Server-rendered forms, one POST per change, each answered with a 303 back to the page
it came from and a visible "saved" notice (``?saved=<change>``). The server has already
checked the session, the CSRF token and the body size; every handler here starts again
from the signed-in user:

1. `_scope`: administers nothing → 403, on every page and action alike;
2. `_target` / `_agency`: a user or agency outside the scope → 404, worded exactly like
   an unknown one, so an agency admin cannot probe for another agency's staff;
3. `AdminConsole.may_change`: an account holding grants beyond the admin's → 403.

Only then is the form read. Input the admin can fix (a bad number, a short password,
an existing address) re-renders the page with the message and status 422, having
changed nothing; the add-user form keeps what was typed, except the passwords.

What this is not: the rules themselves (console.py), the directory's checks
(appliance.directory), or the CSRF and session machinery (appliance.web.csrf).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import trio

from appliance.admin.console import (
    MAX_QUOTA_MB,
    MAX_RANK,
    MB,
    AdminConsole,
    Refusal,
    format_age,
    parse_count,
    search_users,
    urgency_name,
)
from appliance.admin.protection import ProtectionPages
from appliance.backup.service import read_state as read_backup_state
from appliance.backup.sheet import RecoverySheet, recovery_sheet
from appliance.compliance.traffic_log import TrafficLog
from appliance.config import Config
from appliance.directory import Directory, DirectoryError, User, normalise_address
from appliance.directory.scope import AdminScope, scope_of
from appliance.directory.sessions import Sessions
from appliance.directory.signin import SignIn
from appliance.health import worst
from appliance.identity import Identity
from appliance.mail.accounts import create_account
from appliance.mail.mailstore import Mailstore
from appliance.protection.dkim import DkimKeyError, DkimKeyring, TxtRecord
from appliance.protection.publish import sender_records
from appliance.security.guard import AuthGuard
from appliance.security.keys import KeyMaterialError
from appliance.security.passwords import MAX_PASSWORD_CHARS
from appliance.sync.uplink import read_uplink
from appliance.update.follow import InstallNowBell, request_install_now
from appliance.update.rauc import Rauc
from appliance.update.summary import update_summary
from appliance.web.i18n import service_label
from appliance.web.pages import PageKit, redirect
from appliance.web.routes import ApiError, Form, Request, Response, Route

if TYPE_CHECKING:
    from appliance.provisioning.lifecycle import Lifecycle

log = logging.getLogger("edgebox.admin")

#: Rows of the users table per page.
PAGE_SIZE: Final = 100
#: Every admin form is a few short fields.
FORM_MAX_BODY: Final = 16 * 1024

#: The add-user form's fields that are shown again after a refusal (never passwords).
ADD_FIELDS: Final = (
    "address", "name_th", "name_en", "rank", "unit", "position", "phone", "quota_mb",
)  # fmt: skip

#: What the user page says after each change (``?saved=...``), Thai and English.
SAVED: Final = {
    "added": ("เพิ่มผู้ใช้เรียบร้อยแล้ว", "User added"),
    "names": ("บันทึกชื่อแล้ว", "Names saved"),
    "rank": ("บันทึกระดับแล้ว", "Rank saved"),
    "unit": ("บันทึกสังกัดแล้ว", "Unit saved"),
    "position": ("บันทึกตำแหน่งแล้ว", "Position saved"),
    "phone": ("บันทึกหมายเลขโทรศัพท์แล้ว", "Phone number saved"),
    "quota": ("บันทึกขนาดกล่องจดหมายแล้ว", "Mailbox quota saved"),
    "disable": ("ระงับการใช้งานแล้ว และออกจากระบบทุกอุปกรณ์แล้ว",
                "Account disabled and signed out everywhere"),
    "enable": ("เปิดใช้งานบัญชีแล้ว", "Account enabled"),
    "password": ("ตั้งรหัสผ่านใหม่แล้ว และออกจากระบบทุกอุปกรณ์แล้ว",
                 "Password reset and signed out everywhere"),
    "sessions": ("ออกจากระบบทุกอุปกรณ์แล้ว", "Signed out everywhere"),
    "unit-added": ("เพิ่มหน่วยงานย่อยแล้ว", "Unit added"),
    "source-unlocked": ("ปลดล็อกที่อยู่นี้แล้ว เข้าสู่ระบบจากที่อยู่นี้ได้อีกครั้ง",
                        "Address unlocked: sign-ins from it are checked again"),
    "account-unlocked": ("ล้างการเข้าสู่ระบบผิดของบัญชีนี้แล้ว",
                         "The account's failed sign-ins are forgotten"),
    "install-now": ("รับคำขอแล้ว เครื่องเริ่มดาวน์โหลดและติดตั้งทันที แล้วจะเริ่มเครื่องใหม่",
                    "Asked: the box fetches and installs it now, then reboots"),
}  # fmt: skip

Change = Callable[[AdminScope, User, Form], Awaitable[str]]


def admin_routes(
    kit: PageKit,
    *,
    config: Config,
    identity: Identity,
    directory: Directory,
    mailstore: Mailstore,
    sessions: Sessions,
    signin: SignIn,
    guard: AuthGuard,
    traffic: TrafficLog,
    status_file: Path,
    lifecycle: Lifecycle | None = None,
    rauc: Rauc | None = None,
    install_now_bell: InstallNowBell | None = None,
) -> list[Route]:
    """Return the routes of the admin console (all under ``/admin``, pages only).

    The console reads and changes most of the box, and is handed each part it uses;
    *lifecycle* (the running box's state) is what its factory reset asks, *rauc* what
    the updates page asks for the running slot, *install_now_bell* what wakes the
    update channel's follower when an admin presses Install now.
    """
    console = AdminConsole(
        config=config, directory=directory, mailstore=mailstore, guard=guard,
        traffic=traffic, status_file=status_file,
    )  # fmt: skip
    return AdminPages(
        kit, console, config=config, identity=identity, directory=directory,
        mailstore=mailstore, sessions=sessions, signin=signin, guard=guard,
        lifecycle=lifecycle, rauc=rauc, install_now_bell=install_now_bell,
    ).routes() + ProtectionPages(
        kit, console, config=config, directory=directory, traffic=traffic
    ).routes()  # fmt: skip


def user_url(address: str) -> str:
    """The edit page of *address*; a Thai local part is percent-encoded (RFC 3986 §2.1)."""
    return "/admin/users/" + quote(address, safe="@")


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such user or agency", "ไม่พบผู้ใช้หรือหน่วยงานนี้")


def _not_admin() -> ApiError:
    return ApiError(403, "not_admin", "Only administrators may use the admin console",
                    "หน้านี้สำหรับผู้ดูแลระบบเท่านั้น")  # fmt: skip


def _beyond_scope() -> ApiError:
    return ApiError(
        403,
        "beyond_scope",
        "This account holds rights beyond yours; ask the box administrator to change it",
        "บัญชีนี้มีสิทธิ์เกินกว่าสิทธิ์ของท่าน กรุณาติดต่อผู้ดูแลระบบของเครื่องแม่ข่ายให้เป็นผู้แก้ไข",
    )


def _refusal(exc: DirectoryError) -> Refusal:
    # The directory speaks English to operators; the page adds a Thai lead-in.
    return Refusal(str(exc), f"บันทึกไม่ได้: {exc}")


class AdminPages:
    """The handlers of the admin console; `routes` lists them."""

    def __init__(
        self,
        kit: PageKit,
        console: AdminConsole,
        *,
        config: Config,
        identity: Identity,
        directory: Directory,
        mailstore: Mailstore,
        sessions: Sessions,
        signin: SignIn,
        guard: AuthGuard,
        lifecycle: Lifecycle | None = None,
        rauc: Rauc | None = None,
        install_now_bell: InstallNowBell | None = None,
    ) -> None:
        self.kit = kit
        self.rauc = rauc
        self.install_now_bell = install_now_bell
        self.console = console
        self.config = config
        self.identity = identity
        self.directory = directory
        self.mailstore = mailstore
        self.sessions = sessions
        self.signin = signin
        self.guard = guard
        self.lifecycle = lifecycle

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str) -> Route:
            # GETs keep the default limit: they have no body to read anyway.
            limit = FORM_MAX_BODY if method == "POST" else Route.max_body
            return Route(method, path, handler, summary, tag="admin", kind="page", max_body=limit)

        def change(name: str, apply: Change, summary: str) -> Route:
            async def handler(request: Request) -> Response:
                return await self._change(request, name, apply)

            return page("POST", f"/admin/users/{{address}}/{name}", handler, summary)

        return [
            page("GET", "/admin", self.overview, "Admin console: overview"),
            page("GET", "/admin/users", self.users, "Admin console: users"),
            page("POST", "/admin/users", self.add_user, "Admin console: add a user"),
            page("GET", "/admin/users/{address}", self.user, "Admin console: one user"),
            change("names", self._set_names, "Change a user's names"),
            change("rank", self._set_rank, "Change a user's rank"),
            change("unit", self._set_unit, "Move a user to another unit"),
            change("position", self._set_position, "Change a user's position"),
            change("phone", self._set_phone, "Change a user's phone number"),
            change("quota", self._set_quota, "Change a user's mailbox quota"),
            change("disable", self._disable, "Disable a user and end their sessions"),
            change("enable", self._enable, "Enable a user again"),
            change("password", self._reset_password, "Reset a user's password"),
            change("sessions", self._revoke_sessions, "Sign a user out everywhere"),
            page("GET", "/admin/org", self.org, "Admin console: org chart"),
            page("POST", "/admin/org", self.add_unit, "Admin console: add a unit"),
            page("GET", "/admin/queue", self.queue, "Admin console: outbound queue"),
            page("GET", "/admin/health", self.health, "Admin console: the box's health"),
            page("GET", "/admin/dkim", self.dkim, "Admin console: DKIM records to publish"),
            page("GET", "/admin/security", self.security, "Admin console: sign-in protection"),
            page("POST", "/admin/security/unlock-source", self.unlock_source, "Unlock an address"),
            page("POST", "/admin/security/unlock-account", self.unlock_account, "Forget failures"),
            page("GET", "/admin/update", self.update_page, "Admin console: system updates"),
            page("POST", "/admin/update/install-now", self.install_now, "Install the update now"),
            page("GET", "/admin/backup", self.backup, "Admin console: backups"),
            page(
                "POST",
                "/admin/backup/recovery-sheet",
                self.recovery_sheet,
                "The agency's recovery sheet (the backup key; password again)",
            ),
            page("GET", "/admin/factory-reset", self.factory_reset_page, "Factory reset: confirm"),
            page("POST", "/admin/factory-reset", self.factory_reset, "Factory reset the box"),
        ]

    # --- who is asking, about whom --------------------------------------------------

    async def _scope(self, request: Request) -> AdminScope:
        scope = await scope_of(self.directory, request.user)
        if scope is None:
            who = request.user.address if request.user else None
            log.info("admin console refused: user=%s is no admin ip=%s", who, request.client_ip)
            raise _not_admin()
        return scope

    async def _target(self, request: Request, scope: AdminScope) -> User:
        address = request.params["address"]
        user = await self.console.target(scope, address)
        if user is None:
            log.info("admin=%s asked for unknown or out-of-scope user %r",
                     scope.admin.address, address[:320])  # fmt: skip
            raise _not_found()
        return user

    async def _agency(self, scope: AdminScope, domain: str) -> str:
        agency = await self.console.agency(scope, domain)
        if agency is None:
            raise _not_found()
        return agency.domain

    async def _render(
        self, request: Request, template: str, scope: AdminScope, *, status: int = 200,
        **values: Any,
    ) -> Response:  # fmt: skip
        return await self.kit.render(
            request, template, status=status, scope=scope, user_url=user_url,
            urgency_name=urgency_name, format_age=format_age, now=time.time(),
            service_label=service_label,
            saved_notices=SAVED, **values,
        )  # fmt: skip

    # --- overview ---------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        scope = await self._scope(request)
        return await self._render(
            request, "admin/overview.html", scope, section="overview",
            agencies=await self.console.agencies(scope),
            queue=await self.console.queue_summary(scope),
            health=await self.console.health(),
            link=read_uplink(self.config.data_dir),
        )  # fmt: skip

    # --- health -----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        scope = await self._scope(request)
        snapshot, findings = await self.console.health_report()
        return await self._render(
            request, "admin/health.html", scope, section="health",
            health=findings, snapshot=snapshot, worst=worst(findings),
        )  # fmt: skip

    # --- DKIM (read-only: keys are made and rotated with `edgebox dkim`) ----------------

    async def dkim(self, request: Request) -> Response:
        scope = await self._scope(request)
        domains = [summary.agency.domain for summary in await self.console.agencies(scope)]
        keyring = DkimKeyring(self.config.data_dir / "keys")

        def read() -> list[tuple[str, list[TxtRecord] | None]]:
            found: list[tuple[str, list[TxtRecord] | None]] = []
            for domain in domains:
                try:
                    found.append((domain, keyring.records(domain)))
                except (DkimKeyError, KeyMaterialError) as exc:
                    log.error("DKIM key of %s unreadable: %s", domain, exc)
                    found.append((domain, None))
            return found

        # Beside the keys, the SPF and DMARC records each domain should publish too.
        relay = self.config.central_smtp
        return await self._render(
            request, "admin/dkim.html", scope, section="dkim",
            dkim_domains=await trio.to_thread.run_sync(read),
            sender_records={domain: sender_records(domain, relay) for domain in domains},
        )  # fmt: skip

    # --- users ------------------------------------------------------------------------

    async def users(self, request: Request) -> Response:
        scope = await self._scope(request)
        return await self._users_page(request, scope)

    async def _users_page(
        self,
        request: Request,
        scope: AdminScope,
        *,
        values: dict[str, str] | None = None,
        error: Refusal | None = None,
        status: int = 200,
    ) -> Response:
        chosen = request.query.get("agency", "").strip()
        domain = await self._agency(scope, chosen) if chosen else None
        query = request.query.get("q", "").strip()[:200]
        page = _page_number(request.query.get("page", ""))
        found = search_users(await self.console.users(scope, domain), query)
        pages = max(1, -(-len(found) // PAGE_SIZE))
        page = min(page, pages)
        shown = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        usage = {user.address: await self.mailstore.usage(user.address) for user in shown}
        agencies = await self.console.agencies(scope)
        unit_domains = [domain] if domain else [a.agency.domain for a in agencies]
        units = sorted({unit.name_th for unit in await self.console.units(scope, unit_domains)})

        def link(number: int) -> str:
            params = {"agency": domain or "", "q": query, "page": str(number)}
            return "/admin/users?" + urlencode({k: v for k, v in params.items() if v})

        return await self._render(
            request, "admin/users.html", scope, status=status, section="users",
            agencies=agencies, agency=domain or "", query=query, users=shown, usage=usage,
            total=len(found), page=page, pages=pages, page_link=link, units=units,
            values=values or {}, error=error,
            example_domain=domain or (agencies[0].agency.domain if agencies else "example.go.th"),
        )  # fmt: skip

    async def add_user(self, request: Request) -> Response:
        scope = await self._scope(request)
        form = request.form
        values = {name: form.get(name) for name in ADD_FIELDS}
        try:
            user = await self._create_user(request, scope)
        except Refusal as exc:
            return await self._users_page(request, scope, values=values, error=exc, status=422)
        return redirect(user_url(user.address) + "?saved=added")

    async def _create_user(self, request: Request, scope: AdminScope) -> User:
        form = request.form
        try:
            address = normalise_address(form.get("address").strip())
        except DirectoryError as exc:
            raise Refusal(f"Not a valid mail address: {exc}", "ที่อยู่อีเมลไม่ถูกต้อง") from None
        domain = address.rpartition("@")[2]
        # Unknown and out-of-scope agencies get one answer: no probing for agencies.
        if await self.console.agency(scope, domain) is None:
            raise Refusal("You can add users only to the agencies you manage",
                          "ท่านเพิ่มผู้ใช้ได้เฉพาะในหน่วยงานที่ท่านดูแลเท่านั้น")  # fmt: skip
        if await self.directory.user(address) is not None:
            raise Refusal(f"{address} already exists", f"มีผู้ใช้ {address} อยู่แล้ว")
        name_th = form.get("name_th").strip()
        if not name_th:
            raise Refusal("Enter the Thai name", "กรุณากรอกชื่อภาษาไทย")
        rank_text = form.get("rank").strip()
        rank = parse_count(rank_text, "Rank", "ระดับ", MAX_RANK) if rank_text else 0
        quota_text = form.get("quota_mb").strip()
        quota = _quota_bytes(quota_text) if quota_text else None
        password = _new_password(form)
        unit = form.get("unit").strip() or None
        try:
            user = await create_account(
                self.directory, self.mailstore, address, password, name_th=name_th,
                name_en=form.get("name_en").strip() or None, rank=rank, unit=unit,
                position=form.get("position").strip() or None,
                phone=form.get("phone").strip() or None, quota_bytes=quota,
            )  # fmt: skip
        except DirectoryError as exc:
            raise _refusal(exc) from None
        await self.console.record(
            scope, "add-user", user.address,
            f"unit={user.unit or '-'} rank={user.rank} quota={user.quota_bytes // MB}MB",
            request.client_ip,
        )  # fmt: skip
        return user

    async def user(self, request: Request) -> Response:
        scope = await self._scope(request)
        target = await self._target(request, scope)
        return await self._user_page(request, scope, target)

    async def _user_page(
        self,
        request: Request,
        scope: AdminScope,
        target: User,
        *,
        error: Refusal | None = None,
        status: int = 200,
    ) -> Response:
        saved = request.query.get("saved", "") if error is None else ""
        grants = await self.directory.granted_domains(target.address)
        chart = await self.directory.units(target.agency_domain)
        units = sorted(unit.name_th for unit in chart)
        return await self._render(
            request, "admin/user.html", scope, status=status, section="users",
            target=target, usage=await self.mailstore.usage(target.address),
            may_change=await self.console.may_change(scope, target),
            grants=grants, units=units, saved=saved if saved in SAVED else "", error=error,
            self_edit=target.address == scope.admin.address,
        )  # fmt: skip

    # --- one change per form ----------------------------------------------------------

    async def _change(self, request: Request, action: str, apply: Change) -> Response:
        scope = await self._scope(request)
        target = await self._target(request, scope)
        if not await self.console.may_change(scope, target):
            log.warning("admin=%s refused %s on %s: target holds wider grants",
                        scope.admin.address, action, target.address)  # fmt: skip
            raise _beyond_scope()
        try:
            detail = await apply(scope, target, request.form)
        except DirectoryError as exc:
            return await self._user_page(request, scope, target, error=_refusal(exc), status=422)
        except Refusal as exc:
            return await self._user_page(request, scope, target, error=exc, status=422)
        await self.console.record(scope, action, target.address, detail, request.client_ip)
        return redirect(f"{user_url(target.address)}?saved={action}")

    async def _set_names(self, scope: AdminScope, target: User, form: Form) -> str:
        name_th = form.get("name_th").strip()
        if not name_th:
            raise Refusal("Enter the Thai name", "กรุณากรอกชื่อภาษาไทย")
        await self.directory.set_names(target.address, name_th, form.get("name_en") or None)
        return "names changed"

    async def _set_rank(self, scope: AdminScope, target: User, form: Form) -> str:
        rank = parse_count(form.get("rank"), "Rank", "ระดับ", MAX_RANK)
        await self.directory.set_rank(target.address, rank)
        return f"rank={rank}"

    async def _set_unit(self, scope: AdminScope, target: User, form: Form) -> str:
        unit = form.get("unit").strip() or None
        if unit is not None:
            # As when adding a user: a unit typed anew joins the agency's chart.
            await self.directory.ensure_unit(target.agency_domain, unit)
        await self.directory.set_unit(target.address, unit)
        return f"unit={unit or '-'}"

    async def _set_position(self, scope: AdminScope, target: User, form: Form) -> str:
        await self.directory.set_position(target.address, form.get("position") or None)
        return "position changed"

    async def _set_phone(self, scope: AdminScope, target: User, form: Form) -> str:
        await self.directory.set_phone(target.address, form.get("phone") or None)
        return "phone changed"

    async def _set_quota(self, scope: AdminScope, target: User, form: Form) -> str:
        quota = _quota_bytes(form.get("quota_mb"))
        await self.directory.set_quota(target.address, quota)
        return f"quota={quota // MB}MB"

    async def _disable(self, scope: AdminScope, target: User, form: Form) -> str:
        if target.address == scope.admin.address:
            raise Refusal("You cannot disable your own account",
                          "ท่านไม่สามารถระงับบัญชีของตนเองได้")  # fmt: skip
        await self.directory.set_disabled(target.address, True)
        # As `edgebox user disable`: whoever is signed in is signed out now.
        ended = await self.sessions.revoke_all(target.address)
        return f"disabled; {ended} sessions ended"

    async def _enable(self, scope: AdminScope, target: User, form: Form) -> str:
        await self.directory.set_disabled(target.address, False)
        return "enabled"

    async def _reset_password(self, scope: AdminScope, target: User, form: Form) -> str:
        password = _new_password(form)
        await self.directory.set_password(target.address, password)
        # As `edgebox user passwd`: whoever knew the old password is signed out.
        ended = await self.sessions.revoke_all(target.address)
        return f"password reset; {ended} sessions ended"

    async def _revoke_sessions(self, scope: AdminScope, target: User, form: Form) -> str:
        ended = await self.sessions.revoke_all(target.address)
        return f"{ended} sessions ended"

    # --- org chart --------------------------------------------------------------------

    async def org(self, request: Request) -> Response:
        scope = await self._scope(request)
        return await self._org_page(request, scope)

    async def _org_page(
        self,
        request: Request,
        scope: AdminScope,
        *,
        domain: str | None = None,
        error: Refusal | None = None,
        status: int = 200,
    ) -> Response:
        agencies = await self.console.agencies(scope)
        if domain is None:
            chosen = request.query.get("agency", "").strip()
            if chosen:
                domain = await self._agency(scope, chosen)
            elif agencies:
                domain = agencies[0].agency.domain
            else:
                raise _not_found()
        saved = request.query.get("saved", "") if error is None else ""
        return await self._render(
            request, "admin/org.html", scope, status=status, section="org",
            agencies=agencies, agency=domain, chart=await self.console.org_chart(scope, domain),
            units=await self.directory.units(domain), error=error,
            saved=saved if saved in SAVED else "",
        )  # fmt: skip

    async def add_unit(self, request: Request) -> Response:
        scope = await self._scope(request)
        form = request.form
        # The agency comes from a hidden field: checked against the scope like any input.
        domain = await self._agency(scope, form.get("agency").strip())
        name_th = form.get("name_th").strip()
        parent = form.get("parent").strip() or None
        existing = {unit.name_th for unit in await self.directory.units(domain)}
        try:
            if not name_th:
                raise Refusal("Enter the unit's Thai name", "กรุณากรอกชื่อหน่วยงานย่อยภาษาไทย")
            if name_th in existing:
                raise Refusal(f"There is already a unit named {name_th}",
                              f"มีหน่วยงานย่อยชื่อ {name_th} อยู่แล้ว")  # fmt: skip
            if parent is not None and parent not in existing:
                raise Refusal("Choose the parent unit from the list",
                              "กรุณาเลือกหน่วยงานต้นสังกัดจากรายการ")  # fmt: skip
            await self.directory.ensure_unit(
                domain, name_th, form.get("name_en").strip() or None, parent
            )
        except DirectoryError as exc:
            return await self._org_page(request, scope, domain=domain, error=_refusal(exc),
                                        status=422)  # fmt: skip
        except Refusal as exc:
            return await self._org_page(request, scope, domain=domain, error=exc, status=422)
        await self.console.record(scope, "add-unit", None,
                                  f"{domain}: {name_th} under {parent or '-'}",
                                  request.client_ip)  # fmt: skip
        return redirect("/admin/org?" + urlencode({"agency": domain, "saved": "unit-added"}))

    # --- outbound queue ---------------------------------------------------------------

    async def queue(self, request: Request) -> Response:
        scope = await self._scope(request)
        return await self._render(
            request, "admin/queue.html", scope, section="queue",
            summary=await self.console.queue_summary(scope),
            items=await self.console.queue(scope),
        )  # fmt: skip

    # --- sign-in protection -------------------------------------------------------------

    async def security(self, request: Request) -> Response:
        scope = await self._scope(request)
        return await self._security_page(request, scope)

    async def _security_page(
        self, request: Request, scope: AdminScope, *, error: Refusal | None = None,
        status: int = 200,
    ) -> Response:  # fmt: skip
        saved = request.query.get("saved", "") if error is None else ""
        policy = self.guard.policy
        return await self._render(
            request, "admin/security.html", scope, status=status, section="security",
            watch=self.console.sign_in_watch(scope), policy=policy, error=error,
            saved=saved if saved in SAVED else "",
            per_connection=self.config.auth_failures_per_connection,
        )  # fmt: skip

    async def unlock_source(self, request: Request) -> Response:
        scope = await self._scope(request)
        source = request.form.get("source").strip()[:100]
        try:
            self.console.unlock_source(scope, source)
        except Refusal as exc:
            return await self._security_page(request, scope, error=exc, status=422)
        await self.console.record(scope, "unlock-source", None, f"source={source}",
                                  request.client_ip)  # fmt: skip
        return redirect("/admin/security?saved=source-unlocked")

    async def unlock_account(self, request: Request) -> Response:
        scope = await self._scope(request)
        account = request.form.get("account").strip()[:320]
        try:
            self.console.unlock_account(scope, account)
        except Refusal as exc:
            return await self._security_page(request, scope, error=exc, status=422)
        await self.console.record(scope, "unlock-account", account, "failed sign-ins forgotten",
                                  request.client_ip)  # fmt: skip
        return redirect("/admin/security?saved=account-unlocked")

    # --- system updates (appliance.update; docs/updates.md) ------------------------------

    async def update_page(self, request: Request) -> Response:
        scope = await self._box_admin(request, "see and install its system updates",
                                      "ดูและติดตั้งการปรับรุ่นระบบ")  # fmt: skip
        return await self._update_page(request, scope)

    async def _update_page(
        self, request: Request, scope: AdminScope, *, error: Refusal | None = None,
        status: int = 200,
    ) -> Response:  # fmt: skip
        summary = await trio.to_thread.run_sync(
            update_summary, self.config.data_dir, self.rauc, time.time()
        )
        saved = request.query.get("saved", "") if error is None else ""
        return await self._render(
            request, "admin/update.html", scope, status=status, section="update",
            saved=saved if saved in SAVED else "",
            update=summary, error=error, installs=self.config.updates,
            window=self.config.update_window, channel=self.config.update_channel,
        )  # fmt: skip

    async def install_now(self, request: Request) -> Response:
        """The admin's "install now": written down, then the channel's follower woken."""
        scope = await self._box_admin(request, "install system updates",
                                      "ติดตั้งการปรับรุ่นระบบ")  # fmt: skip
        summary = await trio.to_thread.run_sync(
            update_summary, self.config.data_dir, self.rauc, time.time()
        )
        if not self.config.updates:
            return await self._update_page(request, scope, status=409, error=Refusal(
                "this box does not install updates (the setting updates is off)",
                "เครื่องนี้ปิดการติดตั้งการปรับรุ่นไว้ (ค่า updates ปิดอยู่)"))  # fmt: skip
        if not summary.may_install_now or summary.offer is None or summary.offer.offer is None:
            return await self._update_page(request, scope, status=409, error=Refusal(
                "the hub offers nothing newer to install",
                "ศูนย์ไม่มีรุ่นที่ใหม่กว่าให้ติดตั้ง"))  # fmt: skip
        version = summary.offer.offer.version
        await trio.to_thread.run_sync(
            request_install_now, self.config.data_dir, scope.admin.address, time.time()
        )
        if self.install_now_bell is not None:
            self.install_now_bell.ring()  # the follower acts now, not at its next look
        await self.console.record(scope, "update-install-now", None, f"release {version}",
                                  request.client_ip)  # fmt: skip
        log.warning("install-now of %s by %s ip=%s", version, scope.admin.address,
                    request.client_ip)  # fmt: skip
        return redirect("/admin/update?saved=install-now")

    # --- backups and the recovery sheet (appliance.backup; docs/backup.md) ---------------

    async def backup(self, request: Request) -> Response:
        scope = await self._box_admin(request)
        return await self._backup_page(request, scope)

    async def _backup_page(
        self, request: Request, scope: AdminScope, *, error: Refusal | None = None,
        status: int = 200, sheet: RecoverySheet | None = None,
    ) -> Response:  # fmt: skip
        state = await trio.to_thread.run_sync(read_backup_state, self.config.data_dir)
        return await self._render(
            request, "admin/backup.html", scope, status=status, section="backup",
            state=state, target=self.config.backup_target, hub_url=self.config.hub_url,
            offsite=self.config.backup_offsite, error=error, sheet=sheet,
            identity=self.identity,
        )  # fmt: skip

    async def recovery_sheet(self, request: Request) -> Response:
        """Show the backup key as the agency's recovery sheet, after the password again.

        The key opens every backup of the box: like the factory reset, only an admin of
        the whole box sees it, after typing their password again, and it is logged.
        """
        scope = await self._box_admin(request)
        checked = await self.signin.check(
            "web", scope.admin.address, request.form.get("password"), request.client_ip
        )
        if not isinstance(checked, User) or checked.address != scope.admin.address:
            return await self._backup_page(
                request, scope, status=403,
                error=Refusal("wrong password; the sheet is not shown",
                              "รหัสผ่านไม่ถูกต้อง จึงไม่แสดงแผ่นกุญแจกู้คืน"),
            )  # fmt: skip
        sheet = await trio.to_thread.run_sync(
            recovery_sheet, self.config.data_dir, self.identity, self.config.hub_url
        )
        shown = f"backup key {sheet.key_id} shown"
        await self.console.record(scope, "recovery-sheet", None, shown, request.client_ip)
        return await self._backup_page(request, scope, sheet=sheet)

    # --- factory reset (appliance.provisioning.reset; docs/provisioning.md) ---------------

    async def _box_admin(
        self, request: Request, what_en: str = "reset it", what_th: str = "ล้างเครื่อง"
    ) -> AdminScope:
        scope = await self._scope(request)
        if not scope.box_wide:
            # An agency admin manages their agency; erasing or updating the box takes
            # every agency on it along, so only an admin of the whole box may.
            raise ApiError(403, "not_box_admin",
                           f"Only an administrator of the whole box may {what_en}",
                           f"เฉพาะผู้ดูแลระบบของทั้งเครื่องเท่านั้นที่{what_th}ได้")  # fmt: skip
        return scope

    async def factory_reset_page(self, request: Request) -> Response:
        scope = await self._box_admin(request)
        return await self._reset_page(request, scope)

    async def _reset_page(
        self, request: Request, scope: AdminScope, *, error: Refusal | None = None,
        status: int = 200, resetting: bool = False,
    ) -> Response:  # fmt: skip
        return await self._render(
            request, "admin/factory_reset.html", scope, status=status, section="reset",
            error=error, resetting=resetting, available=self.lifecycle is not None,
            box_id=self.identity.box_id,
        )  # fmt: skip

    async def factory_reset(self, request: Request) -> Response:
        """Check the admin's password again and the typed confirmation, then reset."""
        scope = await self._box_admin(request)
        if self.lifecycle is None:
            return await self._reset_page(
                request, scope, status=409,
                error=Refusal("this server cannot reset itself; use `edgebox factory-reset`",
                              "เซิร์ฟเวอร์นี้ล้างตัวเองไม่ได้ ใช้คำสั่ง edgebox factory-reset"),
            )  # fmt: skip
        confirm = request.form.get("confirm").strip().lower()
        if confirm != self.identity.box_id[:6]:
            return await self._reset_page(
                request, scope, status=422,
                error=Refusal("type the box's short id to confirm",
                              "กรุณาพิมพ์รหัสเครื่องแบบสั้นเพื่อยืนยัน"),
            )  # fmt: skip
        checked = await self.signin.check(
            "web", scope.admin.address, request.form.get("password"), request.client_ip
        )
        if not isinstance(checked, User) or checked.address != scope.admin.address:
            return await self._reset_page(
                request, scope, status=403,
                error=Refusal("wrong password; nothing was changed",
                              "รหัสผ่านไม่ถูกต้อง ไม่มีการเปลี่ยนแปลงใด ๆ"),
            )  # fmt: skip
        await self.console.record(scope, "factory-reset", None, "the box is being erased",
                                  request.client_ip)  # fmt: skip
        log.warning("factory reset by %s ip=%s", scope.admin.address, request.client_ip)
        self.lifecycle.request_reset()
        return await self._reset_page(request, scope, resetting=True)


def _page_number(text: str) -> int:
    return max(1, int(text)) if text.isascii() and text.isdigit() and 0 < len(text) < 7 else 1


def _quota_bytes(text: str) -> int:
    megabytes = parse_count(text, "The quota in MB", "ขนาดกล่องจดหมาย (MB) ", MAX_QUOTA_MB)
    if megabytes < 1:
        raise Refusal("The quota must be at least 1 MB", "ขนาดกล่องจดหมายต้องไม่น้อยกว่า 1 MB")
    return megabytes * MB


def _new_password(form: Form) -> str:
    """The password typed twice on a form, with the CLI's rules (not empty, not huge)."""
    password = form.get("password")
    if not password:
        raise Refusal("Enter the new password", "กรุณากรอกรหัสผ่าน")
    if len(password) > MAX_PASSWORD_CHARS:
        raise Refusal(f"The password may have at most {MAX_PASSWORD_CHARS} characters",
                      f"รหัสผ่านยาวได้ไม่เกิน {MAX_PASSWORD_CHARS} ตัวอักษร")  # fmt: skip
    if form.get("password_confirm") != password:
        raise Refusal("The two passwords differ", "รหัสผ่านทั้งสองช่องไม่ตรงกัน")
    return password
