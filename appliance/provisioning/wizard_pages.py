"""The web setup wizard at ``/setup``: server-rendered pages over the saved draft.

An unprovisioned box serves these pages and the setup API (setup_api.py) on its HTTPS
port, and nothing else: every other page redirects to ``/setup``.

- ``GET /setup``: the claim page (state, box id, certificate fingerprint, the setup
  code field), or, for a browser that holds a claim, the step the draft stopped at;
- ``POST /setup/claim``: the setup code; a right one gives the browser a claim (the
  session cookie), a wrong one goes through the same `AuthGuard` as the API's;
- ``GET``/``POST /setup/{step}``: each step (wizard.py `STEPS`), saved on every post;
- ``POST /setup/uplink-check``: the live check of the hub and the central mail servers
  (uplink_check.py), shown on the uplink page without saving;
- ``POST /setup/apply``: provision (or restore the backup, with the recovery key typed
  again on the review page: the draft keeps only its fingerprint), write the OS's network and
  time files, enrol with the hub, forget the draft, and hand over to the full services.

Forms post with the page's CSRF token (server.py: the claim cookie is the session token
for that rule) and come from our own Origin. Pages are Thai first, English on the
language step or ``?lang=en``, and laid out for a 360-px phone as well as a desktop.

What this is not: the checks of the answers (wizard.py), provisioning (provision.py) or
the HTTPS machinery (appliance.web.server, appliance.net).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jinja2
import trio

from appliance.backup.crypto import BadRecoveryKey, key_id, words_to_key
from appliance.backup.restore import RestoreError, find_backup, restore_backup
from appliance.backup.snapshot import KEY_ID_FILE
from appliance.box import open_box
from appliance.directory.preferences import Preferences
from appliance.identity import read_identity
from appliance.provisioning.enrol import EnrolError, enroll
from appliance.provisioning.lifecycle import BoxState, Lifecycle
from appliance.provisioning.provision import (
    ProvisioningError,
    ProvisioningRequest,
    discard_unfinished,
    provision,
)
from appliance.provisioning.reset import KEPT
from appliance.provisioning.setup_api import SetupApi, already_provisioned
from appliance.provisioning.system_files import system_root, write_system_files
from appliance.provisioning.uplink_check import CheckLine, check_uplink
from appliance.provisioning.wizard import (
    HUB_SOURCE,
    STEPS,
    Draft,
    StepError,
    check_step,
    forget_draft,
    load_draft,
    save_draft,
)
from appliance.store.files import fsync_dir
from appliance.web import i18n
from appliance.web.csrf import CSRF_FIELD, csrf_token_for
from appliance.web.pages import HTML, TEMPLATES, StaticFile, load_static, redirect
from appliance.web.routes import ApiError, Language, Request, Response, Route
from appliance.web.session_api import session_cookie

log = logging.getLogger("edgebox.setup")

#: A claim lasts as long as a setup might (the draft forgets it at apply anyway).
CLAIM_AGE: Final = 7 * 24 * 3600
FORM_LIMIT: Final = 64 * 1024

#: Steps a new agency needs answered before apply; a restore brings its own agency.
_NEEDED_NEW: Final = ("agency", "admin", "network", "time", "uplink")
_NEEDED_RESTORE: Final = ("network", "time", "uplink", "restore")
#: Steps that may be passed empty, for a restore (their answers come from the backup).
SKIPPABLE: Final = ("agency", "admin")


#: ``(blank staging folder, hub URL, enrolment token, box id, domain, key)`` → the
#: restored set's name; `appliance.backup.hub_restore.restore_from_hub` in the box.
HubRestorer = Callable[[Path, str, str, str, str, bytes], Awaitable[str]]


@dataclass
class ApplyReport:
    """What apply did, for the done page (and the log)."""

    domain: str = ""
    admin: str = ""
    restored: str = ""
    files: list[str] = field(default_factory=list)
    enrolled: str = ""
    #: (English, Thai) of what went wrong after the box was provisioned.
    problems: list[tuple[str, str]] = field(default_factory=list)


class SetupWizard:
    """The wizard's pages for one unprovisioned box."""

    def __init__(
        self, config: Any, lifecycle: Lifecycle, api: SetupApi,
        *, hub_restorer: HubRestorer | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.lifecycle = lifecycle
        self.api = api
        #: Restores a box from its hub (appliance.backup.hub_restore, handed in by the
        #: registry: it re-enrols, which is above this layer); None: folders only.
        self.hub_restorer = hub_restorer
        self.data_dir: Path = lifecycle.data_dir
        self.static_files: dict[str, StaticFile] = load_static()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,  # as every page of the box: escaping is never opt-in
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["static"] = self._static_url

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
            return Route(method, path, handler, summary, tag="setup", kind="page", auth=False,
                         **extra)  # fmt: skip

        return [
            page("GET", "/setup", self.start, "Setup wizard: claim, or resume"),
            page("POST", "/setup/claim", self.claim, "Setup wizard: the setup code",
                 max_body=8 * 1024, errors=(403, 429)),
            page("GET", "/setup/{step}", self.show, "Setup wizard: one step"),
            page("POST", "/setup/{step}", self.save, "Setup wizard: save one step",
                 max_body=FORM_LIMIT, errors=(422,)),
            page("POST", "/setup/uplink-check", self.uplink_check,
                 "Setup wizard: check the hub and the central mail servers", max_body=FORM_LIMIT),
            page("POST", "/setup/apply", self.apply, "Setup wizard: set the box up",
                 max_body=8 * 1024, errors=(422,)),
            page("GET", "/static/{name}", self.static, "Style sheet, scripts"),
            # Every other page leads to the wizard while the box is unprovisioned.
            page("GET", "/", self.elsewhere, "Setup: every page leads to /setup"),
            page("GET", "/{a}", self.elsewhere, "Setup: every page leads to /setup"),
            page("GET", "/{a}/{b}", self.elsewhere, "Setup: every page leads to /setup"),
            page("GET", "/{a}/{b}/{c}", self.elsewhere, "Setup: every page leads to /setup"),
        ]  # fmt: skip

    # --- rendering --------------------------------------------------------------------

    def _static_url(self, name: str) -> str:
        file = self.static_files[name]
        return f"/static/{name}?v={file.etag.strip(chr(34))[:10]}"

    def _lang(self, request: Request, draft: Draft | None) -> Language:
        chosen = request.query.get("lang")
        if chosen in ("th", "en"):
            return chosen  # type: ignore[return-value]
        if draft is not None and draft.has_claim(request.token):
            return draft.lang  # type: ignore[return-value]
        return "th"  # Thai first (REQUIREMENTS.md §2), whatever the browser prefers

    def _render(
        self,
        request: Request,
        template: str,
        draft: Draft | None,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        language: Language | None = None,
        **values: Any,
    ) -> Response:
        lang = language or self._lang(request, draft)
        status_now = self.lifecycle.status()
        context: dict[str, Any] = {
            "user": None,
            "lang": lang,
            "prefs": Preferences(),
            "tr": i18n.translator(lang),
            "csrf_token": csrf_token_for(request.token) if request.token else "",
            "csrf_field": CSRF_FIELD,
            "is_admin": False,
            "display_name": lambda person: "",
            "path": request.path,
            "box": status_now,
            "steps": STEPS,
            "draft": draft,
            # A language chosen by link (?lang=) stays on the forms and links.
            "qs": _lang_query(request),
        }
        context.update(values)
        text = self.env.get_template(template).render(context)
        return Response(body=text.encode("utf-8"), status=status, content_type=HTML,
                        headers=dict(headers or {}))  # fmt: skip

    # --- claim ---------------------------------------------------------------------------

    def _refuse_if_provisioned(self) -> None:
        if self.lifecycle.state is not BoxState.UNPROVISIONED or read_identity(self.data_dir):
            raise already_provisioned()

    async def _draft(self) -> Draft:
        return await trio.to_thread.run_sync(load_draft, self.data_dir)

    async def _claimed(self, request: Request) -> Draft | None:
        self._refuse_if_provisioned()
        draft = await self._draft()
        return draft if draft.has_claim(request.token) else None

    async def start(self, request: Request) -> Response:
        self._refuse_if_provisioned()
        draft = await self._draft()
        if draft.has_claim(request.token):
            return redirect(f"/setup/{draft.current}")
        return self._render(request, "setup/claim.html", None, error=None)

    async def claim(self, request: Request) -> Response:
        self._refuse_if_provisioned()
        try:
            await self.api.check_code(request.form.get("code"), request.client_ip)
        except ApiError as exc:
            lang = self._lang(request, None)
            error = exc.message_th if lang == "th" else exc.message_en
            return self._render(request, "setup/claim.html", None, status=exc.status,
                                headers=exc.headers, error=error)  # fmt: skip
        token = secrets.token_urlsafe(32)
        async with self.api.lock:
            draft = await self._draft()
            draft.add_claim(token)
            await trio.to_thread.run_sync(save_draft, self.data_dir, draft)
        log.info("setup claimed from ip=%s", request.client_ip)
        where = f"/setup/{draft.current}{_lang_query(request)}"
        return redirect(where, headers={"Set-Cookie": session_cookie(token, CLAIM_AGE)})

    # --- the steps ------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        draft = await self._claimed(request)
        step = request.params["step"]
        if draft is None:
            return redirect("/setup")
        if step not in STEPS:
            raise ApiError(404, "not_found", "No such step", "ไม่พบขั้นตอนนี้")
        if not draft.open_to(step):
            return redirect(f"/setup/{draft.current}")
        return self._step_page(request, draft, step, dict(draft.step_answers(step)))

    def _step_page(
        self,
        request: Request,
        draft: Draft,
        step: str,
        values: dict[str, Any],
        *,
        status: int = 200,
        error: StepError | None = None,
        checks: list[CheckLine] | None = None,
    ) -> Response:
        return self._render(
            request, "setup/step.html", draft, status=status, step=step,
            index=STEPS.index(step), values=values, error=error, checks=checks,
            skippable=step in SKIPPABLE,
            missing=_missing(draft), defaults=self._defaults(),
        )  # fmt: skip

    def _defaults(self) -> dict[str, str]:
        return {"hostname": self.lifecycle.device.hostname.removesuffix(".local")}

    async def save(self, request: Request) -> Response:
        draft = await self._claimed(request)
        step = request.params["step"]
        if draft is None:
            return redirect("/setup")
        if step not in STEPS or not draft.open_to(step):
            return redirect(f"/setup/{draft.current}")
        fields = {name: request.form.get(name) for name in request.form.fields}
        try:
            if step in SKIPPABLE and fields.get("skip") == "1":
                # Restoring a backup brings its own agency and admin: the technician
                # may pass these two steps empty (apply then needs the restore step).
                answers: dict[str, Any] = {}
            else:
                # In a thread: the admin step hashes the password (scrypt, ~0.1 s).
                answers = await trio.to_thread.run_sync(check_step, step, fields, draft)
            if step == "uplink" and answers.get("mode") == "hub":
                checks = await check_uplink(self.data_dir, answers["hub_url"], answers["token"])
                if not all(line.ok for line in checks):
                    return self._step_page(request, draft, step, fields, status=422,
                                           checks=checks)  # fmt: skip
            if step == "restore" and answers:
                await trio.to_thread.run_sync(check_backup, answers)
        except StepError as exc:
            return self._step_page(request, draft, step, fields, status=422, error=exc)
        async with self.api.lock:
            draft = await self._draft()
            draft.save_step(step, answers)
            admin = draft.step_answers("admin").get("address", "")
            if step == "agency" and admin and admin.rpartition("@")[2] != answers.get("domain"):
                # A new domain: the admin's address was in the old one, so it is asked again
                # (review names the step) rather than refused at apply.
                del draft.answers["admin"]
            await trio.to_thread.run_sync(save_draft, self.data_dir, draft)
        following = STEPS[min(STEPS.index(step) + 1, len(STEPS) - 1)]
        # The language step's answer is the language from here on, whatever the link said.
        query = "" if step == "language" else _lang_query(request)
        return redirect(f"/setup/{following}{query}")

    async def uplink_check(self, request: Request) -> Response:
        draft = await self._claimed(request)
        if draft is None:
            return redirect("/setup")
        fields = {name: request.form.get(name) for name in request.form.fields}
        fields["mode"] = "hub"
        try:
            answers = check_step("uplink", fields, draft)
        except StepError as exc:
            return self._step_page(request, draft, "uplink", fields, status=422, error=exc)
        checks = await check_uplink(self.data_dir, answers["hub_url"], answers["token"])
        return self._step_page(request, draft, "uplink", fields, checks=checks)

    # --- apply ----------------------------------------------------------------------------

    async def apply(self, request: Request) -> Response:
        draft = await self._claimed(request)
        if draft is None:
            return redirect("/setup")
        missing = _missing(draft)
        if missing:
            return redirect(f"/setup/{missing[0]}")
        words = ""
        if draft.restoring:
            # The draft kept only the key's fingerprint (wizard._restore says why).
            words = request.form.get("key") or ""
            try:
                check_key(words, draft.step_answers("restore"))
            except StepError as exc:
                return self._step_page(request, draft, "review", {}, status=422, error=exc)
        async with self.api.lock:
            self._refuse_if_provisioned()
            try:
                report = await self._apply(draft, words)
            except ProvisioningError as exc:
                return self._step_page(
                    request, draft, "review", {}, status=422,
                    error=StepError("apply", exc.message_en, exc.message_th),
                )  # fmt: skip
            lang = self._lang(request, draft)
            # The draft (and the password's hash) goes once the box is set up; so do the
            # claims.
            await trio.to_thread.run_sync(forget_draft, self.data_dir)
            log.info("set up by the wizard for %s from ip=%s", report.domain, request.client_ip)
            self.lifecycle.provisioned()
        # The done page in the wizard's language, though the draft (and the claim) is gone.
        return self._render(
            request, "setup/done.html", None, language=lang, report=report,
            headers={"Set-Cookie": session_cookie("", 0)},
        )  # fmt: skip

    async def _apply(self, draft: Draft, words: str) -> ApplyReport:
        """Set the box up from *draft*; *words* is the recovery key for a restore."""
        report = ApplyReport()
        from_hub = draft.step_answers("restore").get("source") == HUB_SOURCE
        if draft.restoring:
            restore = {**draft.step_answers("restore"), "key": words}
            try:
                if from_hub:
                    report.restored = await self._restore_from_hub(
                        restore, draft.step_answers("uplink")
                    )
                else:
                    report.restored = await trio.to_thread.run_sync(
                        restore_onto, self.data_dir, restore
                    )
            except (RestoreError, BadRecoveryKey, OSError) as exc:
                raise ProvisioningError(f"the backup was not restored: {exc}",
                                        f"กู้คืนข้อมูลสำรองไม่สำเร็จ: {exc}") from None  # fmt: skip
            identity = read_identity(self.data_dir)
            assert identity is not None  # the backup's, written last by restore_onto
            report.domain = identity.domain
        else:
            agency, admin = draft.step_answers("agency"), draft.step_answers("admin")
            wanted = ProvisioningRequest(
                domain=agency["domain"], agency_name_th=agency["name_th"],
                agency_name_en=agency.get("name_en"), admin_address=admin["address"],
                admin_name_th=admin["name_th"], admin_name_en=admin.get("name_en"),
                admin_password_hash=admin["password_hash"],
            )  # fmt: skip
            identity = await provision(self.data_dir, wanted)
            report.domain, report.admin = identity.domain, admin["address"]
            if agency.get("units"):
                await self._add_units(identity.domain, agency["units"], report)
        root = system_root(self.config)
        try:
            report.files = await trio.to_thread.run_sync(
                write_system_files, root, draft.step_answers("network"),
                draft.step_answers("time"),
            )  # fmt: skip
        except OSError as exc:
            report.problems.append((
                f"the network and time files were not written to {root}: {exc}",
                f"เขียนไฟล์ตั้งค่าเครือข่ายและเวลาไม่ได้: {exc}",
            ))  # fmt: skip
        uplink = draft.step_answers("uplink")
        if from_hub:
            # The restore re-enrolled the box as itself with the uplink step's token.
            report.enrolled = uplink["hub_url"]
        elif uplink.get("mode") == "hub":
            try:
                done = await enroll(self.data_dir, uplink["hub_url"], uplink["token"])
                report.enrolled = done.hub_url
            except (EnrolError, OSError) as exc:
                # The box is set up already: it works standalone, and `edgebox enroll`
                # (or the admin console) enrols it later with a new token.
                report.problems.append((f"enrolment failed: {exc}",
                                        f"ลงทะเบียนกับศูนย์ไม่สำเร็จ: {exc}"))  # fmt: skip
        for en, _th in report.problems:
            log.warning("setup: %s", en)
        return report

    async def _add_units(
        self, domain: str, units: list[dict[str, Any]], report: ApplyReport
    ) -> None:
        try:
            async with open_box(self.config) as box:
                for unit in units:
                    await box.directory.ensure_unit(domain, unit["name_th"], unit.get("name_en"))
        except Exception as exc:  # the box is provisioned; units can be added later
            log.exception("setup: org units not added")
            report.problems.append((f"org units not added: {exc}",
                                    f"เพิ่มหน่วยงานย่อยไม่สำเร็จ: {exc}"))  # fmt: skip

    async def _restore_from_hub(self, answers: dict[str, Any], uplink: dict[str, Any]) -> str:
        """Restore the box named at the restore step from the uplink step's hub."""
        if self.hub_restorer is None:
            raise RestoreError("this server cannot restore from a hub; use "
                               "`edgebox backup restore --from https://…`")  # fmt: skip
        key = words_to_key(answers["key"])
        staging = self.data_dir / "restored"
        await trio.to_thread.run_sync(discard_unfinished, self.data_dir)
        if staging.exists():
            await trio.to_thread.run_sync(shutil.rmtree, staging)
        name = await self.hub_restorer(
            staging, uplink["hub_url"], uplink["token"], answers["box_id"], answers["domain"], key
        )
        await trio.to_thread.run_sync(adopt_restored, self.data_dir, staging)
        return name

    # --- the rest ----------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        file = self.static_files.get(request.params["name"])
        if file is None:
            raise ApiError(404, "not_found", "No such file", "ไม่พบไฟล์")
        headers = {"ETag": file.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == file.etag:
            return Response(status=304, headers=headers)
        return Response(body=file.content, content_type=file.content_type, headers=headers)

    async def elsewhere(self, request: Request) -> Response:
        if request.path.startswith("/api/"):
            raise ApiError(404, "not_found", "No such address", "ไม่พบที่อยู่นี้")
        return redirect("/setup")


def _lang_query(request: Request) -> str:
    lang = request.query.get("lang")
    return f"?lang={lang}" if lang in ("th", "en") else ""


def _missing(draft: Draft) -> list[str]:
    """The steps apply still needs answered, in wizard order."""
    needed = _NEEDED_RESTORE if draft.restoring else _NEEDED_NEW
    return [step for step in needed if not draft.answers.get(step)]


def check_key(words: str, answers: dict[str, Any]) -> None:
    """Refuse recovery key *words* that are not the key the restore step was given."""
    try:
        key = words_to_key(words)
    except BadRecoveryKey as exc:
        raise StepError("key", f"the recovery key is not valid: {exc}",
                        f"กุญแจกู้คืนไม่ถูกต้อง: {exc}") from None  # fmt: skip
    if key_id(key) != answers.get("key_id"):
        raise StepError("key", "not the recovery key given at the restore step",
                        "ไม่ใช่กุญแจกู้คืนที่ระบุไว้ในขั้นตอนกู้คืนข้อมูล")  # fmt: skip


def check_backup(answers: dict[str, Any]) -> None:
    """Refuse a backup folder that holds no backup, or a key that is not its key.

    *answers* are the restore step's: the folder and the key's fingerprint. A backup at
    the hub is not looked at here: asking would spend the enrolment token.
    """
    if answers.get("source") == HUB_SOURCE:
        return
    try:
        backup = find_backup(Path(answers["source"]))
    except (RestoreError, OSError) as exc:
        raise StepError("source", str(exc), f"ไม่พบข้อมูลสำรองที่ {answers['source']}") from None
    try:
        needed = (backup / KEY_ID_FILE).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        needed = ""
    if needed and needed != answers["key_id"]:
        raise StepError("key", f"backup {backup.name} was made with another key ({needed})",
                        f"ข้อมูลสำรอง {backup.name} ใช้กุญแจอื่น ({needed})")  # fmt: skip


def restore_onto(data_dir: Path, answers: dict[str, Any]) -> str:
    """Restore the backup into the running unprovisioned box; return the backup's name.

    `restore_backup` wants a blank folder, and this one holds the device and the run
    state: the backup is restored (and checked) into ``DATA/restored`` first, then its
    entries are moved in, ``config.json`` (the identity) last. A crash before that
    last rename leaves an unprovisioned box whose next start discards the rest.
    """
    key = words_to_key(answers["key"])
    discard_unfinished(data_dir)
    staging = data_dir / "restored"
    if staging.exists():
        shutil.rmtree(staging)
    done = restore_backup(staging, Path(answers["source"]), key)
    adopt_restored(data_dir, staging)
    return done.name


def adopt_restored(data_dir: Path, staging: Path) -> None:
    """Move a box restored into *staging* into the running blank box at *data_dir*.

    Its entries are moved in, ``config.json`` (the identity) last, so a crash before
    that last rename leaves an unprovisioned box whose next start discards the rest.
    """
    entries = sorted(p for p in staging.iterdir() if p.name not in KEPT)
    identity = staging / "config.json"
    if not identity.exists():
        shutil.rmtree(staging)
        raise RestoreError("the backup holds no box identity (config.json)")
    for entry in entries:
        if entry.name == "config.json":
            continue
        target = data_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.rename(entry, target)
    fsync_dir(data_dir)
    os.replace(identity, data_dir / "config.json")
    fsync_dir(data_dir)
    shutil.rmtree(staging, ignore_errors=True)
