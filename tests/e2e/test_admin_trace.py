"""
Message trace in the admin console of the real C{twistd -n secmail}, its console on a port of
its own: a helpdesk admin signs in with headless Chromium (password and TOTP code), finds a
letter by its recipient, sees its state and events, withdraws it after the confirmation, and
the portal then answers 410, withdrawn. Through the API with a token: a second letter is
resent, the new notification arrives with a new link that opens, and the old link is gone.
Screenshots (1280 and 390 px) go to /work/shots/trace13/ when that directory can be made
(else to tests/e2e/artifacts/trace13).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import expect as pw_expect

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.console import api_call, fresh_code, secmail_admin, shooter
from tests.e2e.fake_sms import FakeSmsGateway
from tests.e2e.harness import (
    Gateway,
    SmtpSink,
    make_message,
    running,
)
from tests.e2e.mails import link_token, msgid, notification_for, unique
from tests.e2e.registered import MASKED, send_registered

pytestmark = needs_chromium
PASSWORD = "a long helpdesk pass phrase"
SENDER = "alice@corp.example"
SHOTS = (
    Path("/work/shots/trace13")
    if Path("/work/shots").is_dir()
    else Path(__file__).resolve().parent / "artifacts" / "trace13"
)


shoot = shooter(SHOTS)


def api(gw: Gateway, method: str, path: str, token: str, body: object = None) -> tuple[int, Any]:
    return api_call(gw.admin_port, method, path, token, body)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("trace-console"), internet, internal)
    with running(gw) as started:
        yield started


def add_admin(gw: Gateway, name: str, role: str) -> str:
    """C{secmail admin add}: the TOTP secret."""
    added = secmail_admin(gw, "add", name, "--role", role, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    [uri] = [line for line in added.stdout.splitlines() if line.startswith("otpauth://totp/")]
    return pyotp.parse_uri(uri).secret  # type: ignore[no-any-return]


def sign_in(page: Page, gw: Gateway, name: str, secret: str) -> None:
    page.goto(gw.admin_url + "/signin")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.fill("#code", fresh_code(secret))
    page.click("main button[type=submit]")
    pw_expect(page).to_have_url(gw.admin_url + "/")


def send_letter(gw: Gateway, internet: SmtpSink, address: str, subject: str) -> str:
    """A secure letter to C{address} over SMTP; the link token of its notification."""
    message = make_message(
        sender=SENDER, to=address, subject=subject, message_id=msgid("trace"), body="Secret."
    )
    gw.send(SENDER, [f"{address}.s"], message)
    notification = internet.wait_for_message(
        notification_for(gw, address), what=f"the notification to {address}"
    )
    return link_token(gw, notification)


def test_helpdesk_finds_and_withdraws_a_letter(gateway: Gateway, internet: SmtpSink) -> None:
    """Chromium: sign in, search by recipient, open the letter, withdraw it; the portal says so."""
    subject = "Wrong person Quince7731"
    address = f"{unique('bob')}@partner.example"
    token = send_letter(gateway, internet, address, subject)
    assert gateway.portal_get(f"/m/{token}").status == 200

    secret = add_admin(gateway, "hanna", "helpdesk")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            sign_in(page, gateway, "hanna", secret)
            page.click("nav.menu >> text=Message trace")
            pw_expect(page).to_have_url(gateway.admin_url + "/trace")
            page.fill("#recipient", f"{address}.s")
            page.click("form.search button[type=submit]")
            rows = page.locator("tbody tr", has_text=address)
            pw_expect(rows).to_have_count(1)
            pw_expect(rows).to_contain_text("notified")
            assert subject not in page.content()
            shoot(page, "trace-search")
            rows.locator("a").first.click()
            pw_expect(page.locator("h1")).to_contain_text("Message")
            pw_expect(page.locator(".card.recipient h2")).to_contain_text(address)
            pw_expect(page.locator(".card.pin")).to_contain_text("No PIN")
            assert subject not in page.content() and token not in page.content()
            shoot(page, "trace-message")
            page.click("text=Withdraw…")
            pw_expect(page.locator("h1")).to_have_text("Withdraw the letter?")
            pw_expect(page.locator("main")).to_contain_text(address)
            shoot(page, "trace-revoke-confirm")
            page.click("main button.danger")
            pw_expect(page.get_by_role("status")).to_contain_text("The letter was withdrawn.")
            pw_expect(page.locator(".card.recipient h2")).to_contain_text("withdrawn")
            shoot(page, "trace-revoked")

            phone = browser.new_context(
                ignore_https_errors=True, viewport={"width": 390, "height": 844}, locale="fi-FI"
            )
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            small.goto(gateway.admin_url + f"/trace?recipient={address}")
            pw_expect(small.locator("h1")).to_have_text("Viestin jäljitys")
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width  # no sideways scrolling at phone width
            shoot(small, "trace-search-390-fi")
            small.locator("tbody tr a").first.click()
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width
            shoot(small, "trace-message-390-fi")
        finally:
            browser.close()

    gone = gateway.portal_get(f"/m/{token}")
    assert gone.status == 410
    assert "The sender has withdrawn this message" in gone.body.decode("utf-8")


def test_api_resend_sends_a_new_link(gateway: Gateway, internet: SmtpSink) -> None:
    """POST .../resend: a new notification with a working link; the old link answers 404."""
    address = f"{unique('dora')}@partner.example"
    old = send_letter(gateway, internet, address, "Lost mail Plum0042")
    added = secmail_admin(gateway, "add", "desk", "--role", "helpdesk", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    made = secmail_admin(gateway, "token", "desk")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()

    status, found = api(gateway, "GET", f"/api/v1/messages?recipient={address}", token)
    assert status == 200 and len(found) == 1, found
    message_id = found[0]["id"]
    status, answer = api(
        gateway, "POST", f"/api/v1/messages/{message_id}/resend", token, {"recipient": address}
    )
    assert status == 200 and answer["resent"] == [address], answer
    notifications = internet.wait_for(
        lambda ms: [m for m in ms if notification_for(gateway, address)(m)][1:],
        what=f"the second notification to {address}",
    )
    new = link_token(gateway, notifications[0])
    assert new != old
    assert gateway.portal_get(f"/m/{new}").status == 200
    assert gateway.portal_get(f"/m/{old}").status == 404
    status, found = api(gateway, "GET", f"/api/v1/messages?id={message_id}", token)
    kinds = [e["kind"] for e in found[0]["recipients"][0]["events"]]
    assert "resent" in kinds, kinds
    added = secmail_admin(gateway, "add", "ann", "--role", "auditor", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    auditor = secmail_admin(gateway, "token", "ann").stdout.strip()
    status, audit = api(gateway, "GET", "/api/v1/audit?since=2000-01-01", auditor)
    assert status == 200
    resent = [r for r in audit if r["action"] == "resent"]
    assert len(resent) == 1 and resent[0]["admin"] == "desk", audit
    assert resent[0]["after"] == f"message {message_id} to {address}"


def test_pin_and_sms_events_shown_first(
    http_gateway: Gateway, internet: SmtpSink, http_sms: FakeSmsGateway
) -> None:
    """ "I never got my PIN": the registered letter's PIN order and its SMS are in the trace
    (API and page), with the masked number only."""
    letter = send_registered(http_gateway, internet, "pia")
    landing = http_gateway.portal_get(f"/m/{letter.token}")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', landing.body.decode("utf-8"))
    assert csrf is not None
    assert http_gateway.portal_post(f"/m/{letter.token}", {"csrf": csrf.group(1)}).status == 200
    http_sms.wait_for_accepted(1)
    secret = add_admin(http_gateway, "piet", "helpdesk")
    token = secmail_admin(http_gateway, "token", "piet").stdout.strip()

    def traced() -> dict[str, Any]:
        status, found = api(
            http_gateway, "GET", f"/api/v1/messages?recipient={letter.recipient}", token
        )
        assert status == 200 and len(found) == 1, found
        return found[0]  # type: ignore[no-any-return]

    message = traced()
    for _ in range(50):  # the SMS event is written just after the gateway accepted the text
        if any(e["kind"] == "sms sent" for e in message["events"]):
            break
        time.sleep(0.1)
        message = traced()
    [recipient] = message["recipients"]
    assert recipient["level"] == "registered"
    assert "PIN ordered" in [e["kind"] for e in recipient["events"]]
    [sent] = [e for e in message["events"] if e["kind"] == "sms sent"]
    assert MASKED in sent["detail"], sent  # the number only masked
    answer = json.dumps(message)
    for secret_text in (letter.subject, letter.body, letter.token, "401234567"):
        assert secret_text not in answer, secret_text

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            sign_in(page, http_gateway, "piet", secret)
            page.goto(http_gateway.admin_url + f"/trace/{message['id']}")
            panel = page.locator(".card.pin")
            pw_expect(panel).to_contain_text("PIN ordered")
            pw_expect(panel).to_contain_text("sms sent")
            pw_expect(panel).to_contain_text(sent["detail"])
            assert letter.subject not in page.content()
            shoot(page, "trace-registered-pin")
        finally:
            browser.close()
