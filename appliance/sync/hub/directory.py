"""The hub's directory routes: boxes push their own agency's users and pull everyone's.

- ``POST /sync/v1/directory/push`` ``{"entries": [...]}``: a box sends changed users of
  its agency. Every entry must be of the caller's agency (the one its certificate was
  enrolled for), or the whole batch is refused with 403 ``foreign_agency`` and nothing
  is stored. Entries are checked by the directory's own rules (400 ``bad_entry``) and
  stored in one transaction (`Directory.apply_entries`, idempotent): the hub serves the
  agency as its central mail server, so each user also gets mailboxes here (for the
  mailbox replication to fill), but no password: people sign in at their own box.
- ``POST /sync/v1/directory/pull`` ``{"after": C, "limit": N}``: the changes after the
  caller's cursor of every agency but the caller's own, oldest first, with the cursor to
  ask from next and whether more are waiting. The hub's own users are included; its
  service accounts (``sync-...``) never are.

The wire form of an entry is `appliance.sync.directory.entry_to_json`.
"""

from __future__ import annotations

from appliance.directory import Directory, DirectoryError, normalise_address, normalise_domain
from appliance.mail.mailstore import Mailstore
from appliance.sync.directory import (
    MAX_BATCH,
    PULL_PATH,
    PUSH_PATH,
    entry_from_json,
    entry_to_json,
)
from appliance.sync.hub.errors import HubError, bad_request
from appliance.sync.transport import JSON, Peer, SyncRoute


class DirectoryRoutes:
    """Push and pull handlers over the hub's directory."""

    def __init__(self, directory: Directory, mailstore: Mailstore) -> None:
        self.directory = directory
        self.mailstore = mailstore

    async def push(self, peer: Peer, body: JSON) -> JSON:
        raw = body.get("entries")
        if not isinstance(raw, list) or len(raw) > MAX_BATCH:
            raise bad_request(f"entries must be a list of at most {MAX_BATCH}")
        try:
            entries = [entry_from_json(item) for item in raw]
        except ValueError as exc:
            raise bad_request(f"an entry is malformed: {exc}", "bad_entry") from None
        try:
            domains = {normalise_domain(entry.agency_domain) for entry in entries}
            addresses = [normalise_address(entry.address) for entry in entries]
        except DirectoryError as exc:
            raise bad_request(str(exc), "bad_entry") from None
        if domains - {peer.domain}:
            # A box speaks for its own agency only; nothing of the batch is stored.
            raise HubError(403, "foreign_agency", f"this box may push users of {peer.domain} only")
        try:
            await self.directory.apply_entries(entries, remote=False)
        except DirectoryError as exc:
            raise bad_request(str(exc), "bad_entry") from None
        for address in addresses:
            # Idempotent, and done for every entry (not just new ones): a hub that
            # stopped between the commit above and here makes them on the retry.
            await self.mailstore.create_mailboxes(address)
        return {"accepted": len(entries)}

    async def pull(self, peer: Peer, body: JSON) -> JSON:
        after, limit = body.get("after"), body.get("limit", MAX_BATCH)
        if not _count(after) or not _count(limit) or limit < 1:
            raise bad_request("after and limit must be whole numbers (limit >= 1)")
        limit = min(limit, MAX_BATCH)
        entries = await self.directory.entries_after(after, limit, except_agency=peer.domain)
        cursor = entries[-1].seq if entries else after
        return {
            "entries": [entry_to_json(e) for e in entries],
            "cursor": cursor,
            "more": len(entries) == limit,
        }


def directory_routes(directory: Directory, mailstore: Mailstore) -> list[SyncRoute]:
    """Return the directory routes the hub serves (for `hub_sync_routes`)."""
    routes = DirectoryRoutes(directory, mailstore)
    return [
        SyncRoute(PUSH_PATH, routes.push, max_body=4 * 1024 * 1024),
        SyncRoute(PULL_PATH, routes.pull, max_body=4096),
    ]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
