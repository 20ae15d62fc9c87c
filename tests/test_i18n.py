"""The portal in English, Finnish and Swedish; the organisation's branding and phrase."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from treq.testing import StubTreq

from secmail.config import PortalSettings
from secmail.web import i18n
from secmail.web.portal import Portal
from tests.fixtures.mails import PNG
from tests.fixtures.portal import BASE, Browser, PortalFixture, Reply

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("en", "fi", "sv")
PHRASE = "blue heron at dawn"


# --- choosing the language ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fi", "fi"),
        ("sv-FI,sv;q=0.9", "sv"),
        ("de-DE,de;q=0.9,fi;q=0.8,en;q=0.7", "fi"),
        ("en;q=0.5,sv;q=0.8", "sv"),
        ("fi;q=0.3, sv;q=0.3", "fi"),  # equal quality: the one listed first
        ("FI-fi", "fi"),
        ("fi;q=0, sv;q=0.1", "sv"),  # q=0 means "not this one"
        ("de, fr", None),
        ("*", None),
        ("", None),
        ("fi;q=bogus, sv", "sv"),
    ],
)
def test_accept_language(header: str, expected: str | None) -> None:
    """Accept-Language is read with its quality values; unknown languages do not count."""
    assert i18n.from_accept_language(header, LANGUAGES) == expected


def test_cookie_wins_and_english_is_the_fallback() -> None:
    """The visitor's own choice beats the browser's; with neither, the first language."""
    assert i18n.choose_language("sv", "fi", LANGUAGES) == "sv"
    assert i18n.choose_language("xx", "fi", LANGUAGES) == "fi"
    assert i18n.choose_language("", "de, ja", LANGUAGES) == "en"
    assert i18n.choose_language("fi", "", ("en", "sv")) == "en"  # not offered here


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/m/abc", "/m/abc"),
        ("/read?images=1", "/read?images=1"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("evil.example", "/"),
        ("", "/"),
        ("/x\r\nSet-Cookie: a=b", "/"),
    ],
)
def test_safe_next(given: str, expected: str) -> None:
    """The switch goes back only to a path on this site."""
    assert i18n.safe_next(given) == expected


# --- the catalogues -----------------------------------------------------------------------


def extract() -> tuple[set[str], set[str]]:
    """Every literal in _() or N_() as `pybabel extract` finds it with babel.cfg, and the
    files it read."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f)
    read: set[str] = set()
    messages = {
        message
        for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT),
            method_map,
            options_map,
            callback=lambda filename, _method, _options: read.add(filename),
        )
        if isinstance(message, str)
    }
    return messages, read


def wrapped_messages() -> set[str]:
    """Every literal in _() or N_() in secmail/web/, the templates and the PIN text's rules."""
    return extract()[0]


def test_extraction_reads_every_module_and_template() -> None:
    """babel.cfg has pybabel read every secmail/web/*.py, every template and the PIN text's
    rules: a module added or renamed there cannot drop out of the catalogues."""
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in [
            *(ROOT / "secmail" / "web").glob("*.py"),
            *(ROOT / "web" / "templates").rglob("*.html"),
            ROOT / "secmail" / "sms" / "pin_text.py",
        ]
    }
    assert {
        "secmail/web/landing.py",
        "secmail/web/reply_page.py",
        "web/templates/layout.html",
    } <= expected
    assert sorted(expected - extract()[1]) == []


def test_sources_have_messages() -> None:
    """The extraction itself works (else the catalogue tests below would pass on nothing)."""
    messages = wrapped_messages()
    assert "Open message" in messages and "Write a secure message" in messages
    assert "Verification phrase: «{phrase}»" in messages  # layout.html
    assert "Message deleted" in messages  # web/templates/errors/
    assert len(messages) > 80


SAME_IN = {"fi": ("Cc",), "sv": ("Cc", "{size} kB", "{size} MB")}


@pytest.mark.parametrize("language", ["fi", "sv"])
def test_catalogue_matches_the_source(language: str) -> None:
    """Each wrapped string (code, templates) is translated; none stale; placeholders, tags kept."""
    path = ROOT / "web" / "locale" / language / "LC_MESSAGES" / "secmail.po"
    with open(path, "rb") as f:
        catalogue = {m.id: m.string for m in read_po(f) if m.id and not m.fuzzy}
    wrapped = wrapped_messages()
    assert sorted(wrapped - catalogue.keys()) == [], "not translated"
    assert sorted(catalogue.keys() - wrapped) == [], "in the catalogue but no longer used"
    for msgid, msgstr in catalogue.items():
        assert msgstr.strip(), msgid
        # Words that are the same in the language: Cc, and the size units in Swedish.
        assert msgstr != msgid or msgid in SAME_IN[language], msgid
        assert sorted(re.findall(r"\{\w*\}", msgstr)) == sorted(re.findall(r"\{\w*\}", msgid))
        assert re.findall(r"<[^>]+>", msgstr) == re.findall(r"<[^>]+>", msgid), msgid


def test_compile_catalogue(tmp_path: Path) -> None:
    """Babel joins continued lines, unescapes, skips header and comments; gaps stay English."""
    po = tmp_path / "x.po"
    po.write_text(
        '# comment\nmsgid ""\nmsgstr "Language: fi\\n"\n\n'
        'msgid "Say \\"hi\\""\nmsgstr ""\n"Sano "\n"\\"moi\\""\n\n'
        'msgid "Untranslated"\nmsgstr ""\n\n'
        '#, fuzzy\nmsgid "Unsure"\nmsgstr "Epävarma"\n',
        encoding="utf-8",
    )
    catalogue = i18n.compile_catalogue(str(po), "fi")
    assert catalogue.gettext('Say "hi"') == 'Sano "moi"'
    assert catalogue.gettext("Untranslated") == "Untranslated"
    assert catalogue.gettext("Unsure") == "Unsure"  # fuzzy: not yet checked by a translator
    po.write_text('msgid "x"\nmsgstr "y"\nnonsense\n', encoding="utf-8")
    with pytest.raises(ValueError, match="x.po"):
        i18n.compile_catalogue(str(po), "fi")


@pytest.mark.parametrize("language", ["fi", "sv"])
def test_shipped_catalogues_load(language: str) -> None:
    """The shipped catalogues compile and translate (what the pages and PIN texts use)."""
    _ = i18n.translator(language)
    assert _("Open message") in ("Avaa viesti", "Öppna meddelandet")


# --- the portal in each language ----------------------------------------------------------


class LanguageTests(PortalFixture):
    async def get(self, path: str, **headers: str) -> Reply:
        """One GET with the given request headers (and no cookie jar)."""
        browser = Browser(self.resource)
        stub: Any = StubTreq(self.resource)
        response = await browser._settle(
            stub,
            stub.request(
                "GET", BASE + path, headers={k.replace("_", "-"): [v] for k, v in headers.items()}
            ),
        )
        body: bytes = await browser._settle(stub, response.content())
        return Reply(response.code, response.headers, body)

    async def test_english_by_default(self) -> None:
        """Without a cookie or a known Accept-Language the landing page is English, as before."""
        letter = await self.letter()
        page = await self.get(letter.link, Accept_Language="de-DE, ja;q=0.5")
        self.assertEqual(page.code, 200)
        self.assertIn('<html lang="en">', page.text)
        self.assertIn("Open message", page.text)
        self.assertIn("<strong>Secure mail</strong>", page.text)

    async def test_finnish_landing(self) -> None:
        """A Finnish browser gets the landing page in Finnish, with lang="fi"."""
        letter = await self.letter()
        page = await self.get(letter.link, Accept_Language="fi-FI,fi;q=0.9,en;q=0.8")
        self.assertIn('<html lang="fi">', page.text)
        self.assertIn("Sinulle on suojattu viesti", page.text)
        self.assertIn(">Avaa viesti</button>", page.text)
        self.assertIn("<dt>Lähettäjä</dt>", page.text)
        self.assertIn("Suojattu kirje", page.text)
        self.assertNotIn("Open message", page.text)

    async def test_swedish_landing(self) -> None:
        """A Swedish browser gets the landing page in Swedish, with lang="sv"."""
        letter = await self.letter()
        page = await self.get(letter.link, Accept_Language="sv-SE")
        self.assertIn('<html lang="sv">', page.text)
        self.assertIn("Ett skyddat meddelande till dig", page.text)
        self.assertIn(">Öppna meddelandet</button>", page.text)
        self.assertNotIn("Open message", page.text)

    async def test_cookie_wins(self) -> None:
        """The language chosen with the switch beats the browser's Accept-Language."""
        letter = await self.letter()
        page = await self.get(letter.link, Accept_Language="fi", Cookie="__Host-secmail-lang=sv")
        self.assertIn('<html lang="sv">', page.text)

    async def test_switch_sets_cookie_and_goes_back(self) -> None:
        """/lang/fi remembers Finnish for a year and returns to the page it was used on."""
        browser = self.browser()
        letter = await self.letter()
        landing = await browser.get(letter.link)
        self.assertIn(f'href="/lang/fi?next=/m/{letter.token}"', landing.text)
        self.assertIn("English</strong> · <a", landing.text)
        switched = await browser.get(f"/lang/fi?next=/m/{letter.token}")
        self.assertEqual(switched.code, 303)
        self.assertEqual(switched.header("Location"), f"/m/{letter.token}")
        value, attributes = switched.set_cookies()["__Host-secmail-lang"]
        self.assertEqual(value, "fi")
        self.assertIn("secure", attributes)
        self.assertEqual(attributes["path"], "/")
        again = await browser.get(letter.link)
        self.assertIn("Avaa viesti", again.text)

    async def test_switch_refuses_other_sites(self) -> None:
        """The switch's redirect never leaves the site: //host, absolute URLs, backslashes."""
        for target in ("//evil.example/x", "https://evil.example/", "/%5Cevil.example", "%2F%2Fe"):
            reply = await self.browser().get(f"/lang/sv?next={target}")
            self.assertEqual(reply.code, 303)
            self.assertEqual(reply.header("Location"), "/", target)

    async def test_switch_ignores_unknown_language(self) -> None:
        """/lang/xx sets no cookie."""
        reply = await self.browser().get("/lang/xx?next=/read")
        self.assertEqual(reply.code, 303)
        self.assertNotIn("__Host-secmail-lang", reply.set_cookies())

    async def test_compose_page_in_finnish(self) -> None:
        """Pages built with the shared page frame (here: a 404) follow the language too."""
        page = await self.get("/no/such/page", Accept_Language="fi")
        self.assertEqual(page.code, 404)
        self.assertIn("Sivua ei löytynyt", page.text)


class BrandingTests(PortalFixture):
    def setUp(self) -> None:
        super().setUp()
        handle, self.logo_path = tempfile.mkstemp(suffix=".png")
        os.write(handle, PNG)
        os.close(handle)
        self.addCleanup(os.unlink, self.logo_path)
        self.use_portal(
            brand_name="Example Oy",
            brand_colour="#aa3300",
            logo_file=self.logo_path,
            logo_type="image/png",
            logo=PNG,  # read with the configuration, as config.load does
            verification_phrase=PHRASE,
        )

    def use_portal(self, **portal: Any) -> None:
        self.settings = replace(self.settings, portal=replace(self.settings.portal, **portal))
        self.portal = Portal(
            self.settings, self.store, self.portal_store, self.clock, csrf_key=os.urandom(32)
        )
        self.resource = self.portal.app.resource()

    async def test_header_shows_brand_logo_and_phrase(self) -> None:
        """The landing page carries the organisation's name, logo and verification phrase."""
        letter = await self.letter()
        page = await self.browser().get(letter.link)
        self.assertIn(
            '<img src="/static/logo" alt=""><p class="brand"><strong>Example Oy</strong>', page.text
        )
        self.assertIn(f"Verification phrase: «{PHRASE}»", page.text)
        self.assertNotIn("style=", page.text)
        self.assertNotIn("<script", page.text)

    async def test_phrase_on_other_pages_and_translated(self) -> None:
        """Every page shows the phrase, in the page's language."""
        page = await self.browser(**{"__Host-secmail-lang": "fi"}).get("/read")
        self.assertEqual(page.code, 401)
        self.assertIn(f"Varmistuslause: «{PHRASE}»", page.text)

    async def test_header_is_escaped(self) -> None:
        """A name or phrase with markup in it is shown as text: the templates autoescape."""
        self.use_portal(brand_name="<b>Evil</b> & Co", verification_phrase="<script>x</script>")
        page = await self.browser().get("/no/such/page")
        self.assertEqual(page.code, 404)
        self.assertIn("<strong>&lt;b&gt;Evil&lt;/b&gt; &amp; Co</strong>", page.text)
        self.assertIn("«&lt;script&gt;x&lt;/script&gt;»", page.text)
        self.assertNotIn("<script", page.text)

    async def test_style_sheet_has_brand_colour(self) -> None:
        """The served style sheet uses the configured colour (no inline styles on pages)."""
        css = await self.browser().get("/static/portal.css")
        self.assertEqual(css.header("Content-Type"), "text/css; charset=utf-8")
        self.assertIn("--brand: #aa3300;", css.text)
        self.assertNotIn("#1f5fae", css.text)

    async def test_logo_served(self) -> None:
        """/static/logo is the configured file as read at load, with its type and a strict CSP."""
        os.unlink(self.logo_path)  # served from memory: the file is not read again
        self.addCleanup(lambda: open(self.logo_path, "wb").close())
        logo = await self.browser().get("/static/logo")
        self.assertEqual(logo.code, 200)
        self.assertEqual(logo.body, PNG)
        self.assertEqual(logo.header("Content-Type"), "image/png")
        self.assertEqual(
            logo.header("Content-Security-Policy"), "default-src 'none'; frame-ancestors 'none'"
        )
        self.assertEqual(logo.header("X-Content-Type-Options"), "nosniff")

    async def test_no_logo_no_phrase(self) -> None:
        """Unconfigured: no logo route, no <img>, no phrase; the default colour."""
        defaults = PortalSettings()
        self.use_portal(
            brand_name=defaults.brand_name,
            brand_colour=defaults.brand_colour,
            logo_file="",
            logo_type="",
            logo=b"",
            verification_phrase="",
        )
        self.assertEqual((await self.browser().get("/static/logo")).code, 404)
        letter = await self.letter()
        page = await self.browser().get(letter.link)
        self.assertNotIn("<img", page.text)
        self.assertNotIn("erification phrase", page.text)
        css = await self.browser().get("/static/portal.css")
        self.assertIn("--brand: #1f5fae;", css.text)
