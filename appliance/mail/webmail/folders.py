"""Folders as the webmail shows them: names in Thai and English, order, URLs, unread counts.

Unread counts are what make a folder list slow. "Messages without \\Seen" has no index,
so counting them scans every row of the mailbox: about 0.1 s for 100,000 messages,
on every page. `UnreadCounts` scans a mailbox once and then keeps the set of its unseen
UIDs up to date from the MODSEQ bookkeeping IMAP already keeps (RFC 7162): every change
to a message gives it a MODSEQ above the mailbox's previous HIGHESTMODSEQ, and every
expunge is recorded with one, so "what changed since I last looked" is an indexed
query whatever the mailbox's size. An unchanged mailbox costs nothing at all.

What this is not: mailbox management (create, rename and delete are IMAP's, or a later
settings page's), or the message list (listing.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlencode

from appliance.mail.mailboxes import Mailboxes, MailboxHead

#: Names of the special-use mailboxes (RFC 6154) in Thai and English, in sidebar order.
SPECIAL_NAMES: Final = {
    "INBOX": ("กล่องจดหมายเข้า", "Inbox"),
    "\\Drafts": ("ฉบับร่าง", "Drafts"),
    "\\Sent": ("จดหมายที่ส่งแล้ว", "Sent"),
    "\\Archive": ("จดหมายเก่า", "Archive"),
    "\\Junk": ("จดหมายขยะ", "Junk"),
    "\\Trash": ("ถังขยะ", "Trash"),
}
_ORDER: Final = {key: position for position, key in enumerate(SPECIAL_NAMES)}
#: The default mailbox names, for boxes whose rows lack the special-use attribute.
_BY_NAME: Final = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Archive": "\\Archive",
                   "Junk": "\\Junk", "Trash": "\\Trash"}  # fmt: skip


def folder_url(name: str, page: int = 1) -> str:
    """``/mail/folder/{name}`` with the name as one percent-encoded path segment."""
    if name == "INBOX" and page == 1:
        return "/mail"
    url = "/mail/folder/" + quote(name, safe="")
    return url if page == 1 else f"{url}?page={page}"


def message_url(name: str, uid: int) -> str:
    return f"/mail/folder/{quote(name, safe='')}/{uid}"


def compose_url(kind: str, name: str, uid: int) -> str:
    """``/mail/compose?reply=INBOX/12`` (kind: reply, reply_all, forward or draft)."""
    return "/mail/compose?" + urlencode({kind: f"{name}/{uid}"}, safe="/")


@dataclass(frozen=True)
class Folder:
    """One mailbox of the sidebar."""

    id: int
    name: str
    #: "INBOX", a special-use attribute such as "\\Sent", or None for the user's own.
    role: str | None
    label_th: str
    label_en: str
    messages: int
    unread: int
    #: Nesting level under the hierarchy separator "/" (0 for top-level mailboxes).
    depth: int

    @property
    def url(self) -> str:
        return folder_url(self.name)

    @property
    def drafts(self) -> bool:
        """Messages here open in compose (``?draft=``), not in the reading view."""
        return self.role == "\\Drafts"

    @property
    def trash(self) -> bool:
        """Delete here removes for good."""
        return self.role == "\\Trash"

    @property
    def outgoing(self) -> bool:
        """Lists here show whom a message is to, not whom it is from."""
        return self.role in ("\\Sent", "\\Drafts")


def role_of(head: MailboxHead) -> str | None:
    if head.name == "INBOX":
        return "INBOX"
    if head.special_use in SPECIAL_NAMES:
        return head.special_use
    return _BY_NAME.get(head.name)


def make_folders(heads: list[MailboxHead], unread: dict[int, int]) -> list[Folder]:
    """Special-use folders first in a fixed order, then the user's own by name."""
    folders = []
    for head in heads:
        role = role_of(head)
        parts = head.name.split("/")
        label_th, label_en = SPECIAL_NAMES[role] if role else (parts[-1], parts[-1])
        folders.append(
            Folder(
                id=head.id,
                name=head.name,
                role=role,
                label_th=label_th,
                label_en=label_en,
                messages=head.messages,
                unread=unread.get(head.id, 0),
                depth=len(parts) - 1,
            )
        )
    folders.sort(key=lambda f: (_ORDER.get(f.role or "", len(_ORDER)), f.name.casefold()))
    return folders


@dataclass
class _Tally:
    uidvalidity: int
    modseq: int
    unseen: set[int]


class UnreadCounts:
    """Unread counts per mailbox, kept current from MODSEQ changes (see the module)."""

    #: Mailboxes remembered; each costs one set of its unseen UIDs.
    CAPACITY: Final = 512

    def __init__(self, mailboxes: Mailboxes) -> None:
        self.mailboxes = mailboxes
        self._tallies: OrderedDict[int, _Tally] = OrderedDict()
        #: Full scans done (for tests: an unchanged mailbox is never scanned twice).
        self.scans = 0

    async def count(self, head: MailboxHead) -> int:
        tally = self._tallies.get(head.id)
        if tally is not None and tally.uidvalidity != head.uidvalidity:
            tally = None  # deleted and recreated under the same id: start again
        if tally is None:
            modseq, unseen = await self.mailboxes.unseen_uids(head.id)
            self.scans += 1
            tally = _Tally(head.uidvalidity, modseq, unseen)
        elif head.highestmodseq != tally.modseq:
            base = tally.modseq
            modseq, changed, gone = await self.mailboxes.flag_changes(head.id, base)
            if tally.modseq != base:
                # Another page brought it up to date meanwhile, maybe past our
                # snapshot: applying ours now could undo a newer change.
                return len(tally.unseen)
            for uid, flags in changed:
                if "\\seen" in flags.lower().split():
                    tally.unseen.discard(uid)
                else:
                    tally.unseen.add(uid)
            tally.unseen.difference_update(gone)
            tally.modseq = modseq
        self._tallies[head.id] = tally
        self._tallies.move_to_end(head.id)
        while len(self._tallies) > self.CAPACITY:
            self._tallies.popitem(last=False)
        return len(tally.unseen)

    async def folders(self, owner: str) -> list[Folder]:
        """The sidebar of *owner*: every mailbox with its unread count."""
        heads = await self.mailboxes.heads(owner)
        unread = {head.id: await self.count(head) for head in heads}
        return make_folders(heads, unread)
