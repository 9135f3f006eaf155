"""The secret sweeper: a repeating failure is logged once, and its end is said."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from appliance.chat.secrets import SecretSweeper


class FlakyChat:
    """A chat store whose sweeps fail as scripted (an exception, or a count swept)."""

    def __init__(self, script: list[BaseException | int]) -> None:
        self.script = script
        self.sweeps = 0
        self.enough = len(script)
        self.done = trio.Event()

    async def sweep_secrets(self) -> int:
        if self.sweeps >= self.enough:
            self.done.set()
            await trio.sleep_forever()
        step = self.script[self.sweeps]
        self.sweeps += 1
        if isinstance(step, BaseException):
            raise step
        return step


async def run_sweeps(chat: FlakyChat) -> SecretSweeper:
    """Run the sweeper until it has swept the whole script."""
    sweeper = SecretSweeper(chat, interval=5.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(sweeper.serve)
        await chat.done.wait()
        nursery.cancel_scope.cancel()
    return sweeper


@pytest.mark.trio
async def test_the_same_failure_is_logged_once_and_recovery_is_said(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    down = ConnectionError("the hub's database is failing over")
    chat = FlakyChat([down, down, down, down, 2, 0])
    with caplog.at_level(logging.INFO, logger="edgebox.chat"):
        sweeper = await run_sweeps(chat)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert any("work again after 4 failures" in r.getMessage() for r in caplog.records)
    assert sweeper.swept == 2


@pytest.mark.trio
async def test_a_different_failure_is_logged_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    chat = FlakyChat([OSError("disk full"), OSError("disk full"), ConnectionError("gone"), 0])
    with caplog.at_level(logging.INFO, logger="edgebox.chat"):
        await run_sweeps(chat)
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [str(e) for e in failures] == ["disk full", "gone"]
