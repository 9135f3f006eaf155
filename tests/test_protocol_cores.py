"""The pure protocol layer imports nothing that does I/O, however deep its imports go.

A static layering rule sees one module's import lines; this runs a fresh interpreter,
imports each protocol core, and looks at everything that came with it. A core that
starts to reach trio, a socket, SQLite or the clock (even through a package's
``__init__``) fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: The protocol cores: bytes or JSON in, values out, nothing else.
CORES = [
    "appliance.sync.codec.chat",
    "appliance.sync.codec.directory",
    "appliance.sync.hub.fair_queue",
    "appliance.mail.mime",
    "appliance.mail.smtp.protocol",
    "appliance.mail.smtp.client",
    "appliance.mail.smtp.handoff",
    "appliance.mail.imap.protocol",
    "appliance.mail.imap.client",
    "appliance.mail.imap.mutf7",
    "hw.panel_link",
]

#: Modules whose presence means I/O came in with an import. (``time`` is not here: every
#: interpreter has loaded it before our first line; a clock read would be in the code.)
IO_MODULES = {
    "trio", "socket", "ssl", "select", "selectors", "asyncio", "sqlite3", "apsw",
    "subprocess", "threading", "psutil", "pyudev", "tinydb", "zeroconf",
}  # fmt: skip


@pytest.mark.parametrize("core", CORES)
def test_a_protocol_core_imports_nothing_that_does_io(core: str) -> None:
    probe = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"importlib.import_module({core!r})\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.partition(".")[0] for name in json.loads(out)}
    assert not loaded & IO_MODULES, f"{core} brings in {sorted(loaded & IO_MODULES)}"
