"""A real clamd picks up a signature set installed from the hub's routes (RELOAD).

clamd alone, configured by the box's own generator: an EICAR variant the test's first
database does not know passes before the set arrives and is found after it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.config import Config
from appliance.protection.engines import clamd_config, engine_dir, protection_from_config
from appliance.protection.signatures.sync import read_state
from appliance.security.provisioning_ca import ensure_provisioning_ca
from tests.appliance.protection.engines import EICAR
from tests.appliance.protection.test_signatures import InProcessHub, box_config, publish, updater
from tests.harness import require_tool

#: Not the first database's pattern: only the published set knows it.
VARIANT = b"edgebox-signature-update-test:" + EICAR[::-1]


@pytest.fixture
def clamd_box(tmp_path: Path) -> Iterator[Config]:
    """A box's config with its own clamd running on the test's EICAR database."""
    binary = require_tool("clamd")
    ensure_provisioning_ca(tmp_path / "hub" / "keys")
    config = box_config(tmp_path)
    database = Path(config.protection_clamd_database)
    database.mkdir()
    (database / "edgebox-test.ndb").write_text(f"Edgebox-Test-EICAR:0:*:{EICAR.hex()}\n")
    run = engine_dir(config)
    run.mkdir(parents=True)
    (run / "clamd.conf").write_text(clamd_config(config))
    process = subprocess.Popen([binary, "-c", str(run / "clamd.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield config
    finally:
        process.terminate()
        process.wait(30)


async def test_clamd_finds_the_variant_only_after_the_set_is_installed(
    tmp_path: Path, clamd_box: Config
) -> None:
    clamd = protection_from_config(clamd_box).clamd
    for _ in range(400):  # clamd loads its database: seconds, more on a loaded machine
        if await clamd.ping():
            break
        await trio.sleep(0.3)
    assert await clamd.scan(b"x" + EICAR) == "Edgebox-Test-EICAR.UNOFFICIAL"
    assert await clamd.scan(VARIANT) is None
    publish(tmp_path, {"clamd/edgebox-variant.ndb":
                       f"Edgebox-Test-Variant:0:*:{VARIANT.hex()}\n".encode()})  # fmt: skip
    service = updater(clamd_box, InProcessHub(tmp_path / "hub"))
    service.clamd = clamd
    assert await service.update_round() == "installed"
    state = read_state(clamd_box.data_dir)
    assert state is not None
    assert state["error"] == ""  # clamd said RELOADING
    # RELOAD returns at once and loads in the background; the old engine answers
    # meanwhile, so wait (bounded) for the new signature.
    found = None
    deadline = time.monotonic() + 60
    while found is None and time.monotonic() < deadline:
        found = await clamd.scan(VARIANT)
        await trio.sleep(0.2)
    assert found == "Edgebox-Test-Variant.UNOFFICIAL"
    assert await clamd.scan(b"x" + EICAR) == "Edgebox-Test-EICAR.UNOFFICIAL"
