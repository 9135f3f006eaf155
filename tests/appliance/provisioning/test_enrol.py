"""`edgebox enroll`, the box's side: what it checks and what it installs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.box import configured
from appliance.provisioning.enrol import EnrolError, enroll
from appliance.sync.central import load_credentials
from appliance.sync.hub.enrolment import EnrolmentToken
from tests.appliance.sync.hub.hubfixture import new_edge, running_hub
from tests.harness import free_port_offset


async def test_enrolment_installs_keys_credentials_and_settings(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        done = await enroll(edge, hub.url, await hub.token("moe.go.th"))
    keys = edge / "keys"
    cert = x509.load_pem_x509_certificate((keys / "sync.pem").read_bytes())
    key = serialization.load_pem_private_key((keys / "sync.key").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert (keys / "central-ca.pem").read_bytes() == (
        hub.box.config.data_dir / "keys" / "ca.pem"
    ).read_bytes()
    creds = load_credentials(keys)
    assert creds is not None
    assert creds.username == done.username
    assert creds.username.endswith("@moe.go.th")
    # The settings are Config fields, so a box with them starts.
    config = configured(edge, {}, {})
    assert (config.hub_url, config.central_smtp, config.central_imap) == (
        done.hub_url,
        done.central_smtp,
        done.central_imap,
    )
    # The password is in central.json only, not in config.json.
    assert creds.password not in (edge / "config.json").read_text()
    assert json.loads((edge / "config.json").read_text())["box"]


@pytest.mark.parametrize("token", ["", "eb1.abc", "eb2.a.b", "eb1." + "A" * 24 + ".zz"])
async def test_malformed_tokens_are_refused_before_any_connection(
    tmp_path: Path, token: str
) -> None:
    edge = await new_edge(tmp_path, "moe.go.th")
    with pytest.raises(EnrolError, match="token"):
        await enroll(edge, "https://127.0.0.1:1", token)


async def test_an_uninitialised_directory_is_refused(tmp_path: Path) -> None:
    token = str(EnrolmentToken(bytes(18), bytes(32)))
    with pytest.raises(EnrolError, match="edgebox init"):
        await enroll(tmp_path / "nothing", "https://127.0.0.1:1", token)


async def test_an_unreachable_hub_is_reported(tmp_path: Path) -> None:
    edge = await new_edge(tmp_path, "moe.go.th")
    token = str(EnrolmentToken(bytes(18), bytes(32)))
    url = f"https://127.0.0.1:{7443 + free_port_offset()}"
    with pytest.raises(EnrolError, match="cannot reach"):
        await enroll(edge, url, token)
    assert not (edge / "keys" / "sync.pem").exists()


async def test_a_bad_hub_url_is_refused(tmp_path: Path) -> None:
    edge = await new_edge(tmp_path, "moe.go.th")
    token = str(EnrolmentToken(bytes(18), bytes(32)))
    with pytest.raises(EnrolError, match="https"):
        await enroll(edge, "http://hub:7443", token)
