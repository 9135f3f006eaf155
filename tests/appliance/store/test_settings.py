"""Tests of `appliance.store.settings` and `appliance.store.files`: atomic JSON settings."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import files
from appliance.store.files import write_atomically
from appliance.store.settings import Settings


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    store = Settings(tmp_path / "config.json")
    yield store
    store.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_unknown_section_is_empty(settings: Settings) -> None:
    assert settings.get("box") == {}


def test_missing_file_is_not_created_by_reading(tmp_path: Path, settings: Settings) -> None:
    settings.get("box")
    assert not (tmp_path / "config.json").exists()


def test_update_then_get(settings: Settings) -> None:
    settings.update("box", {"id": "box-1", "domain": "test.go.th"})

    assert settings.get("box") == {"id": "box-1", "domain": "test.go.th"}


def test_update_merges_into_the_section(settings: Settings) -> None:
    settings.update("config", {"port_offset": 100, "role": "edge"})
    settings.update("config", {"role": "hub", "bind": "0.0.0.0"})

    assert settings.get("config") == {"port_offset": 100, "role": "hub", "bind": "0.0.0.0"}


def test_sections_are_independent(settings: Settings) -> None:
    settings.update("box", {"id": "box-1"})
    settings.update("config", {"id": "not the box id"})

    assert settings.get("box") == {"id": "box-1"}
    assert settings.get("config") == {"id": "not the box id"}


def test_get_returns_a_copy(settings: Settings) -> None:
    settings.update("box", {"id": "box-1"})
    settings.get("box")["id"] = "changed by a caller"

    assert settings.get("box") == {"id": "box-1"}


def test_survives_reopen(tmp_path: Path) -> None:
    first = Settings(tmp_path / "config.json")
    first.update("box", {"id": "box-1", "agency": "กรมทดสอบ"})
    first.update("box", {"domain": "test.go.th"})
    first.close()

    second = Settings(tmp_path / "config.json")
    try:
        assert second.get("box") == {"id": "box-1", "agency": "กรมทดสอบ", "domain": "test.go.th"}
    finally:
        second.close()


def test_thai_text_round_trips_and_is_stored_readable(tmp_path: Path) -> None:
    name = "สำนักงานปลัดกระทรวงสาธารณสุข ชั้นความลับ: ลับที่สุด"
    store = Settings(tmp_path / "config.json")
    store.update("box", {"agency": name})
    store.close()

    raw = (tmp_path / "config.json").read_bytes()
    # Written as UTF-8 text an operator can read, not as \\u escapes.
    assert name.encode("utf-8") in raw
    assert json.loads(raw.decode("utf-8")) == {"box": {"1": {"agency": name}}}
    reopened = Settings(tmp_path / "config.json")
    try:
        assert reopened.get("box") == {"agency": name}
    finally:
        reopened.close()


def test_file_is_complete_json_after_every_write(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "config.json"
    for n in range(20):
        settings.update("config", {f"key{n}": "x" * n})
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["config"]["1"][f"key{n}"] == "x" * n
    assert leftovers(tmp_path) == []


def test_failed_rename_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    settings.update("box", {"id": "box-1"})
    before = path.read_bytes()

    def power_cut(src: object, dst: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(files.os, "replace", power_cut)
    with pytest.raises(OSError, match="I/O error"):
        settings.update("box", {"id": "box-2", "domain": "test.go.th"})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert settings.get("box") == {"id": "box-1"}
    reopened = Settings(path)
    try:
        assert reopened.get("box") == {"id": "box-1"}
    finally:
        reopened.close()


def test_failed_write_of_the_temp_file_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.bin"
    write_atomically(path, b"old")

    def disk_error(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_error)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, b"new")
    monkeypatch.undo()

    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_write_atomically_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    write_atomically(path, b"first, and longer than the second")
    write_atomically(path, b"second")

    assert path.read_bytes() == b"second"
    assert leftovers(tmp_path) == []


def test_write_atomically_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "data.bin"
    write_atomically(path, b"x")

    assert path.read_bytes() == b"x"


@pytest.mark.usefixtures("umask_022")
def test_write_atomically_default_mode_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    write_atomically(path, b"x")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_write_atomically_given_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "data.bin"
    # An existing file with a wider mode must not keep it: the new file replaces it.
    path.write_bytes(b"old")
    path.chmod(0o666)

    write_atomically(path, b"x", mode=mode)

    assert stat.S_IMODE(path.stat().st_mode) == mode


@pytest.mark.usefixtures("umask_022")
def test_settings_file_mode_is_0640(tmp_path: Path, settings: Settings) -> None:
    settings.update("box", {"id": "box-1"})

    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o640


def test_write_atomically_mode_is_exact_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "shared.json", b"{}", mode=0o640)
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o640
