"""The setup wizard's forms over HTTPS with curl: the rules a browser test cannot break.

A real `edgebox run` on an empty directory. Without the claim (the setup code) no step
opens; a form without the page's CSRF token, or from another site's Origin, is refused;
the answers survive the box being stopped and started again (the draft is on disk), and
the step reached is where a new claim lands; a step cannot be skipped. And a
replacement box restored from another box's backup through the wizard's restore step.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from appliance.box import read_identity
from tests.e2e.test_provisioning import console_value, wait_for_line
from tests.harness import RunningBox, curl, edgebox, init_box, require_tool, start_box

pytestmark = pytest.mark.slow

DOMAIN = "forms.go.th"


class Curl:
    """curl with a cookie jar, as one browser: returns (status, Location, body)."""

    def __init__(self, box: RunningBox, jar: Path) -> None:
        self.base = f"https://localhost:{box.port('https')}"
        self.jar = jar
        self.csrf = ""

    def __call__(
        self, method: str, path: str, *, origin: str | None = "", **fields: str
    ) -> tuple[int, str, str]:
        args = [require_tool("curl"), "-sS", "-k", "-X", method, "-c", str(self.jar),
                "-b", str(self.jar), "-o", "-", "-w", "\n%{http_code} %{redirect_url}",
                self.base + path]  # fmt: skip
        if origin is not None:
            args += ["-H", f"Origin: {origin or self.base}"]
        for name, value in fields.items():
            args += ["--data-urlencode", f"{name}={value}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
        body, _, tail = done.stdout.rpartition("\n")
        status, _, location = tail.partition(" ")
        found = re.search(r'name="csrf_token" value="([^"]+)"', body)
        if found:
            self.csrf = found.group(1)
        return int(status), location.removeprefix(self.base), body

    def post(self, path: str, **fields: str) -> tuple[int, str, str]:
        return self("POST", path, csrf_token=self.csrf, **fields)


def test_claim_csrf_and_a_restart_in_the_middle(tmp_path: Path) -> None:
    data = tmp_path / "box"
    box = start_box(data)
    try:
        code = console_value(box, "setup code")
        stranger = Curl(box, tmp_path / "stranger")
        # No claim: every step and apply lead back to the claim page.
        assert stranger("GET", "/setup/agency")[:2] == (303, "/setup")
        assert stranger("POST", "/setup/agency", domain=DOMAIN)[:2] == (303, "/setup")
        assert stranger("POST", "/setup/apply")[:2] == (303, "/setup")
        assert stranger("GET", "/admin")[:2] == (303, "/setup")
        assert stranger("GET", "/api/v1/nothing")[0] == 404

        tech = Curl(box, tmp_path / "tech")
        # A form from another site (its Origin) is refused before anything is read.
        assert tech("POST", "/setup/claim", origin="https://evil.example", code=code)[0] == 403
        status, location, _ = tech("POST", "/setup/claim", code=code)
        assert (status, location) == (303, "/setup/language")
        tech("GET", "/setup/language")
        # The claim cookie is the session for the CSRF rule: a form without the page's
        # token is refused, with it saved.
        assert tech("POST", "/setup/language", lang="th")[0] == 403
        assert tech.post("/setup/language", lang="en")[:2] == (303, "/setup/agency")
        # A step further on than the next one does not open.
        assert tech("GET", "/setup/review")[:2] == (303, "/setup/agency")
        # A refused answer: 422, the field named, nothing saved.
        status, _, page = tech.post("/setup/agency", domain="no dots", name_th="x")
        assert status == 422
        assert 'aria-invalid="true"' in page
        assert tech.post("/setup/agency", domain=DOMAIN, name_th="สำนักงานแบบฟอร์ม")[0] == 303
    finally:
        assert box.stop() == 0

    # The box stopped in the middle (a power cut would do the same: the draft is
    # written atomically); the next start continues after a new claim.
    box = start_box(data, offset=box.offset)
    try:
        assert console_value(box, "setup code") == code  # the same code until set up
        again = Curl(box, tmp_path / "again")
        status, location, _ = again("POST", "/setup/claim", code=code)
        assert (status, location) == (303, "/setup/admin")
        _, _, page = again("GET", "/setup/agency")
        assert f'value="{DOMAIN}"' in page
        assert 'lang="en"' in page  # the language chosen before the stop
        # The first browser's claim still holds too (it is in the draft, hashed).
        assert tech("GET", "/setup")[:2] == (303, "/setup/admin")

        # A new domain after the admin was saved: the admin (in the old domain) is asked
        # again rather than refused at apply.
        admin = {"local": "admin", "name_th": "ผู้ดูแล", "password": "forms-pass-2569",
                 "password2": "forms-pass-2569"}  # fmt: skip
        again("GET", "/setup/admin")
        assert again.post("/setup/admin", **admin)[:2] == (303, "/setup/network")
        draft = data / "device" / "wizard.json"
        assert "admin@forms.go.th" in draft.read_text()
        assert b"forms-pass-2569" not in draft.read_bytes()  # only its hash
        again.post("/setup/agency", domain="other.go.th", name_th="สำนักงานอื่น")
        assert '"admin"' not in draft.read_text()

        # The admin step passed empty (as for a restore), the rest answered: apply
        # does not run without a first admin or a backup, and says which step is open.
        assert again.post("/setup/admin", skip="1")[:2] == (303, "/setup/network")
        again("GET", "/setup/network")
        again.post("/setup/network", mode="dhcp", hostname="forms-box")
        again.post("/setup/time", timezone="Asia/Bangkok")
        again.post("/setup/uplink", mode="standalone")
        assert again.post("/setup/restore", mode="new")[:2] == (303, "/setup/review")
        _, _, review = again("GET", "/setup/review")
        assert 'href="/setup/admin"' in review
        assert "disabled" in review
        assert again.post("/setup/apply")[:2] == (303, "/setup/admin")
        assert read_identity(data) is None
    finally:
        assert box.stop() == 0


def test_a_replacement_box_restored_from_a_backup_by_the_wizard(tmp_path: Path) -> None:
    old, usb = tmp_path / "old", tmp_path / "usb"
    init_box(old, "restore.go.th", {"somchai@restore.go.th": "somchai-pass-2569"})
    edgebox("backup", "create", "--data", str(old), "--to", str(usb))
    words = edgebox("backup", "key", "--data", str(old)).stdout.strip().splitlines()[-1]

    box = start_box(tmp_path / "new")
    try:
        tech = Curl(box, tmp_path / "tech")
        tech("POST", "/setup/claim", code=console_value(box, "setup code"))
        tech("GET", "/setup/language")
        tech.post("/setup/language", lang="th")
        assert tech.post("/setup/agency", skip="1")[:2] == (303, "/setup/admin")
        tech.post("/setup/admin", skip="1")
        tech.post("/setup/network", mode="dhcp", hostname="restored-box")
        tech.post("/setup/time")
        tech.post("/setup/uplink", mode="standalone")
        # A wrong key is caught at the step, before apply.
        status, _, page = tech.post("/setup/restore", mode="restore", source=str(usb),
                                    key="0000 " * 16)  # fmt: skip
        assert status == 422, page
        assert tech.post("/setup/restore", mode="restore", source=str(usb), key=words)[0] == 303
        # The draft kept only the key's fingerprint: review asks for the words again.
        assert tech.post("/setup/apply")[0] == 422
        status, _, page = tech.post("/setup/apply", key="0000 " * 16)
        assert status == 422, page
        draft = (box.data / "device" / "wizard.json").read_bytes()
        assert " ".join(words.split()[:2]).encode() not in draft
        status, _, done = tech.post("/setup/apply", key=words)
        assert status == 200, done
        assert "restore.go.th" in done
        wait_for_line(box, "ready", 2)
        # The backup's people sign in on the replacement box.
        status, session = curl(box, "POST", "/api/v1/session", {
            "address": "somchai@restore.go.th", "password": "somchai-pass-2569", "client": "app",
        })  # fmt: skip
        assert status == 201, session
    finally:
        assert box.stop() == 0
