"""The web setup wizard's answers: the steps, their checks, and the saved draft.

The wizard (wizard_pages.py serves it) asks in this order::

    claim (the setup code) -> language -> agency -> admin -> network -> time
        -> uplink -> restore (optional) -> review -> apply

Every step's answers are checked here (`check_step`, pure: form fields in, answers or
`StepError` out) and kept in a `Draft` saved to ``DATA/device/wizard.json`` (0600, the
device folder is 0700) with an atomic replace after every step, so a reload, a second
browser or a restart of the box continues at the same step. No secret is kept in clear:
the first admin's password only as its scrypt hash (the directory's format,
`passwords.hash_password`), and a restore's recovery key not at all, only its public
fingerprint (`key_id`); the technician types the key again on the review page, at
apply. Apply and a factory reset overwrite the draft before unlinking it (`shred`).

A browser that typed the right setup code holds a *claim*: a random token in the
session cookie, of which the draft keeps only the SHA-256. A claim is good until the
box is set up.

What this is not: the HTTP pages (wizard_pages.py), the files written for the OS
(system_files.py) or provisioning itself (provision.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.backup.crypto import BadRecoveryKey, key_id, words_to_key
from appliance.directory import DirectoryError, normalise_address, normalise_domain
from appliance.provisioning.device import DEVICE_DIR, WIZARD_FILE
from appliance.provisioning.provision import MIN_ADMIN_PASSWORD
from appliance.security.keys import shred
from appliance.security.passwords import hash_password
from appliance.store.files import write_atomically
from appliance.sync.hub.ca import valid_box_id

#: The steps in the order the wizard walks them (claim comes before, apply after).
STEPS: Final = ("language", "agency", "admin", "network", "time", "uplink", "restore", "review")

#: Claims kept: a technician's phone, laptop and a colleague's; older ones lapse.
MAX_CLAIMS: Final = 8

DEFAULT_TIME_ZONE: Final = "Asia/Bangkok"
#: NTP servers of Thailand's national time service (NIMT) and the public pool.
DEFAULT_NTP: Final = ("time1.nimt.or.th", "time2.nimt.or.th", "th.pool.ntp.org")

#: RFC 1123 §2.1 host name label: letters, digits, inner hyphens, 1-63 characters.
_LABEL: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: A network interface name as the kernel allows it (IFNAMSIZ 16, no slash or space).
_IFNAME: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class StepError(ValueError):
    """A step's answers are refused; the message names the field, in Thai and English."""

    def __init__(self, field_name: str, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        self.field = field_name
        self.message_en = message_en
        self.message_th = message_th


@dataclass
class Draft:
    """The wizard's answers so far, saved after every step."""

    #: The furthest step reached (an index into `STEPS`); the wizard resumes there.
    reached: int = 0
    lang: str = "th"
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: SHA-256 (hex) of the claims' tokens, newest last.
    claims: list[str] = field(default_factory=list)

    def step_answers(self, step: str) -> dict[str, Any]:
        return self.answers.get(step, {})

    def has_claim(self, token: str | None) -> bool:
        return token is not None and claim_digest(token) in self.claims

    def add_claim(self, token: str) -> None:
        self.claims = [*self.claims, claim_digest(token)][-MAX_CLAIMS:]

    def save_step(self, step: str, answers: dict[str, Any]) -> None:
        """Keep *step*'s answers and move the resume point past it."""
        self.answers[step] = answers
        if step == "language":
            self.lang = answers["lang"]
        self.reached = max(self.reached, STEPS.index(step) + 1)

    @property
    def current(self) -> str:
        """The step the wizard resumes at."""
        return STEPS[min(self.reached, len(STEPS) - 1)]

    def open_to(self, step: str) -> bool:
        """Whether *step* may be shown: any step already reached, and the next one."""
        return STEPS.index(step) <= self.reached

    @property
    def restoring(self) -> bool:
        """Whether apply restores a backup instead of making a new agency."""
        return bool(self.step_answers("restore").get("source"))


def claim_digest(token: str) -> str:
    return hashlib.sha256(b"edgebox setup claim\0" + token.encode()).hexdigest()


def draft_path(data_dir: Path) -> Path:
    return data_dir / DEVICE_DIR / WIZARD_FILE


def load_draft(data_dir: Path) -> Draft:
    """Return the saved draft, or a new one (none yet, or unreadable)."""
    try:
        raw = json.loads(draft_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Draft()
    if not isinstance(raw, dict):
        return Draft()
    try:
        draft = Draft(
            reached=min(max(int(raw.get("reached", 0)), 0), len(STEPS)),
            lang="en" if raw.get("lang") == "en" else "th",
            answers={str(k): dict(v) for k, v in dict(raw.get("answers", {})).items()},
            claims=[str(c) for c in raw.get("claims", [])],
        )
    except (TypeError, ValueError):
        return Draft()  # written by us atomically, so only a hand edit gets here
    # A draft saved by an older release held the password and the key words in clear:
    # those steps are asked again (and the next save rewrites the file without them).
    for step, secret in (("admin", "password"), ("restore", "key")):
        if secret in draft.answers.get(step, {}):
            del draft.answers[step]
    return draft


def save_draft(data_dir: Path, draft: Draft) -> None:
    """Write *draft* durably: temp file, fsync, rename, fsync the folder."""
    body = {
        "reached": draft.reached,
        "lang": draft.lang,
        "answers": draft.answers,
        "claims": draft.claims,
    }
    data = json.dumps(body, ensure_ascii=False, indent=1).encode("utf-8")
    write_atomically(draft_path(data_dir), data, mode=0o600)


def forget_draft(data_dir: Path) -> None:
    """Overwrite and remove the draft (after apply, at a factory reset).

    It holds no secret in clear, but a password hash and the agency's answers are
    nobody's business once the box is set up; `shred` zeroes the bytes before the
    unlink (best effort on flash, see `shred`) and syncs the folder.
    """
    with contextlib.suppress(FileNotFoundError):
        shred(draft_path(data_dir))


# --- the steps' checks -------------------------------------------------------------------


def check_step(step: str, fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    """Return *step*'s answers from the form *fields*; raise `StepError` if refused."""
    checks = {
        "language": _language,
        "agency": _agency,
        "admin": _admin,
        "network": _network,
        "time": _time,
        "uplink": _uplink,
        "restore": _restore,
    }
    if step not in checks:
        return {}
    return checks[step](fields, draft)


def _text(fields: dict[str, str], name: str, limit: int = 200) -> str:
    value = fields.get(name, "").strip()
    if len(value) > limit:
        raise StepError(name, f"at most {limit} characters", f"ไม่เกิน {limit} ตัวอักษร")
    return value


def _required(fields: dict[str, str], name: str, en: str, th: str, limit: int = 200) -> str:
    value = _text(fields, name, limit)
    if not value:
        raise StepError(name, f"{en} is required", f"กรุณากรอก{th}")
    return value


def _language(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    lang = fields.get("lang", "")
    if lang not in ("th", "en"):
        raise StepError("lang", "choose Thai or English", "กรุณาเลือกภาษาไทยหรือภาษาอังกฤษ")
    return {"lang": lang}


def parse_units(text: str) -> list[dict[str, str | None]]:
    """Org units, one a line: ``Thai name`` or ``Thai name | English name``."""
    units: list[dict[str, str | None]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name_th, _, name_en = (part.strip() for part in line.partition("|"))
        if not name_th or len(name_th) > 200 or len(name_en) > 200:
            raise StepError("units", f"line {number}: a Thai name (and at most 200 characters)",
                            f"บรรทัด {number}: ต้องมีชื่อภาษาไทย (ไม่เกิน 200 ตัวอักษร)")  # fmt: skip
        if name_th in seen:
            raise StepError("units", f"line {number}: {name_th} twice",
                            f"บรรทัด {number}: {name_th} ซ้ำ")  # fmt: skip
        seen.add(name_th)
        units.append({"name_th": name_th, "name_en": name_en or None})
    if len(units) > 200:
        raise StepError("units", "at most 200 units here", "ไม่เกิน 200 หน่วยงานย่อย")
    return units


def _agency(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    domain_text = _required(fields, "domain", "the agency's mail domain", "โดเมนอีเมลของหน่วยงาน",
                            253)  # fmt: skip
    try:
        domain = normalise_domain(domain_text)
    except DirectoryError as exc:
        raise StepError("domain", str(exc), f"โดเมนไม่ถูกต้อง: {exc}") from None
    if "." not in domain:
        raise StepError("domain", "a mail domain has a dot (agency.go.th)",
                        "โดเมนต้องมีจุด เช่น หน่วยงาน.go.th")  # fmt: skip
    return {
        "domain": domain,
        "name_th": _required(fields, "name_th", "the agency's Thai name", "ชื่อหน่วยงานภาษาไทย"),
        "name_en": _text(fields, "name_en") or None,
        "units": parse_units(fields.get("units", "")[:20000]),
    }


def _admin(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    domain = draft.step_answers("agency").get("domain", "")
    local = _required(fields, "local", "the admin's user name", "ชื่อผู้ใช้ของผู้ดูแลระบบ", 64)
    try:
        address = normalise_address(f"{local}@{domain}")
    except DirectoryError as exc:
        raise StepError("local", str(exc), f"ชื่อผู้ใช้ไม่ถูกต้อง: {exc}") from None
    password = fields.get("password", "")
    if len(password) < MIN_ADMIN_PASSWORD:
        raise StepError("password", f"at least {MIN_ADMIN_PASSWORD} characters",
                        f"รหัสผ่านต้องยาวอย่างน้อย {MIN_ADMIN_PASSWORD} ตัวอักษร")  # fmt: skip
    if len(password) > 1024:
        raise StepError("password", "at most 1024 characters", "ไม่เกิน 1024 ตัวอักษร")
    if fields.get("password2", "") != password:
        raise StepError("password2", "the two passwords differ", "รหัสผ่านสองช่องไม่ตรงกัน")
    name_th = _required(fields, "name_th", "the admin's Thai name", "ชื่อภาษาไทยของผู้ดูแลระบบ")
    name_en = _text(fields, "name_en") or None
    # Only the hash is kept (the draft is a file until apply); the checks above are the
    # last that see the password. scrypt costs ~0.1 s: the pages call this in a thread.
    return {
        "address": address, "name_th": name_th, "name_en": name_en,
        "password_hash": hash_password(password),
    }  # fmt: skip


def check_hostname(name: str) -> str:
    """Return *name* as a host name (RFC 1123 §2.1 labels), lower case; or raise."""
    name = name.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise StepError("hostname", "letters, digits and hyphens, like mail-box1",
                        "ใช้ตัวอักษรอังกฤษ ตัวเลข และขีด เช่น mail-box1")  # fmt: skip
    return name


def _network(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    interface = _text(fields, "interface", 15) or "eth0"
    if not _IFNAME.match(interface):
        raise StepError("interface", "not an interface name (like eth0)",
                        "ชื่อการ์ดเครือข่ายไม่ถูกต้อง (เช่น eth0)")  # fmt: skip
    hostname = check_hostname(fields.get("hostname", ""))
    mode = fields.get("mode", "dhcp")
    if mode == "dhcp":
        return {"mode": "dhcp", "interface": interface, "hostname": hostname}
    if mode != "static":
        raise StepError("mode", "choose DHCP or a fixed address", "กรุณาเลือก DHCP หรือกำหนดเอง")
    try:
        address = ipaddress.ip_interface(_required(fields, "address", "the address",
                                                   "ที่อยู่ IP", 64))  # fmt: skip
    except ValueError:
        raise StepError("address", "an address with its prefix, like 192.168.1.10/24",
                        "ที่อยู่ IP พร้อม prefix เช่น 192.168.1.10/24") from None  # fmt: skip
    if address.network.prefixlen == address.max_prefixlen:
        raise StepError("address", "give the prefix too, like /24", "กรุณาระบุ prefix ด้วย เช่น /24")
    try:
        gateway = ipaddress.ip_address(_required(fields, "gateway", "the gateway", "เกตเวย์", 64))
    except ValueError:
        raise StepError("gateway", "not an IP address", "เกตเวย์ไม่ใช่ที่อยู่ IP") from None
    if gateway not in address.network:
        raise StepError("gateway", f"the gateway must be in {address.network}",
                        f"เกตเวย์ต้องอยู่ในเครือข่าย {address.network}")  # fmt: skip
    dns: list[str] = []
    for entry in _text(fields, "dns", 400).replace(",", " ").split():
        try:
            dns.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise StepError("dns", f"{entry} is not an IP address",
                            f"{entry} ไม่ใช่ที่อยู่ IP") from None  # fmt: skip
    if not dns:
        raise StepError("dns", "at least one DNS server", "กรุณาระบุ DNS อย่างน้อยหนึ่งเครื่อง")
    return {
        "mode": "static", "interface": interface, "hostname": hostname,
        "address": str(address), "gateway": str(gateway), "dns": dns[:3],
    }  # fmt: skip


def _time(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    zone = _text(fields, "timezone", 64) or DEFAULT_TIME_ZONE
    if zone not in zoneinfo.available_timezones():
        raise StepError("timezone", f"unknown time zone {zone}", f"ไม่รู้จักเขตเวลา {zone}")
    servers = _text(fields, "ntp", 1000).replace(",", " ").split()
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            check_hostname_field(server, "ntp")
    return {"timezone": zone, "ntp": servers[:8] or list(DEFAULT_NTP)}


def check_hostname_field(name: str, field_name: str) -> str:
    try:
        return check_hostname(name)
    except StepError as exc:
        en, th = f"{name}: {exc.message_en}", f"{name}: {exc.message_th}"
        raise StepError(field_name, en, th) from None


def _uplink(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    mode = fields.get("mode", "standalone")
    if mode == "standalone":
        return {"mode": "standalone"}
    if mode != "hub":
        raise StepError("mode", "choose a hub or standalone", "กรุณาเลือกเชื่อมศูนย์หรือใช้งานลำพัง")
    hub_url = _required(fields, "hub_url", "the hub's address", "ที่อยู่ของศูนย์", 400)
    if not hub_url.startswith("https://"):
        raise StepError("hub_url", "the hub's address starts with https://",
                        "ที่อยู่ของศูนย์ต้องขึ้นต้นด้วย https://")  # fmt: skip
    token = _required(fields, "token", "the enrolment token", "รหัสลงทะเบียน", 1000)
    # The live check (wizard_pages) runs before these are saved.
    return {"mode": "hub", "hub_url": hub_url, "token": token}


def _restore(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    mode = fields.get("mode", "new")
    if mode == "restore-hub":
        return _restore_from_hub(fields, draft)
    if mode != "restore":
        return {}
    source = _required(fields, "source", "the backup's folder", "โฟลเดอร์ของข้อมูลสำรอง", 1000)
    if not source.startswith("/"):
        raise StepError("source", "a full path, like /media/backup",
                        "ระบุเส้นทางเต็ม เช่น /media/backup")  # fmt: skip
    words = _required(fields, "key", "the recovery key", "กุญแจกู้คืน", 2000)
    try:
        key = words_to_key(words)
    except BadRecoveryKey as exc:
        raise StepError("key", f"the recovery key is not valid: {exc}",
                        f"กุญแจกู้คืนไม่ถูกต้อง: {exc}") from None  # fmt: skip
    # The words are not kept, only the key's public fingerprint (the backup has it in
    # clear too): the review page, the one step between here and apply, asks for the
    # words again. Sealing them instead would need a secret that an unprovisioned box
    # does not have (DATA/keys is made, and discarded, by provisioning itself), and a
    # second typing of 17 groups is a small price for nothing secret on the disk.
    # The backup itself is checked by wizard_pages (it reads the disk).
    return {"source": source, "key_id": key_id(key)}


#: The restore step's source when the backup comes from the hub of the uplink step.
HUB_SOURCE: Final = "hub"


def _restore_from_hub(fields: dict[str, str], draft: Draft) -> dict[str, Any]:
    # The hub and the enrolment token are the uplink step's: apply re-enrols as the old
    # box with them (appliance.backup.hub_restore) instead of enrolling a new one.
    if draft.step_answers("uplink").get("mode") != "hub":
        raise StepError("mode", "a restore from the hub needs the hub and its token at the "
                        "uplink step",
                        "การกู้คืนจากศูนย์ต้องระบุศูนย์และรหัสลงทะเบียนในขั้นตอนการเชื่อมต่อ")  # fmt: skip
    box_id = _required(fields, "box_id", "the box id (on the recovery sheet)",
                       "รหัสเครื่อง (บนแผ่นกุญแจกู้คืน)", 40).lower()  # fmt: skip
    if not valid_box_id(box_id):
        raise StepError("box_id", "a box id is letters, digits and -, as on the sheet",
                        "รหัสเครื่องประกอบด้วยตัวอักษร ตัวเลข และ - ตามที่พิมพ์ในแผ่น")  # fmt: skip
    domain_text = _required(fields, "box_domain", "the agency's domain", "โดเมนของหน่วยงาน", 253)
    try:
        domain = normalise_domain(domain_text)
    except DirectoryError as exc:
        raise StepError("box_domain", str(exc), f"โดเมนไม่ถูกต้อง: {exc}") from None
    words = _required(fields, "key", "the recovery key", "กุญแจกู้คืน", 2000)
    try:
        key = words_to_key(words)
    except BadRecoveryKey as exc:
        raise StepError("key", f"the recovery key is not valid: {exc}",
                        f"กุญแจกู้คืนไม่ถูกต้อง: {exc}") from None  # fmt: skip
    return {"source": HUB_SOURCE, "box_id": box_id, "domain": domain, "key_id": key_id(key)}
