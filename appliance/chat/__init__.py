"""Chat: rooms, messages, receipts, events and the room rules (REQUIREMENTS.md §3).

`open_chat` opens the encrypted chat database and yields a `Chat`; `chat_routes`
(`appliance.chat.api`) declares its HTTPS endpoints; `SecretSweeper` is the background
service that deletes expired secret messages. Read ``docs/chat.md`` first.
"""

from appliance.chat.errors import ChatError
from appliance.chat.models import Event, EventPage, Message, Room, RoomOptions
from appliance.chat.rules import RoomPolicy
from appliance.chat.secrets import SecretSweeper
from appliance.chat.store import Chat, open_chat

__all__ = [
    "Chat",
    "ChatError",
    "Event",
    "EventPage",
    "Message",
    "Room",
    "RoomOptions",
    "RoomPolicy",
    "SecretSweeper",
    "open_chat",
]
