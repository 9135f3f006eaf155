"""``GET /api/v1/link``: the uplink as the web app, phones and scripts see it.

Anyone signed in may ask whether the centre (gin) and the internet (international) are
reachable: staff wonder why a mail to another ministry has not left, and the answer
"the uplink is down since 09:40" is theirs to know. What the uplink *carries* is not:
the outbound queue by urgency, the backlog's age, the probe targets and errors, and
each sync stream's last success are for administrators only, and an agency admin's
queue figures count only their own agency's senders (`AdminScope.sees_sender`, the
same rule as the admin console).

The link and the streams come from the one read model of the uplink
(`appliance.sync.uplink.read_uplink`: files the link monitor and the replicators
write) and the queue from the mail database (`appliance.mail.outbound`), so the
answer is the same whichever process serves it and whichever surface asks.

What this is not: the monitor (link.py) or the console page (appliance.admin).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from appliance.compliance.classification import Urgency
from appliance.directory import Directory
from appliance.directory.scope import scope_of
from appliance.mail.mailstore import Mailstore
from appliance.mail.outbound import summarise_queue
from appliance.sync.link import LinkReading
from appliance.sync.uplink import read_uplink, state_word
from appliance.web.routes import JSON, ApiError, Request, Route, Schema

TAG: Final = "link"
PATH: Final = "/api/v1/link"

_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_LINK: Final = {
    "type": "object",
    "required": ["state", "since"],
    "properties": {
        "state": {"enum": ["up", "down", "unknown", "not_probed"]},
        "since": {**_TIME, "description": "When it entered this state (null: unknown)."},
        "target": {"type": "string", "description": "Administrators only: what is probed."},
        "error": {
            "type": ["string", "null"],
            "description": "Administrators only: why the last probe failed.",
        },
    },
}
RESPONSE_SCHEMA: Final[Schema] = {
    "type": "object",
    "required": ["gin", "international"],
    "properties": {
        "gin": _LINK,
        "international": _LINK,
        "queue": {
            "type": "object",
            "description": "Administrators only: recipients waiting to leave, by urgency.",
            "required": ["levels", "total", "oldest"],
            "properties": {
                "levels": {
                    "type": "array",
                    "description": "Most urgent first: ด่วนที่สุด, ด่วนมาก, ด่วน, ปกติ.",
                    "items": {
                        "type": "object",
                        "required": ["urgency", "name_th", "count"],
                        "properties": {
                            "urgency": {"type": "integer", "minimum": 0, "maximum": 3},
                            "name_th": {"type": "string"},
                            "count": {"type": "integer", "minimum": 0},
                        },
                    },
                },
                "total": {"type": "integer", "minimum": 0},
                "oldest": {**_TIME, "description": "When the oldest waiting mail was queued."},
                "backlog_seconds": {"type": ["number", "null"], "minimum": 0},
            },
        },
        "streams": {
            "type": "object",
            "description": "Administrators only: each sync stream's last round.",
            "additionalProperties": {
                "type": "object",
                "required": ["last_success", "last_error"],
                "properties": {
                    "last_success": _TIME,
                    "last_error": {"type": ["string", "null"]},
                },
            },
        },
    },
}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _link(name: str, reading: LinkReading | None, admin: bool) -> dict[str, Any]:
    state = state_word(name, reading)
    if reading is None:  # the monitor never ran on this box
        reading = LinkReading(error="link monitor has not run")
    body: dict[str, Any] = {"state": state, "since": _iso(reading.since)}
    if admin:
        body["target"] = reading.target
        body["error"] = reading.error
    return body


class LinkApi:
    """The handler of ``GET /api/v1/link``, given the parts it reads."""

    def __init__(self, data_dir: Path, directory: Directory, mailstore: Mailstore) -> None:
        self.data_dir = data_dir
        self.directory = directory
        self.mailstore = mailstore

    async def link(self, request: Request) -> JSON:
        if request.user is None:  # the server authenticates the route; belt and braces
            raise ApiError(401, "unauthenticated", "Sign in first", "กรุณาเข้าสู่ระบบก่อน")
        uplink = read_uplink(self.data_dir)
        scope = await scope_of(self.directory, request.user)
        admin = scope is not None
        body: dict[str, Any] = {
            "gin": _link("gin", uplink.gin_reading, admin),
            "international": _link("international", uplink.international_reading, admin),
        }
        if scope is None:
            return body
        summary = summarise_queue(await self.mailstore.outbound_groups(), scope.sees_sender)
        body["queue"] = {
            "levels": [
                {"urgency": lv.urgency, "name_th": Urgency(lv.urgency).thai, "count": lv.count}
                for lv in summary.levels
            ],
            "total": summary.total,
            "oldest": _iso(summary.oldest),
            "backlog_seconds": (
                max(0.0, time.time() - summary.oldest) if summary.oldest is not None else None
            ),
        }
        body["streams"] = {
            stream.name: {
                "last_success": _iso(stream.last_success),
                "last_error": stream.last_error,
            }
            for stream in uplink.streams
        }
        return body


def link_routes(data_dir: Path, directory: Directory, mailstore: Mailstore) -> list[Route]:
    """Return the link endpoint of the box in *data_dir*."""
    api = LinkApi(data_dir, directory, mailstore)
    return [
        Route(
            "GET",
            PATH,
            api.link,
            "Whether the centre (GIN) and the internet are reachable; queue and sync"
            " figures for administrators",
            TAG,
            response=RESPONSE_SCHEMA,
        )
    ]
