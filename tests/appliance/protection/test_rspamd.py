"""The rspamd codec: the /checkv2 request's envelope headers and the JSON verdict."""

from __future__ import annotations

import json

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protection.rspamd import (
    Envelope,
    RspamdProtocolError,
    SpamReport,
    check_request,
    parse_verdict,
)

GTUBE_REPLY = (
    b'{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject",'
    b'"symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},'
    b'"messages":{"smtp_message":"Gtube pattern"},"message-id":"x@y","time_real":0.3}'
)


def test_request_carries_the_envelope() -> None:
    request = check_request(
        "127.0.0.1:11333", 42,
        Envelope("192.0.2.1", "mx.example", "a@example.org", ["b@moe.go.th", "c@moe.go.th"],
                 None, "Q1"),
    )  # fmt: skip
    wire = h11.Connection(h11.CLIENT).send(request)
    assert wire is not None
    assert wire.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    for line in (b"content-length: 42", b"ip: 192.0.2.1", b"helo: mx.example",
                 b"from: a@example.org", b"rcpt: b@moe.go.th", b"rcpt: c@moe.go.th",
                 b"queue-id: q1"):  # fmt: skip
        assert line in wire.lower()
    assert b"user:" not in wire.lower()


def test_hostile_helo_cannot_break_the_request() -> None:
    request = check_request("h:1", 0, Envelope(helo="evil\r\nX-Injected: 1"))
    wire = h11.Connection(h11.CLIENT).send(request)
    assert wire is not None
    assert b"\r\nX-Injected" not in wire


def test_gtube_is_a_pre_result_reject() -> None:
    report = parse_verdict(200, GTUBE_REPLY)
    assert report.pre_rejected
    assert report.smtp_message == "Gtube pattern"
    assert report.symbols == {"GTUBE": 0.0}


def test_scored_reply() -> None:
    symbols = {"MISSING_MID": {"score": 2.5}, "R": {"score": -0.1}}
    body = json.dumps({"is_skipped": False, "score": 5.9, "required_score": 15.0,
                       "action": "add header", "symbols": symbols})  # fmt: skip
    report = parse_verdict(200, body.encode())
    assert report == SpamReport(5.9, 15.0, "add header", {"MISSING_MID": 2.5, "R": -0.1})
    assert not report.pre_rejected


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, GTUBE_REPLY),
        (200, b"not json"),
        (200, b"[]"),
        (200, b'{"error": "cannot parse"}'),
        (200, b'{"score": "high", "action": "reject"}'),
        (200, b'{"score": NaN, "action": "reject"}'),
        (200, b'{"score": 1, "action": 3}'),
        (200, b'{"score": 1, "action": "x", "symbols": {"A": 1}}'),
        (200, b'{"score": true, "action": "x"}'),
    ],
)
def test_bad_replies_are_errors(status: int, body: bytes) -> None:
    with pytest.raises(RspamdProtocolError):
        parse_verdict(status, body)


scalars = st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8)
symbol = st.dictionaries(st.sampled_from(["name", "score"]), scalars, max_size=2)
documents = st.fixed_dictionaries(
    {},
    optional={
        "score": scalars,
        "required_score": scalars,
        "action": scalars,
        "symbols": st.dictionaries(st.text(max_size=8), symbol | scalars, max_size=3) | scalars,
        "messages": st.dictionaries(st.just("smtp_message"), scalars, max_size=1) | scalars,
        "is_skipped": scalars,
        "error": scalars,
    },
)


@given(documents)
def test_any_json_object_is_a_report_or_an_error(document: dict[str, object]) -> None:
    try:
        report = parse_verdict(200, json.dumps(document).encode())
    except RspamdProtocolError:
        return
    assert isinstance(report.score, float)
    assert isinstance(report.action, str)
    assert all(isinstance(v, float) for v in report.symbols.values())


@given(st.binary(max_size=500))
def test_any_bytes_are_a_report_or_an_error(body: bytes) -> None:
    try:
        parse_verdict(200, body)
    except RspamdProtocolError:
        pass
