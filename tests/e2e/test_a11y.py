"""
WCAG 2.1 AA in a real browser: every page a recipient or a D-Compose writer can reach,
walked in headless Chromium against the real C{twistd -n secmail}, audited with axe-core
(L{tests.e2e.axe}) at a desktop's width (1280 px) and a phone's (390 px), with a screenshot
of each (in tests/e2e/artifacts/a11y, or $SECMAIL_SHOTS) to look at.

Each walk gathers every page's violations and fails once at its end, naming them all.
"""

# ruff: noqa: F811 - the fixtures imported from test_browser are parameters here

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page
from playwright.sync_api import expect as pw_expect

from tests.e2e.axe import describe, layout_problems, violations
from tests.e2e.chromium import needs_chromium
from tests.e2e.fake_sms import FakeSmsGateway, http_sms_settings
from tests.e2e.harness import Gateway, SinkMessage, SmtpSink
from tests.e2e.mails import unique
from tests.e2e.registered import send_registered
from tests.e2e.test_browser import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    CHROMIUM,
    PNG_SIGNATURE,
    SALES,
    Contexts,
    assert_none_arrive,
    browser,
    contexts,
    new_message,
    playwright,
    send_marked,
    sign_in_to_compose,
    tiny_png,
)

pytestmark = needs_chromium
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
SHOTS = Path(os.environ.get("SECMAIL_SHOTS") or ARTIFACTS / "a11y")
CAROL = "carol@partner.example"
WRONG_NUMBER_SUBJECT = "Secure message: the recipient says the phone number is wrong"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    internet: SmtpSink,
    internal: SmtpSink,
    http_sms: FakeSmsGateway,
) -> Iterator[Gateway]:
    """
    One gateway for every page: D-Compose to sales, PINs through the fake SMS gateway, and
    a header as full as an organisation makes it: logo, name, a long host name, a phrase.
    """
    directory = tmp_path_factory.mktemp("a11y-gateway")
    logo = directory / "logo.png"
    logo.write_bytes(logo_png())
    gw = Gateway(
        directory,
        internet,
        internal,
        settings={
            "gateway": {"hostname": "securemail.example-organisation.com"},
            "portal": {
                "compose_directory": [SALES],
                "brand_name": "Example Organisation",
                "logo_file": str(logo),
                "verification_phrase": "Blue heron at dawn",
            },
            "sms": {"order": ["http"]},
            "sms.http": http_sms_settings(http_sms),
        },
    )
    try:
        yield gw.start()
    finally:
        gw.stop()


def logo_png(size: int = 48) -> bytes:
    """A square PNG logo: white with an orange stripe, to be seen on the brand colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    def row(y: int) -> bytes:
        pixel = b"\xf0\x8a\x00" if size // 3 <= y < 2 * size // 3 else b"\xff\xff\xff"
        return b"\x00" + pixel * size

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    rows = b"".join(row(y) for y in range(size))
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Audit:
    """Audits pages at each width, keeps their screenshots, and gathers what failed."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.pages: list[str] = []
        SHOTS.mkdir(parents=True, exist_ok=True)

    def check(self, page: Page, name: str) -> None:
        page.wait_for_load_state("load")
        self.pages.append(name)
        for width_name, (width, height) in WIDTHS.items():
            page.set_viewport_size({"width": width, "height": height})
            shot = SHOTS / f"{name}-{width}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == PNG_SIGNATURE
            found = violations(page)
            if found:
                self.failures.append(f"{name} at {width} px ({width_name}):\n{describe(found)}")
            for problem in layout_problems(page):
                self.failures.append(f"{name} at {width} px ({width_name}): {problem}")
        page.set_viewport_size({"width": 1280, "height": 900})

    def assert_clean(self, expected: int) -> None:
        assert len(self.pages) == expected, self.pages
        assert not self.failures, "WCAG 2.1 AA problems:\n" + "\n".join(self.failures)


def assert_focus_ring(page: Page, target: Locator, shot: str) -> None:
    """Tab (at most 10 times) to C{target}: it shows the 3 px focus ring in --focus, which
    tests/test_contrast.py checks against the cards and the page (WCAG 1.4.11 and 2.4.7)."""
    for _ in range(10):
        page.keyboard.press("Tab")
        if target.evaluate("e => e === document.activeElement"):
            break
    else:
        raise AssertionError(f"Tab never reached {target}")
    ring = target.evaluate(
        "e => { const s = getComputedStyle(e); return [s.outlineStyle, s.outlineWidth,"
        " s.outlineColor, getComputedStyle(document.documentElement)"
        ".getPropertyValue('--focus').trim()]; }"
    )
    assert ring[:3] == ["solid", "3px", "rgb(161, 92, 0)"] and ring[3] == "#a15c00", ring
    name = re.sub(r"[^a-z]+", "-", shot.lower()).strip("-")
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def letter_to_read() -> EmailMessage:
    """A letter with all a reading page shows: Cc, HTML with a remote picture, a file."""
    message = new_message("reader@partner.example", "Figures for the audit")
    message["Cc"] = f"Carol Outside <{CAROL}>"
    message.set_content("The plain text part.\n")
    message.add_alternative(
        "<html><body><p>The HTML part, <b>bold</b>.</p>"
        '<p><img src="https://tracker.example/pixel.png" alt="remote"></p></body></html>',
        subtype="html",
    )
    message.add_attachment(tiny_png(), "image", "png", filename="chart.png")
    return message


def test_reading_pages_pass_wcag_aa(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """Landing, reading, forward, sent, signed out, the code pages and the error pages."""
    audit = Audit()
    link = send_marked(gateway, internet, unique("a11y") + "@partner.example", letter_to_read())

    page = contexts.page()
    page.goto(link)
    audit.check(page, "landing")
    page.get_by_role("button", name="Open message").click()
    page.wait_for_url(re.compile(r"/read$"))
    audit.check(page, "reading")
    page.get_by_text("Forward", exact=True).first.click()
    pw_expect(page.get_by_label("Forward to")).to_be_visible()
    audit.check(page, "reading-forward")
    response = page.goto(f"{gateway.portal_url}/read/attachment/9")
    assert response is not None and response.status == 404
    audit.check(page, "error-no-such-attachment")
    page.goto(f"{gateway.portal_url}/read")
    page.get_by_label("Your reply").fill("Thank you.")
    page.get_by_role("button", name="Reply", exact=True).click()
    page.wait_for_url(re.compile(r"/read/sent$"))
    audit.check(page, "reply-sent")
    page.goto(f"{gateway.portal_url}/read")
    page.get_by_role("button", name="Sign out").click()
    audit.check(page, "signed-out")
    page.goto(f"{gateway.portal_url}/read")
    audit.check(page, "error-signed-out")
    page.goto(f"{gateway.portal_url}/no/such/page")
    audit.check(page, "error-page-not-found")
    page.goto(f"{gateway.portal_url}/m/" + "A" * 43)
    audit.check(page, "error-message-not-found")

    other = contexts.page()  # another browser: it needs a code by e-mail
    other.goto(link)
    other.locator('input[name="csrf"]').evaluate("input => { input.value = 'forged'; }")
    other.get_by_role("button", name="Open message").click()
    pw_expect(other.get_by_role("heading", name="Please try again")).to_be_visible()
    audit.check(other, "error-bad-form")
    other.goto(link)
    other.get_by_role("button", name="Open message").click()
    pw_expect(other.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    audit.check(other, "code")
    other.get_by_role("button", name="Send me a code").click()
    pw_expect(other.get_by_label("Code")).to_be_visible()
    audit.check(other, "code-sent")
    audit.assert_clean(12)


def test_compose_pages_pass_wcag_aa(
    gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """D-Compose: start, code, write, sent, signed out, and its address-not-found page."""
    audit = Audit()
    page = contexts.page()
    page.goto(f"{gateway.portal_url}/compose")
    audit.check(page, "compose-start")
    page.goto(f"{gateway.portal_url}/compose/{SALES}")
    audit.check(page, "compose-start-fixed")
    page.goto(f"{gateway.portal_url}/compose/someone@partner.example")
    audit.check(page, "compose-error-not-found")

    writer = unique("writer") + "@partner.example"
    page.goto(f"{gateway.portal_url}/compose")
    page.get_by_label("To", exact=True).select_option(SALES)
    page.get_by_label("Your e-mail address").fill(writer)
    page.get_by_role("button", name="Send me a code").click()
    pw_expect(page.get_by_role("heading", name="Confirm your e-mail address")).to_be_visible()
    audit.check(page, "compose-code")

    sign_in_to_compose(page, gateway, internet, writer)
    audit.check(page, "compose-write")
    page.get_by_label("Subject").fill("Accessible offer")
    page.get_by_label("Message").fill("Here it is.")
    page.get_by_role("button", name="Send securely").click()
    pw_expect(page.get_by_role("heading", name="Message sent")).to_be_visible()
    audit.check(page, "compose-sent")
    page.get_by_role("button", name="Sign out").click()
    audit.check(page, "compose-signed-out")
    audit.assert_clean(7)


def test_registered_pages_pass_wcag_aa(
    gateway: Gateway, internet: SmtpSink, internal: SmtpSink, contexts: Contexts
) -> None:
    """The PIN page, a wrong PIN, and "Wrong number?": asked first, then the sender told."""
    letter = send_registered(gateway, internet)
    page = contexts.page()
    page.goto(f"{gateway.portal_url}/m/{letter.token}")
    audit = Audit()
    audit.check(page, "registered-landing")
    page.get_by_role("button", name="Open message").click()
    pw_expect(page.get_by_role("heading", name="Type the PIN")).to_be_visible()
    audit.check(page, "pin")
    for name in ("Open message", "Order PIN code", "Wrong number?"):
        assert_focus_ring(page, page.get_by_role("button", name=name), f"pin-focus-{name}")
    page.get_by_label("PIN", exact=True).fill("12345")
    page.get_by_label("PIN", exact=True).evaluate("input => input.removeAttribute('pattern')")
    page.get_by_role("button", name="Open message").click()
    pw_expect(page.get_by_role("alert")).to_be_visible()
    audit.check(page, "pin-error")

    def told(message: SinkMessage) -> bool:
        return message.header("subject") == WRONG_NUMBER_SUBJECT

    page.get_by_role("button", name="Wrong number?").click()
    pw_expect(page.get_by_role("heading", name="Is this number not yours?")).to_be_visible()
    audit.check(page, "wrong-number-confirm")
    page.get_by_role("button", name="No, go back").click()
    pw_expect(page.get_by_role("heading", name="Type the PIN")).to_be_visible()
    assert_none_arrive([internet], told, 1.0, "the sender was told before the reader confirmed")
    page.get_by_role("button", name="Wrong number?").click()
    page.get_by_role("button", name="Yes, tell the sender").click()
    pw_expect(page.get_by_role("heading", name="The sender has been told")).to_be_visible()
    audit.check(page, "wrong-number")
    internal.wait_for_message(told, what="the wrong-number notice to the sender")
    audit.assert_clean(5)


def test_the_audit_finds_problems(contexts: Contexts) -> None:
    """The audit is not blind: a picture without alt text, a field without a label, a
    label run into the text above it and a page wider than the phone are all reported."""
    page = contexts.page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.set_content(
        '<!DOCTYPE html><html lang="en"><head><title>Bad</title></head><body><main>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        '<input type="text" name="nameless">'
        '<p style="margin:0">Some text</p><label for="x" style="display:block">To</label>'
        '<input id="x" type="text"><div style="width:800px">wide</div></main></body></html>'
    )
    found = {v["id"] for v in violations(page)}
    assert {"image-alt", "label"} <= found, found
    problems = layout_problems(page)
    assert any(p.startswith('label "To" touches') for p in problems), problems
    assert any("800px wide" in p or "wide in a 390px" in p for p in problems), problems


@pytest.mark.parametrize("language", ["fi", "sv"])
def test_translated_pages_pass_wcag_aa(
    language: str, gateway: Gateway, internet: SmtpSink, contexts: Contexts
) -> None:
    """Finnish and Swedish words are longer: the pages with forms, in each (the browser's
    Accept-Language chooses), pass the same audit, and say so in their lang attribute."""
    audit = Audit()
    page = contexts.page(locale=language)
    link = send_marked(gateway, internet, unique("kieli") + "@partner.example", letter_to_read())
    page.goto(link)
    assert page.locator("html").get_attribute("lang") == language
    audit.check(page, f"{language}-landing")
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/read$"))
    audit.check(page, f"{language}-reading")
    page.goto(f"{gateway.portal_url}/compose/{SALES}")
    audit.check(page, f"{language}-compose-start-fixed")
    page.goto(f"{gateway.portal_url}/compose")
    audit.check(page, f"{language}-compose-start")

    letter = send_registered(gateway, internet)
    page.goto(f"{gateway.portal_url}/m/{letter.token}")
    page.locator("main form button[type=submit]").click()
    pw_expect(page.locator("#pin")).to_be_visible()
    audit.check(page, f"{language}-pin")
    page.locator('form[action$="/wrong-number"] button').click()
    pw_expect(page.locator('button[value="yes"]')).to_be_visible()
    audit.check(page, f"{language}-wrong-number-confirm")
    audit.assert_clean(6)
