"""Tests for web.render: what the portal shows of a stored message, and that it is inert."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import re
import unicodedata
from email.message import EmailMessage
from email.utils import collapse_rfc2231_value
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secmail import mime
from secmail.web import render
from secmail.web.render import (
    Attachment,
    MessageTooComplex,
    attachment_bytes,
    content_disposition,
    html_document,
    inline_part,
    read_message,
)
from secmail.web.sanitise import FRAME_STYLE

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
BINARY = bytes(range(256)) * 3 + b"\r\n\n\r\x00--boundary\r\n"


def cid_url(cid: str) -> str:
    return "/read/cid/" + cid


def raw_mime(*lines: str, body: bytes = b"") -> bytes:
    """A message written by hand, CRLF line ends, so that broken headers stay broken."""
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body


def html_message(body: str, *, text: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["To"] = "b@example.com"
    message["Subject"] = "html"
    if text is None:
        message.set_content(body, subtype="html")
    else:
        message.set_content(text)
        message.add_alternative(body, subtype="html")
    return message.as_bytes()


def with_attachment(filename_header: str, payload: bytes = b"%PDF-1.4\n") -> bytes:
    """A text message with one attachment whose Content-Disposition line is given verbatim."""
    encoded = base64.b64encode(payload).decode("ascii")
    return raw_mime(
        "From: a@example.com",
        "To: b@example.com",
        "Subject: files",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="XX"',
        body=(
            "--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n"
            "--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            f"{filename_header}\r\n\r\n{encoded}\r\n--XX--\r\n"
        ).encode(),
    )


# --- inertness checks -------------------------------------------------------------------

ALLOWED_TAGS = {
    "p", "br", "div", "span", "b", "i", "u", "em", "strong", "a", "ul", "ol", "li", "table",
    "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "code", "img", "hr", "font", "center", "small", "big", "sub", "sup",
}  # fmt: skip
DANGEROUS_SCHEMES = ("javascript:", "data:", "vbscript:")
FORBIDDEN_MARKUP = (
    "<script", "<style", "<form", "<meta", "<iframe", "<object", "<embed", "<base", "<link",
    "<svg", "<math", "<input", "<button",
)  # fmt: skip


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def elements(markup: str) -> list[tuple[str, dict[str, str]]]:
    parser = Elements()
    parser.feed(markup)
    parser.close()
    return parser.elements


def browser_url(value: str) -> str:
    return re.sub(r"[\t\n\r]", "", value).strip("\x00 \x0c").lower()


def assert_structurally_inert(markup: str, *, remote: bool) -> None:
    """Only allowed tags and attributes; every URL has a scheme we chose."""
    lower = markup.lower()
    for needle in FORBIDDEN_MARKUP:
        assert needle not in lower
    for tag, attrs in elements(markup):
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert name not in {"style", "class", "id", "srcset", "background", "action"}
            url = browser_url(value)
            if name != "alt":  # shown as text, never loaded
                assert not url.startswith(DANGEROUS_SCHEMES), (tag, name, value)
            if name == "href":
                assert tag == "a" and url.startswith(("http:", "https:", "mailto:"))
            if name == "src":
                allowed = ("/read/cid/", "http:", "https:") if remote else ("/read/cid/",)
                assert tag == "img" and url.startswith(allowed), value
        if tag == "a":
            assert attrs.get("rel") == "noopener noreferrer"
            assert attrs.get("target") == "_blank"


def assert_inert(markup: str) -> None:
    """The whole output, attributes and text alike, is free of script, style and forms."""
    assert_structurally_inert(markup, remote=False)
    unescaped = html.unescape(markup).lower()
    compact = re.sub(r"[\s\x00]", "", unescaped)
    for scheme in (*DANGEROUS_SCHEMES, "javascript&#"):
        assert scheme not in compact
    for needle in FORBIDDEN_MARKUP:
        assert needle not in unescaped
    assert not re.search(r"\son[a-z]+\s*=", unescaped)
    assert "style=" not in compact


XSS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=http://evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror='alert(1)'/>",
    "<body onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" &#14; javascript:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href="javascript&#58;alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="&#106;&#97;vascript:alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<math href="javascript:alert(1)">x</math>',
    "<style>@import 'http://evil.example/x.css';</style>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<p style="behavior:url(x.htc);-moz-binding:url(x.xml#xss)">x</p>',
    '<form action="http://evil.example/"><input name="pin"><button>Send</button></form>',
    '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    '<iframe src="http://evil.example/"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="http://evil.example/x.swf"></object>',
    '<embed src="http://evil.example/x.swf">',
    '<base href="http://evil.example/">',
    '<link rel=stylesheet href="http://evil.example/x.css">',
    "<!--<script>alert(1)</script>-->",
    "<!--[if IE]><script>alert(1)</script><![endif]-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<!-- --!><script>alert(1)</script> -->",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    "<textarea><script>alert(1)</script></textarea>",
    '<table background="javascript:alert(1)"><tr><td onclick="alert(1)">x</td></tr></table>',
    '<img src="x" srcset="javascript:alert(1) 1x">',
    '<a href="http://ok.example/" onmouseover="alert(1)">x</a>',
    '<a href="https://ok.example/" style="position:fixed;top:0" onclick="alert(1)">x</a>',
    '<img src="cid:x" onload="alert(1)" style="x:expression(alert(1))">',
    '<td background="javascript:alert(1)" style="x">x</td>',
    '<img """><script>alert(1)</script>">',
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
]


@pytest.mark.parametrize("payload", XSS)
def test_xss_corpus_is_inert(payload: str) -> None:
    """Each classic XSS vector loses its script, handlers, styles and dangerous URLs."""
    message = read_message(html_message(f"<p>before</p>{payload}<p>after</p>"), cid_url=cid_url)
    assert message.html is not None
    assert_inert(message.html)
    assert message.html.startswith("<p>before</p>")  # unclosed vectors may swallow the rest


@pytest.mark.parametrize("payload", XSS)
def test_xss_corpus_is_inert_with_remote_images(payload: str) -> None:
    """Allowing remote images lets through http(s) image sources and nothing else."""
    message = read_message(html_message(payload), load_remote_images=True, cid_url=cid_url)
    assert message.html is not None
    assert_structurally_inert(message.html, remote=True)


HTMLISH = [
    "<", ">", "/", "</", "/>", '"', "'", "=", " ", "\t", "\n", "&", "&#58;", "&colon;", "&#x3a;",
    "&lt;", "script", "style", "svg", "math", "img", "a", "iframe", "form", "meta", "base",
    "object", "embed", "link", "noscript", "template", "textarea", "table", "td", "p", "title",
    "src", "href", "srcset", "onerror", "onload", "ONCLICK", "xlink:href", "action", "content",
    "http-equiv", "refresh", "javascript:", "JAVASCRIPT:", "java\tscript:", "vbscript:",
    "data:", "cid:x", "http://e.example/i.png", "//e.example/p", "alert(1)", "url(", ")",
    "<!--", "-->", "--!>", "<![CDATA[", "]]>", "<!", "?>", "\x00", "x",
]  # fmt: skip


TAG_NAMES = sorted(ALLOWED_TAGS) + [
    "script", "SCRIPT", "style", "svg", "math", "iframe", "form", "input", "button", "meta",
    "base", "link", "object", "embed", "noscript", "template", "textarea", "title", "body",
    "frame", "video", "audio", "source", "xmp", "plaintext", "annotation-xml", "foreignObject",
]  # fmt: skip
ATTRIBUTE_NAMES = [
    "href", "src", "style", "STYLE", "onclick", "onerror", "ONLOAD", "onmouseover", "srcset",
    "action", "formaction", "xlink:href", "background", "class", "id", "title", "target", "rel",
    "data", "http-equiv", "content", "srcdoc", "dynsrc", "lowsrc", "poster", "colspan", "alt",
]  # fmt: skip
ATTRIBUTE_VALUES = [
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", "java&#x09;script:x", "javascript&#58;x",
    "&#106;avascript:x", " \x01javascript:x", "data:text/html,<script>x</script>",
    "vbscript:x", "http://e.example/i.png", "https://e.example/", "//e.example/p",
    "\\\\e.example\\p", "cid:x", "cid:", "mailto:a@b", "/relative", "#top",
    "background:url(javascript:x)", "expression(alert(1))", "x", "",
    "&quot;><script>alert(1)</script>", "0;url=javascript:x", "_top",
]  # fmt: skip
QUOTES = ['"', "'", ""]


@st.composite
def start_tags(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(TAG_NAMES))
    attributes = draw(
        st.lists(
            st.tuples(
                st.sampled_from(ATTRIBUTE_NAMES),
                st.sampled_from(QUOTES),
                st.sampled_from(ATTRIBUTE_VALUES),
            ),
            max_size=4,
        )
    )
    text = "".join(f" {a}={q}{v}{q}" for a, q, v in attributes)
    return f"<{name}{text}{draw(st.sampled_from(['>', '/>', '', ' ']))}"


HTML_PIECES = st.one_of(
    start_tags(),
    st.sampled_from(TAG_NAMES).map(lambda name: f"</{name}>"),
    st.sampled_from(HTMLISH),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(HTML_PIECES, max_size=30).map("".join), st.booleans())
def test_random_htmlish_input_is_inert(body: str, remote: bool) -> None:
    """Any mix of tags, attributes, quotes and schemes keeps only allowed markup and URLs."""
    message = read_message(html_message(body), load_remote_images=remote, cid_url=cid_url)
    assert message.html is not None
    assert_structurally_inert(message.html, remote=remote)
    document = html_document(message.html)
    assert_structurally_inert(document.split("<body>", 1)[1], remote=remote)


# --- the message ------------------------------------------------------------------------


def test_plain_text_message() -> None:
    """Headers come decoded and single-line; the text body is the text."""
    raw = raw_mime(
        "From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>",
        'To: a@example.com, "B, Person" <b@example.com>',
        "Cc: c@example.com",
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= \x1b[31mred",
        "Date: Tue, 1 Apr 2025 10:00:00 +0300",
        "Message-ID: <m1@example.com>",
        "References: <m0@example.com>",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        body="Hyvää päivää\r\nrivi 2\r\n".encode(),
    )
    message = read_message(raw)
    assert message.subject == "Grüße [31mred"
    assert message.from_ == "Jörg <jorg@example.com>"
    assert message.to == ("a@example.com", '"B, Person" <b@example.com>')
    assert message.cc == ("c@example.com",)
    assert message.date == "Tue, 01 Apr 2025 10:00:00 +0300"
    assert message.message_id == "<m1@example.com>"
    assert message.references == "<m0@example.com>"
    assert message.text == "Hyvää päivää\nrivi 2\n"
    assert message.html is None
    assert message.attachments == ()
    assert message.has_remote_images is False


def test_folded_header_with_line_breaks_is_one_line() -> None:
    """An encoded CR/LF or tab in a header cannot break the page's layout or a log line."""
    raw = raw_mime(
        "From: a@example.com",
        "Subject: =?utf-8?q?one=0D=0Atwo=09three=E2=80=AEgpj.exe?=",
        body=b"x\r\n",
    )
    assert read_message(raw).subject == "one two threegpj.exe"


def test_multipart_alternative() -> None:
    """Both bodies are shown: the text as text, the HTML sanitised."""
    raw = html_message('<p onclick="x()">Hello <b>there</b></p>', text="Hello there")
    message = read_message(raw)
    assert message.text == "Hello there\n"
    assert message.html == "<p>Hello <b>there</b></p>\n"
    assert message.attachments == ()


def test_html_only_message_has_no_text() -> None:
    """With only an HTML body the page shows just the iframe."""
    message = read_message(html_message("<h1>Hi</h1>"))
    assert message.text is None
    assert message.html == "<h1>Hi</h1>\n"


def test_links_open_in_a_new_context_without_referrer() -> None:
    """Links keep http/https/mailto targets and get rel=noopener noreferrer, target=_blank."""
    message = read_message(
        html_message(
            '<a href="https://ok.example/a?b=1&amp;c=2">w</a><a href="mailto:x@example.com">m</a>'
            '<a href="/relative">r</a><a href="ftp://f.example/">f</a>'
        )
    )
    links = [attrs for tag, attrs in elements(message.html or "") if tag == "a"]
    assert [link.get("href") for link in links] == [
        "https://ok.example/a?b=1&c=2",
        "mailto:x@example.com",
        None,
        None,
    ]
    assert all(link["rel"] == "noopener noreferrer" for link in links)
    assert all(link["target"] == "_blank" for link in links)


def related_message(image_type: str = "image/png", image: bytes = PNG) -> bytes:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["Subject"] = "picture"
    message.set_content("see picture")
    message.add_alternative(
        '<p>Logo: <img src="cid:logo.1@example.com" alt="logo"></p>'
        '<p><img src="cid:%3Cquoted%40example.com%3E"></p>',
        subtype="html",
    )
    html_part = message.get_payload()[1]
    maintype, subtype = image_type.split("/")
    html_part.add_related(image, maintype, subtype, cid="<logo.1@example.com>")
    html_part.add_related(b"GIF89a", "image", "gif", cid="<quoted@example.com>")
    return message.as_bytes()


def test_cid_image_is_rewritten_and_served() -> None:
    """cid: images point at cid_url and inline_part returns their bytes; they are no attachment."""
    raw = related_message()
    message = read_message(raw, cid_url=cid_url)
    sources = [attrs.get("src") for tag, attrs in elements(message.html or "") if tag == "img"]
    assert sources == ["/read/cid/logo.1@example.com", "/read/cid/quoted@example.com"]
    assert message.attachments == ()
    assert message.has_remote_images is False
    assert inline_part(raw, "logo.1@example.com") == ("image/png", PNG)
    assert inline_part(raw, "<quoted@example.com>") == ("image/gif", b"GIF89a")
    assert inline_part(raw, "missing@example.com") is None


def test_default_cid_url_percent_encodes() -> None:
    """Without a cid_url the image points at a relative, percent-encoded cid/ URL."""
    message = read_message(related_message())
    assert 'src="cid/logo.1%40example.com"' in (message.html or "")


def test_svg_is_never_served_inline() -> None:
    """An SVG 'image' can carry script, so inline_part refuses it and it is listed instead."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    raw = related_message("image/svg+xml", svg)
    assert inline_part(raw, "logo.1@example.com") is None
    message = read_message(raw)
    assert [a.content_type for a in message.attachments] == ["image/svg+xml"]


def test_inline_part_only_serves_images() -> None:
    """A Content-ID on a non-image part does not make it servable as a picture."""
    raw = raw_mime(
        "From: a@example.com",
        'Content-Type: multipart/related; boundary="R"',
        body=(
            b'--R\r\nContent-Type: text/html\r\n\r\n<img src="cid:doc">\r\n'
            b"--R\r\nContent-Type: text/html\r\nContent-ID: <doc>\r\n\r\n<script>x</script>\r\n"
            b"--R--\r\n"
        ),
    )
    assert inline_part(raw, "doc") is None


REMOTE = (
    '<p>Hi<img src="https://tracker.example/p.gif?u=1" alt="t"><img src="//cdn.example/x.png"></p>'
)


def test_remote_images_are_blocked_by_default() -> None:
    """Remote image sources are removed and the page is told there were some."""
    message = read_message(html_message(REMOTE))
    assert message.has_remote_images is True
    assert "tracker.example" not in (message.html or "")
    assert "cdn.example" not in (message.html or "")
    assert '<img alt="t">' in (message.html or "")


def test_remote_images_are_kept_when_the_reader_allows() -> None:
    """With load_remote_images the sources stay (protocol-relative made https)."""
    message = read_message(html_message(REMOTE), load_remote_images=True)
    assert message.has_remote_images is False
    sources = [attrs.get("src") for tag, attrs in elements(message.html or "") if tag == "img"]
    assert sources == ["https://tracker.example/p.gif?u=1", "https://cdn.example/x.png"]


def test_message_without_html_has_no_remote_images() -> None:
    """The remote-image flag is only about the HTML body."""
    message = EmailMessage()
    message.set_content("see https://tracker.example/p.gif")
    assert read_message(message.as_bytes()).has_remote_images is False


# --- attachments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Content-Disposition: attachment; filename="report.pdf"', "report.pdf"),
        (
            'Content-Disposition: attachment; filename="C:\\Users\\eve\\Desktop\\evil.pdf"',
            "evil.pdf",
        ),
        ("Content-Disposition: attachment; filename=C:\\Users\\eve\\evil.pdf", "evil.pdf"),
        (
            'Content-Disposition: attachment; filename="C:\\\\Users\\\\eve\\\\evil.pdf"',
            "evil.pdf",
        ),
        ("Content-Disposition: attachment; filename*=UTF-8''..%5C..%5Cwin.ini.pdf", "win.ini.pdf"),
        ('Content-Disposition: attachment; filename="\xe4iti.pdf"', "äiti.pdf"),
        (
            "Content-Disposition: attachment;\r\n filename*0*=UTF-8''%C3%A4%20long%20;\r\n"
            " filename*1=name.pdf",
            "ä long name.pdf",
        ),
        ('Content-Disposition: attachment; filename="../../etc/passwd"', "passwd"),
        ("Content-Disposition: attachment; filename*=UTF-8''%C3%A4.pdf", "ä.pdf"),
        ('Content-Disposition: attachment; filename="=?utf-8?q?=C3=A4_x.pdf?="', "ä x.pdf"),
        (
            "Content-Disposition: attachment; filename*=UTF-8''a%22b%0D%0AX-Evil%3A%201.pdf",
            "a_b__X-Evil_ 1.pdf",
        ),
        ("Content-Disposition: attachment; filename*=UTF-8''%E2%80%AEfdp.exe", "_fdp.exe"),
        ('Content-Disposition: attachment; filename="...hidden.pdf"', "hidden.pdf"),
        ('Content-Disposition: attachment; filename="a*b?c<d>e|f:g.pdf"', "a_b_c_d_e_f_g.pdf"),
        ('Content-Disposition: attachment; filename="x/.."', "attachment-1.pdf"),
        ("Content-Disposition: attachment", "attachment-1.pdf"),
        ('Content-Disposition: inline; filename="ok.pdf"', "ok.pdf"),
    ],
)
def test_attachment_names_are_safe(header: str, expected: str) -> None:
    """Names lose paths, controls, quotes and reserved characters; no name gets a made-up one."""
    message = read_message(with_attachment(header, b"12345"))
    assert message.attachments == (Attachment(0, expected, "application/pdf", 5),)


def test_long_attachment_name_keeps_its_extension() -> None:
    """A name over 100 characters is cut in the middle, not in the extension."""
    message = read_message(
        with_attachment(f'Content-Disposition: attachment; filename="{"n" * 300}.docx"')
    )
    name = message.attachments[0].filename
    assert len(name) == 100 and name.endswith("nnn.docx")


def test_attachments_listed_in_order_with_sizes() -> None:
    """Every attachment is listed once with its type, decoded size and a stable index."""
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content("body")
    message.add_attachment(BINARY, "application", "octet-stream", filename="blob.bin")
    message.add_attachment("notes ä\n", filename="notes.txt")
    message.add_attachment(PNG, "image", "png")  # no name, not referenced by any HTML
    listed = read_message(message.as_bytes()).attachments
    assert listed == (
        Attachment(0, "blob.bin", "application/octet-stream", len(BINARY)),
        Attachment(1, "notes.txt", "text/plain", len("notes ä\n".encode())),
        Attachment(2, "attachment-3.png", "image/png", len(PNG)),
    )


def test_attachment_bytes_are_identical() -> None:
    """A binary payload downloads byte for byte as it was sent."""
    message = EmailMessage()
    message.set_content("body")
    message.add_attachment(BINARY, "application", "octet-stream", filename="blob.bin")
    message.add_attachment(PNG, "image", "png", filename="pic.png")
    raw = message.as_bytes()
    assert attachment_bytes(raw, 0) == (
        Attachment(0, "blob.bin", "application/octet-stream", len(BINARY)),
        BINARY,
    )
    assert attachment_bytes(raw, 1)[1] == PNG


@pytest.mark.parametrize("index", [2, -1, 99])
def test_missing_attachment_raises_index_error(index: int) -> None:
    """An index that lists nothing is an IndexError (the route answers 404)."""
    message = EmailMessage()
    message.set_content("body")
    message.add_attachment(b"a", "application", "octet-stream", filename="a")
    message.add_attachment(b"b", "application", "octet-stream", filename="b")
    with pytest.raises(IndexError):
        attachment_bytes(message.as_bytes(), index)


def test_nested_message_is_one_attachment() -> None:
    """An attached message is listed once as message.eml, not opened into its parts."""
    inner = EmailMessage()
    inner["From"] = "c@example.com"
    inner["Subject"] = "forwarded"
    inner.set_content("inner text")
    inner.add_attachment(b"inner file", "application", "pdf", filename="inner.pdf")
    outer = EmailMessage()
    outer["From"] = "a@example.com"
    outer.set_content("see the forwarded message")
    outer.add_attachment(inner)
    raw = outer.as_bytes()
    message = read_message(raw)
    assert message.text == "see the forwarded message\n"
    assert [(a.filename, a.content_type) for a in message.attachments] == [
        ("message.eml", "message/rfc822")
    ]
    found, data = attachment_bytes(raw, 0)
    assert found.size == len(data)
    reparsed = email.message_from_bytes(data, policy=email.policy.default)
    assert reparsed["Subject"] == "forwarded"
    assert [p.get_filename() for p in reparsed.iter_attachments()] == ["inner.pdf"]


def test_nested_message_bytes_keep_crlf_and_headers() -> None:
    """The attached message downloads exactly as it appears inside the outer one."""
    inner = (
        b"From: c@example.com\r\nSubject: " + b"long " * 30 + b"\r\n continued\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nh\xc3\xa4llo\r\nFrom here\r\n"
    )
    raw = raw_mime(
        "From: a@example.com",
        'Content-Type: multipart/mixed; boundary="B"',
        body=b"--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--B--\r\n",
    )
    assert attachment_bytes(raw, 0)[1] == inner


def test_unreferenced_cid_image_is_an_attachment() -> None:
    """An inline image the HTML never shows is listed, so the reader can still get it."""
    raw = related_message()
    raw = raw.replace(b"cid:logo.1@example.com", b"cid:other@example.com")
    message = read_message(raw)
    assert [a.content_type for a in message.attachments] == ["image/png"]
    assert attachment_bytes(raw, 0)[1] == PNG


def test_extra_inline_parts_are_listed_so_nothing_is_hidden() -> None:
    """A second inline text part and an unused inline image are listed; blank text is not."""
    raw = raw_mime(
        "From: a@example.com",
        'Content-Type: multipart/mixed; boundary="M"',
        body=b"--M\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--M\r\nContent-Type: image/png\r\nContent-Disposition: inline\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PNG) + b"\r\n"
        b"--M\r\nContent-Type: text/plain\r\n\r\nsecond\r\n"
        b"--M\r\nContent-Type: text/plain\r\n\r\n \r\n"
        b"--M--\r\n",
    )
    message = read_message(raw)
    assert message.text == "first"
    assert message.attachments == (
        Attachment(0, "attachment-1.png", "image/png", len(PNG)),
        Attachment(1, "attachment-2.txt", "text/plain", len(b"second")),
    )
    assert attachment_bytes(raw, 1)[1] == b"second"


def test_other_versions_of_the_body_are_not_attachments() -> None:
    """Every version in a multipart/alternative is the same text: none is listed."""
    raw = raw_mime(
        "From: a@example.com",
        'Content-Type: multipart/alternative; boundary="A"',
        body=b"--A\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--A\r\nContent-Type: text/enriched\r\n\r\n<bold>rich</bold>\r\n"
        b"--A\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n"
        b"--A--\r\n",
    )
    message = read_message(raw)
    assert (message.text, message.html, message.attachments) == ("plain", "<b>html</b>", ())


def nested_multiparts(depth: int) -> bytes:
    """A PDF inside C{depth} multiparts inside each other."""
    raw = b'Content-Type: multipart/mixed; boundary="B0"\r\n\r\n' + b"".join(
        b'--B%d\r\nContent-Type: multipart/mixed; boundary="B%d"\r\n\r\n' % (i - 1, i)
        for i in range(1, depth)
    )
    return raw + b"--B%d\r\nContent-Type: application/pdf\r\n\r\nx\r\n" % (depth - 1)


def nested_messages(depth: int) -> bytes:
    """A text inside C{depth} attached messages inside each other."""
    raw = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for _ in range(depth):
        raw = b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + raw
    return b"From: a@example.com\r\nSubject: deep\r\n" + raw


def test_nesting_within_the_limit_is_walked() -> None:
    """Multiparts nested up to the limit show the attachment at the bottom."""
    raw = nested_multiparts(mime.MAX_NESTING - 1)
    assert read_message(raw).attachments == (
        Attachment(0, "attachment-1.pdf", "application/pdf", 1),
    )
    assert attachment_bytes(raw, 0)[1] == b"x"


@pytest.mark.parametrize(
    "raw", [nested_multiparts(900), nested_messages(600)], ids=["multiparts", "messages"]
)
def test_deep_nesting_is_too_complex(raw: bytes) -> None:
    """Nesting beyond the limit (which overflowed the stack before) is refused with
    MessageTooComplex by every reader of the message, not a RecursionError."""
    with pytest.raises(MessageTooComplex, match="nested more than 20 deep"):
        read_message(raw)
    with pytest.raises(MessageTooComplex):
        attachment_bytes(raw, 0)
    with pytest.raises(MessageTooComplex):
        inline_part(raw, "x")


def test_too_many_parts_is_too_complex() -> None:
    """More parts than the limit are refused before they are all parsed."""
    parts = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(1001))
    raw = b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + b"--B--\r\n"
    with pytest.raises(MessageTooComplex, match="more than 1000 parts"):
        read_message(raw)


def test_too_many_header_lines_is_too_complex() -> None:
    """Header lines beyond the limit are refused."""
    raw = b"X-A: b\r\n" * 10_001 + b"\r\nbody\r\n"
    with pytest.raises(MessageTooComplex, match="header lines"):
        read_message(raw)


# --- charsets ---------------------------------------------------------------------------

# Codecs Python ships that are no text charsets: slow (punycode), or they make other
# characters of the bytes than the bytes show, or they hide markup (utf-7).
NOT_TEXT = [
    "punycode", "idna", "rot13", "rot_13", "hex", "base64", "zlib", "bz2", "uu", "quopri",
    "utf-7", "raw_unicode_escape", "unicode_escape", "unicode-escape", "mbcs", "undefined",
]  # fmt: skip


@pytest.mark.parametrize("charset", NOT_TEXT)
def test_text_part_in_a_non_text_codec_is_read_as_utf8(charset: str) -> None:
    """A body declared in a non-text codec is not decoded with it: UTF-8, U+FFFD for the rest."""
    body = b"\\u0041 +ADw-b+AD4- xn--caf-dma 68656c6c6f h\xc3\xa4llo"
    raw = b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n" + body
    assert read_message(raw).text == body.decode("utf-8") + "\n"[:0]


def test_punycode_body_is_not_decoded_with_punycode() -> None:
    """A large text part declared punycode (20 s to decode before) is shown as it came."""
    body = b"a" * 300_000 + b"-" + b"b" * 10
    raw = b"Content-Type: text/plain; charset=punycode\r\n\r\n" + body
    assert read_message(raw).text == body.decode("ascii")


@pytest.mark.parametrize(
    ("charset", "data", "expected"),
    [
        ("iso-8859-1", b"h\xe4llo", "hällo"),
        ("windows-1252", b"\x80 5", "€ 5"),
        ("koi8-r", b"\xf0\xd2\xc9\xd7\xc5\xd4", "Привет"),
        ("shift_jis", b"\x82\xb1\x82\xf1", "こん"),
        ("iso-2022-jp", b"\x1b$B$3$s\x1b(B", "こん"),
        ("gb2312", b"\xc4\xe3\xba\xc3", "你好"),
        ("big5", b"\xa7\x41\xa6\x6e", "你好"),
        ("euc-kr", b"\xbe\xc8\xb3\xe7", "안녕"),
        ("ks_c_5601-1987", b"\xbe\xc8\xb3\xe7", "안녕"),
        ("utf-16", "hi".encode("utf-16"), "hi"),
        ("ISO_8859-15", b"\xa4", "€"),
    ],
)
def test_text_charsets_are_honoured(charset: str, data: bytes, expected: str) -> None:
    """The text charsets mail uses are decoded as declared."""
    raw = b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\n" + data
    assert read_message(raw).text == expected


@pytest.mark.parametrize("charset", ["punycode", "unicode_escape", "utf-7"])
def test_headers_in_a_non_text_codec_are_not_decoded_with_it(charset: str) -> None:
    """Encoded words and RFC 2231 names labelled with a non-text codec are not decoded by it."""
    word = f"=?{charset}?q?abc-\\u0041+ADw-?="
    raw = raw_mime(
        f"Subject: {word}",
        f"From: {word} <a@example.com>",
        "Content-Type: multipart/mixed; boundary=B",
        body=(
            f"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\n"
            f"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
            f"filename*={charset}''abc-\\u0041+ADw-.pdf\r\n\r\ny\r\n--B--\r\n"
        ).encode(),
    )
    message = read_message(raw)
    assert message.subject == "abc-\\u0041+ADw-"
    assert "abc-\\\\u0041+ADw-" in message.from_  # quoted: the backslash is escaped
    assert message.attachments[0].filename == "u0041+ADw-.pdf"  # after the backslash


def test_encoded_words_in_text_charsets_are_decoded() -> None:
    """RFC 2047 words in text charsets, split characters included, read as they should."""
    raw = raw_mime(
        "Subject: =?utf-8?q?caf=C3?= =?utf-8?q?=A9?= and =?iso-8859-1?b?5A==?=",
        body=b"x",
    )
    assert read_message(raw).subject == "café and ä"


# --- HTML within the sanitiser's limits ---------------------------------------------------


def test_deeply_nested_html_is_shown_as_text() -> None:
    """HTML nested deeper than the limit (minutes in the sanitiser) is shown as text."""
    body = "<div>" * 100_000 + "DeepText &amp; more" + "</div>" * 100_000
    message = read_message(html_message(body))
    assert message.html is None
    assert message.text is not None and "DeepText & more" in message.text
    assert message.incomplete


def test_deep_html_beside_a_text_version_shows_the_text() -> None:
    """Too deep HTML with a text version: the text version is shown, marked incomplete."""
    message = read_message(html_message("<div>" * 1000 + "x", text="TextVersion"))
    assert (message.html, message.text, message.incomplete) == (None, "TextVersion\n", True)


def test_end_tags_of_other_elements_do_not_hide_depth() -> None:
    """</span> closes no <div>: a count that let it would let deep HTML through."""
    message = read_message(html_message("<div></span>" * 1000 + "x"))
    assert message.html is None


def test_ordinary_html_is_not_affected_by_the_limits() -> None:
    """Sloppy but ordinary HTML (unclosed paragraphs, cells) is sanitised as usual."""
    body = "<table>" + "<tr><td>cell<td><p>para<p>more<br>" * 2000 + "</table>"
    message = read_message(html_message(body))
    assert message.html is not None and "cell" in message.html
    assert not message.incomplete


def test_long_html_is_cut() -> None:
    """HTML longer than the limit is cut before the sanitiser, and marked incomplete."""
    body = "<p>" + "x" * (render.MAX_HTML_CHARS + 10) + "TailText</p>"
    message = read_message(html_message(body))
    assert message.html is not None and "TailText" not in message.html
    assert message.incomplete


def test_long_text_is_cut() -> None:
    """Text longer than the limit is cut, and marked incomplete."""
    raw = b"Content-Type: text/plain\r\n\r\n" + b"x" * (render.MAX_TEXT_CHARS + 10)
    message = read_message(raw)
    assert message.text is not None and len(message.text) == render.MAX_TEXT_CHARS
    assert message.incomplete


def test_inline_images_become_data_urls_from_one_parse() -> None:
    """With inline_images, cid: pictures are data: URLs; the same one twice is fine."""
    message = EmailMessage()
    message.set_content("text")
    message.add_alternative('<img src="cid:pic@x"><img src="cid:pic@x">', subtype="html")
    html_part = message.get_payload()[1]  # type: ignore[index]
    html_part.add_related(PNG, "image", "png", cid="<pic@x>")
    shown = read_message(message.as_bytes(), inline_images=True)
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")
    assert shown.html is not None and shown.html.count(data_url) == 2


# --- malformed input --------------------------------------------------------------------

MALFORMED = [
    b"",
    b"\r\n\r\n",
    b"no headers at all, just text\n",
    b"\xff\xfe\x00garbage\x00\x80\x81",
    b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\nno boundary here\r\n",
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/pl',
    b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nh\xe4llo\r\n",
    b"Content-Type: text/plain; charset=zlib\r\n\r\nhello\r\n",
    b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPHA+!!!broken",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nhello\r\n",
    b'From: =?utf-8?b?@@@?= <\r\nTo: ,,,<<>>@@ "\r\nSubject: =?x-bad?q?=ZZ?=\r\n\r\nbody\r\n',
    b"From: J\xf6e <j@example.com>\r\nSubject: H\xe4llo\r\n\r\nbody \xe4\r\n",
    b"To: undisclosed-recipients:;\r\nDate: not a date\r\n\r\nbody\r\n",
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nRnJvbTogYUBiCgp4Cg==\r\n--B--\r\n",
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    + b'--B\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n' * 50,
    b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=bad''%ZZ\r\n"
    b"\r\nJVBERi0=\r\n",
    b'Content-Type: text/plain; charset="utf-8\r\n'
    b'Content-Disposition: attachment; filename="\r\n\r\n',
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_mime_does_not_raise(raw: bytes) -> None:
    """A broken message still renders, and every string it yields can be sent as UTF-8."""
    message = read_message(raw)
    for value in (message.subject, message.from_, message.date, *message.to, *message.cc):
        value.encode("utf-8")
        assert "\n" not in value and "\r" not in value
    for value in (message.text, message.html):
        if value is not None:
            value.encode("utf-8")
    for attachment in message.attachments:
        assert attachment_bytes(raw, attachment.index)[0] == attachment
        content_disposition(attachment.filename).encode("ascii")
    assert inline_part(raw, "x") is None


def test_unparseable_body_is_shown_as_text() -> None:
    """When no body can be found the raw body text is shown rather than nothing."""
    raw = MALFORMED[4]
    message = read_message(raw)
    assert message.from_ == "a@example.com"
    assert message.text == "no boundary here\n"


def test_undecodable_charset_falls_back_to_utf8() -> None:
    """An unknown charset label does not hide the text."""
    message = read_message(
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nh\xc3\xa4llo\r\n"
    )
    assert message.text == "hällo\n"


def test_eight_bit_text_labelled_ascii_is_read_as_utf8() -> None:
    """Mail labelled us-ascii that carries UTF-8 shows the letters, not replacement marks."""
    message = read_message(b"Content-Type: text/plain; charset=us-ascii\r\n\r\nh\xc3\xa4llo\r\n")
    assert message.text == "hällo\n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """Arbitrary bytes parse to something showable."""
    message = read_message(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + raw)
    assert isinstance(message.subject, str)
    read_message(raw)


# --- headers and the iframe document ----------------------------------------------------


def disposition_parts(header: str) -> tuple[str, str]:
    """The plain and the RFC 2231 filename, as Python's email package reads them back."""
    parsed = email.message_from_string(f"Content-Disposition: {header}\n\n")
    params = parsed.get_params(header="content-disposition")
    assert params is not None
    plain = [v for k, v in params if k == "filename" and isinstance(v, str)]
    extended = [v for k, v in params if k == "filename" and isinstance(v, tuple)]
    assert len(plain) == 1 and len(extended) == 1
    return plain[0], collapse_rfc2231_value(extended[0])


def test_content_disposition_for_a_unicode_name() -> None:
    """Non-ASCII names get an ASCII fallback and an exact UTF-8 filename*."""
    header = content_disposition("Päivän raportti €.pdf")
    assert header == (
        'attachment; filename="P_iv_n raportti _.pdf"; '
        "filename*=UTF-8''P%C3%A4iv%C3%A4n%20raportti%20%E2%82%AC.pdf"
    )
    assert disposition_parts(header) == ("P_iv_n raportti _.pdf", "Päivän raportti €.pdf")


def test_content_disposition_cannot_be_injected() -> None:
    """CR/LF and quotes in a name cannot end the header or the quoted string."""
    header = content_disposition('x"; filename="evil.exe"\r\nSet-Cookie: a=b')
    assert "\r" not in header and "\n" not in header
    assert header.count('"') == 2
    plain, extended = disposition_parts(header)
    assert plain == extended == "x_; filename=_evil.exe___Set-Cookie_ a=b"


@settings(max_examples=500)
@given(st.text())
def test_content_disposition_property(name: str) -> None:
    """For any name the header is one ASCII line that parses back to a safe, stable name."""
    header = content_disposition(name)
    assert header.isascii() and header.isprintable()
    assert header.count('"') == 2 and "\\" not in header
    plain, safe = disposition_parts(header)
    assert 0 < len(safe) <= 100
    assert not safe.startswith((".", " ")) and not safe.endswith((".", " "))
    assert not set(safe) & set("\"'/\\:*?<>|\r\n\t\x00")
    assert all(c.isprintable() for c in safe)
    assert content_disposition(safe) == header  # the safe name is a fixed point
    assert len(plain) == len(safe) and plain.isascii()


@given(st.text(st.characters(categories=["L", "N"]) | st.sampled_from(" -_()[]"), max_size=100))
def test_content_disposition_keeps_ordinary_names(name: str) -> None:
    """A name of letters, digits and plain punctuation comes back unchanged."""
    name = name.strip(" ")
    header = content_disposition(name)
    assert disposition_parts(header)[1] == (unicodedata.normalize("NFC", name) or "attachment")


def test_html_document_wraps_without_script() -> None:
    """The iframe page declares UTF-8, adds no script and one style sheet: the interface's font."""
    document = html_document("<p>hi</p>")
    assert document.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in document
    assert "<body><p>hi</p></body>" in document
    assert "<script" not in document and "style=" not in document
    assert document.count("<style") == 1 and f"<style>{FRAME_STYLE}</style>" in document
    assert "system-ui" in FRAME_STYLE


def test_inline_pictures_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data URLs stop at MAX_INLINE_BYTES: one picture used many times cannot fill memory."""
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")
    monkeypatch.setattr(render, "MAX_INLINE_BYTES", len(data_url) * 2)
    message = EmailMessage()
    message.set_content("text")
    message.add_alternative('<img src="cid:pic@x">' * 5, subtype="html")
    html_part = message.get_payload()[1]  # type: ignore[index]
    html_part.add_related(PNG, "image", "png", cid="<pic@x>")
    shown = read_message(message.as_bytes(), inline_images=True)
    assert shown.html is not None and shown.html.count(data_url) == 2
