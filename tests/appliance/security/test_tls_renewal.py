"""The running box's server-certificate renewal and the certificate health check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from cryptography import x509

from appliance.health import Level
from appliance.health.certificates import check_certificates
from appliance.security import tls
from appliance.security.tls import TLSPaths, ensure_tls_material, server_ssl_context
from appliance.security.tls_renewal import TLSRenewal

HOST = "mail.moe.go.th"


def _leaf(keys: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(TLSPaths.in_dir(keys).server_cert.read_bytes())[0]


async def test_running_box_renews_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # A certificate issued with 30 days of life is due at once.
    monkeypatch.setattr(tls, "SERVER_VALIDITY", dt.timedelta(days=30))
    ensure_tls_material(tmp_path, [HOST], ["moe.go.th"])
    monkeypatch.undo()
    context = server_ssl_context(tmp_path)
    old = _leaf(tmp_path)
    reloaded: list[Path] = []
    monkeypatch.setattr(
        "appliance.security.tls_renewal.reload_server_contexts",
        lambda keys: reloaded.append(keys) or 1,
    )
    renewal = TLSRenewal(tmp_path, [HOST], ["moe.go.th"], interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(renewal.serve)
        await trio.sleep(3599)
        assert _leaf(tmp_path).serial_number == old.serial_number  # not before the first look
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    new = _leaf(tmp_path)
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - new.not_valid_before_utc == dt.timedelta(days=397)
    assert reloaded == [tmp_path]
    assert context is not None
    # Nothing due now: the next look changes nothing.
    assert not await renewal.renew_if_due()


async def test_a_certificate_renewed_by_a_command_beside_the_box_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_tls_material(tmp_path, [HOST], ["moe.go.th"])
    reloaded: list[Path] = []
    monkeypatch.setattr(
        "appliance.security.tls_renewal.reload_server_contexts",
        lambda keys: reloaded.append(keys) or 1,
    )
    renewal = TLSRenewal(tmp_path, [HOST], ["moe.go.th"])
    assert not await renewal.renew_if_due()
    # `edgebox user add` opens the box and reissues (here: for a new name) meanwhile.
    ensure_tls_material(tmp_path, [HOST, "box2.moe.go.th"])
    assert await renewal.renew_if_due()
    assert reloaded == [tmp_path]
    assert not await renewal.renew_if_due()


def test_health_ok_warn_error(tmp_path: Path) -> None:
    ensure_tls_material(tmp_path, [HOST], ["moe.go.th"])
    leaf = _leaf(tmp_path)
    start = leaf.not_valid_before_utc

    def levels(at: dt.datetime) -> dict[str, Level]:
        return {f.check: f.level for f in check_certificates(tmp_path, at)}

    assert levels(start + dt.timedelta(days=10)) == {"certificate": Level.OK, "ca": Level.OK}
    # Renewal is due at day 265; still not renewed days later: renewal is failing.
    assert levels(start + dt.timedelta(days=270))["certificate"] is Level.WARN
    assert levels(start + dt.timedelta(days=390))["certificate"] is Level.ERROR


def test_health_warns_about_an_unconstrained_ca(tmp_path: Path) -> None:
    from tests.appliance.security.test_tls import _unconstrained_ca

    paths = ensure_tls_material(tmp_path, [HOST], ["moe.go.th"])
    _unconstrained_ca(paths)
    ensure_tls_material(tmp_path, [HOST])
    findings = {f.check: f for f in check_certificates(tmp_path)}
    assert findings["ca"].level is Level.WARN
    assert "name constraints" in findings["ca"].en
    assert "จำกัดชื่อ" in findings["ca"].th
