"""The panel link's codec (hw/panel_link.py): byte scenarios, hypothesis, MicroPython fuzz.

Two `Link` ends are joined by hand: what one end's `data_to_send` returns is what the
test lets through (or drops, or corrupts) to the other. Time is a number the test passes.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hw import panel_link as L
from hw.twins import micropython

HOST_ACCEPTS = (L.BUTTON, L.RESET_REASON)
PANEL_ACCEPTS = (L.HEARTBEAT, L.STATE, L.WATCHDOG, L.CONFIRM)


def events(link: L.Link) -> list[L.Event]:
    out = []
    while (event := link.next_event()) is not None:
        out.append(event)
    return out


def pair(now: int = 0, max_tries: int = 8) -> tuple[L.Link, L.Link]:
    host = L.Link(HOST_ACCEPTS, "host 1", max_tries=max_tries, initiator=True)
    panel = L.Link(PANEL_ACCEPTS, "panel 1", max_tries=max_tries)
    host.connect(now)
    panel.receive_data(host.data_to_send(), now)
    host.receive_data(panel.data_to_send(), now)
    assert [e.kind for e in events(host)] == [L.CONNECTED]
    assert [e.kind for e in events(panel)] == [L.PEER_HELLO]
    return host, panel


def test_crc16_is_ccitt_false() -> None:
    assert L.crc16(b"123456789") == 0x29B1


@given(st.binary(max_size=600))
def test_cobs_round_trips_without_zero_bytes(data: bytes) -> None:
    encoded = L.cobs_encode(data)
    assert b"\x00" not in encoded
    assert L.cobs_decode(encoded) == data


def test_a_frame_on_the_wire() -> None:
    wire = L.encode_frame(L.STATE, 7, b"gin=up\n")
    assert wire[0] == 0
    assert wire[-1] == 0
    assert b"\x00" not in wire[1:-1]
    assert L.decode_frame(wire[1:-1]) == (L.STATE, 7, b"gin=up\n")


def test_versions_negotiate_to_the_highest_common() -> None:
    host = L.Link(HOST_ACCEPTS, "host", min_version=1, max_version=3)
    panel = L.Link(PANEL_ACCEPTS, "panel", min_version=1, max_version=2)
    host.connect(0)
    panel.receive_data(host.data_to_send(), 0)
    host.receive_data(panel.data_to_send(), 0)
    [connected] = events(host)
    assert (connected.kind, connected.version, connected.peer_software) == (L.CONNECTED, 2, "panel")
    assert host.version == panel.version == 2


def test_no_common_version_is_refused_and_the_link_stays_down() -> None:
    host = L.Link(HOST_ACCEPTS, "host", min_version=3, max_version=4)
    panel = L.Link(PANEL_ACCEPTS, "panel", min_version=1, max_version=2)
    host.connect(0)
    panel.receive_data(host.data_to_send(), 0)
    host.receive_data(panel.data_to_send(), 0)
    [refused] = events(host)
    assert (refused.kind, refused.type, refused.code) == (L.REFUSED, L.HELLO, L.NO_VERSION)
    assert not host.connected
    assert not panel.connected
    assert not host.send(L.STATE, b"x=1\n", 0)


def test_hello_is_repeated_until_answered() -> None:
    host = L.Link(HOST_ACCEPTS, "host", retransmit_ms=100)
    host.connect(0)
    first = host.data_to_send()
    host.poll(50)
    assert host.data_to_send() == b""
    host.poll(100)
    assert host.data_to_send() == first


def test_a_lost_frame_is_retransmitted_and_delivered_once() -> None:
    host, panel = pair()
    host.send(L.STATE, b"gin=down\n", 0)
    host.data_to_send()  # lost on the wire
    host.poll(host.retransmit_ms)
    panel.receive_data(host.data_to_send(), 260)
    host.data_to_send()
    ack = panel.data_to_send()
    # The ACK is lost too: the host resends, the panel acks again and delivers nothing new.
    host.poll(2 * host.retransmit_ms)
    panel.receive_data(host.data_to_send(), 520)
    assert panel.data_to_send() == ack
    host.receive_data(ack, 530)
    assert host.pending() == 0
    assert [(e.kind, e.body) for e in events(panel)] == [(L.MESSAGE, b"gin=down\n")]


def test_frames_go_one_at_a_time_in_order() -> None:
    host, panel = pair()
    for n in range(5):
        host.send(L.HEARTBEAT, bytes([n]), 0)
    delivered = []
    for _ in range(10):
        panel.receive_data(host.data_to_send(), 0)
        host.receive_data(panel.data_to_send(), 0)
        delivered += [e.body[0] for e in events(panel)]
    assert delivered == [0, 1, 2, 3, 4]


def test_an_unknown_type_is_refused_and_the_link_goes_on() -> None:
    host, panel = pair()
    host.send(0x7F, b"from a newer host", 0)
    host.send(L.HEARTBEAT, b"", 0)
    panel.receive_data(host.data_to_send(), 0)
    host.receive_data(panel.data_to_send(), 0)
    [refused] = events(host)
    assert (refused.kind, refused.type, refused.code) == (L.REFUSED, 0x7F, L.UNKNOWN_TYPE)
    panel.receive_data(host.data_to_send(), 0)
    assert [(e.kind, e.type) for e in events(panel)] == [(L.MESSAGE, L.HEARTBEAT)]
    assert panel.connected
    assert host.connected


def test_a_bit_flip_is_dropped_and_the_resend_gets_through() -> None:
    host, panel = pair()
    host.send(L.STATE, b"queue=3\n", 0)
    wire = bytearray(host.data_to_send())
    wire[5] ^= 0x10
    panel.receive_data(bytes(wire), 0)
    assert panel.bad_frames == 1
    assert events(panel) == []
    host.poll(host.retransmit_ms)
    panel.receive_data(host.data_to_send(), 300)
    assert [e.body for e in events(panel)] == [b"queue=3\n"]


def test_a_truncated_frame_then_a_whole_one() -> None:
    host, panel = pair()
    host.send(L.STATE, b"queue=3\n", 0)
    wire = host.data_to_send()
    panel.receive_data(wire[:-4], 0)  # cut off: the next frame's leading 0 ends it
    host.poll(host.retransmit_ms)
    panel.receive_data(host.data_to_send(), 300)
    assert [e.body for e in events(panel)] == [b"queue=3\n"]
    assert panel.bad_frames == 1


def test_an_overlong_run_without_delimiters_is_skipped() -> None:
    _host, panel = pair()
    panel.receive_data(b"\x01" * 5000, 0)
    assert panel.bad_frames == 1
    panel.receive_data(L.encode_frame(L.HEARTBEAT, 9), 0)
    assert [e.type for e in events(panel)] == [L.HEARTBEAT]


def test_unanswered_frames_bring_the_link_down() -> None:
    host, _panel = pair()
    host.send(L.HEARTBEAT, b"", 0)
    for n in range(1, host.max_tries + 1):
        host.poll(n * host.retransmit_ms)
    assert [e.kind for e in events(host)] == [L.LOST]
    assert not host.connected


def test_a_restarted_peer_is_greeted_again() -> None:
    host, _ = pair()
    panel = L.Link(PANEL_ACCEPTS, "panel 1")  # the panel rebooted and knows no session
    host.send(L.STATE, b"gin=up\n", 0)
    panel.receive_data(host.data_to_send(), 0)
    host.receive_data(panel.data_to_send(), 0)  # ERROR(NO_SESSION)
    assert events(host) == []
    assert not host.connected
    # The host says HELLO again by itself; the session is back and the frame goes again.
    panel.receive_data(host.data_to_send(), 0)
    host.receive_data(panel.data_to_send(), 0)
    assert [e.kind for e in events(host)] == [L.CONNECTED]
    panel.receive_data(host.data_to_send(), 0)
    assert [(e.kind, e.body) for e in events(panel)] == [
        (L.PEER_HELLO, b""),
        (L.MESSAGE, b"gin=up\n"),
    ]


def test_state_fields_round_trip_and_stay_within_one_frame() -> None:
    fields = {"name": "box1.demo.go.th", "gin": "down", "check": "x" * 400}
    assert L.decode_state(L.encode_state(fields)) == {**fields, "check": "x" * L.MAX_VALUE}
    many = {f"k{n:03}": "v" * 60 for n in range(20)}
    body = L.encode_state(many)
    assert len(body) <= L.MAX_BODY
    assert L.decode_state(body).items() <= many.items()


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_any_bytes_never_break_the_receiver(garbage: bytes) -> None:
    _host, panel = pair()
    panel.receive_data(garbage, 0)
    events(panel)
    panel.receive_data(L.encode_frame(L.HEARTBEAT, 200, b"after"), 0)
    assert (L.MESSAGE, b"after") in [(e.kind, e.body) for e in events(panel)]


@settings(max_examples=100)
@given(
    messages=st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=8),
    faults=st.lists(st.sampled_from(["ok", "ok", "drop", "flip", "noise"]), max_size=200),
)
def test_a_lossy_line_delivers_everything_once_in_order(
    messages: list[bytes], faults: list[str]
) -> None:
    # The property is exactly-once, in order, under loss: the link never gives up here.
    host, panel = pair(max_tries=10_000)
    for body in messages:
        assert host.send(L.HEARTBEAT, body, 0)
    fault = iter(faults)
    delivered: list[bytes] = []

    def carry(data: bytes) -> bytes:
        how = next(fault, "ok")
        if not data or how == "ok":
            return data
        if how == "drop":
            return b""
        if how == "flip":
            spoiled = bytearray(data)
            spoiled[len(spoiled) // 2] ^= 0x41
            return bytes(spoiled)
        return b"\x13\x37noise" + data

    now = 0
    for _ in range(1000):
        now += host.retransmit_ms
        host.poll(now)
        panel.receive_data(carry(host.data_to_send()), now)
        host.receive_data(carry(panel.data_to_send()), now)
        delivered += [e.body for e in events(panel) if e.kind == L.MESSAGE]
        assert all(e.kind != L.LOST for e in events(host))
        if host.pending() == 0:
            break
    assert delivered == messages


FUZZ = """
import sys
sys.path.insert(0, {hw!r})
import panel_link as L
panel = L.Link((L.HEARTBEAT, L.STATE), "panel")
f = open({path!r}, "rb")
delivered = 0
while True:
    chunk = f.read({chunk})
    if not chunk:
        break
    panel.receive_data(chunk, 0)
    while True:
        e = panel.next_event()
        if e is None:
            break
        if e.kind == L.MESSAGE:
            delivered += 1
    panel.data_to_send()
print(delivered, panel.bad_frames, panel.connected)
"""


def test_fuzzed_bytes_in_micropython(tmp_path: Path) -> None:
    """The same file under MicroPython: garbage between good frames, never a crash."""
    rng = random.Random(18)
    stream = bytearray(L.encode_frame(L.HELLO, 1, b"\x01\x01host"))
    good = 0
    for seq in range(2, 202):
        stream += rng.randbytes(rng.randrange(0, 64))
        frame = bytearray(L.encode_frame(L.STATE, seq, b"queue=%d\n" % seq))
        if rng.random() < 0.2:
            frame[rng.randrange(1, len(frame) - 1)] ^= 1 << rng.randrange(8)
        elif rng.random() < 0.1:
            frame = frame[: rng.randrange(1, len(frame))]
        else:
            good += 1
        stream += frame
    path = tmp_path / "fuzz.bin"
    path.write_bytes(bytes(stream))
    hw_dir = str(Path(L.__file__).parent)
    script = FUZZ.format(hw=hw_dir, path=str(path), chunk=37)
    result = subprocess.run(
        [micropython(), "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
    delivered, bad, connected = result.stdout.split()
    # Every intact frame arrives (noise may rarely spoil the frame after it: at least 95 %).
    assert good * 0.95 <= int(delivered) <= good
    assert int(bad) > 0
    assert connected == "True"
