"""Fixtures shared by the sync tests (tests/appliance/sync and its hub/ folder)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.appliance.sync.chatnet import Net, open_net


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    """A hub and the edges of agencies A and B, with the default batch (chatnet.open_net)."""
    async with open_net(tmp_path) as opened:
        yield opened
