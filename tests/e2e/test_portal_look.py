"""
The portal's consistency in a real browser (issue 12 item 10): headless Chromium against the
real C{twistd -n secmail}. The favicon loads, "Show pictures" visibly changes the page and
loads the pictures (from a local HTTPS server that counts its requests), dates are written in
the reader's language, and the letter's table keeps its borders in the interface's font.
Screenshots of each page go to C{/work/shots/portal/} (or C{$SECMAIL_SHOTS}) for a look.
"""

from __future__ import annotations

import email.policy
import http.server
import os
import re
import ssl
import struct
import threading
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import expect as pw_expect

from secmail.tls import ensure_self_signed
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.harness import LOOPBACK, Gateway, SmtpSink
from tests.e2e.mails import link_token, notification_for, unique

SENDER = "alice@corp.example"
SALES = "sales@corp.example"
pytestmark = needs_chromium
SHOTS = Path(os.environ.get("SECMAIL_SHOTS", "/work/shots/portal"))

pw_expect.set_options(timeout=TIMEOUT_MS)


def tiny_png(width: int = 40, height: int = 20) -> bytes:
    """A valid one-colour RGB PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\xe0\x7a\x10" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class PictureServer:
    """An HTTPS server on loopback playing "the Internet" for remote pictures; counts requests."""

    def __init__(self, directory: Path) -> None:
        cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
        ensure_self_signed(cert, key, "localhost")
        self.requests: list[str] = []
        png = tiny_png()
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.server.server_address[1]}"

    def __enter__(self) -> PictureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("look-gateway"),
        internet,
        internal,
        settings={"portal": {"compose_directory": [SALES]}},
    )
    try:
        yield gw.start()
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PictureServer]:
    with PictureServer(tmp_path_factory.mktemp("pictures")) as server:
        yield server


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


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile in English."""
    made = new_context(browser, "en-GB")
    try:
        yield made
    finally:
        made.close()


def new_context(browser: Browser, locale: str) -> BrowserContext:
    made = browser.new_context(
        ignore_https_errors=True,
        locale=locale,
        viewport={"width": 1000, "height": 800},
        accept_downloads=True,
    )
    made.set_default_timeout(TIMEOUT_MS)
    return made


def send_letter(gateway: Gateway, internet: SmtpSink, recipient: str, html: str) -> str:
    """A letter to C{recipient}.s with C{html} as its body; its link from the notification."""
    message = EmailMessage()
    message["From"] = f"Alice Sender <{SENDER}>"
    message["To"] = f"Bob Partner <{recipient}.s>"
    message["Subject"] = "Price list / December"
    message["Message-ID"] = f"<{unique('look')}@corp.example>"
    message["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    message.set_content("The price list.\n")
    message.add_alternative(html, subtype="html")
    is_notification = notification_for(gateway, recipient)
    before = len([m for m in internet.messages() if is_notification(m)])
    gateway.send(SENDER, [recipient + ".s"], message.as_bytes(policy=email.policy.SMTP))
    notifications = internet.wait_for(
        lambda ms: [m for m in ms if is_notification(m)][before:],
        what=f"the notification to {recipient}",
    )
    return f"{gateway.portal_url}/m/{link_token(gateway, notifications[0])}"


def open_letter(page: Page, link: str, button: str = "Open message") -> None:
    page.goto(link)
    page.get_by_role("button", name=button).click()
    page.wait_for_url(re.compile(r"/read$"))
    page.wait_for_load_state("load")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 3_000, f"{path} looks empty"


def table_letter(pictures: PictureServer) -> str:
    return (
        "<p>Dear Bob, here are the prices.</p>"
        '<table border="1" cellpadding="6" cellspacing="0">'
        "<tr><th>Item</th><th>Price</th></tr>"
        "<tr><td>Okapi</td><td>12 EUR</td></tr>"
        "</table>"
        f'<p><img src="{pictures.url}/logo.png" alt="Company logo"></p>'
    )


# --- the tests -------------------------------------------------------------------------


def test_favicon_loads(gateway: Gateway, context: BrowserContext) -> None:
    """The home page links /favicon.ico, which the browser decodes as an image; no Server:."""
    page = context.new_page()
    response = page.goto(gateway.portal_url + "/")
    assert response is not None and response.status == 200
    assert "server" not in response.headers, response.headers
    pw_expect(page.get_by_role("link", name="Write a secure message")).to_be_visible()
    icon = page.locator('link[rel="icon"]')
    assert icon.get_attribute("href") == "/favicon.ico"
    size = page.evaluate(
        """() => new Promise((ok, fail) => {
            const img = new Image(32, 32);
            img.onload = () => ok([img.naturalWidth, img.naturalHeight]);
            img.onerror = () => fail("the favicon did not decode");
            img.src = "/favicon.ico";
        })"""
    )
    assert size[0] > 0 and size[1] > 0, size
    icon_response = page.request.get(gateway.portal_url + "/favicon.ico")
    assert icon_response.headers["content-type"] == "image/svg+xml"
    assert "server" not in icon_response.headers
    shot(page, "home-en")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "home-en-390")


def test_show_pictures_changes_the_page(
    gateway: Gateway, internet: SmtpSink, pictures: PictureServer, context: BrowserContext
) -> None:
    """Show pictures loads the remote picture into the letter and says so; Hide goes back."""
    link = send_letter(gateway, internet, "pictures@partner.example", table_letter(pictures))
    page = context.new_page()
    open_letter(page, link)
    frame = page.frame_locator("iframe")
    pw_expect(frame.get_by_text("Okapi")).to_be_visible()
    picture = frame.locator("img")
    assert picture.evaluate("img => img.naturalWidth") == 0  # blocked: no source at all
    assert pictures.requests == []
    # The table keeps its border, and the letter is in the interface's font.
    border = frame.locator("td").first.evaluate("td => getComputedStyle(td).borderTopWidth")
    assert border != "0px", border
    font = frame.locator("body").evaluate("b => getComputedStyle(b).fontFamily")
    assert "system-ui" in font, font
    pw_expect(page.get_by_role("heading", name="Price list / December")).to_be_visible()
    # To: the real address, not the routing form.
    pw_expect(page.get_by_text("Bob Partner <pictures@partner.example>")).to_be_visible()
    assert "partner.example.s" not in page.content()
    shot(page, "reading-pictures-hidden")

    page.get_by_role("link", name="Show pictures").click()
    page.wait_for_url(re.compile(r"/read\?images=1$"))
    page.wait_for_load_state("load")
    pw_expect(page.get_by_role("link", name="Hide pictures")).to_be_visible()
    pw_expect(page.get_by_text("Pictures from the Internet are shown")).to_be_visible()
    pw_expect(page.get_by_role("link", name="Show pictures")).to_have_count(0)
    loaded = page.frame_locator("iframe").locator("img")
    pw_expect(loaded).to_have_js_property("complete", True)
    assert loaded.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [40, 20]
    assert pictures.requests == ["/logo.png"]
    shot(page, "reading-pictures-shown")
    page.set_viewport_size({"width": 390, "height": 844})
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] + 1, f"horizontal scrolling at 390 px: {width}"
    shot(page, "reading-pictures-shown-390")
    page.set_viewport_size({"width": 1000, "height": 800})

    page.get_by_role("link", name="Hide pictures").click()
    page.wait_for_url(re.compile(r"/read$"))
    pw_expect(page.get_by_role("link", name="Show pictures")).to_be_visible()

    # The whole message is saved under its subject, the slash made harmless.
    with page.expect_download() as info:
        page.get_by_role("link", name="Save the whole message (.eml)").click()
    assert info.value.suggested_filename == "Price list - December.eml"
    page.close()


def test_dates_localized_for_fi(
    gateway: Gateway, internet: SmtpSink, pictures: PictureServer, browser: Browser
) -> None:
    """A Finnish browser gets Finnish dates and sizes on the landing and reading pages."""
    link = send_letter(gateway, internet, "finnish@partner.example", table_letter(pictures))
    finnish = new_context(browser, "fi-FI")
    try:
        page = finnish.new_page()
        page.goto(link)
        received = page.locator("dt", has_text="Vastaanotettu").locator(
            "xpath=following-sibling::dd[1]"
        )
        pw_expect(received).to_have_text(re.compile(r"^\d{1,2}\. \w+ \d{4} \d{1,2}\.\d{2} UTC$"))
        assert "kuuta" in received.inner_text()  # a Finnish month name
        shot(page, "landing-fi")
        open_letter(page, link, "Avaa viesti")
        date = page.locator("dt", has_text="Päiväys").locator("xpath=following-sibling::dd[1]")
        pw_expect(date).to_have_text("2. maaliskuuta 2026 10.00 UTC")
        pw_expect(page.get_by_text("10,2 Mt").first).to_be_visible()
        shot(page, "reading-fi")
    finally:
        finnish.close()


def test_compose_start_has_the_frame(gateway: Gateway, context: BrowserContext) -> None:
    """The D-Compose start page (the home page's button) has the icon link too."""
    page = context.new_page()
    page.goto(gateway.portal_url + "/compose")
    pw_expect(page.get_by_role("heading", name="Write a secure message")).to_be_visible()
    assert page.locator('link[rel="icon"]').get_attribute("href") == "/favicon.ico"
    shot(page, "compose-start-en")
    page.close()
