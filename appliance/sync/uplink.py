"""The uplink as every surface reads it: one read model of the link and the sync streams.

The link monitor writes ``DATA/run/link.json`` (link.py), every replicator writes its
last round to ``DATA/run/sync.json`` (status.py), and the sync certificate says when
it expires (renewal.py). `read_uplink` reads the three into one `LinkStatus`, and each
surface only renders it:

- the admin console's overview (appliance.admin) shows the headline and the streams;
- ``GET /api/v1/link`` (link_api.py) answers with the states, and for administrators
  the probe targets, errors and streams;
- `edgebox status` prints `link_report`'s lines.

Everything is read from files, so the answer is the same whichever process asks and
whether or not the box is running. A cut uplink is never "unhealthy": the box is built
to ride it out (DESIGN.md principle 2).

What this is not: the monitor (link.py), the replicators, or the queue's figures
(appliance.mail.outbound).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from appliance.compliance.classification import Urgency
from appliance.mail.outbound import summarise_queue
from appliance.sync.link import LinkReading, LinkState, read_link_state
from appliance.sync.renewal import certificate_expiry
from appliance.sync.status import read_sync_status

Language = Literal["th", "en"]

#: The sync streams every surface lists, in this order (appliance.sync.status); a
#: stream recorded under another name follows them, by name.
STREAMS: Final = ("outbound", "mailbox", "chat", "directory")

#: Each stream's name in Thai and English, for the console.
STREAM_NAMES: Final = {
    "outbound": ("อีเมลขาออก", "Outbound mail"),
    "mailbox": ("กล่องจดหมาย", "Mailboxes"),
    "chat": ("แชท", "Chat"),
    "directory": ("สมุดรายชื่อ", "Directory"),
    "certificate": ("ใบรับรอง", "Certificate"),
}


@dataclass(frozen=True)
class StreamStatus:
    """One sync stream's last round (appliance.sync.status)."""

    name: str
    th: str
    en: str
    #: Unix seconds of the last round that succeeded; None: never.
    last_success: float | None
    last_error: str | None


@dataclass(frozen=True)
class LinkStatus:
    """The uplink, read from the monitor's and the replicators' files (`read_uplink`)."""

    #: Whether the centre is reachable over GIN right now.
    connected: bool
    #: The headline for people, in Thai and English.
    th: str
    en: str
    #: "up", "down" or "unknown" (`LinkState`).
    gin: str = "unknown"
    #: "up", "down", "unknown" or "not_probed".
    international: str = "unknown"
    #: Unix seconds since gin is in its state; None while unknown.
    since: float | None = None
    streams: tuple[StreamStatus, ...] = ()
    #: What the monitor last wrote of each link; None: it never ran here.
    gin_reading: LinkReading | None = None
    international_reading: LinkReading | None = None
    #: When the box's sync certificate expires; None: not enrolled.
    certificate_expires: datetime | None = None


def state_word(name: str, reading: LinkReading | None) -> str:
    """A link's state as the surfaces name it: up, down, unknown or not_probed."""
    if reading is None:  # the monitor never ran on this box
        return "unknown"
    if name == "international" and reading.state is LinkState.UNKNOWN and not reading.target:
        return "not_probed"
    return reading.state.value


def read_uplink(data_dir: Path | None = None) -> LinkStatus:
    """Read the link, the sync streams and the certificate of the box in *data_dir*.

    Small files, read as a page renders. Without *data_dir*, or before the monitor
    ever ran, the box is not connected. A link that is down is a warning, never an
    error: the office keeps working and outbound mail waits in the queue.
    """
    if data_dir is None:
        return LinkStatus(
            connected=False,
            th="ยังไม่ได้เชื่อมต่อกับส่วนกลาง",
            en="Not connected to the centre (sync not set up)",
        )
    snapshot = read_link_state(data_dir)
    recorded = read_sync_status(data_dir)
    streams = tuple(
        StreamStatus(
            name,
            *STREAM_NAMES.get(name, (name, name)),
            last_success=_seconds(recorded.get(name, {}).get("last_success")),
            last_error=recorded.get(name, {}).get("last_error"),
        )
        for name in (*STREAMS, *sorted(set(recorded) - set(STREAMS)))
    )
    try:
        expires = certificate_expiry(data_dir / "keys")
    except OSError:  # an unreadable certificate file must not take a page down
        expires = None
    if snapshot is None:
        return LinkStatus(
            connected=False,
            th="ยังไม่ได้เชื่อมต่อกับส่วนกลาง (ตัวตรวจการเชื่อมต่อยังไม่เคยทำงาน)",
            en="Not connected to the centre (the link monitor has not run yet)",
            streams=streams,
            certificate_expires=expires,
        )
    gin = snapshot.gin
    if gin.state is LinkState.UP:
        th, en = "เชื่อมต่อกับส่วนกลางผ่าน GIN ได้ตามปกติ", "The centre is reachable over GIN"
    elif gin.state is LinkState.DOWN:
        th = (
            "ติดต่อส่วนกลางผ่าน GIN ไม่ได้ งานภายในสำนักงานยังทำได้ตามปกติ"
            " อีเมลถึงหน่วยงานอื่นรออยู่ในคิวและจะส่งเมื่อกลับมาเชื่อมต่อได้"
        )
        en = (
            "The centre cannot be reached over GIN. Work in the office goes on as usual;"
            " mail to other agencies waits in the queue and leaves when the link is back"
        )
    elif not gin.target:
        th, en = "ยังไม่ได้ลงทะเบียนกับส่วนกลาง", "Not enrolled with the centre yet"
    else:
        th, en = "กำลังตรวจการเชื่อมต่อกับส่วนกลาง", "Checking the link to the centre"
    return LinkStatus(
        connected=gin.state is LinkState.UP,
        th=th,
        en=en,
        gin=state_word("gin", gin),
        international=state_word("international", snapshot.international),
        since=gin.since,
        streams=streams,
        gin_reading=gin,
        international_reading=snapshot.international,
        certificate_expires=expires,
    )


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- `edgebox status` ----------------------------------------------------------------------

_URGENCY_EN: Final = {
    Urgency.MOST_URGENT: "most urgent",
    Urgency.VERY_URGENT: "very urgent",
    Urgency.URGENT: "urgent",
    Urgency.NORMAL: "normal",
}


def age_text(seconds: float, lang: Language) -> str:
    """A duration in its two largest units: ``3 d 5 h``, ``3 วัน 5 ชั่วโมง``."""
    minutes = max(0, int(seconds)) // 60
    if minutes < 1:
        return "ไม่ถึง 1 นาที" if lang == "th" else "under a minute"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    names = (("วัน", "d"), ("ชั่วโมง", "h"), ("นาที", "min"))
    parts = [
        f"{value} {th if lang == 'th' else en}"
        for value, (th, en) in zip((days, hours, minutes), names, strict=True)
        if value
    ]
    return " ".join(parts[:2])


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _link_line(name: str, reading: LinkReading, now: float, lang: Language) -> str:
    if reading.state is LinkState.UNKNOWN:
        if state_word(name, reading) == "not_probed":
            return f"{name}: not probed" + (" (ไม่ได้ตรวจ)" if lang == "th" else "")
        why = f" ({reading.error})" if reading.error else ""
        return f"{name}: unknown{why}"
    line = f"{name}: {reading.state.value}"
    if reading.since is not None:
        ago = age_text(now - reading.since, lang)
        if lang == "th":
            line += f" (ตั้งแต่ {_when(reading.since)}, {ago}ที่แล้ว)"
        else:
            line += f" (since {_when(reading.since)}, {ago} ago)"
    if reading.state is LinkState.DOWN and reading.error:
        line += f": {reading.error}"
    return line


def link_report(
    data_dir: Path,
    queue_groups: Iterable[tuple[int, str, int, int]],
    now: float,
    lang: Language = "en",
) -> list[str]:
    """The uplink lines of `edgebox status`, from files only (the box may be stopped).

    *queue_groups* are `Mailstore.outbound_groups` rows ``(urgency, sender, count,
    oldest created_at)``. Returns, in order: gin, international, the outbound queue by
    urgency (most urgent first), the backlog's age, and the last successful sync of
    each stream. The words ``gin: up|down|unknown`` and ``international:
    up|down|not probed`` stay English in both languages, for scripts.
    """
    uplink = read_uplink(data_dir)
    if uplink.gin_reading is None or uplink.international_reading is None:
        missing = "monitor has not run" if lang == "en" else "ยังไม่เคยตรวจ"
        lines = [f"gin: unknown ({missing})", f"international: unknown ({missing})"]
    else:
        lines = [
            _link_line("gin", uplink.gin_reading, now, lang),
            _link_line("international", uplink.international_reading, now, lang),
        ]

    queue = summarise_queue(queue_groups)
    levels = [(Urgency(level.urgency), level.count) for level in queue.levels]
    if lang == "th":
        parts = " · ".join(f"{urgency.thai} {count}" for urgency, count in levels)
        lines.append(f"คิวขาออก: {parts} (รวม {queue.total})")
    else:
        parts = " · ".join(f"{_URGENCY_EN[urgency]} {count}" for urgency, count in levels)
        lines.append(f"outbound queue: {parts} (total {queue.total})")
    oldest = queue.oldest
    if oldest is None:
        lines.append("ค้างนานสุด: ไม่มี" if lang == "th" else "backlog age: none")
    elif lang == "th":
        lines.append(f"ค้างนานสุด: {age_text(now - oldest, lang)} (เข้าคิว {_when(oldest)})")
    else:
        lines.append(f"backlog age: {age_text(now - oldest, lang)} (queued {_when(oldest)})")

    for stream in uplink.streams:
        label = stream.th if lang == "th" else stream.name
        last = stream.last_success
        if last is not None:
            when = (
                f"{age_text(now - last, lang)}ที่แล้ว"
                if lang == "th"
                else f"{age_text(now - last, lang)} ago"
            )
        else:
            when = "ยังไม่เคย" if lang == "th" else "never"
        line = f"ซิงก์ล่าสุด {label}: {when}" if lang == "th" else f"last sync {label}: {when}"
        if stream.last_error:
            error = stream.last_error
            line += f" (ผิดพลาดล่าสุด: {error})" if lang == "th" else f" (last error: {error})"
        lines.append(line)

    expiry = uplink.certificate_expires
    if expiry is not None:
        left = age_text(expiry.timestamp() - now, lang) if expiry.timestamp() > now else None
        day = expiry.date().isoformat()
        if lang == "th":
            lines.append(f"ใบรับรองซิงก์: ใช้ได้ถึง {day} (เหลือ {left})" if left
                         else f"ใบรับรองซิงก์: หมดอายุแล้วเมื่อ {day}")  # fmt: skip
        else:
            lines.append(f"sync certificate: valid until {day} ({left} left)" if left
                         else f"sync certificate: EXPIRED on {day}")  # fmt: skip
    return lines
