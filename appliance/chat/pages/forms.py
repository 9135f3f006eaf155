"""The chat pages' form fields: addresses, numbers, a location, a local time, room options.

A field that does not parse is a `ChatError` (422) with Thai and English words, shown
on the page the form came from; the domain checks every value again.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from appliance.chat.errors import ChatError
from appliance.chat.pages.words import Preset
from appliance.web.routes import Form


def parse_addresses(text: str) -> list[str]:
    """Addresses typed one a line or separated by commas, spaces or semicolons."""
    return list(dict.fromkeys(a for a in re.split(r"[\s,;]+", text.strip()) if a))


def number_field(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise ChatError(422, f"invalid_{name}", f"{name} must be a number from {low:g} to {high:g}",
                        f"{name} ต้องเป็นตัวเลขระหว่าง {low:g} ถึง {high:g}")  # fmt: skip
    return value


def location_field(form: Form) -> dict[str, Any] | None:
    """The ``lat``/``lon`` fields of a form as a location, or None if both are empty."""
    lat, lon = form.get("lat").strip(), form.get("lon").strip()
    if not lat and not lon:
        return None
    place: dict[str, Any] = {
        "lat": number_field(lat, "lat", -90.0, 90.0),
        "lon": number_field(lon, "lon", -180.0, 180.0),
    }
    if form.get("label").strip():
        place["label"] = form.get("label").strip()
    return place


_LOCAL_TIME: Final = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2})(:[0-9]{2})?")


def bangkok_time(value: str, name: str) -> str:
    """A ``datetime-local`` field (no zone) as an RFC 3339 time in Thailand (UTC+7)."""
    match = _LOCAL_TIME.fullmatch(value.strip())
    if match is None:
        raise ChatError(422, f"invalid_{name}", "Give the date and time", "กรุณาระบุวันและเวลา")
    try:
        datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}")
    except ValueError:
        raise ChatError(422, f"invalid_{name}", "No such date or time",
                        "วันหรือเวลาไม่ถูกต้อง") from None  # fmt: skip
    return f"{match.group(1)}T{match.group(2)}{match.group(3) or ':00'}+07:00"


def room_options(form: Form, preset: Preset) -> dict[str, Any]:
    """The room options a new-room form asks for (the domain checks them again)."""
    options: dict[str, Any] = {}
    if preset.option == "no_private_chat" or form.get("no_private_chat") == "on":
        options["no_private_chat"] = True
    if preset.option == "auto_location" or form.get("auto_location") == "on":
        options["auto_location"] = True
    if preset.option == "working_hours" or form.get("working_hours") == "on":
        days = []
        for day in form.getlist("days"):
            if not day.isdigit() or not 0 <= int(day) <= 6:
                raise ChatError(422, "invalid_working_hours", "Choose days from the list",
                                "กรุณาเลือกวันจากรายการ")  # fmt: skip
            days.append(int(day))
        if not days:
            raise ChatError(422, "invalid_working_hours", "Choose at least one working day",
                            "กรุณาเลือกวันทำการอย่างน้อยหนึ่งวัน")  # fmt: skip
        options["working_hours"] = {
            "days": sorted(set(days)),
            "start": form.get("start").strip(),
            "end": form.get("end").strip(),
        }
    if preset.kind == "broadcast":
        options["posters"] = parse_addresses(form.get("posters"))
        if form.get("audience") == "units":
            units = list(form.getlist("units"))
            if not units:
                raise ChatError(422, "unknown_unit", "Choose at least one unit",
                                "กรุณาเลือกหน่วยงานย่อยอย่างน้อยหนึ่งหน่วย")  # fmt: skip
            options["audience"] = {"units": units}
    if preset.kind == "secret":
        ttl = form.get("secret_ttl", "")
        if ttl:
            if not ttl.isdigit():
                raise ChatError(422, "invalid_options", "Choose how long messages live",
                                "กรุณาเลือกอายุของข้อความ")  # fmt: skip
            options["secret_ttl"] = int(ttl)
    return options
