"""
The portal's languages: English as written in the code, Finnish and Swedish from gettext
catalogues (C{web/locale/<lang>/LC_MESSAGES/secmail.po}).

The C{.po} files are read directly by a small reader (L{read_po}) into a
L{gettext.NullTranslations} subclass, so there is no build step and no dependency:
the catalogues hold only plain C{msgid}/C{msgstr} pairs (no plurals, no contexts).

A visitor's language: the language cookie (set by C{/lang/<code>}), else the browser's
C{Accept-Language} (quality values honoured), else the first configured language.
"""

from __future__ import annotations

import ast
import gettext
import os
import re
from collections.abc import Callable, Sequence
from functools import cache

from twisted.web.iweb import IRequest

LOCALE_DIR = os.path.join(os.path.dirname(__file__), "locale")
DOMAIN = "secmail"
LANG_COOKIE = b"__Host-secmail-lang"
LANG_COOKIE_AGE = 365 * 24 * 3600
#: The languages' own names, for the switch.
NAMES = {"en": "English", "fi": "Suomi", "sv": "Svenska"}

Translate = Callable[[str], str]


class Catalogue(gettext.NullTranslations):
    """Translations from a dict; a missing or empty msgstr falls back to the English msgid."""

    def __init__(self, messages: dict[str, str]) -> None:
        super().__init__()
        self.messages = messages

    def gettext(self, message: str) -> str:
        return self.messages.get(message) or message


def read_po(path: str) -> dict[str, str]:
    """msgid → msgstr from a C{.po} file; the header entry (empty msgid) is left out."""
    messages: dict[str, str] = {}
    entry: dict[str, str] = {}
    current = ""

    def finish() -> None:
        if entry.get("msgid") and "msgstr" in entry:
            messages[entry["msgid"]] = entry["msgstr"]
        entry.clear()

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                if not line:
                    finish()
                continue
            keyword, _, rest = line.partition(" ")
            if keyword in ("msgid", "msgstr"):
                if keyword == "msgid":
                    finish()
                current = keyword
                line = rest.strip()
            elif not line.startswith('"'):
                raise ValueError(f"{path}:{number}: unexpected {keyword!r}")
            try:
                text = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                raise ValueError(f"{path}:{number}: not a quoted string") from None
            if not isinstance(text, str) or not current:
                raise ValueError(f"{path}:{number}: not a quoted string")
            entry[current] = entry.get(current, "") + text
    finish()
    return messages


@cache
def catalogue(language: str) -> gettext.NullTranslations:
    """The translations for C{language}; English is the msgids themselves."""
    path = os.path.join(LOCALE_DIR, language, "LC_MESSAGES", DOMAIN + ".po")
    if language == "en" or not os.path.isfile(path):
        return gettext.NullTranslations()
    return Catalogue(read_po(path))


def translator(language: str) -> Translate:
    return catalogue(language).gettext


_RANGE = re.compile(r"^([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*$")


def from_accept_language(header: str, languages: Sequence[str]) -> str | None:
    """The best of C{languages} for an C{Accept-Language} value, or None when none fits."""
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(header.split(",")[:50]):
        tag, *params = [p.strip() for p in item.split(";")]
        match = _RANGE.match(tag)
        if tag == "*" or match is None:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = match.group(1).lower()
        if quality <= 0 or primary not in languages:
            continue
        # Highest quality first; among equals, the one the browser listed first.
        candidate = (-quality, position, primary)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best is not None else None


def choose_language(cookie: str, accept_language: str, languages: Sequence[str]) -> str:
    """The cookie's language, else the browser's, else the first configured language."""
    if cookie in languages:
        return cookie
    return from_accept_language(accept_language, languages) or languages[0]


def request_language(request: IRequest, languages: Sequence[str]) -> str:
    cookie = (request.getCookie(LANG_COOKIE) or b"").decode("ascii", "replace")
    accept = (request.getHeader(b"accept-language") or b"").decode("latin-1")
    return choose_language(cookie, accept, languages)


def safe_next(path: str) -> str:
    """C{path} when it is a path on this site ("/..." but not "//..." or "/\\..."), else "/"."""
    if (
        not path.startswith("/")
        or path.startswith(("//", "/\\"))
        or any(c in path for c in "\\\r\n\t")
        or not path.isprintable()
        or not path.isascii()
    ):
        return "/"
    return path


def N_(message: str) -> str:
    """Marks a message for the catalogues where it is written; translated where it is shown."""
    return message
