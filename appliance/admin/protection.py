"""The admin console's protection page: per agency, what scanning kept out or put in
Junk, the spam scores, and the allow and block lists of senders (docs/protection.md).

- **The quarantine view** is read from the traffic log, where every verdict is written
  (appliance.mail.smtp.server: "250 2.0.0 junk score=8.10", "554 5.7.1 virus ...").
  The box keeps no copy of a refused message — the sender's server holds it and was
  told why — so the view lists the verdicts with their scores, and Junk deliveries,
  which the recipient finds in their Junk folder.
- **Thresholds** are the same settings as ``edgebox agency thresholds`` (the
  ``protection`` section of ``config.json``); a running box reads them for every
  message, so a change applies to the next one.
- **Sender lists**: addresses or domains, one a line. Allow skips the spam verdict;
  it never skips the virus verdict. Block refuses with 550 5.7.1 (appliance.protection
  .verdict).

Scope as on every admin page: an agency admin sees and changes only their agencies,
and an agency outside the scope is answered like an unknown one (404). Every change is
audited in the traffic log.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import trio

from appliance.admin.console import AdminConsole, Refusal
from appliance.compliance.traffic_log import TrafficLog, TrafficRecord, iter_records
from appliance.config import Config
from appliance.directory import Directory
from appliance.directory.scope import AdminScope, scope_of
from appliance.protection.commands import SECTION
from appliance.protection.verdict import Thresholds
from appliance.store.settings import Settings
from appliance.web.pages import PageKit, redirect
from appliance.web.routes import ApiError, Request, Response, Route

#: How far back the quarantine view looks, and how many rows it shows at most.
QUARANTINE_DAYS: Final = 7
QUARANTINE_ROWS: Final = 200
#: Entries per list: a list is for exceptions, not a reputation database.
MAX_ENTRIES: Final = 500
FORM_MAX_BODY: Final = 64 * 1024
#: The verdicts of the scanner in a traffic-log result (appliance.protection.verdict).
_VERDICT = re.compile(r"\b(junk|spam|virus|blocked)\b(?!=)")
_SCORE = re.compile(r"\bscore=(-?[0-9.]+)")
#: An entry: a whole address or a domain (RFC 5321 §4.1.2, loosely: no spaces, at
#: most one "@", a dotted domain).
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")
_LOCAL = re.compile(r"[^\s@\"<>()\[\],;:\\]{1,64}")

SAVED: Final = {
    "thresholds": ("บันทึกคะแนนสแปมแล้ว มีผลกับจดหมายฉบับถัดไป",
                   "Spam scores saved; they apply to the next message"),
    "lists": ("บันทึกรายชื่อผู้ส่งแล้ว", "Sender lists saved"),
}  # fmt: skip


@dataclass(frozen=True)
class QuarantineRow:
    """One verdict from the traffic log."""

    time: dt.datetime
    verdict: str
    sender: str
    recipients: tuple[str, ...]
    score: str
    detail: str
    result: str


def parse_entries(text: str) -> tuple[list[str], list[str]]:
    """Read a list's textarea: (entries, lines that are neither an address nor a domain)."""
    entries: list[str] = []
    bad: list[str] = []
    for line in text.replace(",", "\n").splitlines():
        entry = line.strip().lower()
        if not entry:
            continue
        local, at, domain = entry.rpartition("@")
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            bad.append(line.strip()[:80])
            continue
        if _DOMAIN.fullmatch(domain) and (not at or _LOCAL.fullmatch(local)):
            if (full := f"{local}@{domain}" if at else domain) not in entries:
                entries.append(full)
        else:
            bad.append(line.strip()[:80])
    return entries, bad


def quarantine(
    records: collections.abc.Iterable[TrafficRecord], domains: set[str], limit: int
) -> list[QuarantineRow]:
    """The scanner's refusals and Junk deliveries to *domains*, newest first."""
    rows: collections.deque[QuarantineRow] = collections.deque(maxlen=limit)
    for record in records:
        # Mail verdicts only: SMTP on every port and webmail; never the console's own
        # audit lines (event "admin-...", whose detail may read "junk=5.0").
        if record.event not in ("accepted", "rejected") or not (
            record.service.startswith("smtp") or record.service == "webmail"
        ):
            continue
        found = _VERDICT.search(record.result)
        if found is None or not any(
            r.rpartition("@")[2].lower() in domains for r in record.recipients
        ):
            continue
        score = _SCORE.search(record.result)
        verdict = found.group(1)
        # "554 5.7.1 virus <signature> score=0.00 spf=...": the words up to the score.
        after = record.result[found.end(1) :].split(" score=")[0].split(" spf=")[0]
        detail = after.strip() if verdict in ("virus", "blocked") else ""
        rows.append(QuarantineRow(
            record.time, verdict, record.sender or "<>", record.recipients,
            score.group(1) if score else "", detail[:120], record.result[:200],
        ))  # fmt: skip
    return list(reversed(rows))


class ProtectionPages:
    """``/admin/protection``: the quarantine view, the thresholds and the sender lists."""

    def __init__(
        self, kit: PageKit, console: AdminConsole, *, config: Config, directory: Directory,
        traffic: TrafficLog,
    ) -> None:  # fmt: skip
        self.kit = kit
        self.console = console
        self.config = config
        self.directory = directory
        self.traffic = traffic

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str) -> Route:
            limit = FORM_MAX_BODY if method == "POST" else Route.max_body
            return Route(method, path, handler, summary, tag="admin", kind="page", max_body=limit)

        return [
            page("GET", "/admin/protection", self.show, "Admin console: virus and spam"),
            page("POST", "/admin/protection/{domain}/thresholds", self.set_thresholds,
                 "Set an agency's spam scores"),
            page("POST", "/admin/protection/{domain}/lists", self.set_lists,
                 "Set an agency's allow and block lists"),
        ]  # fmt: skip

    async def _scope(self, request: Request) -> AdminScope:
        scope = await scope_of(self.directory, request.user)
        if scope is None:
            raise ApiError(403, "not_admin", "Only administrators may use the admin console",
                           "หน้านี้สำหรับผู้ดูแลระบบเท่านั้น")  # fmt: skip
        return scope

    async def _agency(self, scope: AdminScope, domain: str) -> str:
        agency = await self.console.agency(scope, domain)
        if agency is None:
            raise ApiError(404, "not_found", "No such user or agency", "ไม่พบผู้ใช้หรือหน่วยงานนี้")
        return agency.domain

    def _settings(self) -> dict[str, Any]:
        settings = Settings(self.config.data_dir / "config.json")
        try:
            return settings.get(SECTION)
        finally:
            settings.close()

    def _store(self, domain: str, values: dict[str, Any]) -> None:
        settings = Settings(self.config.data_dir / "config.json")
        try:
            current = settings.get(SECTION).get(domain)
            merged = {**(current if isinstance(current, dict) else {}), **values}
            settings.update(SECTION, {domain: {k: v for k, v in merged.items() if v is not None}})
        finally:
            settings.close()

    async def show(
        self, request: Request, *, error: Refusal | None = None, status: int = 200,
        agency: str | None = None, values: dict[str, str] | None = None,
    ) -> Response:  # fmt: skip
        scope = await self._scope(request)
        domains = [summary.agency.domain for summary in await self.console.agencies(scope)]
        chosen = agency or request.query.get("agency", "").strip()
        domain = await self._agency(scope, chosen) if chosen else (domains[0] if domains else "")
        section = await trio.to_thread.run_sync(self._settings)
        stored = section.get(domain) if isinstance(section.get(domain), dict) else {}
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=QUARANTINE_DAYS)
        rows: list[QuarantineRow] = []
        if domain:
            records = iter_records(self.traffic.directory, since)
            rows = await trio.to_thread.run_sync(quarantine, records, {domain}, QUARANTINE_ROWS)
        saved = request.query.get("saved", "")
        return await self.kit.render(
            request, "admin/protection.html", status=status, scope=scope, section="protection",
            domains=domains, domain=domain, stored=stored, values=values or {},
            defaults=Thresholds(self.config.protection_junk_score,
                                self.config.protection_reject_score),
            rows=rows, days=QUARANTINE_DAYS, error=error, enabled=self.config.protection,
            saved=saved if saved in SAVED else "", saved_notices=SAVED,
        )  # fmt: skip

    async def set_thresholds(self, request: Request) -> Response:
        scope = await self._scope(request)
        domain = await self._agency(scope, request.params["domain"])
        form = {
            name: request.form.get(name).strip()[:20] for name in ("junk_score", "reject_score")
        }
        try:
            values = {name: float(text) if text else None for name, text in form.items()}
            if any(v is not None and not -1000 <= v <= 1000 for v in values.values()):
                raise ValueError("out of range")
            Thresholds(
                values["junk_score"] if values["junk_score"] is not None
                else self.config.protection_junk_score,
                values["reject_score"] if values["reject_score"] is not None
                else self.config.protection_reject_score,
            )  # fmt: skip
        except ValueError:
            error = Refusal(
                "Scores are numbers, and the Junk score must not be above the refuse score",
                "คะแนนต้องเป็นตัวเลข และคะแนนย้ายเข้าจดหมายขยะต้องไม่สูงกว่าคะแนนปฏิเสธ",
            )
            return await self.show(request, error=error, status=422, agency=domain, values=form)
        await trio.to_thread.run_sync(self._store, domain, values)
        await self.console.record(scope, "spam-thresholds", domain,
                                  f"junk={values['junk_score']} reject={values['reject_score']}",
                                  request.client_ip)  # fmt: skip
        return redirect("/admin/protection?" + urlencode({"agency": domain, "saved": "thresholds"}))

    async def set_lists(self, request: Request) -> Response:
        scope = await self._scope(request)
        domain = await self._agency(scope, request.params["domain"])
        texts = {name: request.form.get(name)[:FORM_MAX_BODY] for name in ("allow", "block")}
        lists: dict[str, Any] = {}
        bad: list[str] = []
        for name, text in texts.items():
            entries, wrong = parse_entries(text)
            lists[name] = entries
            bad += wrong
        if bad or any(len(entries) > MAX_ENTRIES for entries in lists.values()):
            shown = ", ".join(bad[:5]) or f"more than {MAX_ENTRIES} entries"
            error = Refusal(f"Not an address or a domain: {shown}",
                            f"ไม่ใช่ที่อยู่อีเมลหรือโดเมน: {shown}")  # fmt: skip
            return await self.show(request, error=error, status=422, agency=domain, values=texts)
        await trio.to_thread.run_sync(self._store, domain, lists)
        await self.console.record(scope, "sender-lists", domain,
                                  f"allow={len(lists['allow'])} block={len(lists['block'])}",
                                  request.client_ip)  # fmt: skip
        return redirect("/admin/protection?" + urlencode({"agency": domain, "saved": "lists"}))
