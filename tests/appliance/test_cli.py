"""The `edgebox` command's contract (docs/cli.md), run in-process."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import trio

from appliance.box import configured, open_box
from appliance.cli import main


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
        stdin: str = "") -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    directory = tmp_path / "box"
    assert (
        run(capsys, monkeypatch, "init", "--data", str(directory), "--domain", "Cli.Go.Th")[0] == 0
    )
    return directory


def test_init_is_idempotent_for_the_same_domain(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before = (data / "config.json").read_bytes(), (data / "keys" / "data.key.wrapped").read_bytes()
    code, out, _ = run(capsys, monkeypatch, "init", "--data", str(data), "--domain", "cli.go.th")
    assert code == 0
    assert "nothing to do" in out
    after = (data / "config.json").read_bytes(), (data / "keys" / "data.key.wrapped").read_bytes()
    assert before == after


def test_init_refuses_another_domain(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, monkeypatch, "init", "--data", str(data), "--domain", "other.go.th")
    assert code == 1
    assert "already belongs to cli.go.th" in err
    assert "Traceback" not in err


def test_user_lifecycle(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d = str(data)
    code, _, err = run(capsys, monkeypatch, "user", "add", "--data", d, "Nok@cli.go.th", "--name",
                       "นก", "--rank", "4", "--unit", "กองกลาง", "--admin", "--password-stdin",
                       stdin="first-pass\n")  # fmt: skip
    assert code == 0, err
    code, out, _ = run(capsys, monkeypatch, "user", "list", "--data", d)
    assert out.split("\t")[:4] == ["nok@cli.go.th", "นก", "rank=4", "กองกลาง"]
    assert out.strip().endswith("admin")

    async def authenticate(password: str) -> bool:
        async with open_box(configured(data, {}, {})) as box:
            mailboxes = await box.mail_db.read(
                lambda c: [r[0] for r in c.execute("SELECT name FROM mailboxes ORDER BY id")]
            )
            assert mailboxes == ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"]
            return await box.directory.authenticate("nok@cli.go.th", password) is not None

    assert trio.run(authenticate, "first-pass")
    assert run(capsys, monkeypatch, "user", "passwd", "--data", d, "nok@cli.go.th",
               "--password-stdin", stdin="second-pass\n")[0] == 0  # fmt: skip
    assert not trio.run(authenticate, "first-pass")
    assert trio.run(authenticate, "second-pass")
    assert run(capsys, monkeypatch, "user", "disable", "--data", d, "nok@cli.go.th")[0] == 0
    assert not trio.run(authenticate, "second-pass")
    assert "disabled" in run(capsys, monkeypatch, "user", "list", "--data", d)[1]


def test_user_add_errors_are_one_clear_line(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d = str(data)
    code, _, err = run(capsys, monkeypatch, "user", "add", "--data", d, "x@elsewhere.go.th",
                       "--name", "X", "--password-stdin", stdin="pw-pw-pw\n")  # fmt: skip
    assert code == 1
    assert err.startswith("edgebox: ")
    assert err.count("\n") == 1
    code, _, err = run(capsys, monkeypatch, "user", "add", "--data", d, "y@cli.go.th",
                       "--name", "Y", "--password-stdin", stdin="")  # fmt: skip
    assert (code, err) == (1, "edgebox: no password on standard input\n")


def test_commands_on_an_uninitialised_directory(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, monkeypatch, "user", "list", "--data", str(tmp_path / "none"))
    assert code == 1
    assert "edgebox init" in err


def test_status_is_unhealthy_when_not_running(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, monkeypatch, "status", "--data", str(data))
    assert code == 1
    assert "edgebox is not running" in out
    assert out.strip().endswith("unhealthy")
    assert "outbound queue: most urgent 0 · very urgent 0 · urgent 0 · normal 0 (total 0)" in out
    assert "gin: unknown" in out


def test_status_runs_every_check_and_says_what_to_do(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, monkeypatch, "status", "--data", str(data), "--lang", "th")
    assert code == 1
    for check in ("services", "disk", "memory", "temperature", "clock", "queue", "link"):
        assert f"] {check}: " in out, check
    assert "edgebox ไม่ได้ทำงานอยู่" in out
    assert "→ สั่งเริ่มระบบ: systemctl start edgebox" in out


def test_status_of_a_hub_shows_its_queue_and_longest_waits(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    report = {
        "written_at": time.time(), "running": 8, "waiting": 120, "boxes_waiting": 97,
        "served": 5000, "busy": {"waited_too_long": 3}, "boxes": {
            "box-moe": {"max_wait": 14.25, "busy": 3}, "box-mof": {"max_wait": 2.0, "busy": 0},
        },
    }  # fmt: skip
    (data / "run").mkdir(exist_ok=True)
    (data / "run" / "hub-admission-4242.json").write_text(json.dumps(report))
    _, out, _ = run(capsys, monkeypatch, "status", "--data", str(data))
    assert "hub admission (1 process(es)): 8 running, 120 waiting from 97 box(es)" in out
    assert "longest waits for a turn: box-moe 14.2 s, box-mof 2.0 s" in out


def test_run_refuses_a_port_offset_past_the_port_range(data: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, monkeypatch, "run", "--data", str(data), "--port-offset", "60000")
    assert code == 1
    assert "port_offset 60000 puts ports outside 1-65535" in err
    assert "Traceback" not in err
