"""Enrolment end to end, as a technician does it: real `edgebox` processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubRefused
from tests.harness import edgebox, init_box, start_box

pytestmark = pytest.mark.slow


async def _ping(keys: Path, url: str) -> object:
    client = HubClient(keys, url, timeout=30)
    try:
        return await client("/sync/v1/ping", {})
    finally:
        await client.aclose()


def test_token_enroll_and_a_sync_call(tmp_path: Path) -> None:
    hub_data, box_data, other_data = tmp_path / "hub", tmp_path / "box", tmp_path / "other"
    init_box(hub_data, "hub.go.th", {})
    init_box(box_data, "moe.go.th", {"somchai@moe.go.th": "somchai-pass-1"})
    init_box(other_data, "moe.go.th", {})
    hub = start_box(hub_data, extra=["--role", "hub"])
    try:
        assert any(line.startswith("hub-sync listening on") for line in hub.output)
        # Made while the hub runs (the hub database is shared through WAL).
        issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", "MOE.go.th")
        token = issued.stdout.strip().splitlines()[-1]
        url = f"https://127.0.0.1:{hub.port('hub-sync')}"

        enrolled = edgebox("enroll", "--data", str(box_data), "--hub", url, "--token", token)
        assert "enrolled box" in enrolled.stdout
        settings = json.loads((box_data / "config.json").read_text())["config"]["1"]
        assert settings["hub_url"] == url
        assert settings["central_smtp"] == f"smtp://127.0.0.1:{hub.port('smtp-submission')}"
        assert settings["central_imap"] == f"imaps://127.0.0.1:{hub.port('imaps')}"

        answer = trio.run(_ping, box_data / "keys", url)
        box_id = json.loads((box_data / "config.json").read_text())["box"]["1"]["box_id"]
        assert answer == {"box_id": box_id, "domain": "moe.go.th"}

        # The same token a second time: refused, and nothing installed.
        again = edgebox(
            "enroll", "--data", str(other_data), "--hub", url, "--token", token, check=False
        )
        assert again.returncode == 1
        assert "already used" in again.stderr
        assert not (other_data / "keys" / "sync.pem").exists()

        listed = edgebox("hub", "boxes", "--data", str(hub_data))
        assert f"{box_id}\tmoe.go.th\tenrolled" in listed.stdout
        edgebox("hub", "revoke", "--data", str(hub_data), box_id)
        with pytest.raises(HubRefused, match="not_enrolled"):
            trio.run(_ping, box_data / "keys", url)
    finally:
        assert hub.stop() == 0
