"""The admin console's rules, apart from HTTP: who may see and change whom, and summaries.

Everything here is what `pages` asks before it renders or changes anything:

- **Scope** (REQUIREMENTS.md §2, per-agency administration). `Directory.admin_scope`
  says which agencies a user administers: None for a box-wide admin, a set of domains
  for an agency admin, the empty set for everybody else (who gets no console at all);
  `AdminScope` and `scope_of` (appliance.directory.scope) carry that answer.
  An agency admin must not even learn that another agency's user exists, so a user
  outside the scope is answered exactly like an unknown one (`AdminConsole.target`),
  and every list is filtered here, never in a template.
- **Escalation.** Seeing a user of one's agency is not enough to change them: the
  account may hold grants beyond the admin's own (a box-wide admin or the sync
  service account whose address happens to be in the agency). Resetting that password
  would hand the admin those powers, so `AdminScope.may_change` compares the target's
  grants (`Directory.granted_domains`, which counts disabled accounts too) with the
  admin's scope.
- **Audit.** Every change is logged on ``edgebox.admin`` and written to the traffic log
  (who did what to whom, from where; never a password), like sign-ins in session_api.
- **Summaries**: agencies with user counts, the outbound queue by urgency (folded by
  appliance.mail.outbound), health findings, the org chart as a tree. The link to the
  centre is read by appliance.sync.uplink, as every surface reads it.
- **Sign-in protection**: the sources and accounts the sign-in guard is counting
  wrong passwords for (`appliance.security.guard`), each admin seeing only the
  accounts of their agencies, and the unlocks. An agency admin may unlock a source only
  if every account it guessed at is theirs: the refusal also protects other agencies.

What this is not: the pages and forms (pages.py), the directory's own checks of names
and addresses (appliance.directory), or the queue runner (it only reads the queue).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import trio

from appliance.compliance.classification import Urgency
from appliance.compliance.traffic_log import TrafficLog, TrafficRecord
from appliance.config import Config
from appliance.directory import Agency, Directory, OrgUnit, User
from appliance.directory.scope import AdminScope
from appliance.health import Finding
from appliance.health.checks import run_checks
from appliance.health.monitor import gather_snapshot
from appliance.health.readings import PsutilReadings, SystemReadings
from appliance.health.snapshot import Snapshot, services_from_status_file
from appliance.mail.mailstore import Mailstore
from appliance.mail.outbound import QueueItem, QueueSummary, summarise_queue
from appliance.security.guard import AccountState, AuthGuard, SourceState
from appliance.sync.uplink import age_text

log = logging.getLogger("edgebox.admin")

Language = Literal["th", "en"]

#: Queue rows shown on the queue page at most; the summary above it counts them all.
QUEUE_PAGE_ROWS: Final = 500

#: The form limits of the console (the directory itself only asks for 0 or more).
MAX_RANK: Final = 1000
#: 1 TiB in MB: far above any mailbox; stops a typo of extra digits.
MAX_QUOTA_MB: Final = 1024 * 1024
MB: Final = 1024 * 1024

_URGENCY_EN: Final = {
    Urgency.NORMAL: "Normal",
    Urgency.URGENT: "Urgent",
    Urgency.VERY_URGENT: "Very urgent",
    Urgency.MOST_URGENT: "Most urgent",
}


class Refusal(Exception):
    """A console request refused for a reason the admin can fix; in both languages."""

    def __init__(self, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        self.message_en = message_en
        self.message_th = message_th


# --- plain values the pages show -------------------------------------------------------


@dataclass(frozen=True)
class AgencySummary:
    agency: Agency
    users: int
    disabled: int


@dataclass
class UnitNode:
    """One unit of an org chart with the units under it and its members."""

    unit: OrgUnit
    children: list[UnitNode] = field(default_factory=list)
    members: list[User] = field(default_factory=list)


@dataclass(frozen=True)
class OrgChart:
    roots: tuple[UnitNode, ...]
    #: Users not placed in any unit.
    unplaced: tuple[User, ...]


@dataclass(frozen=True)
class WatchedSource:
    """A source with wrong passwords, as one admin may see it."""

    state: SourceState
    #: The accounts of the admin's agencies it guessed at, with counts, most first.
    accounts: tuple[tuple[str, int], ...]
    #: Whether this admin may lift its refusal (every account it tried is theirs).
    may_unlock: bool


@dataclass(frozen=True)
class SignInWatch:
    """The sign-in protection page: who guessed wrong, at whom."""

    sources: tuple[WatchedSource, ...]
    accounts: tuple[AccountState, ...]


def urgency_name(level: int, lang: Language) -> str:
    """The speed class as Thai official mail names it (ปกติ ... ด่วนที่สุด)."""
    try:
        urgency = Urgency(level)
    except ValueError:
        urgency = Urgency.MOST_URGENT if level > 0 else Urgency.NORMAL
    return urgency.thai if lang == "th" else _URGENCY_EN[urgency]


#: How long something has waited, in its two largest units (``3 ชั่วโมง 5 นาที``); the
#: same words as ``edgebox status`` uses.
format_age = age_text


def parse_count(text: str, what_en: str, what_th: str, maximum: int) -> int:
    """Read a whole number 0..*maximum* typed in a form (Thai digits welcome)."""
    text = unicodedata.normalize("NFKC", text).strip()
    # isdecimal: Thai digits (๐-๙) and other decimal digits count; "+1", "1.0", "1e3"
    # and "½" do not.
    if not text or not text.isdecimal() or len(text) > 12:
        raise Refusal(f"{what_en} must be a whole number", f"{what_th}ต้องเป็นจำนวนเต็ม")
    value = int(text)
    if value > maximum:
        raise Refusal(f"{what_en} must be at most {maximum}", f"{what_th}ต้องไม่เกิน {maximum}")
    return value


def search_users(users: Iterable[User], query: str) -> list[User]:
    """The users whose address, Thai or English name contains *query* (any case).

    Thai has no letter case; NFC on both sides makes one spelling of a tone mark
    over a vowel match the other.
    """
    needle = _fold(query)
    if not needle:
        return list(users)
    return [
        user
        for user in users
        if needle in _fold(f"{user.address}\n{user.name_th}\n{user.name_en or ''}")
    ]


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip().casefold()


def org_tree(units: Sequence[OrgUnit], users: Sequence[User]) -> OrgChart:
    """Arrange one agency's units as a tree, each with its members.

    Every unit appears exactly once: one whose parent is unknown (or that sits in a
    loop, which the directory never makes) is shown at the top level.
    """
    nodes = {unit.id: UnitNode(unit) for unit in units}
    by_name = {unit.name_th: nodes[unit.id] for unit in units}
    unplaced = []
    for user in users:
        node = by_name.get(user.unit) if user.unit is not None else None
        if node is None:
            unplaced.append(user)
        else:
            node.members.append(user)
    attached: set[int] = set()
    for unit in units:
        parent = nodes.get(unit.parent_id) if unit.parent_id is not None else None
        if parent is not None and not _is_ancestor(nodes, unit.id, parent.unit):
            parent.children.append(nodes[unit.id])
            attached.add(unit.id)
    roots = [nodes[unit.id] for unit in units if unit.id not in attached]
    return OrgChart(tuple(roots), tuple(unplaced))


def _is_ancestor(nodes: dict[int, UnitNode], unit_id: int, start: OrgUnit) -> bool:
    """Whether *unit_id* is *start* or above it (attaching would close a loop)."""
    seen: set[int] = set()
    current: OrgUnit | None = start
    while current is not None and current.id not in seen:
        if current.id == unit_id:
            return True
        seen.add(current.id)
        parent = nodes.get(current.parent_id) if current.parent_id is not None else None
        current = parent.unit if parent is not None else None
    return False


# --- the console -----------------------------------------------------------------------


class AdminConsole:
    """Reads and audit records of the admin console for one box.

    It is handed the parts of the box it reads: the settings, the directory, the mail
    store (the queue), the sign-in guard, the traffic log and the supervisor's status
    file (`edgebox status` reads the same file).
    """

    def __init__(
        self,
        *,
        config: Config,
        directory: Directory,
        mailstore: Mailstore,
        guard: AuthGuard,
        traffic: TrafficLog,
        status_file: Path,
        readings: SystemReadings | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.mailstore = mailstore
        self.guard = guard
        self.traffic = traffic
        self.status_file = status_file
        self.readings = readings or PsutilReadings()

    async def agencies(self, scope: AdminScope) -> list[AgencySummary]:
        """The agencies in *scope*, by domain, with their user counts."""
        counts = await self.directory.count_users()
        return [
            AgencySummary(agency, *counts.get(agency.domain, (0, 0)))
            for agency in await self.directory.agencies()
            if scope.covers(agency.domain)
        ]

    async def agency(self, scope: AdminScope, domain: str) -> Agency | None:
        """The agency serving *domain* if it is in *scope*; None also for unknown ones."""
        agency = await self.directory.agency(domain)
        if agency is None or not scope.covers(agency.domain):
            return None
        return agency

    async def users(self, scope: AdminScope, domain: str | None = None) -> list[User]:
        """The users of one agency in *scope*, or of every agency in it, by address."""
        if domain is not None:
            return await self.directory.users(domain) if scope.covers(domain) else []
        if scope.domains is None:
            # Other agencies' people, replicated for the address book, are not this
            # box's to administer (appliance.sync.directory).
            return [user for user in await self.directory.users() if not user.remote]
        found: list[User] = []
        for each in sorted(scope.domains):
            if await self.directory.agency(each) is not None:
                found += await self.directory.users(each)
        return sorted(found, key=lambda user: user.address)

    async def target(self, scope: AdminScope, address: str) -> User | None:
        """The user at *address* if *scope* covers their agency; else None, as if unknown."""
        user = await self.directory.user(address)
        if user is None or user.remote or not scope.covers(user.agency_domain):
            return None
        return user

    async def may_change(self, scope: AdminScope, target: User) -> bool:
        """Whether *scope* may change *target* (see the escalation rule above)."""
        if scope.domains is None:
            return True
        return scope.may_change(await self.directory.granted_domains(target.address))

    async def units(self, scope: AdminScope, domains: Iterable[str]) -> list[OrgUnit]:
        """The org units of the agencies in *domains* that *scope* covers."""
        found: list[OrgUnit] = []
        for domain in domains:
            if scope.covers(domain):
                found += await self.directory.units(domain)
        return found

    async def org_chart(self, scope: AdminScope, domain: str) -> OrgChart:
        """The org chart of one agency in *scope* (empty for any other)."""
        if not scope.covers(domain):
            return OrgChart((), ())
        directory = self.directory
        return org_tree(await directory.units(domain), await directory.users(domain))

    async def queue_summary(self, scope: AdminScope) -> QueueSummary:
        """Recipients waiting, by urgency, among the senders *scope* may see."""
        return summarise_queue(await self.mailstore.outbound_groups(), scope.sees_sender)

    async def queue(self, scope: AdminScope, limit: int = QUEUE_PAGE_ROWS) -> list[QueueItem]:
        """The first *limit* recipients to leave, among the senders *scope* may see."""
        domains = None if scope.domains is None else _sender_forms(scope.domains)
        rows = await self.mailstore.outbound_entries(limit, domains)
        return [QueueItem(*row) for row in rows]

    def sign_in_watch(self, scope: AdminScope) -> SignInWatch:
        """The guard's sources and accounts within *scope* (see the module docstring)."""
        guard = self.guard
        sources = []
        for state in guard.sources():
            mine = tuple(item for item in state.accounts if scope.covers_account(item[0]))
            if mine:
                sources.append(WatchedSource(state, mine, len(mine) == len(state.accounts)))
        accounts = tuple(state for state in guard.accounts() if scope.covers_account(state.account))
        return SignInWatch(tuple(sources), accounts)

    def unlock_source(self, scope: AdminScope, source: str) -> None:
        """Lift a source's refusal and forget its failures; `Refusal` if not this admin's."""
        tried = self.guard.tried_from(source)
        mine = {account for account in tried if scope.covers_account(account)}
        if not mine:
            raise Refusal("That address has no failed sign-ins on your agencies' accounts",
                          "ไม่พบการเข้าสู่ระบบผิดจากที่อยู่นี้ในบัญชีของหน่วยงานที่ท่านดูแล")  # fmt: skip
        if mine != tried:
            raise Refusal(
                "That address also guessed at other agencies' accounts; ask the box"
                " administrator to unlock it",
                "ที่อยู่นี้เดารหัสผ่านบัญชีของหน่วยงานอื่นด้วย กรุณาติดต่อผู้ดูแลระบบของเครื่องแม่ข่ายให้เป็นผู้ปลดล็อก",
            )
        self.guard.unlock_source(source)

    def unlock_account(self, scope: AdminScope, account: str) -> None:
        """End an account's extra delay; `Refusal` if it is not in *scope* or not slowed."""
        if not scope.covers_account(account) or not self.guard.unlock_account(account):
            raise Refusal("That account has no failed sign-ins to forget",
                          "บัญชีนี้ไม่มีการเข้าสู่ระบบผิดที่ต้องล้าง")  # fmt: skip

    async def health(self) -> list[Finding]:
        """Every health check's findings (appliance.health.checks), in registry order."""
        return (await self.health_report())[1]

    async def health_report(self) -> tuple[Snapshot, list[Finding]]:
        """The figures the checks judged, and their findings.

        The same gathering as `edgebox status`: the services as the status file says
        and as their listeners answer, in a worker thread (each TCP probe may take its
        timeout if a listener hangs).
        """
        running, services = await trio.to_thread.run_sync(
            services_from_status_file, self.status_file
        )
        snapshot = await gather_snapshot(
            self.config,
            self.mailstore.outbound_groups,
            self.readings,
            services=services,
            box_running=running,
        )
        return snapshot, run_checks(snapshot)

    async def record(
        self,
        scope: AdminScope,
        action: str,
        target: str | None,
        detail: str,
        client_ip: str,
    ) -> None:
        """Log one admin action and write it to the traffic log (never a password)."""
        who = scope.admin.address
        log.info("admin=%s action=%s target=%s %s ip=%s", who, action, target, detail, client_ip)
        try:
            record = TrafficRecord(
                time=datetime.now(UTC),
                service="web",
                event=f"admin-{action}",
                client_ip=client_ip if client_ip != "unknown" else None,
                user=who,
                recipients=(target,) if target else (),
                result=detail[:200],
            )
            await self.traffic.append(record)
        except Exception:
            # Like sign-ins: a full log disk must not stop the change already made;
            # the operator sees it here.
            log.exception("traffic log write failed")


def _sender_forms(domains: Iterable[str]) -> list[str]:
    """Each domain as stored (Thai U-labels) and as a client may have sent it (xn--)."""
    forms: list[str] = []
    for domain in sorted(domains):
        forms.append(domain)
        try:
            ascii_form = domain.encode("idna").decode("ascii")
        except UnicodeError:
            continue
        if ascii_form != domain:
            forms.append(ascii_form)
    return forms
