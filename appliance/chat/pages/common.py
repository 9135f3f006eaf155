"""What every chat page handler shares: the box's parts, names, the caller, refusals.

A handler class per page or job (room_list.py, search.py, new_room.py, room.py,
room_forms.py) extends `PageHandlers` and declares its routes with `page`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from appliance.chat.errors import ChatError
from appliance.chat.models import Room
from appliance.chat.store import Chat
from appliance.directory import Directory, User
from appliance.web.pages import PageKit
from appliance.web.routes import ApiError, Language, Request, Route

TAG: Final = "chat-pages"
#: Beyond this many people, one read of the whole directory beats one query each.
_BULK_NAMES: Final = 40
#: Form posts are small: text, a few addresses.
_FORM_BODY: Final = 64 * 1024


def page(method: Any, path: str, handler: Any, summary: str, **extra: Any) -> Route:
    """Declare a chat page (a form post takes a small body)."""
    if method == "POST":
        extra.setdefault("max_body", _FORM_BODY)
    return Route(method, path, handler, summary, tag=TAG, kind="page", **extra)


def refusal_text(exc: ChatError | ApiError, lang: Language) -> str:
    """A refusal's message in the page's language, to show on the page."""
    return exc.message_th if lang == "th" else exc.message_en


def api_error(exc: ChatError) -> ApiError:
    """A refusal that ends the request with the shared error page (a 404, say)."""
    return ApiError(exc.status, exc.code, exc.message_en, exc.message_th)


class PageHandlers:
    """The parts of the box a chat page reads: the chat domain, the directory, the kit."""

    def __init__(self, chat: Chat, directory: Directory, kit: PageKit) -> None:
        self.chat = chat
        self.directory = directory
        self.kit = kit

    async def _names(self, addresses: Iterable[str], lang: Language) -> dict[str, str]:
        """Display names of *addresses* (an unknown address stands for itself)."""
        wanted = set(addresses)
        found: dict[str, User] = {}
        if len(wanted) > _BULK_NAMES:
            found = {u.address: u for u in await self.directory.users() if u.address in wanted}
        else:
            for address in wanted:
                user = await self.directory.user(address)
                if user is not None:
                    found[address] = user
        return {a: found[a].display_name(lang) if a in found else a for a in wanted}

    @staticmethod
    def _me(request: Request) -> User:
        assert request.user is not None  # page routes always authenticate
        return request.user

    async def _room_or_404(self, me: User, room_id: str) -> Room:
        try:
            return await self.chat.room(me, room_id)
        except ChatError as exc:
            raise api_error(exc) from None
