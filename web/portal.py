"""
The portal's page layout: the security headers every response carries, the request's
language, the page around a body (branding, verification phrase, language switch) and
the style sheet. The portal's app is L{web.portal_app}; D-Compose (L{web.compose}) uses
the same layout.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail.config import Settings
from web import i18n
from web.forms import escape
from web.i18n import Translate

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

# The brand colour is put in where the style sheet is served (L{style_sheet}).
STYLE = """\
:root { --brand: BRAND; --text: #1d2330; --muted: #5b6474; --bg: #f4f5f7; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       background: var(--bg); color: var(--text); line-height: 1.5; }
header { background: var(--brand); color: #fff; padding: .75rem 1rem; }
header strong { font-size: 1.1rem; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: .25rem .5rem; }
header img { height: 2rem; width: auto; }
footer { max-width: 52rem; margin: 0 auto; padding: 0 1rem 1rem; color: var(--muted); }
header .phrase { flex-basis: 100%; margin: 0; font-size: .95rem; }
main { max-width: 52rem; margin: 0 auto; padding: 1rem; }
.card { background: #fff; border-radius: 8px; padding: 1rem 1.25rem; margin-bottom: 1rem;
        box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h1 { font-size: 1.35rem; margin: .25rem 0 1rem; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
dt { font-weight: 600; color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font: inherit; margin: 0; }
iframe { width: 100%; min-height: 24rem; border: 1px solid #d5d9e0; border-radius: 4px; }
button, .button { display: inline-block; background: var(--brand); color: #fff; border: 0;
        font: inherit;
        border-radius: 6px; padding: .6rem 1.1rem; font-size: 1rem; cursor: pointer;
        text-decoration: none; }
button.secondary, .button.secondary { background: #e6e9ef; color: var(--text); }
button:focus, .button:focus, a:focus, input:focus, textarea:focus, summary:focus {
        outline: 3px solid #f0a500; outline-offset: 2px; }
input[type=text] { font-size: 1.2rem; padding: .5rem; width: 10rem; letter-spacing: .2rem; }
input[type=text].address { font-size: 1rem; width: 100%; letter-spacing: normal; }
input[type=file] { max-width: 100%; }
textarea { width: 100%; font: inherit; padding: .5rem; border: 1px solid #b8bec9;
        border-radius: 4px; resize: vertical; }
label { display: block; font-weight: 600; margin-bottom: .25rem; }
input[type=email], select, textarea, input#subject { font: inherit; font-size: 1rem;
        letter-spacing: normal; width: 100%; max-width: 36rem; padding: .5rem; }
textarea { min-height: 12rem; }
form.reply label { margin-top: .75rem; }
h2 { font-size: 1.1rem; margin: 0 0 .5rem; }
summary { cursor: pointer; font-weight: 600; }
ul.files { padding-left: 1.2rem; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
.note { color: var(--muted); font-size: .95rem; }
.error { color: #a4001d; font-weight: 600; }
@media (max-width: 30rem) { dl { grid-template-columns: 1fr; } dt { margin-top: .4rem; } }
"""


def set_security_headers(request: IRequest, csp: bytes = PAGE_CSP) -> None:
    """The headers every portal response carries."""
    for name, value in COMMON_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Security-Policy", csp)
    request.setHeader(b"X-Frame-Options", b"DENY")


def translation(request: IRequest, settings: Settings) -> Translate:
    """The request's language (cookie, else Accept-Language) as a gettext function."""
    return i18n.translator(i18n.request_language(request, settings.portal.languages))


def render_page(
    request: IRequest, settings: Settings, title: str, body: str, heading: bool = True
) -> bytes:
    """
    A whole portal page around C{body} (already escaped HTML, already translated), with the
    security headers, the organisation's branding, its verification phrase and the
    language switch.
    """
    set_security_headers(request)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    portal = settings.portal
    language = i18n.request_language(request, portal.languages)
    _ = i18n.translator(language)
    h1 = f"<h1>{_e(title)}</h1>" if heading else ""
    logo = '<img src="/static/logo" alt="">' if portal.logo_file else ""
    # The default name is translated; a name the organisation chose is its own.
    brand = _("Secure mail") if portal.brand_name == "Secure mail" else portal.brand_name
    phrase = ""
    if portal.verification_phrase:
        said = _("Your organisation's verification phrase: «{phrase}»")
        phrase = f'<p class="phrase">{said.format(phrase=_e(portal.verification_phrase))}</p>'
    return (
        f'<!DOCTYPE html><html lang="{language}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="/static/portal.css"></head>'
        f"<body><header>{logo}<strong>{_e(brand)}</strong> · {_e(settings.gateway.hostname)}"
        f"{phrase}</header><main>{h1}{body}</main>"
        f"{_language_switch(request, portal.languages, language, _)}</body></html>"
    ).encode()


def _language_switch(
    request: IRequest, languages: tuple[str, ...], current: str, _: Translate
) -> str:
    """Links to C{/lang/<code>?next=<this page>}, each language named in itself."""
    if len(languages) < 2:
        return ""
    here = quote(_switch_target(request), safe="/")
    links = []
    for code in languages:
        name = i18n.NAMES[code]
        if code == current:
            links.append(f'<strong lang="{code}" aria-current="true">{name}</strong>')
        else:
            links.append(f'<a href="/lang/{code}?next={here}" lang="{code}">{name}</a>')
    # After the page's own content, so that the keyboard reaches the page's action first.
    return f'<footer><nav aria-label="{_e(_("Language"))}">{" · ".join(links)}</nav></footer>'


def _switch_target(request: IRequest) -> str:
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


def style_sheet(settings: Settings) -> bytes:
    """The portal's style sheet in the organisation's colour (checked #rrggbb at load time)."""
    return STYLE.replace("BRAND", settings.portal.brand_colour).encode()


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_e = escape
