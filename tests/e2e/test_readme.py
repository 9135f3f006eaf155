"""The README's shell examples, run as written, so that they stay true.

Each ```sh block of README.md after the first (the two set-up commands, which CI itself
runs as `make test`) is run with bash in a scratch folder. Blocks that talk to the demo box
(they name ``demo.go.th`` or ``var/keys``) run beside a real ``edgebox run --demo`` whose
data directory is ``./var`` there, as after ``make run``; the others (the hub and office
box by hand) run on their own. Every port the README names is moved by one offset so the
examples cannot meet a box a developer is running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunningBox, free_port_offset, require_tool, start_box

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"
VENV = Path(sys.executable).parent.parent


def shell_blocks() -> list[str]:
    """Return the README's ```sh blocks, in order."""
    return re.findall(r"^```sh\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def demo_blocks() -> list[str]:
    return [block for block in shell_blocks()[1:] if "demo.go.th" in block or "var/keys" in block]


def standalone_blocks() -> list[str]:
    return [block for block in shell_blocks()[1:] if block not in demo_blocks()]


def shifted(block: str, offset: int) -> str:
    """Move every port the block names (and every --port-offset) by *offset*."""
    block = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m[1]) + offset}", block)
    return re.sub(r"--port-offset (\d+)", lambda m: f"--port-offset {int(m[1]) + offset}", block)


def run_block(block: str, cwd: Path, offset: int) -> subprocess.CompletedProcess[str]:
    """Run *block* with bash -e in *cwd*; end whatever it left running in the background."""
    env = {
        **os.environ,
        # `. .venv/bin/activate` in the block finds the suite's own venv.
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        # A box the block starts without --port-offset gets the same shift.
        "EDGEBOX_PORT_OFFSET": str(offset),
    }
    (cwd / ".venv").symlink_to(VENV)
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", shifted(block, offset)],
        cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def test_the_readme_starts_with_the_two_commands() -> None:
    first = shell_blocks()[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert demo_blocks()
    assert standalone_blocks()


@pytest.fixture(scope="module")
def demo_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunningBox]]:
    folder = tmp_path_factory.mktemp("readme")
    box = start_box(folder / "var", demo=True, offset=free_port_offset())
    yield folder, box
    box.stop()


@pytest.mark.parametrize("index", range(len(demo_blocks())))
def test_demo_example(index: int, demo_box: tuple[Path, RunningBox], tmp_path: Path) -> None:
    folder, box = demo_box
    block = demo_blocks()[index]
    for tool in ("swaks", "curl"):
        if re.search(rf"^\s*(\S+=\$\()?{tool}\b", block, re.M):
            require_tool(tool)
    work = tmp_path / "work"
    work.mkdir()
    (work / "var").symlink_to(folder / "var")
    result = run_block(block, work, box.offset)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("index", range(len(standalone_blocks())))
def test_standalone_example(index: int, tmp_path: Path) -> None:
    # `free_port_offset` finds ports free at one instant and cannot reserve them: the
    # other pytest worker may bind one before the block's boxes do (seen once in a full
    # run: "hub-sync cannot listen on 127.0.0.1:23723: Address already in use"). That
    # race is not the README's fault, so it alone earns another try at another offset.
    for attempt in range(3):
        work = tmp_path / f"try{attempt}"
        work.mkdir()
        result = run_block(standalone_blocks()[index], work, free_port_offset())
        logs = "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in work.glob("*.log"))
        if result.returncode == 0 or "Address already in use" not in logs:
            break
    assert result.returncode == 0, result.stdout + logs


def test_docs_cli_lists_what_run_prints(demo_box: tuple[Path, RunningBox]) -> None:
    """docs/cli.md's sample of `edgebox run` names the services a demo box announces."""
    text = (README.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    sample = re.search(
        r"^```\nedgebox demo\.go\.th \(edge\).*?\n(.*?)^ready\n```", text, re.M | re.S
    )
    assert sample is not None
    documented = [line.split()[0] for line in sample[1].splitlines()]
    _, box = demo_box
    printed = [
        line.split()[0]
        for line in box.output
        if line.endswith(" running") or " listening on " in line
    ]
    assert printed == documented
