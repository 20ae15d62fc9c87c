"""Tests for secmail.mime: which charsets are honoured, RFC 2047 decoding, the parser's limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secmail import mime


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("utf-8", "utf_8"),
        ("UTF8", "utf_8"),
        ('"us-ascii"', "ascii"),
        ("ISO-8859-1", "latin_1"),
        ("iso_8859-15", "iso8859_15"),
        ("windows-1252", "cp1252"),
        ("koi8-r", "koi8_r"),
        ("x-sjis", "shift_jis"),
        ("ks_c_5601-1987", "cp949"),
        ("gb2312", "gb2312"),
        ("iso-2022-jp", "iso2022_jp"),
    ],
)
def test_text_charsets_are_honoured(label: str, codec: str) -> None:
    """Mail's text charsets, under the labels mailers write, map to their Python codec."""
    assert mime.text_codec(label) == codec


@pytest.mark.parametrize(
    "label",
    [
        "punycode", "idna", "rot13", "rot_13", "hex", "base64", "zlib", "bz2", "uu",
        "quopri", "utf-7", "UTF7", "raw_unicode_escape", "unicode_escape", "mbcs",
        "undefined", "unknown-8bit", "x-no-such", "", "utf-8" * 20,
    ],
)  # fmt: skip
def test_other_codecs_are_not_honoured(label: str) -> None:
    """Codecs that are no text charsets (slow, bytes-to-bytes, escapes, utf-7) are refused."""
    assert mime.text_codec(label) is None


def test_decode_text_falls_back_to_utf8() -> None:
    """A refused label is read as UTF-8 with U+FFFD; ASCII labels are read as UTF-8 too."""
    assert mime.decode_text(b"xn--caf-dma \xc3\xa4 \xff", "punycode") == "xn--caf-dma ä \ufffd"
    assert mime.decode_text(b"h\xc3\xa4llo", "us-ascii") == "hällo"
    assert mime.decode_text(b"h\xe4llo", "latin1") == "hällo"


def test_decode_words() -> None:
    """Encoded words decode in text charsets; split characters join; refused labels stay bytes."""
    assert mime.decode_words("=?utf-8?q?caf=C3?= =?utf-8?b?qQ==?= ok") == "café ok"
    assert mime.decode_words("a =?punycode?q?caf-dma?= b") == "a caf-dma b"
    assert mime.decode_words("=?iso-8859-1*fi?q?=E4?=") == "ä"
    assert mime.decode_words("no words here =?") == "no words here =?"


def test_neutralise_labels() -> None:
    """Refused labels in encoded words and RFC 2231 parameters become unknown-8bit."""
    assert mime.neutralise_labels(
        "=?punycode?q?a?= =?utf-8?q?b?=; filename*=unicode_escape''x; name*=utf-8''y"
    ) == ("=?unknown-8bit?q?a?= =?utf-8?q?b?=; filename*=unknown-8bit''x; name*=utf-8''y")


@given(st.text(max_size=200))
def test_decode_words_never_raises(value: str) -> None:
    """Any header text decodes to some text."""
    assert isinstance(mime.decode_words(value), str)


def test_parse_within_the_limits() -> None:
    """A message within the limits parses as the email package parses it."""
    message = mime.parse(b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n")
    assert str(message["Subject"]) == "café"
    assert message.get_payload() == "body\r\n"


def test_policy_refuses_header_codecs() -> None:
    """Headers read through the parsed message never decode with a refused codec."""
    message = mime.parse(b"Subject: =?punycode?q?caf-dma?=\r\n\r\n")
    assert str(message["Subject"]) == "caf-dma"


def test_headers_only() -> None:
    """headers_only leaves the body unparsed, however deep it nests."""
    body = b"Content-Type: message/rfc822\r\n\r\n" * 100
    message = mime.parse(
        b"From: a@b.example\r\nContent-Type: message/rfc822\r\n\r\n" + body, headers_only=True
    )
    assert message["From"] == "a@b.example"


def test_nesting_limit() -> None:
    """Parts nested beyond MAX_NESTING stop the parse with MessageTooComplex."""
    inner = b"Content-Type: text/plain\r\n\r\nx\r\n"
    for _ in range(mime.MAX_NESTING - 1):
        inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
    mime.parse(inner)
    with pytest.raises(mime.MessageTooComplex, match="nested"):
        mime.parse(b"Content-Type: message/rfc822\r\n\r\n" + inner)
