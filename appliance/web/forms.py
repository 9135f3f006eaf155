"""HTML form bodies: ``application/x-www-form-urlencoded`` and ``multipart/form-data``.

Sans-I/O: bytes in, a `Form` out, or `FormError` naming what is wrong. The server reads
the whole body first (a page route's ``max_body`` bounds it), so parsing never waits.

Multipart follows RFC 7578 on the framing of RFC 2046 §5.1.1: a body is a preamble,
then parts each opened by CRLF ``--boundary`` (the first one may start the body), each
part a header block, an empty line and content, and the last boundary followed by
``--``. What browsers actually send (WHATWG HTML §4.10.21.8) is narrower than the RFCs
allow: parameters are quoted, names and file names are UTF-8 with ``"``, CR and LF
percent-escaped, and there is no nested multipart and no Content-Transfer-Encoding.
That is what is accepted; anything else is a `FormError`, never a guess.

What this is not: the HTTP layer (server.py) or what any field means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from appliance.web.routes import Form, Upload

#: A form with more parts or fields than this is refused, not parsed (a body of many
#: tiny parts costs work out of proportion to its size).
MAX_FIELDS = 1000
#: RFC 2046 §5.1.1: a boundary is 1 to 70 characters of a restricted set.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))')
_PARAM_RAW = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"([^"]*)"|([^\s;"]+))')


class FormError(ValueError):
    """The body is not a well-formed form of its declared type."""


def parse_form(content_type: str | None, body: bytes) -> Form:
    """Parse a form *body* sent with *content_type*; raise `FormError` if malformed."""
    kind, params = split_content_type(content_type or "")
    if kind == "application/x-www-form-urlencoded":
        return parse_urlencoded(body)
    if kind == "multipart/form-data":
        boundary = params.get("boundary")
        if boundary is None:
            raise FormError("multipart/form-data without a boundary parameter")
        return parse_multipart(body, boundary)
    if not body:
        return Form()
    raise FormError(f"a form is sent as urlencoded or multipart, not {kind or 'untyped'}")


def split_content_type(value: str, *, quoted_pairs: bool = True) -> tuple[str, dict[str, str]]:
    """Return the lower-case media type and its parameters (RFC 9110 §8.3.1).

    *quoted_pairs* False reads quoted values as browsers write them in form parts,
    where a backslash is just a character (a Windows path), never an escape.
    """
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in (_PARAM if quoted_pairs else _PARAM_RAW).finditer(";" + rest):
        name, quoted, token = match.groups()
        if quoted is not None and quoted_pairs:
            quoted = re.sub(r"\\(.)", r"\1", quoted)
        params[name.lower()] = quoted if quoted is not None else token
    return kind.strip().lower(), params


def parse_urlencoded(body: bytes) -> Form:
    """WHATWG URL §5.1: ``name=value`` pairs joined by ``&``, ``+`` for space."""
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"the form is not valid urlencoded UTF-8: {exc}") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return Form(fields={name: tuple(values) for name, values in fields.items()})


def parse_multipart(body: bytes, boundary: str) -> Form:
    """Parse a ``multipart/form-data`` body delimited by *boundary*."""
    if not _BOUNDARY.match(boundary):
        raise FormError("the multipart boundary is not a valid RFC 2046 boundary")
    delimiter = b"--" + boundary.encode("ascii")
    # The first delimiter may open the body; later ones follow a CRLF (RFC 2046 §5.1.1).
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        start = body.find(b"\r\n" + delimiter)
        if start < 0:
            raise FormError("the multipart body has no opening boundary")
        position = start + 2 + len(delimiter)
    fields: dict[str, list[str]] = {}
    files: dict[str, list[Upload]] = {}
    count = 0
    separator = b"\r\n" + delimiter
    while True:
        if body.startswith(b"--", position):
            return Form(
                fields={name: tuple(values) for name, values in fields.items()},
                files={name: tuple(values) for name, values in files.items()},
            )
        # Transport padding (spaces, tabs) may follow a boundary before its CRLF.
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise FormError("a multipart boundary line is malformed")
        end = body.find(separator, line_end)
        if end < 0:
            raise FormError("the multipart body ends before its closing boundary")
        count += 1
        if count > MAX_FIELDS:
            raise FormError(f"the form has more than {MAX_FIELDS} parts")
        name, value = _part(body[line_end + 2 : end])
        if isinstance(value, Upload):
            files.setdefault(name, []).append(value)
        else:
            fields.setdefault(name, []).append(value)
        position = end + len(separator)


def _part(raw: bytes) -> tuple[str, str | Upload]:
    """One part: a field's text, or an `Upload` if it was sent with a file name."""
    head_end = raw.find(b"\r\n\r\n")
    if raw.startswith(b"\r\n"):
        head, data = b"", raw[2:]
    elif head_end < 0:
        raise FormError("a multipart part has no empty line after its headers")
    else:
        head, data = raw[:head_end], raw[head_end + 4 :]
    headers = _part_headers(head)
    disposition, params = split_content_type(
        headers.get("content-disposition", ""), quoted_pairs=False
    )
    if disposition != "form-data" or "name" not in params:
        raise FormError("every part needs Content-Disposition: form-data with a name")
    name = _unescape(params["name"])
    filename = params.get("filename")
    if filename is None:
        try:
            return name, data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"field {name!r} is not UTF-8") from None
    # An empty <input type=file> still sends a part, with filename="" and no content;
    # `Form.uploads` leaves those out.
    content_type, _ = split_content_type(headers.get("content-type", ""))
    return name, Upload(
        name=name,
        filename=_basename(_unescape(filename)),
        content_type=content_type or "application/octet-stream",
        data=data,
    )


def _part_headers(head: bytes) -> Mapping[str, str]:
    headers: dict[str, str] = {}
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("part headers are not UTF-8") from None
    for line in text.split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise FormError(f"malformed part header line {line[:40]!r}")
        headers[name.lower()] = value.strip()
    return headers


def _unescape(value: str) -> str:
    # WHATWG HTML: the browser escapes these three in names and file names.
    return value.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


def _basename(filename: str) -> str:
    # Old browsers sent a full client path; only the last segment is the name.
    return re.split(r"[\\/]", filename)[-1]
