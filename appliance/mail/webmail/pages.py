"""The webmail's reading pages: folders, message lists, the reading view, actions, search.

URLs (other pages link to them; keep them stable):

- ``GET /mail``: the INBOX list; ``GET /mail/folder/{name}?page=N``: any mailbox, the
  name as one percent-encoded path segment (``Archive%2F2569``). 50 messages a page,
  newest (highest UID) first.
- ``GET /mail/folder/{name}/{uid}``: the reading view; it marks the message \\Seen.
- ``GET /mail/folder/{name}/{uid}/body``: the sanitised body, for the sandboxed frame
  of the reading view only (its own CSP; ``?images=1`` lets remote images load).
- ``GET /mail/folder/{name}/{uid}/part/{part}``: one part decoded, as a download.
- ``GET /mail/search?q=...&folder=...``: the search index over subject, from, to, body.
- ``POST /mail/actions``: ``folder``, ``uids`` (repeated), ``action`` (read, unread,
  flag, unflag, move with ``target``, delete), ``back`` (where to go afterwards).
  Delete moves to Trash; delete in Trash removes for good (IMAP's \\Deleted + EXPUNGE).

Every lookup starts from the signed-in user's own mailboxes, so another user's folder
or UID is simply not found (404): there is no way to name someone else's mail.
Everything works with plain forms and links; mail.js only adds keyboard shortcuts and
"select all".

What this is not: writing mail (compose_pages.py), the MIME reading (reading.py) or
the sanitiser (sanitise.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from urllib.parse import urlencode

import trio

from appliance.mail.imap import mime
from appliance.mail.mailboxes import FlagMode, MailboxError, Mailboxes, normalise_name
from appliance.mail.mailstore import Mailstore, StoredMessage
from appliance.mail.webmail import reading, sanitise
from appliance.mail.webmail.folders import (
    Folder,
    UnreadCounts,
    compose_url,
    folder_url,
    message_url,
)
from appliance.mail.webmail.listing import PAGE_SIZE, Summaries, badges
from appliance.web.pages import HTML, PageKit, redirect, safe_next
from appliance.web.routes import ApiError, Request, Response, Route
from appliance.web.user_content import user_content

#: Longest search text taken (the index answers substrings; more is never useful).
MAX_QUERY: Final = 200
#: Messages one action may touch (a page of checkboxes is 50).
MAX_ACTION_UIDS: Final = 1000
#: Actions of `POST /mail/actions`; "move" also needs a target.
ACTIONS: Final = ("read", "unread", "flag", "unflag", "move", "delete")
#: Search fields of `SearchIndex.search`, unioned (the brief's "subject, from, to, body").
SEARCH_FIELDS: Final = ("SUBJECT", "FROM", "TO", "BODY")
_UID_LIMIT: Final = 2**32 - 1  # RFC 3501 §2.3.1.1: nz-number, 32 bits


def mail_routes(mailstore: Mailstore, kit: PageKit) -> list[Route]:
    """Every reading page of the webmail (compose has its own routes)."""
    return MailPages(mailstore, kit).routes()


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such folder or message", "ไม่พบโฟลเดอร์หรือจดหมายนี้")


def _bad(code: str, english: str, thai: str) -> ApiError:
    return ApiError(422, code, english, thai)


def _uid(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= _UID_LIMIT:
        raise _not_found()
    return int(text)


def _page_number(text: str | None) -> int:
    if text and text.isascii() and text.isdigit():
        return max(1, min(int(text), 10**6))
    return 1


def _iso(moment: int | datetime) -> str:
    if isinstance(moment, int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.isoformat()


@dataclass(frozen=True)
class Paging:
    page: int
    pages: int
    total: int
    #: URL of page n.
    url: Callable[[int], str]

    @property
    def first(self) -> int:
        return 0 if not self.total else (self.page - 1) * PAGE_SIZE + 1

    @property
    def last(self) -> int:
        return min(self.page * PAGE_SIZE, self.total)


def _paging(page: int, total: int, url: Callable[[int], str]) -> Paging:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return Paging(min(page, pages), pages, total, url)


class MailPages:
    """The reading pages of one HTTPS service."""

    def __init__(self, mailstore: Mailstore, kit: PageKit) -> None:
        self.mailstore = mailstore
        self.kit = kit
        self.mailboxes = Mailboxes(mailstore)
        self.unread = UnreadCounts(self.mailboxes)
        self.summaries = Summaries(mailstore.blobs)

    def routes(self) -> list[Route]:
        def page(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
            return Route(method, path, handler, summary, tag="mail", kind="page", **extra)

        folder = "/mail/folder/{name}"
        return [
            page("GET", "/mail", self.inbox, "Inbox"),
            page("GET", folder, self.folder, "A folder's messages, 50 a page"),
            page("GET", folder + "/{uid}", self.message, "Read a message"),
            page("GET", folder + "/{uid}/body", self.body, "A message's body, for its frame"),
            page("GET", folder + "/{uid}/part/{part}", self.part, "Download an attachment"),
            page("GET", "/mail/search", self.search, "Search a folder"),
            page("POST", "/mail/actions", self.actions, "Flag, move or delete messages",
                 max_body=64 * 1024),
        ]  # fmt: skip

    # -- shared --------------------------------------------------------------------

    async def _folders(self, owner: str) -> list[Folder]:
        folders = await self.unread.folders(owner)
        if not folders:
            # A user who has never received mail has no mailboxes yet.
            await self.mailstore.create_mailboxes(owner)
            folders = await self.unread.folders(owner)
        return folders

    @staticmethod
    def _find(folders: list[Folder], name: str) -> Folder:
        wanted = normalise_name(name)
        for folder in folders:
            if folder.name == wanted:
                return folder
        raise _not_found()

    async def _stored(self, folder: Folder, uid: int) -> StoredMessage:
        found = await self.mailboxes.messages(folder.id, [uid])
        if not found:
            raise _not_found()
        return found[0]

    async def _located(self, request: Request) -> tuple[list[Folder], Folder, StoredMessage]:
        assert request.user is not None
        folders = await self._folders(request.user.address)
        folder = self._find(folders, request.params["name"])
        return folders, folder, await self._stored(folder, _uid(request.params["uid"]))

    async def _render(self, request: Request, template: str, **values: Any) -> Response:
        return await self.kit.render(
            request, f"mail/{template}",
            folder_url=folder_url, message_url=message_url, compose_url=compose_url,
            iso=_iso, **values,
        )  # fmt: skip

    # -- lists ---------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        return await self._list(request, "INBOX")

    async def folder(self, request: Request) -> Response:
        return await self._list(request, request.params["name"])

    async def _list(self, request: Request, name: str) -> Response:
        assert request.user is not None
        folders = await self._folders(request.user.address)
        folder = self._find(folders, name)
        paging = _paging(
            _page_number(request.query.get("page")), folder.messages,
            lambda n: folder_url(folder.name, n),
        )  # fmt: skip
        stored = await self.mailboxes.newest(folder.id, (paging.page - 1) * PAGE_SIZE, PAGE_SIZE)
        rows = await self.summaries.rows(folder.name, stored)
        return await self._render(
            request, "list.html", folders=folders, folder=folder, rows=rows, paging=paging,
            query="", searched=False, back=paging.url(paging.page),
        )  # fmt: skip

    async def search(self, request: Request) -> Response:
        assert request.user is not None
        folders = await self._folders(request.user.address)
        folder = self._find(folders, request.query.get("folder") or "INBOX")
        query = " ".join(request.query.get("q", "").split())[:MAX_QUERY]
        index = self.mailstore.search
        found: set[int] = set()
        if query and index is not None:
            for field in SEARCH_FIELDS:
                found |= await index.search(folder.id, field, query)
        uids = sorted(found, reverse=True)

        def url(n: int) -> str:
            params = {"q": query, "folder": folder.name} | ({"page": str(n)} if n > 1 else {})
            return "/mail/search?" + urlencode(params)

        paging = _paging(_page_number(request.query.get("page")), len(uids), url)
        shown = uids[(paging.page - 1) * PAGE_SIZE : paging.page * PAGE_SIZE]
        stored = sorted(await self.mailboxes.messages(folder.id, shown), key=lambda m: -m.uid)
        rows = await self.summaries.rows(folder.name, stored)
        return await self._render(
            request, "list.html", folders=folders, folder=folder, rows=rows, paging=paging,
            query=query, searched=bool(query), back=paging.url(paging.page),
            index_missing=index is None,
        )  # fmt: skip

    # -- one message -----------------------------------------------------------------

    async def message(self, request: Request) -> Response:
        assert request.user is not None
        _, folder, stored = await self._located(request)
        # A body still on the central server is asked for (bounded wait); if the link
        # is down the page says so instead of failing.
        content, pending = await self.mailstore.read_for_display(stored)
        view = await trio.to_thread.run_sync(
            partial(reading.read_message, content, body_pending=pending)
        )
        blocked = 0
        if view.body.kind == "html":
            blocked = (await trio.to_thread.run_sync(sanitise.sanitise, view.body.text)).blocked
        flags = {flag.lower() for flag in stored.flags}
        if "\\seen" not in flags:
            await self.mailboxes.store_flags(folder.id, [stored.uid], FlagMode.ADD, ["\\Seen"])
        # After marking it read, so the sidebar's count already includes this message.
        folders = await self._folders(request.user.address)
        return await self._render(
            request, "message.html", folders=folders, folder=folder, stored=stored,
            view=view, blocked=blocked, flagged="\\flagged" in flags,
            badges=badges(stored.classification, stored.urgency), query="",
            back=folder_url(folder.name), here=message_url(folder.name, stored.uid),
        )  # fmt: skip

    async def body(self, request: Request) -> Response:
        _, _, stored = await self._located(request)
        content = await self.mailstore.content(stored)
        remote = request.query.get("images") == "1"
        document = await trio.to_thread.run_sync(_frame, content, remote)
        return Response(
            body=document,
            content_type=HTML,
            headers={
                "Content-Security-Policy": sanitise.frame_policy(remote_images=remote),
                "X-Frame-Options": "SAMEORIGIN",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def part(self, request: Request) -> Response:
        _, _, stored = await self._located(request)
        content = await self.mailstore.content(stored)
        number = request.params["part"]
        found = await trio.to_thread.run_sync(_download, content, number)
        if found is None:
            raise _not_found()
        data, content_type, name = found
        # Always an attachment, of a harmless type or octet-stream (reading.download_type).
        return user_content(data, name, content_type=content_type)

    # -- actions ---------------------------------------------------------------------

    async def actions(self, request: Request) -> Response:
        assert request.user is not None
        user = request.user
        form = request.form
        folders = await self._folders(user.address)
        folder = self._find(folders, form.get("folder") or "INBOX")
        back = safe_next(form.get("back"))
        if not back.startswith("/mail"):
            back = folder_url(folder.name)
        action = form.get("action")
        if action not in ACTIONS:
            raise _bad("bad_action", "Choose what to do with the messages",
                       "กรุณาเลือกสิ่งที่จะทำกับจดหมาย")  # fmt: skip
        texts = form.getlist("uids")
        if len(texts) > MAX_ACTION_UIDS:
            raise _bad("too_many", f"At most {MAX_ACTION_UIDS} messages at a time",
                       f"ทำได้ครั้งละไม่เกิน {MAX_ACTION_UIDS} ฉบับ")  # fmt: skip
        try:
            uids = sorted({_uid(text) for text in texts})
        except ApiError:
            raise _bad("bad_uid", "A message number is not valid",
                       "หมายเลขจดหมายไม่ถูกต้อง") from None  # fmt: skip
        if not uids:
            return redirect(back)  # nothing ticked: nothing to do
        try:
            await self._apply(user.address, user.quota_bytes, folders, folder, action, uids,
                              form.get("target"))  # fmt: skip
        except MailboxError as exc:
            if exc.code == "UNAVAILABLE":
                raise _bad("unavailable", "Some of these messages are still being downloaded"
                           " from the central server; try again when the link is back",
                           "จดหมายบางฉบับยังดาวน์โหลดจากเครื่องแม่ข่ายกลางไม่เสร็จ"
                           " กรุณาลองใหม่เมื่อเชื่อมต่อได้") from None  # fmt: skip
            raise _bad("mailbox", f"The messages could not be moved ({exc})",
                       "ย้ายจดหมายไม่ได้") from None  # fmt: skip
        return redirect(back)

    async def _apply(self, owner: str, quota: int, folders: list[Folder], folder: Folder,
                     action: str, uids: list[int], target_name: str) -> None:  # fmt: skip
        flag_actions = {
            "read": (FlagMode.ADD, "\\Seen"),
            "unread": (FlagMode.REMOVE, "\\Seen"),
            "flag": (FlagMode.ADD, "\\Flagged"),
            "unflag": (FlagMode.REMOVE, "\\Flagged"),
        }
        if action in flag_actions:
            mode, flag = flag_actions[action]
            await self.mailboxes.store_flags(folder.id, uids, mode, [flag])
            return
        if action == "move":
            if not target_name:
                raise _bad("no_target", "Choose a folder to move to",
                           "กรุณาเลือกโฟลเดอร์ปลายทาง")  # fmt: skip
            target = self._find(folders, target_name)
            if target.id != folder.id:
                await self.mailboxes.copy(folder.id, uids, owner, target.name,
                                          quota_bytes=quota, move=True)  # fmt: skip
            return
        # delete: to Trash; from Trash, for good (RFC 3501 §6.4.6 \Deleted, then
        # RFC 4315 UID EXPUNGE of exactly these messages).
        trash = next((f for f in folders if f.role == "\\Trash"), None)
        if trash is None or trash.id == folder.id:
            await self.mailboxes.store_flags(folder.id, uids, FlagMode.ADD, ["\\Deleted"])
            await self.mailboxes.expunge(folder.id, owner, uids)
        else:
            await self.mailboxes.copy(folder.id, uids, owner, trash.name,
                                      quota_bytes=quota, move=True)  # fmt: skip


def _frame(content: bytes, remote_images: bool) -> bytes:
    """The framed document of a message's body (CPU-bound: runs in a worker thread)."""
    view = reading.read_message(content)
    if view.body.kind != "html":
        return sanitise.plain_document(view.body.text)
    images = reading.inline_images(content, mime.parse(content), view.inline)
    cleaned = sanitise.sanitise(view.body.text, remote_images=remote_images, inline=images)
    return sanitise.frame_document(cleaned.html)


def _download(content: bytes, number: str) -> tuple[bytes, str, str] | None:
    """(decoded bytes, Content-Type, file name) of one part, or None if there is none."""
    part = reading.find_part(mime.parse(content), number)
    if part is None or part.is_multipart:
        return None
    return (
        reading.part_bytes(content, part),
        reading.download_type(part),
        reading.filename(part, number),
    )
