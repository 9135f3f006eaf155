"""HTML form bodies: urlencoded and multipart/form-data (appliance.web.forms)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.web.forms import FormError, parse_form, parse_multipart, split_content_type

BOUNDARY = "----edgeboxBoundary7MA4YWxk"


def multipart(
    parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = BOUNDARY
) -> bytes:
    """Encode parts as a browser does: (name, filename, content type, data)."""
    out = b""
    for name, filename, content_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_urlencoded_fields_repeat_and_decode_utf8() -> None:
    form = parse_form(
        "application/x-www-form-urlencoded",
        b"uids=3&uids=5&q=%E0%B8%94%E0%B9%88%E0%B8%A7%E0%B8%99+x&empty=",
    )
    assert form.getlist("uids") == ("3", "5")
    assert form.get("q") == "ด่วน x"
    assert form.get("empty") == ""
    assert form.get("missing", "d") == "d"


def test_urlencoded_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(FormError):
        parse_form("application/x-www-form-urlencoded", b"q=%FF%FE")


def test_multipart_fields_and_files() -> None:
    pdf = b"%PDF-1.7\r\n--not-a-boundary\r\n\x00\xff"
    body = multipart(
        [
            ("to", None, None, "มาลี <malee@demo.go.th>".encode()),
            ("attachments", "รายงาน.pdf", "application/pdf", pdf),
            ("attachments", "", "application/octet-stream", b""),
        ]
    )
    form = parse_form(f"multipart/form-data; boundary={BOUNDARY}", body)
    assert form.get("to") == "มาลี <malee@demo.go.th>"
    files = form.uploads("attachments")
    assert [(f.filename, f.content_type, f.data) for f in files] == [
        ("รายงาน.pdf", "application/pdf", pdf)
    ]
    # The empty file input is sent but is not an upload.
    assert len(form.files["attachments"]) == 2


def test_multipart_quoted_boundary_and_client_path_file_name() -> None:
    body = multipart([("f", "C:\\Users\\x\\memo.txt", "text/plain", b"hi")], boundary="a b")
    form = parse_form('multipart/form-data; boundary="a b"', body)
    assert form.uploads("f")[0].filename == "memo.txt"


def test_multipart_escaped_quotes_in_names() -> None:
    body = multipart([("f", "say %22hi%22.txt", None, b"x")])
    form = parse_form(f"multipart/form-data; boundary={BOUNDARY}", body)
    assert form.uploads("f")[0].filename == 'say "hi".txt'


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary at all",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated'.encode(),
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: attachment; name="a"\r\n\r\nx\r\n'.encode()
        + f"--{BOUNDARY}--".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\n'.encode()
        + b"\xff\r\n"
        + f"--{BOUNDARY}--".encode(),
    ],
)
def test_multipart_malformed_is_a_form_error(body: bytes) -> None:
    with pytest.raises(FormError):
        parse_multipart(body, BOUNDARY)


def test_missing_or_bad_boundary_is_refused() -> None:
    with pytest.raises(FormError):
        parse_form("multipart/form-data", b"")
    with pytest.raises(FormError):
        parse_multipart(b"", "x" * 71)


def test_other_media_types_are_refused_unless_empty() -> None:
    assert parse_form("application/json", b"").fields == {}
    with pytest.raises(FormError):
        parse_form("application/json", b"{}")


def test_split_content_type() -> None:
    assert split_content_type('Multipart/Form-Data; boundary="x\\"y"; charset=utf-8') == (
        "multipart/form-data",
        {"boundary": 'x"y', "charset": "utf-8"},
    )


field_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters='"\r\n%'),
    min_size=1,
    max_size=20,
)


@given(
    st.lists(
        st.tuples(field_names, st.one_of(st.none(), field_names), st.binary(max_size=200)),
        max_size=8,
    )
)
def test_multipart_round_trip(parts: list[tuple[str, str | None, bytes]]) -> None:
    fields = [
        (n, fn, "application/octet-stream", d) if fn is not None
        else (n, None, None, d.decode("latin-1").encode())
        for n, fn, d in parts
    ]  # fmt: skip
    body = multipart(fields)
    form = parse_multipart(body, BOUNDARY)
    for name, filename, _type, data in fields:
        if filename is None:
            assert data.decode() in form.getlist(name)
        else:
            assert any(f.data == data for f in form.files[name])


@given(st.binary(max_size=400))
def test_multipart_never_raises_anything_but_form_error(body: bytes) -> None:
    try:
        parse_multipart(body, BOUNDARY)
    except FormError:
        pass


@given(st.binary(max_size=300))
def test_urlencoded_never_raises_anything_but_form_error(body: bytes) -> None:
    try:
        parse_form("application/x-www-form-urlencoded", body)
    except FormError:
        pass
