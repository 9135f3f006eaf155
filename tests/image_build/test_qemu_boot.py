"""The amd64 disk image boots under qemu (software emulation, UEFI with OVMF) into
slot A and edgebox reaches ``ready`` (systemd prints "Started edgebox.service" only
after READY=1, Type=notify), answering HTTPS and SMTP on forwarded loopback ports.

Builds the image first (`image_build/build.py image`). Minutes, root, the Debian
mirror, qemu-system-x86 and ovmf: marker ``qemu``, run by `make image-test`.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import DEV_PORTS
from appliance.update.keyring import ensure_keyring
from tests.harness import missing_prerequisite, require_tool

BUILD = Path(__file__).parents[2] / "image_build" / "build.py"
OVMF = Path("/usr/share/OVMF")
BOOT_TIMEOUT = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.qemu
@pytest.mark.timeout(3600)
def test_the_image_boots_to_ready_and_answers(tmp_path: Path) -> None:
    qemu = require_tool("qemu-system-x86_64")
    require_tool("mmdebstrap")
    if not (OVMF / "OVMF_CODE_4M.fd").exists():
        missing_prerequisite("ovmf is not installed")
    if os.geteuid() != 0:
        missing_prerequisite("the image build needs root")
    keyring = ensure_keyring(tmp_path / "keys", "release")
    out = tmp_path / "image"
    command = [sys.executable, str(BUILD), "image", "--out", str(out),
               "--keyring", str(keyring.ca_cert)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    (tmp_path / "vars.fd").write_bytes((OVMF / "OVMF_VARS_4M.fd").read_bytes())
    https, smtp = free_port(), free_port()
    forwards = (f"hostfwd=tcp:127.0.0.1:{https}-:{DEV_PORTS['https']},"
                f"hostfwd=tcp:127.0.0.1:{smtp}-:{DEV_PORTS['smtp-mx']}")  # fmt: skip
    console = tmp_path / "console.log"
    with console.open("wb") as log:
        vm = subprocess.Popen(
            [qemu, "-machine", "q35", "-m", "2048", "-smp", "2", "-nographic", "-no-reboot",
             "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF / 'OVMF_CODE_4M.fd'}",
             "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
             "-drive", f"file={out / 'disk.img'},format=raw,if=virtio",
             "-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        started = time.monotonic()
        while b"Started edgebox.service" not in console.read_bytes():
            text = console.read_bytes()
            assert b"emergency mode" not in text, text[-3000:].decode(errors="replace")
            assert vm.poll() is None, text[-3000:].decode(errors="replace")
            assert time.monotonic() - started < BOOT_TIMEOUT, "edgebox never became ready"
            time.sleep(2)
        print(f"booted to ready in {time.monotonic() - started:.0f} s")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the box's own CA; only "it answers" here
        with (
            socket.create_connection(("127.0.0.1", https), timeout=60) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
            assert tls.recv(12).startswith(b"HTTP/1.1")
        with socket.create_connection(("127.0.0.1", smtp), timeout=60) as plain:
            assert plain.recv(4) == b"220 "
    finally:
        vm.kill()
        vm.wait(timeout=60)
