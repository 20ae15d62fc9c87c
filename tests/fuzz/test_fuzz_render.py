"""
Fuzzing what the portal shows of a stored message (web/render.py) and the replies and forwards
built from it (web/reply.py).

Seed messages from tests/fuzz/corpus are mutated: headers spliced in, charsets swapped
(punycode, utf-7, idna, unknown ones), boundaries broken, transfer encodings changed, parts
nested, bytes inserted, the message cut short. Whatever comes out: render raises nothing but
its documented errors, its HTML passes the sanitiser's invariants, its output stays in
proportion to its input, and a reply or forward either is refused with a ReplyError or is a
mail whose headers are only the ones the builder writes.

Inputs stay small (a few KB, nesting a few levels) so that the run time stays bounded while
slow charsets and deep nesting are being fixed (issue 10); the deep cases have tests of their own.
"""

from __future__ import annotations

import email.policy
import os
import random
import re
import signal
import string
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.parser import BytesParser
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secmail.crypto import MasterKey
from secmail.mime import MessageTooComplex
from secmail.web import render
from secmail.web.reply import MODES, ReplyError, Upload, build_reply, reply_choices
from secmail.web.reply_letters import reply_messages
from secmail.web.safe_text import safe_filename
from secmail.web.sanitise import html_document
from tests.fuzz.support import corpus, fuzz_settings, gateway_settings

CORPUS = corpus()
SETTINGS = gateway_settings(tempfile.gettempdir())
#: What the reply builders read of the settings.
SECTIONS: dict[str, Any] = {
    "routes": SETTINGS.routes,
    "secure": SETTINGS.secure,
    "identity": SETTINGS.identity,
}
MASTER = MasterKey(os.urandom(32))
DATE = datetime(2024, 4, 9, 12, 0, tzinfo=UTC)

# --- the sanitiser's invariants ----------------------------------------------------------------

ALLOWED_TAGS = {
    "p", "br", "div", "span", "b", "i", "u", "em", "strong", "a", "ul", "ol", "li", "table",
    "thead", "tbody", "tfoot", "tr", "td", "th", "caption", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "code", "img", "hr", "font", "center", "small", "big", "sub", "sup",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "rel", "target"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign"},
    "font": {"color", "size", "face"},
}
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
EVENT_HANDLER = re.compile(r"<[^>]*[\s/\"']on[a-z]+\s*=", re.IGNORECASE)


class InertHtml(HTMLParser):
    """Checks every tag and attribute of sanitised HTML as a browser would parse it."""

    def __init__(self, remote_images: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.remote_images = remote_images

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in ALLOWED_TAGS, f"tag <{tag}> let through"
        for name, value in attrs:
            assert not name.startswith("on"), f"event handler {name}= on <{tag}>"
            assert name in ALLOWED_ATTRIBUTES.get(tag, set()), f"{name}= let through on <{tag}>"
            if name not in ("href", "src"):
                continue
            url = re.sub(r"[\t\n\r]", "", value or "").strip("".join(map(chr, range(0x21))))
            match = SCHEME.match(url)
            scheme = match.group(1).lower() if match else None
            if name == "href":
                assert scheme in ("http", "https", "mailto"), f"link to {url!r}"
            elif scheme is None:
                assert url.startswith("cid/"), f"image from {url!r}"
            else:
                assert self.remote_images and scheme in ("http", "https"), f"image from {url!r}"

    handle_startendtag = handle_starttag


def assert_inert(html: str, remote_images: bool) -> None:
    """No script, no event handler, no javascript: (or other unsafe) URL survives."""
    lowered = html.lower()
    assert "<script" not in lowered and "<style" not in lowered and "<iframe" not in lowered
    assert not EVENT_HANDLER.search(html), "event handler attribute in the output"
    parser = InertHtml(remote_images)
    parser.feed(html)
    parser.close()


# --- mutations ---------------------------------------------------------------------------------

CHARSETS = [
    "utf-8", "us-ascii", "iso-8859-1", "windows-1252", "koi8-r", "shift_jis", "iso-2022-jp",
    "gb2312", "utf-16", "utf-32", "utf-8-sig", "punycode", "utf-7", "idna", "unknown-8bit",
    "x-unknown", "", '"', "base64", "hex", "rot13", "zlib", "uu", "unicode_escape",
    "raw_unicode_escape", "mbcs", "cp65001", "utf8'en'", "ascii\x00",
]  # fmt: skip
ENCODINGS = [
    "base64", "quoted-printable", "7bit", "8bit", "binary", "x-uuencode", "uuencode", "BASE64",
    "x-unknown", "", "base64; junk",
]  # fmt: skip
CONTENT_TYPES = [
    "text/plain", "text/html", "multipart/mixed", "multipart/alternative", "multipart/related",
    "message/rfc822", "image/png", "image/svg+xml", "application/octet-stream", "text/calendar",
    "multipart/digest", "text", "/", "message/partial",
]  # fmt: skip
BOUNDARIES = ["b", "", "--", "b1", '"', "x" * 80]
TEXTS = st.sampled_from(
    ["hello", "Grüße €", "<script>alert(1)</script>", "<a href=javascript:alert(1)>x</a>",
     '<img src=x onerror="alert(1)">', "x" * 1200, "=?utf-8?q?=E2=82=AC?=", "+ADw-script+AD4-",
     "xn--mnchen-3ya", "\u202egnp.exe", "a\x00b"]
)  # fmt: skip


@st.composite
def header_lines(draw: st.DrawFn) -> bytes:
    """A header line a sender (or an attacker) might write, in full."""
    charset = draw(st.sampled_from(CHARSETS))
    text = draw(TEXTS)
    kind = draw(st.integers(0, 8))
    if kind == 0:
        value = f"{draw(st.sampled_from(CONTENT_TYPES))}; charset={charset}"
        if draw(st.booleans()):
            boundary = draw(st.sampled_from(BOUNDARIES))
            value += f'; boundary="{boundary}"'
        line = f"Content-Type: {value}"
    elif kind == 1:
        line = f"Content-Transfer-Encoding: {draw(st.sampled_from(ENCODINGS))}"
    elif kind == 2:
        encoding = draw(st.sampled_from(["q", "b", "Q", "B", "x"]))
        line = f"Subject: =?{charset}?{encoding}?{text}?="
    elif kind == 3:
        name = draw(st.sampled_from(["a.pdf", "../../x.exe", "", "\u202etxt.exe", text]))
        disposition = draw(st.sampled_from(["attachment", "inline", "x"]))
        line = f'Content-Disposition: {disposition}; filename="{name}"'
    elif kind == 4:
        line = f"Content-Disposition: attachment; filename*={charset}''{text}"
    elif kind == 5:
        field = draw(st.sampled_from(["From", "To", "Cc", "Reply-To", "Message-ID", "References"]))
        value = draw(
            st.sampled_from(
                ["dave@corp.example", "Bob <bob@partner.example.s>", "<>", "(((", '"a" <',
                 "mallory@evil.example", "a@b, c@d, " * 30, "=?utf-8?b?w6Q=?= <x@corp.example>"]
            )
        )  # fmt: skip
        line = f"{field}: {value}"
    elif kind == 6:
        line = "X-Secmail-Verified: yes"
    elif kind == 7:
        line = f"Content-ID: <{draw(st.sampled_from(['ii_lu1abc0', 'x', '', '<>']))}>"
    else:
        line = f"X-{text}: {text}"
    return line.encode("utf-8", "surrogateescape")


HTML_TAGS = sorted(ALLOWED_TAGS) + ["script", "svg", "iframe", "style", "object", "x"]
HTML_ATTRIBUTES = ["onclick", "onerror", "onload", "OnMouseOver", "href", "src", "style", "alt"]
HTML_VALUES = [
    "javascript:alert(1)", " JaVaScRiPt:alert(1)", "jav&#x09;ascript:alert(1)",
    "&#106;avascript:alert(1)", "java\nscript:alert(1)", "data:text/html,<script>x</script>",
    "vbscript:x", "https://ok.example/", "//tracker.example/p.gif", "cid:ii_lu1abc0", "alert(1)",
]  # fmt: skip


HTML_HEAD = (
    b"From: mallory@evil.example\r\nTo: alice@corp.example\r\nSubject: markup\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
)


@st.composite
def html_snippets(draw: st.DrawFn) -> bytes:
    """A tag an attacker would try: allowed or not, with handlers and unsafe URLs."""
    tag = draw(st.sampled_from(HTML_TAGS) if draw(st.booleans()) else st.sampled_from(["a", "img"]))
    attributes = draw(
        st.lists(
            st.tuples(st.sampled_from(HTML_ATTRIBUTES), st.sampled_from(HTML_VALUES)), max_size=3
        )
    )
    quote = draw(st.sampled_from(['"', "'", ""]))
    text = "".join(f" {a}={quote}{v}{quote}" for a, v in attributes)
    return f"<{tag}{text}>x</{tag}>".encode()


def line_starts(raw: bytes) -> list[int]:
    return [0] + [m.end() for m in re.finditer(rb"\n", raw)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message changed a few times over."""
    raw = CORPUS[draw(st.sampled_from(sorted(CORPUS)))]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 11))
        if op == 0:  # a header line spliced in at a line start
            at = draw(st.sampled_from(line_starts(raw)))
            raw = raw[:at] + draw(header_lines()) + b"\r\n" + raw[at:]
        elif op == 1:  # every charset parameter replaced
            charset = draw(st.sampled_from(CHARSETS)).encode("utf-8")
            raw = re.sub(rb'(?i)charset="?[^";\s]*"?', b"charset=" + charset, raw)
        elif op == 2:  # every transfer encoding replaced
            cte = draw(st.sampled_from(ENCODINGS)).encode()
            raw = re.sub(rb"(?im)^(content-transfer-encoding:)[^\r\n]*", rb"\1 " + cte, raw)
        elif op == 3:  # boundary delimiters dropped or made unmatched
            lines = raw.split(b"\r\n")
            marks = [i for i, line in enumerate(lines) if line.startswith(b"--")]
            if marks:
                i = draw(st.sampled_from(marks))
                lines[i] = draw(st.sampled_from([b"", lines[i] + b"--", lines[i][:-1], b"--"]))
                raw = b"\r\n".join(lines)
        elif op == 4:  # wrapped in a few levels of multipart or message/rfc822
            for level in range(draw(st.integers(1, 6))):
                kind = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"rfc822"]))
                if kind == b"rfc822":
                    raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
                else:
                    b = b"lvl%d" % level
                    raw = (
                        b"Content-Type: multipart/" + kind + b"; boundary=" + b + b"\r\n\r\n--"
                        + b + b"\r\n" + raw + b"\r\n--" + b + b"--\r\n"
                    )  # fmt: skip
        elif op == 5:  # cut short
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif op == 6:  # odd bytes inserted
            at = draw(st.integers(0, len(raw)))
            noise = draw(
                st.sampled_from([b"\n", b"\r", b"\x00", b"\xff\xfe", b"=?", b"--", b"\r\n\r\n",
                                 b"<script>", b'"', b";", b"\xc3", b"=\r\n", b"\t"])
            )  # fmt: skip
            raw = raw[:at] + noise + raw[at:]
        elif op == 7:  # headers of one seed on the body of another
            other = CORPUS[draw(st.sampled_from(sorted(CORPUS)))]
            head = raw.partition(b"\r\n\r\n")[0]
            raw = head + b"\r\n\r\n" + other.partition(b"\r\n\r\n")[2]
        elif op == 8:  # a line of 998 octets and more
            at = draw(st.sampled_from(line_starts(raw)))
            raw = (
                raw[:at] + b"y" * draw(st.sampled_from([997, 998, 999, 5000])) + b"\r\n" + raw[at:]
            )
        elif op == 9:  # line ends made bare LF
            raw = raw.replace(b"\r\n", b"\n")
        elif op == 10:  # markup an attacker would try, in whatever part it lands
            at = draw(st.sampled_from(line_starts(raw)))
            raw = raw[:at] + draw(html_snippets()) + b"\r\n" + raw[at:]
        else:  # an HTML message made of such markup, which the next mutations may change
            snippets = draw(st.lists(html_snippets(), min_size=1, max_size=12))
            raw = HTML_HEAD + b"".join(snippets) + b"\r\n"
    return raw


# --- the checks ------------------------------------------------------------------------------


def single_line(text: str) -> None:
    assert not any(c in text for c in "\r\n\x00"), f"control characters in {text[:80]!r}"


def check_render(raw: bytes, remote_images: bool) -> render.ReadableMessage | None:
    """
    Everything the reading page and its downloads do with C{raw}, with their invariants; None
    when the message is refused as too complex (the reader gets a page saying so).
    """
    try:
        message = render.read_message(raw, load_remote_images=remote_images)
    except MessageTooComplex as e:
        single_line(str(e))
        return None
    budget = 20 * len(raw) + 2000
    for text in (message.subject, message.from_, message.date, *message.to, *message.cc):
        single_line(text)
        assert len(text) <= budget
    if message.html is not None:
        assert len(message.html) <= budget, f"{len(message.html)} chars of HTML from {len(raw)}"
        assert_inert(message.html, remote_images)
        document = html_document(message.html)
        assert_inert(document.split("<body>", 1)[1], remote_images)
    if message.text is not None:
        assert len(message.text) <= 2 * len(raw) + 100
    assert sum(a.size for a in message.attachments) <= 2 * len(raw) + 100
    for attachment in message.attachments:
        listed, data = render.attachment_bytes(raw, attachment.index)
        assert listed == attachment, "the download is not the attachment listed"
        assert len(data) == attachment.size
        assert safe_filename(attachment.filename) == attachment.filename
        header = render.content_disposition(attachment.filename)
        assert header.isascii() and header.isprintable()
    with pytest.raises(IndexError):
        render.attachment_bytes(raw, len(message.attachments))
    for cid in re.findall(rb"(?i)cid:([^\"'\s>]{1,80})", raw)[:3]:
        found = render.inline_part(raw, cid.decode("ascii", "replace"))
        if found is not None:
            content_type, data = found
            assert content_type.startswith("image/") and "svg" not in content_type
            assert len(data) <= len(raw)
    return message


REPLY_HEADERS = {
    "from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
}  # fmt: skip
READERS = [
    ("bob@partner.example", "bob@partner.example.s"),
    ("bob@partner.example", "bob@partner.example.0401234567.s"),
    ("alice@corp.example", "alice@corp.example"),
]


def check_reply(raw: bytes, mode: str, reader: tuple[str, str], text: str, forward_to: str) -> None:
    """A reply or forward is refused in words, or is a mail with only the builder's headers."""
    reply_choices(raw, reader[0], **SECTIONS)
    try:
        mail = build_reply(
            original=raw,
            mode=mode,
            reader=reader[0],
            reader_original=reader[1],
            text=text,
            uploads=[Upload("a.txt", "text/plain", b"attached")] if not text else [],
            forward_to=forward_to,
            **SECTIONS,
            date=DATE,
        )
    except (ReplyError, MessageTooComplex) as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(mail.content) <= 3 * len(raw) + 14 * 100_000 + 10_000
    parsed = BytesParser(policy=email.policy.default).parsebytes(mail.content)
    names = {key.lower() for key in parsed.keys()}
    assert names <= REPLY_HEADERS, f"headers from the original leaked: {names - REPLY_HEADERS}"
    head = mail.content.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n")), "header line over 998 octets"
    single_line(mail.subject)
    reply_messages(
        mail,
        texts=SETTINGS.notification_texts,
        routes=SETTINGS.routes,
        master=MASTER,
        reader=reader[0],
        about="m1",
        date=DATE,
    )


# --- the tests -------------------------------------------------------------------------------


@fuzz_settings(ci_examples=250)
@given(raw=mutated(), remote_images=st.booleans())
def test_mutated_messages_render_safely(raw: bytes, remote_images: bool) -> None:
    """Any mutation of a seed message renders without error into inert, bounded output."""
    check_render(raw, remote_images)


@fuzz_settings(ci_examples=120)
@given(
    raw=mutated(),
    mode=st.sampled_from(MODES),
    reader=st.sampled_from(READERS),
    text=st.sampled_from(["", "Thanks!", "line\r\nbreak", "\u202eevil"]),
    forward_to=st.sampled_from(["dave@corp.example", "mallory@evil.example", "", "a\r\nb"]),
)
def test_mutated_messages_reply_and_forward(
    raw: bytes, mode: str, reader: tuple[str, str], text: str, forward_to: str
) -> None:
    """Replying to or forwarding any mutated seed gives a ReplyError or a clean mail."""
    check_reply(raw, mode, reader, text, forward_to)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_seed_corpus_renders(name: str) -> None:
    """Every seed message, as stored, renders and can be replied to and forwarded."""
    raw = CORPUS[name]
    for remote_images in (False, True):
        check_render(raw, remote_images)
    for mode in MODES:
        check_reply(raw, mode, READERS[0], "Thanks!", "dave@corp.example")


def test_forward_of_an_8bit_original() -> None:
    """Forwarding a message whose bytes are not all ASCII gives a mail, not an exception."""
    raw = b"From: alice@corp.example\r\nSubject: x\r\n\r\nh\xc3\xa4\r\n"
    mail = build_reply(
        original=raw,
        mode="forward",
        reader="bob@partner.example",
        reader_original="bob@partner.example.s",
        text="",
        uploads=[],
        forward_to="dave@corp.example",
        **SECTIONS,
        date=DATE,
    )
    assert raw.replace(b"\r\n", b"\n").split(b"\n")[2] in mail.content.replace(b"\r\n", b"\n")


# --- deep nesting and slow charsets: small enough to stay fast, big enough to matter ----------


class TookTooLong(BaseException):
    pass


@pytest.fixture
def time_limit() -> Iterator[Callable[[float], None]]:
    """Interrupts the test (with TookTooLong) after the given number of seconds."""

    def expire(signum: int, frame: Any) -> None:
        raise TookTooLong()

    previous = signal.signal(signal.SIGALRM, expire)

    def start(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield start
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def nested(depth: int, kind: bytes) -> bytes:
    """A text part inside C{depth} levels of multipart/C{kind} or message/rfc822."""
    raw = b"Content-Type: text/plain\r\n\r\ndeep inside\r\n"
    for level in range(depth):
        if kind == b"rfc822":
            raw = b"Content-Type: message/rfc822\r\n\r\n" + raw
        else:
            b = b"n%d" % level
            raw = (
                b"Content-Type: multipart/" + kind + b"; boundary=" + b + b"\r\n\r\n--" + b
                + b"\r\n" + raw + b"\r\n--" + b + b"--\r\n"
            )  # fmt: skip
    return b"From: alice@corp.example\r\nTo: bob@partner.example.s\r\nSubject: deep\r\n" + raw


@pytest.mark.parametrize("kind", [b"mixed", b"rfc822"])
def test_nesting_200_deep(kind: bytes, time_limit: Callable[[float], None]) -> None:
    """A message nested 200 deep is refused as too complex (not a RecursionError), at once."""
    raw = nested(200, kind)
    time_limit(5)
    with pytest.raises(MessageTooComplex):
        render.read_message(raw, load_remote_images=False)
    assert check_render(raw, remote_images=False) is None
    check_reply(raw, "forward", READERS[0], "", "dave@corp.example")


@pytest.mark.parametrize(
    "charset",
    [
        "punycode",
        "idna",
        "utf-7",
        "x-unknown",
    ],
)
def test_slow_charsets_stay_fast(charset: str, time_limit: Callable[[float], None]) -> None:
    """A 400 KB body of letters labelled with a slow charset renders within seconds (punycode's
    decoder is quadratic: about 15 s of CPU for this body)."""
    letters = random.Random(10).choices(string.ascii_lowercase, k=400_000)
    raw = (
        f"From: a@corp.example\r\nSubject: =?{charset}?q?abcdef?=\r\n"
        f"Content-Type: text/plain; charset={charset}\r\n\r\n"
    ).encode() + "".join(letters).encode()
    time_limit(3)
    check_render(raw, remote_images=False)
