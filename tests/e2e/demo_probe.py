"""Run inside a network namespace with only loopback: start the demo box, probe it.

Used by test_demo.py. Exits 0 only if `edgebox run --demo` came up from an empty data
directory and every address it printed answered with an SMTP greeting, and the demo
users from README.md can sign in.
"""

from __future__ import annotations

import smtplib
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.cli import DEMO_USERS
from tests.harness import start_box


def main(data: Path) -> int:
    box = start_box(data, demo=True)
    try:
        assert set(box.listeners) == {"smtp-mx", "smtp-submission", "smtp-submissions"}, box.output
        context = ssl.create_default_context(cafile=str(box.ca))
        for name, addresses in box.listeners.items():
            for address in addresses:
                host, _, port = address.rpartition(":")
                if name == "smtp-submissions":
                    client: smtplib.SMTP = smtplib.SMTP_SSL(host, int(port), context=context)
                else:
                    client = smtplib.SMTP(host, int(port), timeout=10)
                with client:
                    code, banner = client.noop()
                    assert code == 250, (name, code, banner)
                    if name == "smtp-submission":
                        client.starttls(context=context)
                        address, *_, password, _ = DEMO_USERS[0]
                        client.login(address, password)
                print(f"{name} {address} answered", flush=True)
    finally:
        code = box.stop()
    assert code == 0, f"edgebox exited with {code}"
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
