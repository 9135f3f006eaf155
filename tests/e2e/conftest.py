"""`start_running_box`: the one way an end-to-end module gets its `edgebox run`.

A module's `box` fixture states only what its box differs in — the agency and its
people, the environment an operator would set, a demo box — and this factory makes the
data directory, starts the box (tests/harness.py `start_box`) and stops it when the
module is done, checking that it exited cleanly:

    @pytest.fixture(scope="module")
    def box(start_running_box: BoxStarter) -> RunningBox:
        return start_running_box("limits", "limits.go.th", USERS, env={...})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import RunningBox, init_box, start_box

#: ``start_running_box(name, domain=None, users=None, *, env=None, demo=False,
#: prepare=None, clean_exit=True)`` (`start_running_box`).
BoxStarter = Callable[..., RunningBox]


@pytest.fixture(scope="module")
def start_running_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxStarter]:
    """Start boxes for one module; each is stopped when the module's tests are done.

    *domain* and *users* (address → password) are made with `edgebox init` and `edgebox
    user add`; *prepare* runs on the data directory after that, before the box starts
    (more `edgebox` commands). A *demo* box makes its own data directory. A box started
    with ``clean_exit=True`` must exit 0 on SIGTERM.
    """
    started: list[tuple[RunningBox, bool]] = []

    def start(
        name: str,
        domain: str | None = None,
        users: dict[str, str] | None = None,
        *,
        env: dict[str, str] | None = None,
        demo: bool = False,
        prepare: Callable[[Path], object] | None = None,
        clean_exit: bool = True,
    ) -> RunningBox:
        data = tmp_path_factory.mktemp(name) / "data"
        if domain is not None:
            init_box(data, domain, users or {})
        if prepare is not None:
            prepare(data)
        box = start_box(data, demo=demo, env=env)
        started.append((box, clean_exit))
        return box

    yield start
    codes = []
    for box, clean_exit in started:
        code = box.stop()
        if clean_exit:
            codes.append(code)
    assert codes == [0] * len(codes), f"a box exited uncleanly: {codes}"
