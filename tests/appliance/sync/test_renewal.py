"""Renewing the box's sync certificate: against a real in-process hub over mutual TLS."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.box import read_identity
from appliance.provisioning.enrol import enroll
from appliance.sync.clock import ManualClock
from appliance.sync.hub_client import HubClient
from appliance.sync.renewal import (
    PENDING_FILE,
    STREAM,
    CertificateRenewal,
    certificate_expiry,
    finish_renewal,
)
from appliance.sync.status import SyncStatus, read_sync_status
from appliance.sync.transport import HubRefused
from tests.appliance.sync.hub.hubfixture import Hub, new_edge, running_hub

PING = "/sync/v1/ping"
DAY = 24 * 3600.0


async def _ping(keys: Path, url: str) -> object:
    client = HubClient(keys, url, timeout=10)
    try:
        return await client(PING, {})
    finally:
        await client.aclose()


@asynccontextmanager
async def _enrolled_box(tmp_path: Path) -> AsyncIterator[tuple[Hub, Path, CertificateRenewal]]:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        keys = edge / "keys"
        # The box's own clock: moving it must not move the hub's, whose certificates
        # have to be valid for real TLS now.
        clock = ManualClock(start=time.time())
        client = HubClient(keys, hub.url, timeout=10)
        try:
            yield hub, keys, CertificateRenewal(keys, client, SyncStatus(edge, clock), clock)
        finally:
            await client.aclose()


def _box_clock(renewal: CertificateRenewal) -> ManualClock:
    assert isinstance(renewal.clock, ManualClock)
    return renewal.clock


def _files(keys: Path) -> tuple[bytes, bytes]:
    return (keys / "sync.pem").read_bytes(), (keys / "sync.key").read_bytes()


def _matching(keys: Path) -> bool:
    cert = x509.load_pem_x509_certificate((keys / "sync.pem").read_bytes())
    key = serialization.load_pem_private_key((keys / "sync.key").read_bytes(), password=None)
    return cert.public_key() == key.public_key()


async def test_nothing_happens_while_the_certificate_is_young(tmp_path: Path) -> None:
    async with _enrolled_box(tmp_path) as (_, keys, renewal):
        before = _files(keys)
        assert not renewal.due()
        assert await renewal.renew_if_due()
        assert _files(keys) == before


async def test_renewal_is_due_at_two_thirds_of_the_certificate_life(tmp_path: Path) -> None:
    async with _enrolled_box(tmp_path) as (_, _keys, renewal):
        # A one-year certificate (plus a backdated day): due from day 243 on, with four
        # months of retries left before it ends (issue 16), not at 30 days.
        await _box_clock(renewal).advance(200 * DAY)
        assert not renewal.due()
        await _box_clock(renewal).advance(50 * DAY)
        assert renewal.due()


async def test_a_certificate_near_expiry_is_renewed_and_the_new_one_works(
    tmp_path: Path,
) -> None:
    async with _enrolled_box(tmp_path) as (hub, keys, renewal):
        expiry = certificate_expiry(keys)
        assert expiry is not None
        old_cert, old_key = _files(keys)
        # 340 days on: inside the 30-day window before a one-year certificate ends.
        await _box_clock(renewal).advance(340 * DAY)
        assert renewal.due()
        assert await renewal.renew_if_due()

        assert _files(keys) != (old_cert, old_key)
        assert _matching(keys)
        renewed = certificate_expiry(keys)
        assert renewed is not None
        assert renewed >= expiry  # the hub's clock did not move; the box's did
        assert not (keys / PENDING_FILE).exists()
        assert (keys / "sync.key").stat().st_mode & 0o777 == 0o600
        status = read_sync_status(keys.parent)[STREAM]
        assert status["last_error"] is None
        assert status["not_after"] == renewed.isoformat()
        identity = read_identity(keys.parent)
        assert identity is not None
        assert await _ping(keys, hub.url) == {"box_id": identity.box_id, "domain": "moe.go.th"}


async def test_a_lost_answer_strands_nobody(tmp_path: Path) -> None:
    """The box keeps its old certificate when the answer never arrived, and renews again."""
    async with _enrolled_box(tmp_path) as (hub, keys, renewal):
        old = _files(keys)
        await renewal.renew()  # the hub signed and recorded a new certificate ...
        first = _files(keys)
        # ... but pretend the box never got it: the old files are back.
        (keys / "sync.pem").write_bytes(old[0])
        (keys / "sync.key").write_bytes(old[1])
        assert await _ping(keys, hub.url)  # the old certificate still works
        await renewal.renew()
        assert await _ping(keys, hub.url)
        # The certificate that was signed but never installed is now void.
        (keys / "sync.pem").write_bytes(first[0])
        (keys / "sync.key").write_bytes(first[1])
        with pytest.raises(HubRefused) as refused:
            await _ping(keys, hub.url)
        assert refused.value.code == "not_enrolled"


async def test_after_renewal_the_old_certificate_works_until_the_next_one(
    tmp_path: Path,
) -> None:
    async with _enrolled_box(tmp_path) as (hub, keys, renewal):
        original = _files(keys)
        await renewal.renew()
        second = _files(keys)
        # A year later the renewal opens a new connection, with the second certificate.
        assert isinstance(renewal.hub, HubClient)
        await renewal.hub.aclose()
        await renewal.renew()

        def use(files: tuple[bytes, bytes]) -> None:
            (keys / "sync.pem").write_bytes(files[0])
            (keys / "sync.key").write_bytes(files[1])

        use(second)  # the one renewed with: still accepted (connections opened with it)
        assert await _ping(keys, hub.url)
        use(original)  # two renewals ago: refused
        with pytest.raises(HubRefused):
            await _ping(keys, hub.url)


async def test_a_revoked_box_cannot_renew_and_says_so(tmp_path: Path) -> None:
    async with _enrolled_box(tmp_path) as (hub, keys, renewal):
        identity = read_identity(keys.parent)
        assert identity is not None
        assert hub.service.enrolment is not None
        assert await hub.service.enrolment.revoke(identity.box_id)
        before = _files(keys)
        await _box_clock(renewal).advance(340 * DAY)
        assert not await renewal.renew_if_due()
        assert _files(keys) == before
        assert "not_enrolled" in read_sync_status(keys.parent)[STREAM]["last_error"]


async def test_a_stop_mid_install_is_finished_at_the_next_start(tmp_path: Path) -> None:
    async with _enrolled_box(tmp_path) as (hub, keys, renewal):
        await renewal.renew()
        installed = _files(keys)
        # Recreate the state of a stop after the pending file and the key were written
        # but before the certificate was: key and certificate disagree on disk.
        pending = installed[1] + installed[0]
        (keys / PENDING_FILE).write_bytes(pending)
        old_cert = x509.load_pem_x509_certificate(installed[0])
        (keys / "sync.pem").write_bytes(b"")
        assert finish_renewal(keys)
        assert _files(keys) == installed
        assert _matching(keys)
        assert not (keys / PENDING_FILE).exists()
        assert not finish_renewal(keys)
        assert certificate_expiry(keys) == old_cert.not_valid_after_utc
        assert await _ping(keys, hub.url)


def test_an_unenrolled_box_has_nothing_to_renew(tmp_path: Path) -> None:
    renewal = CertificateRenewal(tmp_path, HubClient(tmp_path, "https://127.0.0.1:1"),
                                 SyncStatus(tmp_path))  # fmt: skip
    assert certificate_expiry(tmp_path) is None
    assert not renewal.due()
    assert not finish_renewal(tmp_path)
    assert dt.timedelta(days=30) == renewal.renew_before
