"""Modified UTF-7, the encoding of IMAP mailbox names (RFC 3501 §5.1.3).

This file turns a mailbox name as a person reads it ("กล่องจดหมาย", "日本語") into the
7-bit form IMAP4rev1 puts on the wire ("&DgEOJQ5IDkcOIQ4IDhQOKw4hDjIOIg-") and back. It
knows nothing about hierarchy separators, INBOX, or which mailboxes exist.

The rules (RFC 3501 §5.1.3):

- Printable US-ASCII (0x20-0x7e) stands for itself, except "&", which is written "&-".
- Any other run of characters is UTF-16BE, in base64 with "," in place of "/", without
  "=" padding, between "&" and "-".

Decoding is strict: a name that is not in the one canonical form the encoder would
produce (an unterminated "&", padding bits that are not zero, printable ASCII inside
base64, two base64 runs back to back, a lone surrogate, any byte outside 0x20-0x7e) is
an error, because two spellings of one name would let a client create mailboxes that
look identical but are not.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["MUTF7Error", "decode", "encode"]


class MUTF7Error(ValueError):
    """A mailbox name is not valid modified UTF-7."""


def _is_direct(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def _encode_run(run: str) -> str:
    raw = base64.b64encode(run.encode("utf-16-be")).decode("ascii")
    return "&" + raw.rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """Encode a mailbox name in modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append(_encode_run("".join(run)))
                run.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(b64: str) -> str:
    if not b64:
        raise MUTF7Error('empty base64 run: "&" must be written "&-"')
    padded = b64.replace(",", "/") + "=" * (-len(b64) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
        return raw.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise MUTF7Error(f"bad base64 run {b64!r}") from exc


def decode(name: bytes | str) -> str:
    """Decode a modified UTF-7 mailbox name; raise `MUTF7Error` if it is not canonical."""
    if isinstance(name, bytes):
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MUTF7Error("mailbox name has 8-bit bytes") from exc
    else:
        text = name
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not _is_direct(ch):
            raise MUTF7Error(f"character {ch!r} must be encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise MUTF7Error('unterminated "&" run')
        if end == i + 1:
            out.append("&")
        else:
            out.append(_decode_run(text[i + 1 : end]))
        i = end + 1
    decoded = "".join(out)
    # The canonical-form check: padding bits, direct characters inside base64, adjacent
    # runs and surrogates all show up as a difference on the way back.
    if encode(decoded) != text:
        raise MUTF7Error("mailbox name is not in canonical modified UTF-7")
    return decoded
