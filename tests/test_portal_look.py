"""What every portal page shows the same way (issue 12 item 10): dates and sizes in the
reader's language, real addresses, "Show pictures", the letter's HTML in the interface's
font with its table borders, the icon, the saved message's name and the home page.

The pages are driven through C{StubTreq} as in tests/test_portal.py; the formats are pure.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from secmail.web.formats import date_text, header_date_text, size_text, timestamp_text
from secmail.web.reading import eml_filename
from secmail.web.sanitise import FRAME_STYLE, sanitise
from tests.fixtures.mails import ALICE, mime
from tests.fixtures.portal import PortalFixture, directives

LANG = "__Host-secmail-lang"
WHEN = datetime(2026, 12, 8, 14, 5, tzinfo=UTC)

# A letter to a marked address and a registered one in Cc, with a remote picture and a table.
ADDRESSED = mime(
    f"From: Alice Example <{ALICE}>",
    "To: Bob Partner <bob@partner.example.s>",
    "Cc: carol@partner.example.358401234567.s, dave@other.example",
    "Subject: Q3/Q4 plans",
    "Date: Tue, 08 Dec 2026 16:05:00 +0200",
    "MIME-Version: 1.0",
    "Content-Type: text/html; charset=utf-8",
    "",
    '<table border="1" cellpadding="4" style="border:0"><tr><td>Cell</td></tr></table>'
    '<img src="https://pictures.example/logo.png" alt="Logo">',
)


# --- the formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "December 8, 2026, 2:05\u202fPM UTC"),
        ("fi", "8. joulukuuta 2026 14.05 UTC"),
        ("sv", "8 december 2026 14:05 UTC"),
    ],
)
def test_date_in_the_readers_language(language: str, expected: str) -> None:
    """One date format: the language's long date and short time, in UTC and saying so."""
    assert date_text(WHEN, language) == expected
    assert timestamp_text(WHEN.timestamp(), language) == expected
    # The same moment written in another zone, as a Date header may, is the same text.
    assert date_text(WHEN.astimezone(timezone(timedelta(hours=2))), language) == expected
    assert header_date_text("Tue, 08 Dec 2026 16:05:00 +0200", language) == expected


def test_header_that_is_no_date_is_shown_as_it_came() -> None:
    """A Date header that cannot be read is shown as written (nothing accepted is lost)."""
    assert header_date_text("yesterday-ish", "fi") == "yesterday-ish"
    assert header_date_text("", "en") == ""


@pytest.mark.parametrize(
    ("size", "language", "limit", "expected"),
    [
        (10_240_000, "en", True, "10.2 MB"),  # the default max_upload_size, on every form
        (10_240_000, "fi", True, "10,2 Mt"),
        (10_240_000, "sv", True, "10,2 MB"),
        (10_299_999, "en", True, "10.2 MB"),  # a limit is rounded down
        (10_200_001, "en", False, "10.3 MB"),  # a size is rounded up
        (1_000_000, "en", False, "1.0 MB"),
        (999_999, "en", False, "1,000 kB"),
        (1_500, "fi", False, "2 kt"),
        (12, "en", False, "1 kB"),
        (0, "en", False, "0 kB"),
        (2_500_000_000, "en", False, "2,500.0 MB"),
    ],
)
def test_size_one_format(size: int, language: str, limit: bool, expected: str) -> None:
    """Decimal units, kB whole and MB with one decimal, in the language's number format."""
    assert size_text(size, language, limit=limit) == expected


def test_size_over_limit_never_looks_equal() -> None:
    """Just over a limit of whole tenths, the size shown is larger than the limit shown."""
    assert size_text(10_200_001, "en") != size_text(10_200_000, "en", limit=True)


@pytest.mark.parametrize(
    ("subject", "name"),
    [
        ("Quarterly figures", "Quarterly figures.eml"),
        ("Q3/Q4 plans", "Q3-Q4 plans.eml"),
        ("", "message.eml"),
        ("...", "message.eml"),
        ("../../etc/passwd", "-..-etc-passwd.eml"),
        ('Re: "x"\r\nX-Evil: 1', "Re_ _x___X-Evil_ 1.eml"),  # no line break is left
        ("\u202egpj.exe", "_gpj.exe.eml"),
    ],
)
def test_eml_named_after_the_subject(subject: str, name: str) -> None:
    """The saved message is named after its subject, made safe; message.eml without one."""
    assert eml_filename(subject) == name


def test_eml_name_is_bounded() -> None:
    """A long subject gives a name of at most 100 characters, still ending in .eml."""
    name = eml_filename("x" * 500)
    assert len(name) <= 100 and name.endswith("xx.eml")


def test_table_borders_are_kept() -> None:
    """A table's border and spacing attributes survive the sanitiser; its style= does not."""
    html = sanitise(
        '<table border="1" cellpadding="4" cellspacing="0" style="x" onclick="y"><tr>'
        '<td bgcolor="red">a</td></tr></table>',
        load_remote_images=False,
        cid_url=str,
    ).html
    table = re.search(r"<table[^>]*>", html)
    assert table is not None
    assert 'border="1"' in table.group(0) and 'cellpadding="4"' in table.group(0)
    assert 'cellspacing="0"' in table.group(0)
    assert "style" not in html and "onclick" not in html


# --- the pages -------------------------------------------------------------------------


class PageTests(PortalFixture):
    async def test_reading_page_shows_real_addresses(self) -> None:
        """To and Cc show the recipients' own addresses, never the .s routing form."""
        browser = await self.signed_in(await self.letter(ADDRESSED))
        page = (await browser.get("/read")).text
        self.assertIn("Bob Partner &lt;bob@partner.example&gt;", page)
        self.assertIn("carol@partner.example, dave@other.example", page)
        self.assertNotIn(".s&gt;", page)
        self.assertNotIn("partner.example.s", page)
        self.assertNotIn("358401234567", page)

    async def test_no_date_row_without_a_date_header(self) -> None:
        """A message without a Date header shows no empty Date row."""
        undated = mime(f"From: {ALICE}", "To: bob@partner.example.s", "Subject: Hi", "", "Text.")
        browser = await self.signed_in(await self.letter(undated))
        page = (await browser.get("/read")).text
        self.assertIn("<dt>To</dt>", page)
        self.assertNotIn("<dt>Date</dt>", page)
        dated = (await (await self.signed_in(await self.letter(ADDRESSED))).get("/read")).text
        self.assertIn("<dt>Date</dt>", dated)

    async def test_dates_in_the_readers_language(self) -> None:
        """The landing and reading pages write their dates the reader's way (here Finnish)."""
        self.clock.advance(WHEN.timestamp() - self.clock.seconds())
        letter = await self.letter(ADDRESSED)
        browser = await self.signed_in(letter)
        browser.cookies[LANG] = "fi"
        landing = (await browser.get(letter.link)).text
        self.assertIn("<dd>8. joulukuuta 2026 14.05 UTC</dd>", landing)
        reading = (await browser.get("/read")).text
        self.assertIn("<dd>8. joulukuuta 2026 14.05 UTC</dd>", reading)
        browser.cookies[LANG] = "sv"
        self.assertIn("<dd>8 december 2026 14:05 UTC</dd>", (await browser.get("/read")).text)

    async def test_same_limit_on_reply_and_compose(self) -> None:
        """The reply form writes the upload limit the way D-Compose does (10.2 MB)."""
        browser = await self.signed_in(await self.letter())
        page = (await browser.get("/read")).text
        self.assertIn("Up to 10.2 MB in all.", page)
        self.assertNotIn("9.8 MB", page)
        browser.cookies[LANG] = "fi"
        self.assertIn("10,2 Mt", (await browser.get("/read")).text)

    async def test_show_pictures_changes_the_page(self) -> None:
        """Show pictures: the frame loads them, and the note says so and offers to hide them."""
        browser = await self.signed_in(await self.letter(ADDRESSED))
        hidden = (await browser.get("/read")).text
        self.assertIn('href="/read?images=1"', hidden)
        self.assertIn('src="/read/html"', hidden)
        self.assertNotIn("Hide pictures", hidden)
        shown = (await browser.get("/read?images=1")).text
        self.assertIn('src="/read/html?images=1"', shown)
        self.assertIn("Pictures from the Internet are shown", shown)
        self.assertIn('<a href="/read" class="button secondary">Hide pictures</a>', shown)
        self.assertNotIn('href="/read?images=1"', shown)
        without = await browser.get("/read/html")
        self.assertNotIn(b"pictures.example", without.body)
        self.assertEqual(directives(without)["img-src"], ["data:"])
        with_pictures = await browser.get("/read/html?images=1")
        self.assertIn(b'src="https://pictures.example/logo.png"', with_pictures.body)
        self.assertIn("https:", directives(with_pictures)["img-src"])

    async def test_frame_has_the_interface_font_and_table_borders(self) -> None:
        """The letter's frame carries our style sheet (allowed by its hash alone) and borders."""
        browser = await self.signed_in(await self.letter(ADDRESSED))
        reply = await browser.get("/read/html")
        self.assertIn(b'<table border="1" cellpadding="4">', reply.body)
        self.assertIn(f"<style>{FRAME_STYLE}</style>".encode(), reply.body)
        digest = base64.b64encode(hashlib.sha256(FRAME_STYLE.encode()).digest()).decode()
        self.assertEqual(directives(reply)["style-src"], [f"'sha256-{digest}'"])
        self.assertIn("sandbox", reply.header("Content-Security-Policy") or "")

    async def test_favicon(self) -> None:
        """/favicon.ico is an SVG envelope in the brand colour, and every page links it."""
        browser = self.browser()
        icon = await browser.get("/favicon.ico")
        self.assertEqual(icon.code, 200)
        self.assertEqual(icon.header("Content-Type"), "image/svg+xml")
        self.assertTrue(icon.body.startswith(b"<svg "))
        self.assertIn(self.settings.branding.colour.encode(), icon.body)
        self.assertNotIn(b"href", icon.body)  # nothing remote, nothing linked
        self.assertEqual(directives(icon)["default-src"], ["'none'"])
        home = await browser.get("/")
        self.assertIn(b'<link rel="icon" href="/favicon.ico" type="image/svg+xml">', home.body)

    async def test_home_page(self) -> None:
        """GET / answers a branded page on how to open a message (before: 404)."""
        reply = await self.browser(**{LANG: "sv"}).get("/")
        self.assertEqual(reply.code, 200)
        self.assertIn("<title>Skyddade meddelanden</title>", reply.text)
        self.assertIn("öppna länken i e-postmeddelandet", reply.text)
        self.assertNotIn('href="/compose"', reply.text)  # D-Compose is not on here

    async def test_home_page_offers_compose_when_on(self) -> None:
        """With D-Compose on, the home page links to its start page."""
        self.portal.compose = self.resource  # any resource: the home page only asks if it is on
        reply = await self.browser().get("/")
        self.assertEqual(reply.code, 200)
        self.assertIn('<a class="button" href="/compose">Write a secure message</a>', reply.text)

    async def test_eml_download_named_after_subject(self) -> None:
        """The whole message downloads as "<subject>.eml", the subject made safe."""
        browser = await self.signed_in(await self.letter(ADDRESSED))
        reply = await browser.get("/read/eml")
        self.assertEqual(reply.code, 200)
        self.assertEqual(
            reply.header("Content-Disposition"),
            "attachment; filename=\"Q3-Q4 plans.eml\"; filename*=UTF-8''Q3-Q4%20plans.eml",
        )
