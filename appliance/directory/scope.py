"""Who administers what: one signed-in administrator and the agencies they manage.

`Directory.admin_scope` says which agencies a user administers: None for a box-wide
admin, a set of domains for an agency admin, the empty set for everybody else.
`AdminScope` is that answer with the rules every surface applies to it — the admin
console's pages, the uplink API's queue figures — so an agency admin sees and changes
the same things wherever they ask (REQUIREMENTS.md §2, per-agency administration).

What this is not: the console's pages or summaries (appliance.admin), or the grants
themselves (directory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.directory.directory import Directory, DirectoryError, normalise_domain
from appliance.directory.models import User


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

    def covers_account(self, account: str) -> bool:
        """Whether *account* (an address) belongs to an agency this admin manages."""
        local, at, domain = account.rpartition("@")
        return bool(at and local) and self.covers(domain)

    def sees_sender(self, sender: str) -> bool:
        """Whether this admin may see mail *sender* sent (in the outbound queue).

        An agency admin sees the mail its own staff sent; the null sender (bounces,
        RFC 5321 §4.5.5) and other senders only the box-wide admin.
        """
        return self.domains is None or self.covers_account(sender)

    def may_change(self, target_grants: frozenset[str] | None) -> bool:
        """Whether this admin may change an account holding *target_grants*.

        *target_grants* is `Directory.granted_domains` of the target: only an admin
        whose scope includes all of them may change (or take over) that account.
        """
        if self.domains is None:
            return True
        return target_grants is not None and target_grants <= self.domains


async def scope_of(directory: Directory, user: User | None) -> AdminScope | None:
    """Return *user*'s scope, or None if they administer nothing (no console)."""
    if user is None:
        return None
    domains = await directory.admin_scope(user.address)
    if domains is not None and not domains:
        return None
    return AdminScope(user, domains)
