"""Thai and English for the web pages: words, dates, sizes, service names.

Templates carry both languages side by side, ``{{ tr("กล่องจดหมาย", "Inbox") }}``, so a
page is read and reviewed in one place and no catalogue can fall out of step with it.
Thai comes first because it is the default (REQUIREMENTS.md §2). The one catalogue is
for words that come from code rather than a template: the names of the box's services
(`SERVICE_LABELS`), which the admin overview shows instead of their internal ids.

Sizes: one unit system for every page and script (`format_size`, twinned by
``static/common.js``).

Dates: when Thai is chosen, years are in the Buddhist Era (พ.ศ. = C.E. + 543), the
convention of every Thai government document, with Thai month abbreviations. Times are
shown in Thailand's time (UTC+7 all year; Thailand has no daylight saving), because the
box serves one Thai office whatever the browser's clock says.

What this is not: the API's error messages (they carry both languages in the body).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal

Language = Literal["th", "en"]

THAILAND: Final = timezone(timedelta(hours=7), "ICT")

#: Abbreviations as in official Thai correspondence (ม.ค. ... ธ.ค.).
THAI_MONTHS: Final = (
    "ม.ค.", "ก.พ.", "มี.ค.", "เม.ย.", "พ.ค.", "มิ.ย.",
    "ก.ค.", "ส.ค.", "ก.ย.", "ต.ค.", "พ.ย.", "ธ.ค.",
)  # fmt: skip
ENGLISH_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
#: The Buddhist Era counts from 543 BCE.
BE_OFFSET: Final = 543


def translator(lang: Language) -> Callable[[str, str], str]:
    """Return ``tr(thai, english)`` answering in *lang*."""
    if lang == "en":
        return lambda thai, english: english
    return lambda thai, english: thai


def local_time(moment: datetime | int | float) -> datetime:
    """*moment* (aware datetime or Unix seconds) in Thailand's time."""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(THAILAND)


def format_date(moment: datetime | int | float, lang: Language, *, time: bool = True) -> str:
    """E.g. ``22 พ.ย. 2569 14:05`` in Thai, ``22 Nov 2026 14:05`` in English."""
    local = local_time(moment)
    if lang == "th":
        text = f"{local.day} {THAI_MONTHS[local.month - 1]} {local.year + BE_OFFSET}"
    else:
        text = f"{local.day} {ENGLISH_MONTHS[local.month - 1]} {local.year}"
    return f"{text} {local:%H:%M}" if time else text


def format_short(
    moment: datetime | int | float, lang: Language, now: datetime | None = None
) -> str:
    """For lists: the time if it is today, else the date without the time."""
    local = local_time(moment)
    today = local_time(now or datetime.now(UTC)).date()
    if local.date() == today:
        return f"{local:%H:%M}"
    return format_date(local, lang, time=False)


#: The units of every size the pages show, the same in Thai and English (the symbols
#: Thai offices use for files, as in "ไฟล์ไม่เกิน 25 MB"), 1024-based as mail clients
#: count. No byte counts: "419 ไบต์" beside "1.3 KB" read as two systems.
SIZE_UNITS: Final = ("KB", "MB", "GB", "TB")


def format_size(size: int, lang: Language) -> str:
    """Bytes for people: ``0.4 KB``, ``12 KB``, ``3.4 MB``; the same in both languages.

    One decimal below ten, whole numbers above; halves round up. Integer arithmetic
    only, so that ``static/size.js`` (the scripts' twin of this function) gives the
    same text for every size: a float's ``.1f`` and JavaScript's ``toFixed(1)`` round
    a tie such as 0.25 differently.
    """
    del lang  # the same symbols in Thai and English (SIZE_UNITS)
    size = max(0, int(size))
    for power, unit in enumerate(SIZE_UNITS, start=1):
        divisor = 1024**power
        tenths = (size * 10 + divisor // 2) // divisor
        if tenths < 100:
            # A file that is not empty never shows as nothing.
            tenths = max(tenths, 1) if size else 0
            return f"{tenths // 10}.{tenths % 10} {unit}" if size else f"0 {unit}"
        whole = (size + divisor // 2) // divisor
        if whole < 1024 or unit == SIZE_UNITS[-1]:
            return f"{whole} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


#: What the admin overview calls each service and health check (appliance.health)
#: instead of its internal id: words an official can read. A check missing here
#: shows its id; tests/appliance/web/test_i18n.py keeps the table complete.
SERVICE_LABELS: Final[dict[str, tuple[str, str]]] = {
    "smtp-mx": ("รับอีเมลจากภายนอก (SMTP)", "Incoming mail (SMTP)"),
    "smtp-submission": ("ส่งอีเมลจากโปรแกรมอีเมล (พอร์ต 587)", "Sending from mail apps (port 587)"),
    "smtp-submissions": ("ส่งอีเมลจากโปรแกรมอีเมลแบบเข้ารหัส (พอร์ต 465)",
                         "Sending from mail apps, encrypted (port 465)"),
    "imap": ("อ่านอีเมลด้วยโปรแกรมอีเมล (IMAP)", "Reading mail in mail apps (IMAP)"),
    "imaps": ("อ่านอีเมลด้วยโปรแกรมอีเมลแบบเข้ารหัส (IMAPS)",
              "Reading mail in mail apps, encrypted (IMAPS)"),
    "https": ("เว็บเมล แชต และหน้าผู้ดูแลระบบ", "Webmail, chat and the admin pages"),
    "hub-sync": ("บริการซิงก์สำหรับเครื่องของหน่วยงานต่าง ๆ", "Sync service for the agencies' boxes"),
    "search-index": ("ระบบค้นหาจดหมาย", "Mail search"),
    "traffic-log-retention": ("การเก็บบันทึกการใช้งาน 90 วัน", "Keeping the 90-day traffic log"),
    "chat-secret-sweeper": ("การลบข้อความลับที่หมดเวลา", "Removing expired secret messages"),
    "session-expiry": ("การออกจากระบบเมื่อหมดเวลา", "Ending expired sign-ins"),
    "link-monitor": ("การตรวจการเชื่อมต่อกับส่วนกลาง", "Watching the link to the centre"),
    "outbound-relay": ("การส่งอีเมลถึงหน่วยงานอื่น", "Sending mail to other agencies"),
    "mailbox-sync": ("การซิงก์กล่องจดหมายกับส่วนกลาง", "Mailbox sync with the centre"),
    "directory-sync": ("การซิงก์สมุดรายชื่อ", "Directory sync"),
    "chat-sync": ("การซิงก์แชต", "Chat sync"),
    "cert-renewal": ("การต่ออายุใบรับรองของเครื่อง", "Renewing the box's certificate"),
    "tls-renewal": ("การต่ออายุใบรับรอง TLS ของเว็บและอีเมล",
                    "Renewing the web and mail TLS certificate"),
    "certificate": ("ใบรับรองความปลอดภัยของเครื่อง", "The box's security certificate"),
    "ca": ("ผู้ออกใบรับรองของเครื่อง (CA)", "The box's certificate authority (CA)"),
    "sync-certificate": ("ใบรับรองสำหรับซิงก์กับส่วนกลาง", "The certificate for sync with the centre"),
    "backup": ("การสำรองข้อมูล", "Backups"),
    "backup-offsite": ("การสำรองข้อมูลไปยังศูนย์ (hub)", "Offsite backup to the hub"),
    "protection": ("การตรวจไวรัสและสแปม", "Virus and spam scanning"),
    "signatures": ("ฐานข้อมูลไวรัสและกฎสแปม", "Virus signatures and spam rules"),
    "update": ("การปรับปรุงซอฟต์แวร์", "Software updates"),
    "update-report": ("การแจ้งผลการปรับปรุงซอฟต์แวร์ไปยังศูนย์", "Reporting updates to the hub"),
    "certificates": ("ใบรับรองความปลอดภัย", "Security certificates"),
    "discovery": ("การประกาศเครื่องบนเครือข่ายภายใน (mDNS)", "Announcing the box on the LAN (mDNS)"),
    "panel": ("หน้าจอและไฟสถานะหน้าเครื่อง", "The front panel"),
    "disk": ("พื้นที่จัดเก็บข้อมูล", "Storage space"),
    "services": ("บริการของเครื่อง", "The box's services"),
    "memory": ("หน่วยความจำ", "Memory"),
    "temperature": ("อุณหภูมิเครื่อง", "Temperature"),
    "clock": ("นาฬิกาของเครื่อง", "The box's clock"),
    "queue": ("อีเมลที่รอส่งออก", "Mail waiting to leave"),
    "link": ("การเชื่อมต่อกับส่วนกลาง (GIN)", "Link to the centre (GIN)"),
    "health": ("การตรวจสุขภาพเครื่อง", "Health checks"),
    "metrics": ("ข้อมูลสำหรับระบบเฝ้าดู (Prometheus)", "Figures for monitoring (Prometheus)"),
}  # fmt: skip


def service_label(check: str, lang: Language) -> str:
    """The words for service or health check *check*; its id if it has none yet."""
    thai, english = SERVICE_LABELS.get(check, (check, check))
    return english if lang == "en" else thai
