"""The page frame: templates load and render in every language, the style sheet from its file."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from twisted.web.test.requesthelper import DummyRequest

from secmail.admin.roles import AREAS, LEVELS, Role
from secmail.config import from_mapping
from secmail.store.audit import AuditRow
from secmail.store.envelopes import Envelope
from secmail.store.trace import TracedMessage, TracedRecipient, TraceEvent
from secmail.web import layout, render
from secmail.web.admin import trace as admin_trace
from secmail.web.admin.access import AREA_NAMES, LEVEL_NAMES
from secmail.web.reply_page import ReplyForms
from tests.fixtures import ops_pages

SETTINGS = from_mapping(
    {"gateway": {"hostname": "gw.example"}, "portal": {"url": "https://secure.example"}}
)
FRAME = layout.PageFrame(SETTINGS.branding, "gw.example", SETTINGS.portal.languages)
ERROR_PAGES = sorted(
    name.removeprefix("errors/").removesuffix(".html")
    for name in layout.TEMPLATES.list_templates()
    if name.startswith("errors/") and name != "errors/notice.html"
)
# What each error page needs besides the frame.
#: The admin console's frame (secmail/web/admin/access.py), signed out and signed in.
ADMIN_OUT: dict[str, Any] = {"me": "", "role": "", "csrf": "", "menu": (), "here": ""}
ADMIN_IN: dict[str, Any] = {
    "me": "alice",
    "role": "admin",
    "csrf": "c",
    "menu": [("/admins", "Admins and roles"), ("/audit", "Audit log")],
    "here": "/admins",
}
TRACED = TracedMessage(
    id="0" * 32,
    received=1_800_000_000,
    sender="alice@corp.example",
    kind="mail",
    recipients=[
        TracedRecipient(
            "bob@partner.example",
            "registered",
            "notified",
            "1" * 32,
            [TraceEvent(1_800_000_000, "PIN ordered", "to +35840****567")],
        ),
        TracedRecipient("carol@other.example", "relay", "delivered", None, []),
    ],
    events=[TraceEvent(1_800_000_300, "sms failed", "modem to +35840****567: no network")],
)
VALUES = {
    "admin_not_found": ADMIN_OUT,
    "admin_problem": ADMIN_OUT,
    "message_locked": {"pin": True, "sender_told": True},
    "compose_refused_address": {"address": "bob@example.org", "refused": True},
    "compose_signed_out": {"again": "/compose"},
    "too_large": {"limit": "10.2 MB"},
}

ENVELOPE = Envelope(
    id="e",
    message_id="m",
    recipient="bob@example.org",
    original="bob@example.org",
    level="letter",
    phone=None,
    state="new",
    created=0,
    sender="alice@example.com",
)
MESSAGE = render.ReadableMessage(
    subject="Hello",
    from_="alice@example.com",
    to=("bob@example.org",),
    cc=("carol@example.org",),
    date="Tue, 8 Dec 2026 01:00:00 +0000",
    message_id=None,
    references=None,
    text="Hello\n  Bob",
    html="<p>Hello</p>",
    has_remote_images=True,
    attachments=(render.Attachment(0, "a.pdf", "application/pdf", 1000),),
    incomplete=True,
)
FORMS = ReplyForms(
    csrf="c",
    form_id="f",
    can_reply=True,
    can_reply_all=True,
    mode="forward",
    text="typed",
    to="carol@example.org",
    limit="10.2 MB",
    domains="example.org",
)
#: Each page that is not an error page, and values it can be shown with.
PAGES: dict[str, dict[str, Any]] = {
    "landing.html": {
        "token": "t" * 30,
        "envelope": ENVELOPE,
        "csrf": "c",
        "received": "2026-12-08 01:00 UTC",
        "protection": "Secure letter",
    },
    "code.html": {"token": "t" * 30, "envelope": ENVELOPE, "csrf": "c", "error": "x", "sent": True},
    "signed_out.html": {},
    "home.html": {"compose": True},
    "pin.html": {
        "token": "t" * 30,
        "csrf": "c",
        "number": "+358 40 *** **67",
        "minutes": 10,
        "wrong_number_told": False,
        "error": "x",
        "note": "y",
    },
    "wrong_number_confirm.html": {"token": "t" * 30, "csrf": "c", "number": "+358 40 *** **67"},
    "wrong_number.html": {"sender": "alice@example.com"},
    "reading.html": {
        "heading": False,
        "message": MESSAGE,
        "subject": "Hello",
        "date": "December 8, 2026, 1:00 AM UTC",
        "images": False,
        "frame": "/read/html",
        "files": [(0, "a.pdf", "1 kB")],
        "forms": FORMS,
        "csrf": "c",
    },
    "sent.html": {"sent": "Reply to alice@example.com"},
    "not_sent.html": {"problem": "x", "files_dropped": True, "forms": FORMS},
    "compose/start.html": {
        "mount": "/compose",
        "csrf": "c",
        "choose": True,
        "directory": ("sales@example.org", "help@example.org"),
        "to": "sales@example.org",
        "sender": "",
        "error": "x",
        "max_address_chars": 254,
    },
    "compose/code.html": {
        "mount": "/compose",
        "csrf": "c",
        "to": "sales@example.org",
        "sender": "alice@example.com",
        "error": None,
        "minutes": 10,
    },
    "compose/write.html": {
        "mount": "/compose",
        "csrf": "c",
        "form_id": "f",
        "address": "alice@example.com",
        "to": "sales@example.org",
        "subject": "",
        "text": "",
        "error": None,
        "limit": "10.2 MB",
        "max_subject_chars": 200,
    },
    "compose/sent.html": {
        "mount": "/compose",
        "already": False,
        "csrf": "c",
        "address": "alice@example.com",
        "to": "sales@example.org",
        "files": ["a.pdf"],
        "again": "/compose/write?to=sales@example.org",
    },
    "compose/use_link.html": {"example": "https://secure.example/compose/name@example.com"},
    "compose/signed_out.html": {},
    # The admin console.
    "admin/signin.html": ADMIN_OUT
    | {"form_csrf": "c", "problem": "failed", "name": "alice", "signed_out": True},
    "admin/home.html": ADMIN_IN,
    "admin/forbidden.html": ADMIN_IN,
    "admin/bad_form.html": ADMIN_IN,
    "admin/audit.html": ADMIN_IN
    | {
        "since": "2026-12-01",
        "problem": False,
        "rows": [("2026-12-01 10:00:00", AuditRow(0, "alice", "192.0.2.1", "sign-in"))],
        "limit": 1000,
    },
    "admin/admins.html": ADMIN_IN
    | {
        "admins": [("alice", "admin", "2026-12-01", False, 1)],
        "roles": [("admin", True, ["full"] * len(AREAS))],
        "areas": [(area, AREA_NAMES[area]) for area in AREAS],
        "levels": [(level, LEVEL_NAMES[level]) for level in LEVELS],
        "level_names": LEVEL_NAMES,
        "can_change": True,
        "problem": "name",
        "draft": Role("x", {}),
    },
    # Message trace (secmail/web/admin/trace.py).
    "admin/trace.html": ADMIN_IN
    | {
        "fields": {
            "recipient": "bob@partner.example",
            "sender": "",
            "since": "",
            "until": "",
            "id": "",
        },
        "searched": True,
        "problem": "",
        "results": [
            {
                "id": "0" * 32,
                "short": "0" * 10,
                "received": "2026-12-01 10:00:00",
                "sender": "alice@corp.example",
                "recipients": [("bob@partner.example", "registered", "locked")],
            }
        ],
        "limit": 100,
        "level_names": admin_trace.LEVEL_NAMES,
        "state_names": admin_trace.STATE_NAMES,
    },
    "admin/trace_message.html": ADMIN_IN
    | {
        "message": TRACED,
        "received": "2026-12-01 10:00:00",
        "pin": [("2026-12-01 10:05:00", TRACED.events[0], "")],
        "shown_time": admin_trace.shown_time,
        "is_bad": admin_trace.is_bad_event,
        "is_pin": admin_trace.is_pin_event,
        "can_act": True,
        "secure": TRACED.recipients,
        "done": "resent",
        "problem": "",
        "level_names": admin_trace.LEVEL_NAMES,
        "state_names": admin_trace.STATE_NAMES,
    },
    "admin/trace_revoke.html": ADMIN_IN
    | {"message": TRACED, "recipient": "", "addresses": ["bob@partner.example"]},
    "admin/trace_missing.html": ADMIN_IN | {"problem": "no message has the id 0123456789"},
    # ops13: overview, queue, SMS outbox, phone and D-Compose directory.
    **ops_pages.PAGES,
    "admin/settings.html": ADMIN_IN
    | {
        "sections": [
            (
                "portal",
                "The portal.",
                [
                    {
                        "name": f"portal.{key}",
                        "key": key,
                        "help": "Help.",
                        "value": "x",
                        "unset": False,
                        "secret": secret,
                        "source": source,
                        "source_name": source,
                        "why": why,
                        "draft": None,
                        "error": error,
                    }
                    for key, secret, source, why, error in [
                        ("brand_name", False, "file", "file", ""),
                        ("listen", False, "default", "node", ""),
                        ("url", False, "database", "", "portal.url: wrong"),
                        ("token", True, "database", "", ""),
                    ]
                ],
            )
        ],
        "can_change": True,
        "origin": "/etc/secmail/secmail.toml",
        "saved": "portal.url",
    },
}


def request(language: str) -> DummyRequest:
    r = DummyRequest([b""])
    r.uri = b"/read"
    r.getCookie = lambda name: language.encode() if name == b"__Host-secmail-lang" else None  # type: ignore[method-assign]
    return r


def test_every_template_compiles() -> None:
    """A template with a syntax error fails here, not at a visitor's first request."""
    names = layout.TEMPLATES.list_templates()
    assert "layout.html" in names and len(ERROR_PAGES) >= 10
    for name in names:
        layout.TEMPLATES.get_template(name)


@pytest.mark.parametrize("name", ERROR_PAGES)
@pytest.mark.parametrize("language", ["en", "fi", "sv"])
def test_error_pages_render(name: str, language: str) -> None:
    """Each error page has its status, the frame, a title, its language and no line breaks."""
    r = request(language)
    page = layout.error_page(r, FRAME, 404, name, mount="/compose", **VALUES.get(name, {})).decode()
    assert r.responseCode == 404
    assert page.startswith(f'<!DOCTYPE html><html lang="{language}"><head>')
    assert "<h1></h1>" not in page and "<title></title>" not in page
    assert "\n" not in page and "  " not in page  # JoinLines: template layout is not page text
    assert r.responseHeaders.getRawHeaders(b"content-security-policy") == [layout.PAGE_CSP]
    if language != "en":
        assert "Please" not in page  # every error page's text is translated


def test_every_page_is_listed() -> None:
    """Each page template (not an error page, not a part) is rendered by the test below."""
    pages = {
        name
        for name in layout.TEMPLATES.list_templates()
        if not name.startswith("errors/")
        and name not in ("layout.html", "macros.html", "admin/layout.html")
        and not name.startswith("parts/")
    }
    assert sorted(pages) == sorted(PAGES)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_pages_render(name: str) -> None:
    """Each page has the frame, a title in each language, and no line breaks of its own."""
    titles = set()
    for language in ("en", "fi", "sv"):
        page = layout.template_page(request(language), FRAME, name, **PAGES[name]).decode()
        assert page.startswith(f'<!DOCTYPE html><html lang="{language}"><head>')
        assert "<h1></h1>" not in page and "<title></title>" not in page
        layout_only = re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)  # values keep theirs
        assert "\n" not in layout_only and "  " not in layout_only  # JoinLines
        title = re.search("<title>(.*)</title>", page)
        assert title is not None
        titles.add(title.group(1))
    assert len(titles) == 3  # translated


def test_text_keeps_its_line_breaks() -> None:
    """JoinLines joins the template's lines, not the letter's: its text is shown as it came."""
    page = layout.template_page(request("en"), FRAME, "reading.html", **PAGES["reading.html"])
    assert "<pre>Hello\n  Bob</pre>" in page.decode()


#: An element of a page, as the pages' templates write them.
PAGE_ELEMENT = re.compile(
    r"<(a|button|details|div|dl|dt|dd|form|h1|h2|iframe|input|label|li|main|option|p|pre"
    r"|select|span|strong|summary|textarea|ul)[\s>]"
)


def test_no_page_html_in_python() -> None:
    """Page bodies come from templates (autoescaped), not from strings in web/*.py."""
    found = []
    for path in sorted(Path(layout.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and ast.get_docstring(node, clean=False) is not None
            and isinstance(node.body[0], ast.Expr)
        }
        found += [
            f"{path.name}:{node.lineno}: {node.value[:60]!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and PAGE_ELEMENT.search(node.value)
        ]
    assert found == []


def test_style_sheet_from_file() -> None:
    """web/static/portal.css is served with --brand in the configured colour, once."""
    css = layout.style_sheet(SETTINGS.branding).decode()
    assert "--brand: #1f5fae;" in css and "body {" in css
    brand = from_mapping(
        {
            "gateway": {"hostname": "gw.example"},
            "portal": {"url": "https://secure.example", "brand_colour": "#aa3300"},
        }
    )
    assert layout.style_sheet(brand.branding).decode() == css.replace("#1f5fae", "#aa3300")


#: The Klein apps (the web layer's unit of composition) and the modules that declare them.
SETTINGS_TAKERS = {"access.py", "compose.py", "compose_pages.py", "site.py"}


def test_only_the_apps_take_settings() -> None:
    """Below the two Klein apps, web functions get the sections and values they read."""
    web = Path(layout.__file__).parent
    found = []
    for path in sorted([*web.glob("*.py"), web.parent / "letters.py", web.parent / "notify.py"]):
        if path.name in SETTINGS_TAKERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            f"{path.name}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module == "secmail.config"
            and any(alias.name == "Settings" for alias in node.names)
        ]
    assert found == []
