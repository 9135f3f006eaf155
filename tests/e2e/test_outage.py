"""The outage scenario, end to end (issue 5): real processes, a real cut, convergence.

A hub (the central chat peer and, here, the central mail server), box A of a.go.th and
box B of b.go.th, each enrolled with a one-time token. Every connection from A to the
centre goes through fault-injecting proxies (tests/faults). With A's uplink cut, A's
people go on mailing each other and chatting, mail from A to B waits in A's queue, and B
chats on. When the link comes back everything converges: the mail reaches B once, the
most urgent first, and the inter-agency room shows the same messages in the same order
on A, B and the hub. The same network with a flapping link and killed processes is
tests/e2e/test_outage_flapping.py (a file of its own, so the two pytest workers share
the two long scenarios).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.uplink import (
    FAST,
    PASSWORDS,
    enrol,
    inbox_subjects,
    post,
    room_texts,
    sign_in,
    submit,
    wait_for,
)
from tests.faults.proxy import ProxyProcess
from tests.harness import RunningBox, curl, edgebox, init_box, start_box

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def uplink_of(hub: RunningBox) -> Iterator[tuple[list[ProxyProcess], dict[str, str]]]:
    """Proxies for one box's three roads to the centre, and the settings that use them."""
    with (
        ProxyProcess(("127.0.0.1", hub.port("hub-sync"))) as sync,
        ProxyProcess(("127.0.0.1", hub.port("smtp-submission"))) as smtp,
        ProxyProcess(("127.0.0.1", hub.port("imaps"))) as imap,
    ):
        settings = {
            "EDGEBOX_HUB_URL": f"https://127.0.0.1:{sync.port}",
            "EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{smtp.port}",
            "EDGEBOX_CENTRAL_IMAP": f"imaps://127.0.0.1:{imap.port}",
        }
        yield [sync, smtp, imap], settings


class Network:
    """The hub, box A behind its proxies and box B, running; A can be killed and restarted."""

    def __init__(self, hub: RunningBox, a: RunningBox, b: RunningBox,
                 proxies: list[ProxyProcess], a_env: dict[str, str]) -> None:  # fmt: skip
        self.hub, self.a, self.b, self.proxies, self.a_env = hub, a, b, proxies, a_env
        self.stopped: list[RunningBox] = []

    def kill_and_restart_a(self) -> None:
        self.a.kill()
        self.stopped.append(self.a)
        self.a = start_box(self.a.data, offset=self.a.offset, env=self.a_env)

    def kill_and_restart_hub(self) -> None:
        self.hub.kill()
        self.stopped.append(self.hub)
        self.hub = start_box(self.hub.data, offset=self.hub.offset, extra=["--role", "hub"],
                             env=FAST)  # fmt: skip

    def rss(self) -> dict[str, int]:
        """Resident memory of each running process, in bytes."""
        return {
            name: psutil.Process(box.process.pid).memory_info().rss
            for name, box in (("hub", self.hub), ("a", self.a), ("b", self.b))
        }

    def set_uplink(self, action: Callable[[ProxyProcess], object]) -> None:
        for proxy in self.proxies:
            action(proxy)


@contextlib.contextmanager
def network(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Network]:
    """Start the hub, box A behind its proxies and box B, each with FAST and *env*."""
    fast = {**FAST, **(env or {})}
    hub_data, a_data, b_data = tmp_path / "hub", tmp_path / "a", tmp_path / "b"
    init_box(hub_data, "hub.go.th", {})
    init_box(a_data, "a.go.th", {k: v for k, v in PASSWORDS.items() if k.endswith("a.go.th")})
    init_box(b_data, "b.go.th", {"dara@b.go.th": PASSWORDS["dara@b.go.th"]})
    hub = start_box(hub_data, extra=["--role", "hub"], env=fast)
    running: list[RunningBox] = [hub]
    net: Network | None = None
    try:
        enrol(hub, hub_data, a_data, "a.go.th")
        enrol(hub, hub_data, b_data, "b.go.th")
        with uplink_of(hub) as (proxies, settings):
            a_env = {**fast, **settings}
            running.append(start_box(a_data, env=a_env))
            running.append(start_box(b_data, env=fast))
            net = Network(hub, running[1], running[2], proxies, a_env)
            yield net
    finally:
        if net is not None:
            running[0], running[1] = net.hub, net.a
        for box in [*reversed(running), *(net.stopped if net else [])]:
            box.stop()
            # Shown by pytest only when the test fails: what each process said.
            print(f"--- {box.data.name} ---", *box.output[-60:], sep="\n")


def inter_agency_room(net: Network) -> tuple[str, str, str]:
    """Open a room on A with B's dara once the directory has travelled; return
    (room id, somchai's token on A, dara's token on B)."""
    somchai, dara = sign_in(net.a, "somchai@a.go.th"), sign_in(net.b, "dara@b.go.th")

    def room_made() -> str | None:
        status, room = curl(net.a, "POST", "/api/v1/rooms",
                            {"kind": "group", "name": "ประสานงาน ก-ข",
                             "members": ["dara@b.go.th"]}, token=somchai)  # fmt: skip
        return str(room["id"]) if status == 201 else None

    return wait_for("dara@b.go.th in A's directory", room_made), somchai, dara


def test_a_cut_box_keeps_serving_and_everything_converges(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        run_scenario(net)


def run_scenario(net: Network) -> None:
    a, b = net.a, net.b
    # The directory travelled: A can open a room with B's people.
    room_id, somchai, dara = inter_agency_room(net)
    post(a, somchai, room_id, "ก่อนตัด")
    wait_for("the room on B", lambda: "ก่อนตัด" in room_texts(b, dara, room_id))

    # --- cut A's uplink ---------------------------------------------------------------
    net.set_uplink(lambda proxy: proxy.control.cut())
    wait_for("A to see GIN down", lambda: "gin: down" in edgebox("status", "--data", str(a.data),
                                                               check=False).stdout)  # fmt: skip

    submit(a, "somchai@a.go.th", "dara@b.go.th", "ปกติ ระหว่างตัด")
    submit(a, "somchai@a.go.th", "dara@b.go.th", "ด่วนที่สุด ระหว่างตัด", urgency="ด่วนที่สุด")
    submit(a, "somchai@a.go.th", "malee@a.go.th", "ในสำนักงาน")
    # Local mail and chat go on as before.
    assert wait_for("local mail on A", lambda: inbox_subjects(a, "malee@a.go.th")) == ["ในสำนักงาน"]
    for n in range(3):
        post(a, somchai, room_id, f"ก ระหว่างตัด {n}")
        post(b, dara, room_id, f"ข ระหว่างตัด {n}")
    status_text = edgebox("status", "--data", str(a.data), check=False).stdout
    assert "(total 2)" in status_text, status_text
    assert "ก ระหว่างตัด 0" not in room_texts(b, dara, room_id)

    # --- restore ----------------------------------------------------------------------
    net.set_uplink(lambda proxy: proxy.control.restore())

    def both_mails() -> list[str] | None:
        subjects = inbox_subjects(b, "dara@b.go.th")
        return subjects if len(subjects) >= 2 else None

    arrived = wait_for("A's mail in dara's INBOX on B", both_mails)
    assert arrived == ["ด่วนที่สุด ระหว่างตัด", "ปกติ ระหว่างตัด"]  # most urgent first, once

    def same_everywhere() -> list[str] | None:
        on_a = room_texts(a, somchai, room_id)
        on_b = room_texts(b, dara, room_id)
        return on_a if on_a == on_b and len(on_a) == 7 else None

    history = wait_for("one room history on A and B", same_everywhere)
    assert sorted(history) == sorted(
        ["ก่อนตัด"] + [f"ก ระหว่างตัด {n}" for n in range(3)] + [f"ข ระหว่างตัด {n}" for n in range(3)]
    )
    assert len(set(history)) == len(history)  # nothing twice
    # Nothing more arrives later: the queue is empty and no copy follows.
    time.sleep(5)
    assert inbox_subjects(b, "dara@b.go.th") == arrived
    assert "(total 0)" in edgebox("status", "--data", str(a.data), check=False).stdout
