"""Two builds of the root filesystem tree from the same commit are the same, file by file.

`image_build/build.py rootfs --small` twice (Debian 12 from the mirror with mmdebstrap,
the locked wheelhouse into /usr/lib/edgebox), then every member of the two tars is
compared by type, mode, owner, mtime, size, link target and content hash; a difference
is listed by path. Minutes, root and the Debian mirror: its own marker, ``image``
(``pytest -m image``), outside `make test`; the measured time is in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.harness import missing_prerequisite, require_tool

BUILD = Path(__file__).parents[2] / "image_build" / "build.py"


def tree(path: Path) -> dict[str, tuple[object, ...]]:
    """Path -> (type, mode, uid, gid, mtime, size, link, sha256) of every member."""
    entries: dict[str, tuple[object, ...]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            digest = ""
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                digest = hashlib.sha256(handle.read()).hexdigest()
            entries[member.name] = (member.type, member.mode, member.uid, member.gid,
                                    member.mtime, member.size, member.linkname, digest)  # fmt: skip
    return entries


def differences(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> list[str]:
    fields = ("type", "mode", "uid", "gid", "mtime", "size", "link", "sha256")
    found = []
    for name in sorted(a.keys() | b.keys()):
        if name not in a or name not in b:
            found.append(f"{name}: only in build {'1' if name in a else '2'}")
        elif a[name] != b[name]:
            changed = [f for f, x, y in zip(fields, a[name], b[name], strict=True) if x != y]
            found.append(f"{name}: {', '.join(changed)} differ")
    return found


def build(out: Path, epoch: str) -> Path:
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    subprocess.run([sys.executable, str(BUILD), "rootfs", "--small", "--out", str(out)],
                   check=True, env=env, capture_output=True)  # fmt: skip
    return out


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_two_builds_of_the_root_tree_are_identical(tmp_path: Path) -> None:
    require_tool("mmdebstrap")
    if os.geteuid() != 0:
        missing_prerequisite("mmdebstrap --mode=root needs root")
    epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], capture_output=True,
                           text=True, check=True, cwd=BUILD.parent).stdout.strip()  # fmt: skip
    first = tree(build(tmp_path / "first.tar", epoch))
    second = tree(build(tmp_path / "second.tar", epoch))
    assert "./usr/lib/edgebox/bin/edgebox" in first
    listed = differences(first, second)
    assert listed == [], "\n".join(listed[:200])


def test_a_difference_is_listed_by_path_and_field(tmp_path: Path) -> None:
    """The comparison itself, on two small tars (no build: runs in every suite)."""

    def tar_of(name: str, files: dict[str, tuple[bytes, int]]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for member, (content, mtime) in files.items():
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(content), mtime
                tar.addfile(info, io.BytesIO(content))
        return path

    a = tree(tar_of("a.tar", {"./etc/x": (b"1", 10), "./etc/same": (b"s", 10),
                              "./only-a": (b"", 10)}))  # fmt: skip
    b = tree(tar_of("b.tar", {"./etc/x": (b"2", 11), "./etc/same": (b"s", 10)}))
    assert differences(a, b) == [
        "./etc/x: mtime, sha256 differ",
        "./only-a: only in build 1",
    ]
