"""
The notification as a recipient sees it: sent by the real C{twistd -n secmail} with a brand,
a logo and a verification phrase, then shown in headless Chromium as a mail client shows an
HTML mail (the C{cid:} logo replaced by a C{data:} URL, nothing fetched from the network).

Screenshots go to tests/e2e/artifacts/ (or to C{$SECMAIL_SHOTS}) to be looked at.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright
from playwright.sync_api import expect as pw_expect

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.harness import Gateway, SinkMessage, SmtpSink, make_message, running
from tests.e2e.mails import link_token, msgid, notification_for

pytestmark = needs_chromium
SHOTS = Path(os.environ.get("SECMAIL_SHOTS") or Path(__file__).resolve().parent / "artifacts")
BRAND = "Corp Oy Secure Mail"
COLOUR = "#0b5d3b"
PHRASE = "blue heron at dawn"
BOB = "bob@partner.example"

pw_expect.set_options(timeout=TIMEOUT_MS)


def ring_logo(size: int = 80) -> bytes:
    """A white ring with a bar on a transparent ground, as an RGBA PNG built by hand."""

    def pixel(x: int, y: int) -> bytes:
        d = ((x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2) ** 0.5
        inside = size * 0.33 <= d <= size * 0.45 or (
            abs(x - size / 2 + 0.5) < size * 0.08 and size * 0.18 < y < size * 0.82
        )
        return b"\xff\xff\xff\xff" if inside else b"\x00\x00\x00\x00"

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(size)) for y in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


LOGO = ring_logo()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("notification-gateway")
    logo = directory / "logo.png"
    logo.write_bytes(LOGO)
    portal = {
        "brand_name": BRAND,
        "brand_colour": COLOUR,
        "logo_file": str(logo),
        "verification_phrase": PHRASE,
    }
    gw = Gateway(
        directory, internet, internal, {"portal": portal, "secure": {"retention_days": 14}}
    )
    with running(gw) as started:
        yield started


@pytest.fixture(scope="module")
def notification(gateway: Gateway, internet: SmtpSink) -> SinkMessage:
    gateway.send(
        "alice@corp.example",
        [BOB + ".0401234567.s"],
        make_message(
            sender="alice@corp.example",
            to=BOB + ".0401234567.s",
            subject="Contract draft",
            message_id=msgid("notice"),
        ),
    )
    return internet.wait_for_message(notification_for(gateway, BOB), what="the notification")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            yield b
        finally:
            b.close()


def as_a_mail_client_shows_it(message: EmailMessage) -> str:
    """The HTML part with every C{cid:} reference replaced by its part as a C{data:} URL."""
    page = message.get_body(("html",))
    assert page is not None
    html = str(page.get_content())
    for part in message.walk():
        cid = part["Content-ID"]
        if cid:
            data = base64.b64encode(part.get_content()).decode("ascii")
            html = html.replace(
                f"cid:{cid.strip('<>')}", f"data:{part.get_content_type()};base64,{data}"
            )
    assert "cid:" not in html, "a cid: reference has no part in the mail"
    return html


def show(browser: Browser, html: str, width: int) -> tuple[Page, list[str]]:
    """A page showing C{html} at C{width} pixels, and the list of what it tried to fetch."""
    context = browser.new_context(viewport={"width": width, "height": 700})
    context.set_default_timeout(TIMEOUT_MS)
    fetched: list[str] = []

    def refuse(route: Route) -> None:
        fetched.append(route.request.url)
        route.abort()

    context.route("**/*", refuse)
    page = context.new_page()
    page.set_content(html, wait_until="load")
    return page, fetched


@pytest.mark.parametrize(("name", "width"), [("notification", 800), ("notification-phone", 390)])
def test_notification_in_a_mail_client(
    gateway: Gateway, notification: SinkMessage, browser: Browser, name: str, width: int
) -> None:
    """
    The gateway's notification, shown as a mail client shows it: the logo from the mail itself
    loads, nothing is fetched, the brand, the button to the letter, the date until which it
    can be read and the sender's verification phrase are on the page.
    """
    message = notification.parsed()
    assert message["From"].addresses[0].display_name == f"Alice Sender via {BRAND}"
    page, fetched = show(browser, as_a_mail_client_shows_it(message), width)
    try:
        logo = page.locator("img")
        pw_expect(logo).to_have_count(1)
        loaded = logo.evaluate("img => img.complete && img.naturalWidth")
        assert loaded == 80, "the inline logo did not load"
        assert logo.bounding_box() is not None
        link = f"{gateway.portal_url}/m/{link_token(gateway, notification)}"
        button = page.get_by_role("link", name="Open the secure message")
        pw_expect(button).to_have_attribute("href", link)
        assert page.locator("a").count() == 1
        header = logo.locator("xpath=ancestor::td[1]")
        assert header.evaluate("td => getComputedStyle(td).backgroundColor") == "rgb(11, 93, 59)"
        pw_expect(header).to_contain_text(BRAND)
        body = page.locator("body")
        # Kept 14 days from its Date (the gateway's clock when it made the letter), in UTC.
        until = message["Date"].datetime.astimezone(UTC) + timedelta(days=14)
        expected = f"{until.day} {until:%B %Y, %H:%M} UTC"
        # The page keeps the date on one line with no-break spaces: compare words.
        shown = " ".join(body.inner_text().split())
        assert f"You can read the message until {expected}." in shown
        pw_expect(body).to_contain_text(f"The sender's verification phrase: «{PHRASE}»")
        pw_expect(body).to_contain_text("phone number ending in 67")
        # No sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = SHOTS / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 5_000
        assert fetched == [], f"the notification fetched {fetched}"
    finally:
        page.context.close()


def test_portal_shows_the_phrase_of_the_notification(
    gateway: Gateway, notification: SinkMessage, browser: Browser
) -> None:
    """What the notification promises holds: the letter's page shows the same phrase."""
    context = browser.new_context(ignore_https_errors=True)
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(f"{gateway.portal_url}/m/{link_token(gateway, notification)}")
        pw_expect(page.locator("header")).to_contain_text(f"«{PHRASE}»")
        pw_expect(page.locator("header")).to_contain_text(BRAND)
    finally:
        context.close()
