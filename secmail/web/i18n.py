# -*- test-case-name: tests.test_i18n -*-
"""
The portal's languages: English as written in the code and templates, Finnish and Swedish
from gettext catalogues (C{web/locale/<lang>/LC_MESSAGES/secmail.po}).

Babel reads a C{.po} file and compiles it to C{.mo} in memory the first time its language
is used (L{compile_catalogue}), so no compiled file is kept in git or needed at install;
the result is a standard L{gettext.GNUTranslations} (Babel's L{Translations}). Untranslated
and fuzzy entries fall back to the English msgid. How translators update the catalogues:
docs/translating.md.

A visitor's language: the language cookie (set by C{/lang/<code>}), else the browser's
C{Accept-Language} (quality values honoured), else the first configured language.
"""

from __future__ import annotations

import gettext
import io
import os
import re
from collections.abc import Callable, Sequence
from functools import cache

from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import Translations
from twisted.web.iweb import IRequest

from secmail.web.files import web_file

LOCALE_DIR = web_file("locale")
DOMAIN = "secmail"
LANG_COOKIE = b"__Host-secmail-lang"
LANG_COOKIE_AGE = 365 * 24 * 3600
#: The languages' own names, for the switch.
NAMES = {"en": "English", "fi": "Suomi", "sv": "Svenska"}

Translate = Callable[[str], str]


def compile_catalogue(path: str, language: str) -> Translations:
    """A C{.po} file compiled to C{.mo} in memory and loaded as gettext translations."""
    with open(path, "rb") as f:
        try:
            catalog = read_po(f, locale=language, domain=DOMAIN, abort_invalid=True)
        except PoFileError as e:
            raise ValueError(f"{path}: {e}") from None
    mo = io.BytesIO()
    write_mo(mo, catalog)
    mo.seek(0)
    return Translations(mo, domain=DOMAIN)


def catalogue_path(language: str) -> str:
    return os.path.join(LOCALE_DIR, language, "LC_MESSAGES", DOMAIN + ".po")


@cache
def catalogue(language: str) -> gettext.NullTranslations:
    """The translations for C{language}; English is the msgids themselves."""
    path = catalogue_path(language)
    if language == "en" or not os.path.isfile(path):
        return gettext.NullTranslations()
    return compile_catalogue(path, language)


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
