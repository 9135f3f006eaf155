"""The search index reads queued messages in batches bounded by bytes (issue 21's memory).

The indexer hands the store up to 200 queued messages at a time; for 1 MiB messages
that was 200 MiB of bodies, and their extracted text, held at once. The store now
hands them to the index in transactions of at most `INDEX_BATCH_BYTES` (plus the one
message that crosses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest
import trio

from appliance.mail import mailstore as mailstore_module
from appliance.mail.delivery import Envelope, Recipient, Trace

if TYPE_CHECKING:
    from conftest import MailBox  # tests/appliance/mail/conftest.py

TRACE = Trace(helo="client.test.go.th", client_ip="127.0.0.1", protocol="ESMTP")
KiB = 1024


class RecordingIndex:
    """The search index's `add_many`, recording each transaction's messages."""

    def __init__(self) -> None:
        self.transactions: list[list[tuple[int, int, bytes]]] = []

    async def add_many(self, items: Iterable[tuple[int, int, bytes]]) -> None:
        self.transactions.append(list(items))


def large(number: int) -> bytes:
    return (
        f"From: somchai@test.go.th\r\nTo: user1@test.go.th\r\nSubject: large {number}\r\n"
        f"Message-ID: <large-{number}@test.go.th>\r\n\r\n".encode()
        + b"x" * 78 * KiB * 5
        + b"\r\n"
    )


async def test_queued_messages_are_indexed_in_transactions_bounded_by_bytes(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailstore_module, "INDEX_BATCH_BYTES", 1024 * KiB)
    index = RecordingIndex()
    box.mailstore.search = index  # type: ignore[assignment]
    send, receive = trio.open_memory_channel[tuple[int, int]](100)
    box.mailstore.index_queue = send
    owner = box.users[0]
    for number in range(6):
        envelope = Envelope("somchai@test.go.th", (Recipient(owner, local=True),), TRACE)
        await box.delivery.deliver(envelope, large(number))
    keys = [receive.receive_nowait() for _ in range(6)]
    await box.mailstore.index_queued(keys)
    indexed = [(m, u) for transaction in index.transactions for m, u, _ in transaction]
    assert sorted(indexed) == sorted(keys)
    # About 400 KiB each: three cross the 1 MiB mark, so two transactions of three.
    assert [len(t) for t in index.transactions] == [3, 3]
    for transaction in index.transactions:
        held = sum(len(content) for _, _, content in transaction)
        largest = max(len(content) for _, _, content in transaction)
        assert held < 1024 * KiB + largest
