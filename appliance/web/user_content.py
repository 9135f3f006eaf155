"""The one way the box answers with bytes a user supplied: mail parts, chat files, stickers.

The box's origin holds every signed-in user's session, so a file from one user that a
browser ran as a page of the box would act as whoever opened it. Every such answer
therefore carries, whatever else it says:

- ``Content-Security-Policy: default-src 'none'; sandbox``: opened as a page, it gets
  an opaque origin with no script, no plugins, no forms and nothing loaded;
- ``X-Content-Type-Options: nosniff``: a browser believes the type given, so bytes
  served as an image or ``application/octet-stream`` never load as script or style
  (Fetch §3.5: a ``<script>`` needs a JavaScript type under nosniff);
- ``Content-Disposition``: ``attachment`` (saved, never shown) unless the caller
  asks for ``inline`` *and* the type is one of `untrusted.INLINE_TYPES` (raster
  images, audio, video); anything else asked inline is downgraded here to an
  ``application/octet-stream`` attachment.

Chat files and stickers use `sniffed`: the bytes, not the uploader, pick the type.
Mail attachments keep webmail's own rule (`appliance.mail.webmail.reading.download_type`,
always attachment) and come through `user_content` as well.

What this is not: deciding what bytes are (`appliance.security.untrusted`).
"""

from __future__ import annotations

from typing import Final

from appliance.security.untrusted import (
    INLINE_TYPES,
    OCTET_STREAM,
    content_disposition,
    inline_type,
    parse_media_type,
)
from appliance.web.routes import Response

#: The policy of every user-supplied download: never rendered as a page of the box.
USER_CONTENT_POLICY: Final = "default-src 'none'; sandbox"


def user_content(
    data: bytes,
    filename: str,
    *,
    content_type: str = OCTET_STREAM,
    inline: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer with *data*, a user's file, so that it can never run in the box's origin."""
    declared = parse_media_type(content_type)
    if declared is None or (inline and declared.essence not in INLINE_TYPES):
        content_type, inline = OCTET_STREAM, False
    return Response(
        body=data,
        content_type=content_type,
        headers={
            **(headers or {}),
            "content-disposition": content_disposition(filename, inline=inline),
            "content-security-policy": USER_CONTENT_POLICY,
            "x-content-type-options": "nosniff",
        },
    )


def sniffed(
    data: bytes,
    filename: str,
    declared: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer with a user's file inline if its bytes are an inline type, else as a download."""
    found = inline_type(data, declared)
    if found is None:
        return user_content(data, filename, headers=headers)
    return user_content(data, filename, content_type=found, inline=True, headers=headers)
