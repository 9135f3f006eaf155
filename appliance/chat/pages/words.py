"""What the chat pages call things, in Thai and English: kinds of room, presets, rules.

The new-room page offers these, the room list and a room show them; the words of a
room's rules are built here from its options (`room_rules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from appliance.chat.models import Room
from appliance.web.routes import Language


@dataclass(frozen=True)
class Words:
    """One text in both languages."""

    th: str
    en: str

    def __call__(self, lang: Language) -> str:
        return self.th if lang == "th" else self.en


@dataclass(frozen=True)
class KindInfo:
    """A kind of room as a person chooses it: its name and its rule in one line.

    The page draws its icon from ``value`` (chat.css, ``[data-icon]``): drawn icons,
    because a box's kiosk browser may have no emoji font.
    """

    value: str
    name: Words
    rule: Words


#: The four kinds of room the domain knows (`appliance.chat.models.ROOM_KINDS`).
ROOM_KINDS: Final = {
    k.value: k
    for k in (
        KindInfo(
            "direct",
            Words("สนทนาส่วนตัว", "Direct chat"),
            Words(
                "คุยกันสองคน หนึ่งห้องต่อหนึ่งคู่ ในโหมดปกติท่านเริ่มสนทนากับผู้ที่มีตำแหน่งสูงกว่าไม่ได้"
                " แต่ผู้บังคับบัญชาเริ่มสนทนากับท่านได้",
                "Two people, one room per pair. In normal mode you cannot start one with"
                " someone of higher rank; they may start one with you.",
            ),
        ),
        KindInfo(
            "group",
            Words("กลุ่ม", "Group"),
            Words(
                "เจ้าของห้องเพิ่มหรือนำสมาชิกออกได้ทันที สมาชิกทุกคนส่งข้อความได้ แต่ออกจากห้องเองไม่ได้",
                "The owner adds and removes members at once; every member posts;"
                " members cannot leave on their own.",
            ),
        ),
        KindInfo(
            "broadcast",
            Words("ห้องประกาศ", "Broadcast"),
            Words(
                "ผู้รับคือบุคลากรทั้งหน่วยงานหรือหน่วยงานย่อยที่เลือก"
                " เฉพาะเจ้าของห้องและผู้ที่ได้รับมอบหมายเท่านั้นที่ส่งข้อความได้",
                "Everyone in your agency, or in the units you choose, receives it; only the"
                " owner and the posters they name can post.",
            ),
        ),
        KindInfo(
            "secret",
            Words("ห้องลับ", "Secret chat"),
            Words(
                "ข้อความจะหายไปเมื่อผู้รับอ่านแล้ว และถูกลบออกจากเครื่องเมื่อทุกคนอ่านครบ หรือเมื่อครบเวลาที่กำหนด",
                "A message disappears for each reader once read, and is deleted from the"
                " box when everyone has read it or its time runs out.",
            ),
        ),
    )
}


@dataclass(frozen=True)
class Preset:
    """A choice on the new-room page: a kind, perhaps with one rule switched on."""

    value: str
    kind: str
    option: str | None
    info: KindInfo


#: What the new-room page offers: every kind, and a group with each special rule.
PRESETS: Final = (
    *(Preset(k.value, k.value, None, k) for k in ROOM_KINDS.values()),
    Preset(
        "no_private_chat",
        "group",
        "no_private_chat",
        KindInfo(
            "no_private_chat",
            Words("กลุ่มห้ามสนทนาส่วนตัว", "Group without private chats"),
            Words(
                "สมาชิกของกลุ่มเริ่มสนทนาส่วนตัวระหว่างกันไม่ได้ ยกเว้นเจ้าของห้อง",
                "Members cannot start private chats with each other; the owner still can.",
            ),
        ),
    ),
    Preset(
        "auto_location",
        "group",
        "auto_location",
        KindInfo(
            "auto_location",
            Words("กลุ่มระบุตำแหน่ง", "Location group"),
            Words(
                "ทุกข้อความต้องแนบตำแหน่งที่ตั้งของผู้ส่ง",
                "Every message must carry the sender's location.",
            ),
        ),
    ),
    Preset(
        "working_hours",
        "group",
        "working_hours",
        KindInfo(
            "working_hours",
            Words("กลุ่มเฉพาะเวลาทำการ", "Working-hours group"),
            Words(
                "นอกวันและเวลาที่กำหนด ห้องจะถูกซ่อนจากรายการและส่งข้อความไม่ได้ (เวลาประเทศไทย)",
                "Outside the chosen days and hours the room is hidden and nobody can post"
                " (Thailand time).",
            ),
        ),
    ),
)
#: The presets by their form value.
PRESET_BY_VALUE: Final = {p.value: p for p in PRESETS}

#: Public mode, as the new-room page explains it.
PUBLIC_MODE: Final = Words(
    "โหมดสาธารณะ: ทุกคนเริ่มสนทนาส่วนตัวกับใครก็ได้ โดยดูจากการตั้งค่าของหน่วยงานของผู้ที่ถูกติดต่อ",
    "Public mode: anyone may start a private chat with anyone; the setting of the"
    " contacted person's agency is the one that counts.",
)
NORMAL_MODE: Final = Words(
    "โหมดปกติ: เริ่มสนทนาส่วนตัวกับผู้ที่มีตำแหน่งสูงกว่าไม่ได้ ผู้บังคับบัญชาเริ่มสนทนากับท่านได้",
    "Normal mode: nobody starts a private chat with someone of higher rank; the senior"
    " person may start one.",
)

#: Monday = 0, as `appliance.chat.hours` counts.
DAYS: Final = (
    Words("จันทร์", "Mon"),
    Words("อังคาร", "Tue"),
    Words("พุธ", "Wed"),
    Words("พฤหัสบดี", "Thu"),
    Words("ศุกร์", "Fri"),
    Words("เสาร์", "Sat"),
    Words("อาทิตย์", "Sun"),
)

#: Secret messages' time to live, as offered (seconds).
SECRET_TTLS: Final = (
    (300, Words("5 นาที", "5 minutes")),
    (3600, Words("1 ชั่วโมง", "1 hour")),
    (24 * 3600, Words("1 วัน", "1 day")),
    (7 * 24 * 3600, Words("7 วัน", "7 days")),
)


def room_rules(room: Room, lang: Language) -> list[str]:
    """The rules of *room* in words: its kind's rule, then each option in force."""
    info = ROOM_KINDS[room.kind]
    rules = [info.rule(lang)]
    options = room.options
    if options.no_private_chat:
        rules.append(PRESET_BY_VALUE["no_private_chat"].info.rule(lang))
    if options.auto_location:
        rules.append(PRESET_BY_VALUE["auto_location"].info.rule(lang))
    if options.working_hours is not None:
        en, th = options.working_hours.describe()
        rules.append(Words(f"เปิดเฉพาะ {th} นอกเวลานี้ห้องถูกซ่อนและส่งข้อความไม่ได้",
                           f"Open only {en}; outside these hours the room is hidden"
                           " and nobody can post.")(lang))  # fmt: skip
    if room.kind == "secret":
        span = _span(options.secret_ttl)
        rules.append(
            Words(
                f"ข้อความที่ยังอ่านไม่ครบทุกคนจะถูกลบเมื่อครบ {span.th}",
                f"A message not yet read by everyone is deleted after {span.en}.",
            )(lang)
        )
    if room.kind != "direct":
        rules.append(Words(
            "เฉพาะเจ้าของห้องเท่านั้นที่เพิ่มหรือนำสมาชิกออก เปลี่ยนชื่อห้อง โอนความเป็นเจ้าของ"
            " หรือลบห้องได้ สมาชิกออกจากห้องเองไม่ได้ กรุณาขอให้เจ้าของห้องนำท่านออก",
            "Only the owner adds or removes members, renames the room, transfers ownership"
            " or deletes the room. Members cannot leave: ask the owner to remove you.",
        )(lang))  # fmt: skip
    return rules


def _span(seconds: int) -> Words:
    """A duration in words: days, hours and minutes, leaving out the zeros."""
    days, rest = divmod(seconds, 24 * 3600)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    th = [f"{n} {unit}" for n, unit in ((days, "วัน"), (hours, "ชั่วโมง"), (minutes, "นาที")) if n]
    en = [f"{n} {unit}{'s' if n > 1 else ''}"
          for n, unit in ((days, "day"), (hours, "hour"), (minutes, "minute")) if n]  # fmt: skip
    return Words(" ".join(th) or "0 นาที", " ".join(en) or "0 minutes")
