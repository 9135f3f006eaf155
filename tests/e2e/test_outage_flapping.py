"""A flapping link and killed processes on the outage network (tests/e2e/test_outage.py).

The hub, box A behind its fault-injecting proxies and box B, as in the outage scenario.
A's link flaps (up 2 s, down 2 s) for over a minute while both sides mail and chat;
box A and the hub are each SIGKILLed twice mid-sync; every process's memory stays
bounded and everything converges: each mail once, one room history on A and B.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.test_outage import inter_agency_room, network
from tests.e2e.uplink import SETTLE, inbox_subjects, post, room_texts, sign_in, submit, wait_for
from tests.faults.proxy import Flap

pytestmark = pytest.mark.slow

#: The flapping phase: rounds of work, each ending with a short pause; bounded in count.
FLAP_ROUNDS = 40
#: Peak resident memory allowed for any process (REQUIREMENTS.md: the box has 2 GB
#: for everything; the catch-up target is 300 MB).
RSS_LIMIT = 300 * 1024 * 1024


def test_a_flapping_link_and_killed_processes_converge(tmp_path: Path) -> None:
    """Up 2 s, down 2 s for over a minute while both sides work; box A and the hub are
    each SIGKILLed twice mid-sync; memory stays bounded; everything converges."""
    with network(tmp_path) as net:
        room_id, somchai, dara = inter_agency_room(net)
        post(net.a, somchai, room_id, "เริ่ม")
        wait_for("the room on B", lambda: "เริ่ม" in room_texts(net.b, dara, room_id))
        net.set_uplink(lambda proxy: proxy.control.set(Flap(2, 2)))
        sent: list[str] = []
        peak: dict[str, int] = {}
        first = net.rss()
        for n in range(FLAP_ROUNDS):
            subject = f"สลับ {n}"
            submit(net.a, "somchai@a.go.th", "dara@b.go.th", subject,
                   urgency="ด่วน" if n % 3 == 0 else None)  # fmt: skip
            sent.append(subject)
            post(net.a, somchai, room_id, f"ก {n}")
            post(net.b, dara, room_id, f"ข {n}")
            if n in (10, 30):
                net.kill_and_restart_a()
                somchai = sign_in(net.a, "somchai@a.go.th")
            if n in (15, 25):
                net.kill_and_restart_hub()
            for name, rss in net.rss().items():
                peak[name] = max(peak.get(name, 0), rss)
            time.sleep(1.5)
        net.set_uplink(lambda proxy: proxy.control.restore())

        def all_mail() -> list[str] | None:
            subjects = inbox_subjects(net.b, "dara@b.go.th")
            return subjects if len(subjects) >= len(sent) else None

        arrived = wait_for("every mail on B", all_mail, timeout=SETTLE * 2)
        assert sorted(arrived) == sorted(sent)  # each once

        rounds = range(FLAP_ROUNDS)
        expected = sorted(["เริ่ม"] + [f"ก {n}" for n in rounds] + [f"ข {n}" for n in rounds])

        def converged() -> list[str] | None:
            on_a = room_texts(net.a, somchai, room_id)
            on_b = room_texts(net.b, dara, room_id)
            return on_a if on_a == on_b and sorted(on_a) == expected else None

        wait_for("one room history on A and B", converged, timeout=SETTLE * 2)
        print("RSS at the start of flapping (MB):", {k: v >> 20 for k, v in first.items()})
        print("peak RSS while flapping (MB):", {k: v >> 20 for k, v in peak.items()})
        assert all(rss < RSS_LIMIT for rss in peak.values()), peak
