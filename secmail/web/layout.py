# -*- test-case-name: tests.test_layout,tests.test_i18n,tests.test_portal -*-
"""
The frame every portal and D-Compose page shares: security headers, the organisation's
header (brand, logo, verification phrase), the language switch, the style sheet.

Pages come from Jinja2 templates in C{web/templates/} (autoescaping on), which extend
C{layout.html}. In a template, C{_()} translates a literal into the page's language and
returns markup: the catalogues are part of the source (their tags are checked against the
msgids by tests/test_i18n.py), and C{.format()} on the result escapes its arguments.
No page body is written in Python: a route passes values, the template writes the HTML.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from jinja2.ext import Extension
from markupsafe import Markup
from twisted.web.iweb import IRequest

from secmail.config import Branding
from secmail.web import i18n
from secmail.web.files import web_file
from secmail.web.i18n import Translate

TEMPLATES_DIR = web_file("templates")
STATIC_DIR = web_file("static")

PAGE_CSP = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; frame-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# For what is not a page (style sheet, images, downloads): no content runs, and nobody frames it.
RESOURCE_CSP = b"default-src 'none'; frame-ancestors 'none'"
DOWNLOAD_CSP = b"default-src 'none'; sandbox; frame-ancestors 'none'"
COMMON_HEADERS = {
    # A year, for every subdomain too: the portal's name is never to be reached over HTTP.
    b"Strict-Transport-Security": b"max-age=31536000; includeSubDomains",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
    b"Cross-Origin-Opener-Policy": b"same-origin",
}

#: portal.brand_name's default, which the header translates (a chosen name is shown as is).
DEFAULT_BRAND = "Secure mail"
#: The declaration in web/static/portal.css that carries the default brand colour.
_BRAND_RULE = re.compile(r"--brand: #[0-9a-fA-F]{6};")


class JoinLines(Extension):
    """
    Line breaks and indentation in a template are not part of the page: each line is
    stripped and the lines joined, so templates are written one element a line and the
    pages stay as compact as before. A space that matters is written inside a line.
    """

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        return "".join(line.strip() for line in source.splitlines())


TEMPLATES = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=StrictUndefined,
    extensions=[JoinLines],
    auto_reload=False,
)


@dataclass(frozen=True)
class LanguageLink:
    """One language in the switch: C{href} is None for the page's own language."""

    code: str
    name: str
    href: str | None


@dataclass(frozen=True)
class PageFrame:
    """
    What the frame of every page shows besides the page itself: the organisation's brand,
    the gateway's name and the languages offered (a tenant's own, later).
    """

    branding: Branding
    hostname: str
    languages: tuple[str, ...]


def set_security_headers(request: IRequest, csp: bytes = PAGE_CSP) -> None:
    """The headers every portal response carries."""
    for name, value in COMMON_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Security-Policy", csp)
    request.setHeader(b"X-Frame-Options", b"DENY")


def translation(request: IRequest, languages: Sequence[str]) -> Translate:
    """The request's language (cookie, else Accept-Language) as a gettext function."""
    return i18n.translator(i18n.request_language(request, languages))


def as_markup(_: Translate) -> Callable[[str], Markup]:
    """C{_} for templates: a translation is markup written by us, its format() escapes."""
    # The catalogue is source like the templates: its text is markup, not data.
    return lambda message: Markup(_(message))  # noqa: S704


def template_page(request: IRequest, frame: PageFrame, name: str, /, **context: Any) -> bytes:
    """
    The page C{name} (a template extending layout.html), with the security headers.
    Positional-only: a page's own values may use any name (the reading page has a C{frame}).
    """
    set_security_headers(request)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    branding = frame.branding
    language = i18n.request_language(request, frame.languages)
    values = {
        "language": language,
        "_": as_markup(i18n.translator(language)),
        "brand": branding.name,
        "brand_is_default": branding.name == DEFAULT_BRAND,
        "hostname": frame.hostname,
        "logo": bool(branding.logo_file),
        "phrase": branding.verification_phrase,
        "switch": language_links(request, frame.languages, language),
        "heading": True,
    }
    return TEMPLATES.get_template(name).render(values | context).encode()


def error_page(
    request: IRequest, frame: PageFrame, code: int, name: str, /, **context: Any
) -> bytes:
    """The error page C{web/templates/errors/<name>.html} with its status C{code}."""
    request.setResponseCode(code)
    return template_page(request, frame, f"errors/{name}.html", **context)


def language_links(request: IRequest, languages: Sequence[str], current: str) -> list[LanguageLink]:
    """Links to C{/lang/<code>?next=<this page>}, each language named in itself; none for one."""
    if len(languages) < 2:
        return []
    here = quote(switch_target(request), safe="/")
    return [
        LanguageLink(
            code, i18n.NAMES[code], None if code == current else f"/lang/{code}?next={here}"
        )
        for code in languages
    ]


def switch_target(request: IRequest) -> str:
    """Where the language switch returns to: this page, or for a form's answer its page."""
    path = (request.uri or b"/").decode("ascii", "replace")
    if request.method in (b"GET", b"HEAD"):
        return i18n.safe_next(path)
    path = path.split("?", 1)[0]
    for pattern in (r"/m/[A-Za-z0-9_-]+", r"/read", r"/compose"):
        match = re.match(pattern, path)
        if match:
            return match.group(0)
    return "/"


@cache
def _style_file() -> str:
    with open(os.path.join(STATIC_DIR, "portal.css"), encoding="utf-8") as f:
        css = f.read()
    if len(_BRAND_RULE.findall(css)) != 1:
        raise ValueError(f"{STATIC_DIR}/portal.css: no single '--brand: #rrggbb;' to replace")
    return css


@cache
def _style_sheet(colour: str) -> bytes:
    return _BRAND_RULE.sub(f"--brand: {colour};", _style_file()).encode()


def style_sheet(branding: Branding) -> bytes:
    """web/static/portal.css in the organisation's colour (checked #rrggbb at load time)."""
    return _style_sheet(branding.colour)


#: The site's icon: a white envelope on the brand colour, drawn for 16 to 32 pixels.
_FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="{colour}"/>'
    '<rect x="5" y="9" width="22" height="15" rx="2" fill="#fff"/>'
    '<path d="M6 10.5l10 7.5 10-7.5" fill="none" stroke="{colour}" stroke-width="2.2" '
    'stroke-linejoin="round"/></svg>'
)


@cache
def _favicon(colour: str) -> bytes:
    return _FAVICON.format(colour=colour).encode()


def favicon(branding: Branding) -> bytes:
    """The site's icon (SVG) in the organisation's colour (checked #rrggbb at load time)."""
    return _favicon(branding.colour)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
