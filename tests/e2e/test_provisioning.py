"""An unprovisioned box as a technician meets it: `edgebox run` on an empty directory.

It serves only the setup path over HTTPS (no mail port), takes the setup code from the
console, slows then refuses a source that guesses, provisions and starts every
service without a restart, then takes mail (smtplib); setup is refused afterwards.
`edgebox factory-reset` brings it back unprovisioned with the same box id and a new
setup code.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.harness import EDGEBOX, RunningBox, edgebox, require_tool, start_box, stored

pytestmark = pytest.mark.slow

DOMAIN = "setup.go.th"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "setup-first-2569"  # smtplib sends AUTH PLAIN as ASCII only
#: The guard, quick: three wrong codes and the source is refused (docs/provisioning.md).
GUARD_ENV = {"EDGEBOX_AUTH_SOURCE_LIMIT": "3", "EDGEBOX_AUTH_DELAY": "0.05"}


def setup_request(
    box: RunningBox, method: str, path: str, body: Any = None, *, source: str = "127.0.0.1"
) -> tuple[int, Any]:
    """One request to the box's HTTPS port with curl from *source*, trusting only the
    device certificate (what the unprovisioned box presents) or the agency CA."""
    device_cert = box.data / "device" / "device.pem"
    ca = box.ca if box.ca.exists() else device_cert
    args = [require_tool("curl"), "-sS", "--cacert", str(ca), "--interface", source,
            "-X", method, "-o", "-", "-w", "\n%{http_code}",
            f"https://localhost:{box.port('https')}{path}"]  # fmt: skip
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    done = subprocess.run(args, capture_output=True, timeout=60, check=True)
    text, _, status = done.stdout.decode().rpartition("\n")
    try:
        parsed = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        parsed = text
    return int(status), parsed


def console_value(box: RunningBox, label: str) -> str:
    lines = [line for line in box.output if line.startswith(label + ": ")]
    assert lines, box.output
    return lines[-1].split(": ", 1)[1]


def wait_for_line(box: RunningBox, line: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for seen in box.output if seen.strip() == line) < count:
        assert box.process.poll() is None, "\n".join(box.output)
        assert time.monotonic() < deadline, "\n".join(box.output)
        time.sleep(0.1)


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def provision_body(code: str) -> dict[str, Any]:
    return {
        "setup_code": code,
        "domain": DOMAIN,
        "agency_name_th": "สำนักงานตั้งค่า",
        "agency_name_en": "Setup Office",
        "admin": {"address": ADMIN, "name_th": "ผู้ดูแล ระบบ", "password": PASSWORD},
    }


def test_unprovisioned_box_is_set_up_with_the_code_then_takes_mail(tmp_path: Path) -> None:
    data = tmp_path / "blank"
    box = start_box(data, env=GUARD_ENV)
    try:
        # Only the setup path: no mail or chat port.
        assert set(box.listeners) == {"https"}, box.output
        for service in ("smtp-mx", "smtp-submission", "smtp-submissions", "imap", "imaps"):
            assert port_closed(box.port(service)), service
        code = console_value(box, "setup code")
        assert re.fullmatch(r"[A-Z0-9]{5}-[A-Z0-9]{5}", code)
        status, state = setup_request(box, "GET", "/api/v1/setup")
        assert status == 200
        assert state["state"] == "unprovisioned"
        assert state["fingerprint"] == console_value(box, "certificate fingerprint")
        status, page = setup_request(box, "GET", "/setup")
        assert status == 200
        assert "ยังไม่ได้ตั้งค่า" in page
        assert setup_request(box, "GET", "/")[0] == 303
        status_out = edgebox("status", "--data", str(data), check=False)
        assert status_out.returncode == 0, status_out.stdout + status_out.stderr
        assert "unprovisioned: serves the setup path" in status_out.stdout
        assert f"[ok   ] https: listening on 127.0.0.1:{box.port('https')}" in status_out.stdout
        # A second box on the same blank directory would discard what this one is
        # provisioning: refused before it touches anything.
        second = subprocess.run(
            [*EDGEBOX, "run", "--data", str(data), "--port-offset", str(box.offset + 5)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert "a box is running" in second.stderr

        # A guesser: refused outright after three wrong codes, even with the right one.
        for _ in range(3):
            assert setup_request(box, "POST", "/api/v1/setup/provision",
                                 provision_body("AAAAA-AAAAA"))[0] == 403  # fmt: skip
        status, refused = setup_request(box, "POST", "/api/v1/setup/provision",
                                        provision_body(code))  # fmt: skip
        assert status == 429, refused
        assert refused["error"]["code"] == "too_many_attempts"
        assert setup_request(box, "GET", "/api/v1/setup")[1]["state"] == "unprovisioned"

        # The technician, from another address, with the code from the console.
        status, done = setup_request(box, "POST", "/api/v1/setup/provision",
                                     provision_body(code.lower()), source="127.0.0.2")  # fmt: skip
        assert status == 200, done
        assert done["state"] == "provisioned"
        assert done["domain"] == DOMAIN
        wait_for_line(box, "ready", 2)
        assert "provisioned; starting every service" in box.output

        # The switch needed no restart: the same process now takes mail.
        context = ssl.create_default_context(cafile=str(box.ca))
        with smtplib.SMTP_SSL("localhost", box.port("smtp-submissions"), context=context,
                              timeout=30) as smtp:  # fmt: skip
            smtp.login(ADMIN, PASSWORD)
            smtp.sendmail(ADMIN, [ADMIN], f"From: {ADMIN}\r\nTo: {ADMIN}\r\nSubject: first"
                          "\r\n\r\nthe box works\r\n".encode())  # fmt: skip
        # The agency's certificate serves HTTPS now; setup is refused for good.
        status, again = setup_request(box, "POST", "/api/v1/setup/provision",
                                      provision_body(code), source="127.0.0.3")  # fmt: skip
        assert status == 403
        assert again["error"]["code"] == "already_provisioned"
        assert setup_request(box, "GET", "/setup")[0] == 403

        # A running box cannot be reset from the CLI underneath itself.
        busy = edgebox("factory-reset", "--data", str(data), "--yes", check=False)
        assert busy.returncode == 1
        assert "a box is running" in busy.stderr
    finally:
        assert box.stop() == 0
    messages = trio.run(stored, data, ADMIN)
    assert any(b"the box works" in content for _, content in messages)

    # Factory reset: typed confirmation needs a terminal; --yes does it.
    unconfirmed = edgebox("factory-reset", "--data", str(data), check=False)
    assert unconfirmed.returncode == 1
    assert "--yes" in unconfirmed.stderr
    box_id = json.loads((data / "device" / "identity.json").read_text())["box_id"]
    reset = edgebox("factory-reset", "--data", str(data), "--yes")
    assert box_id in reset.stdout

    again_box = start_box(data, env=GUARD_ENV)
    try:
        assert set(again_box.listeners) == {"https"}
        assert port_closed(again_box.port("smtp-submissions"))
        assert box_id in "\n".join(again_box.output)
        new_code = console_value(again_box, "setup code")
        assert new_code != code
        status, old = setup_request(again_box, "POST", "/api/v1/setup/provision",
                                    provision_body(code), source="127.0.0.4")  # fmt: skip
        assert status == 403
        assert old["error"]["code"] == "wrong_setup_code"
        status, _ = setup_request(again_box, "POST", "/api/v1/setup/provision",
                                  provision_body(new_code), source="127.0.0.4")  # fmt: skip
        assert status == 200
        wait_for_line(again_box, "ready", 2)
    finally:
        assert again_box.stop() == 0
    # The mail from before the reset is gone with its agency.
    assert trio.run(stored, data, ADMIN) == []


def test_admin_console_reset_brings_the_running_box_back_to_setup(tmp_path: Path) -> None:
    from appliance.web.csrf import csrf_token_for

    data = tmp_path / "box"
    box = start_box(data, env=GUARD_ENV)
    try:
        first_code = console_value(box, "setup code")
        status, _ = setup_request(box, "POST", "/api/v1/setup/provision",
                                  provision_body(first_code))  # fmt: skip
        assert status == 200
        wait_for_line(box, "ready", 2)
        status, session = setup_request(box, "POST", "/api/v1/session",
                                        {"address": ADMIN, "password": PASSWORD})  # fmt: skip
        assert status == 201, session
        token = session["token"]
        short = json.loads((data / "device" / "identity.json").read_text())["box_id"][:6]
        origin = f"https://localhost:{box.port('https')}"
        form = ["-d", f"csrf_token={csrf_token_for(token)}", "-d", f"confirm={short}",
                "-d", f"password={PASSWORD}"]  # fmt: skip
        done = subprocess.run(
            [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-o", "-",
             "-w", "\n%{http_code}", "-H", f"Cookie: edgebox_session={token}",
             "-H", f"Origin: {origin}", *form, f"{origin}/admin/factory-reset"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert done.stdout.endswith("\n200"), done.stdout[-500:]
        assert 'data-testid="reset-started"' in done.stdout

        # The same process stops every service, erases, and serves setup again.
        wait_for_line(box, "factory reset done; the box is unprovisioned", 1)
        wait_for_line(box, "ready", 3)
        assert not (data / "keys").exists()
        assert port_closed(box.port("smtp-submissions"))
        status, state = setup_request(box, "GET", "/api/v1/setup")
        assert status == 200
        assert state["state"] == "unprovisioned"
        new_code = console_value(box, "setup code")
        assert new_code != first_code
        status, _ = setup_request(box, "POST", "/api/v1/setup/provision",
                                  provision_body(new_code))  # fmt: skip
        assert status == 200
        wait_for_line(box, "ready", 4)
    finally:
        assert box.stop() == 0
