"""
The admin console on its own listener of the real C{twistd -n secmail}: an admin added with
C{secmail admin add} (password on standard input) signs in with headless Chromium (password
and a TOTP code pyotp computes), sees the sign-in in the audit log, and uses the API with a
token from C{secmail admin token}. The portal's port answers 404 for the console and its API,
and the console's port serves none of the portal. Screenshots go to /work/shots/admin/ when
that directory exists (else to tests/e2e/artifacts/admin).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import expect as pw_expect
from playwright.sync_api import sync_playwright

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.console import fresh_code, secmail_admin, shooter
from tests.e2e.harness import (
    LOOPBACK,
    Gateway,
    GatewayError,
    SmtpSink,
    unverified_tls,
)

pytestmark = needs_chromium
PASSWORD = "a long admin pass phrase"
SHOTS = (
    Path("/work/shots/admin")
    if Path("/work/shots/admin").is_dir()
    else Path(__file__).resolve().parent / "artifacts" / "admin"
)


shoot = shooter(SHOTS)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("admin-gateway"), internet, internal)
    try:
        yield gw.start()
    finally:
        gw.stop()


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=15, context=unverified_tls())
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_console_sign_in_audit_and_api(gateway: Gateway) -> None:
    added = secmail_admin(gateway, "add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    uri = [line for line in added.stdout.splitlines() if line.startswith("otpauth://totp/")]
    assert len(uri) == 1, added.stdout
    secret = pyotp.parse_uri(uri[0]).secret

    # The portal has none of the console; the console none of the portal.
    for path in ("/api/v1/audit", "/signin", "/audit"):
        assert gateway.portal_get(path).status == 404, path
    assert get(gateway.admin_port, "/m/" + "t" * 43)[0] == 404
    assert get(gateway.admin_port, "/api/v1/audit")[0] == 401

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.goto(gateway.admin_url + "/")
            pw_expect(page).to_have_url(gateway.admin_url + "/signin")
            shoot(page, "signin")
            page.fill("#name", "alice")
            page.fill("#password", "not the password")
            page.fill("#code", "000000")
            page.click("button[type=submit]")
            pw_expect(page.get_by_role("alert")).to_contain_text("wrong")
            shoot(page, "signin-failed")
            page.fill("#password", PASSWORD)
            page.fill("#code", fresh_code(secret))
            page.click("main button[type=submit]")
            pw_expect(page).to_have_url(gateway.admin_url + "/")
            pw_expect(page.locator("header")).to_contain_text("alice")
            shoot(page, "home")
            page.click("nav.menu >> text=Audit log")
            pw_expect(page).to_have_url(gateway.admin_url + "/audit")
            row = page.locator("tbody tr", has_text="sign-in failed")
            pw_expect(row).to_have_count(1)
            ok = page.locator("tbody tr").filter(has_text="alice").filter(has_text="127.0.0.1")
            pw_expect(ok.filter(has_text="sign-in")).to_have_count(2)  # failed, then signed in
            shoot(page, "audit")
            page.click("nav.menu >> text=Admins and roles")
            pw_expect(page.locator("h1")).to_have_text("Admins and roles")
            shoot(page, "admins")
            phone = browser.new_context(
                ignore_https_errors=True, viewport={"width": 390, "height": 844}, locale="fi-FI"
            )
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            small.goto(gateway.admin_url + "/admins")
            pw_expect(small.locator("h1")).to_have_text("Ylläpitäjät ja roolit")
            width = small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width  # no sideways scrolling of the page at phone width
            shoot(small, "admins-390-fi")
            small.goto(gateway.admin_url + "/audit")
            shoot(small, "audit-390-fi")
            page.click("header button[type=submit]")
            pw_expect(page).to_have_url(gateway.admin_url + "/signin?out=1")
            shoot(page, "signed-out")
        finally:
            browser.close()

    made = secmail_admin(gateway, "token", "alice")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    status, body = get(gateway.admin_port, "/api/v1/audit?since=2000-01-01T00:00:00Z", token)
    assert status == 200, body
    actions = [(r["admin"], r["action"]) for r in json.loads(body)]
    assert ("alice", "sign-in") in actions and ("alice", "sign-out") in actions
    assert gateway.portal_get("/api/v1/audit").status == 404


def test_admin_port_taken_stops_start_up(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    """The console's port taken: twistd stops with one line naming admin.listen, no traceback."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        endpoint = f"ssl:{port}:interface={LOOPBACK}"
        gw = Gateway(tmp_path / "gw", internet, internal, {"admin": {"listen": [endpoint]}})
        with pytest.raises(GatewayError):
            gw.start()
    log = gw.log_text()
    naming = [line for line in log.splitlines() if "admin.listen" in line]
    assert len(naming) == 1, log
    assert f"secmail: admin.listen: cannot listen on {endpoint}: Address already in use" in log
    assert "Traceback" not in log
