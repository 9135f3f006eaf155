"""Fixtures shared by the sync tests (tests/appliance/sync and its hub/ folder)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.appliance.sync.chatnet import Net, open_net


@pytest.fixture
async def net(tmp_path: Path, hub_store: str) -> AsyncIterator[Net]:
    """A hub and the edges of agencies A and B, with the default batch (chatnet.open_net).

    Once with the hub on SQLite and once on PostgreSQL (the ``hub_store`` fixture).
    """
    async with open_net(tmp_path, hub_database=hub_store) as opened:
        yield opened
