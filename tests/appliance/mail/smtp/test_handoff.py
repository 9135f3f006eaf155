"""The MX workers' hand-off codec: frames survive any split of the stream; bad ones are refused.

Byte scenarios first (what each rule refuses, and that the decoder stays refused), then
hypothesis: any frames, cut anywhere, decode to the same frames; any garbage either
decodes to frames or raises `FrameError`, never anything else.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.smtp.handoff import (
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode,
    encode_head,
)


def decode_all(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_a_frame_round_trips_with_its_header_and_raw_body() -> None:
    frame = Frame(Kind.DELIVER, {"id": 7, "folder": "INBOX", "on_top": [3]}, b"X: 1\r\n\x00\xff")
    decoder = FrameDecoder()
    decoder.receive_data(encode(frame))
    assert decode_all(decoder) == [frame]
    assert decoder.pending == 0


def test_a_head_sent_before_its_body_in_parts_is_the_same_frame() -> None:
    parts = (b"Authentication-Results: x\r\n", b"Subject: hi\r\n\r\nbody\r\n")
    decoder = FrameDecoder()
    decoder.receive_data(encode_head(Kind.DELIVER, {"id": 1}, sum(map(len, parts))))
    assert decoder.next_frame() is None  # the body has not come yet
    for part in parts:
        decoder.receive_data(part)
    assert decode_all(decoder) == [Frame(Kind.DELIVER, {"id": 1}, b"".join(parts))]


def test_thai_text_in_a_header_is_kept() -> None:
    frame = Frame(Kind.RECORD, {"id": 1, "record": {"sender": "สมชาย@example.go.th"}})
    decoder = FrameDecoder()
    decoder.receive_data(encode(frame))
    assert decode_all(decoder) == [frame]


def raw(kind: int, header: bytes, body: bytes = b"", *, length: int | None = None) -> bytes:
    size = 1 + 4 + len(header) + len(body) if length is None else length
    return size.to_bytes(4, "big") + bytes((kind,)) + len(header).to_bytes(4, "big") + header + body


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (raw(99, b"{}"), "unknown frame kind 99"),
        (raw(Kind.DELIVER, b"{}", length=3), "shorter than a frame's head"),
        (
            (1 + 4).to_bytes(4, "big") + bytes((Kind.READY,)) + (50).to_bytes(4, "big"),
            "does not fit",
        ),
        (raw(Kind.DELIVER, b"{not json"), "not UTF-8 JSON"),
        (raw(Kind.DELIVER, b"\xff\xfe"), "not UTF-8 JSON"),
        (raw(Kind.DELIVER, b"[1, 2]"), "list, not an object"),
        (raw(Kind.DELIVER, b""), "not UTF-8 JSON"),
    ],
)
def test_a_bad_frame_is_refused_saying_what_was_wrong(data: bytes, says: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    with pytest.raises(FrameError, match=says):
        decoder.next_frame()


def test_an_oversized_frame_is_refused_from_its_length_before_it_is_buffered() -> None:
    decoder = FrameDecoder(max_frame=1024)
    # Only the length has arrived: that is enough to refuse it.
    decoder.receive_data((4096).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="over the limit of 1024"):
        decoder.next_frame()


def test_after_a_bad_frame_the_decoder_stays_refused() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(raw(99, b"{}"))
    with pytest.raises(FrameError):
        decoder.next_frame()
    # A good frame after it cannot be trusted to start where the bad one ended.
    decoder.receive_data(encode(Frame(Kind.READY)))
    with pytest.raises(FrameError, match="unknown frame kind 99"):
        decoder.next_frame()
    assert decoder.pending == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
frames = st.builds(
    Frame,
    st.sampled_from(list(Kind)),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=6), st.lists(st.integers(0, 2000), max_size=12))
def test_any_frames_cut_anywhere_decode_to_the_same_frames(
    sent: list[Frame], cuts: list[int]
) -> None:
    wire = b"".join(encode(frame) for frame in sent)
    points = sorted({min(cut, len(wire)) for cut in cuts} | {0, len(wire)})
    decoder = FrameDecoder()
    received: list[Frame] = []
    for start, end in itertools.pairwise(points):
        decoder.receive_data(wire[start:end])
        received.extend(decode_all(decoder))
    assert received == sent
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 400))
def test_garbage_gives_frames_or_a_frame_error_never_anything_else(data: bytes, cut: int) -> None:
    decoder = FrameDecoder(max_frame=4096)
    try:
        for piece in (data[:cut], data[cut:]):
            decoder.receive_data(piece)
            for frame in decode_all(decoder):
                assert isinstance(frame.header, dict)
                # What was decoded encodes back to a frame the decoder reads the same.
                again = FrameDecoder()
                again.receive_data(encode(frame))
                assert decode_all(again) == [frame]
    except FrameError:
        pass


def test_the_header_is_compact_json() -> None:
    head = encode_head(Kind.STORED, {"id": 3, "queue_id": "AB"}, 0)
    assert json.loads(head[9:]) == {"id": 3, "queue_id": "AB"}
    assert b" " not in head[9:]
