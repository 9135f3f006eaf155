"""The setup wizard's answers: each step's checks, the saved draft, the OS files.

The pages themselves are walked in Chromium (tests/e2e/browser/test_setup_wizard.py);
these are the pure parts, without a box or a socket.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from appliance.backup.crypto import ensure_backup_key, key_id, key_to_words
from appliance.backup.snapshot import create_backup
from appliance.box import configured, open_box, read_identity
from appliance.config import Config
from appliance.directory import DirectoryError
from appliance.provisioning.device import ensure_device, forget_setup_code
from appliance.provisioning.provision import ProvisioningError, ProvisioningRequest, provision
from appliance.provisioning.system_files import (
    LOCALTIME_LINK,
    NETWORK_FILE,
    TIMESYNCD_FILE,
    network_unit,
    system_root,
    write_system_files,
)
from appliance.provisioning.uplink_check import check_uplink, greeting_ok
from appliance.provisioning.wizard import (
    DEFAULT_NTP,
    MAX_CLAIMS,
    STEPS,
    Draft,
    StepError,
    check_step,
    draft_path,
    forget_draft,
    load_draft,
    parse_units,
    save_draft,
)
from appliance.provisioning.wizard_pages import check_backup, check_key, restore_onto
from appliance.security.passwords import verify_password
from tests.appliance.provisioning.test_provision import REQUEST

AGENCY = {"domain": "Wizard.GO.th", "name_th": "สำนักงานทดสอบ", "name_en": "", "units": ""}
ADMIN = {"local": "somchai", "name_th": "สมชาย", "password": "long-enough-1",
         "password2": "long-enough-1"}  # fmt: skip
STATIC = {"mode": "static", "hostname": "box1", "interface": "eth0", "address": "192.168.1.10/24",
          "gateway": "192.168.1.1", "dns": "192.168.1.1, 1.1.1.1"}  # fmt: skip


def answered(*steps: tuple[str, dict[str, str]]) -> Draft:
    draft = Draft()
    for step, fields in steps:
        draft.save_step(step, check_step(step, fields, draft))
    return draft


def refused(step: str, fields: dict[str, str], draft: Draft | None = None) -> StepError:
    with pytest.raises(StepError) as caught:
        check_step(step, fields, draft or Draft())
    assert caught.value.message_th
    assert caught.value.message_en
    return caught.value


def test_agency_is_normalised_with_its_units() -> None:
    fields = {**AGENCY, "units": "กองคลัง | Finance\n\n  กองช่าง  \n"}
    answers = check_step("agency", fields, Draft())
    assert answers["domain"] == "wizard.go.th"
    assert answers["name_en"] is None
    assert answers["units"] == [
        {"name_th": "กองคลัง", "name_en": "Finance"},
        {"name_th": "กองช่าง", "name_en": None},
    ]
    assert refused("agency", {**AGENCY, "domain": "no_dots"}).field == "domain"
    assert refused("agency", {**AGENCY, "name_th": "  "}).field == "name_th"
    assert refused("agency", {**AGENCY, "units": "กองคลัง\nกองคลัง | x"}).field == "units"


def test_the_admin_lives_in_the_agency_domain_with_a_long_password() -> None:
    draft = answered(("agency", AGENCY))
    answers = check_step("admin", ADMIN, draft)
    assert answers["address"] == "somchai@wizard.go.th"
    # Checked, then kept only as the directory's hash.
    assert "password" not in answers
    assert verify_password("long-enough-1", answers["password_hash"])
    short = {**ADMIN, "password": "short", "password2": "short"}
    assert refused("admin", short, draft).field == "password"
    assert refused("admin", {**ADMIN, "password2": "long-enough-2"}, draft).field == "password2"
    assert refused("admin", {**ADMIN, "local": "a b"}, draft).field == "local"


def test_network_dhcp_or_a_static_address_in_the_gateway_network() -> None:
    assert check_step("network", {"mode": "dhcp", "hostname": "Box-1"}, Draft()) == {
        "mode": "dhcp", "interface": "eth0", "hostname": "box-1",
    }  # fmt: skip
    answers = check_step("network", STATIC, Draft())
    assert answers["dns"] == ["192.168.1.1", "1.1.1.1"]
    assert refused("network", {**STATIC, "gateway": "10.0.0.1"}).field == "gateway"
    assert refused("network", {**STATIC, "address": "192.168.1.10"}).field == "address"
    assert refused("network", {**STATIC, "dns": "dns.example"}).field == "dns"
    assert refused("network", {**STATIC, "hostname": "-bad-"}).field == "hostname"
    assert refused("network", {**STATIC, "interface": "eth0; rm"}).field == "interface"


def test_time_zone_and_ntp_servers() -> None:
    assert check_step("time", {"timezone": "", "ntp": ""}, Draft()) == {
        "timezone": "Asia/Bangkok", "ntp": list(DEFAULT_NTP),
    }  # fmt: skip
    answers = check_step("time", {"timezone": "Asia/Bangkok", "ntp": "10.0.0.1 ntp.go.th"}, Draft())
    assert answers["ntp"] == ["10.0.0.1", "ntp.go.th"]
    assert refused("time", {"timezone": "Mars/Olympus"}).field == "timezone"
    assert refused("time", {"ntp": "bad_name!"}).field == "ntp"


def test_uplink_standalone_or_an_https_hub_with_a_token() -> None:
    assert check_step("uplink", {"mode": "standalone", "token": "x"}, Draft()) == {
        "mode": "standalone"
    }
    plain = {"mode": "hub", "hub_url": "http://hub", "token": "t"}
    assert refused("uplink", plain).field == "hub_url"
    assert refused("uplink", {"mode": "hub", "hub_url": "https://hub"}).field == "token"


def test_restore_is_optional_and_needs_a_full_path_and_a_key() -> None:
    assert check_step("restore", {"mode": "new", "source": "/x"}, Draft()) == {}
    assert refused("restore", {"mode": "restore", "source": "media", "key": "k"}).field == "source"
    assert (
        refused("restore", {"mode": "restore", "source": "/media/b", "key": "ab cd"}).field == "key"
    )
    words = "  " + key_to_words(bytes(range(32))).replace(" ", "  ")
    draft = answered(("restore", {"mode": "restore", "source": "/media/b", "key": words}))
    assert draft.restoring
    # Only the key's public fingerprint is kept; the words are typed again at apply.
    assert draft.step_answers("restore") == {
        "source": "/media/b",
        "key_id": key_id(bytes(range(32))),
    }
    check_key(words, draft.step_answers("restore"))
    with pytest.raises(StepError) as other:
        check_key(key_to_words(bytes(32)), draft.step_answers("restore"))
    assert other.value.field == "key"
    with pytest.raises(StepError) as garbled:
        check_key("not a key", draft.step_answers("restore"))
    assert garbled.value.field == "key"


def test_the_saved_draft_holds_neither_the_password_nor_the_key_words(tmp_path: Path) -> None:
    ensure_device(tmp_path)
    words = key_to_words(bytes(range(32)))
    restore = {"mode": "restore", "source": "/media/b", "key": words}
    draft = answered(("agency", AGENCY), ("admin", ADMIN), ("restore", restore))
    save_draft(tmp_path, draft)
    saved = draft_path(tmp_path).read_bytes()
    assert b"long-enough-1" not in saved
    groups = words.split()
    for pair in itertools.pairwise(groups):  # not the words, nor a part of them
        assert " ".join(pair).encode() not in saved
        assert "".join(pair).encode() not in saved
    assert words.replace(" ", "").encode() not in saved
    again = load_draft(tmp_path)
    assert verify_password("long-enough-1", again.step_answers("admin")["password_hash"])
    assert again.step_answers("restore")["key_id"] == key_id(bytes(range(32)))
    # Apply forgets the draft: overwritten, then gone.
    forget_draft(tmp_path)
    assert not draft_path(tmp_path).exists()
    forget_draft(tmp_path)  # twice is harmless


def test_an_older_draft_with_secrets_in_clear_asks_those_steps_again(tmp_path: Path) -> None:
    ensure_device(tmp_path)
    old = {"reached": 7, "answers": {
        "agency": {"domain": "wizard.go.th"},
        "admin": {"address": "a@wizard.go.th", "name_th": "ก", "password": "long-enough-1"},
        "restore": {"source": "/media/b", "key": "ab cd"},
    }}  # fmt: skip
    draft_path(tmp_path).write_text(json.dumps(old))
    draft = load_draft(tmp_path)
    assert set(draft.answers) == {"agency"}
    assert not draft.restoring


async def test_the_first_admin_made_from_the_drafts_hash_signs_in(tmp_path: Path) -> None:
    draft = answered(("agency", AGENCY), ("admin", ADMIN))
    admin = draft.step_answers("admin")
    request = ProvisioningRequest(
        domain="wizard.go.th", agency_name_th="สำนักงานทดสอบ", agency_name_en=None,
        admin_address=admin["address"], admin_name_th=admin["name_th"], admin_name_en=None,
        admin_password_hash=admin["password_hash"],
    )  # fmt: skip
    # Exactly one of the password and its hash; a hash must be in our format.
    both = ProvisioningRequest(**{**request.__dict__, "admin_password": "long-enough-1"})
    neither = ProvisioningRequest(**{**request.__dict__, "admin_password_hash": None})
    plain = ProvisioningRequest(**{**request.__dict__, "admin_password_hash": "long-enough-1"})
    for bad in (both, neither, plain):
        with pytest.raises(ProvisioningError):
            await provision(tmp_path, bad)
    assert read_identity(tmp_path) is None
    await provision(tmp_path, request)
    async with open_box(configured(tmp_path, {}, {})) as box:
        assert await box.directory.authenticate("somchai@wizard.go.th", "long-enough-1")
        assert not await box.directory.authenticate("somchai@wizard.go.th", "long-enough-2")
        assert await box.directory.is_admin("somchai@wizard.go.th", None)


@pytest.mark.parametrize(
    "stored",
    [
        "long-enough-1",  # a plaintext is never stored as if it were a hash
        "scrypt$14$8$1$c2FsdA==",  # a part missing
        "scrypt$30$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # a cost we refuse to run
        "bcrypt$14$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # another scheme
        "",
    ],
)
async def test_the_directory_refuses_a_malformed_password_hash(tmp_path: Path, stored: str) -> None:
    await provision(tmp_path, REQUEST)
    async with open_box(configured(tmp_path, {}, {})) as box:
        with pytest.raises(DirectoryError):
            await box.directory.add_user(f"x@{REQUEST.domain}", password_hash=stored, name_th="ก")
        with pytest.raises(DirectoryError):  # both, or neither
            await box.directory.add_user(f"y@{REQUEST.domain}", name_th="ข")
        assert await box.directory.user(f"x@{REQUEST.domain}") is None


def test_the_draft_resumes_where_it_stopped_and_holds_claims_not_tokens(tmp_path: Path) -> None:
    ensure_device(tmp_path)
    draft = answered(("language", {"lang": "en"}), ("agency", AGENCY))
    assert draft.current == "admin"
    assert draft.lang == "en"
    assert draft.open_to("admin")
    assert not draft.open_to("network")
    for n in range(MAX_CLAIMS + 1):
        draft.add_claim(f"token-{n}")
    save_draft(tmp_path, draft)
    assert os.stat(draft_path(tmp_path)).st_mode & 0o777 == 0o600
    assert "token-1" not in draft_path(tmp_path).read_text()
    again = load_draft(tmp_path)
    assert again.current == "admin"
    assert again.lang == "en"
    assert again.step_answers("agency")["domain"] == "wizard.go.th"
    assert again.has_claim(f"token-{MAX_CLAIMS}")
    assert not again.has_claim("token-0")
    assert not again.has_claim(None)
    assert not again.has_claim("guess")
    # A factory reset forgets the draft with the setup code: nobody who claimed stays in.
    forget_setup_code(tmp_path)
    assert load_draft(tmp_path) == Draft()


def test_a_damaged_draft_starts_over(tmp_path: Path) -> None:
    draft_path(tmp_path).parent.mkdir(parents=True)
    for damaged in ("[1, 2", "[]", '{"reached": "x"}', '{"answers": [1]}', '{"claims": 5}'):
        draft_path(tmp_path).write_text(damaged)
        assert load_draft(tmp_path) == Draft()
    assert STEPS[0] == Draft().current


@given(st.text(max_size=400))
def test_parse_units_answers_units_or_a_step_error(text: str) -> None:
    try:
        units = parse_units(text)
    except StepError as exc:
        refused_field = exc.field
    else:
        refused_field = ""
    if refused_field:
        assert refused_field == "units"
        return
    assert all(unit["name_th"] and unit["name_th"].strip() == unit["name_th"] for unit in units)
    assert len({unit["name_th"] for unit in units}) == len(units)


def test_networkd_and_timesyncd_files_under_the_configured_root(tmp_path: Path) -> None:
    network: dict[str, Any] = check_step("network", STATIC, Draft())
    time = check_step("time", {"ntp": "ntp.go.th"}, Draft())
    assert system_root(Config(tmp_path)) == tmp_path / "system"  # never the host's /etc
    assert system_root(Config(tmp_path, system_root="/")) == Path("/")
    root = tmp_path / "root"
    written = write_system_files(root, network, time)
    assert NETWORK_FILE in written
    assert TIMESYNCD_FILE in written
    unit = (root / NETWORK_FILE).read_text()
    assert "[Match]\nName=eth0\n" in unit
    assert "Address=192.168.1.10/24\nGateway=192.168.1.1\nDNS=192.168.1.1\nDNS=1.1.1.1\n" in unit
    assert (root / "etc/hostname").read_text() == "box1\n"
    assert (root / TIMESYNCD_FILE).read_text().endswith("[Time]\nNTP=ntp.go.th\n")
    assert os.readlink(root / LOCALTIME_LINK) == "/usr/share/zoneinfo/Asia/Bangkok"
    # Written again (a second apply after a reset): replaced, not refused.
    write_system_files(root, {"mode": "dhcp", "interface": "eth1", "hostname": "b"}, time)
    assert "DHCP=yes" in (root / NETWORK_FILE).read_text()
    assert "DHCP=yes" in network_unit({"mode": "dhcp", "interface": "eth0"})


def test_mail_server_greetings() -> None:
    assert greeting_ok("smtp", b"220 hub.go.th ESMTP\r\n")
    assert not greeting_ok("smtps", b"554 no service\r\n")
    assert greeting_ok("imaps", b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    assert greeting_ok("imap", b"* PREAUTH hi\r\n")
    assert not greeting_ok("imap", b"HTTP/1.1 400\r\n")


async def test_a_malformed_token_is_refused_before_any_connection(tmp_path: Path) -> None:
    with trio.fail_after(1):
        lines = await check_uplink(tmp_path, "https://127.0.0.1:1", "not-a-token")
    assert [(line.what, line.ok) for line in lines] == [("token", False)]


async def test_restore_brings_a_backup_into_the_running_blank_box(tmp_path: Path) -> None:
    old, usb, blank = tmp_path / "old", tmp_path / "usb", tmp_path / "blank"
    await provision(old, REQUEST)
    create_backup(old, usb)
    words = key_to_words(ensure_backup_key(old / "keys"))
    device = ensure_device(blank)
    (blank / "run").mkdir()
    (blank / "run" / "status.json").write_text("{}")
    answers = {"source": str(usb), "key": words}
    step = check_step("restore", {"mode": "restore", **answers}, Draft())

    # The step's check: a folder without a backup, a key that is not the backup's.
    with pytest.raises(StepError) as no_backup:
        check_backup({**step, "source": str(tmp_path)})
    assert no_backup.value.field == "source"
    with pytest.raises(StepError) as wrong_key:
        check_backup({**step, "key_id": key_id(bytes(32))})
    assert wrong_key.value.field == "key"
    check_backup(step)

    name = await trio.to_thread.run_sync(restore_onto, blank, answers)
    assert name
    identity = read_identity(blank)
    assert identity is not None
    assert identity.domain == REQUEST.domain
    # The box keeps its own device and run state; nothing of the staging is left.
    assert ensure_device(blank).box_id == device.box_id
    assert (blank / "run" / "status.json").read_text() == "{}"
    assert not (blank / "restored").exists()
    async with open_box(configured(blank, {}, {})) as box:
        assert await box.directory.user(REQUEST.admin_address) is not None


FIELD_NAMES = ("lang", "domain", "name_th", "name_en", "units", "local", "password",
               "password2", "mode", "hostname", "interface", "address", "gateway", "dns",
               "timezone", "ntp", "hub_url", "token", "source", "key")  # fmt: skip


@given(
    st.sampled_from(STEPS),
    st.dictionaries(st.sampled_from(FIELD_NAMES), st.text(max_size=80), max_size=12),
)
def test_any_form_gets_answers_or_a_step_error(step: str, fields: dict[str, str]) -> None:
    draft = answered(("agency", AGENCY))
    try:
        answers = check_step(step, fields, draft)
    except StepError as exc:
        refused_field = exc.field
    else:
        refused_field = ""
        assert isinstance(answers, dict)
    assert refused_field in ("", *FIELD_NAMES)


HUB_UPLINK = {"mode": "hub", "hub_url": "https://hub.go.th:7443", "token": "eb1.secret.ca"}


def test_restore_from_the_hub_needs_the_uplinks_hub_and_the_old_box() -> None:
    words = key_to_words(bytes(range(32)))
    fields = {"mode": "restore-hub", "box_id": "D6A5-old", "box_domain": "MOE.go.th",
              "key": words}  # fmt: skip
    assert refused("restore", fields).field == "mode"  # no hub at the uplink step
    draft = answered(("uplink", HUB_UPLINK))
    assert refused("restore", {**fields, "box_id": "no/such"}, draft).field == "box_id"
    assert refused("restore", {**fields, "box_domain": ""}, draft).field == "box_domain"
    assert refused("restore", {**fields, "key": "ab cd"}, draft).field == "key"
    answers = check_step("restore", fields, draft)
    assert answers == {"source": "hub", "box_id": "d6a5-old", "domain": "moe.go.th",
                       "key_id": key_id(bytes(range(32)))}  # fmt: skip
    draft.save_step("restore", answers)
    assert draft.restoring
    check_backup(answers)  # nothing to look at locally: asking would spend the token


async def test_the_wizard_restores_from_the_hub_with_the_uplinks_token(tmp_path: Path) -> None:
    from appliance.backup.restore import restore_backup
    from appliance.provisioning.lifecycle import Lifecycle
    from appliance.provisioning.setup_api import SetupApi
    from appliance.provisioning.wizard_pages import SetupWizard
    from appliance.security.guard import AuthGuard, GuardPolicy

    old, usb, blank = tmp_path / "old", tmp_path / "usb", tmp_path / "blank"
    await provision(old, REQUEST)
    create_backup(old, usb)
    key = ensure_backup_key(old / "keys")
    device = ensure_device(blank)
    asked: list[tuple[str, str, str, str, bytes]] = []

    async def hub_restorer(
        staging: Path, hub_url: str, token: str, box_id: str, domain: str, given: bytes
    ) -> str:
        # The hub's part (re-enrolment, fetch) is tested in tests/e2e/test_backup_hub.py;
        # here the set comes from a folder, onto the blank staging folder it is given.
        assert not await trio.Path(staging).exists()
        asked.append((hub_url, token, box_id, domain, given))
        return (await trio.to_thread.run_sync(restore_backup, staging, usb, given)).name

    config = configured(blank, {}, {})
    lifecycle = Lifecycle(blank, device)
    guard = AuthGuard(GuardPolicy(), clock=trio.current_time)
    wizard = SetupWizard(config, lifecycle, SetupApi(lifecycle, guard), hub_restorer=hub_restorer)
    words = key_to_words(key)
    draft = answered(
        ("uplink", HUB_UPLINK),
        ("restore", {"mode": "restore-hub", "box_id": "d6a5", "box_domain": REQUEST.domain,
                     "key": words}),
    )  # fmt: skip
    report = await wizard._apply(draft, words)
    assert asked == [("https://hub.go.th:7443", "eb1.secret.ca", "d6a5", REQUEST.domain, key)]
    assert report.restored
    assert report.enrolled == "https://hub.go.th:7443"  # by the restore, not enrolled again
    identity = read_identity(blank)
    assert identity is not None
    assert identity.domain == REQUEST.domain
    assert ensure_device(blank).box_id == device.box_id
    assert not (blank / "restored").exists()
