"""HTML mail made inert: an allow-list sanitiser (nh3), and the framed document around it.

Mail HTML is written by anyone, so it is treated as hostile twice over:

1. **Sanitised** with nh3 (the Rust ``ammonia`` crate, an html5ever parser: it parses
   the way browsers do, so markup cannot mean one thing to the sanitiser and another to
   the browser). Only the elements and attributes listed here survive. Scripts, styles,
   SVG, MathML, frames, objects, embeds, forms and their controls, ``<meta>``,
   ``<base>`` and ``<link>`` go; so do every ``on...`` handler, ``javascript:`` and
   other schemes (links may be http, https, mailto, tel), relative URLs (they would
   point into the box), and ``data:`` URLs except raster images in ``img``. A ``style``
   attribute keeps only declarations of harmless properties (`STYLE_PROPERTIES`) whose
   values are plain words, numbers, lengths and colours: no ``url()``, no
   ``expression()``, no escapes or comments, no ``position`` (no overlays).
   Links get ``rel="noopener noreferrer"`` and ``target="_blank"``.
2. **Framed**: the reading view shows the result in an ``<iframe sandbox>`` without
   ``allow-scripts`` and without ``allow-same-origin`` (so even markup the sanitiser
   missed can neither run nor reach the box's pages or cookies), and the frame's own
   response carries `frame_policy`: ``default-src 'none'``, images only as data: URLs
   (or, when the user asks, from the web), inline styles only.

Remote images (http, https) are tracking beacons in most mail, so they are removed
unless the user asks for them; `Sanitised.blocked` says how many were. Images sent
with the message (``cid:`` URLs, RFC 2392) are put inline as data: URLs.

What this is not: the reading of the message (reading.py) or the pages (pages.py).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import nh3

from appliance.mail.webmail.reading import content_id

TAGS: Final = frozenset({
    "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big",
    "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del",
    "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer",
    "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li",
    "mark", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "section", "small",
    "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot",
    "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
})  # fmt: skip

#: Removed with everything inside them (the rest of the unlisted tags lose only the tag).
DROPPED_WITH_CONTENT: Final = frozenset({
    "script", "style", "title", "template", "noscript", "noembed", "noframes", "xmp",
    "iframe", "frame", "frameset", "object", "embed", "applet", "svg", "math",
    "select", "textarea", "button", "head",
})  # fmt: skip

_COMMON: Final = frozenset({"style", "title", "dir", "lang", "align"})
ATTRIBUTES: Final = {
    "*": set(_COMMON),
    "a": {"href"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": {"width", "height", "valign", "bgcolor", "colspan", "rowspan", "nowrap"},
    "th": {"width", "height", "valign", "bgcolor", "colspan", "rowspan", "nowrap", "scope"},
    "tr": {"valign", "bgcolor"},
    "tbody": {"valign"},
    "thead": {"valign"},
    "tfoot": {"valign"},
    "col": {"width", "span", "valign"},
    "colgroup": {"width", "span", "valign"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "time": {"datetime"},
    "hr": {"width", "size", "noshade", "color"},
    "details": {"open"},
}

#: CSS properties a style attribute may keep: text, colour, spacing and box sizes.
#: Not position/top/left/z-index/transform (overlays), not background(-image), content,
#: cursor, list-style-image, border-image or filter (they take url()), not behavior or
#: -moz-binding (old script hooks), not animation or transition.
STYLE_PROPERTIES: Final = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "text-align", "text-decoration", "text-transform",
    "text-indent", "letter-spacing", "word-spacing", "line-height", "white-space",
    "vertical-align", "direction", "unicode-bidi", "word-break", "word-wrap", "overflow-wrap",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-radius", "border-collapse",
    "border-spacing", "width", "height", "min-width", "max-width", "min-height",
    "max-height", "display", "list-style-type", "table-layout", "float", "clear",
    "overflow", "text-overflow",
})  # fmt: skip

#: Link schemes a message may point at; everything else is removed.
LINK_SCHEMES: Final = frozenset({"http", "https", "mailto", "tel"})
_RASTER_DATA: Final = re.compile(r"data:image/(png|jpeg|gif|webp|bmp);base64,[a-z0-9+/=\s]*\Z",
                                 re.IGNORECASE)  # fmt: skip
#: A style value: words, numbers, units, #colours, quotes, commas, "!important", and
#: the colour functions rgb()/hsl() with plain arguments; nothing else.
_STYLE_VALUE: Final = re.compile(r"[-\w\s#%.,'\"!/+]*\Z", re.ASCII)
_COLOUR_FUNCTION: Final = re.compile(r"\b(rgba?|hsla?)\(\s*[-\w\s%.,/]*\)", re.ASCII)
_STYLE_NAME: Final = re.compile(r"[a-z-]+\Z")

#: Around the sanitised markup in the frame. Its own rules only: the frame's CSP
#: allows inline style (there is no script to abuse it) and nothing else.
_FRAME_HEAD: Final = (
    '<!doctype html><html><head><meta charset="utf-8">'
    '<meta name="referrer" content="no-referrer">'
    "<style>"
    "html{color-scheme:light}"
    "body{margin:8px;font-family:Sarabun,'TH Sarabun New',Loma,'Noto Sans Thai',"
    "system-ui,sans-serif;color:#1b1f24;background:#fff;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}table{max-width:100%}"
    "pre{white-space:pre-wrap}"
    "</style></head><body>"
)
_FRAME_TAIL: Final = "</body></html>"


def frame_policy(*, remote_images: bool) -> str:
    """The Content-Security-Policy of a framed mail body (CSP Level 3)."""
    images = "data: 'self' https: http:" if remote_images else "data: 'self'"
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline';"
        " frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )


@dataclass(frozen=True)
class Sanitised:
    html: str
    #: Remote images removed (shown when the user asks: ``remote_images=True``).
    blocked: int


def clean_style(value: str) -> str | None:
    """Keep the harmless declarations of a style attribute; None if none is left."""
    kept = []
    for declaration in value.split(";"):
        name, colon, raw = declaration.partition(":")
        name = name.strip().lower()
        raw = raw.strip()
        if not colon or not raw or not _STYLE_NAME.match(name) or name not in STYLE_PROPERTIES:
            continue
        plain = _COLOUR_FUNCTION.sub("colour", raw)
        lowered = plain.lower()
        if not _STYLE_VALUE.match(plain) or "/*" in plain or "expression" in lowered:
            continue
        kept.append(f"{name}:{raw}")
    return ";".join(kept) or None


def sanitise(
    markup: str, *, remote_images: bool = False, inline: Mapping[str, str] | None = None
) -> Sanitised:
    """Return *markup* reduced to the allow-list (see the module), and what was blocked.

    *inline*: Content-ID -> data: URL of the images sent with the message.
    """
    inline = inline or {}
    blocked = 0

    def attribute(tag: str, name: str, value: str) -> str | None:
        nonlocal blocked
        if name == "style":
            return clean_style(value)
        if tag == "img" and name == "src":
            url = value.strip()
            scheme = url.partition(":")[0].lower()
            if scheme in ("http", "https"):
                if remote_images:
                    return url
                blocked += 1
                return None
            if scheme == "cid":
                return inline.get(content_id(url))
            if scheme == "data" and _RASTER_DATA.match(url):
                return url
            return None
        if tag == "a" and name == "href":
            url = value.strip()
            return url if url.partition(":")[0].lower() in LINK_SCHEMES else None
        return value

    cleaned = nh3.clean(
        markup,
        tags=set(TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        attribute_filter=attribute,
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        # "data" and "cid" reach `attribute` above, which keeps only raster images.
        url_schemes={*LINK_SCHEMES, "data", "cid"},
        url_relative="deny",
        filter_style_properties=set(STYLE_PROPERTIES),
    )
    return Sanitised(cleaned, blocked)


def frame_document(body: str) -> bytes:
    """The framed page around already-sanitised markup."""
    return (_FRAME_HEAD + body + _FRAME_TAIL).encode("utf-8")


def plain_document(text: str) -> bytes:
    """The framed page for a text body (normally shown in the reading view itself)."""
    return frame_document("<pre>" + html.escape(text) + "</pre>")
