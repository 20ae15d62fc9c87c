# -*- test-case-name: tests.test_render -*-
"""
Pure: an untrusted HTML body made safe to show (nh3 with an allow-list), and the bounds
of what is given to the sanitiser (L{html_depth}: deeper HTML is shown as text,
L{as_text}). The portal serves the result in a sandboxed iframe (L{html_document}); the
two are independent layers. L{secmail.web.render} decides what of a message is sanitised.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_entities
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

import nh3

#: Elements open inside each other in an HTML body. The sanitiser's time grows with the
#: square of the depth (100,000 nested <div>s take minutes): deeper HTML is shown as text.
MAX_HTML_DEPTH = 200

_TAGS = frozenset(
    {
        "p", "br", "div", "span", "b", "i", "u", "em", "strong", "a", "ul", "ol", "li",
        "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption",
        "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "code", "img", "hr",
        "font", "center", "small", "big", "sub", "sup",
    }
)  # fmt: skip
_CELL = frozenset({"colspan", "rowspan", "align", "valign"})
_ATTRIBUTES = {
    "*": set(),  # nh3 otherwise keeps lang and title everywhere
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    # A table's own borders and spacing: mail that draws a grid with them keeps it.
    "table": {"border", "cellpadding", "cellspacing"},
    "td": set(_CELL),
    "th": set(_CELL),
    "font": {"color", "size", "face"},
}
# Removed with everything inside them: their content is code, or a way out of the page.
_DROPPED_WITH_CONTENT = frozenset(
    {
        "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet",
        "form", "input", "button", "select", "textarea", "meta", "link", "base", "svg",
        "math", "noscript", "noembed", "noframes", "template", "title", "xmp",
    }
)  # fmt: skip
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_REMOTE_SCHEMES = frozenset({"http", "https"})
# What nh3 lets through to our attribute filter, which then decides per tag.
_NH3_SCHEMES = _LINK_SCHEMES | {"cid"}

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _browser_url(value: str) -> str:
    """The URL as a browser reads it: tabs and newlines vanish, ends are trimmed."""
    return _TAB_OR_NEWLINE.sub("", value).strip(_C0_AND_SPACE)


@dataclass
class Sanitised:
    html: str
    has_remote_images: bool
    content_ids: frozenset[str]


def sanitise(html: str, *, load_remote_images: bool, cid_url: Callable[[str], str]) -> Sanitised:
    remote: list[str] = []
    content_ids: set[str] = set()

    def url_filter(tag: str, attribute: str, value: str) -> str | None:
        if not (tag == "a" and attribute == "href") and not (tag == "img" and attribute == "src"):
            return value
        url = _browser_url(value)
        match = _SCHEME.match(url)
        scheme = match.group(1).lower() if match else None
        if tag == "a":
            return url if scheme in _LINK_SCHEMES else None
        if scheme == "cid":
            cid = unquote(url[4:]).strip().strip("<>")
            if not cid:
                return None
            content_ids.add(cid)
            return cid_url(cid)
        if scheme is None and url[:2].replace("\\", "/") == "//":
            scheme, url = "https", "https:" + url  # protocol-relative: still remote
        if scheme in _REMOTE_SCHEMES:
            if load_remote_images:
                return url
            remote.append(url)
        return None

    cleaner = nh3.Cleaner(
        tags=set(_TAGS),
        clean_content_tags=set(_DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in _ATTRIBUTES.items()},
        attribute_filter=url_filter,
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=set(_NH3_SCHEMES),
    )
    cleaned = cleaner.clean(html)
    return Sanitised(cleaned, bool(remote), frozenset(content_ids))


#: The frame's one style sheet, ours: the interface's font and text colour (web/static/portal.css),
#: and pictures that fit the frame. The message itself brings no style (no <style>, no style=).
FRAME_STYLE = (
    'body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;'
    "line-height:1.5;margin:.75rem;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}"
)
#: The CSP source that allows L{FRAME_STYLE} and no other style.
FRAME_STYLE_SOURCE = (
    "'sha256-" + base64.b64encode(hashlib.sha256(FRAME_STYLE.encode()).digest()).decode() + "'"
)


def html_document(sanitised_html: str) -> str:
    """The page for the sandboxed iframe: its CSP allows the one style sheet L{FRAME_STYLE}."""
    return (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Message</title><style>{FRAME_STYLE}</style></head>"
        f"<body>{sanitised_html}</body></html>\n"
    )


_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]{0,40})[^<>]*?(/?)>")
# Elements that have no end, or that the next one of their kind closes.
_NOT_NESTING = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "param", "source", "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th",
        "option", "optgroup", "thead", "tbody", "tfoot", "colgroup", "rb", "rt", "rp",
    }
)  # fmt: skip


def html_depth(html: str) -> int:
    """How deeply elements nest, counted from the tags: a bound on the parser's stack.

    An end tag closes only an open element of its name (the parser ignores the others),
    so the count is never lower than the parser's; it may be higher for sloppy HTML."""
    open_: dict[str, int] = {}
    depth = deepest = 0
    for match in _HTML_TAG.finditer(html):
        name = match.group(2).lower()
        if name in _NOT_NESTING:
            continue
        if match.group(1):
            if open_.get(name):
                open_[name] -= 1
                depth -= 1
        elif not match.group(3):
            open_[name] = open_.get(name, 0) + 1
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def as_text(html: str) -> str:
    """What an HTML body says, without its markup: for HTML too complex to sanitise."""
    text = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li|h[1-6]|blockquote|pre|table)\s*>", "\n", html)
    return html_entities.unescape(re.sub(r"<[^<>]*>", "", text))
