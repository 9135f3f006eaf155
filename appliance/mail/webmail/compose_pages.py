"""The compose page: write, reply, reply to all, forward, save a draft, send.

URL contract (the reading pages link here):

- ``GET /mail/compose``: an empty form; ``?to=ADDRESS`` fills in a recipient;
  ``?reply=F/U``, ``?reply_all=F/U``, ``?forward=F/U`` and ``?draft=F/U`` fill it from
  message UID ``U`` of mailbox ``F`` (joined by the last "/", since mailbox names may
  hold "/") of the signed-in user's own mailboxes: anyone else's is 404, because the
  mailbox is looked up by its owner and the name; ``?saved=1`` says a draft was saved.
- ``POST /mail/compose`` (``multipart/form-data``): ``action=send`` or
  ``action=save_draft``, the fields, new files under ``attachments``, and hidden:
  ``draft`` (the draft being edited), ``reply_of`` / ``forward_of`` (to flag the
  original \\Answered / $Forwarded once sent), ``attachments_from`` (the message whose
  attachments are offered again, by position, as ``keep`` check boxes) and
  ``in_reply_to`` / ``references``.

Sending looks to the rest of the box exactly like an authenticated submission on port
587 by the same user (appliance.mail.smtp.server): envelope sender = the user's address,
recipients checked by the same `SMTPPolicy` (unknown, disabled or full local mailboxes
refused; other domains go to the outbound queue), a Received field "with ESMTPSA"
(UTF8SMTPSA for a non-ASCII address), one `Delivery.deliver` transaction, and a
traffic-log record. Then a copy with the Bcc field goes to the user's Sent (\\Seen) and
the draft it came from, if any, is removed.

Nothing is half done: every check (size, addresses, recipients, the sender's own
quota for the Sent copy) runs before delivery; a refused form is shown again with what
the user typed and the problems in both languages.

What this is not: building the message (compose.py), or showing mail (the reading pages).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from appliance.compliance.classification import Classification, Urgency
from appliance.compliance.traffic_log import TrafficLog, TrafficRecord
from appliance.directory import Directory, User
from appliance.health.disk_guard import DiskGuard
from appliance.mail.delivery import Delivery, Envelope, Recipient, Trace, with_protocol
from appliance.mail.mailboxes import FlagMode, MailboxError, Mailboxes
from appliance.mail.mailstore import Mailstore, QuotaExceeded, StoredMessage
from appliance.mail.smtp import policy as smtp_policy
from appliance.mail.smtp.policy import Port, SMTPPolicy
from appliance.mail.smtp.protocol import RcptTo, Reply
from appliance.mail.webmail.compose import (
    MAX_ATTACHMENT_BYTES,
    Attachment,
    ComposeError,
    ComposeForm,
    Composition,
    Mailbox,
    Original,
    Problem,
    build_message,
    clean_attachment,
    compose,
    draft_form,
    forward_form,
    needs_smtputf8,
    new_message_id,
    read_original,
    reply_form,
)
from appliance.protection import smtp as scanning
from appliance.protection.rspamd import Envelope as scan_envelope
from appliance.protection.scanner import Protection
from appliance.protection.verdict import Outcome, Verdict
from appliance.web.i18n import THAILAND, format_size
from appliance.web.pages import PageKit, redirect
from appliance.web.routes import ApiError, Request, Response, Route

log = logging.getLogger("edgebox.webmail")

#: The form with 25 MB of files, its text and multipart framing fits with room to
#: spare; a bigger body is refused by the server before it is read (413).
MAX_FORM_BYTES: Final = 36 * 1024 * 1024
#: The HELO name of the Received field: the message came from the web pages.
WEBMAIL_HELO: Final = "webmail"
TEMPLATE: Final = "mail/compose.html"
#: Hidden fields naming a message of the user's (see the module docstring).
HIDDEN_REFS: Final = ("draft", "reply_of", "forward_of", "attachments_from")
#: Which heading a form shown again gets, by the first hidden field it carries.
_MODES: Final = (("draft", "draft"), ("forward_of", "forward"), ("reply_of", "reply"))

#: The choices of the two selects, in order: (level, Thai, English).
CLASSIFICATIONS: Final = (
    (Classification.NONE, "ไม่มีชั้นความลับ", "Not classified"),
    (Classification.CONFIDENTIAL, "ลับ", "Confidential"),
    (Classification.SECRET, "ลับมาก", "Secret"),
    (Classification.TOP_SECRET, "ลับที่สุด", "Top secret"),
)
URGENCIES: Final = (
    (Urgency.NORMAL, "ปกติ", "Normal"),
    (Urgency.URGENT, "ด่วน", "Urgent"),
    (Urgency.VERY_URGENT, "ด่วนมาก", "Very urgent"),
    (Urgency.MOST_URGENT, "ด่วนที่สุด", "Most urgent"),
)


def compose_routes(
    kit: PageKit,
    *,
    directory: Directory,
    mailstore: Mailstore,
    delivery: Delivery,
    traffic: TrafficLog,
    disk_guard: DiskGuard,
    hostname: str,
    max_recipients: int,
    protection: Protection | None = None,
) -> list[Route]:
    """The compose page's routes, for the registry (`appliance.registry.web_routes`)."""
    return ComposePages(
        kit, directory=directory, mailstore=mailstore, delivery=delivery, traffic=traffic,
        disk_guard=disk_guard, hostname=hostname, max_recipients=max_recipients,
        protection=protection,
    ).routes()  # fmt: skip


@dataclass(frozen=True)
class Carried:
    """An attachment of an earlier message offered again (forward, draft)."""

    index: int
    attachment: Attachment
    kept: bool = True


@dataclass(frozen=True)
class _Post:
    """One form post being handled: what to show again if it is refused."""

    request: Request
    user: User
    form: ComposeForm
    hidden: dict[str, str]
    carried: tuple[Carried, ...]
    #: New files came with it: a browser cannot be given them back.
    files_lost: bool


@dataclass(frozen=True)
class Ref:
    """A message of the user's, as ``mailbox/uid`` in URLs and hidden fields."""

    mailbox: str
    uid: int

    def __str__(self) -> str:
        return f"{self.mailbox}/{self.uid}"


def parse_ref(text: str) -> Ref | None:
    """Split ``mailbox/uid`` at the last "/"; None unless both parts make sense."""
    mailbox, slash, uid = text.rpartition("/")
    if not slash or not mailbox or not (uid.isascii() and uid.isdecimal()):
        return None
    number = int(uid)
    # RFC 3501 §2.3.1.1: a UID is a non-zero 32-bit number.
    return Ref(mailbox, number) if 0 < number < 2**32 else None


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "There is no such message in your mailbox",
                    "ไม่พบข้อความนี้ในกล่องจดหมายของคุณ")  # fmt: skip


class ComposePages:
    """Handlers of GET and POST /mail/compose."""

    def __init__(
        self,
        kit: PageKit,
        *,
        directory: Directory,
        mailstore: Mailstore,
        delivery: Delivery,
        traffic: TrafficLog,
        disk_guard: DiskGuard,
        hostname: str,
        max_recipients: int,
        protection: Protection | None = None,
    ) -> None:
        self.kit = kit
        #: Scans a message before it is sent, as submission does; None: off.
        self.protection = protection
        self.directory = directory
        self.mailstore = mailstore
        self.delivery = delivery
        self.traffic = traffic
        self.disk_guard = disk_guard
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.mailboxes = Mailboxes(mailstore)
        self.policy = SMTPPolicy(Port.SUBMISSION, directory, mailstore)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/mail/compose", self.show, "Write, reply, forward or edit a draft",
                  tag="mail", kind="page"),
            Route("POST", "/mail/compose", self.submit, "Send a message or save it as a draft",
                  tag="mail", kind="page", max_body=MAX_FORM_BYTES, errors=(400, 404, 413, 422)),
        ]  # fmt: skip

    # -- the form ------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        user = _user(request)
        query = request.query
        mode, form = "new", ComposeForm(to=query.get("to", "")[:998])
        hidden: dict[str, str] = {}
        carried: tuple[Carried, ...] = ()
        lang = await self.kit.language(request)
        if "draft" in query:
            ref, original = await self._original(user, query["draft"])
            mode, form = "draft", draft_form(original)
            hidden = {"draft": str(ref), "attachments_from": str(ref)}
            carried = _carry(original, None)
        elif "reply" in query or "reply_all" in query:
            everyone = "reply" not in query
            ref, original = await self._original(
                user, query["reply" if not everyone else "reply_all"]
            )
            mode = "reply_all" if everyone else "reply"
            form = reply_form(original, user.address, everyone=everyone, lang=lang)
            hidden = {"reply_of": str(ref)}
        elif "forward" in query:
            ref, original = await self._original(user, query["forward"])
            mode, form = "forward", forward_form(original, lang)
            hidden = {"forward_of": str(ref), "attachments_from": str(ref)}
            carried = _carry(original, None)
        return await self._render(
            request, user, form, mode=mode, hidden=hidden, carried=carried,
            saved=query.get("saved") == "1",
        )  # fmt: skip

    async def _render(
        self,
        request: Request,
        user: User,
        form: ComposeForm,
        *,
        mode: str,
        hidden: dict[str, str],
        carried: Sequence[Carried],
        problems: Sequence[Problem] = (),
        files_lost: bool = False,
        saved: bool = False,
        status: int = 200,
    ) -> Response:
        people = await self.directory.users(user.agency_domain)
        lang = await self.kit.language(request)
        return await self.kit.render(
            request,
            TEMPLATE,
            status=status,
            form=form,
            mode=mode,
            hidden=hidden,
            carried=carried,
            problems=problems,
            problem_fields={p.field for p in problems},
            files_lost=files_lost,
            saved=saved,
            address_book=[(p.address, p.display_name(lang)) for p in people if not p.disabled],
            classifications=CLASSIFICATIONS,
            urgencies=URGENCIES,
            max_attachment_bytes=MAX_ATTACHMENT_BYTES,
        )

    # -- the post ------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        user = _user(request)
        fields = request.form
        action = fields.get("action")
        if action not in ("send", "save_draft"):
            raise ApiError(400, "bad_action", "Choose Send or Save draft",
                           "กรุณาเลือก “ส่ง” หรือ “บันทึกฉบับร่าง”")  # fmt: skip
        form = ComposeForm(
            to=fields.get("to"),
            cc=fields.get("cc"),
            bcc=fields.get("bcc"),
            subject=fields.get("subject"),
            body=fields.get("body"),
            classification=Classification(_level(fields.get("classification"))),
            urgency=Urgency(_level(fields.get("urgency"))),
            in_reply_to=fields.get("in_reply_to"),
            references=fields.get("references"),
        )
        hidden = {name: fields.get(name) for name in HIDDEN_REFS if fields.get(name)}
        carried: tuple[Carried, ...] = ()
        if "attachments_from" in hidden:
            _ref, source = await self._original(user, hidden["attachments_from"])
            carried = _carry(source, fields.getlist("keep"))
        uploads = [
            clean_attachment(u.filename, u.content_type, u.data)
            for u in fields.uploads("attachments")
        ]
        attachments = [*(c.attachment for c in carried if c.kept), *uploads]
        total = sum(a.size for a in attachments)
        if total > MAX_ATTACHMENT_BYTES:
            raise _too_large(total)
        post = _Post(request, user, form, hidden, carried, files_lost=bool(uploads))
        try:
            composition = compose(
                form,
                attachments,
                require_recipients=action == "send",
                max_recipients=self.max_recipients,
            )
        except ComposeError as exc:
            return await self._again(post, exc.problems)
        if action == "save_draft":
            return await self._save_draft(post, composition)
        return await self._send(post, composition)

    async def _again(self, post: _Post, problems: Sequence[Problem], status: int = 422) -> Response:
        """Show the form again as the user sent it, with what to fix."""
        hidden = post.hidden
        mode = next((m for key, m in _MODES if key in hidden), "new")
        return await self._render(
            post.request, post.user, post.form, mode=mode, hidden=hidden, carried=post.carried,
            problems=problems, files_lost=post.files_lost, status=status,
        )  # fmt: skip

    async def _save_draft(self, post: _Post, composition: Composition) -> Response:
        user = post.user
        content = build_message(
            composition, _author(user), message_id=new_message_id(self.hostname),
            date=datetime.now(THAILAND), include_bcc=True,
        )  # fmt: skip
        if not self.disk_guard.room_for(len(content)):
            return await self._again(post, [_disk_full_problem()], 507)
        try:
            uid = await self._append(user, "Drafts", "\\Drafts", content, ("\\Draft", "\\Seen"))
        except QuotaExceeded:
            return await self._again(post, [_own_quota_problem()], 507)
        # The new version is stored before the old one goes: a failure keeps one of them.
        await self._discard_draft(user, post.hidden.get("draft"))
        return redirect(f"/mail/compose?draft=Drafts/{uid}&saved=1")

    async def _send(self, post: _Post, composition: Composition) -> Response:
        user, author = post.user, _author(post.user)
        message_id = new_message_id(self.hostname)
        now = datetime.now(THAILAND)
        delivered = build_message(composition, author, message_id=message_id, date=now,
                                  include_bcc=False)  # fmt: skip
        own_copy = build_message(composition, author, message_id=message_id, date=now,
                                 include_bcc=True)  # fmt: skip
        recipients: list[Recipient] = []
        refusals: list[tuple[str, Reply]] = []
        for address in composition.recipients():
            refusal, recipient = await self.policy.check_recipient(
                RcptTo(address, {}), len(delivered)
            )
            if recipient is not None:
                recipients.append(recipient)
            elif refusal is not None:
                refusals.append((address, refusal))
        if refusals:
            first = refusals[0][1]
            await self._record(post, "rcpt-rejected", [a for a, _ in refusals], None,
                               len(delivered), f"{first.code} {first.enhanced}")  # fmt: skip
            return await self._again(post, [_recipient_problem(a, r) for a, r in refusals])
        # The Sent copy is checked before sending: once delivered, a message cannot be
        # called back, and the user must not lose the record of it.
        if await self.mailstore.usage(user.address) + len(own_copy) > user.quota_bytes:
            return await self._again(post, [_own_quota_problem()], 507)
        # The disk guard's reserve (appliance.health.disk_guard), as SMTP's 452 4.3.1:
        # nothing is sent, the form comes back whole, and the user may try again later.
        if not self.disk_guard.room_for(len(delivered) + len(own_copy)):
            return await self._again(post, [_disk_full_problem()], 507)
        envelope = Envelope(
            sender=user.address,
            recipients=tuple(recipients),
            trace=Trace(
                helo=WEBMAIL_HELO,
                client_ip=post.request.client_ip,
                protocol=with_protocol(
                    extended=True, tls=True, auth=True,
                    utf8=needs_smtputf8(composition, author),
                ),
            ),
        )  # fmt: skip
        addresses = [r.address for r in recipients]
        scanned = await self._scan(post, delivered, addresses)
        if isinstance(scanned, Response):
            return scanned
        delivered, folder, verdict_text = scanned
        try:
            queue_id = await self.delivery.deliver(envelope, delivered, folder=folder)
        except QuotaExceeded as exc:
            await self._record(post, "rejected", addresses, None, len(delivered), "552 5.2.2")
            return await self._again(post, [_full_problem(exc.owner)])
        await self._record(post, "accepted", addresses, queue_id, len(delivered),
                           "250 2.0.0" + verdict_text)  # fmt: skip
        log.info("webmail sent id=%s from=<%s> rcpts=%d size=%d", queue_id, user.address,
                 len(recipients), len(delivered))  # fmt: skip
        try:
            await self._append(user, "Sent", "\\Sent", own_copy, ("\\Seen",))
        except (QuotaExceeded, MailboxError):
            # Checked above; only a race gets here. The mail has gone, so say so.
            log.warning("no Sent copy for %s id=%s", user.address, queue_id)
        await self._discard_draft(user, post.hidden.get("draft"))
        await self._flag(user, post.hidden.get("reply_of"), "\\Answered")
        # RFC 5550 §5.9 / IANA IMAP keywords: $Forwarded, as mail clients set it.
        await self._flag(user, post.hidden.get("forward_of"), "$Forwarded")
        return redirect("/mail/folder/Sent?sent=1")

    async def _scan(
        self, post: _Post, content: bytes, addresses: list[str]
    ) -> Response | tuple[bytes, str, str]:
        """Scan a message before it is sent, as submission does (appliance.protection).

        Returns the form again with the reason, or the bytes to deliver (with the
        scan headers), the local recipients' folder and the verdict for the traffic log.
        """
        protection = self.protection
        if protection is None:
            return content, "INBOX", ""
        user = post.user.address
        verdict = await protection.scan_message(
            content,
            scan_envelope(client_ip=_ip(post.request.client_ip), helo=WEBMAIL_HELO,
                          sender=user, recipients=addresses, user=user),
            [user.rpartition("@")[2]],
        )  # fmt: skip
        refusal = scanning.refusal(
            verdict, submission=True,
            submission_unavailable=protection.submission_unavailable,
        )  # fmt: skip
        if refusal is not None:
            result = f"{refusal.code} {refusal.enhanced} {verdict.log_result()}"
            await self._record(post, "rejected", addresses, None, len(content), result)
            return await self._again(post, [_scan_problem(verdict)], 422)
        if not verdict.accepted:
            # Unscanned, as the setting protection_submission_unavailable allows.
            return content, "INBOX", f" {verdict.log_result()}"
        folder = "Junk" if verdict.outcome is Outcome.JUNK else "INBOX"
        return (
            protection.headers(verdict) + content,
            folder,
            f" {verdict.log_result()}",
        )

    # -- the store -----------------------------------------------------------------------

    async def _message(self, user: User, text: str | None) -> tuple[int, StoredMessage] | None:
        """The user's own message named by ``mailbox/uid``, with its mailbox id."""
        ref = parse_ref(text or "")
        if ref is None:
            return None
        try:
            info = await self.mailboxes.get(user.address, ref.mailbox)
        except MailboxError:
            return None
        found = await self.mailboxes.messages(info.id, [ref.uid])
        return (info.id, found[0]) if found else None

    async def _original(self, user: User, text: str) -> tuple[Ref, Original]:
        found = await self._message(user, text)
        if found is None:
            raise _not_found()
        _, stored = found
        content = await self.mailstore.content(stored)
        return Ref(stored.mailbox, stored.uid), read_original(content)

    async def _append(
        self, user: User, name: str, special_use: str, content: bytes, flags: Sequence[str]
    ) -> int:
        """Append to one of the user's special mailboxes, making it if it is missing."""
        await self.mailstore.create_mailboxes(user.address)
        try:
            _, uid = await self.mailboxes.append(
                user.address, name, content, quota_bytes=user.quota_bytes, flags=flags
            )
        except MailboxError:
            # Deleted by the user (IMAP DELETE): made again, as mail clients do.
            await self.mailboxes.create(user.address, name, special_use, subscribe=True)
            _, uid = await self.mailboxes.append(
                user.address, name, content, quota_bytes=user.quota_bytes, flags=flags
            )
        return uid

    async def _discard_draft(self, user: User, text: str | None) -> None:
        """Remove the draft a message came from: only a message flagged \\Draft."""
        found = await self._message(user, text)
        if found is None:
            return
        mailbox_id, stored = found
        if "\\draft" not in (flag.lower() for flag in stored.flags):
            return
        await self.mailboxes.store_flags(mailbox_id, [stored.uid], FlagMode.ADD, ["\\Deleted"])
        await self.mailboxes.expunge(mailbox_id, user.address, [stored.uid])

    async def _flag(self, user: User, text: str | None, flag: str) -> None:
        found = await self._message(user, text)
        if found is not None:
            mailbox_id, stored = found
            await self.mailboxes.store_flags(mailbox_id, [stored.uid], FlagMode.ADD, [flag])

    async def _record(
        self, post: _Post, event: str, recipients: Sequence[str], queue_id: str | None,
        size: int, result: str,
    ) -> None:  # fmt: skip
        """One traffic-log line, as the SMTP listeners write (REQUIREMENTS.md §2)."""
        record = TrafficRecord(
            time=datetime.now(UTC),
            service="webmail",
            event=event,
            client_ip=_ip(post.request.client_ip),
            sender=post.user.address,
            recipients=tuple(recipients),
            user=post.user.address,
            message_id=queue_id,
            size=size,
            result=result,
        )
        try:
            await self.traffic.append(record)
        except Exception:
            # As in SMTP: a full log disk must not turn into lost mail.
            log.exception("traffic log write failed")


# -- small helpers ------------------------------------------------------------------------


def _user(request: Request) -> User:
    assert request.user is not None  # page routes with auth=True always have one
    return request.user


def _author(user: User) -> Mailbox:
    # The Thai name: the box serves Thai offices, and RFC 2047 carries it to any reader.
    return Mailbox(user.address, user.display_name("th"))


def _too_large(total: int) -> ApiError:
    limit_en, limit_th = (
        format_size(MAX_ATTACHMENT_BYTES, "en"),
        format_size(MAX_ATTACHMENT_BYTES, "th"),
    )
    return ApiError(
        413,
        "attachments_too_large",
        f"Attachments may total at most {limit_en}; these come to {format_size(total, 'en')}."
        " Nothing was sent or saved: go back and choose fewer or smaller files.",
        f"ไฟล์แนบรวมกันได้ไม่เกิน {limit_th} แต่ไฟล์ที่เลือกรวม {format_size(total, 'th')}"
        " ข้อความจึงยังไม่ถูกส่งหรือบันทึก กรุณาย้อนกลับไปเลือกไฟล์ให้น้อยลงหรือเล็กลง",
    )


def _level(text: str) -> int:
    """A select's level, 0 to 3; anything else is a malformed form."""
    if text in ("", "0", "1", "2", "3"):
        return int(text or "0")
    raise ApiError(400, "bad_level", "Choose a level from the list", "กรุณาเลือกระดับจากรายการ")


def _carry(original: Original, keep: Sequence[str] | None) -> tuple[Carried, ...]:
    """The original's attachments, each kept if its index is in *keep* (None: all)."""
    chosen = None if keep is None else set(keep)
    return tuple(
        Carried(index, attachment, chosen is None or str(index) in chosen)
        for index, attachment in enumerate(original.attachments)
    )


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _recipient_problem(address: str, refusal: Reply | None) -> Problem:
    if refusal in (smtp_policy.MAILBOX_FULL, smtp_policy.OVER_QUOTA):
        return _full_problem(address)
    if refusal == smtp_policy.MAILBOX_DISABLED:
        return Problem("to", f"บัญชี {address} ถูกระงับการใช้งาน ส่งถึงไม่ได้",
                       f"The mailbox {address} is disabled")  # fmt: skip
    if refusal == smtp_policy.USER_UNKNOWN:
        return Problem("to", f"ไม่มีผู้ใช้ {address} ในระบบ", f"There is no user {address} here")
    return Problem("to", f"ส่งถึง {address} ไม่ได้", f"Cannot send to {address}")


def _full_problem(address: str) -> Problem:
    return Problem(
        "to",
        f"กล่องจดหมายของ {address} เต็ม ส่งถึงไม่ได้ในขณะนี้",
        f"The mailbox of {address} is full; it cannot take this message now",
    )


def _scan_problem(verdict: Verdict) -> Problem:
    if verdict.outcome is Outcome.VIRUS:
        return Problem(
            "attachments",
            f"ไม่ได้ส่ง: พบไวรัสในข้อความหรือไฟล์แนบ ({verdict.detail}) กรุณานำไฟล์นั้นออก",
            f"Not sent: a virus was found in the message or an attachment ({verdict.detail});"
            " remove that file",
        )
    if verdict.outcome is Outcome.BLOCKED:
        return Problem(
            "to",
            "ไม่ได้ส่ง: หน่วยงานผู้รับปิดกั้นผู้ส่งรายนี้",
            "Not sent: the recipient agency blocks this sender",
        )
    if verdict.outcome is Outcome.SPAM:
        return Problem(
            "body",
            "ไม่ได้ส่ง: ระบบตรวจพบว่าข้อความนี้เป็นสแปม",
            "Not sent: the message was judged to be spam",
        )
    return Problem(
        "attachments",
        "ไม่ได้ส่ง: ระบบตรวจไวรัสและสแปมไม่พร้อมใช้งานชั่วคราว กรุณาลองใหม่ภายหลัง",
        "Not sent: virus and spam scanning is unavailable for now; please try again later",
    )


def _disk_full_problem() -> Problem:
    return Problem(
        "attachments",
        "พื้นที่เก็บข้อมูลของเครื่องแม่ข่ายเต็ม ยังไม่ได้ส่งหรือบันทึกข้อความนี้ กรุณาลองใหม่ภายหลัง",
        "The server's disk is full, so nothing was sent or saved; please try again later",
    )


def _own_quota_problem() -> Problem:
    return Problem(
        "attachments",
        "กล่องจดหมายของคุณเต็ม เก็บสำเนาข้อความนี้ไม่ได้ กรุณาลบข้อความที่ไม่ใช้แล้วก่อน",
        "Your mailbox is full, so this message cannot be kept; delete some mail first",
    )
