"""Run inside a network namespace with only loopback: start the demo box, probe it.

Used by test_demo.py. Exits 0 only if `edgebox run --demo` came up from an empty data
directory and every address it printed answered with an SMTP greeting, and the demo
users from README.md can sign in.
"""

from __future__ import annotations

import imaplib
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
        expected = {"smtp-mx", "smtp-submission", "smtp-submissions", "imap", "imaps"}
        assert set(box.listeners) == expected, box.output
        context = ssl.create_default_context(cafile=str(box.ca))
        address, *_, password, _ = DEMO_USERS[0]
        for name, where in box.listeners.items():
            for listener in where:
                host, _, port = listener.rpartition(":")
                probe(name, host, int(port), context, address, password)
                print(f"{name} {listener} answered", flush=True)
    finally:
        code = box.stop()
    assert code == 0, f"edgebox exited with {code}"
    return 0


def probe(
    name: str, host: str, port: int, context: ssl.SSLContext, user: str, password: str
) -> None:
    """Speak to one listener as a client would, signing in where the port allows it."""
    if name.startswith("imap"):
        imap = (
            imaplib.IMAP4_SSL(host, port, ssl_context=context)
            if name == "imaps"
            else imaplib.IMAP4(host, port)
        )
        if name == "imap":
            imap.starttls(ssl_context=context)
        assert imap.login(user, password)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
        return
    client = (
        smtplib.SMTP_SSL(host, port, context=context)
        if name == "smtp-submissions"
        else smtplib.SMTP(host, port, timeout=10)
    )
    with client:
        code, banner = client.noop()
        assert code == 250, (name, code, banner)
        if name == "smtp-submission":
            client.starttls(context=context)
            client.login(user, password)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
