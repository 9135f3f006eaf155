"""The JSON Schemas of the chat API: what each endpoint takes and answers.

Data only, no handlers: the route tables beside the handlers (rooms.py, messages.py …)
name these, the web server checks request bodies and query strings against them before
a handler runs (`appliance.web.schema`), and the OpenAPI document at
``/api/v1/openapi.json`` is generated from them (`appliance.web.openapi`). Change a
schema here and both the check and the document follow.

The shared pieces come first (an address, a room, a message …), then the bodies of
each job's endpoints in the order the routes are declared.
"""

from __future__ import annotations

from typing import Final

from appliance.chat.models import ROOM_KINDS
from appliance.web.routes import Schema

# --- shared pieces --------------------------------------------------------------------

ADDRESS: Final[Schema] = {"type": "string", "minLength": 3, "maxLength": 254}
ID: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 200}
TEXT: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 10_000}
LOCATION: Final[Schema] = {
    "type": "object",
    "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "label": {"type": ["string", "null"], "maxLength": 256},
    },
    "required": ["lat", "lon"],
    "additionalProperties": False,
}
HOURS: Final[Schema] = {
    "type": ["object", "null"],
    "properties": {
        "days": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 6},
            "minItems": 1,
            "maxItems": 7,
        },
        "start": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
        "end": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
    },
    "required": ["days", "start", "end"],
    "additionalProperties": False,
}
OPTIONS: Final[Schema] = {
    "type": "object",
    "properties": {
        "no_private_chat": {"type": "boolean"},
        "auto_location": {"type": "boolean"},
        "working_hours": HOURS,
        "posters": {"type": "array", "items": ADDRESS, "maxItems": 100},
        "secret_ttl": {"type": "integer", "minimum": 60, "maximum": 7 * 24 * 3600},
        "audience": {
            "type": "object",
            "properties": {
                "agency": {"type": ["string", "null"], "maxLength": 255},
                "units": {"type": "array", "items": {"type": "string", "maxLength": 256}},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
ROOM: Final[Schema] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": list(ROOM_KINDS)},
        "name": {"type": ["string", "null"]},
        "owner": {"type": "string"},
        "created_by": {"type": "string"},
        "options": {"type": "object"},
        "created_at": {"type": "number"},
        "member_count": {"type": "integer"},
        "members": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["id", "kind", "owner", "options", "created_at"],
}
MESSAGE: Final[Schema] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "room_id": {"type": "string"},
        "sender": {"type": "string"},
        "kind": {"type": "string"},
        "content": {"type": "object"},
        "reply_to": {"type": ["string", "null"]},
        "client_id": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "edited_at": {"type": ["number", "null"]},
        "deleted": {"type": "boolean"},
        "secret": {"type": "boolean"},
        "expires_at": {"type": ["number", "null"]},
        "hidden": {"type": "boolean"},
    },
    "required": ["id", "room_id", "sender", "kind", "content", "created_at"],
}
MESSAGES: Final[Schema] = {"type": "array", "items": MESSAGE}
SETTINGS: Final[Schema] = {
    "type": "object",
    "properties": {
        "agency": {"type": "string"},
        "public_mode": {"type": "boolean"},
        # Issue 16: who may create broadcast rooms (admins only unless opened to all).
        "broadcast_creators": {"enum": ["admins", "everyone"]},
    },
}
COMMON_MESSAGE: Final[Schema] = {
    "location": LOCATION,
    "reply_to": ID,
    "client_id": {"type": "string", "minLength": 1, "maxLength": 128},
}
DRAFT: Final[Schema] = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"kind": {"const": "text"}, "text": TEXT, **COMMON_MESSAGE},
            "required": ["kind", "text"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"const": "link"},
                "url": {
                    "type": "string",
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "maxLength": 2048,
                },
                "title": {"type": ["string", "null"], "maxLength": 256},
                **COMMON_MESSAGE,
            },
            "required": ["kind", "url"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"kind": {"const": "location"}, **COMMON_MESSAGE},
            "required": ["kind", "location"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"kind": {"const": "sticker"}, "sticker_id": ID, **COMMON_MESSAGE},
            "required": ["kind", "sticker_id"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "kind": {"enum": ["image", "video", "voice", "file"]},
                "upload_id": ID,
                "text": {"type": ["string", "null"], "maxLength": 10_000},
                **COMMON_MESSAGE,
            },
            "required": ["kind", "upload_id"],
            "additionalProperties": False,
        },
    ]
}
PERSON: Final[Schema] = {
    "type": "object",
    "properties": {
        "address": {"type": "string"},
        "agency": {"type": "string"},
        "name_th": {"type": "string"},
        "name_en": {"type": ["string", "null"]},
        "position": {"type": ["string", "null"]},
        "unit": {"type": ["string", "null"]},
        "rank": {"type": "integer"},
        "phone": {"type": ["string", "null"]},
        "email": {"type": "string"},
    },
    "required": ["address", "agency", "name_th", "rank"],
}
INVITATION: Final[Schema] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "room_id": {"type": "string"},
        "organiser": {"type": "string"},
        "title": {"type": "string"},
        "starts_at": {"type": "string"},
        "ends_at": {"type": ["string", "null"]},
        "place": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "invitees": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "address": {"type": "string"},
                    "answer": {"type": ["string", "null"]},
                    "answered_at": {"type": ["number", "null"]},
                },
            },
        },
    },
    "required": ["id", "room_id", "organiser", "title", "starts_at", "invitees"],
}
PACK: Final[Schema] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "agency": {"type": "string"},
        "name": {"type": "string"},
        "stickers": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["id", "agency", "name", "stickers"],
}
EVENT: Final[Schema] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "room_id": {"type": ["string", "null"]},
        "subject": {"type": ["string", "null"]},
        "payload": {"type": "object"},
        "created_at": {"type": "number"},
    },
    "required": ["id", "type", "payload", "created_at"],
}
CURSOR_QUERY: Final[Schema] = {"type": "string", "pattern": "^[0-9]{1,18}$"}
LIMIT_QUERY: Final[Schema] = {"type": "string", "pattern": "^[0-9]{1,4}$"}
LIMIT: Final[dict[str, Schema]] = {"limit": LIMIT_QUERY}
#: The ?name= of an uploaded file or sticker.
NAME_QUERY: Final[dict[str, Schema]] = {"name": {"type": "string", "maxLength": 256}}

# --- rooms and members ----------------------------------------------------------------

ROOMS: Final[Schema] = {"type": "array", "items": ROOM}
NEW_ROOM: Final[Schema] = {
    "type": "object",
    "properties": {
        "kind": {"enum": list(ROOM_KINDS)},
        "name": {"type": ["string", "null"], "maxLength": 200},
        "members": {"type": "array", "items": ADDRESS, "maxItems": 5000},
        "options": OPTIONS,
    },
    "required": ["kind"],
    "additionalProperties": False,
}
UNREAD: Final[Schema] = {
    "type": "object",
    "properties": {
        "cursor": {"type": "integer"},
        "rooms": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "room_id": {"type": "string"},
                    "unread": {"type": "integer", "minimum": 0},
                    "last_message": {"oneOf": [MESSAGE, {"type": "null"}]},
                },
                "required": ["room_id", "unread", "last_message"],
            },
        },
    },
    "required": ["cursor", "rooms"],
}
DIRECT_WITH: Final[Schema] = {
    "type": "object",
    "properties": {"with": ADDRESS},
    "required": ["with"],
    "additionalProperties": False,
}
ROOM_CHANGE: Final[Schema] = {
    "type": "object",
    "properties": {
        "name": {"type": ["string", "null"], "maxLength": 200},
        "options": OPTIONS,
    },
    "additionalProperties": False,
}
NEW_OWNER: Final[Schema] = {
    "type": "object",
    "properties": {"owner": ADDRESS},
    "required": ["owner"],
    "additionalProperties": False,
}
MEMBER_LIST: Final[Schema] = {
    "type": "object",
    "properties": {
        "owner": {"type": "string"},
        "members": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["owner", "members"],
}
NEW_MEMBERS: Final[Schema] = {
    "type": "object",
    "properties": {
        "addresses": {
            "type": "array",
            "items": ADDRESS,
            "minItems": 1,
            "maxItems": 1000,
        }
    },
    "required": ["addresses"],
    "additionalProperties": False,
}

# --- messages, reading, hiding --------------------------------------------------------

MESSAGE_PAGE_QUERY: Final[dict[str, Schema]] = {"before": ID, **LIMIT}
NEW_TEXT: Final[Schema] = {
    "type": "object",
    "properties": {"text": TEXT},
    "required": ["text"],
    "additionalProperties": False,
}
#: The messages a call marked read (those already read are not repeated).
NEWLY_READ: Final[Schema] = {
    "type": "object",
    "properties": {"read": {"type": "array", "items": {"type": "string"}}},
}
READ_UP_TO: Final[Schema] = {
    "type": "object",
    "properties": {"up_to": ID},
    "required": ["up_to"],
    "additionalProperties": False,
}
RECEIPTS: Final[Schema] = {
    "type": "object",
    "properties": {
        "message_id": {"type": "string"},
        "read": {"type": "array", "items": {"type": "object"}},
        "unread": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["message_id", "read", "unread"],
}

# --- files ----------------------------------------------------------------------------

MEDIA_QUERY: Final[dict[str, Schema]] = {
    "kind": {"enum": ["link", "image", "video", "voice", "file"]}
}
UPLOADED: Final[Schema] = {
    "type": "object",
    "properties": {
        "upload_id": {"type": "string"},
        "size": {"type": "integer"},
        "media_type": {"type": "string"},
        "name": {"type": "string"},
    },
    "required": ["upload_id", "size", "media_type", "name"],
}

# --- search and the event log ---------------------------------------------------------

SEARCH_QUERY: Final[dict[str, Schema]] = {
    "q": {"type": "string", "minLength": 1, "maxLength": 200},
    **LIMIT,
}
EVENTS_QUERY: Final[dict[str, Schema]] = {"cursor": CURSOR_QUERY, **LIMIT}
EVENTS_PAGE: Final[Schema] = {
    "type": "object",
    "properties": {
        "cursor": {"type": "integer"},
        "more": {"type": "boolean"},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"cursor": {"type": "integer"}, "event": EVENT},
            },
        },
    },
    "required": ["cursor", "more", "events"],
}
STREAM_QUERY: Final[dict[str, Schema]] = {"cursor": CURSOR_QUERY}

# --- invitations, alerts, stickers ----------------------------------------------------

NEW_INVITATION: Final[Schema] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 256},
        "starts_at": {"type": "string", "format": "date-time"},
        "ends_at": {"type": ["string", "null"], "format": "date-time"},
        "place": {"type": ["string", "null"], "maxLength": 256},
        "invitees": {"type": "array", "items": ADDRESS},
    },
    "required": ["title", "starts_at"],
    "additionalProperties": False,
}
ANSWER: Final[Schema] = {
    "type": "object",
    "properties": {"answer": {"enum": ["accept", "decline"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
SHARE_LOCATION: Final[Schema] = {
    "type": "object",
    "properties": {"share": {"type": "boolean"}, "location": LOCATION},
    "required": ["share"],
    "additionalProperties": False,
}
NEW_ALERT: Final[Schema] = {
    "type": "object",
    "properties": {
        "location": LOCATION,
        "radius_m": {"type": "number", "minimum": 1, "maximum": 1_000_000},
        "text": {"type": "string", "minLength": 1, "maxLength": 2000},
        "room_id": ID,
    },
    "required": ["location", "radius_m", "text"],
    "additionalProperties": False,
}
ALERT_SENT: Final[Schema] = {"type": "object", "properties": {"recipients": {"type": "integer"}}}
PACKS: Final[Schema] = {"type": "array", "items": PACK}
NEW_PACK: Final[Schema] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 256},
        "agency": {"type": "string", "maxLength": 255},
    },
    "required": ["name"],
    "additionalProperties": False,
}

# --- settings and the directory -------------------------------------------------------

SETTINGS_CHANGE: Final[Schema] = {
    "type": "object",
    "properties": {
        "public_mode": {"type": "boolean"},
        "broadcast_creators": {"enum": ["admins", "everyone"]},
        "agency": {"type": "string", "maxLength": 255},
    },
    "additionalProperties": False,
}
PEOPLE_QUERY: Final[dict[str, Schema]] = {"q": {"type": "string", "maxLength": 200}, **LIMIT}
PEOPLE: Final[Schema] = {"type": "array", "items": PERSON}
UNITS_QUERY: Final[dict[str, Schema]] = {"agency": {"type": "string", "maxLength": 255}}
UNITS: Final[Schema] = {"type": "array", "items": {"type": "object"}}
