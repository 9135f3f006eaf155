"""Connection limit and idle timeout of the SMTP listeners, set as an operator would
(environment variables, docs/cli.md "Configuration")."""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import BoxStarter
from tests.harness import RunningBox, read_line

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def box(start_running_box: BoxStarter) -> RunningBox:
    env = {"EDGEBOX_MAX_CONNECTIONS": "2", "EDGEBOX_IDLE_TIMEOUT": "1.5"}
    return start_running_box("limits", "limits.go.th", {"a@limits.go.th": "limits-pass-1"},
                             env=env)  # fmt: skip


def test_connections_over_the_limit_get_421(box: RunningBox) -> None:
    port = box.port("smtp-mx")
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert read_line(first).startswith(b"220 ")
        assert read_line(second).startswith(b"220 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            # No EHLO yet, so no enhanced status code (RFC 2034 §3).
            assert read_line(third) == b"421 Too many connections, try again later\r\n"
            assert third.recv(100) == b"", "refused connections are closed"
    finally:
        first.close()
        second.close()
    # Once the others have gone, a new client is served again.
    deadline = time.monotonic() + 10
    greeting = b""
    while not greeting.startswith(b"220 ") and time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
            greeting = read_line(again)
    assert greeting.startswith(b"220 ")


def test_idle_client_is_disconnected(box: RunningBox) -> None:
    with socket.create_connection(("127.0.0.1", box.port("smtp-mx")), timeout=10) as client:
        assert read_line(client).startswith(b"220 ")
        # Taken before the EHLO is sent: the box's idle wait starts after it answers, so
        # all of that wait lies inside what is measured here, however slowly this
        # client or the machine runs. A box that closes early still fails the bound.
        sent = time.monotonic()
        client.sendall(b"EHLO idle.test\r\n")
        ehlo = b""
        while b"\r\n250 " not in b"\r\n" + ehlo:
            chunk = read_line(client)
            assert chunk, "connection closed during EHLO"
            ehlo += chunk
        assert read_line(client) == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
        assert time.monotonic() - sent >= 1.0
        assert client.recv(100) == b""
