"""The supervisor: fail fast at start, restart a service that crashes later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance import supervisor as supervisor_module
from appliance.supervisor import COLLECT_EVERY, Supervisor


class Flaky:
    """Starts, then crashes the first *crashes* times it runs."""

    def __init__(self, name: str, crashes: int) -> None:
        self.name = name
        self.crashes = crashes
        self.starts = 0
        self.running = trio.Event()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.starts += 1
        task_status.started([f"127.0.0.1:{1000 + self.starts}"])
        if self.starts <= self.crashes:
            raise RuntimeError("boom")
        self.running.set()
        await trio.sleep_forever()


class Broken:
    name = "broken"

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        raise OSError(98, "smtp-mx cannot listen on 127.0.0.1:2525: Address already in use")


async def test_crashed_service_is_restarted_with_backoff(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky("flaky", crashes=3)
    steady = Flaky("steady", crashes=0)
    supervisor = Supervisor([flaky, steady], tmp_path / "run" / "status.json")
    ready: list[dict[str, list[str]]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, ready.append)
        start = trio.current_time()
        await flaky.running.wait()
        # Back-off doubles: 1 + 2 + 4 seconds before the fourth start.
        assert trio.current_time() - start == pytest.approx(7, abs=0.01)
        assert flaky.starts == 4
        assert steady.starts == 1, "a crash elsewhere must not restart healthy services"
        assert supervisor.restarts == {"flaky": 3}
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["services"] == {"flaky": ["127.0.0.1:1001"], "steady": ["127.0.0.1:1001"]}
        assert ready == [status["services"]]
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "run" / "status.json").exists(), "a clean stop removes the status file"


async def test_a_service_that_cannot_start_stops_everything(tmp_path: Path) -> None:
    steady = Flaky("steady", crashes=0)
    supervisor = Supervisor([steady, Broken()], tmp_path / "status.json")
    # The error comes out of nested nurseries; the CLI unwraps it for the operator.
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, match="Address already in use"), flatten_subgroups=True
    ):
        await supervisor.run()
    assert not (tmp_path / "status.json").exists()


async def test_start_up_is_frozen_then_garbage_is_collected_once_a_minute(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float]] = []

    def collect() -> int:
        calls.append(("collect", trio.current_time()))
        return 0

    def freeze() -> None:
        calls.append(("freeze", trio.current_time()))

    monkeypatch.setattr(supervisor_module.gc, "collect", collect)
    monkeypatch.setattr(supervisor_module.gc, "freeze", freeze)
    supervisor = Supervisor([Flaky("steady", crashes=0)], tmp_path / "status.json")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        start = trio.current_time()
        await trio.sleep(3 * COLLECT_EVERY + 1)
        nursery.cancel_scope.cancel()
    # Once every service is up: collect, then freeze what is left; then once a minute.
    assert [(what, round(t - start)) for what, t in calls] == [
        ("collect", 0),
        ("freeze", 0),
        ("collect", 60),
        ("collect", 120),
        ("collect", 180),
    ]


async def test_the_health_check_sees_a_crashed_service_and_its_restarts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky("flaky", crashes=2)
    status_file = tmp_path / "run" / "status.json"
    supervisor = Supervisor([flaky, Flaky("steady", crashes=0)], status_file)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        # The first crash comes at once; the restart waits 1 s of back-off.
        await trio.sleep(0.5)
        down = supervisor.service_states()["flaky"]
        assert not down.running
        assert down.last_error == "RuntimeError: boom"
        written = json.loads(status_file.read_text())["states"]["flaky"]
        assert written == {"running": False, "restarts": 1, "last_error": "RuntimeError: boom"}
        await flaky.running.wait()
        await trio.testing.wait_all_tasks_blocked()  # the supervisor's side of the start
        up = supervisor.service_states()["flaky"]
        assert up.running
        assert up.restarts == 2
        assert json.loads(status_file.read_text())["states"]["flaky"]["running"] is True
        assert supervisor.service_states()["steady"].running
        nursery.cancel_scope.cancel()
