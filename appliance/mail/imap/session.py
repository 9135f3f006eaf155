"""One IMAP client's session: answer the protocol core's commands from the mail store.

The core (protocol.py) has parsed and state-checked every command; this module decides
what each one does to whose mailboxes, and keeps the client's view of the selected
mailbox true (RFC 3501 §5.2, §7.4.1):

- The session holds the selected mailbox's UIDs in sequence order, with the flags and
  MODSEQ it last told the client. After every command it asks the store what changed
  since that MODSEQ and reports new messages (EXISTS), flag changes (FETCH) and
  expunges (EXPUNGE, or VANISHED once QRESYNC is enabled) — made by this session,
  another session, or SMTP delivery.
- EXPUNGE responses are held back during FETCH, STORE and SEARCH (RFC 3501 §7.4.1:
  sequence numbers must not shift under a client's feet); UID commands may get them.
  Until the client is told, a message expunged elsewhere stays readable: the session
  holds a `MailboxReader` on its selected mailbox, which keeps the removed rows and
  their blobs for it (mail/reclamation.py).
- IDLE (RFC 2177) waits on the store's change feed, so a new message reaches an idling
  client within moments of its commit.

What this is not: socket handling (server.py) or parsing (protocol.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TypeVar

import trio

from appliance.directory import User
from appliance.directory.signin import Refused
from appliance.health.disk_guard import is_disk_full
from appliance.mail import mime
from appliance.mail.imap import protocol as imap
from appliance.mail.imap import sort, thread
from appliance.mail.imap.view import MailboxViews, MessageView
from appliance.mail.mailboxes import (
    SEPARATOR,
    FlagMode,
    MailboxError,
    Mailboxes,
    MailboxInfo,
    MailboxMark,
    MessageState,
)
from appliance.mail.mailstore import BodyUnavailable, Mailstore, QuotaExceeded, StoredMessage
from appliance.mail.reclamation import MailboxReader
from appliance.store.blobs import BlobMissing, BlobStore

log = logging.getLogger("edgebox.imap")

_T = TypeVar("_T")

#: What every session offers once authenticated (RFC 3501 §6.1.1). Only what works.
CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT"
    " SPECIAL-USE CHILDREN LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC QUOTA ESEARCH"
    " MULTIAPPEND BINARY SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT PARTIAL"
    " CONTEXT=SEARCH"
)
#: The system flags (RFC 3501 §2.3.2) every mailbox's FLAGS and PERMANENTFLAGS list; the
#: keywords its messages carry follow them, and PERMANENTFLAGS ends with "\*" (clients
#: may create keywords, §7.2.6).
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
#: \Recent is never stored: a session derives it from the UIDs it claimed.
RECENT = "\\Recent"
#: Above any UID: an open end of a range of recent UIDs.
_NO_END = 2**63
#: Live SEARCH results (RFC 5267 §4 UPDATE) one session may keep at once.
MAX_LIVE_SEARCHES = 16
#: RFC 5256 §3 and RFC 3501 §6.4.4: the charsets SORT, THREAD and SEARCH take.
SORT_CHARSETS = ("UTF-8", "US-ASCII")
#: FETCH responses are sent in batches of this many, so a 100k-message
#: `UID FETCH 1:* (FLAGS)` streams instead of building one huge reply.
FETCH_BATCH = 500
#: A FETCH of at most this many messages, of at most `INLINE_BYTES` in all, is read
#: and decrypted on the event loop: tens of microseconds, where a worker thread's
#: round trip costs far more under load (measured: 1.5-3 ms a hop with the box's two
#: cores busy), once per message for a client that fetches one message per command.
INLINE_MESSAGES = 8
INLINE_BYTES = 256 * 1024
#: A larger FETCH is read this many messages per worker call, one call ahead of the
#: sending, so the two cores read and send at once.
READ_BATCH = 100
#: FETCH responses queued beyond this are sent before the next batch is formatted.
SEND_AT = 256 * 1024

#: UIDs of a FETCH batch, their rows and their bodies (when the items need them).
_FetchBatch = tuple[Sequence[int], dict[int, StoredMessage], dict[int, bytes]]
STORAGE_FULL_TEXT = "insufficient storage on the server, try again later"


@dataclass
class LiveSearch:
    """A SEARCH RETURN (UPDATE) whose result the client keeps current (RFC 5267 §4)."""

    tag: str
    uid: bool
    criteria: imap.SearchKey
    #: The UIDs the client was last told match.
    uids: set[int]


@dataclass
class Selected:
    """The client's view of its selected mailbox."""

    info: MailboxMark
    readonly: bool
    #: What the client was told: message n is messages.uids[n - 1].
    messages: MessageView = field(default_factory=MessageView)
    #: Everything up to this MODSEQ has been reported to the client.
    modseq: int = 0
    #: Keeps messages removed meanwhile readable until the client is told.
    reader: MailboxReader | None = None
    #: UID ranges [first, last) that are \Recent in this session (RFC 3501 §2.3.2).
    recent: list[tuple[int, int]] = field(default_factory=list)
    #: Keywords the client has been told of in FLAGS and PERMANENTFLAGS (§7.2.6).
    keywords: set[str] = field(default_factory=set)

    def seq_of(self, uid: int) -> int:
        return self.messages.seq_of(uid)

    def is_recent(self, uid: int) -> bool:
        return any(first <= uid < last for first, last in self.recent)

    def recent_count(self) -> int:
        view = self.messages
        return sum(len(view.uid_range(first, last - 1)) for first, last in self.recent)

    def flags_of(self, uid: int, flags: tuple[str, ...]) -> str:
        """The FLAGS list the client sees: the stored flags, \\Recent first if it is."""
        return imap.flag_list((RECENT, *flags) if self.is_recent(uid) else flags)


class ImapSession:
    """Answers commands for one connection; the server feeds it events."""

    def __init__(
        self,
        *,
        conn: imap.ServerConnection,
        mailstore: Mailstore,
        authenticate: Callable[[str, str], Awaitable[User | Refused | None]],
        act_as: Callable[[User, str], Awaitable[User | None]],
        flush: Callable[[], Awaitable[None]],
        client_ip: str,
        max_auth_failures: int = 3,
        room_for: Callable[[int], bool] = lambda size: True,
    ) -> None:
        self.conn = conn
        #: The disk guard: may *size* more bytes be stored? (appliance.health.disk_guard)
        self.room_for = room_for
        self.store = mailstore
        self.mailboxes = Mailboxes(mailstore)
        self._authenticate = authenticate
        self._act_as = act_as
        self.flush = flush
        self.client_ip = client_ip
        self.user: User | None = None
        self.selected: Selected | None = None
        #: RFC 5161 ENABLE: CONDSTORE turns on MODSEQ in FETCH; QRESYNC also VANISHED.
        self.condstore = False
        self.qresync = False
        self._sasl_tag: str | None = None
        #: Wrong passwords on this connection; at `max_auth_failures` it is closed.
        self.auth_failures = 0
        self.max_auth_failures = max_auth_failures
        #: Blobs a closed reader let go of, to hand to `Mailstore.release_blobs`.
        self._freed: list[str] = []
        #: RFC 5267 §4: live SEARCH results by tag; they end with the selection.
        self._live: dict[str, LiveSearch] = {}

    # -- dispatch --------------------------------------------------------------------

    async def handle(self, command: imap.Command) -> None:
        """Answer one command completely (untagged data, then the tagged reply)."""
        handler = getattr(self, f"_on_{type(command).__name__.lower()}", None)
        if handler is None:
            self.conn.tagged(command.tag, "BAD", "command not supported")
            return
        try:
            await handler(command)
            await self._reclaim()
        except MailboxError as exc:
            self.conn.tagged(command.tag, "NO", str(exc), code=exc.code)
        except QuotaExceeded:
            self.conn.tagged(command.tag, "NO", "mailbox quota exceeded", code="OVERQUOTA")
        except BodyUnavailable as exc:
            # RFC 5530 §3: "a subsystem is down"; the client may try again later. Raised
            # before anything of the command was sent or changed (see `_ensure_bodies`).
            self.conn.tagged(command.tag, "NO", f"{exc}; try again later", code="UNAVAILABLE")

    async def close(self) -> None:
        """Let go of the selected mailbox at the end of the connection."""
        selected, self.selected = self.selected, None
        if selected is not None and selected.reader is not None:
            self._freed += selected.reader.close()
        try:
            await self._reclaim()
        except Exception:
            # Not this client's concern: the files stay, and no row names them, so
            # the start-up sweep collects them (Mailstore.remove_orphan_blobs).
            log.exception("imap: could not free the blobs of expunged messages now")

    async def _reclaim(self) -> None:
        if self._freed:
            freed, self._freed = self._freed, []
            await self.store.release_blobs(freed)

    def capability(self) -> str:
        extra = "" if self.conn.tls_active else " STARTTLS LOGINDISABLED"
        auth = " AUTH=PLAIN" if self.conn.tls_active else ""
        return CAPABILITIES + extra + auth

    # -- any state -------------------------------------------------------------------

    async def _on_capability(self, cmd: imap.Capability) -> None:
        self.conn.untagged(f"CAPABILITY {self.capability()}")
        self.conn.tagged(cmd.tag, "OK", "CAPABILITY completed")

    async def _on_noop(self, cmd: imap.Noop | imap.Check) -> None:
        await self.report_changes(expunges=True)
        self.conn.tagged(cmd.tag, "OK", f"{type(cmd).__name__.upper()} completed")

    _on_check = _on_noop

    async def _on_logout(self, cmd: imap.Logout) -> None:
        self.conn.untagged("BYE edgebox logging out")
        self.conn.tagged(cmd.tag, "OK", "LOGOUT completed")

    async def _on_id(self, cmd: imap.Id) -> None:
        # RFC 2971: say who we are, nothing that helps an attacker fingerprint versions.
        self.conn.untagged('ID ("name" "edgebox")')
        self.conn.tagged(cmd.tag, "OK", "ID completed")

    # -- authentication --------------------------------------------------------------

    async def _on_login(self, cmd: imap.Login) -> None:
        await self._sign_in(cmd.tag, cmd.user, cmd.password, authzid="")

    async def _on_authenticate(self, cmd: imap.Authenticate) -> None:
        if cmd.mechanism.upper() != "PLAIN":
            self.conn.tagged(cmd.tag, "NO", "only AUTHENTICATE PLAIN is offered")
            return
        if cmd.initial_response is None:
            self._sasl_tag = cmd.tag
            self.conn.continuation("")
            return
        await self._plain(cmd.tag, cmd.initial_response)

    async def _on_saslresponse(self, cmd: imap.SaslResponse) -> None:
        self._sasl_tag = None
        if cmd.data is None:
            self.conn.tagged(cmd.tag, "BAD", "authentication cancelled")
            return
        await self._plain(cmd.tag, cmd.data)

    async def _plain(self, tag: str, response: bytes) -> None:
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd
        parts = response.split(b"\0")
        try:
            authzid, authcid, password = (part.decode("utf-8") for part in parts)
        except (ValueError, UnicodeDecodeError):
            self.conn.tagged(tag, "BAD", "malformed PLAIN response")
            return
        await self._sign_in(tag, authcid, password, authzid=authzid)

    async def _sign_in(self, tag: str, user: str, password: str, *, authzid: str) -> None:
        found = await self._authenticate(user, password)
        if isinstance(found, Refused):
            # RFC 5530 §3 UNAVAILABLE: try later, the password may be right. Nothing
            # from this source is checked for a while, so the connection is of no use.
            self.conn.tagged(tag, "NO", "too many failed sign-ins from your address; try"
                             f" again in {found.minutes} minutes", code="UNAVAILABLE")  # fmt: skip
            self.conn.bye("too many failed sign-ins from your address")
            return
        if found is None:
            log.warning("imap auth failed user=%r ip=%s", user[:320], self.client_ip)
            self.conn.tagged(tag, "NO", "authentication failed", code="AUTHENTICATIONFAILED")
            self.auth_failures += 1
            if self.auth_failures >= self.max_auth_failures:
                # Like Dovecot: a client that keeps guessing on one connection is cut off
                # (the guard's back-off follows it to the next one).
                self.conn.bye("too many failed sign-ins")
            return
        if authzid:
            # RFC 4616: signed in as *user*, acting as *authzid* — only for service
            # accounts with a delegation (the sync replicator, the hub).
            target = await self._act_as(found, authzid)
            if target is None:
                log.warning("imap authz refused user=%s as=%r ip=%s", found.address,
                            authzid[:320], self.client_ip)  # fmt: skip
                self.conn.tagged(tag, "NO", "not allowed to act for that user",
                                 code="AUTHORIZATIONFAILED")  # fmt: skip
                return
            if target.address != found.address:
                log.info("imap %s acting for %s ip=%s", found.address, target.address,
                         self.client_ip)  # fmt: skip
            found = target
        self.user = found
        self.conn.authenticated()
        log.info("imap login user=%s ip=%s", found.address, self.client_ip)
        self.conn.tagged(tag, "OK", f"[CAPABILITY {self.capability()}] logged in")

    # -- authenticated state ---------------------------------------------------------

    @property
    def owner(self) -> str:
        assert self.user is not None
        return self.user.address

    async def _on_enable(self, cmd: imap.Enable) -> None:
        enabled = []
        for name in cmd.capabilities:
            if name.upper() in ("CONDSTORE", "QRESYNC"):
                self.condstore = True
                self.qresync = self.qresync or name.upper() == "QRESYNC"
                enabled.append(name.upper())
        self.conn.untagged("ENABLED" + "".join(f" {n}" for n in enabled))
        self.conn.tagged(cmd.tag, "OK", "ENABLE completed")

    def _enable_condstore(self) -> None:
        """Turn CONDSTORE on for a CONDSTORE enabling command (RFC 7162 §3.1).

        FETCH ... MODSEQ, SEARCH ... MODSEQ, STORE (UNCHANGEDSINCE) and FETCH
        (CHANGEDSINCE) enable it as ENABLE CONDSTORE does; the first one with a mailbox
        selected also tells the client the mailbox's HIGHESTMODSEQ, which SELECT did
        not send it as a CONDSTORE-aware answer.
        """
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            self.conn.untagged(f"OK [HIGHESTMODSEQ {self.selected.modseq}] highest")

    async def _on_namespace(self, cmd: imap.Namespace) -> None:
        self.conn.untagged(f'NAMESPACE (("" "{SEPARATOR}")) NIL NIL')
        self.conn.tagged(cmd.tag, "OK", "NAMESPACE completed")

    async def _on_create(self, cmd: imap.Create) -> None:
        use = cmd.special_use[0] if cmd.special_use else None
        await self.mailboxes.create(self.owner, cmd.mailbox, use)
        self.conn.tagged(cmd.tag, "OK", "CREATE completed")

    async def _on_delete(self, cmd: imap.Delete) -> None:
        await self.mailboxes.delete(self.owner, cmd.mailbox)
        self.conn.tagged(cmd.tag, "OK", "DELETE completed")

    async def _on_rename(self, cmd: imap.Rename) -> None:
        await self.mailboxes.rename(self.owner, cmd.mailbox, cmd.new_name)
        self.conn.tagged(cmd.tag, "OK", "RENAME completed")

    async def _on_subscribe(self, cmd: imap.Subscribe | imap.Unsubscribe) -> None:
        await self.mailboxes.subscribe(self.owner, cmd.mailbox, isinstance(cmd, imap.Subscribe))
        self.conn.tagged(cmd.tag, "OK", f"{type(cmd).__name__.upper()} completed")

    _on_unsubscribe = _on_subscribe

    async def _on_list(self, cmd: imap.List | imap.Lsub) -> None:
        """LIST and LSUB: RFC 3501 §6.3.8-9, RFC 5258, RFC 6154 SPECIAL-USE, RFC 5819.

        Three kinds of name can be answered: an existing mailbox; a subscribed name
        whose mailbox does not exist (any more), for LSUB and LIST (SUBSCRIBED); and a
        level of hierarchy with no mailbox of its own ("a/b" when only "a/b/c" exists),
        which a pattern ending in "%" also returns (§6.3.8), as \\Noselect.
        """
        is_list = isinstance(cmd, imap.List)
        if isinstance(cmd, imap.List):
            patterns = cmd.patterns
            selection, returns = set(cmd.selection), set(cmd.return_options)
        else:
            patterns = () if cmd.pattern is None else (cmd.pattern,)
            selection, returns = set(), set()
        verb = "LIST" if is_list else "LSUB"
        if patterns == ("",):
            # RFC 3501 §6.3.8: an empty pattern asks for the delimiter and root.
            self.conn.untagged(f'{verb} (\\Noselect) "{SEPARATOR}" ""')
            self.conn.tagged(cmd.tag, "OK", f"{verb} completed")
            return
        infos: dict[str, MailboxInfo] = {}
        if "STATUS" in returns:
            # RFC 5819: the counts cost a pass over every message; only asked for here.
            infos = {box.name: box for box in await self.mailboxes.of(self.owner)}
            special = {name: box.special_use for name, box in infos.items()}
        else:
            # Names and special uses only, read at once: mbsync lists on every sync.
            special = self.mailboxes.names_now(self.owner)
        subscribed = self.mailboxes.subscriptions_now(self.owner)
        full = [cmd.reference + p for p in patterns]
        matchers = [_pattern(p) for p in full]
        # Hierarchy levels are returned for patterns whose last character is "%".
        level_matchers = [m for p, m in zip(full, matchers, strict=True) if p.endswith("%")]

        def matches(name: str) -> bool:
            return any(m(name) for m in matchers)

        def has_children(name: str) -> bool:
            prefix = name + SEPARATOR
            return any(n.startswith(prefix) for n in special)

        # name -> attributes, and the names returned with CHILDINFO (RFC 5258 §3.5).
        answer: dict[str, list[str]] = {}
        childinfo: set[str] = set()
        if not is_list or "SUBSCRIBED" in selection:
            chosen = {n for n in subscribed if "SPECIAL-USE" not in selection or special.get(n)}
            for name in sorted(chosen):
                if matches(name):
                    answer[name] = ["\\Subscribed"] if is_list else []
                    if name not in special:
                        # RFC 5258 §3.4: \\NonExistent (LSUB has only \\Noselect).
                        answer[name].insert(0, "\\NonExistent" if is_list else "\\Noselect")
            # A level above a chosen name that is not returned itself: LSUB with "%"
            # shows it \\Noselect (§6.3.9); RECURSIVEMATCH returns it with CHILDINFO.
            for name in chosen - answer.keys():
                for ancestor in _ancestors(name):
                    if not is_list and any(m(ancestor) for m in level_matchers):
                        answer.setdefault(ancestor, ["\\Noselect"])
                    elif "RECURSIVEMATCH" in selection and matches(ancestor):
                        answer.setdefault(ancestor, [])
                        childinfo.add(ancestor)
        else:
            for name, use in special.items():
                if matches(name) and ("SPECIAL-USE" not in selection or use):
                    answer[name] = []
            if "SPECIAL-USE" not in selection:
                for name in list(special):
                    for ancestor in _ancestors(name):
                        if ancestor not in special and any(m(ancestor) for m in level_matchers):
                            answer.setdefault(ancestor, ["\\Noselect"])
        for name in sorted(answer, key=lambda n: (n != "INBOX", n)):
            attrs = answer[name]
            use = special.get(name)
            if is_list:
                attrs.append("\\HasChildren" if has_children(name) else "\\HasNoChildren")
                if use:
                    attrs.append(use)
                if "SUBSCRIBED" in returns and name in subscribed and "\\Subscribed" not in attrs:
                    attrs.append("\\Subscribed")
            extended = ' ("CHILDINFO" ("SUBSCRIBED"))' if name in childinfo else ""
            self.conn.untagged(
                f'{verb} ({" ".join(attrs)}) "{SEPARATOR}" '.encode()
                + imap.mailbox_name(name)
                + extended.encode()
            )
            box = infos.get(name)
            if isinstance(cmd, imap.List) and box is not None:
                # RFC 5819 §2: a STATUS response follows each selectable mailbox's LIST.
                self._status_line(box, cmd.status_items)
        self.conn.tagged(cmd.tag, "OK", f"{verb} completed")

    _on_lsub = _on_list

    async def _on_status(self, cmd: imap.Status) -> None:
        box = await self.mailboxes.get(self.owner, cmd.mailbox)
        self._status_line(box, cmd.items)
        self.conn.tagged(cmd.tag, "OK", "STATUS completed")

    def _status_line(self, box: MailboxInfo, wanted: Iterable[str]) -> None:
        values = {
            "MESSAGES": box.messages,
            "RECENT": box.recent,
            "UIDNEXT": box.uidnext,
            "UIDVALIDITY": box.uidvalidity,
            "UNSEEN": box.unseen,
            "HIGHESTMODSEQ": box.highestmodseq,
            "SIZE": box.size,
        }
        items = " ".join(f"{i.upper()} {values[i.upper()]}" for i in wanted if i.upper() in values)
        self.conn.untagged(b"STATUS " + imap.mailbox_name(box.name) + f" ({items})".encode())

    async def _on_getquotaroot(self, cmd: imap.GetQuotaRoot) -> None:
        await self.mailboxes.get(self.owner, cmd.mailbox)
        self.conn.untagged(b"QUOTAROOT " + imap.mailbox_name(cmd.mailbox) + b' ""')
        await self._quota()
        self.conn.tagged(cmd.tag, "OK", "GETQUOTAROOT completed")

    async def _on_getquota(self, cmd: imap.GetQuota) -> None:
        if cmd.root != "":
            self.conn.tagged(cmd.tag, "NO", "no such quota root", code="NONEXISTENT")
            return
        await self._quota()
        self.conn.tagged(cmd.tag, "OK", "GETQUOTA completed")

    async def _quota(self) -> None:
        # RFC 9208 §5.1: STORAGE is in units of 1024 octets; one root per user.
        assert self.user is not None
        used = await self.store.usage(self.owner)
        self.conn.untagged(f'QUOTA "" (STORAGE {used // 1024} {self.user.quota_bytes // 1024})')

    async def _on_append(self, cmd: imap.Append) -> None:
        assert self.user is not None
        # RFC 5530 §3 LIMIT: the data volume is at the reserve the box keeps so that
        # what it already accepted stays safe; nothing is stored, the client may retry.
        if not self.room_for(sum(len(m.message) for m in cmd.messages())):
            self.conn.tagged(cmd.tag, "NO", STORAGE_FULL_TEXT, code="LIMIT")
            return
        if cmd.more or not cmd.message:
            await self._append_all(cmd)
            return
        when = int(cmd.internal_date.timestamp()) if cmd.internal_date else None
        # RFC 3516 §4.4: binary content from literal8 is kept in a form BODY[] can show.
        stored = await self._store_append(cmd, self.mailboxes.append(
            self.owner, cmd.mailbox, mime.encode_nul_parts(cmd.message),
            quota_bytes=self.user.quota_bytes, flags=cmd.flags, internal_date=when,
        ))  # fmt: skip
        if stored is None:
            return
        uidvalidity, uid = stored
        await self.report_changes(expunges=True)
        self.conn.tagged(cmd.tag, "OK", "APPEND completed", code=f"APPENDUID {uidvalidity} {uid}")

    async def _append_all(self, cmd: imap.Append) -> None:
        """MULTIAPPEND (RFC 3502 §6.3.11): every message stored in one commit, or none."""
        assert self.user is not None
        messages = cmd.messages()
        if any(not m.message for m in messages):
            # RFC 3502 §6.3.11: a zero-length message is an error and cancels the
            # whole command; clients use it to abandon a MULTIAPPEND half-way.
            self.conn.tagged(cmd.tag, "NO", "empty message: nothing was appended")
            return
        # RFC 3516 §4.4: binary content from literal8 is kept in a form BODY[] can show.
        batch = [
            (
                mime.encode_nul_parts(m.message),
                m.flags,
                int(m.internal_date.timestamp()) if m.internal_date else None,
            )
            for m in messages
        ]
        stored = await self._store_append(
            cmd,
            self.mailboxes.append_many(
                self.owner, cmd.mailbox, batch, quota_bytes=self.user.quota_bytes
            ),
        )
        if stored is None:
            return
        uidvalidity, uids = stored
        await self.report_changes(expunges=True)
        # RFC 4315 §3: APPENDUID with a UID set for a MULTIAPPEND, in message order.
        code = f"APPENDUID {uidvalidity} {sort.ordered_set(uids)}"
        self.conn.tagged(cmd.tag, "OK", "APPEND completed", code=code)

    async def _store_append(self, cmd: imap.Append, storing: Awaitable[_T]) -> _T | None:
        """Await the store of an APPEND; answer a full disk here, None if it was answered.

        A missing mailbox is ``NO [TRYCREATE]`` (RFC 3501 §6.3.11: the client may CREATE
        and retry); a full data volume ``NO [LIMIT]`` (RFC 5530 §3), nothing stored.
        """
        try:
            return await storing
        except MailboxError as exc:
            if exc.code == "NONEXISTENT":
                exc.code = "TRYCREATE"
            raise
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.warning("APPEND failed: %s", exc)
            self.conn.tagged(cmd.tag, "NO", STORAGE_FULL_TEXT, code="LIMIT")
            return None

    # -- selecting -------------------------------------------------------------------

    async def _on_select(self, cmd: imap.Select) -> None:
        if self.selected is not None:
            # RFC 7162 §3.2.11: say where the old mailbox's responses end, so a client
            # can tell them from the new one's (required of a QRESYNC server).
            self.conn.untagged("OK [CLOSED] previous mailbox closed")
        self._unselect()
        if cmd.qresync is not None and not self.qresync:
            self.conn.tagged(cmd.tag, "BAD", "ENABLE QRESYNC first")
            return
        box = self.mailboxes.mark_now(self.owner, cmd.mailbox)
        if cmd.condstore or cmd.qresync:
            self.condstore = True
        # Open before the view is read, so no expunge can fall between the two unkept;
        # the mark is read again after it for the same reason.
        reader = self.store.reclamation.open(box.id)
        try:
            box = self.mailboxes.mark_of_now(box.id) or box
            view, box = await MailboxViews.of(self.mailboxes).current(box)
            selected = Selected(box, cmd.readonly, view, box.highestmodseq, reader)
            # RFC 3501 §2.3.2: SELECT takes the messages no session has seen yet as this
            # session's \Recent ones (a write only when there are any); EXAMINE shows them
            # as recent without taking them from the next session.
            if cmd.readonly:
                selected.recent = [(box.first_recent_uid, _NO_END)]
            elif view.top >= box.first_recent_uid:
                selected.recent = [await self.mailboxes.claim_recent(box.id)]
        except BaseException:
            self._freed += reader.close()
            raise
        selected.keywords = view.keywords()
        self.conn.untagged(f"FLAGS {self._flags(selected)}")
        self.conn.untagged(f"{len(view)} EXISTS")
        self.conn.untagged(f"{selected.recent_count()} RECENT")
        unseen = view.first_with_flags(lambda flags: not _has(flags, "\\seen"))
        if unseen is not None:
            # RFC 3501 §7.1: the first unseen message's sequence number.
            self.conn.untagged(f"OK [UNSEEN {view.seq_of(unseen)}] first unseen")
        self.conn.untagged(f"OK [UIDVALIDITY {box.uidvalidity}] UIDs valid")
        self.conn.untagged(f"OK [UIDNEXT {box.uidnext}] predicted next UID")
        self.conn.untagged(f"OK [PERMANENTFLAGS {self._permanent_flags(selected)}] flags")
        self.conn.untagged(f"OK [HIGHESTMODSEQ {box.highestmodseq}] highest")
        if cmd.qresync is not None and cmd.qresync.uidvalidity == box.uidvalidity:
            await self._qresync(selected, cmd.qresync)
        self.selected = selected
        self.conn.selected()
        mode = "READ-ONLY" if cmd.readonly else "READ-WRITE"
        self.conn.tagged(cmd.tag, "OK", f"{'EXAMINE' if cmd.readonly else 'SELECT'} completed",
                         code=mode)  # fmt: skip

    @staticmethod
    def _flags(selected: Selected) -> str:
        return imap.flag_list(SYSTEM_FLAGS + tuple(sorted(selected.keywords)))

    @staticmethod
    def _permanent_flags(selected: Selected) -> str:
        if selected.readonly:
            return "()"
        return imap.flag_list(SYSTEM_FLAGS + tuple(sorted(selected.keywords)) + ("\\*",))

    def _announce_keywords(self, selected: Selected, states: Iterable[MessageState]) -> None:
        """Send FLAGS and PERMANENTFLAGS again before a keyword the client has not heard of.

        RFC 3501 §7.2.6: FLAGS lists the flags "applicable for this mailbox"; a client
        (and imaptest) may reject a FETCH naming a keyword it was not told of.
        """
        new = {f for s in states for f in s.flags if not f.startswith("\\")}
        new -= selected.keywords
        if not new:
            return
        selected.keywords |= new
        self.conn.untagged(f"FLAGS {self._flags(selected)}")
        self.conn.untagged(f"OK [PERMANENTFLAGS {self._permanent_flags(selected)}] flags")

    async def _qresync(self, selected: Selected, params: imap.QresyncParams) -> None:
        # RFC 7162 §3.2.5: what vanished since the client's MODSEQ, then what changed.
        changed, vanished = await self.mailboxes.changes_since(selected.info.id, params.modseq)
        if params.known_uids is not None:
            top = selected.messages.top
            vanished = [u for u in vanished if params.known_uids.contains(u, top)]
        if vanished:
            self.conn.untagged(f"VANISHED (EARLIER) {imap.encode_uid_set(vanished)}")
        for state in changed:
            seq = selected.seq_of(state.uid)
            flags = selected.flags_of(state.uid, state.flags)
            self.conn.untagged(f"{seq} FETCH (UID {state.uid} FLAGS {flags}"
                               f" MODSEQ ({state.modseq}))")  # fmt: skip

    def _unselect(self) -> None:
        self._live.clear()
        if self.selected is not None:
            if self.selected.reader is not None:
                self._freed += self.selected.reader.close()
            self.selected = None
            self.conn.unselected()

    async def _on_close(self, cmd: imap.Close) -> None:
        selected = self._require_selected()
        if not selected.readonly:
            # RFC 3501 §6.4.2: CLOSE expunges silently.
            await self.mailboxes.expunge(selected.info.id, self.owner)
        self._unselect()
        self.conn.tagged(cmd.tag, "OK", "CLOSE completed")

    async def _on_unselect(self, cmd: imap.Unselect) -> None:
        self._unselect()
        self.conn.tagged(cmd.tag, "OK", "UNSELECT completed")

    def _require_selected(self) -> Selected:
        assert self.selected is not None, "the core only passes SELECTED-state commands"
        return self.selected

    # -- selected state --------------------------------------------------------------

    async def _on_expunge(self, cmd: imap.Expunge | imap.UidExpunge) -> None:
        selected = self._require_selected()
        if selected.readonly:
            self.conn.tagged(cmd.tag, "NO", "mailbox is read-only", code="READ-ONLY")
            return
        uids = None
        if isinstance(cmd, imap.UidExpunge):
            uids = _uids_in(cmd.sequence_set, selected, uid=True)
        await self.mailboxes.expunge(selected.info.id, self.owner, uids)
        await self.report_changes(expunges=True)
        self.conn.tagged(cmd.tag, "OK", "EXPUNGE completed")

    _on_uidexpunge = _on_expunge

    async def _on_store(self, cmd: imap.Store) -> None:
        selected = self._require_selected()
        if selected.readonly:
            self.conn.tagged(cmd.tag, "NO", "mailbox is read-only", code="READ-ONLY")
            return
        uids = _uids_in(cmd.sequence_set, selected, uid=cmd.uid)
        mode = {imap.StoreMode.ADD: FlagMode.ADD, imap.StoreMode.REMOVE: FlagMode.REMOVE,
                imap.StoreMode.REPLACE: FlagMode.REPLACE}[cmd.mode]  # fmt: skip
        result = await self.mailboxes.store_flags(selected.info.id, uids, mode, cmd.flags,
                                                  cmd.unchanged_since)  # fmt: skip
        if cmd.unchanged_since is not None:
            self._enable_condstore()
        silent = {s.uid for s in result.changed} if cmd.silent else set()
        # Report our own change like anyone's, except what SILENT asked us to keep quiet
        # (RFC 7162 §3.1.3 still wants MODSEQ for silent stores under CONDSTORE).
        await self.report_changes(expunges=cmd.uid, quiet=set() if self.condstore else silent)
        code = None
        if result.modified:
            # RFC 7162 §3.1.3: MODIFIED names UIDs for UID STORE, sequence numbers otherwise.
            numbers = result.modified if cmd.uid else [selected.seq_of(u) for u in result.modified]
            code = f"MODIFIED {imap.encode_uid_set(numbers)}"
        self.conn.tagged(cmd.tag, "OK", "STORE completed", code=code)

    async def _on_copy(self, cmd: imap.Copy | imap.Move) -> None:
        assert self.user is not None
        selected = self._require_selected()
        move = isinstance(cmd, imap.Move)
        if move and selected.readonly:
            self.conn.tagged(cmd.tag, "NO", "mailbox is read-only", code="READ-ONLY")
            return
        uids = _uids_in(cmd.sequence_set, selected, uid=cmd.uid)
        await self._ensure_bodies(selected, uids)  # a copy may be uploaded: it needs its body
        try:
            result = await self.mailboxes.copy(
                selected.info.id, uids, self.owner, cmd.mailbox,
                quota_bytes=self.user.quota_bytes, move=move,
            )  # fmt: skip
        except MailboxError as exc:
            if exc.code == "NONEXISTENT":
                exc.code = "TRYCREATE"  # RFC 3501 §6.4.7
            raise
        copyuid = None
        if result.source_uids:
            copyuid = (f"COPYUID {result.uidvalidity} {imap.encode_uid_set(result.source_uids)}"
                       f" {imap.encode_uid_set(result.destination_uids)}")  # fmt: skip
        if move:
            # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
            if copyuid:
                self.conn.untagged(f"OK [{copyuid}] moved")
            await self.report_changes(expunges=True)
            self.conn.tagged(cmd.tag, "OK", "MOVE completed")
        else:
            await self.report_changes(expunges=cmd.uid)
            self.conn.tagged(cmd.tag, "OK", "COPY completed", code=copyuid)

    _on_move = _on_copy

    async def _on_fetch(self, cmd: imap.Fetch) -> None:
        selected = self._require_selected()
        uids = _uids_in(cmd.sequence_set, selected, uid=cmd.uid)
        items = list(cmd.items)
        if cmd.uid and imap.FetchAttr("UID") not in items:
            items.insert(0, imap.FetchAttr("UID"))
        if cmd.changed_since is not None or imap.FetchAttr("MODSEQ") in items:
            self._enable_condstore()
        if cmd.changed_since is not None:
            uids = [u for u in uids if selected.messages.modseq(u) > cmd.changed_since]
            if cmd.vanished:
                # RFC 7162 §3.2.6: UID FETCH ... (CHANGEDSINCE n VANISHED)
                _, gone = await self.mailboxes.changes_since(selected.info.id, cmd.changed_since)
                top = selected.messages.top
                within = [u for u in gone if cmd.sequence_set.contains(u, top)]
                if within:
                    self.conn.untagged(f"VANISHED (EARLIER) {imap.encode_uid_set(within)}")
        if self.condstore and imap.FetchAttr("MODSEQ") not in items:
            items.append(imap.FetchAttr("MODSEQ"))
        needs_content = any(
            isinstance(i, imap.FetchBody | imap.FetchBinary)
            or i.name not in ("UID", "FLAGS", "MODSEQ", "INTERNALDATE", "RFC822.SIZE")
            for i in items
        )
        needs_row = any(not (isinstance(i, imap.FetchAttr) and i.name in ("UID", "FLAGS", "MODSEQ"))
                        for i in items)  # fmt: skip
        if any(_needs_body(i) for i in items):
            # All or nothing: every body this FETCH returns must be here before the
            # first response line is sent, so an unavailable one fails the whole command
            # with nothing half-sent and no \Seen set (RFC 3501 §6.4.5).
            await self._ensure_bodies(selected, uids)
        marks_seen = not selected.readonly and any(
            (isinstance(i, imap.FetchBody) and not i.peek)
            # RFC 3516 §4.2: BINARY sets \Seen like BODY; BINARY.SIZE reads nothing.
            or (isinstance(i, imap.FetchBinary) and not i.peek and not i.size)
            or (isinstance(i, imap.FetchAttr) and i.name in ("RFC822", "RFC822.TEXT"))
            for i in items
        )
        if marks_seen:
            # RFC 3501 §6.4.5: BODY[] sets \Seen; the new FLAGS go in the same response.
            unseen = [u for u in uids if not _has(selected.messages.flags(u), "\\seen")]
            if unseen:
                result = await self.mailboxes.store_flags(
                    selected.info.id, unseen, FlagMode.ADD, ["\\Seen"]
                )
                for state in result.changed:
                    selected.messages.update(state)
                if imap.FetchAttr("FLAGS") not in items:
                    items.append(imap.FetchAttr("FLAGS"))
        plain = all(map(_is_plain, items))
        if not needs_row:
            # UID, FLAGS and MODSEQ only: what a sync client asks of every message on
            # each resync (mbsync's `UID FETCH 1:n (UID FLAGS)`). Answered from the view
            # in one pass per batch, each distinct flag set rendered once.
            # The first batch of a long answer goes out at once: the client (a Python
            # or C parser, several times slower per line than these lines are made)
            # starts on it while the rest is made, instead of idling until SEND_AT.
            first_alone = len(uids) > FETCH_BATCH
            for start in range(0, len(uids), FETCH_BATCH):
                run = uids[start : start + FETCH_BATCH]
                self.conn.untagged_block(_state_lines(selected, run, items))
                if self.conn.queued >= SEND_AT or (first_alone and start == 0):
                    await self.flush()
        elif len(uids) <= INLINE_MESSAGES:
            rows, contents = await self._read_batch(selected, uids, needs_content)
            await self._answer_batch(selected, items, plain, True, (uids, rows, contents))
        else:
            # Read ahead: the next batch is read and decrypted in a worker thread while
            # this one is formatted and sent. One batch ahead bounds the memory held.
            send, receive = trio.open_memory_channel[_FetchBatch](0)

            async def read_ahead() -> None:
                async with send:
                    for start in range(0, len(uids), READ_BATCH):
                        batch = uids[start : start + READ_BATCH]
                        rows, contents = await self._read_batch(selected, batch, needs_content)
                        try:
                            await send.send((batch, rows, contents))
                        except trio.BrokenResourceError:
                            return  # the answer failed (its error is the command's)

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_ahead)
                    async with receive:
                        async for batch in receive:
                            await self._answer_batch(selected, items, plain, True, batch)
            except BaseExceptionGroup as group:
                raise _sole(group) from None
        await self.report_changes(expunges=cmd.uid)
        self.conn.tagged(cmd.tag, "OK", "FETCH completed")

    async def _answer_batch(
        self,
        selected: Selected,
        items: Sequence[imap.FetchItem],
        plain: bool,
        needs_row: bool,
        batch: _FetchBatch,
    ) -> None:
        """Queue a FETCH response line per message of *batch*.

        A long answer is sent as it goes; its last part waits for the tagged reply, so
        pipelined one-message FETCHes share TLS records (server.py sends them).
        """
        uids, rows, contents = batch
        for uid in uids:
            row = rows.get(uid)
            if needs_row and row is None:
                continue  # removed before this session opened the mailbox
            content = contents.get(uid)
            line = _plain_fetch_line(selected, uid, items, row, content) if plain else None
            if line is None:
                line = await self._fetch_line(selected, uid, items, row, content)
            self.conn.untagged(line)
        if self.conn.queued >= SEND_AT:
            await self.flush()

    async def _ensure_bodies(self, selected: Selected, uids: Sequence[int]) -> None:
        """Fetch the pending bodies among *uids* now, or raise `BodyUnavailable`."""
        if not self.mailboxes.any_pending_now(selected.info.id):
            return  # the usual case, answered without a thread hop
        pending = await self.mailboxes.pending_uids(selected.info.id)
        wanted = pending.intersection(uids)
        if wanted:
            rows = await self.mailboxes.messages(selected.info.id, wanted)
            await self.store.ensure_bodies(rows)

    async def _rows(self, selected: Selected, uids: Sequence[int]) -> dict[int, StoredMessage]:
        """The rows of *uids*: stored, or removed since but not yet reported (RFC 3501
        §7.4.1: until the client is told, the message is still there for it)."""
        found = {m.uid: m for m in await self.mailboxes.messages(selected.info.id, uids)}
        reader = selected.reader
        if reader is not None and len(found) < len(uids):
            for uid in uids:
                ghost = None if uid in found else reader.ghost(uid)
                if ghost is not None:
                    found[uid] = ghost
        return found

    async def _read_batch(
        self, selected: Selected, uids: Sequence[int], with_content: bool
    ) -> tuple[dict[int, StoredMessage], dict[int, bytes]]:
        """The rows of a FETCH batch and, *with_content*, their decrypted bodies.

        One worker call reads the rows and decrypts their blobs, none for a small
        batch (`INLINE_MESSAGES`); only messages removed meanwhile (read from the
        session's `MailboxReader`) or whose blob was just replaced take another.
        """
        blobs = self.store.blobs

        def decrypt(found: list[StoredMessage]) -> dict[int, bytes]:
            return _decrypt(blobs, found) if with_content else {}

        if len(uids) <= INLINE_MESSAGES:
            found = self.mailboxes.messages_now(selected.info.id, uids)
            if sum(m.size for m in found) <= INLINE_BYTES:
                contents = decrypt(found)
            else:
                contents = await trio.to_thread.run_sync(decrypt, found)
        else:
            found, contents = await self.mailboxes.messages_then(selected.info.id, uids, decrypt)
        rows = {m.uid: m for m in found}
        reader = selected.reader
        if reader is not None and len(rows) < len(uids):
            for uid in uids:
                ghost = None if uid in rows else reader.ghost(uid)
                if ghost is not None:
                    rows[uid] = ghost
        if with_content and len(contents) < len(rows):
            # A ghost's body, or one that came from the centre meanwhile and replaced
            # the header-only blob the row named (`Mailstore.fill_body`): read the
            # rows again, then their bodies.
            again = await self._rows(selected, [u for u in rows if u not in contents])
            rows.update(again)
            contents.update(await self._contents(again))
        return rows, contents

    async def _contents(self, rows: dict[int, StoredMessage]) -> dict[int, bytes]:
        """Decrypt a FETCH batch's messages in one worker call, not one hop each."""
        blobs = self.store.blobs

        return await trio.to_thread.run_sync(_decrypt, blobs, rows.values())

    async def _fetch_line(
        self,
        selected: Selected,
        uid: int,
        items: Sequence[imap.FetchItem],
        row: StoredMessage | None,
        content: bytes | None = None,
    ) -> bytes:
        state = selected.messages.state(uid)
        tree: mime.Part | None = None
        parts: list[bytes] = []

        async def raw() -> bytes:
            nonlocal content
            if content is None:
                assert row is not None
                content = await self.store.content(row)
            return content

        async def load() -> tuple[bytes, mime.Part]:
            # The MIME tree only for what needs it: BODY[] and RFC822 do not.
            nonlocal tree
            data = await raw()
            if tree is None:
                tree = mime.parse(data)
            return data, tree

        for item in items:
            if isinstance(item, imap.FetchAttr):
                name = item.name
                if name == "UID":
                    parts.append(f"UID {uid}".encode())
                elif name == "FLAGS":
                    parts.append(f"FLAGS {selected.flags_of(uid, state.flags)}".encode())
                elif name == "MODSEQ":
                    parts.append(f"MODSEQ ({state.modseq})".encode())
                elif name == "INTERNALDATE":
                    assert row is not None
                    when = dt.datetime.fromtimestamp(row.internal_date, dt.UTC)
                    parts.append(f'INTERNALDATE "{imap.imap_date(when)}"'.encode())
                elif name == "RFC822.SIZE":
                    assert row is not None
                    parts.append(f"RFC822.SIZE {row.size}".encode())
                elif name == "ENVELOPE":
                    data, _ = await load()
                    parts.append(b"ENVELOPE " + mime.serialize(mime.envelope(data)))
                elif name in ("BODY", "BODYSTRUCTURE"):
                    extended = name == "BODYSTRUCTURE"
                    if row is not None and row.pending_structure is not None:
                        # The centre's structure, in the shape ours will have.
                        structure = mime.pending_bodystructure(row.pending_structure, extended)
                    else:
                        _, root = await load()
                        structure = mime.bodystructure(root, extended=extended)
                    parts.append(name.encode() + b" " + mime.serialize(structure))
                elif name == "RFC822":
                    parts.append(b"RFC822 " + _literal(await raw()))
                elif name in ("RFC822.HEADER", "RFC822.TEXT"):
                    data, root = await load()
                    text = "HEADER" if name == "RFC822.HEADER" else "TEXT"
                    body = mime.section(data, mime.SectionSpec((), text), root)
                    parts.append(name.encode() + b" " + _literal(body))
            elif isinstance(item, imap.FetchBinary):
                data, root = await load()
                parts.append(_binary_item(item, data, root))
            else:
                section = item.section
                if not section.part and section.text is None:
                    body = await raw()  # BODY[]: the message as stored
                else:
                    data, root = await load()
                    spec = mime.SectionSpec(section.part, section.text, section.fields)
                    body = mime.section(data, spec, root)
                label = f"BODY[{_section_label(item.section)}]"
                if item.partial is not None:
                    # RFC 3501 §7.4.2: the answer names the origin after the brackets,
                    # "BODY[TEXT]<0>", never inside them.
                    origin, length = item.partial
                    body = mime.partial(body, origin, length)
                    label += f"<{origin}>"
                parts.append(f"{label} ".encode() + _literal(body))
        return f"{selected.seq_of(uid)} FETCH (".encode() + b" ".join(parts) + b")"

    async def _on_search(self, cmd: imap.Search) -> None:
        selected = self._require_selected()
        matcher = _Matcher(self, selected, cmd.criteria)
        options = cmd.return_options
        if options is not None and "SAVE" in options:
            self.conn.tagged(cmd.tag, "BAD", "SEARCH RETURN (SAVE) is not supported")
            return
        if matcher.uses_modseq:
            self._enable_condstore()
        view = selected.messages
        live = options is not None and "UPDATE" in options
        mask = matcher.flag_mask()
        if mask is not None:
            # Sequence numbers straight off the mask; the UIDs only when they are sent
            # or kept (a UID per message of 100,000 is the costlier of the two).
            found = view.uids_where(mask) if cmd.uid or live else []
            numbers = found if cmd.uid else view.seqs_where(mask)
        else:
            found = await matcher.matching(list(view))
            numbers = found if cmd.uid else view.seqs_of(found)
        modseq = 0
        if matcher.uses_modseq:
            # RFC 7162 §3.1.5: the highest MODSEQ of the messages the answer returns;
            # RETURN (MIN) / (MAX) alone return one or two of them, not all matches.
            returned = found
            if options and found and not {"ALL", "COUNT"} & set(options):
                returned = [found[0]] if "MIN" in options else []
                returned += [found[-1]] if "MAX" in options else []
            modseq = selected.messages.highest_modseq(returned)
        if options is None:
            result = " ".join(["SEARCH", *map(str, numbers)])
            if modseq:
                result += f" (MODSEQ {modseq})"
        else:
            result = _esearch(cmd.tag, cmd.uid, options or ("ALL",), numbers, modseq)
            if cmd.partial is not None:
                result += " " + sort.partial_data(numbers, cmd.partial)
        self.conn.untagged(result)
        if live:
            self._start_live(cmd, found)
        await self.report_changes(expunges=cmd.uid)
        self.conn.tagged(cmd.tag, "OK", "SEARCH completed")

    # -- live SEARCH results (RFC 5267 §4: CONTEXT=SEARCH) ----------------------------

    def _start_live(self, cmd: imap.Search, found: Sequence[int]) -> None:
        if cmd.tag not in self._live and len(self._live) >= MAX_LIVE_SEARCHES:
            # RFC 5267 §4.2: the search is answered, but it will not be kept current.
            self.conn.untagged(f'NO [NOUPDATE "{sort.imap_string(cmd.tag)}"] too many updates')
            return
        self._live[cmd.tag] = LiveSearch(cmd.tag, cmd.uid, cmd.criteria, set(found))

    async def _on_cancelupdate(self, cmd: imap.CancelUpdate) -> None:
        unknown = [t for t in cmd.tags if t not in self._live]
        if unknown:
            self.conn.tagged(cmd.tag, "NO", f"no live search tagged {unknown[0]}")
            return
        for tag in cmd.tags:
            del self._live[tag]
        self.conn.tagged(cmd.tag, "OK", "CANCELUPDATE completed")

    def _live_expunged(self, selected: Selected, gone: Sequence[int]) -> None:
        """REMOVEFROM for expunged matches, numbered as the client still knows them."""
        for live in self._live.values():
            removed = [u for u in gone if u in live.uids]
            if removed:
                live.uids.difference_update(removed)
                self.conn.untagged(_live_update(live, selected, removed, []))

    async def _live_changed(self, selected: Selected, uids: Sequence[int]) -> None:
        """ADDTO and REMOVEFROM for new and changed messages, after EXISTS and FETCH.

        Only the messages that changed are evaluated again. Positions are 0: the
        results of SEARCH are a set (RFC 5267 §4.3), and Dovecot answers the same.
        """
        if not uids:
            return
        ordered = sorted(uids)
        for live in list(self._live.values()):
            hits = set(await _Matcher(self, selected, live.criteria).matching(ordered))
            added = [u for u in ordered if u in hits and u not in live.uids]
            removed = [u for u in ordered if u in live.uids and u not in hits]
            if added or removed:
                live.uids.difference_update(removed)
                live.uids.update(added)
                self.conn.untagged(_live_update(live, selected, removed, added))

    # -- SORT and THREAD (RFC 5256) ----------------------------------------------------

    async def _on_sort(self, cmd: imap.Sort) -> None:
        selected = self._require_selected()
        if cmd.charset not in SORT_CHARSETS:
            # RFC 5256 §3: an unknown charset is NO, not BAD.
            self.conn.tagged(cmd.tag, "NO", "unsupported charset",
                             code=f"BADCHARSET ({' '.join(SORT_CHARSETS)})")  # fmt: skip
            return
        matcher = _Matcher(self, selected, cmd.search)
        found = await matcher.matching(list(selected.messages))
        items = await self._sort_items(selected, found, header=sort.needs_header(cmd.criteria))
        ordered = sort.sort_uids(items, cmd.criteria)
        numbers = ordered if cmd.uid else [selected.seq_of(u) for u in ordered]
        # RFC 7162 §3.1.5: a search with MODSEQ reports the highest MODSEQ found.
        modseq = selected.messages.highest_modseq(found) if matcher.uses_modseq else 0
        if cmd.return_options is None:
            result = "SORT" + "".join(f" {n}" for n in numbers)
            if modseq:
                result += f" (MODSEQ {modseq})"
        else:
            result = sort.esort(cmd.tag, cmd.uid, cmd.return_options, numbers, cmd.partial)
            if modseq:
                result += f" MODSEQ {modseq}"
        self.conn.untagged(result)
        await self.report_changes(expunges=cmd.uid)
        self.conn.tagged(cmd.tag, "OK", "SORT completed")

    async def _on_thread(self, cmd: imap.Thread) -> None:
        selected = self._require_selected()
        if cmd.charset not in SORT_CHARSETS:
            self.conn.tagged(cmd.tag, "NO", "unsupported charset",
                             code=f"BADCHARSET ({' '.join(SORT_CHARSETS)})")  # fmt: skip
            return
        found = await _Matcher(self, selected, cmd.search).matching(list(selected.messages))
        items = await self._sort_items(selected, found, header=True)
        if cmd.algorithm == "ORDEREDSUBJECT":
            roots = thread.ordered_subject(items)
        else:
            roots = thread.references(items)
        number = (lambda uid: uid) if cmd.uid else selected.seq_of
        # RFC 5256 §5: thread-data = "THREAD" [SP 1*thread-list]
        self.conn.untagged(" ".join(("THREAD", thread.render(roots, number))).rstrip())
        await self.report_changes(expunges=cmd.uid)
        self.conn.tagged(cmd.tag, "OK", "THREAD completed")

    async def _sort_items(
        self, selected: Selected, uids: Sequence[int], *, header: bool
    ) -> list[sort.SortItem]:
        """The rows of *uids* with their header facts, for SORT and THREAD.

        Facts come from the process-wide cache; the messages it lacks are decrypted
        and read in one worker call for the whole command, never one hop per message.
        """
        rows = await self.mailboxes.messages(selected.info.id, uids)
        facts: dict[int, sort.HeaderFacts] = {}
        missing: list[StoredMessage] = []
        if header:
            for row in rows:
                known = sort.CACHE.get(row.blob_id)
                if known is None:
                    missing.append(row)
                else:
                    facts[row.uid] = known
        if missing:
            blobs = self.store.blobs

            def read_all() -> list[tuple[StoredMessage, sort.HeaderFacts]]:
                found = []
                for row in missing:
                    try:
                        found.append((row, sort.facts_of(_header_block(blobs, row.blob_id))))
                    except BlobMissing:
                        continue  # freed by a concurrent expunge: sorted as if blank
                return found

            for row, known in await trio.to_thread.run_sync(read_all):
                sort.CACHE.put(row.blob_id, known)
                facts[row.uid] = known
        return [
            sort.SortItem(row.uid, row.internal_date, row.size, facts.get(row.uid, _NO_FACTS))
            for row in rows
        ]

    # -- IDLE ------------------------------------------------------------------------

    async def idle(self, cmd: imap.Idle, done: trio.Event) -> None:
        """Report changes as they happen until *done* is set (RFC 2177)."""
        selected = self.selected
        self.conn.continuation("idling")
        await self.flush()
        if selected is None:
            await done.wait()
            return
        while not done.is_set():
            watch = self.store.changes.watch(selected.info.id)
            await self.report_changes(expunges=True)
            await self.flush()
            with trio.move_on_after(60):  # also look now and then for other processes
                async with trio.open_nursery() as nursery:

                    async def stop_on(event: trio.Event) -> None:
                        await event.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(stop_on, watch)
                    nursery.start_soon(stop_on, done)

    # -- keeping the client's view true ----------------------------------------------

    async def report_changes(self, *, expunges: bool, quiet: Iterable[int] = ()) -> None:
        """Tell the client what changed since it last heard (RFC 3501 §7.4.1, RFC 7162)."""
        selected = self.selected
        if selected is None:
            return
        # Every change takes a new MODSEQ of its mailbox (expunges too, RFC 7162 §3.2.5.2),
        # so an unmoved HIGHESTMODSEQ, one indexed row read at once, means nothing to
        # tell: a client pipelining one FETCH per message pays no query per command.
        mark = self.mailboxes.mark_of_now(selected.info.id)
        if mark is not None and mark.highestmodseq == selected.modseq:
            return
        changes = await self.mailboxes.changes(selected.info.id, selected.modseq)
        changed, vanished = changes.changed, changes.vanished
        quiet_set = set(quiet)
        view = selected.messages
        gone = [u for u in vanished if u in view]
        if gone and expunges and self._live:
            self._live_expunged(selected, gone)  # before the EXPUNGEs renumber
        if gone and expunges:
            if self.qresync:
                self.conn.untagged(f"VANISHED {imap.encode_uid_set(gone)}")
            else:
                # Highest first, so each number is still right when the client reads it.
                for uid in sorted(gone, reverse=True):
                    self.conn.untagged(f"{view.seq_of(uid)} EXPUNGE")
            view.remove(gone)
        # UIDs only grow, so anything above our highest UID is new (RFC 3501 §2.3.1.1).
        top = view.top
        new = [s for s in changed if s.uid > top]
        self._announce_keywords(selected, changed)
        for state in new:
            view.append(state)
        if new:
            if not selected.readonly:
                await self._claim_recent(selected, new[-1].uid)
            self.conn.untagged(f"{len(view)} EXISTS")
            self.conn.untagged(f"{selected.recent_count()} RECENT")
        for state in changed:
            if state.uid > top or state.uid not in view:
                continue
            before = view.state(state.uid)
            view.update(state)
            if state.uid in quiet_set or (before.flags == state.flags and not self.condstore):
                continue
            if before == state:
                continue
            modseq = f" MODSEQ ({state.modseq})" if self.condstore else ""
            flags = selected.flags_of(state.uid, state.flags)
            self.conn.untagged(f"{selected.seq_of(state.uid)} FETCH (UID {state.uid}"
                               f" FLAGS {flags}{modseq})")  # fmt: skip
        if self._live:
            await self._live_changed(selected, [s.uid for s in changed if s.uid in view])
        # Expunges held back must be found again next time: then the mark stays put.
        # Flag changes seen now are not repeated, as their state equals ours.
        if expunges or not gone:
            # Told of everything up to the snapshot's HIGHESTMODSEQ, expunges included.
            highest = changes.mark.highestmodseq if changes.mark is not None else 0
            selected.modseq = max([selected.modseq, highest] + [s.modseq for s in changed])
        if selected.reader is not None:
            # Removed messages the client no longer sees (told now, or never shown)
            # need not be kept for it any more.
            self._freed += selected.reader.release(view.__contains__)
            await self._reclaim()

    async def _claim_recent(self, selected: Selected, newest: int) -> None:
        """Take new messages as \\Recent unless another session took them first."""
        # A read first: with several sessions on one mailbox, only the first to hear of
        # a message writes; the others see the mark already past it.
        if await self.mailboxes.first_recent_uid(selected.info.id) <= newest:
            first, last = await self.mailboxes.claim_recent(selected.info.id)
            if last > first:
                selected.recent.append((first, last))


class _Matcher:
    """Evaluates a SEARCH key tree (RFC 3501 §6.4.4) over a mailbox's messages.

    On 100,000 messages a per-message walk of the key tree costs about a second in
    Python, so keys are answered for whole sets where they can be: flags and keywords
    once per distinct flag set of the mailbox, text keys from the search index, AND,
    OR and NOT as set operations on what their parts found. Only keys that need the
    message itself (dates, sizes, unindexed text) are evaluated message by message,
    and only for the candidates left by the keys beside them.
    """

    def __init__(self, session: ImapSession, selected: Selected, criteria: imap.SearchKey) -> None:
        self.session = session
        self.selected = selected
        self.criteria = criteria
        self.uses_modseq = _uses(criteria, imap.SearchModseq)
        self._rows: dict[int, StoredMessage] = {}
        # The search index answers text keys for the messages it holds; the others
        # (indexed a moment later, or before start-up reconciliation) are read directly.
        self._indexed: set[int] | None = None
        self._hits: dict[imap.SearchText | imap.SearchHeader, set[int]] = {}

    async def matches(self, uid: int) -> bool:
        return await self._eval(self.criteria, uid)

    def flag_mask(self) -> bytes | None:
        """A mask of the mailbox's matches (`MessageView.flag_mask`), or None.

        A key tree made only of stored-flag keys (UNSEEN, DELETED, KEYWORD, with AND,
        OR and NOT) is a function of a message's flag set, so it is evaluated once per
        distinct set and the mailbox is answered in C: no UID list, no set per key.
        None when any key needs more (text, dates, sizes, sequence sets, MODSEQ, or
        \\Recent, which is this session's).
        """
        if not _flags_only(self.criteria):
            return None
        criteria = self.criteria
        return self.selected.messages.flag_mask(
            lambda flags: _flags_match(criteria, {f.lower() for f in flags})
        )

    async def matching(self, uids: Sequence[int]) -> list[int]:
        """The UIDs of *uids* (ascending) that match, in the same order."""
        found = await self._set(self.criteria, uids)
        if len(found) == len(uids):
            return list(uids)
        return sorted(found)  # a subset of *uids*, which ascend

    async def _set(self, key: imap.SearchKey, uids: Sequence[int]) -> set[int]:
        view = self.selected.messages
        if isinstance(key, imap.SearchAnd):
            candidates = list(uids)
            for sub in key.keys:
                if not candidates:
                    break
                hits = await self._set(sub, candidates)
                candidates = [u for u in candidates if u in hits]
            return set(candidates)
        if isinstance(key, imap.SearchOr):
            left = await self._set(key.left, uids)
            return left | await self._set(key.right, [u for u in uids if u not in left])
        if isinstance(key, imap.SearchNot):
            inner = await self._set(key.key, uids)
            return {u for u in uids if u not in inner}
        if isinstance(key, imap.SearchFlag) and key.name.upper() in _RECENT_KEYS:
            return {u for u in uids if self._recent_key(key.name.upper(), u)}
        if isinstance(key, imap.SearchFlag | imap.SearchKeyword):
            flag_key = key
            return view.with_flags(uids, lambda flags: self._flag_key(flag_key, flags))
        if isinstance(key, imap.SearchText | imap.SearchHeader):
            found = await self._index_hits(key)
            if found is not None:
                indexed, hits = found
                # Set operations in C: *uids* may be the whole of a 100,000-message box.
                asked = set(uids)
                unindexed = sorted(asked.difference(indexed))
                return hits.intersection(asked) | await self._each(key, unindexed)
        return await self._each(key, uids)

    async def _each(self, key: imap.SearchKey, uids: Sequence[int]) -> set[int]:
        """Evaluate *key* message by message, with their rows read in one go."""
        missing = [u for u in uids if u not in self._rows]
        if missing and not isinstance(key, imap.SearchSequence | imap.SearchModseq):
            self._rows.update(await self.session._rows(self.selected, missing))
        return {u for u in uids if await self._eval(key, u)}

    def _recent_key(self, name: str, uid: int) -> bool:
        """RECENT, OLD (not recent) and NEW (recent and unseen), RFC 3501 §6.4.4."""
        recent = self.selected.is_recent(uid)
        if name == "OLD":
            return not recent
        if name == "NEW":
            return recent and not _has(self.selected.messages.flags(uid), "\\seen")
        return recent

    @staticmethod
    def _flag_key(key: imap.SearchFlag | imap.SearchKeyword, flags: tuple[str, ...]) -> bool:
        lowered = {f.lower() for f in flags}
        if isinstance(key, imap.SearchFlag):
            return _flag_matches(key.name.upper(), lowered)
        return (key.flag.lower() in lowered) == (key.name.upper() == "KEYWORD")

    async def _index_hits(
        self, key: imap.SearchText | imap.SearchHeader
    ) -> tuple[set[int], set[int]] | None:
        """(UIDs the index holds, those of them matching *key*), or None without an index."""
        search = self.session.store.search
        if search is None:
            return None
        mailbox_id = self.selected.info.id
        if self._indexed is None:
            self._indexed = await search.indexed_uids(mailbox_id)
        if key not in self._hits:
            if isinstance(key, imap.SearchHeader):
                field = f"HEADER:{key.field_name}"
            else:
                field = key.name.upper()
            self._hits[key] = await search.search(mailbox_id, field, key.value)
        return self._indexed, self._hits[key]

    async def _from_index(self, key: imap.SearchText | imap.SearchHeader, uid: int) -> bool | None:
        found = await self._index_hits(key)
        if found is None or uid not in found[0]:
            return None
        return uid in found[1]

    async def _row(self, uid: int) -> StoredMessage | None:
        if uid not in self._rows:
            rows = await self.session._rows(self.selected, [uid])
            if uid not in rows:
                return None
            self._rows[uid] = rows[uid]
        return self._rows[uid]

    async def _eval(self, key: imap.SearchKey, uid: int) -> bool:
        selected = self.selected
        state = selected.messages.state(uid)
        flags = {f.lower() for f in state.flags}
        if isinstance(key, imap.SearchAnd):
            for sub in key.keys:
                if not await self._eval(sub, uid):
                    return False
            return True
        if isinstance(key, imap.SearchOr):
            return await self._eval(key.left, uid) or await self._eval(key.right, uid)
        if isinstance(key, imap.SearchNot):
            return not await self._eval(key.key, uid)
        if isinstance(key, imap.SearchFlag) and key.name.upper() in _RECENT_KEYS:
            return self._recent_key(key.name.upper(), uid)
        if isinstance(key, imap.SearchFlag):
            return _flag_matches(key.name.upper(), flags)
        if isinstance(key, imap.SearchKeyword):
            return (key.flag.lower() in flags) == (key.name.upper() == "KEYWORD")
        if isinstance(key, imap.SearchSequence):
            top = selected.messages.top if key.uid else len(selected.messages)
            number = uid if key.uid else selected.seq_of(uid)
            return key.sequence_set.contains(number, top)
        if isinstance(key, imap.SearchModseq):
            return state.modseq >= key.modseq
        if isinstance(key, imap.SearchText | imap.SearchHeader):
            answer = await self._from_index(key, uid)
            if answer is not None:
                return answer
        row = await self._row(uid)
        if row is None:
            return False
        if isinstance(key, imap.SearchSize):
            return row.size > key.size if key.name.upper() == "LARGER" else row.size < key.size
        relation = key.name.upper().removeprefix("SENT") if isinstance(key, imap.SearchDate) else ""
        if isinstance(key, imap.SearchDate) and not key.name.upper().startswith("SENT"):
            day = dt.datetime.fromtimestamp(row.internal_date, dt.UTC).date()
            return _compare_day(day, key.date, relation)
        content = await self.session.store.content(row)
        if isinstance(key, imap.SearchDate):
            sent = _sent_date(content)
            return sent is not None and _compare_day(sent, key.date, relation)
        if isinstance(key, imap.SearchHeader):
            return _header_contains(content, key.field_name, key.value)
        if isinstance(key, imap.SearchText):
            where = key.name.upper()
            if where in ("SUBJECT", "FROM", "TO", "CC", "BCC"):
                return _header_contains(content, where, key.value, addresses=where != "SUBJECT")
            wanted = key.value.casefold()
            if wanted in mime.body_text_for_search(content).casefold():
                return True
            return where == "TEXT" and wanted in mime.header_text_for_search(content).casefold()
        return False


#: SEARCH keys about \Recent, which only the session knows (`_Matcher._recent_key`).
_RECENT_KEYS = frozenset({"NEW", "OLD", "RECENT"})


def _flags_only(key: imap.SearchKey) -> bool:
    """Whether *key* depends on nothing but a message's stored flags."""
    if isinstance(key, imap.SearchAnd):
        return all(map(_flags_only, key.keys))
    if isinstance(key, imap.SearchOr):
        return _flags_only(key.left) and _flags_only(key.right)
    if isinstance(key, imap.SearchNot):
        return _flags_only(key.key)
    if isinstance(key, imap.SearchFlag):
        return key.name.upper() not in _RECENT_KEYS
    return isinstance(key, imap.SearchKeyword)


def _flags_match(key: imap.SearchKey, flags: set[str]) -> bool:
    """Evaluate a `_flags_only` *key* on one flag set (lower-cased), as `_Matcher._eval`."""
    if isinstance(key, imap.SearchAnd):
        return all(_flags_match(sub, flags) for sub in key.keys)
    if isinstance(key, imap.SearchOr):
        return _flags_match(key.left, flags) or _flags_match(key.right, flags)
    if isinstance(key, imap.SearchNot):
        return not _flags_match(key.key, flags)
    if isinstance(key, imap.SearchFlag):
        return _flag_matches(key.name.upper(), flags)
    assert isinstance(key, imap.SearchKeyword)
    return (key.flag.lower() in flags) == (key.name.upper() == "KEYWORD")


def _flag_matches(name: str, flags: set[str]) -> bool:
    """SEARCH flag keys on stored flags (RFC 3501 §6.4.4); see _RECENT_KEYS for the rest."""
    if name == "ALL":
        return True
    negated = name.startswith("UN")
    return (f"\\{name.removeprefix('UN').lower()}" in flags) != negated


def _header_contains(
    content: bytes, field_name: str, value: str, *, addresses: bool = False
) -> bool:
    """HEADER/FROM/SUBJECT...: a case-insensitive substring of a decoded field.

    *addresses*: the field is an address list, also matched in its comment-free
    address form (`mime.address_search_text`), as the search index matches it.
    """
    wanted = value.casefold()
    return any(
        name.lower() == field_name.lower()
        and wanted in (mime.address_search_text(text) if addresses else text).casefold()
        for name, text in mime.decoded_headers(content)
    )


def _esearch(
    tag: str, uid: bool, options: Sequence[str], numbers: Sequence[int], modseq: int
) -> str:
    """An ESEARCH response (RFC 4731 §3.1); MIN, MAX and ALL only when something matched."""
    result = f'ESEARCH (TAG "{tag}")' + (" UID" if uid else "")
    if numbers:
        if "MIN" in options:
            result += f" MIN {numbers[0]}"
        if "MAX" in options:
            result += f" MAX {numbers[-1]}"
        if "ALL" in options:
            result += f" ALL {imap.encode_uid_set(numbers)}"
    if "COUNT" in options:
        result += f" COUNT {len(numbers)}"
    if modseq:
        # RFC 7162 §3.1.5: the highest MODSEQ of the matches, as in SEARCH.
        result += f" MODSEQ {modseq}"
    return result


def _has(flags: Iterable[str], flag: str) -> bool:
    return flag in {f.lower() for f in flags}


def _uses(key: imap.SearchKey, kind: type) -> bool:
    if isinstance(key, kind):
        return True
    if isinstance(key, imap.SearchAnd):
        return any(_uses(k, kind) for k in key.keys)
    if isinstance(key, imap.SearchOr):
        return _uses(key.left, kind) or _uses(key.right, kind)
    if isinstance(key, imap.SearchNot):
        return _uses(key.key, kind)
    return False


def _compare_day(day: dt.date, when: dt.date, relation: str) -> bool:
    return {"BEFORE": day < when, "ON": day == when, "SINCE": day >= when}[relation.upper()]


def _sent_date(content: bytes) -> dt.date | None:
    from email.utils import parsedate_to_datetime

    for name, value in mime.decoded_headers(content):
        if name.lower() == "date":
            try:
                return parsedate_to_datetime(value).date()
            except (TypeError, ValueError, IndexError):
                return None
    return None


def _uids_in(sequence_set: imap.SequenceSet, selected: Selected, *, uid: bool) -> list[int]:
    """Resolve a sequence set to existing UIDs (RFC 3501 §6.4.8 for UID sets).

    Cost follows the size of the answer, not of the mailbox: clients such as mbsync
    send one `UID FETCH n` per message, and a scan per command would be quadratic.
    """
    view = selected.messages
    result: list[int] = []
    if uid:
        for wanted in sequence_set.resolve(view.top):
            result.extend(view.uid_range(wanted.start, wanted.stop - 1))
        return result
    count = len(view)
    for numbers in sequence_set.resolve(count):
        result.extend(view.uids[n - 1] for n in numbers if n <= count)
    return result


def _pattern(pattern: str) -> Callable[[str], bool]:
    """LIST wildcards (RFC 3501 §6.3.8): * matches anything, % anything but '/'."""
    pieces = []
    for char in pattern:
        if char == "*":
            pieces.append(".*")
        elif char == "%":
            pieces.append(f"[^{re.escape(SEPARATOR)}]*")
        else:
            pieces.append(re.escape(char))
    regex = re.compile("".join(pieces) + r"\Z", re.DOTALL)
    # INBOX is case-insensitive (RFC 3501 §5.1): "inbox" and "InBox" patterns find it.
    anycase = re.compile("".join(pieces) + r"\Z", re.DOTALL | re.IGNORECASE)

    def match(name: str) -> bool:
        return bool(regex.match(name) or (name == "INBOX" and anycase.match(name)))

    return match


def _ancestors(name: str) -> list[str]:
    """The hierarchy levels above *name*: "a/b/c" -> ["a", "a/b"]."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:n]) for n in range(1, len(parts))]


def _needs_body(item: imap.FetchItem) -> bool:
    """Whether a FETCH item needs more than the header block (of a pending message)."""
    if isinstance(item, imap.FetchAttr):
        return item.name in ("RFC822", "RFC822.TEXT")
    section = item.section
    header_only = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")
    return bool(section.part) or (section.text or "").upper() not in header_only


#: FETCH attributes answered from the view, the row and the stored bytes alone.
_PLAIN_ATTRS = frozenset({"UID", "FLAGS", "MODSEQ", "INTERNALDATE", "RFC822.SIZE", "RFC822"})


def _is_plain(item: imap.FetchItem) -> bool:
    """Whether *item* needs no MIME parse: `_plain_fetch_line` can answer it."""
    if isinstance(item, imap.FetchAttr):
        return item.name in _PLAIN_ATTRS
    return (
        isinstance(item, imap.FetchBody) and item.section == _WHOLE_MESSAGE and item.partial is None
    )


_WHOLE_MESSAGE = imap.BodySection()


def _plain_fetch_line(
    selected: Selected,
    uid: int,
    items: Sequence[imap.FetchItem],
    row: StoredMessage | None,
    content: bytes | None,
) -> bytes | None:
    """`ImapSession._fetch_line` for plain items (`_is_plain`), with nothing to await:
    the common FLAGS sync and whole-message download, per message of a large FETCH.
    None when a body it needs is not at hand (the caller then reads it)."""
    state = selected.messages.state(uid)
    parts: list[bytes] = []
    for item in items:
        name = item.name if isinstance(item, imap.FetchAttr) else "BODY[]"
        if name == "UID":
            parts.append(b"UID %d" % uid)
        elif name == "FLAGS":
            parts.append(b"FLAGS " + selected.flags_of(uid, state.flags).encode())
        elif name == "MODSEQ":
            parts.append(b"MODSEQ (%d)" % state.modseq)
        elif row is None:
            return None
        elif name == "INTERNALDATE":
            when = dt.datetime.fromtimestamp(row.internal_date, dt.UTC)
            parts.append(f'INTERNALDATE "{imap.imap_date(when)}"'.encode())
        elif name == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % row.size)
        elif content is None:
            return None
        else:  # BODY[] and RFC822: the message as stored
            parts.append(name.encode() + b" " + _literal(content))
    return b"%d FETCH (" % selected.seq_of(uid) + b" ".join(parts) + b")"


#: `_state_lines`' piece of a FETCH response per item it answers, and which value of
#: (sequence number, UID, flags, MODSEQ) it takes.
_STATE_FORMATS = {"UID": (b"UID %d", 1), "FLAGS": (b"FLAGS %s", 2), "MODSEQ": (b"MODSEQ (%d)", 3)}


def _state_lines(selected: Selected, uids: Sequence[int], items: Sequence[imap.FetchItem]) -> bytes:
    """The untagged FETCH responses of *uids* for UID, FLAGS and MODSEQ items, framed.

    The same bytes as `_plain_fetch_line` gives, made without an object per message:
    positions, flag-set numbers and MODSEQs come from the view (`MessageView.entries`)
    and each distinct flag set is rendered once; only \\Recent messages are rendered
    one by one (RFC 3501 §2.3.2: that flag is this session's, not the view's).
    """
    formats = [_STATE_FORMATS[item.name] for item in items if isinstance(item, imap.FetchAttr)]
    template = b"* %d FETCH (" + b" ".join(piece for piece, _ in formats) + b")\r\n"
    order = (0, *(value for _, value in formats))
    view = selected.messages
    columns = view.run_columns(uids)
    all_recent = _recent_cover(selected.recent, uids[0], uids[-1]) if columns else None
    if columns is not None and all_recent is not None:
        # A run of the view, wholly \Recent or wholly not: every line is made in C,
        # one `%` format over a zip of the columns (~0.2 µs a line).
        first, run, numbers, modseqs = columns
        rendered = [b""] * (max(numbers) + 1)
        for number in set(numbers):
            stored = view.flag_set(number)
            rendered[number] = imap.flag_list((RECENT, *stored) if all_recent else stored).encode()
        seqs = range(first, first + len(run))
        # A fresh iterator per item: a client may name an item twice.
        columns_in_order = [
            map(rendered.__getitem__, numbers) if v == 2 else (seqs, run, None, modseqs)[v]
            for v in order
        ]
        return b"".join(map(template.__mod__, zip(*columns_in_order, strict=True)))
    pick = itemgetter(*order)
    plain: dict[int, bytes] = {}
    recent: dict[int, bytes] = {}
    recent_from = min((first for first, _ in selected.recent), default=_NO_END)
    lines = []
    for seq, uid, number, modseq in view.entries(uids):
        is_recent = uid >= recent_from and selected.is_recent(uid)
        table = recent if is_recent else plain
        flags = table.get(number)
        if flags is None:
            shown = view.flag_set(number)
            shown = (RECENT, *shown) if is_recent else shown
            flags = table[number] = imap.flag_list(shown).encode()
        lines.append(template % pick((seq, uid, flags, modseq)))
    return b"".join(lines)


def _recent_cover(ranges: Sequence[tuple[int, int]], low: int, high: int) -> bool | None:
    """True if UIDs *low*..*high* are all \\Recent, False if none is, None if some are."""
    if any(first <= low and high < last for first, last in ranges):
        return True
    if all(last <= low or first > high for first, last in ranges):
        return False
    return None


def _section_label(section: imap.BodySection) -> str:
    label = ".".join(str(p) for p in section.part)
    if section.text:
        label += ("." if label else "") + section.text
        if section.fields:
            label += " (" + " ".join(section.fields) + ")"
    return label


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested single-member groups (the FETCH read-ahead's)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _decrypt(blobs: BlobStore, rows: Iterable[StoredMessage]) -> dict[int, bytes]:
    """The bodies of *rows* by UID (in a worker thread); a blob gone is left out, and
    the caller reads its row again (see `ImapSession._read_batch`)."""
    found = {}
    for row in rows:
        try:
            found[row.uid] = blobs.get(row.blob_id)
        except BlobMissing:
            continue
    return found


def _header_block(blobs: BlobStore, blob_id: str) -> bytes:
    """The start of a message up to its header's end, decrypting no more chunks than
    that takes: a 25 MB attachment costs SORT one 1 MiB chunk, not 25."""
    data = b""
    pieces = blobs.iter_plaintext(blob_id)
    try:
        for piece in pieces:
            data += piece
            if b"\r\n\r\n" in data or b"\n\n" in data or len(data) >= mime.MAX_HEADER_READ:
                break
    finally:
        if isinstance(pieces, Generator):
            pieces.close()  # the blob file is closed now, not at garbage collection
    return data


def _live_update(
    live: LiveSearch, selected: Selected, removed: Sequence[int], added: Sequence[int]
) -> str:
    """``ESEARCH (TAG "t") [UID] REMOVEFROM (0 set) ADDTO (0 set)`` (RFC 5267 §4.3)."""

    def numbers(uids: Sequence[int]) -> str:
        return imap.encode_uid_set(uids if live.uid else [selected.seq_of(u) for u in uids])

    line = f'ESEARCH (TAG "{sort.imap_string(live.tag)}")' + (" UID" if live.uid else "")
    if removed:
        line += f" REMOVEFROM (0 {numbers(removed)})"
    if added:
        line += f" ADDTO (0 {numbers(added)})"
    return line


#: What a message whose content could not be read sorts as: empty strings, no date.
_NO_FACTS = sort.HeaderFacts("", False, None, "", "", "", None, ())


def _binary_item(item: imap.FetchBinary, message: bytes, root: mime.Part) -> bytes:
    """One BINARY[...] / BINARY.SIZE[...] item of a FETCH answer (RFC 3516 §4.2)."""
    label = ".".join(str(n) for n in item.section.part)
    decoded = mime.decoded_part(message, item.section.part, root)
    if decoded is None:
        # RFC 3516 §4.3: the part's Content-Transfer-Encoding is not one we know.
        raise MailboxError("UNKNOWN-CTE", f"cannot decode BINARY[{label}]")
    if item.size:
        return f"BINARY.SIZE[{label}] {len(decoded)}".encode()
    head = f"BINARY[{label}]"
    if item.partial is not None:
        origin, length = item.partial
        decoded = mime.partial(decoded, origin, length)
        head += f"<{origin}>"
    # RFC 3516 §4.2: data holding NUL must go as literal8; the rest as a plain literal.
    marker = b"~" if b"\0" in decoded else b""
    return head.encode() + b" " + marker + _literal(decoded)
