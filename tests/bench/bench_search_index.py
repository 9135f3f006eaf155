"""Search-index benchmark: index 100,000 synthetic Thai/English messages, then time searches.

Measures the encrypted trigram index (`appliance.mail.search_index`) on its own, without
IMAP: messages indexed per second, the index's size on disk, and the time of six
searches (a rare phrase, common Thai and English words, an address, and the 1-2
character scan path). Not part of `make test`:

    .venv/bin/python -m pytest tests/bench/bench_search_index.py -m bench -s
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from appliance.mail.search_index import open_search_index
from tests.appliance.mail.test_search_index import DATA_KEY, INBOX, _files, message
from tests.bench.common import commit

THAI_WORDS = [
    "การ",
    "ประชุม",
    "คณะ",
    "กรรมการ",
    "งบประมาณ",
    "ประจำ",
    "ปี",
    "หนังสือ",
    "เวียน",
    "ราชการ",
    "จังหวัด",
    "อำเภอ",
    "ตำบล",
    "โครงการ",
    "พัฒนา",
    "ชุมชน",
    "สาธารณสุข",
    "การศึกษา",
    "ระเบียบ",
    "กระทรวง",
    "มหาดไทย",
    "คำสั่ง",
    "แต่งตั้ง",
    "เจ้าหน้าที่",
    "ผู้อำนวยการ",
    "รายงาน",
    "ผล",
    "การดำเนินงาน",
    "ไตรมาส",
    "จัดซื้อ",
    "จัดจ้าง",
]
ENGLISH_WORDS = [
    "meeting",
    "budget",
    "report",
    "province",
    "district",
    "project",
    "office",
    "minister",
    "order",
    "staff",
    "agenda",
    "review",
    "annual",
    "quarter",
    "procurement",
    "schedule",
    "approval",
]


def _synthetic(rng: random.Random, n: int) -> bytes:
    words = [rng.choice(THAI_WORDS if rng.random() < 0.7 else ENGLISH_WORDS) for _ in range(8)]
    subject = "".join(words[:4]) + f" {n}"
    body_words: list[str] = []
    size = 0
    while size < 1800:
        word = rng.choice(THAI_WORDS if rng.random() < 0.7 else ENGLISH_WORDS)
        body_words.append(word)
        size += len(word.encode("utf-8")) + 1
    if n % 10_000 == 0:
        body_words.append("รหัสพิเศษหายาก")  # a rare phrase: 10 messages in 100,000
    return message(
        subject,
        "".join(w if rng.random() < 0.6 else w + " " for w in body_words),
        sender=f"เจ้าหน้าที่ {n % 500} <staff{n % 500}@province.go.th>",
    )


@pytest.mark.bench
@pytest.mark.timeout(3600)
async def test_bench_100k(tmp_path: Path) -> None:
    total, batch = 100_000, 2_000
    rng = random.Random(7)
    path = tmp_path / "search.sqlite"
    async with open_search_index(path, DATA_KEY) as index:
        started = time.perf_counter()
        for first in range(1, total + 1, batch):
            items = [(INBOX, uid, _synthetic(rng, uid)) for uid in range(first, first + batch)]
            await index.add_many(items)
        indexed = time.perf_counter() - started
        size = sum(f.stat().st_size for f in _files(path))
        print(f"\ncommit {commit()}: indexed {total} messages in {indexed:.1f} s "
              f"({total / indexed:.0f}/s)")  # fmt: skip
        print(f"index size {size / 2**20:.1f} MiB (db + wal)")
        for field, query in [
            ("BODY", "รหัสพิเศษหายาก"),
            ("SUBJECT", "งบประมาณ"),
            ("TEXT", "procurement"),
            ("FROM", "staff42@"),
            ("BODY", "กร"),
            ("SUBJECT", "ก"),
        ]:
            started = time.perf_counter()
            found = await index.search(INBOX, field, query)
            took = time.perf_counter() - started
            print(f"search {field} {query!r}: {len(found)} hits in {took * 1000:.0f} ms")
