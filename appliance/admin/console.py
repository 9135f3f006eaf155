"""The admin console's rules, apart from HTTP: who may see and change whom, and summaries.

Everything here is what `pages` asks before it renders or changes anything:

- **Scope** (REQUIREMENTS.md §2, per-agency administration). `Directory.admin_scope`
  says which agencies a user administers: None for a box-wide admin, a set of domains
  for an agency admin, the empty set for everybody else (who gets no console at all).
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
- **Summaries**: agencies with user counts, the outbound queue by urgency, health
  findings, the link to the centre, the org chart as a tree.
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

from appliance.box import Box
from appliance.compliance.classification import Urgency
from appliance.compliance.traffic_log import TrafficRecord
from appliance.directory import Agency, DirectoryError, OrgUnit, User, normalise_domain
from appliance.health import Finding
from appliance.health.checks import run_checks
from appliance.health.monitor import gather_snapshot
from appliance.health.readings import PsutilReadings, SystemReadings
from appliance.health.snapshot import Snapshot, services_from_status_file
from appliance.security.guard import AccountState, SourceState
from appliance.sync.link import STREAMS, LinkState, age_text, read_link_state
from appliance.sync.status import read_sync_status

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


# --- scope ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminScope:
    """One signed-in administrator and the agencies they manage."""

    admin: User
    #: Normalised domains; None: every agency on the box.
    domains: frozenset[str] | None

    @property
    def box_wide(self) -> bool:
        return self.domains is None

    def covers(self, domain: str) -> bool:
        """Whether this admin manages the agency serving *domain*."""
        if self.domains is None:
            return True
        try:
            return normalise_domain(domain) in self.domains
        except DirectoryError:
            return False

    def may_change(self, target_grants: frozenset[str] | None) -> bool:
        """Whether this admin may change an account holding *target_grants*.

        *target_grants* is `Directory.granted_domains` of the target: only an admin
        whose scope includes all of them may change (or take over) that account.
        """
        if self.domains is None:
            return True
        return target_grants is not None and target_grants <= self.domains


async def scope_of(box: Box, user: User | None) -> AdminScope | None:
    """Return *user*'s scope, or None if they administer nothing (no console)."""
    if user is None:
        return None
    domains = await box.directory.admin_scope(user.address)
    if domains is not None and not domains:
        return None
    return AdminScope(user, domains)


# --- plain values the pages show -------------------------------------------------------


@dataclass(frozen=True)
class AgencySummary:
    agency: Agency
    users: int
    disabled: int


@dataclass(frozen=True)
class QueueLevel:
    urgency: int
    count: int


@dataclass(frozen=True)
class QueueSummary:
    """The outbound queue as one admin may see it."""

    #: Every urgency level, most urgent first, with zero counts too.
    levels: tuple[QueueLevel, ...]
    total: int
    #: Unix seconds of the oldest waiting recipient, or None when empty.
    oldest: int | None


@dataclass(frozen=True)
class QueueItem:
    """One recipient waiting in the outbound queue."""

    id: int
    recipient: str
    sender: str
    urgency: int
    #: Unix seconds when it was queued.
    created_at: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class StreamStatus:
    """One sync stream's last round (appliance.sync.status)."""

    name: str
    th: str
    en: str
    #: Unix seconds of the last round that succeeded; None: never.
    last_success: float | None
    last_error: str | None


@dataclass(frozen=True)
class LinkStatus:
    """The uplink as the overview page shows it (`link_status`)."""

    #: Whether the centre is reachable over GIN right now.
    connected: bool
    th: str
    en: str
    #: "up", "down" or "unknown" (appliance.sync.link.LinkState).
    gin: str = "unknown"
    #: "up", "down", "unknown" or "not_probed".
    international: str = "unknown"
    #: Unix seconds since gin is in its state; None while unknown.
    since: float | None = None
    streams: tuple[StreamStatus, ...] = ()


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


_STREAM_NAMES: Final = {
    "outbound": ("อีเมลขาออก", "Outbound mail"),
    "mailbox": ("กล่องจดหมาย", "Mailboxes"),
    "chat": ("แชท", "Chat"),
    "directory": ("สมุดรายชื่อ", "Directory"),
}


def link_status(data_dir: Path | None = None) -> LinkStatus:
    """The link to the centre, from what the link monitor and the replicators wrote.

    Reads ``DATA/run/link.json`` and ``DATA/run/sync.json`` (small files, read as the
    page renders). Without *data_dir*, or before the monitor ever ran, it says the box
    is not connected. A link that is down is a warning, never an error: the office
    keeps working and outbound mail waits in the queue.
    """
    if data_dir is None:
        return LinkStatus(
            connected=False,
            th="ยังไม่ได้เชื่อมต่อกับส่วนกลาง",
            en="Not connected to the centre (sync not set up)",
        )
    snapshot = read_link_state(data_dir)
    recorded = read_sync_status(data_dir)
    streams = tuple(
        StreamStatus(
            name,
            *_STREAM_NAMES.get(name, (name, name)),
            last_success=_seconds(recorded.get(name, {}).get("last_success")),
            last_error=recorded.get(name, {}).get("last_error"),
        )
        for name in (*STREAMS, *sorted(set(recorded) - set(STREAMS)))
    )
    if snapshot is None:
        return LinkStatus(
            connected=False,
            th="ยังไม่ได้เชื่อมต่อกับส่วนกลาง (ตัวตรวจการเชื่อมต่อยังไม่เคยทำงาน)",
            en="Not connected to the centre (the link monitor has not run yet)",
            streams=streams,
        )
    gin = snapshot.gin
    international = snapshot.international
    abroad = international.state.value
    if international.state is LinkState.UNKNOWN and not international.target:
        abroad = "not_probed"
    if gin.state is LinkState.UP:
        th, en = "เชื่อมต่อกับส่วนกลางผ่าน GIN ได้ตามปกติ", "The centre is reachable over GIN"
    elif gin.state is LinkState.DOWN:
        th = (
            "ติดต่อส่วนกลางผ่าน GIN ไม่ได้ งานภายในสำนักงานยังทำได้ตามปกติ"
            " อีเมลถึงหน่วยงานอื่นรออยู่ในคิวและจะส่งเมื่อกลับมาเชื่อมต่อได้"
        )
        en = (
            "The centre cannot be reached over GIN. Work in the office goes on as usual;"
            " mail to other agencies waits in the queue and leaves when the link is back"
        )
    elif not gin.target:
        th, en = "ยังไม่ได้ลงทะเบียนกับส่วนกลาง", "Not enrolled with the centre yet"
    else:
        th, en = "กำลังตรวจการเชื่อมต่อกับส่วนกลาง", "Checking the link to the centre"
    return LinkStatus(
        connected=gin.state is LinkState.UP,
        th=th,
        en=en,
        gin=gin.state.value,
        international=abroad,
        since=gin.since,
        streams=streams,
    )


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
    """Reads and audit records of the admin console for one box."""

    def __init__(self, box: Box, readings: SystemReadings | None = None) -> None:
        self.box = box
        self.readings = readings or PsutilReadings()

    async def agencies(self, scope: AdminScope) -> list[AgencySummary]:
        """The agencies in *scope*, by domain, with their user counts."""
        counts = await self.box.directory.count_users()
        return [
            AgencySummary(agency, *counts.get(agency.domain, (0, 0)))
            for agency in await self.box.directory.agencies()
            if scope.covers(agency.domain)
        ]

    async def agency(self, scope: AdminScope, domain: str) -> Agency | None:
        """The agency serving *domain* if it is in *scope*; None also for unknown ones."""
        agency = await self.box.directory.agency(domain)
        if agency is None or not scope.covers(agency.domain):
            return None
        return agency

    async def users(self, scope: AdminScope, domain: str | None = None) -> list[User]:
        """The users of one agency in *scope*, or of every agency in it, by address."""
        if domain is not None:
            return await self.box.directory.users(domain) if scope.covers(domain) else []
        if scope.domains is None:
            # Other agencies' people, replicated for the address book, are not this
            # box's to administer (appliance.sync.directory).
            return [user for user in await self.box.directory.users() if not user.remote]
        found: list[User] = []
        for each in sorted(scope.domains):
            if await self.box.directory.agency(each) is not None:
                found += await self.box.directory.users(each)
        return sorted(found, key=lambda user: user.address)

    async def target(self, scope: AdminScope, address: str) -> User | None:
        """The user at *address* if *scope* covers their agency; else None, as if unknown."""
        user = await self.box.directory.user(address)
        if user is None or user.remote or not scope.covers(user.agency_domain):
            return None
        return user

    async def may_change(self, scope: AdminScope, target: User) -> bool:
        """Whether *scope* may change *target* (see the escalation rule above)."""
        if scope.domains is None:
            return True
        return scope.may_change(await self.box.directory.granted_domains(target.address))

    async def units(self, scope: AdminScope, domains: Iterable[str]) -> list[OrgUnit]:
        """The org units of the agencies in *domains* that *scope* covers."""
        found: list[OrgUnit] = []
        for domain in domains:
            if scope.covers(domain):
                found += await self.box.directory.units(domain)
        return found

    async def org_chart(self, scope: AdminScope, domain: str) -> OrgChart:
        """The org chart of one agency in *scope* (empty for any other)."""
        if not scope.covers(domain):
            return OrgChart((), ())
        directory = self.box.directory
        return org_tree(await directory.units(domain), await directory.users(domain))

    async def queue_summary(self, scope: AdminScope) -> QueueSummary:
        """Recipients waiting, by urgency, among the senders *scope* may see."""
        counts = {level: 0 for level in Urgency}
        oldest: int | None = None
        for urgency, sender, count, created_at in await self.box.mailstore.outbound_groups():
            if not self._sender_visible(scope, sender):
                continue
            level = Urgency(min(max(urgency, 0), max(Urgency)))
            counts[level] += count
            oldest = created_at if oldest is None else min(oldest, created_at)
        levels = tuple(QueueLevel(int(level), counts[level]) for level in reversed(Urgency))
        return QueueSummary(levels, sum(counts.values()), oldest)

    async def queue(self, scope: AdminScope, limit: int = QUEUE_PAGE_ROWS) -> list[QueueItem]:
        """The first *limit* recipients to leave, among the senders *scope* may see."""
        domains = None if scope.domains is None else _sender_forms(scope.domains)
        rows = await self.box.mailstore.outbound_entries(limit, domains)
        return [QueueItem(*row) for row in rows]

    def _sender_visible(self, scope: AdminScope, sender: str) -> bool:
        # An agency admin sees the mail its own staff sent; the null sender (bounces,
        # RFC 5321 §4.5.5) and other senders only the box-wide admin.
        if scope.domains is None:
            return True
        local, at, domain = sender.rpartition("@")
        return bool(at and local) and scope.covers(domain)

    def sign_in_watch(self, scope: AdminScope) -> SignInWatch:
        """The guard's sources and accounts within *scope* (see the module docstring)."""
        guard = self.box.guard
        sources = []
        for state in guard.sources():
            mine = tuple(item for item in state.accounts if _account_in(scope, item[0]))
            if mine:
                sources.append(WatchedSource(state, mine, len(mine) == len(state.accounts)))
        accounts = tuple(state for state in guard.accounts() if _account_in(scope, state.account))
        return SignInWatch(tuple(sources), accounts)

    def unlock_source(self, scope: AdminScope, source: str) -> None:
        """Lift a source's refusal and forget its failures; `Refusal` if not this admin's."""
        tried = self.box.guard.tried_from(source)
        mine = {account for account in tried if _account_in(scope, account)}
        if not mine:
            raise Refusal("That address has no failed sign-ins on your agencies' accounts",
                          "ไม่พบการเข้าสู่ระบบผิดจากที่อยู่นี้ในบัญชีของหน่วยงานที่ท่านดูแล")  # fmt: skip
        if mine != tried:
            raise Refusal(
                "That address also guessed at other agencies' accounts; ask the box"
                " administrator to unlock it",
                "ที่อยู่นี้เดารหัสผ่านบัญชีของหน่วยงานอื่นด้วย กรุณาติดต่อผู้ดูแลระบบของเครื่องแม่ข่ายให้เป็นผู้ปลดล็อก",
            )
        self.box.guard.unlock_source(source)

    def unlock_account(self, scope: AdminScope, account: str) -> None:
        """End an account's extra delay; `Refusal` if it is not in *scope* or not slowed."""
        if not _account_in(scope, account) or not self.box.guard.unlock_account(account):
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
            services_from_status_file, self.box.status_file
        )
        snapshot = await gather_snapshot(
            self.box, self.readings, services=services, box_running=running
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
            await self.box.traffic.append(record)
        except Exception:
            # Like sign-ins: a full log disk must not stop the change already made;
            # the operator sees it here.
            log.exception("traffic log write failed")


def _account_in(scope: AdminScope, account: str) -> bool:
    local, at, domain = account.rpartition("@")
    return bool(at and local) and scope.covers(domain)


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
