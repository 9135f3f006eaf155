"""Run inside a network namespace with only loopback: start the demo box, probe it.

Used by test_demo.py. Exits 0 only if `edgebox run --demo` came up from an empty data
directory and every address it printed answered with an SMTP greeting, and the demo
users from README.md can sign in.
"""

from __future__ import annotations

import http.client
import imaplib
import json
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
        expected = {
            "smtp-mx",
            "smtp-submission",
            "smtp-submissions",
            "imap",
            "imaps",
            "https",
            "metrics",
        }
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
    if name == "https":
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        body = json.dumps({"address": user, "password": password})
        connection.request("POST", "/api/v1/session", body,
                           {"Content-Type": "application/json"})  # fmt: skip
        answer = connection.getresponse()
        assert answer.status == 201, (answer.status, answer.read())
        token = json.loads(answer.read())["token"]
        connection.request("GET", "/api/v1/rooms", headers={"Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        assert answer.status == 200, (answer.status, answer.read())
        answer.read()
        connection.close()
        return
    if name == "metrics":
        # Plain HTTP on loopback only (docs/health.md): a scraper's view.
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/metrics")
        answer = connection.getresponse()
        assert answer.status == 200, (answer.status, answer.read())
        assert b"edgebox_" in answer.read()
        connection.close()
        return
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
