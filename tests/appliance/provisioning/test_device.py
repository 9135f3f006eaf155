"""The box's own identity: box id, device certificate, setup code."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.provisioning.device import (
    SETUP_CODE_ALPHABET,
    SETUP_CODE_LENGTH,
    Device,
    certificate_fingerprint,
    ensure_device,
    forget_setup_code,
    format_setup_code,
    new_setup_code,
    normalise_setup_code,
    read_device,
)


def test_a_device_is_made_once_and_kept(tmp_path: Path) -> None:
    assert read_device(tmp_path) is None
    device = ensure_device(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{32}", device.box_id)
    assert device.hostname == f"edgebox-{device.box_id[:6]}.local"
    cert = device.cert_file.read_bytes()
    again = ensure_device(tmp_path)
    assert again.box_id == device.box_id
    assert again.cert_file.read_bytes() == cert
    assert again.setup_code() == device.setup_code()
    assert stat.S_IMODE(device.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(device.path.stat().st_mode) == 0o700


def test_a_forgotten_setup_code_is_replaced_and_the_identity_kept(tmp_path: Path) -> None:
    device = ensure_device(tmp_path)
    old = device.setup_code()
    forget_setup_code(tmp_path)
    again = ensure_device(tmp_path)
    assert again.box_id == device.box_id
    # 25 ** 10 codes: a repeat would be a broken random source.
    assert again.setup_code() != old


def test_the_setup_code_is_typed_forgivingly(tmp_path: Path) -> None:
    device = ensure_device(tmp_path)
    code = device.setup_code()
    shown = format_setup_code(code)
    assert re.fullmatch(r"[A-Z0-9]{5}-[A-Z0-9]{5}", shown)
    assert device.check_setup_code(shown)
    assert device.check_setup_code(" " + shown.lower().replace("-", " ") + " ")
    assert not device.check_setup_code(code[:-1])
    assert not device.check_setup_code("")


def test_new_codes_use_only_the_readable_alphabet() -> None:
    for _ in range(50):
        code = new_setup_code()
        assert len(code) == SETUP_CODE_LENGTH
        assert set(code) <= set(SETUP_CODE_ALPHABET)
        assert normalise_setup_code(format_setup_code(code)) == code


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Device:
    return ensure_device(tmp_path_factory.mktemp("device"))


@given(offered=st.text(max_size=40))
def test_check_setup_code_never_raises_on_any_text(device: Device, offered: str) -> None:
    assert device.check_setup_code(offered) == (
        normalise_setup_code(offered) == device.setup_code()
    )


def test_the_fingerprint_is_short_and_follows_the_certificate(tmp_path: Path) -> None:
    one = ensure_device(tmp_path / "one")
    two = ensure_device(tmp_path / "two")
    fp = certificate_fingerprint(one.cert_file.read_bytes())
    assert re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", fp)
    assert fp != certificate_fingerprint(two.cert_file.read_bytes())
