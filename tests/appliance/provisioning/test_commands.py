"""The technician's and the hub's commands for the USB stick, run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from appliance.cli import main
from appliance.provisioning.bundle import BUNDLE_DIR, parse_bundle, read_bundle_files

from .stick import ANSWERS_TOML


def test_hub_issues_a_key_a_bundle_is_made_with_it_and_revocation_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = tmp_path / "hub"
    assert main(["hub", "provisioning-cert", "--data", str(hub), "--name", "Somsak",
                 "--days", "3", "--out", str(tmp_path / "tech")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    serial = printed.rsplit("serial (to revoke): ", 1)[1].strip()
    key = tmp_path / "tech" / "provisioning-somsak.key"
    chain = tmp_path / "tech" / "provisioning-somsak.pem"
    assert key.stat().st_mode & 0o077 == 0
    assert len(x509.load_pem_x509_certificates(chain.read_bytes())) == 2

    (tmp_path / "answers.toml").write_bytes(ANSWERS_TOML)
    stick = tmp_path / "stick"
    assert main(["provision", "bundle", "create", "--answers", str(tmp_path / "answers.toml"),
                 "--token", "tok", "--key", str(key), "--cert", str(chain),
                 "--out", str(stick)]) == 1  # fmt: skip
    assert "[uplink] hub" in capsys.readouterr().err  # a token needs the hub's address
    assert main(["provision", "bundle", "create", "--answers", str(tmp_path / "answers.toml"),
                 "--key", str(key), "--cert", str(chain), "--box-id", "a" * 32,
                 "--crl", str(hub / "keys" / "provisioning-crl.pem"),
                 "--out", str(stick)]) == 0  # fmt: skip
    bundle = parse_bundle(read_bundle_files(stick / BUNDLE_DIR))
    assert bundle.manifest.box_ids == ("a" * 32,)
    assert bundle.crl is not None

    assert main(["hub", "provisioning-revoke", "--data", str(hub), serial]) == 0
    crl = x509.load_pem_x509_crl((hub / "keys" / "provisioning-crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert main(["hub", "provisioning-revoke", "--data", str(hub), "not-hex"]) == 1


def test_a_bundle_needs_something_to_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provision", "bundle", "create", "--key", "k", "--cert", "c",
                 "--out", str(tmp_path)]) == 1  # fmt: skip
    assert "nothing to put in the bundle" in capsys.readouterr().err
