"""Message lists: one page of rows, built from the database row and the message's header.

A list shows 50 messages whatever the folder's size, and reads for each only what it
shows: the row (flags, size, date, classification, urgency) from one indexed query,
and sender, subject and the attachment marker from the *first* encrypted chunk of the
message (1 MiB, `BlobStore.CHUNK_SIZE`), never the whole message. A header is far
smaller than a chunk; a first chunk cut inside a multipart still shows whether there
are attachments, or the message is so big that it has one.

Blobs never change (they are named by their content), so what was read from one is
kept in a small in-memory cache: paging back and forth decrypts nothing twice.

What this is not: the reading view (reading.py) or the page around the list (pages.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from appliance.compliance.classification import Classification, Urgency
from appliance.mail import mime
from appliance.mail.mailstore import StoredMessage
from appliance.mail.webmail import reading
from appliance.mail.webmail.reading import Address
from appliance.store.blobs import CHUNK_SIZE, BlobCorrupt, BlobMissing, BlobStore

PAGE_SIZE: Final = 50

_CLASSIFICATION_EN: Final = {
    Classification.CONFIDENTIAL: "Confidential",
    Classification.SECRET: "Secret",
    Classification.TOP_SECRET: "Top secret",
}
_URGENCY_EN: Final = {
    Urgency.URGENT: "Urgent",
    Urgency.VERY_URGENT: "Very urgent",
    Urgency.MOST_URGENT: "Most urgent",
}


@dataclass(frozen=True)
class Summary:
    """What a list shows of a message's content."""

    subject: str
    sender: tuple[Address, ...]
    recipients: tuple[Address, ...]
    attachment: bool


UNREADABLE: Final = Summary("", (), (), False)


@dataclass(frozen=True)
class Badge:
    """A classification (ชั้นความลับ) or urgency (ชั้นความเร็ว) mark, in both languages."""

    kind: str  # "classification" or "urgency"
    level: int
    thai: str
    english: str


def badges(classification: int, urgency: int) -> tuple[Badge, ...]:
    """Badges for a message's levels; the lowest levels show none."""
    shown = []
    if urgency in Urgency._value2member_map_ and urgency > Urgency.NORMAL:
        level = Urgency(urgency)
        shown.append(Badge("urgency", level, level.thai, _URGENCY_EN[level]))
    if classification in Classification._value2member_map_ and classification:
        secrecy = Classification(classification)
        shown.append(Badge("classification", secrecy, secrecy.thai, _CLASSIFICATION_EN[secrecy]))
    return tuple(shown)


@dataclass(frozen=True)
class Row:
    """One line of a message list."""

    uid: int
    folder: str
    subject: str
    sender: tuple[Address, ...]
    recipients: tuple[Address, ...]
    internal_date: int
    size: int
    unread: bool
    flagged: bool
    answered: bool
    attachment: bool
    badges: tuple[Badge, ...]

    @property
    def ref(self) -> str:
        """``folder/uid``: how compose links name a message."""
        return f"{self.folder}/{self.uid}"


def summarise(first_chunk: bytes, *, truncated: bool) -> Summary:
    """Read subject, sender, recipients and the attachment marker from a message's start."""
    fields = reading.header_values(first_chunk)
    envelope = mime.envelope(first_chunk)
    root = mime.parse(first_chunk)
    attachment = bool(reading.structure(root).attachments)
    if truncated and root.type == "multipart" and root.subtype == "mixed":
        attachment = True  # the parts past the first MiB are attachments, not text
    return Summary(
        subject=fields.get("subject", ""),
        sender=reading.addresses(envelope[2]),
        recipients=reading.addresses(envelope[5]) + reading.addresses(envelope[6]),
        attachment=attachment,
    )


def read_summary(blobs: BlobStore, blob_id: str) -> Summary:
    """Decrypt only the first chunk of a blob and summarise it (run in a worker thread)."""
    try:
        pieces = blobs.iter_plaintext(blob_id)
        try:
            first = next(pieces, b"")
        finally:
            if isinstance(pieces, Generator):
                pieces.close()
    except (BlobMissing, BlobCorrupt):
        return UNREADABLE
    # A full first chunk may have more after it; not decrypting the next tells no more.
    return summarise(first, truncated=len(first) >= CHUNK_SIZE)


class Summaries:
    """Summaries of blobs, read in a worker thread and remembered (blobs never change)."""

    CAPACITY: Final = 5000

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._cache: OrderedDict[str, Summary] = OrderedDict()
        #: Blobs decrypted so far (tests check a page reads only its own rows).
        self.reads = 0

    async def of(self, blob_ids: Sequence[str]) -> dict[str, Summary]:
        result: dict[str, Summary] = {}
        for blob_id in blob_ids:
            if blob_id in self._cache:
                self._cache.move_to_end(blob_id)
                result[blob_id] = self._cache[blob_id]
        missing = [blob_id for blob_id in dict.fromkeys(blob_ids) if blob_id not in result]
        if missing:
            found = await trio.to_thread.run_sync(
                lambda: [(blob_id, read_summary(self.blobs, blob_id)) for blob_id in missing]
            )
            self.reads += len(missing)
            for blob_id, summary in found:
                result[blob_id] = self._cache[blob_id] = summary
            while len(self._cache) > self.CAPACITY:
                self._cache.popitem(last=False)
        return result

    async def rows(self, folder: str, messages: Sequence[StoredMessage]) -> list[Row]:
        """List rows for *messages*, in the order given."""
        summaries = await self.of([m.blob_id for m in messages])
        rows = []
        for message in messages:
            summary = summaries[message.blob_id]
            flags = {flag.lower() for flag in message.flags}
            rows.append(
                Row(
                    uid=message.uid,
                    folder=folder,
                    subject=summary.subject,
                    sender=summary.sender,
                    recipients=summary.recipients,
                    internal_date=message.internal_date,
                    size=message.size,
                    unread="\\seen" not in flags,
                    flagged="\\flagged" in flags,
                    answered="\\answered" in flags,
                    attachment=summary.attachment,
                    badges=badges(message.classification, message.urgency),
                )
            )
        return rows
