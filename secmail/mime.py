# -*- test-case-name: tests.test_mime -*-
"""
Reading mail a stranger wrote without letting it choose how much work that is.

A message names the codec its text is decoded with (C{charset=} on a part, the label of
an RFC 2047 encoded word or of an RFC 2231 parameter), and Python's codec registry holds
more than text encodings: C{punycode} takes time that grows with the square of the input,
C{unicode_escape} and friends turn bytes into other characters than they show, and
C{utf-7} hides markup from filters (the WHATWG encoding standard dropped it for that). So
only text charsets mail really uses are honoured (L{text_codec}); anything else is read
as UTF-8, undecodable bytes becoming U+FFFD.

Python's email parser recurses once per nesting level and costs time that grows with the
square of the depth. L{parse} stops at L{MAX_NESTING} levels, L{MAX_PARTS} parts and
L{MAX_HEADER_LINES} header lines with L{MessageTooComplex}, before the work is done.

Everything here is pure.
"""

from __future__ import annotations

import base64
import binascii
import encodings
import encodings.aliases
import re
from email.feedparser import FeedParser
from email.message import Message
from email.policy import EmailPolicy, Policy
from typing import Any

__all__ = [
    "MAX_HEADER_LINES",
    "MAX_NESTING",
    "MAX_PARTS",
    "POLICY",
    "MessageTooComplex",
    "decode_text",
    "decode_words",
    "neutralise_labels",
    "parse",
    "text_codec",
]

#: Parts inside parts (a message, its multipart, an attached message, ...), like the
#: nesting limits of common mail programs and scanners.
MAX_NESTING = 20
#: Parts in one message, all levels together.
MAX_PARTS = 1000
#: Header lines in one message, all parts together (continuation lines count).
MAX_HEADER_LINES = 10_000

# Python codec names (as in the encodings package) of the text charsets honoured.
_TEXT_CODECS = frozenset(
    {
        "ascii", "utf_8", "utf_8_sig", "utf_16", "utf_16_be", "utf_16_le",
        "utf_32", "utf_32_be", "utf_32_le",
        "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_5", "iso8859_6",
        "iso8859_7", "iso8859_8", "iso8859_9", "iso8859_10", "iso8859_11", "iso8859_13",
        "iso8859_14", "iso8859_15", "iso8859_16",
        "cp874", "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256",
        "cp1257", "cp1258",
        "cp437", "cp737", "cp775", "cp850", "cp852", "cp855", "cp857", "cp858", "cp860",
        "cp861", "cp862", "cp863", "cp864", "cp865", "cp866", "cp869", "cp1125",
        "koi8_r", "koi8_u", "koi8_t", "kz1048", "ptcp154", "tis_620",
        "mac_roman", "mac_cyrillic", "mac_greek", "mac_iceland", "mac_latin2", "mac_turkish",
        "big5", "big5hkscs", "cp950", "gb2312", "gbk", "gb18030", "hz",
        "euc_jp", "euc_jis_2004", "euc_jisx0213", "shift_jis", "shift_jis_2004",
        "shift_jisx0213", "cp932", "iso2022_jp", "iso2022_jp_1", "iso2022_jp_2",
        "iso2022_jp_2004", "iso2022_jp_3", "iso2022_jp_ext",
        "euc_kr", "cp949", "johab", "iso2022_kr",
    }
)  # fmt: skip
# Labels mail programs write that Python spells otherwise.
_MAIL_ALIASES = {
    "x_sjis": "shift_jis",
    "x_euc_jp": "euc_jp",
    "windows_31j": "cp932",
    "x_gbk": "gbk",
    "x_mac_cyrillic": "mac_cyrillic",
    "x_mac_roman": "mac_roman",
    "x_cp1250": "cp1250",
    "x_cp1251": "cp1251",
    "x_cp1252": "cp1252",
    "macintosh": "mac_roman",
    "ks_c_5601_1987": "cp949",  # as the email package reads it: the superset Windows writes
}
_ASCII = "ascii"
_MAX_LABEL = 40
#: The label put in place of one that is not honoured: the email package reads it as
#: "some 8-bit bytes" (RFC 1428), never as a codec.
REFUSED_LABEL = "unknown-8bit"


class MessageTooComplex(ValueError):
    """The message goes beyond a limit of L{parse}; the text names which one."""


# --- charsets -------------------------------------------------------------------------


def text_codec(label: str | None) -> str | None:
    """The Python codec for a charset label if it names a text charset honoured, else None."""
    if not label:
        return None
    label = label.strip().strip("\"'")
    if not label or len(label) > _MAX_LABEL:
        return None
    name = encodings.normalize_encoding(label).lower()
    name = _MAIL_ALIASES.get(name, name)
    name = encodings.aliases.aliases.get(name, name)
    return name if name in _TEXT_CODECS else None


def decode_text(data: bytes, label: str | None) -> str:
    """Text in the charset its label names if that is honoured, else UTF-8; never raises.

    ASCII labels are read as UTF-8: 8-bit text labelled ASCII is a common mislabel."""
    codec = text_codec(label)
    if codec is None or codec == _ASCII:
        codec = "utf_8"
    try:
        return data.decode(codec, errors="replace")
    except Exception:  # noqa: BLE001 - a codec that fails on its own input: UTF-8 instead
        return data.decode("utf-8", errors="replace")


# An RFC 2047 encoded word; its label may carry an RFC 2231 language ("utf-8*fi").
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,200})\?([bBqQ])\?([^?\s]*)\?=")
_WORD_LABEL = re.compile(r"(=\?)([^?\s]{1,200})(\?[bBqQ]\?)")
# An RFC 2231 extended parameter value: name*=charset'language'value (or name*0*=...).
_PARAMETER_LABEL = re.compile(r"(\*\s*=\s*\"?)([^'\";\s]{1,200})(')")


def _label(label: str) -> str:
    return label.split("*", 1)[0]


def neutralise_labels(value: str) -> str:
    """A header value in which every charset label not honoured says C{unknown-8bit}.

    For the email package's own header parsing (L{POLICY}), which otherwise decodes
    encoded words and RFC 2231 parameters with any codec the label names."""

    def word(match: re.Match[str]) -> str:
        if text_codec(_label(match.group(2))) is not None:
            return match.group(0)
        return match.group(1) + REFUSED_LABEL + match.group(3)

    def parameter(match: re.Match[str]) -> str:
        if text_codec(match.group(2)) is not None:
            return match.group(0)
        return match.group(1) + REFUSED_LABEL + match.group(3)

    if "=?" in value:
        value = _WORD_LABEL.sub(word, value)
    if "'" in value:
        value = _PARAMETER_LABEL.sub(parameter, value)
    return value


def _word_bytes(encoding: str, text: str) -> bytes:
    data = text.encode("ascii", errors="replace")
    if encoding in "qQ":
        return binascii.a2b_qp(data.replace(b"_", b" "))
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return b""


def decode_words(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded (L{decode_text}); never raises.

    Adjacent words in one charset are joined before decoding, as a character may be split
    between them; the white space between encoded words is dropped, as RFC 2047 says."""
    out: list[str] = []
    pending: list[bytes] = []
    pending_label = ""
    position = 0

    def flush() -> None:
        if pending:
            out.append(decode_text(b"".join(pending), pending_label))
            pending.clear()

    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        label = _label(match.group(1)).lower()
        if between and not (pending and between.isspace()):
            flush()
            out.append(between)
        elif pending and label != pending_label:
            flush()
        pending_label = label
        pending.append(_word_bytes(match.group(2), match.group(3)))
        position = match.end()
    flush()
    out.append(value[position:])
    return "".join(out)


# --- parsing --------------------------------------------------------------------------


class _ShownPolicy(EmailPolicy):
    """C{email.policy.default}, except that headers never name the codec they are read with."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if isinstance(value, str):
            value = neutralise_labels(value)
        return super().header_fetch_parse(name, value)


#: The policy stored mail is read with.
POLICY: EmailPolicy = _ShownPolicy()


class _BoundedParser(FeedParser):
    """The email package's parser with the limits of L{parse}.

    It hooks the parser's own steps (a new part, a header block), so the parse stops as
    soon as a limit is passed."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy=policy)
        self._depth = 0
        self._parts = 0
        self._header_lines = 0

    def _new_message(self) -> None:
        self._depth += 1
        self._parts += 1
        if self._depth > MAX_NESTING:
            raise MessageTooComplex(f"parts nested more than {MAX_NESTING} deep")
        if self._parts > MAX_PARTS:
            raise MessageTooComplex(f"more than {MAX_PARTS} parts")
        super()._new_message()  # type: ignore[misc]

    def _pop_message(self) -> Message:
        self._depth -= 1
        message: Message = super()._pop_message()  # type: ignore[misc]
        return message

    def _parse_headers(self, lines: list[str]) -> None:
        self._header_lines += len(lines)
        if self._header_lines > MAX_HEADER_LINES:
            raise MessageTooComplex(f"more than {MAX_HEADER_LINES} header lines")
        super()._parse_headers(lines)  # type: ignore[misc]


def parse(raw: bytes, *, headers_only: bool = False, policy: Policy = POLICY) -> Message:
    """The message in C{raw}, parsed within the limits.

    @raise MessageTooComplex: nesting, parts or header lines beyond the limits.
    """
    parser = _BoundedParser(policy)
    if headers_only:
        parser._set_headersonly()  # type: ignore[attr-defined]
    parser.feed(raw.decode("ascii", errors="surrogateescape"))
    return parser.close()
