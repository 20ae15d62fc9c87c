# -*- test-case-name: tests.test_render,tests.test_reply,tests.test_compose -*-
"""
Pure: untrusted text (a sender's header, a browser's file name) made safe to show on a
page, to put in a header and to save as a file. One place for these rules, used by the
reading page (L{secmail.web.render}), replies (L{secmail.web.reply}) and D-Compose
(L{secmail.web.compose}).
"""

from __future__ import annotations

import re
import unicodedata

from secmail.notify import clean_text

# Bidirectional overrides make "txt.exe" display as "exe.txt": removed from what is shown.
BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

#: The longest file name we show, send or offer to save.
MAX_FILENAME_CHARS = 100
_UNSAFE_IN_NAME = frozenset("\"'/\\:*?<>|")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}$")


def is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in BIDI


def unsurrogate(text: str) -> str:
    """Undecodable header bytes arrive as lone surrogates, which cannot be encoded: U+FFFD."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def clean_line(text: str) -> str:
    """One line of display text: whitespace controls become spaces, other controls go."""
    text = re.sub(r"[\t\r\n\v\f]+", " ", unsurrogate(text))
    return "".join(c for c in text if not is_control(c)).strip()


def safe_filename(name: str, limit: int = MAX_FILENAME_CHARS, *, mail_only: bool = False) -> str:
    """
    A file name fit to show, to put in a header and to save: no path, no control, format
    or bidi character, no quote or character a file system refuses, no leading dot, at
    most C{limit} characters (keeping the extension). "" if nothing usable is left, so
    that the caller names it. Idempotent.

    With C{mail_only} (a file an outsider sends to the organisation, which only goes into
    a mail), controls and separators become single spaces and punctuation stays as typed.
    """
    name = unicodedata.normalize("NFC", unsurrogate(name))
    name = re.split(r"[/\\]", name)[-1]
    if mail_only:
        name = clean_text(name, 10 * limit)
    else:
        name = "".join(
            "_" if is_control(c) or c in _UNSAFE_IN_NAME or not (c.isprintable() or c == " ") else c
            for c in name
        )
    name = name.strip(". ")
    if len(name) > limit:
        extension = _EXTENSION.search(name)
        suffix = extension.group(0) if extension else ""
        name = name[: limit - len(suffix)].rstrip(". ") + suffix
    return name
