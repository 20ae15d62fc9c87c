"""
End-to-end, the real C{twistd -n secmail}: C{PATCH /api/v1/settings} with a token from
C{secmail admin token} changes C{portal.verification_phrase}, and the running portal shows it
within 5 seconds without a restart; a key the node's file sets answers 409; the portal's port
answers 404 for C{/api/v1/settings}. Then headless Chromium signs in, changes a key on the
settings page, sees a refused value's error next to its key, and takes screenshots at 1280 and
390 pixels (into /work/shots/settings13/ when that directory exists, else
tests/e2e/artifacts/settings).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import expect as pw_expect
from playwright.sync_api import sync_playwright

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.console import api_call as call
from tests.e2e.console import secmail_admin, shooter
from tests.e2e.harness import (
    LOOPBACK,
    Gateway,
    SmtpSink,
    poll,
)

PASSWORD = "a long admin pass phrase"
PHRASE = "Heron at dawn"
SHOTS = (
    Path("/work/shots/settings13")
    if Path("/work/shots/settings13").is_dir()
    else Path(__file__).resolve().parent / "artifacts" / "settings"
)


def page_text(gw: Gateway) -> str:
    """The text of a portal page (the page-not-found page has the frame and the phrase)."""
    return html.unescape(gw.portal_get("/no-such-page").body.decode("utf-8"))


shoot = shooter(SHOTS)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("settings-gateway"),
        internet,
        internal,
        {"portal": {"brand_name": "File Ltd"}},
    )
    try:
        yield gw.start()
    finally:
        gw.stop()


def test_setting_changed_through_the_api_shows_on_the_portal_within_5_seconds(
    gateway: Gateway,
) -> None:
    gw = gateway
    added = secmail_admin(gw, "add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    made = secmail_admin(gw, "token", "alice")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    pid = gw.process.pid if gw.process else None
    assert PHRASE not in page_text(gw)

    status, body = call(
        gw.admin_port,
        "PATCH",
        "/api/v1/settings",
        token,
        {"portal.verification_phrase": PHRASE},
    )
    changed = time.monotonic()
    assert status == 200, body
    assert body["portal.verification_phrase"] == {"value": PHRASE, "source": "database"}
    poll(lambda: PHRASE in page_text(gw), 5.0, lambda: "the phrase is not on the portal")
    assert time.monotonic() - changed < 5.0
    assert gw.process is not None and gw.process.pid == pid and gw.running

    # The file's key: 409 naming it; the portal's port has no API at all.
    status, body = call(
        gw.admin_port, "PATCH", "/api/v1/settings", token, {"portal.brand_name": "Db Ltd"}
    )
    assert status == 409 and body["error"].startswith("portal.brand_name: fixed by ")
    assert gw.portal_get("/api/v1/settings").status == 404
    for method in ("GET", "PATCH"):
        assert call(gw.portal_port, method, "/api/v1/settings", token, {})[0] == 404, method
    status, body = call(gw.admin_port, "GET", "/api/v1/audit", token)
    assert [r["key"] for r in body if r.get("key")] == ["portal.verification_phrase"]
    assert body[-1]["admin"] == "alice" and body[-1]["address"] == LOOPBACK
    assert "File Ltd" in page_text(gw)


@needs_chromium
def test_settings_page_in_a_browser(gateway: Gateway) -> None:
    """Sign in, change a key with its form, see an error next to a key, at two widths."""
    gw = gateway
    added = secmail_admin(gw, "add", "bob", "--role", "admin", stdin=PASSWORD + "\n").stdout
    uri = [line for line in added.splitlines() if line.startswith("otpauth://totp/")][0]
    totp = pyotp.TOTP(pyotp.parse_uri(uri).secret)
    if totp.interval - time.time() % totp.interval < 3:
        time.sleep(totp.interval - time.time() % totp.interval + 0.2)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(gw.admin_url + "/signin")
            page.fill("#name", "bob")
            page.fill("#password", PASSWORD)
            page.fill("#code", totp.now())
            page.click("main button[type=submit]")
            pw_expect(page).to_have_url(gw.admin_url + "/")
            page.click("nav.menu >> text=Settings")
            pw_expect(page).to_have_url(gw.admin_url + "/settings")
            brand = page.locator("#k-portal\\.brand_name")
            pw_expect(brand).to_contain_text("File Ltd")
            pw_expect(brand.locator("form")).to_have_count(0)
            shoot(page, "settings")
            page.screenshot(path=str(SHOTS / "settings-top.png"))

            hops = page.locator("#k-smtp\\.max_hops")
            hops.locator("input[name=value]").fill("0")
            hops.locator("button[value=set]").click()
            error = page.locator("#k-smtp\\.max_hops [role=alert]")
            pw_expect(error).to_have_text("Not saved: smtp.max_hops: must be greater than 0, got 0")
            page.locator("#k-smtp\\.max_hops").scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "settings-error.png"))

            hops = page.locator("#k-smtp\\.max_hops")
            hops.locator("input[name=value]").fill("40")
            hops.locator("button[value=set]").click()
            pw_expect(page.locator("[role=status]")).to_have_text("Saved: smtp.max_hops")
            pw_expect(page.locator("#k-smtp\\.max_hops input[name=value]")).to_have_value("40")
            page.locator("#k-smtp\\.max_hops").scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "settings-saved.png"))

            phone = browser.new_context(
                ignore_https_errors=True, viewport={"width": 390, "height": 844}, locale="fi-FI"
            )
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            small.goto(gw.admin_url + "/settings")
            small.screenshot(path=str(SHOTS / "settings-390-fi-top.png"))
            small.goto(gw.admin_url + "/settings#k-portal.verification_phrase")
            pw_expect(small.locator("h1")).to_have_text("Asetukset")
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width  # no sideways scrolling at phone width
            small.screenshot(path=str(SHOTS / "settings-390-fi.png"))
            shoot(small, "settings-390-fi-full")
        finally:
            browser.close()
