"""The image's privileged installer of the setup wizard's OS files, and its units.

`image_build/sbin/edgebox-apply-system-files` runs as root on the box: it must take what
the wizard writes (appliance/provisioning/system_files.py, the same function here) and
refuse anything else — another key, another file, a link, a time zone outside
/usr/share/zoneinfo. Run as the box runs it, with ``--no-reload`` and a scratch root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.provisioning.system_files import (
    HOSTNAME_FILE,
    NETWORK_FILE,
    TIMESYNCD_FILE,
    TIMEZONE_FILE,
    write_system_files,
)
from appliance.provisioning.wizard import StepError, check_hostname
from tests.harness import require_tool

IMAGE = Path(__file__).parents[2] / "image_build"
SCRIPT = IMAGE / "sbin" / "edgebox-apply-system-files"
STATIC = {"mode": "static", "interface": "eth0", "hostname": "mail-box1.moe.go.th",
          "address": "192.168.10.5/24", "gateway": "192.168.10.1",
          "dns": ["192.168.10.1", "1.1.1.1"]}  # fmt: skip
TIME = {"timezone": "Asia/Bangkok", "ntp": ["time1.nimt.or.th", "203.0.113.7"]}


def run(source: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--from", str(source), "--root",
                           str(root), "--no-reload"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_what_the_wizard_writes_is_installed_under_run(tmp_path: Path) -> None:
    source, root = tmp_path / "system", tmp_path / "root"
    write_system_files(source, STATIC, TIME)
    done = run(source, root)
    assert done.returncode == 0, done.stderr
    network = (root / "run/systemd/network/10-edgebox-lan.network").read_text()
    assert network == (source / NETWORK_FILE).read_text()
    assert "Address=192.168.10.5/24" in network
    ntp = (root / "run/systemd/timesyncd.conf.d/10-edgebox.conf").read_text()
    assert ntp == (source / TIMESYNCD_FILE).read_text()
    assert (root / "run/edgebox/hostname").read_text() == "mail-box1.moe.go.th\n"
    assert os.readlink(root / "run/edgebox/localtime") == "/usr/share/zoneinfo/Asia/Bangkok"
    assert (root / "run/edgebox/timezone").read_text() == "Asia/Bangkok\n"
    assert "installed: hostname, network, time, timezone" in done.stdout
    # Again: nothing changed, nothing to tell networkd or timesyncd.
    assert "installed" not in run(source, root).stdout


def test_dhcp_and_no_time_step_give_utc(tmp_path: Path) -> None:
    source, root = tmp_path / "system", tmp_path / "root"
    write_system_files(source, {"mode": "dhcp", "interface": "eth1", "hostname": "box"}, None)
    assert run(source, root).returncode == 0
    assert "DHCP=yes" in (root / "run/systemd/network/10-edgebox-lan.network").read_text()
    assert os.readlink(root / "run/edgebox/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert not (root / "run/systemd/timesyncd.conf.d").exists()


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        (NETWORK_FILE, "[Match]\nName=eth0\n[Network]\nDHCP=yes\n[Link]\nMTUBytes=9000\n",
         "section [Link] is not allowed"),
        (NETWORK_FILE, "[Match]\nName=eth0\n[Network]\nAddress=10.0.0.1/8\nDomains=x\n",
         "'Domains=x' is not allowed"),
        (NETWORK_FILE, "[Match]\nName=eth0\n[Network]\nGateway=10.0.0.1; reboot\n",
         "bad value for Gateway"),
        (NETWORK_FILE, "[Match]\nName=eth0 eth1\n[Network]\nDHCP=yes\n", "bad value for Name"),
        (TIMESYNCD_FILE, "[Time]\nNTP=pool.ntp.org\nRootDistanceMaxSec=99\n", "not allowed"),
        (TIMESYNCD_FILE, "[Time]\nNTP=bad_name!\n", "bad value for NTP"),
        (HOSTNAME_FILE, "-bad-\n", "not a host name"),
        (TIMEZONE_FILE, "../../../etc/shadow\n", "unknown time zone"),
        (TIMEZONE_FILE, "Mars/Olympus\n", "unknown time zone"),
        (NETWORK_FILE, "[Match]\nName=eth0\n\x00\n", "not text"),
    ],
)  # fmt: skip
def test_anything_else_is_refused_and_left_out(
    tmp_path: Path, name: str, text: str, why: str
) -> None:
    source, root = tmp_path / "system", tmp_path / "root"
    write_system_files(source, STATIC, TIME)
    (source / name).write_text(text)
    done = run(source, root)
    assert done.returncode == 1
    assert f"refused {name}:" in done.stderr
    assert why in done.stderr, done.stderr
    # The other files are still installed.
    others = {
        NETWORK_FILE: root / "run/systemd/network/10-edgebox-lan.network",
        TIMESYNCD_FILE: root / "run/systemd/timesyncd.conf.d/10-edgebox.conf",
        HOSTNAME_FILE: root / "run/edgebox/hostname",
        TIMEZONE_FILE: root / "run/edgebox/timezone",
    }
    assert not others.pop(name).exists()
    assert all(path.exists() for path in others.values())


def test_a_link_is_never_followed(tmp_path: Path) -> None:
    source, root = tmp_path / "system", tmp_path / "root"
    write_system_files(source, STATIC, None)
    secret = tmp_path / "secret"
    secret.write_text("[Match]\nName=eth0\n")
    (source / NETWORK_FILE).unlink()
    (source / NETWORK_FILE).symlink_to(secret)
    done = run(source, root)
    assert done.returncode == 1
    assert f"refused {NETWORK_FILE}: cannot open it" in done.stderr
    assert not (root / "run/systemd/network/10-edgebox-lan.network").exists()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=70))
def test_every_host_name_the_wizard_takes_is_installed(tmp_path: Path, name: str) -> None:
    try:
        hostname = check_hostname(name)
    except StepError:
        return
    source, root = tmp_path / name / "system", tmp_path / name / "root"
    write_system_files(source, {"mode": "dhcp", "interface": "eth0", "hostname": hostname}, None)
    done = run(source, root)
    assert done.returncode == 0, done.stderr
    assert (root / "run/edgebox/hostname").read_text() == hostname + "\n"
    shutil.rmtree(tmp_path / name)


def test_the_image_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    names = ["edgebox-system-files.service", "edgebox-system-files.path",
             "edgebox-data.service", "edgebox-grow-data.service"]  # fmt: skip
    for name in names:
        text = (IMAGE / "systemd" / name).read_text()
        text = text.replace("/usr/sbin/edgebox-apply-system-files", str(SCRIPT))
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    # Units that only exist on the image (data.mount, the data device) are not findings.
    findings = [line for line in done.stderr.splitlines()
                if line.strip() and "data.mount" not in line and ".device" not in line]  # fmt: skip
    assert findings == [], done.stderr
    path = (IMAGE / "systemd" / "edgebox-system-files.path").read_text()
    for name in (NETWORK_FILE, TIMESYNCD_FILE, HOSTNAME_FILE, TIMEZONE_FILE):
        assert f"PathChanged=/var/lib/edgebox/system/{name}\n" in path


def test_the_data_partition_grows_to_the_disk_and_nothing_else_moves(tmp_path: Path) -> None:
    """systemd-repart with the image's definitions on the image's partition layout."""
    repart, sfdisk = require_tool("systemd-repart"), require_tool("sfdisk")
    disk = tmp_path / "disk.img"
    disk.touch()
    os.truncate(disk, 200 * 1024**2)
    root_type = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    layout = ("label: gpt\nsize=8M, type=U, name=edgebox-efi\n"
              f"size=40M, type={root_type}, name=edgebox-root-a\n"
              f"size=40M, type={root_type}, name=edgebox-root-b\n"
              "size=40M, type=L, name=edgebox-data\n")  # fmt: skip
    subprocess.run([sfdisk, "--quiet", str(disk)], input=layout, text=True, check=True)
    before = subprocess.run([sfdisk, "--dump", str(disk)], capture_output=True, text=True,
                            check=True).stdout.splitlines()  # fmt: skip
    os.truncate(disk, 1024**3)
    for _ in range(2):  # the second run, at the next boot, changes nothing
        subprocess.run([repart, "--dry-run=no", f"--definitions={IMAGE / 'repart.d'}",
                        str(disk)], check=True, capture_output=True, timeout=120)  # fmt: skip
    after = subprocess.run([sfdisk, "--dump", str(disk)], capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    rows = [line for line in after if line.startswith(str(disk))]
    assert rows[:3] == [line for line in before if line.startswith(str(disk))][:3]
    sizes = [int(line.split("size=")[1].split(",")[0]) for line in rows]
    start = int(rows[3].split("start=")[1].split(",")[0])
    assert sizes[3] * 512 > 900 * 1024**2
    assert (start + sizes[3]) * 512 > 1024**3 - 2 * 1024**2  # up to the backup GPT
    verified = subprocess.run([sfdisk, "--verify", str(disk)], capture_output=True, text=True)
    assert "No errors detected" in verified.stdout
