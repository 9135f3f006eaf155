"""Signature updates end to end: a real hub publishes, a real box fetches over the sync
API, installs into its real clamd's database folder and RELOADs it.

The box runs real clamd and rspamd (``protection_engines=box``) on the test's own EICAR
database (tests/e2e/test_protection.py). An EICAR variant that database does not know
is accepted on the MX port before the update; the hub operator publishes a ``.ndb``
that knows it (``edgebox hub signatures publish``) and the same message is refused
(554 5.7.1) after the box's next round. A set whose file was changed on the hub after
signing is refused by the box and changes nothing (docs/protection.md).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.store.settings import Settings
from tests.appliance.protection.engines import CompiledRules, box_rspamd_database
from tests.e2e.test_protection import (
    DOMAIN,
    EICAR,
    USERS,
    send_mx,
    wait_for_engines,
    with_attachment,
    write_engine_files,
)
from tests.harness import RunningBox, edgebox, init_box, require_tool, start_box

pytestmark = pytest.mark.slow

#: Harmless: the EICAR string reversed, which only the published set's signature knows.
VARIANT = b"edgebox-signature-update-test:" + EICAR[::-1]
ROUND = 2.0
WAIT = 180.0


def update_state(box: RunningBox) -> dict[str, Any]:
    try:
        return json.loads((box.data / "run" / "signatures.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def wait_for(box: RunningBox, result: str, not_set: str | None = None) -> dict[str, Any]:
    """Wait (bounded) until the box's last round ended in *result* for a new set."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        state = update_state(box)
        if state.get("result") == result and state.get("set_id", "") != not_set:
            return state
        time.sleep(0.5)
    raise AssertionError(f"no {result} round: {update_state(box)}\n" + "\n".join(box.output[-30:]))


@pytest.fixture(scope="module")
def hub_and_box(
    tmp_path_factory: pytest.TempPathFactory, compiled_rules: CompiledRules
) -> Iterator[tuple[Path, RunningBox]]:
    require_tool("clamd")
    require_tool("rspamd")
    root = tmp_path_factory.mktemp("signatures")
    hub_data, box_data = root / "hub", root / "box"
    init_box(hub_data, "hub.go.th", {})
    init_box(box_data, DOMAIN, USERS)
    hub = start_box(hub_data, extra=["--role", "hub"])
    try:
        token = edgebox("hub", "token", "--data", str(hub_data), "--agency", DOMAIN)
        url = f"https://127.0.0.1:{hub.port('hub-sync')}"
        edgebox("enroll", "--data", str(box_data), "--hub", url,
                "--token", token.stdout.strip().splitlines()[-1])  # fmt: skip
        settings = Settings(box_data / "config.json")
        try:
            settings.update("config", {**write_engine_files(root),
                                       "protection_signatures_interval": ROUND})  # fmt: skip
        finally:
            settings.close()
        compiled_rules.seed(box_rspamd_database(box_data))
        box = start_box(box_data)
        try:
            wait_for_engines(box, compiled_rules)
            yield hub_data, box
        finally:
            assert box.stop() == 0
    finally:
        assert hub.stop() == 0


def variant_mail() -> bytes:
    marker = uuid.uuid4().hex
    return with_attachment("someone@example.org", f"bob@{DOMAIN}", marker, VARIANT)


def test_a_published_ndb_reaches_clamd_and_refuses_the_variant(
    tmp_path: Path, hub_and_box: tuple[Path, RunningBox]
) -> None:
    hub_data, box = hub_and_box
    code, _ = send_mx(box, variant_mail())
    assert code == 250  # not known yet

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "edgebox-variant.ndb").write_text(f"Edgebox-Test-Variant:0:*:{VARIANT.hex()}\n")
    # A set changed after signing (made aside with a technician's key under the same
    # CA, changed, then put in place in one rename): refused, nothing installed.
    keys = tmp_path / "tech"
    edgebox("hub", "provisioning-cert", "--data", str(hub_data), "--name", "tech",
            "--out", str(keys))  # fmt: skip
    [key] = keys.glob("*.key")
    edgebox("signatures", "stick", str(mirror), "--key", str(key),
            "--cert", str(key.with_suffix(".pem")), "--out", str(tmp_path / "aside"))  # fmt: skip
    aside = tmp_path / "aside" / "edgebox-signatures"
    (aside / "clamd" / "edgebox-variant.ndb").write_text("Edgebox-Evil:0:*:41414141\n")
    aside.rename(hub_data / "signatures")
    refused = wait_for(box, "refused")
    assert refused["reason"] == "tampered"
    assert not (Path(write_engine_files_database(box)) / "edgebox-variant.ndb").exists()
    code, _ = send_mx(box, variant_mail())
    assert code == 250

    edgebox("hub", "signatures", "publish", "--data", str(hub_data), str(mirror))
    installed = wait_for(box, "installed")
    assert installed["files"] == ["clamd/edgebox-variant.ndb"]
    assert installed["error"] == ""  # clamd answered RELOADING
    assert "reason" not in installed  # the refusal before it is not carried over
    # clamd loads the new database in the background: bounded wait for the refusal.
    deadline = time.monotonic() + 60
    while True:
        code, text = send_mx(box, variant_mail())
        if code != 250 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 554
    assert b"Edgebox-Test-Variant" in text
    assert b"5.7.1" in text


def write_engine_files_database(box: RunningBox) -> str:
    """The clamd database folder the box was configured with."""
    config = json.loads((box.data / "config.json").read_text())["config"]["1"]
    return str(config["protection_clamd_database"])
