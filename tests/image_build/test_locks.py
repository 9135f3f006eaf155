"""The image's wheel locks hold every runtime pin of pyproject.toml, at its version.

A pin added to pyproject without `python image_build/build.py lock [--arch arm64]` makes
the image build fail deep inside mmdebstrap (pip: "No matching distribution"); this
says so at once, in every suite.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-arm64.lock"])
def test_every_runtime_pin_is_locked_with_a_hash(lock: str) -> None:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {}
    for line in (ROOT / "image_build" / lock).read_text().splitlines():
        if line.startswith("#"):
            continue
        requirement, _, digest = line.partition(" --hash=sha256:")
        assert re.fullmatch(r"[0-9a-f]{64}", digest), line
        name, _, version = requirement.partition("==")
        locked[normalised(name)] = version
    for pin in pins:
        name, _, version = pin.partition("==")
        assert locked.get(normalised(name)) == version, f"{pin} is not in {lock}: run build.py lock"
