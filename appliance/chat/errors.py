"""The one error the chat domain raises: a refusal with a status and a message in Thai and English.

The domain checks every request before it writes (or inside the same transaction), so
a `ChatError` always means "nothing changed". `appliance.chat.api` turns it into the web
layer's `ApiError`; the domain itself does not know about HTTP beyond the status number,
which is the most useful short name for the kind of refusal (403 not allowed, 404 not
found or not yours to see, 409 conflicts with the room's state, 422 malformed).
"""

from __future__ import annotations

from appliance.sync.codec.chat import Refusal

#: A chat request refused; nothing was changed. It is the sync wire's `Refusal` (a
#: status, a code, a message in Thai and English) under the domain's name: the pure
#: event codec refuses a malformed event with it without importing the chat domain, and
#: a refusal from either reaches the hub's answer, or the API, the same way.
ChatError = Refusal


def not_found(what_en: str, what_th: str) -> ChatError:
    """Return the refusal for something absent or not visible to the caller.

    Rooms a user is not a member of answer 404, not 403: whether a room exists is
    itself something only its members may learn.
    """
    return ChatError(404, "not_found", f"{what_en} not found", f"ไม่พบ{what_th}")
