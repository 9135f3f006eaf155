"""Mailbox replication with the central IMAP server: every local user's mail, both ways.

DESIGN.md "Sync, in one paragraph". For each user of this box's agencies the replicator
logs in to ``config.central_imap`` as the box (``keys/central.json``) acting for the
user through a SASL PLAIN authorisation identity (RFC 4616), and makes each of the
user's mailboxes equal to its central twin. A mailbox missing on one side is created
there. The state of each pair of mailboxes lives in ``db/sync.sqlite``
(`mailbox_state`): cursors on both sides and a local UID <-> central UID map.

One round of one mailbox, in this order (each step commits before the next starts):

1. SELECT, with ``(QRESYNC (uidvalidity modseq))`` once the pair has a history and the
   server offers QRESYNC (RFC 7162 §3.2.5), else ``(CONDSTORE)``. A UIDVALIDITY that
   differs from the stored one on either side restarts the pair from nothing.
2. Down, changes: flags changed and messages expunged centrally since the last round
   (from the QRESYNC SELECT; else ``UID FETCH ... (CHANGEDSINCE m)`` plus a walk over
   the map; else the walk alone) are applied locally.
3. Down, new: central UIDs at or above the cursor that are not in the map are fetched in
   batches bounded in count and bytes, and stored through the mail store (quota, search
   index, MODSEQ all apply). The map rows and the cursor are committed per batch.
   Messages over `WHOLE_BELOW` are only *listed* (header block, size, flags, date,
   BODYSTRUCTURE) and stored with their body pending (`Mailboxes.append_pending`).
4. Up, changes: local flag changes and expunges since the local MODSEQ cursor go to
   the centre (``UID STORE ... (UNCHANGEDSINCE m)``, ``UID EXPUNGE``, RFC 4315).
5. Up, new: local messages at or above the local UID cursor and not in the map are
   APPENDed; APPENDUID (RFC 4315 §3) gives the map row, committed per batch.

After every user's steps 1-5, a second pass fetches pending bodies user by user (those
a reader asked for first, then newest first) and fills each in with one commit
(`Mailstore.fill_body`). A reader that needs a pending body now (IMAP FETCH, webmail)
goes through `request_body`, installed as the mail store's `body_fetcher` while the
replicator runs: it is fetched on a connection of its own, whatever the round is doing.

Nothing is ever stored twice: before a central message is stored locally (step 3) it
is matched against local messages the map does not know yet, by Message-ID digest and
content hash. Steps 3 and 5 are the only places mail is written, and step 3 runs first:
an APPEND whose map row was lost to a crash or a cut (step 5) comes back down in the
next round's step 3 as "a central message not in the map", finds its local original
by content, and is mapped instead of copied.

Flags follow a three-way merge against the flags both sides last agreed on (the map
row): a flag changed on one side only takes that side's value; changed on both, they
agree (a flag is either set or not). When there is no common ancestor (first sync of a
message found on both sides) the flags are the union. An expunge on either side wins
over a flag change on the other. A move is an expunge plus a new message.

What this is not: delivery or IMAP serving (both local-first and unaware of this), or
the outbound relay (``sync.outbound``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio

from appliance.config import Config
from appliance.directory import Directory, User
from appliance.mail import headers
from appliance.mail.imap import mime
from appliance.mail.imap.client import (
    Event,
    FetchData,
    ImapProtocolError,
    ListEntry,
    SearchResult,
    Status,
    StatusData,
    Vanished,
    parse_uid_set,
    uid_set,
)
from appliance.mail.mailboxes import (
    SEPARATOR,
    FlagMode,
    MailboxError,
    Mailboxes,
    MailboxHead,
    canonical_flags,
    sync_changed_flags,
    sync_expunged_since,
    sync_find_copies,
    sync_find_listed_copies,
    sync_flags_of,
    sync_highestmodseq,
    sync_new_messages,
)
from appliance.mail.mailstore import BodyUnavailable, Mailstore, QuotaExceeded
from appliance.store.blobs import BlobCorrupt, BlobMissing
from appliance.store.database import open_database
from appliance.sync.central import (
    CentralError,
    central_client_context,
    load_credentials,
    parse_endpoint,
)
from appliance.sync.clock import Clock
from appliance.sync.imap_link import CommandFailed, ImapLink, LinkDown
from appliance.sync.liveness import LinkWatch
from appliance.sync.mailbox_state import (
    MAILBOX_SYNC_MIGRATIONS,
    MailboxSyncState,
    Mapped,
    Pair,
)
from appliance.sync.status import SyncStatus

log = logging.getLogger("edgebox.sync.mailbox")

T = TypeVar("T")

STREAM = "mailbox"
SYNC_DB = "sync.sqlite"
_NO_LIMIT = 2**62
#: Special-use attributes (RFC 6154) that pair a local mailbox with a central one
#: whatever either is called.
_SPECIAL_USES = ("\\sent", "\\drafts", "\\trash", "\\junk", "\\archive")
#: Central messages up to this size come down whole in the listing phase; larger ones
#: are listed (header, size, flags, structure) and their bodies follow. Listing first
#: exists so that a few large attachments cannot hold back the rest of a backlog; a
#: body this small costs about 50 ms at 10 Mbit/s, less than the extra command and
#: round trip fetching it separately would, and most office mail (text, a signature
#: image) is under it. It also keeps the usual case on the content-hash match.
WHOLE_BELOW = 64 * 1024
#: A body a user asked for is fetched on its own connection, which gives up sooner
#: than a round's (the reader waits `Mailstore.body_wait` at most anyway).
REQUEST_TIMEOUT = 15.0
#: Body requests queued at once; beyond that a reader is told "unavailable" at once.
MAX_REQUESTS = 64
#: Folder renames and deletions carried over per user and round: each one is followed by
#: a fresh LIST, since renaming a parent renames its children too (RFC 9051 §6.3.6).
MAX_FOLDER_CHANGES = 32


@dataclass
class RoundReport:
    """What one round did, for the status file and the tests."""

    users: int = 0
    mailboxes: int = 0
    fetched: int = 0
    #: Large central messages stored without their body (listing phase) ...
    listed: int = 0
    #: ... and bodies stored later (body phase, or asked for by a reader).
    bodies: int = 0
    #: Bodies still at the centre after the round (0 once caught up).
    bodies_pending: int = 0
    appended: int = 0
    matched: int = 0
    flags_down: int = 0
    flags_up: int = 0
    expunged_down: int = 0
    expunged_up: int = 0
    #: Folders renamed or deleted on one side and then on the other.
    folders_renamed: int = 0
    folders_deleted: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


@dataclass
class _Selected:
    """What SELECT told about the central mailbox."""

    uidvalidity: int = 0
    uidnext: int = 0
    #: None: the server keeps no MODSEQs for it (RFC 7162 §3.1.2.2 NOMODSEQ) or no CONDSTORE.
    highestmodseq: int | None = None
    #: QRESYNC's report: UID -> flags changed since our MODSEQ, and VANISHED (EARLIER).
    changed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    vanished: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Incoming:
    """A central message on its way down: whole (*content*) or listed (*header*)."""

    uid: int
    flags: tuple[str, ...]
    internal_date: int | None
    size: int
    content: bytes | None = None
    header: bytes | None = None
    #: `mime.stored_structure` of its BODYSTRUCTURE, for a listed message.
    structure: str | None = None


@dataclass
class _BodyRequest:
    """Bodies a reader is waiting for (`MailboxReplicator.request_body`)."""

    message_ids: tuple[int, ...]
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None


class MailboxReplicator:
    """The ``mailbox-sync`` service: rounds of replication, one user after another.

    It is handed the parts of the box it uses: the settings (the central IMAP server,
    the data directory), the directory (whose mailboxes) and the mail store.
    """

    name = "mailbox-sync"

    def __init__(
        self,
        status: SyncStatus,
        clock: Clock,
        *,
        config: Config,
        directory: Directory,
        mailstore: Mailstore,
        interval: float = 60.0,
        max_backoff: float = 900.0,
        batch_messages: int = 50,
        batch_bytes: int = 8 * 1024 * 1024,
        timeout: float = 60.0,
        use_condstore: bool = True,
        whole_below: int | None = WHOLE_BELOW,
        fetch_bodies: bool = True,
        watch: LinkWatch | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.mailstore = mailstore
        #: Shared with the link monitor, which cuts waits short when the link returns.
        self.watch = watch or LinkWatch()
        self.status = status
        self.clock = clock
        self.interval = interval
        self.max_backoff = max_backoff
        self.batch_messages = batch_messages
        self.batch_bytes = batch_bytes
        self.timeout = timeout
        #: False: act as if the centre had no CONDSTORE/QRESYNC (UID ranges only).
        self.use_condstore = use_condstore
        #: Size above which a central message is listed first (None: never; all whole).
        self.whole_below = whole_below
        #: False: rounds list and never fetch pending bodies (readers' requests still
        #: are); for tests of the phases, and an operator's "listing only" on a bad day.
        self.fetch_bodies = fetch_bodies
        self.mailboxes = Mailboxes(mailstore)
        self.state: MailboxSyncState | None = None
        self._wake = trio.Event()
        #: Bodies readers asked for: fetched first by the body phase if their own
        #: request failed (the link was down).
        self._requested: set[int] = set()
        self._requests: trio.MemorySendChannel[_BodyRequest] | None = None

    # -- the service --------------------------------------------------------------------

    def wake(self) -> None:
        """Start a round now (new local mail, a link that came back, an operator)."""
        self._wake.set()

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[MailboxReplicator]:
        """Open the replication state database for the duration of the block."""
        path = self.config.data_dir / "db" / SYNC_DB
        async with open_database(path, MAILBOX_SYNC_MIGRATIONS) as db:
            self.state = MailboxSyncState(db)
            send, receive = trio.open_memory_channel[_BodyRequest](MAX_REQUESTS)
            store = self.mailstore
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_requests, receive)
                    self._requests = send
                    store.body_fetcher = self.request_body
                    try:
                        yield self
                    finally:
                        store.body_fetcher = None
                        self._requests = None
                        nursery.cancel_scope.cancel()
            finally:
                self.state = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with self.opened():
            task_status.started([])
            failures = 0
            while True:
                returns = self.watch.returns
                report = await self.sync_once()
                failures = 0 if report.ok else failures + 1
                delay = self.interval
                if failures:  # back off, but never beyond max_backoff (a days-long cut)
                    delay = min(self.max_backoff, self.interval * 2 ** min(failures - 1, 10))
                if not report.ok and self.watch.returns != returns:
                    # The link came back during the round and cut its dead waits
                    # short: go again now, not after a back-off.
                    delay = 0.0
                await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await trio.lowlevel.checkpoint()
        elif not self._wake.is_set():
            async with trio.open_nursery() as nursery:

                async def timer() -> None:
                    await self.clock.sleep(seconds)
                    nursery.cancel_scope.cancel()

                async def woken() -> None:
                    await self._wake.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(timer)
                nursery.start_soon(woken)
        self._wake = trio.Event()

    async def sync_once(self) -> RoundReport:
        """Run one round for every local user; report it to `SyncStatus`."""
        report = RoundReport()
        try:
            endpoint = parse_endpoint(self.config.central_imap, ("imap", "imaps"))
        except CentralError as exc:
            report.errors.append(f"central IMAP server not set: {exc}")
            self.status.failure(STREAM, report.errors[0])
            return report
        keys = self.config.data_dir / "keys"
        credentials = load_credentials(keys)
        if credentials is None:
            report.errors.append("no central credentials (box not enrolled)")
            self.status.failure(STREAM, report.errors[0])
            return report
        context = central_client_context(keys)
        users = [u for u in await self.directory.users() if not u.remote and not u.disabled]
        # Two passes: every user's listing first, then bodies, so a large backlog of
        # attachments for one user does not delay new mail being listed for the others.
        reachable = await self._pass(endpoint, context, credentials, users, report,
                                     self._sync_user)  # fmt: skip
        if reachable and self.fetch_bodies:
            await self._pass(endpoint, context, credentials, users, report, self._fetch_bodies)
        for user in users:
            report.bodies_pending += await self.mailstore.pending_count(user.address)
        if report.ok:
            self.status.success(STREAM, **report.figures())
        else:
            for error in report.errors:
                log.warning("mailbox sync: %s", error)
            self.status.failure(STREAM, "; ".join(report.errors))
        return report

    async def _pass(
        self, endpoint: Any, context: Any, credentials: Any, users: list[User],
        report: RoundReport, work: Any,
    ) -> bool:  # fmt: skip
        """Run *work(link, user, report)* for each user on its own authenticated link;
        return False if the centre became unreachable (the pass stopped there)."""
        first = work == self._sync_user
        for user in users:
            if not first and not await self.mailstore.pending_bodies(user.address, 1):
                continue  # nothing to fetch: no connection
            try:
                link = await ImapLink.connect(
                    endpoint, context, io_timeout=self.timeout, watch=self.watch
                )
            except LinkDown as exc:
                report.errors.append(str(exc))
                return False  # the centre is unreachable: no use trying the next user
            try:
                await link.authenticate(user.address, credentials.username, credentials.password)
                await work(link, user, report)
                if first:
                    report.users += 1
            except LinkDown as exc:
                report.errors.append(f"{user.address}: {exc}")
                return False
            except (CommandFailed, QuotaExceeded, MailboxError, ImapProtocolError) as exc:
                report.errors.append(f"{user.address}: {type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not stop the other users' mail
                log.exception("mailbox sync of %s failed", user.address)
                report.errors.append(f"{user.address}: {type(exc).__name__}: {exc}")
            finally:
                report.bytes_in += link.bytes_in
                report.bytes_out += link.bytes_out
                await link.logout()
        return True

    # -- bodies listed earlier (phase 2), and readers' requests --------------------------

    async def _fetch_bodies(self, link: ImapLink, user: User, report: RoundReport) -> None:
        """Fetch *user*'s pending bodies: those readers asked for first, then newest first."""
        store = self.mailstore
        skipped: set[int] = set()
        for _ in range(1_000_000):  # each pass stores or skips at least one body
            asked = []
            for message_id in sorted(self._requested - skipped):
                found = await store.locate(message_id)
                if found is not None and found[1] == user.address and found[4]:
                    asked.append((message_id, found[0], found[2], found[3], 0))
            page = await store.pending_bodies(user.address, len(skipped) + 500)
            chosen = {item[0] for item in asked} | skipped
            todo = order_bodies(asked + [p for p in page if p[0] not in chosen], self._requested)
            if not todo:
                return
            batch: list[tuple[int, int, str, int, int]] = []
            total = 0
            for item in todo:
                if batch and (len(batch) >= self.batch_messages
                              or total + item[4] > self.batch_bytes):  # fmt: skip
                    break
                batch.append(item)
                total += item[4]
            done = await self._fetch_some(link, user, batch)
            report.bodies += len(done)
            skipped.update(item[0] for item in batch if item[0] not in done)
            self._requested.difference_update(done)

    async def _fetch_some(
        self, link: ImapLink, user: User, items: Sequence[tuple[int, int, str, int, int]]
    ) -> set[int]:
        """Fetch and store the bodies of *items* (message id, mailbox id, mailbox, uid,
        size) of one user; return the message ids now stored."""
        assert self.state is not None
        pairs = {p.local_name: p for p in await self.state.pairs(user.address)}
        by_mailbox: dict[str, list[tuple[int, int, int]]] = {}
        for message_id, mailbox_id, name, uid, _ in items:
            by_mailbox.setdefault(name, []).append((message_id, mailbox_id, uid))
        stored: set[int] = set()
        conn = link.conn
        for name, wanted in by_mailbox.items():
            pair = pairs.get(name)
            if pair is None:
                continue  # never replicated: no central original to ask for
            mapped = await self.state.by_local(pair, [uid for _, _, uid in wanted])
            remote = {mapped[uid].remote_uid: (message_id, mailbox_id, uid)
                      for message_id, mailbox_id, uid in wanted if uid in mapped}  # fmt: skip
            if not remote:
                continue
            select = await link.run(conn.select(pair.remote_name, readonly=True))
            if not select.ok:
                continue  # the central mailbox is gone; the next round sorts it out
            bodies: dict[int, bytes] = {}

            def on_fetch(
                event: Event, bodies: dict[int, bytes] = bodies, remote: dict[int, Any] = remote
            ) -> None:
                if isinstance(event, FetchData) and event.uid in remote:
                    content = event.section("BODY[]")
                    if content is not None:
                        bodies[event.uid] = content

            tag = conn.uid_fetch(uid_set(remote), "(UID BODY.PEEK[])")
            await link.check(tag, "UID FETCH BODY", on_fetch)
            for remote_uid, content in sorted(bodies.items()):
                message_id, mailbox_id, uid = remote[remote_uid]
                await self.mailstore.fill_body(mailbox_id, uid, content)
                stored.add(message_id)
            await link.run(conn.unselect() if "UNSELECT" in conn.capabilities else conn.noop())
        # A body filled by another path meanwhile (the same message elsewhere) counts.
        for item in items:
            found = await self.mailstore.locate(item[0])
            if found is None or not found[4]:
                stored.add(item[0])
        return stored

    async def request_body(self, message_ids: Sequence[int]) -> None:
        """The `BodyFetcher` the mail store calls when a reader needs a pending body.

        Queues the request for `_serve_requests`, which fetches on its own connection
        (a round may be busy with another user), and waits for it. Raises
        `BodyUnavailable` when the link is down or too many requests wait; the caller
        bounds the wait.
        """
        queue = self._requests
        if queue is None:
            raise BodyUnavailable("mailbox replication is not running")
        request = _BodyRequest(tuple(message_ids))
        self._requested.update(request.message_ids)
        try:
            queue.send_nowait(request)
        except trio.WouldBlock:
            raise BodyUnavailable("too many bodies are being fetched; try again") from None
        await request.done.wait()
        if request.error is not None:
            raise BodyUnavailable(request.error)

    async def _serve_requests(self, receive: trio.MemoryReceiveChannel[_BodyRequest]) -> None:
        async for request in receive:
            try:
                await self._answer(request)
            except (LinkDown, CentralError) as exc:
                request.error = f"the central server cannot be reached ({exc})"
            except (CommandFailed, ImapProtocolError, MailboxError) as exc:
                request.error = f"the central server refused: {exc}"
            except Exception as exc:  # a bug must not stop later requests
                log.exception("fetching requested bodies failed")
                request.error = f"{type(exc).__name__}"
            finally:
                request.done.set()

    async def _answer(self, request: _BodyRequest) -> None:
        store = self.mailstore
        by_owner: dict[str, list[tuple[int, int, str, int, int]]] = {}
        for message_id in request.message_ids:
            found = await store.locate(message_id)
            if found is None or not found[4]:
                continue  # expunged, or stored meanwhile
            mailbox_id, owner, name, uid, _ = found
            by_owner.setdefault(owner, []).append((message_id, mailbox_id, name, uid, 0))
        if not by_owner:
            return
        endpoint = parse_endpoint(self.config.central_imap, ("imap", "imaps"))
        keys = self.config.data_dir / "keys"
        credentials = load_credentials(keys)
        if credentials is None:
            raise CentralError("no central credentials (box not enrolled)")
        context = central_client_context(keys)
        timeout = min(self.timeout, REQUEST_TIMEOUT)
        for owner, items in by_owner.items():
            user = await self.directory.user(owner)
            if user is None:
                continue
            link = await ImapLink.connect(endpoint, context, io_timeout=timeout, watch=self.watch)
            try:
                await link.authenticate(owner, credentials.username, credentials.password)
                stored = await self._fetch_some(link, user, items)
                self._requested.difference_update(stored)
            finally:
                await link.logout()

    # -- one user ---------------------------------------------------------------------

    async def _sync_user(self, link: ImapLink, user: User, report: RoundReport) -> None:
        assert self.state is not None
        caps = link.conn.capabilities
        if self.use_condstore and "QRESYNC" in caps:
            await link.check(link.conn.enable("QRESYNC"), "ENABLE")  # RFC 7162 §3.2.3
        for _ in range(MAX_FOLDER_CHANGES):
            delimiter, selectable = await _list(link)
            local = {m.name: m for m in await self.mailboxes.heads(user.address)}
            pairs = await self.state.pairs(user.address)
            if not await self._follow_folders(link, user, pairs, local, selectable, delimiter,
                                              report):  # fmt: skip
                break
        by_use = {
            a.lower(): e.name for e in selectable.values() for a in e.attributes
            if a.lower() in _SPECIAL_USES
        }  # fmt: skip
        known = {p.local_name: p.remote_name for p in pairs}

        plan: list[tuple[str, str]] = []
        claimed: set[str] = set()
        for name, head in local.items():
            remote = known.get(name) or by_use.get((head.special_use or "").lower())
            remote = remote or _to_remote(name, delimiter)
            if remote not in selectable and remote not in claimed:
                create = await link.run(link.conn.create(remote))
                if not create.ok and not (create.code and create.code.name == "ALREADYEXISTS"):
                    raise CommandFailed(f"CREATE {remote}", create)
            plan.append((name, remote))
            claimed.add(remote)
        for remote, entry in selectable.items():
            if remote in claimed:
                continue
            name = _to_local(remote, delimiter)
            if name not in local:
                special = next((a for a in entry.attributes if a.lower() in _SPECIAL_USES), None)
                try:
                    await self.mailboxes.create(user.address, name, special, subscribe=True)
                except MailboxError as exc:
                    if exc.code != "ALREADYEXISTS":
                        raise
            plan.append((name, remote))
            claimed.add(remote)
        for name, remote in plan:
            await self._sync_mailbox(link, user, name, remote, report)
            report.mailboxes += 1

    async def _follow_folders(
        self, link: ImapLink, user: User, pairs: Sequence[Pair], local: dict[str, MailboxHead],
        selectable: dict[str, ListEntry], delimiter: str, report: RoundReport,
    ) -> bool:  # fmt: skip
        """Carry one folder rename or deletion over to the other side; True if it did.

        A replicated folder missing on one side was renamed or deleted there. A mailbox
        keeps its UIDVALIDITY through RENAME (the box's does; Dovecot's does), so the
        same UIDVALIDITY under a new, unpaired name is the folder renamed. Otherwise it
        was deleted, and the deletion is carried over only if the other side holds
        nothing the box has not replicated yet: new mail at the centre, or new local
        mail not yet uploaded, must not go with it. Such a folder is kept and comes
        back on the side that deleted it, with everything in it.
        """
        assert self.state is not None
        settled = [p for p in pairs if p.local_uidvalidity and p.remote_uidvalidity]
        moved = [p for p in settled if p.local_name not in local or p.remote_name not in selectable]
        if not moved:
            return False
        paired_local = {p.local_name for p in pairs}
        paired_remote = {p.remote_name for p in pairs}
        local_by_uidvalidity = {
            head.uidvalidity: name for name, head in local.items() if name not in paired_local
        }
        remote_by_uidvalidity: dict[int, list[str]] = {}
        if any(p.remote_name not in selectable for p in moved):
            for name in selectable.keys() - paired_remote:
                uidvalidity, _ = await _status(link, name)
                remote_by_uidvalidity.setdefault(uidvalidity, []).append(name)
        # Parents first: their rename carries the children along on that side.
        for pair in sorted(moved, key=lambda p: p.local_name.count(SEPARATOR)):
            local_now = (pair.local_name if pair.local_name in local
                         else local_by_uidvalidity.get(pair.local_uidvalidity))  # fmt: skip
            candidates = remote_by_uidvalidity.get(pair.remote_uidvalidity, [])
            remote_now = (
                pair.remote_name
                if pair.remote_name in selectable
                else (candidates[0] if len(candidates) == 1 else None)
            )
            if local_now is not None and remote_now is not None:
                if remote_now == pair.remote_name:  # renamed on the box
                    remote_now = _to_remote(local_now, delimiter)
                    if remote_now in selectable:
                        continue
                    await link.check(link.conn.rename(pair.remote_name, remote_now), "RENAME")
                elif local_now == pair.local_name:  # renamed at the centre
                    local_now = _to_local(remote_now, delimiter)
                    if local_now in local:
                        continue
                    await self.mailboxes.rename(user.address, pair.local_name, local_now)
                # else: a parent's rename already carried it along on both sides.
                log.info("%s: folder %r is now %r", user.address, pair.local_name, local_now)
                await self.state.rename(pair, local_now, remote_now)
                report.folders_renamed += 1
                return True
            if local_now is None and remote_now is None:
                await self.state.forget(pair)
                return True
            if "INBOX" in (pair.local_name, pair.remote_name.upper()):
                continue
            if remote_now is not None:  # deleted on the box
                if await self._central_has_unseen(link, pair, remote_now):
                    continue
                await link.check(link.conn.delete(remote_now), "DELETE")
            else:  # deleted at the centre
                assert local_now is not None
                info = await self.mailboxes.get(user.address, local_now)
                if info.uidvalidity != pair.local_uidvalidity or info.uidnext > pair.local_next_uid:
                    continue
                try:
                    await self.mailboxes.delete(user.address, local_now)
                except MailboxError:  # it has children now
                    continue
            log.info("%s: folder %r deleted on both sides", user.address, pair.local_name)
            await self.state.forget(pair)
            report.folders_deleted += 1
            return True
        return False

    async def _central_has_unseen(self, link: ImapLink, pair: Pair, remote: str) -> bool:
        """Does central *remote* hold a message the box has not replicated yet?"""
        assert self.state is not None
        uidvalidity, uidnext = await _status(link, remote)
        if uidvalidity != pair.remote_uidvalidity:
            return True
        start = pair.remote_next_uid
        if uidnext <= start:
            return False
        # Above the cursor are the box's own uploads of the last round, and anything new.
        found: list[int] = []

        def on_search(event: Event) -> None:
            if isinstance(event, SearchResult):
                found.extend(n for n in event.numbers if n >= start)

        await link.check(link.conn.select(remote, readonly=True), f"EXAMINE {remote}")
        await link.check(link.conn.uid_search(f"UID {start}:*"), "UID SEARCH", on_search)
        await link.run(link.conn.unselect() if "UNSELECT" in link.conn.capabilities
                       else link.conn.noop())  # fmt: skip
        mapped = await self.state.by_remote(pair, found)
        return any(uid not in mapped for uid in found)

    # -- one mailbox ------------------------------------------------------------------

    async def _sync_mailbox(
        self, link: ImapLink, user: User, name: str, remote: str, report: RoundReport
    ) -> None:
        assert self.state is not None
        conn = link.conn
        pair = await self.state.pair(user.address, name, remote)
        pair = replace(pair, remote_name=remote)
        info = await self.mailboxes.get(user.address, name)
        qresync = "QRESYNC" in conn.enabled and pair.remote_modseq > 0
        condstore = self.use_condstore and bool({"CONDSTORE", "QRESYNC"} & conn.capabilities)
        selected = _Selected()

        def on_select(event: Event) -> None:
            if isinstance(event, Status) and event.code is not None:
                code = event.code
                if code.name == "UIDVALIDITY":
                    selected.uidvalidity = code.number()
                elif code.name == "UIDNEXT":
                    selected.uidnext = code.number()
                elif code.name == "HIGHESTMODSEQ" and condstore:
                    selected.highestmodseq = code.number()
            elif isinstance(event, FetchData) and event.uid is not None and event.flags is not None:
                selected.changed[event.uid] = event.flags
            elif isinstance(event, Vanished) and event.earlier:
                selected.vanished.extend(event.ranges)

        tag = conn.select(
            remote,
            condstore=condstore,
            qresync=(pair.remote_uidvalidity, pair.remote_modseq, None) if qresync else None,
        )
        await link.check(tag, f"SELECT {remote}", on_select)
        if selected.uidvalidity == 0:
            raise ImapProtocolError(f"SELECT {remote} gave no UIDVALIDITY")
        if (pair.remote_uidvalidity, pair.local_uidvalidity) != (
            selected.uidvalidity,
            info.uidvalidity,
        ):
            if pair.remote_uidvalidity or pair.local_uidvalidity:
                log.warning("%s %s: UIDVALIDITY changed; matching afresh", user.address, name)
            pair = await self.state.restart(pair, info.uidvalidity, selected.uidvalidity)
            qresync = False
        run = _MailboxRound(self, link, user, info.id, pair, selected, report, info.uidnext)
        await run.down_changes(qresync)
        await run.down_new()
        await run.up_changes()
        await run.up_new()
        await link.run(conn.unselect() if "UNSELECT" in conn.capabilities else conn.noop())


class _MailboxRound:
    """The steps of one mailbox's round (see the module docstring); holds the pair."""

    def __init__(
        self,
        replicator: MailboxReplicator,
        link: ImapLink,
        user: User,
        mailbox_id: int,
        pair: Pair,
        selected: _Selected,
        report: RoundReport,
        local_uidnext: int,
    ) -> None:
        assert replicator.state is not None
        self.r = replicator
        self.state = replicator.state
        self.store = replicator.mailstore
        self.link = link
        self.conn = link.conn
        self.user = user
        self.mailbox_id = mailbox_id
        self.pair = pair
        self.selected = selected
        self.report = report
        self.condstore = selected.highestmodseq is not None
        #: The local UIDNEXT when the round began (see `_find_local`).
        self.local_uidnext = local_uidnext

    # -- step 2: central changes down -------------------------------------------------

    async def down_changes(self, qresync: bool) -> None:
        pair = self.pair
        if pair.remote_modseq == 0 and await self.state.count(pair) == 0:
            pass  # nothing mapped yet
        elif qresync:
            await self._apply_remote_flags(self.selected.changed.items())
            await self._apply_remote_vanished(_expand(self.selected.vanished))
        else:
            changed: dict[int, tuple[str, ...]] = {}
            if self.condstore and pair.remote_modseq:
                # RFC 7162 §3.1.4: only what changed since the last round.
                def on_fetch(event: Event) -> None:
                    if isinstance(event, FetchData) and event.uid and event.flags is not None:
                        changed[event.uid] = event.flags

                # "1:*", not up to the cursor: our own uploads are mapped above it.
                tag = self.conn.uid_fetch("1:*", "(UID FLAGS)", changedsince=pair.remote_modseq)
                await self.link.check(tag, "UID FETCH CHANGEDSINCE", on_fetch)
                await self._apply_remote_flags(changed.items())
            await self._walk_map(compare_flags=not (self.condstore and pair.remote_modseq))
        if self.selected.highestmodseq is not None:
            self.pair = replace(self.pair, remote_modseq=self.selected.highestmodseq)
            await self.state.commit(self.pair)

    async def _walk_map(self, *, compare_flags: bool) -> None:
        """Find central expunges (and, without CONDSTORE, flag changes) by asking for
        every mapped UID, a bounded page at a time."""
        after = 0
        for _ in range(1_000_000):
            page = await self.state.mapped_page(self.pair, after, 500)
            if not page:
                return
            after = page[-1].remote_uid
            present: dict[int, tuple[str, ...]] = {}

            def on_fetch(event: Event, present: dict[int, tuple[str, ...]] = present) -> None:
                if isinstance(event, FetchData) and event.uid is not None:
                    present[event.uid] = event.flags or ()

            wanted = uid_set(m.remote_uid for m in page)
            await self.link.check(self.conn.uid_fetch(wanted, "(UID FLAGS)"), "UID FETCH", on_fetch)
            if compare_flags:
                await self._apply_remote_flags(
                    (m.remote_uid, present[m.remote_uid]) for m in page if m.remote_uid in present
                )
            await self._apply_remote_vanished(m.remote_uid for m in page
                                              if m.remote_uid not in present)  # fmt: skip

    async def _apply_remote_flags(self, changes: Iterable[tuple[int, tuple[str, ...]]]) -> None:
        for chunk in _chunks(changes, 500):
            mapped = await self.state.by_remote(self.pair, [uid for uid, _ in chunk])
            local = await sync_flags_of(self.store, self.mailbox_id,
                                        [m.local_uid for m in mapped.values()])  # fmt: skip
            to_local: dict[tuple[str, ...], list[int]] = {}
            to_remote: dict[tuple[str, ...], list[Mapped]] = {}
            agreed: list[Mapped] = []
            for remote_uid, remote_flags in chunk:
                m = mapped.get(remote_uid)
                if m is None or m.local_uid not in local:
                    continue  # not ours yet (step 3), or expunged here (step 4 sends it)
                local_flags = local[m.local_uid]
                merged = merge_flags(m.flags, local_flags, clean_flags(remote_flags))
                if not same_flags(merged, local_flags):
                    to_local.setdefault(_key(merged), []).append(m.local_uid)
                    self.report.flags_down += 1
                if not same_flags(merged, remote_flags):
                    to_remote.setdefault(_key(merged), []).append(replace(m, flags=merged))
                elif not same_flags(merged, m.flags):
                    agreed.append(replace(m, flags=merged))
            for flags, uids in to_local.items():
                await self.r.mailboxes.store_flags(self.mailbox_id, uids, FlagMode.REPLACE, flags)
            agreed += await self._store_remote(to_remote)
            await self.state.commit(self.pair, add=agreed)

    async def _apply_remote_vanished(self, remote_uids: Iterable[int]) -> None:
        for chunk in _chunks(remote_uids, 500):
            mapped = await self.state.by_remote(self.pair, chunk)
            if not mapped:
                continue
            local_uids = [m.local_uid for m in mapped.values()]
            await self.r.mailboxes.store_flags(self.mailbox_id, local_uids, FlagMode.ADD,
                                               ["\\Deleted"])  # fmt: skip
            gone = await self.r.mailboxes.expunge(self.mailbox_id, self.user.address, local_uids)
            self.report.expunged_down += len(gone)
            await self.state.commit(self.pair, remove_remote=list(mapped))

    async def _store_remote(self, groups: dict[tuple[str, ...], list[Mapped]]) -> list[Mapped]:
        """Set central flags, group by group; return the rows the centre took.

        UNCHANGEDSINCE the SELECT's HIGHESTMODSEQ (RFC 7162 §3.1.3): a message changed
        centrally since then is left alone (MODIFIED) and merged again next round.
        """
        taken: list[Mapped] = []
        for flags, rows in groups.items():
            for chunk in _chunks(rows, 500):
                tag = self.conn.uid_store(
                    uid_set(m.remote_uid for m in chunk), "FLAGS", flags, silent=True,
                    unchangedsince=self.selected.highestmodseq,
                )  # fmt: skip
                done = await self.link.check(tag, "UID STORE")
                refused: set[int] = set()
                if done.code is not None and done.code.name == "MODIFIED":
                    refused = set(_expand(parse_uid_set(done.code.args.strip())))
                taken += [m for m in chunk if m.remote_uid not in refused]
        return taken

    # -- step 3: new central messages down -------------------------------------------

    async def down_new(self) -> None:
        start = self.pair.remote_next_uid
        found: list[int] = []

        def on_search(event: Event) -> None:
            if isinstance(event, SearchResult):
                found.extend(n for n in event.numbers if n >= start)

        await self.link.check(self.conn.uid_search(f"UID {start}:*"), "UID SEARCH", on_search)
        found.sort()
        for chunk in _chunks(found, 500):
            mapped = await self.state.by_remote(self.pair, chunk)
            wanted = [uid for uid in chunk if uid not in mapped]
            for whole, batch in await self._batches(wanted):
                if whole:
                    await self._fetch_batch(batch)
                else:
                    await self._list_batch(batch)
            self.pair = replace(self.pair, remote_next_uid=max(self.pair.remote_next_uid,
                                                               chunk[-1] + 1))  # fmt: skip
            await self.state.commit(self.pair)
        # Every UID below UIDNEXT as SELECT saw it was in the search, or is gone.
        if self.selected.uidnext > self.pair.remote_next_uid:
            self.pair = replace(self.pair, remote_next_uid=self.selected.uidnext)
            await self.state.commit(self.pair)

    async def _batches(self, uids: Sequence[int]) -> list[tuple[bool, list[int]]]:
        """Split *uids* into ``(whole, batch)``: fetched whole, or listed (body later).

        Batches stay in UID order, because each commit moves the cursor past its last
        UID: a batch must never get ahead of an earlier UID not yet stored.
        """
        if not uids:
            return []
        sizes: dict[int, int] = {}

        def on_fetch(event: Event) -> None:
            if isinstance(event, FetchData) and event.uid is not None:
                sizes[event.uid] = event.size or 0

        tag = self.conn.uid_fetch(uid_set(uids), "(UID RFC822.SIZE)")
        await self.link.check(tag, "UID FETCH RFC822.SIZE", on_fetch)
        batches: list[tuple[bool, list[int]]] = []
        current: list[int] = []
        kind = True
        total = 0
        for uid in uids:
            if uid not in sizes:
                continue  # expunged meanwhile
            whole = self.r.whole_below is None or sizes[uid] <= self.r.whole_below
            # A listed message costs its header, not its size, on the wire.
            cost = sizes[uid] if whole else 0
            if current and (whole != kind or len(current) >= self.r.batch_messages
                            or total + cost > self.r.batch_bytes):  # fmt: skip
                batches.append((kind, current))
                current, total = [], 0
            kind = whole
            current.append(uid)
            total += cost
        if current:
            batches.append((kind, current))
        return batches

    async def _fetch_batch(self, uids: list[int]) -> None:
        fetched: list[FetchData] = []

        def on_fetch(event: Event) -> None:
            if isinstance(event, FetchData) and event.uid in wanted:
                fetched.append(event)

        wanted = set(uids)
        tag = self.conn.uid_fetch(uid_set(uids), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
        await self.link.check(tag, "UID FETCH BODY", on_fetch)
        incoming = []
        for item in fetched:
            content = item.section("BODY[]")
            if content is not None and item.uid is not None:
                incoming.append(_Incoming(item.uid, clean_flags(item.flags or ()),
                                          item.internal_date, len(content), content))  # fmt: skip
        await self._store_incoming(incoming, uids)

    async def _list_batch(self, uids: list[int]) -> None:
        """Phase 1 for large messages: header, size, flags, date and structure only.

        A message whose BODYSTRUCTURE we cannot read (or that comes without its header)
        is fetched whole instead, in the same batch and the same commit.
        """
        listed: list[FetchData] = []

        def on_fetch(event: Event) -> None:
            if isinstance(event, FetchData) and event.uid in wanted:
                listed.append(event)

        wanted = set(uids)
        tag = self.conn.uid_fetch(
            uid_set(uids),
            "(UID FLAGS INTERNALDATE RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER])",
        )
        await self.link.check(tag, "UID FETCH BODYSTRUCTURE", on_fetch)
        incoming: list[_Incoming] = []
        whole: list[int] = []
        for item in listed:
            header = item.section("BODY[HEADER]")
            if item.uid is None:
                continue
            try:
                if header is None or item.size is None or item.size < len(header):
                    raise mime.StructureError("no header or size")
                structure = mime.structure_from_server(item.bodystructure)
            except mime.StructureError as exc:
                log.info("%s: central UID %d listed badly (%s); fetched whole",
                         self.pair.local_name, item.uid, exc)  # fmt: skip
                whole.append(item.uid)
                continue
            incoming.append(_Incoming(item.uid, clean_flags(item.flags or ()), item.internal_date,
                                      item.size, None, header,
                                      mime.stored_structure(structure)))  # fmt: skip
        if whole:
            fetched: list[FetchData] = []

            def on_whole(event: Event) -> None:
                if isinstance(event, FetchData) and event.uid in set(whole):
                    fetched.append(event)

            tag = self.conn.uid_fetch(uid_set(whole), "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            await self.link.check(tag, "UID FETCH BODY", on_whole)
            for item in fetched:
                content = item.section("BODY[]")
                if content is not None and item.uid is not None:
                    flags = clean_flags(item.flags or ())
                    incoming.append(
                        _Incoming(item.uid, flags, item.internal_date, len(content), content)
                    )
        await self._store_incoming(incoming, uids)

    async def _store_incoming(self, incoming: list[_Incoming], uids: list[int]) -> None:
        """Match or store one batch of central messages, then commit its map rows and
        the cursor past *uids* in one transaction."""
        adds: list[Mapped] = []
        claimed: set[int] = set()
        to_remote: dict[tuple[str, ...], list[Mapped]] = {}
        unstored: dict[int, Mapped] = {}
        for item in sorted(incoming, key=lambda i: i.uid):
            remote_flags = item.flags
            if item.content is not None:
                local_uid = await self._find_local(item.content, claimed)
            else:
                assert item.header is not None
                local_uid = await self._find_listed(item.header, item.size, claimed)
            if local_uid is not None:
                found = await sync_flags_of(self.store, self.mailbox_id, [local_uid])
                local_flags = found.get(local_uid, ())
                merged = union_flags(local_flags, remote_flags)  # no common ancestor
                if not same_flags(merged, local_flags):
                    await self.r.mailboxes.store_flags(self.mailbox_id, [local_uid],
                                                       FlagMode.REPLACE, merged)  # fmt: skip
                mapped = Mapped(local_uid, item.uid, merged)
                if same_flags(merged, remote_flags):
                    adds.append(mapped)
                else:
                    to_remote.setdefault(_key(merged), []).append(mapped)
                    # If the centre refuses the store (changed meanwhile), the pair is
                    # still mapped, with the central flags as the common ancestor: the
                    # next round's merge then sends the local additions up.
                    unstored[item.uid] = replace(mapped, flags=remote_flags)
                self.report.matched += 1
            elif item.content is not None:
                _, local_uid = await self.r.mailboxes.append(
                    self.user.address, self.pair.local_name, item.content,
                    quota_bytes=self.user.quota_bytes, flags=remote_flags,
                    internal_date=item.internal_date,
                )  # fmt: skip
                adds.append(Mapped(local_uid, item.uid, remote_flags))
                self.report.fetched += 1
            else:
                assert item.header is not None
                assert item.structure is not None
                _, local_uid = await self.r.mailboxes.append_pending(
                    self.user.address, self.pair.local_name, item.header, item.size,
                    item.structure, quota_bytes=self.user.quota_bytes, flags=remote_flags,
                    internal_date=item.internal_date,
                )  # fmt: skip
                adds.append(Mapped(local_uid, item.uid, remote_flags))
                self.report.listed += 1
            claimed.add(local_uid)
        taken = await self._store_remote(to_remote)
        adds += taken
        for m in taken:
            unstored.pop(m.remote_uid, None)
        adds += unstored.values()
        self.pair = replace(self.pair, remote_next_uid=max(self.pair.remote_next_uid,
                                                           max(uids) + 1))  # fmt: skip
        await self.state.commit(self.pair, add=adds)

    async def _find_listed(self, header: bytes, size: int, claimed: set[int]) -> int | None:
        """A local message the map does not know yet with this header block and size.

        The listing has no body to hash, so a copy is recognised by its Message-ID
        digest (or size alone, for copies without one) and then by its whole header
        block, which carries the Message-ID, the date and every Received line.
        """
        if self.pair.local_next_uid >= self.local_uidnext:
            return None
        message_id = headers.message_id(headers.parse_headers(header))
        digest = None if message_id is None else self.store.blobs.digest(message_id.encode())
        candidates = await sync_find_listed_copies(
            self.store, self.mailbox_id, digest, size, self.pair.local_next_uid,
            self.local_uidnext,
        )  # fmt: skip
        candidates = [(uid, blob) for uid, blob in candidates if uid not in claimed]
        if not candidates:
            return None
        mapped = await self.state.by_local(self.pair, [uid for uid, _ in candidates])
        for uid, blob_id in candidates:
            if uid in mapped:
                continue
            try:
                stored = await trio.to_thread.run_sync(self.store.blobs.get, blob_id)
            except (BlobMissing, BlobCorrupt):
                continue
            if stored.startswith(header):
                return uid
        return None

    async def _find_local(self, content: bytes, claimed: set[int]) -> int | None:
        """A local message with this content that the map does not know yet, if any."""
        content_hash = hashlib.sha256(content).hexdigest()
        message_id = headers.message_id(headers.parse_headers(content))
        digest = None if message_id is None else self.store.blobs.digest(message_id.encode())
        # Candidates: local mail not yet uploaded or mapped, that existed when the round
        # began. What this round stored itself is mapped already, and leaving it out
        # keeps the first sync of a new box free of any search.
        if self.pair.local_next_uid >= self.local_uidnext:
            return None
        candidates = await sync_find_copies(
            self.store, self.mailbox_id, content_hash, digest,
            self.pair.local_next_uid, self.local_uidnext,
        )  # fmt: skip
        candidates = [uid for uid in candidates if uid not in claimed]
        if not candidates:
            return None
        mapped = await self.state.by_local(self.pair, candidates)
        return next((uid for uid in candidates if uid not in mapped), None)

    # -- step 4: local changes up -----------------------------------------------------

    async def up_changes(self) -> None:
        since = self.pair.local_modseq
        # Changes committed after this snapshot are seen next round; ones made during
        # this step are seen twice, which costs nothing (the map row already agrees).
        snapshot = await sync_highestmodseq(self.store, self.mailbox_id)
        if snapshot <= since:
            return
        after = 0
        for _ in range(1_000_000):
            page = await sync_changed_flags(self.store, self.mailbox_id, since, after,
                                            _NO_LIMIT, 500)  # fmt: skip
            if not page:
                break
            after = page[-1][0]
            mapped = await self.state.by_local(self.pair, [uid for uid, _ in page])
            to_remote: dict[tuple[str, ...], list[Mapped]] = {}
            for uid, flags in page:
                m = mapped.get(uid)
                if m is not None and not same_flags(flags, m.flags):
                    to_remote.setdefault(_key(flags), []).append(replace(m, flags=flags))
            taken = await self._store_remote(to_remote)
            self.report.flags_up += len(taken)
            await self.state.commit(self.pair, add=taken)
        after = 0
        for _ in range(1_000_000):
            gone = await sync_expunged_since(self.store, self.mailbox_id, since, after, 500)
            if not gone:
                break
            after = gone[-1]
            mapped = await self.state.by_local(self.pair, gone)
            if mapped:
                remote = uid_set(m.remote_uid for m in mapped.values())
                tag = self.conn.uid_store(remote, "+FLAGS", ["\\Deleted"], silent=True)
                await self.link.check(tag, "UID STORE \\Deleted")
                if "UIDPLUS" in self.conn.capabilities:  # RFC 4315 §2.1: only these
                    await self.link.check(self.conn.uid_expunge(remote), "UID EXPUNGE")
                self.report.expunged_up += len(mapped)
                await self.state.commit(self.pair, remove_local=list(mapped))
        self.pair = replace(self.pair, local_modseq=snapshot)
        await self.state.commit(self.pair)

    # -- step 5: new local messages up ------------------------------------------------

    async def up_new(self) -> None:
        if "UIDPLUS" not in self.conn.capabilities:
            # Without APPENDUID an upload could not be mapped, and would come back down.
            log.warning("central server lacks UIDPLUS: %s not uploaded", self.pair.local_name)
            return
        for _ in range(1_000_000):
            page = await sync_new_messages(
                self.store, self.mailbox_id, self.pair.local_next_uid, self.r.batch_messages
            )
            if not page:
                return
            mapped = await self.state.by_local(self.pair, [m.uid for m in page])
            adds: list[Mapped] = []
            to_remote: dict[tuple[str, ...], list[Mapped]] = {}
            for message in page:
                m = mapped.get(message.uid)
                if m is not None:  # came down this round; a flag may have changed since
                    if not same_flags(message.flags, m.flags):
                        to_remote.setdefault(_key(message.flags), []).append(
                            replace(m, flags=clean_flags(message.flags))
                        )
                    continue
                if message.body_pending:
                    # Only a message listed from the centre is pending, and the map
                    # knows it, unless its central original was expunged before the map
                    # row was committed: there is no body to upload, and none to fetch.
                    log.warning("%s: local UID %d has no body and no central original;"
                                " not uploaded", self.pair.local_name, message.uid)  # fmt: skip
                    continue
                content = await self.store.content(message)
                flags = clean_flags(message.flags)
                tag = self.conn.append(self.pair.remote_name, content, flags=flags,
                                       internal_date=message.internal_date)  # fmt: skip
                done = await self.link.check(tag, "APPEND")
                if done.code is None or done.code.name != "APPENDUID":
                    raise ImapProtocolError("APPEND OK without APPENDUID despite UIDPLUS")
                uidvalidity, _, uids = done.code.args.partition(" ")
                if int(uidvalidity) != self.pair.remote_uidvalidity:
                    raise ImapProtocolError("central UIDVALIDITY changed during the round")
                (remote_uid,) = _expand(parse_uid_set(uids.strip()))
                adds.append(Mapped(message.uid, remote_uid, flags))
                self.report.appended += 1
            adds += await self._store_remote(to_remote)
            self.pair = replace(self.pair, local_next_uid=page[-1].uid + 1)
            await self.state.commit(self.pair, add=adds)


def order_bodies(
    pending: Sequence[tuple[int, int, str, int, int]], requested: Collection[int]
) -> list[tuple[int, int, str, int, int]]:
    """The body phase's order: bodies readers asked for first, then as given (newest
    first, from `Mailstore.pending_bodies`)."""
    return sorted(pending, key=lambda item: item[0] not in requested)


# -- flags -------------------------------------------------------------------------------


def clean_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Canonical spelling, no duplicates, no \\Recent (a session flag, RFC 9051 §2.3.2)."""
    return canonical_flags(flags)


def same_flags(a: Iterable[str], b: Iterable[str]) -> bool:
    return {f.lower() for f in clean_flags(a)} == {f.lower() for f in clean_flags(b)}


def union_flags(a: Iterable[str], b: Iterable[str]) -> tuple[str, ...]:
    return clean_flags([*a, *b])


def merge_flags(
    base: Iterable[str], local: Iterable[str], remote: Iterable[str]
) -> tuple[str, ...]:
    """Three-way merge, flag by flag: the side that changed it since *base* wins.

    A flag is either set or not, so when both sides changed it they changed it the same
    way: there is never a conflict to break.
    """
    spell = {f.lower(): f for f in clean_flags([*base, *local, *remote])}
    b = {f.lower() for f in clean_flags(base)}
    loc = {f.lower() for f in clean_flags(local)}
    rem = {f.lower() for f in clean_flags(remote)}
    result = []
    for name, spelling in spell.items():
        in_local, in_remote = name in loc, name in rem
        keep = in_local if in_local == in_remote or in_remote == (name in b) else in_remote
        if keep:
            result.append(spelling)
    return clean_flags(result)


def _key(flags: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(clean_flags(flags), key=str.lower))


# -- names and sets ----------------------------------------------------------------------


async def _list(link: ImapLink) -> tuple[str, dict[str, ListEntry]]:
    """LIST every central mailbox; return the hierarchy delimiter and the selectable ones."""
    entries: list[ListEntry] = []

    def on_list(event: Event) -> None:
        if isinstance(event, ListEntry):
            entries.append(event)

    await link.check(link.conn.list("", "*"), "LIST", on_list)
    delimiter = next((e.delimiter for e in entries if e.delimiter), None) or SEPARATOR
    selectable = {
        e.name: e for e in entries
        if not {a.lower() for a in e.attributes} & {"\\noselect", "\\nonexistent"}
    }  # fmt: skip
    return delimiter, selectable


async def _status(link: ImapLink, mailbox: str) -> tuple[int, int]:
    """STATUS (UIDVALIDITY UIDNEXT) of a central mailbox (RFC 9051 §6.3.11)."""
    events, _ = await link.collect(link.conn.status(mailbox, "UIDVALIDITY", "UIDNEXT"), "STATUS")
    for event in events:
        if isinstance(event, StatusData):
            return event.get("UIDVALIDITY") or 0, event.get("UIDNEXT") or 0
    raise ImapProtocolError(f"STATUS {mailbox} gave no answer")


def _to_remote(name: str, delimiter: str) -> str:
    return name if delimiter == SEPARATOR else name.replace(SEPARATOR, delimiter)


def _to_local(name: str, delimiter: str) -> str:
    return name if delimiter == SEPARATOR else name.replace(delimiter, SEPARATOR)


def _expand(ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
    for lo, hi in ranges:
        yield from range(lo, hi + 1)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
