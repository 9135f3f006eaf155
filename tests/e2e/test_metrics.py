"""`/metrics` of a real `edgebox run`: counters move with real clients, the health
gauges are there, promtool accepts it, and it answers on loopback only."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import init_box, require_tool, start_box

pytestmark = pytest.mark.slow

DOMAIN = "metrics.go.th"
USER = f"ann@{DOMAIN}"
PASSWORD = "metrics-pass-2026"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        return str(reply.read().decode())


def test_a_running_box_counts_mail_and_imap_and_reports_its_health(tmp_path: Path) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, {USER: PASSWORD})
    box = start_box(data)
    try:
        [address] = box.listeners["metrics"]
        assert address == f"127.0.0.1:{box.port('metrics')}"
        with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30) as client:
            client.sendmail("x@far.go.th", [USER], b"Subject: m\r\n\r\nhello\r\n")
        context = ssl.create_default_context(cafile=str(box.ca))
        imap = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=30)
        imap.login(USER, PASSWORD)
        imap.select("INBOX")

        text = _scrape(box.port("metrics"))
        assert 'edgebox_smtp_messages_total{port="mx",result="accepted"} 1.0' in text
        assert 'edgebox_imap_sessions{listener="imaps"} 1.0' in text
        assert 'edgebox_imap_commands_total{command="SELECT"} 1.0' in text
        # The health monitor's first round runs at start-up.
        deadline = time.monotonic() + 30
        while "edgebox_data_volume_free_bytes" not in text and time.monotonic() < deadline:
            time.sleep(0.5)
            text = _scrape(box.port("metrics"))
        assert "edgebox_data_volume_free_bytes" in text
        assert 'edgebox_health_check_level{check="services",subject="smtp-mx"} 0.0' in text
        assert 'edgebox_link_up{link="gin"} -1.0' in text
        assert 'edgebox_process_resident_bytes{process="edgebox"}' in text
        imap.logout()

        checked = subprocess.run([require_tool("promtool"), "check", "metrics"],
                                 input=text.encode(), capture_output=True, timeout=60)  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        assert box.stop() == 0
