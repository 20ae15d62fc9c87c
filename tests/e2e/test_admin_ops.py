"""
The console's overview and queue on the real C{twistd -n secmail}: a relayed mail the Internet
answers 451 waits in the queue; the API (a token from C{secmail admin token}) lists it and
retries it, and it then arrives; headless Chromium signs in and sees the overview with its
charts as the home page and the row on the queue page. Screenshots (1280 and 390 px, English
and Finnish) go to /work/shots/ops13/ when that directory exists (else tests/e2e/artifacts/ops13).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright.sync_api import expect as pw_expect
from playwright.sync_api import sync_playwright

from tests.e2e import console
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, needs_chromium
from tests.e2e.console import fresh_code, shooter
from tests.e2e.harness import (
    Gateway,
    SmtpSink,
    make_message,
    poll,
)

pytestmark = needs_chromium
PASSWORD = "a long admin pass phrase"
SENDER = "alice@corp.example"
SLOW = "slow@partner.example"
SHOTS = (
    Path("/work/shots/ops13")
    if Path("/work/shots/ops13").is_dir()
    else Path(__file__).resolve().parent / "artifacts" / "ops13"
)


shoot = shooter(SHOTS)


def secmail_admin(gw: Gateway, *args: str, stdin: str = "") -> str:
    done = console.secmail_admin(gw, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def call(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    return console.api_call(port, method, path, token, body)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("ops-gateway"),
        internet,
        internal,
        {"secure": {"mode": "all"}, "portal": {"compose_directory": ["sales@corp.example"]}},
    )
    try:
        yield gw.start()
    finally:
        gw.stop()


def some_statistics(gw: Gateway) -> None:
    """A month of counts in stats_daily, as the nodes' counters will write them."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = []
    for back in range(30):
        day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - back * 86400))
        rows += [
            (day, "smtp_messages", "letter", 10 + (back * 7) % 13),
            (day, "smtp_messages", "relay", 20 + (back * 5) % 17),
            (day, "deliveries", "notification/sent", 9 + back % 4),
        ]
    rows.append((today, "sms", "modem/sent", 3))
    with sqlite3.connect(gw.data_dir / "secmail.sqlite") as db:
        db.executemany(
            "INSERT INTO stats_daily (day, name, label, value) VALUES (?, ?, ?, ?)", rows
        )


def test_queue_api_retry_and_console_overview(gateway: Gateway, internet: SmtpSink) -> None:
    internet.fail_data("451 4.2.0 Mailbox busy, try later", times=1, rcpt=SLOW)
    mid = f"<ops13-{time.time_ns()}@corp.example>"
    gateway.send(
        SENDER, [SLOW], make_message(sender=SENDER, to=SLOW, subject="Slow", message_id=mid)
    )
    uri = next(
        line
        for line in secmail_admin(
            gateway, "add", "alice", "--role", "admin", stdin=PASSWORD + "\n"
        ).splitlines()
        if line.startswith("otpauth://totp/")
    )
    secret = pyotp.parse_uri(uri).secret
    token = secmail_admin(gateway, "token", "alice").strip()
    port = gateway.admin_port

    def deferred() -> dict[str, Any] | None:
        status, rows = call(port, "GET", "/api/v1/queue", token)
        assert status == 200, rows
        return next((r for r in rows if SLOW in r["recipients"] and r["attempts"]), None)

    row = poll(deferred, 20, lambda: f"no deferred row for {SLOW}: {gateway.tail()}")
    assert row["state"] == "deferred" and "451" in row["last_error"]
    assert row["created"].endswith("Z") and row["sender"] == SENDER
    some_statistics(gateway)
    status, entry = call(
        port, "PUT", "/api/v1/phones/Bob@Partner.Example", token, {"number": "040 1234567"}
    )
    assert status == 200 and entry["number"] == "+358401234567" and entry["added"] is True

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
            page.goto(gateway.admin_url + "/signin")
            page.fill("#name", "alice")
            page.fill("#password", PASSWORD)
            page.fill("#code", fresh_code(secret))
            page.click("main button[type=submit]")
            pw_expect(page).to_have_url(gateway.admin_url + "/")
            pw_expect(page.locator("h1")).to_have_text("Overview")
            chart = page.locator("svg.chart")
            pw_expect(chart).to_have_count(1)
            assert chart.locator("rect.bar").count() == 30
            box = chart.bounding_box()
            assert box is not None and box["width"] > 500 and box["height"] > 100
            pw_expect(page.locator("dl.figures dd").first).to_have_text("1")  # the deferred row
            pw_expect(page.locator("table.figures")).to_contain_text("SMS sent via modem")
            shoot(page, "overview")

            page.click("nav.menu >> text=Queue")
            pw_expect(page).to_have_url(gateway.admin_url + "/queue")
            listed = page.locator(f"#row-{row['id']}")
            pw_expect(listed).to_contain_text(SLOW)
            pw_expect(listed).to_contain_text("deferred")
            shoot(page, "queue")
            listed.locator("text=Delete…").click()
            pw_expect(page.locator(".confirm h2")).to_have_text(f"Delete queue row {row['id']}?")
            shoot(page, "queue-confirm-delete")
            page.click(".confirm >> text=Cancel")

            page.goto(gateway.admin_url + "/sms")
            shoot(page, "sms")
            page.goto(gateway.admin_url + "/phones")
            pw_expect(page.locator("tbody")).to_contain_text("bob@partner.example")
            shoot(page, "phones")
            page.goto(gateway.admin_url + "/compose-directory")
            pw_expect(page.locator("ul.directory")).to_contain_text("sales@corp.example")
            shoot(page, "compose-directory")

            phone = browser.new_context(
                ignore_https_errors=True, viewport={"width": 390, "height": 844}, locale="fi-FI"
            )
            phone.add_cookies(context.cookies())
            small = phone.new_page()
            for path, name in (("/", "overview"), ("/queue", "queue"), ("/phones", "phones")):
                small.goto(gateway.admin_url + path)
                width = small.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, (path, width)  # no sideways scrolling at phone width
                shoot(small, f"{name}-390-fi")
            pw_expect(small.locator("h1")).to_have_text("Puhelinluettelo")
        finally:
            browser.close()

    status, done = call(port, "POST", f"/api/v1/queue/{row['id']}/retry", token)
    assert status == 200 and done == {"id": row["id"], "retried": True, "released": False}
    got = internet.wait_for_message(lambda m: m.message_id == mid, what=f"{mid} after the retry")
    assert got.rcpt_tos == (SLOW,)
    poll(lambda: not deferred(), 10, lambda: "the row stays in the queue after delivery")
    status, audit = call(port, "GET", "/api/v1/audit?since=2000-01-01T00:00:00Z", token)
    assert ("alice", "queue row retried") in [(r["admin"], r["action"]) for r in audit]
