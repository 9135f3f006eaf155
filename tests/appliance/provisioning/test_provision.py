"""Provisioning moves a box from unprovisioned to provisioned atomically.

A crash at any point leaves the old state (no identity; what was made is discarded at
the next start) or the new one (identity, agency and first admin all there): shown by
an injected failure between steps and by SIGKILL at many points of a real run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import appliance.box
from appliance.box import configured, open_box, read_identity
from appliance.provisioning.device import DEVICE_DIR, ensure_device
from appliance.provisioning.lifecycle import BoxState, box_state
from appliance.provisioning.provision import (
    ProvisioningError,
    ProvisioningRequest,
    box_lock,
    discard_unfinished,
    provision,
)

DOMAIN = "setup.go.th"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "ตั้งค่า-ครั้งแรก-2569"

REQUEST = ProvisioningRequest(
    domain=DOMAIN,
    agency_name_th="สำนักงานทดสอบ",
    agency_name_en="Test Office",
    admin_address=ADMIN,
    admin_name_th="ผู้ดูแล ระบบ",
    admin_name_en="First Admin",
    admin_password=PASSWORD,
)


async def _assert_provisioned(data: Path) -> None:
    identity = read_identity(data)
    assert identity is not None
    assert identity.domain == DOMAIN
    async with open_box(configured(data, {}, {})) as box:
        user = await box.directory.authenticate(ADMIN, PASSWORD)
        assert user is not None
        assert await box.directory.is_admin(ADMIN, DOMAIN)
        assert await box.directory.is_admin(ADMIN, None)
        agencies = await box.directory.agencies()
        assert [(a.domain, a.name_th, a.name_en) for a in agencies] == [
            (DOMAIN, "สำนักงานทดสอบ", "Test Office")
        ]


def _assert_factory_new(data: Path) -> None:
    """Nothing but the device (and operator settings without an identity) is left."""
    assert read_identity(data) is None
    assert {p.name for p in data.iterdir()} <= {DEVICE_DIR, "config.json", "run"}


async def test_provisioning_makes_agency_and_first_admin_with_the_device_id(
    tmp_path: Path,
) -> None:
    device = ensure_device(tmp_path)
    assert box_state(tmp_path) is BoxState.UNPROVISIONED
    identity = await provision(tmp_path, REQUEST)
    assert identity.box_id == device.box_id
    assert box_state(tmp_path) is BoxState.PROVISIONED
    await _assert_provisioned(tmp_path)


async def test_a_provisioned_box_is_never_provisioned_again(tmp_path: Path) -> None:
    await provision(tmp_path, REQUEST)
    other = ProvisioningRequest(**{**REQUEST.__dict__, "domain": "other.go.th",
                                   "admin_address": "a@other.go.th"})  # fmt: skip
    with pytest.raises(ProvisioningError, match="already provisioned"):
        await provision(tmp_path, other)
    await _assert_provisioned(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"admin_address": "admin@elsewhere.go.th"}, "must be in setup.go.th"),
        ({"domain": "not a domain"}, "not a valid domain"),
        ({"agency_name_th": "  "}, "Thai names are required"),
        ({"admin_password": "short"}, "at least 10 characters"),
        ({"admin_password": "x" * 5000}, "at most"),
    ],
)
async def test_a_refused_request_leaves_the_box_unprovisioned_and_clean(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    ensure_device(tmp_path)
    with pytest.raises(ProvisioningError, match=message):
        await provision(tmp_path, ProvisioningRequest(**{**REQUEST.__dict__, **change}))
    _assert_factory_new(tmp_path)
    # And the right answers still work afterwards.
    await provision(tmp_path, REQUEST)
    await _assert_provisioned(tmp_path)


async def test_a_failure_between_steps_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_add_user(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone between the agency and the admin")

    monkeypatch.setattr(appliance.box, "add_user", broken_add_user)
    with pytest.raises(OSError, match="disk gone"):
        await provision(tmp_path, REQUEST)
    # Keys and databases were made; the identity was not: still unprovisioned.
    assert read_identity(tmp_path) is None
    assert (tmp_path / "keys").exists()
    monkeypatch.undo()
    assert discard_unfinished(tmp_path)
    _assert_factory_new(tmp_path)
    await provision(tmp_path, REQUEST)
    await _assert_provisioned(tmp_path)


@settings(max_examples=200, deadline=None)
@given(
    domain=st.text(max_size=80),
    address=st.text(max_size=80),
    name=st.text(max_size=20),
    password=st.text(max_size=30),
)
def test_any_answers_are_checked_or_refused_in_both_languages(
    domain: str, address: str, name: str, password: str
) -> None:
    request = ProvisioningRequest(domain, name, None, address, name, None, password)
    try:
        checked = request.checked()
    except ProvisioningError as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.message_en
        assert refusal.message_th
        return
    assert checked.admin_address.rpartition("@")[2] == checked.domain
    assert len(checked.admin_password) >= 10
    assert checked.agency_name_th


def test_init_and_reset_refuse_while_a_box_runs_on_the_directory(tmp_path: Path) -> None:
    with (
        box_lock(tmp_path, exclusive=False),
        box_lock(tmp_path, exclusive=False),
        pytest.raises(ProvisioningError, match="a box is running"),
        box_lock(tmp_path, exclusive=True),
    ):
        pass
    with box_lock(tmp_path, exclusive=True):
        pass


_CHILD = """
import sys, trio
from pathlib import Path
from appliance.provisioning.provision import ProvisioningRequest, provision
request = ProvisioningRequest(*sys.argv[2:])
print("start", flush=True)
trio.run(provision, Path(sys.argv[1]), request)
print("done", flush=True)
"""


def _child(data: Path) -> subprocess.Popen[str]:
    r = REQUEST
    args = [r.domain, r.agency_name_th, r.agency_name_en, r.admin_address, r.admin_name_th,
            r.admin_name_en, r.admin_password]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), *(a or "" for a in args)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )


def _wait_for(process: subprocess.Popen[str], word: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line == word, f"child said {line!r}"


@pytest.mark.slow
def test_sigkill_at_many_points_leaves_old_or_new_state(tmp_path: Path) -> None:
    # How long one provisioning takes here, measured from the child's "start".
    reference = _child(tmp_path / "reference")
    _wait_for(reference, "start")
    began = time.monotonic()
    _wait_for(reference, "done")
    duration = time.monotonic() - began
    assert reference.wait(30) == 0
    assert reference.stdout is not None
    reference.stdout.close()

    points = 14
    outcomes = {"old": 0, "new": 0}
    for n in range(points):
        data = tmp_path / f"kill-{n}"
        ensure_device(data)
        child = _child(data)
        _wait_for(child, "start")
        if n == points - 1:
            # The last kill comes after "done" by the order of events, not by a time
            # that a busy machine may not reach: what was reported done must stay.
            _wait_for(child, "done")
        else:
            # Evenly over the run as the reference measured it.
            time.sleep(duration * n / (points - 1))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        assert child.stdout is not None
        child.stdout.close()
        if read_identity(data) is None:
            outcomes["old"] += 1
            # The next start (or attempt) discards what the killed one made...
            discard_unfinished(data)
            _assert_factory_new(data)
            if n % 3 == 0:  # ... and provisioning then works (every third, for time)
                trio.run(provision, data, REQUEST)
                trio.run(_assert_provisioned, data)
        else:
            outcomes["new"] += 1
            trio.run(_assert_provisioned, data)
    # Both sides of the commit point were hit, so the points did span the run.
    assert outcomes["old"] >= 2, outcomes
    assert outcomes["new"] >= 1, outcomes
