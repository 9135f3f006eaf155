"""The clamd codec: INSTREAM framing and the three reply forms, byte for byte."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protection.clamd import (
    MAX_REPLY,
    ClamdProtocolError,
    Clean,
    EngineVersion,
    Infected,
    ReplyReader,
    ScanFailed,
    instream_request,
    parse_reply,
    parse_version,
    split_session_reply,
)


def test_instream_frames_chunks_and_ends_with_zero_length() -> None:
    pieces = list(instream_request(b"abcdefg", chunk_size=3))
    assert pieces == [
        b"zINSTREAM\0",
        b"\0\0\0\3abc",
        b"\0\0\0\3def",
        b"\0\0\0\1g",
        b"\0\0\0\0",
    ]


def test_empty_content_is_only_the_terminator() -> None:
    assert list(instream_request(b"")) == [b"zINSTREAM\0", b"\0\0\0\0"]


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_instream_round_trips(content: bytes, chunk: int) -> None:
    wire = b"".join(instream_request(content, chunk))
    assert wire.startswith(b"zINSTREAM\0")
    rest, out = wire[len(b"zINSTREAM\0") :], b""
    while True:
        (length,) = struct.unpack("!I", rest[:4])
        rest = rest[4:]
        if length == 0:
            break
        assert length <= chunk
        out, rest = out + rest[:length], rest[length:]
    assert rest == b""
    assert out == content


@pytest.mark.parametrize(
    ("line", "result"),
    [
        (b"stream: OK", Clean()),
        (b"stream: Win.Test.EICAR_HDB-1 FOUND", Infected("Win.Test.EICAR_HDB-1")),
        (b"stream: Edgebox-Test-EICAR.UNOFFICIAL FOUND", Infected("Edgebox-Test-EICAR.UNOFFICIAL")),
        (b"INSTREAM size limit exceeded. ERROR", ScanFailed("INSTREAM size limit exceeded.")),
        (b"1: stream: OK", None),
    ],
)
def test_reply_forms(line: bytes, result: object) -> None:
    if result is None:
        with pytest.raises(ClamdProtocolError):
            parse_reply(line)
    else:
        assert parse_reply(line) == result


@pytest.mark.parametrize("line", [b"", b"PONG", b"stream: ", b"stream: FOUND", b"stream: maybe"])
def test_other_lines_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(ClamdProtocolError):
        parse_reply(line)


def test_reader_waits_for_the_nul_and_refuses_a_cut_reply() -> None:
    reader = ReplyReader()
    assert reader.receive_data(b"stream: Eicar") is None
    assert reader.receive_data(b" FOUND\0") == Infected("Eicar")
    cut = ReplyReader()
    cut.receive_data(b"stream: O")
    with pytest.raises(ClamdProtocolError):
        cut.receive_data(b"")


def test_reader_refuses_an_endless_reply() -> None:
    reader = ReplyReader()
    with pytest.raises(ClamdProtocolError):
        reader.receive_data(b"x" * (MAX_REPLY + 1))


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_reader_never_says_clean_unless_clamd_did(pieces: list[bytes]) -> None:
    """Garbage gives an error or a result, and Clean only for exactly ``stream: OK``."""
    reader = ReplyReader()
    received = b""
    try:
        for piece in pieces:
            received += piece
            result = reader.receive_data(piece)
            if result is not None:
                break
        else:
            return
    except ClamdProtocolError:
        return
    if isinstance(result, Clean):
        assert received.split(b"\0", 1)[0].decode("utf-8", "replace").strip() == "stream: OK"


def test_version_with_a_daily_database_gives_its_number_and_date() -> None:
    got = parse_version(b"ClamAV 1.0.7/27480/Mon Dec  7 09:30:00 2026")
    assert got == EngineVersion("1.0.7", 27480, "Mon Dec  7 09:30:00 2026")


def test_version_without_a_daily_database_has_no_date() -> None:
    assert parse_version(b"ClamAV 1.0.7") == EngineVersion("1.0.7", None, None)


@pytest.mark.parametrize("line", [b"PONG", b"ClamAV 1.0/x/Mon", b"ClamAV 1.0/12/", b""])
def test_anything_else_is_not_a_version(line: bytes) -> None:
    with pytest.raises(ClamdProtocolError):
        parse_version(line)


@given(st.binary(max_size=200))
def test_version_garbage_raises_only_the_protocol_error(data: bytes) -> None:
    try:
        parse_version(data)
    except ClamdProtocolError:
        pass


def test_a_session_reply_carries_the_commands_number() -> None:
    reader = ReplyReader(session=2)
    assert reader.receive_data(b"2: stream: Eicar FOUND\0") == Infected("Eicar")
    assert ReplyReader(session=7).receive_data(b"7: stream: OK\0") == Clean()
    assert ReplyReader(session=1).receive_data(b"1: INSTREAM size limit exceeded. ERROR\0") == (
        ScanFailed("INSTREAM size limit exceeded.")
    )


@pytest.mark.parametrize("line", [b"1: stream: OK\0", b"stream: OK\0", b"x: stream: OK\0"])
def test_a_reply_to_another_command_or_without_a_number_is_refused(line: bytes) -> None:
    # Command 2's reply must not be taken from a stray answer to command 1.
    with pytest.raises(ClamdProtocolError):
        ReplyReader(session=2).receive_data(line)


@given(st.binary(max_size=200))
def test_any_session_line_splits_or_is_a_protocol_error(line: bytes) -> None:
    try:
        number, rest = split_session_reply(line)
    except ClamdProtocolError:
        return
    assert line == str(number).encode() + b": " + rest or line.startswith(b"0")
    assert number >= 0
