"""The outbound queue's figures: one fold for the console, the uplink API and `edgebox status`."""

from __future__ import annotations

from appliance.directory import User
from appliance.directory.scope import AdminScope
from appliance.mail.outbound import QueueLevel, summarise_queue

GROUPS = [
    # urgency, sender, recipients waiting, oldest created_at
    (0, "a@a.go.th", 3, 300),
    (3, "b@b.go.th", 1, 100),
    (7, "a@a.go.th", 2, 200),  # beyond the known levels: counts as the most urgent
    (1, "", 4, 50),  # the null sender: a bounce
]


def test_every_level_is_listed_most_urgent_first() -> None:
    summary = summarise_queue(GROUPS)
    assert summary.levels == (
        QueueLevel(3, 3),
        QueueLevel(2, 0),
        QueueLevel(1, 4),
        QueueLevel(0, 3),
    )
    assert (summary.total, summary.oldest) == (10, 50)


def test_an_empty_queue() -> None:
    summary = summarise_queue([])
    assert (summary.total, summary.oldest) == (0, None)
    assert [level.count for level in summary.levels] == [0, 0, 0, 0]


def test_an_agency_admin_counts_only_their_own_senders() -> None:
    admin = User(
        id=1, address="admin@a.go.th", agency_domain="a.go.th", name_th="ผู้ดูแล", name_en=None,
        position=None, rank=0, unit=None, phone=None, disabled=False, quota_bytes=0,
    )  # fmt: skip
    agency = AdminScope(admin, frozenset({"a.go.th"}))
    summary = summarise_queue(GROUPS, agency.sees_sender)
    assert (summary.total, summary.oldest) == (5, 200)
    box_wide = AdminScope(admin, None)
    assert summarise_queue(GROUPS, box_wide.sees_sender) == summarise_queue(GROUPS)
