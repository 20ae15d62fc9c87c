"""The recipient portal over HTTP: link, Open, reading, sessions, browser binding and headers.

Every test drives the real Klein app through C{treq.testing.StubTreq} (no sockets) against a
real SQLite store; the portal's clock is a C{task.Clock}, advanced to make time pass.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure

from secmail.store.sms import SmsStore
from secmail.web import access as access_module
from secmail.web.portal import Portal
from secmail.web.sanitise import FRAME_STYLE
from secmail.web.site import make_site
from tests.fixtures.mails import ALICE, BINARY, BOB, HEAD, PNG, RICH, SAFE_DISPOSITION, mime, parse
from tests.fixtures.portal import SESSION, Browser, Letter, PortalFixture, Reply, directives
from tests.fixtures.settings import make_settings

BROWSER = "__Host-secmail-browser"
MINUTE = 60
HOUR = 3600


XSS_HTML = (
    "<script>alert(1)</script>"
    '<img src="x" onerror="alert(2)">'
    '<a href="javascript:alert(3)">click</a>'
    '<svg onload="alert(4)"><circle r="1"/></svg>'
    "<style>body { background: url(https://evil.example/style) }</style>"
    '<meta http-equiv="refresh" content="0;url=https://evil.example/refresh">'
    '<form action="https://evil.example/form"><input name="password"></form>'
    "<p>VisibleXssText</p>"
)
XSS = mime(
    *HEAD,
    "Content-Type: text/html; charset=utf-8",
    "",
    XSS_HTML,
)


class LinkTests(PortalFixture):
    async def test_link_changes_nothing(self) -> None:
        """GET on the link (twice, and by a scanner) shows the sender and an Open form only."""
        letter = await self.letter()
        person = self.browser(**{BROWSER: "b" * 32})
        scanner = self.browser()
        for client in (person, person, scanner):
            reply = await client.get(letter.link)
            self.assertEqual(reply.code, 200)
            self.assertIn(ALICE.encode(), reply.body)
            self.assertIn(f'<form method="post" action="{letter.link}"'.encode(), reply.body)
            self.assertIn(b'name="csrf"', reply.body)
            self.assertIsNone(reply.headers.getRawHeaders(b"set-cookie"))
            self.assert_no_content(reply)
        self.assertIsNone(await self.browser_hash(letter))
        self.assertEqual(await self.count("sessions"), 0)
        kinds = await self.event_kinds(letter)
        self.assertNotIn("viewed", kinds)
        self.assertNotIn("opened", kinds)

    async def test_open_gives_session_cookies(self) -> None:
        """Open with the form's CSRF: 303 to /read (no token) and two __Host- cookies."""
        letter = await self.letter()
        browser = self.browser()
        reply = await self.open(browser, letter)
        self.assertEqual(reply.code, 303)
        self.assertEqual(reply.header("Location"), "/read")
        cookies = reply.set_cookies()
        self.assertEqual(set(cookies), {SESSION, BROWSER})
        for name, (value, attributes) in cookies.items():
            self.assertRegex(value, r"^[A-Za-z0-9_-]{16,200}$", name)
            self.assertIn("secure", attributes, name)
            self.assertIn("httponly", attributes, name)
            self.assertEqual(attributes.get("samesite", "").lower(), "lax", name)
            self.assertEqual(attributes.get("path"), "/", name)
            self.assertNotIn("domain", attributes, name)
        self.assertIsNotNone(await self.browser_hash(letter))
        self.assertEqual(await self.count("sessions"), 1)
        self.assertIn("opened", await self.event_kinds(letter))

    async def test_open_without_right_csrf(self) -> None:
        """Open with a wrong or missing CSRF is refused (403) and binds nothing."""
        letter = await self.letter()
        browser = self.browser()
        for data in ({"csrf": "0" * 64}, {}, {"csrf": ""}):
            reply = await browser.post(letter.link, data)
            self.assertEqual(reply.code, 403)
            self.assertIsNone(reply.headers.getRawHeaders(b"set-cookie"))
            self.assert_no_content(reply)
        self.assertIsNone(await self.browser_hash(letter))
        self.assertEqual(await self.count("sessions"), 0)

    async def test_csrf_belongs_to_its_link(self) -> None:
        """The CSRF value of one link's form does not open another letter."""
        first, second = await self.letter(), await self.letter()
        browser = self.browser()
        csrf = (await browser.get(first.link)).csrf()
        reply = await browser.post(second.link, {"csrf": csrf})
        self.assertEqual(reply.code, 403)
        self.assertIsNone(await self.browser_hash(second))
        self.assertEqual(await self.count("sessions"), 0)

    async def test_letter_from_the_intake(self) -> None:
        """A letter that came in by SMTP opens from the link in its notification."""
        message, _ = await self.receive([b"bob@partner.example.s"])
        [row] = await self.rows("notification")
        notification = parse(await self.store.read_all(row.message_id)).get_body(("plain",))
        assert notification is not None
        [token] = re.findall(
            r"https://portal\.gw\.example/m/([A-Za-z0-9_-]+)", notification.get_content()
        )
        envelope = await self.store.envelope_by_token(token)
        assert envelope is not None
        browser = await self.signed_in(Letter(token, message.message_id, envelope.id))
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 200)
        self.assertIn(b"Merger plans for Q3", reply.body)
        self.assertIn(b"ConfidentialBodyText: we buy Initech on Friday.", reply.body)


class ReadingTests(PortalFixture):
    async def test_read_page(self) -> None:
        """/read shows subject, From, To, date and text; the iframe and the attachment list."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 200)
        for shown in (
            "Quarterly figures",
            "Alice Example &lt;alice@corp.example&gt;",
            BOB,
            "November 14, 2023, 10:13\u202fPM UTC",  # the Date header, in the reader's words
            "SecretBodyText: the numbers are bad.",
            '<iframe src="/read/html"',
            'href="/read/attachment/0"',
            "x_.exe__X_ y",
        ):
            self.assertIn(shown, reply.text)
        self.assertEqual(reply.header("Cache-Control"), "no-store")
        self.assertIn("viewed", await self.event_kinds(letter))

    async def test_read_needs_session(self) -> None:
        """Without a session cookie, or with a made-up one, every reading URL is 401 and empty."""
        letter = await self.letter()
        await self.signed_in(letter)  # a real session exists, just not this browser's
        paths = ("/read", "/read/html", "/read/cid/logo@corp.example", "/read/attachment/0")
        for browser in (
            self.browser(),
            self.browser(**{SESSION: "A" * 43}),
            self.browser(**{SESSION: "not a cookie!"}),
        ):
            for path in (*paths, "/read/eml"):
                reply = await browser.get(path)
                self.assertEqual(reply.code, 401, path)
                self.assert_no_content(reply)
                self.assertNotIn(PNG, reply.body)
                self.assertNotIn(BINARY[:64], reply.body)
        self.assertNotIn("viewed", await self.event_kinds(letter))

    async def test_html_body(self) -> None:
        """/read/html is the sanitised HTML, under a CSP with sandbox and default-src 'none'."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        reply = await browser.get("/read/html")
        self.assertEqual(reply.code, 200)
        self.assertIn(b"<p>SecretHtmlText</p>", reply.body)
        # The sandboxed frame sends no cookies, so the cid: picture is inlined as a data: URL.
        inlined = b'src="data:image/png;base64,' + base64.b64encode(PNG) + b'"'
        self.assertIn(inlined, reply.body)
        csp = directives(reply)
        self.assertIn("sandbox", csp)
        self.assertEqual(csp["default-src"], ["'none'"])
        self.assertEqual(csp["img-src"], ["data:"])
        self.assertEqual(reply.header("Content-Type"), "text/html; charset=utf-8")

    async def test_hostile_html_is_inert(self) -> None:
        """Script, handlers, javascript: links, SVG, style, meta refresh and forms are removed."""
        browser = await self.signed_in(await self.letter(XSS))
        reply = await browser.get("/read/html")
        self.assertEqual(reply.code, 200)
        self.assertIn(b"VisibleXssText", reply.body)
        self.assertIn(b">click</a>", reply.body)
        # The frame's one style sheet is ours (the interface's font); the message's is gone.
        ours = f"<style>{FRAME_STYLE}</style>"
        self.assertEqual(reply.text.count("<style"), 1)
        self.assertIn(ours, reply.text)
        body = reply.text.replace(ours, "").lower()
        for banned in (
            "<script",
            "alert(",
            "onerror",
            "onload",
            "javascript:",
            "<svg",
            "<style",
            "http-equiv",
            "refresh",
            "<form",
            "<input",
            "evil.example",
        ):
            self.assertNotIn(banned, body)
        page = await browser.get("/read")
        self.assertNotIn(b"<script", page.body.lower())
        self.assertNotIn(b"alert(", page.body)

    async def test_inline_image(self) -> None:
        """/read/cid/<cid> returns the image's bytes with its type."""
        browser = await self.signed_in(await self.letter())
        for path in ("/read/cid/logo@corp.example", "/read/cid/logo%40corp.example"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 200, path)
            self.assertEqual(reply.body, PNG)
            self.assertEqual(reply.header("Content-Type"), "image/png")
            self.assertEqual(reply.header("Cache-Control"), "no-store")
        missing = await browser.get("/read/cid/other@corp.example")
        self.assertEqual(missing.code, 404)
        self.assertEqual(missing.body, b"")

    async def test_attachment_download(self) -> None:
        """An attachment downloads byte for byte, as an attachment, under a safe file name."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        reply = await browser.get("/read/attachment/0")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body, BINARY)
        self.assertEqual(reply.header("Content-Disposition"), SAFE_DISPOSITION)
        self.assertEqual(reply.header("Content-Type"), "application/octet-stream")
        self.assertIsNone(reply.headers.getRawHeaders(b"X"))
        self.assertEqual(reply.header("Cache-Control"), "no-store")
        self.assertIn("downloaded", await self.event_kinds(letter))
        details = [d for _, kind, _, d in await self.store.events(letter.message_id)]
        self.assertIn(f"attachment 1, {len(BINARY)} bytes", details)  # its place, not its name
        missing = await browser.get("/read/attachment/1")
        self.assertEqual(missing.code, 404)

    async def test_whole_message_download(self) -> None:
        """/read/eml returns the message exactly as stored, as message/rfc822."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        reply = await browser.get("/read/eml")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.body, RICH)
        self.assertEqual(reply.header("Content-Type"), "message/rfc822")
        self.assertEqual(
            reply.header("Content-Disposition"),
            'attachment; filename="Quarterly figures.eml"; '
            "filename*=UTF-8''Quarterly%20figures.eml",
        )
        self.assertIn("saved", await self.event_kinds(letter))


class SessionTests(PortalFixture):
    async def test_idle_timeout(self) -> None:
        """A session ends after 30 minutes without a request."""
        browser = await self.signed_in(await self.letter())
        self.clock.advance(29 * MINUTE)
        self.assertEqual((await browser.get("/read")).code, 200)
        self.clock.advance(31 * MINUTE)
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 401)
        self.assert_no_content(reply)
        self.assertEqual(await self.count("sessions"), 0)

    async def test_absolute_limit(self) -> None:
        """A session ends 12 hours after it began, however active it is."""
        browser = await self.signed_in(await self.letter())
        for _ in range(24):  # 24 x 29 minutes: 11 h 36 min
            self.clock.advance(29 * MINUTE)
            self.assertEqual((await browser.get("/read")).code, 200)
        self.clock.advance(25 * MINUTE)  # 12 h 1 min
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 401)
        self.assert_no_content(reply)

    async def test_sign_out(self) -> None:
        """Sign-out with the page's CSRF ends the session and clears the cookie."""
        browser = await self.signed_in(await self.letter())
        old = browser.cookies[SESSION]
        page = await browser.get("/read")
        reply = await browser.post("/logout", {"csrf": page.csrf()})
        self.assertEqual(reply.code, 200)
        self.assertIn(b"You are signed out", reply.body)
        value, attributes = reply.set_cookies()[SESSION]
        self.assertEqual((value, attributes.get("max-age")), ("", "0"))
        self.assertEqual(await self.count("sessions"), 0)
        again = await self.browser(**{SESSION: old}).get("/read")
        self.assertEqual(again.code, 401)
        self.assert_no_content(again)

    async def test_sign_out_needs_csrf(self) -> None:
        """/logout without the session's CSRF (or with another value) leaves the session alone."""
        browser = await self.signed_in(await self.letter())
        for data in ({}, {"csrf": "x" * 32}):
            reply = await browser.post("/logout", data)
            self.assertEqual(reply.code, 403)
            self.assertIsNone(reply.headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(await self.count("sessions"), 1)
        self.assertEqual((await browser.get("/read")).code, 200)

    async def test_new_open_rotates_session(self) -> None:
        """Opening again gives a new session id, and the old one stops working."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        old = browser.cookies[SESSION]
        reply = await self.open(browser, letter)
        self.assertEqual(reply.code, 303)
        new = browser.cookies[SESSION]
        self.assertNotEqual(new, old)
        self.assertEqual((await self.browser(**{SESSION: old}).get("/read")).code, 401)
        self.assertEqual((await browser.get("/read")).code, 200)
        self.assertEqual(await self.count("sessions"), 1)


class BindingTests(PortalFixture):
    async def second_browser(self, letter: Letter, cookies: dict[str, str]) -> Browser:
        """Another browser on a letter already bound elsewhere: it gets the code page."""
        browser = self.browser(**cookies)
        reply = await self.open(browser, letter)
        self.assertEqual(reply.code, 200)
        self.assertIn(b"Confirm it is you", reply.body)
        self.assertNotIn(SESSION, reply.set_cookies())
        self.assert_no_content(reply)
        return browser

    async def ask_code(self, browser: Browser, letter: Letter) -> Reply:
        csrf = (await browser.get(letter.link)).csrf()
        reply = await browser.post(f"{letter.link}/code", {"csrf": csrf})
        self.assertEqual(reply.code, 200)
        return reply

    async def try_code(self, browser: Browser, letter: Letter, code: str) -> Reply:
        csrf = (await browser.get(letter.link)).csrf()
        return await browser.post(f"{letter.link}/verify", {"csrf": csrf, "code": code})

    async def test_other_browser_must_confirm(self) -> None:
        """A letter opened in one browser asks any other browser to confirm by code."""
        letter = await self.letter()
        await self.signed_in(letter)
        bound = await self.browser_hash(letter)
        for cookies in ({}, {BROWSER: "other-browser-cookie-value"}):
            await self.second_browser(letter, cookies)
        self.assertEqual(await self.browser_hash(letter), bound)
        self.assertEqual(await self.count("sessions"), 1)

    async def test_code_by_mail_opens(self) -> None:
        """The code mail goes to the recipient; a wrong code is refused, the right one signs in."""
        letter = await self.letter()
        await self.signed_in(letter)
        browser = await self.second_browser(letter, {})
        commits = self.commits
        reply = await self.ask_code(browser, letter)
        self.assertIn(b"We sent a 6-digit code to bob@partner.example", reply.body)
        self.assertEqual(self.commits, commits + 1)
        [row] = await self.rows("code")
        self.assertEqual(row.recipients, (BOB,))
        self.assertEqual(row.about, letter.message_id)
        code = await self.mailed_code()
        wrong = await self.try_code(browser, letter, f"{(int(code) + 1) % 10**6:06d}")
        self.assertEqual(wrong.code, 200)
        self.assertIn(b"That code is not right", wrong.body)
        self.assertNotIn(SESSION, wrong.set_cookies())
        right = await self.try_code(browser, letter, code)
        self.assertEqual(right.code, 303)
        self.assertEqual(right.header("Location"), "/read")
        page = await browser.get("/read")
        self.assertEqual(page.code, 200)
        self.assertIn(b"SecretBodyText", page.body)
        self.assertEqual(await self.count("sessions"), 2)
        used = await self.try_code(self.browser(), letter, code)  # a code works once
        self.assertIn(b"That code no longer works", used.body)

    async def test_five_wrong_tries(self) -> None:
        """After five wrong codes the right one no longer opens the letter."""
        letter = await self.letter()
        await self.signed_in(letter)
        browser = await self.second_browser(letter, {})
        await self.ask_code(browser, letter)
        code = await self.mailed_code()
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        for _ in range(4):
            self.assertIn(b"not right", (await self.try_code(browser, letter, wrong)).body)
        fifth = await self.try_code(browser, letter, wrong)
        self.assertIn(b"That code no longer works", fifth.body)
        reply = await self.try_code(browser, letter, code)
        self.assertEqual(reply.code, 200)
        self.assertIn(b"That code no longer works", reply.body)
        self.assertNotIn(SESSION, browser.cookies)
        self.assertEqual(await self.count("sessions"), 1)

    async def test_code_expires(self) -> None:
        """A code works for 10 minutes, no longer."""
        letter = await self.letter()
        await self.signed_in(letter)
        browser = await self.second_browser(letter, {})
        await self.ask_code(browser, letter)
        code = await self.mailed_code()
        self.clock.advance(10 * MINUTE + 1)
        reply = await self.try_code(browser, letter, code)
        self.assertEqual(reply.code, 200)
        self.assertIn(b"That code no longer works", reply.body)
        self.assertNotIn(SESSION, browser.cookies)
        await self.ask_code(browser, letter)  # a new one works again
        self.assertEqual((await self.try_code(browser, letter, await self.mailed_code())).code, 303)

    async def test_twenty_wrong_codes_lock_and_tell_the_sender(self) -> None:
        """
        Wrong e-mail codes in all (not only per code) lock the letter for codes, as wrong
        PINs do: the sender is told, no new code goes out; the bound browser still reads.
        """
        letter = await self.letter()
        bound = await self.signed_in(letter)
        browser = await self.second_browser(letter, {})
        answer = None
        for failure in range(20):
            if failure % 5 == 0:
                self.clock.advance(HOUR)  # within the hourly and daily code limits
                await self.ask_code(browser, letter)
            code = await self.mailed_code()
            answer = await self.try_code(browser, letter, f"{(int(code) + 1) % 10**6:06d}")
            if failure < 19:
                self.assertEqual(answer.code, 200, failure)
                self.assertEqual(await self.rows("notice"), [], failure)
        assert answer is not None
        self.assertEqual(answer.code, 403)
        self.assertIn("This message is locked", answer.text)
        self.assertIn("can no longer be opened with a code", answer.text)
        [notice] = await self.rows("notice")
        self.assertEqual(notice.recipients, (ALICE,))
        text = parse(await self.store.read_all(notice.message_id)).get_body(("plain",))
        assert text is not None
        said = " ".join(text.get_content().split())
        self.assertIn(f"Your secure message to {BOB}", said)
        self.assertIn("a wrong code was typed 20 times", said)
        codes = len(await self.rows("code"))
        self.clock.advance(HOUR)
        for path in (f"{letter.link}/code", f"{letter.link}/verify", letter.link):
            csrf = (await browser.get(letter.link)).csrf()
            locked = await browser.post(path, {"csrf": csrf, "code": "000000"})
            self.assertEqual(locked.code, 403, path)
            self.assertIn("This message is locked", locked.text)
        self.assertEqual(len(await self.rows("code")), codes)
        self.assertIn("locked", await self.event_kinds(letter))
        self.assertEqual((await self.open(bound, letter)).code, 303)  # the first browser reads

    async def test_codes_per_day(self) -> None:
        """At most 10 code mails a day for one letter; then a clear page (429)."""
        letter = await self.letter()
        await self.signed_in(letter)
        browser = await self.second_browser(letter, {})
        for _ in range(10):
            await self.ask_code(browser, letter)
            self.clock.advance(HOUR // 2)
        csrf = (await browser.get(letter.link)).csrf()
        refused = await browser.post(f"{letter.link}/code", {"csrf": csrf})
        self.assertEqual(refused.code, 429)
        self.assertIn("10 codes were sent for this message in the last 24 hours", refused.text)
        self.assertEqual(len(await self.rows("code")), 10)

    async def test_code_needs_csrf(self) -> None:
        """Asking for a code or trying one without the link's CSRF is refused and mails nothing."""
        letter = await self.letter()
        browser = self.browser()
        self.assertEqual((await browser.post(f"{letter.link}/code", {})).code, 403)
        verify = await browser.post(f"{letter.link}/verify", {"code": "123456"})
        self.assertEqual(verify.code, 403)
        self.assertEqual(await self.rows("code"), [])


PHONE = "+4915100000000"


class RegisteredTests(PortalFixture):
    """Registered letters: a PIN by SMS, ordered on Open, typed to sign in."""

    def setUp(self) -> None:
        super().setUp()
        self.settings = make_settings(
            self.data_dir, sms={"order": ["smtp"], "smtp": {"address": "{to}@sms.example"}}
        )
        self.sms = SmsStore(self.db, os.urandom(32))
        self.woken = 0
        self.portal = Portal(
            self.settings,
            self.store,
            self.portal_store,
            self.clock,
            csrf_key=os.urandom(32),
            on_commit=self.committed,
            sms=self.sms,
            on_sms=self.wake,
        )
        self.resource = self.portal.app.resource()

    def wake(self) -> None:
        self.woken += 1

    async def outbox(self) -> list[tuple[str, str]]:
        """The (number, text) of every SMS waiting in the outbox."""
        rows = await self.sms.outbox()
        return [
            (item.number, self.sms.sealer.open(item.message_id, item.number, item.sealed))
            for item, _, _ in rows
        ]

    async def sent_pin(self) -> str:
        texts = await self.outbox()
        self.assertTrue(texts, "no SMS in the outbox")
        match = re.search(r"\b(\d{6})\b", texts[-1][1])
        assert match is not None, texts
        return match.group(1)

    async def opened(self, letter: Letter, browser: Browser | None = None) -> tuple[Browser, Reply]:
        browser = browser or self.browser()
        reply = await self.open(browser, letter)
        return browser, reply

    async def notices(self) -> list[str]:
        """The plain text of every notice to the sender in the queue."""
        texts = []
        for row in await self.rows("notice"):
            self.assertEqual(row.recipients, (ALICE,))
            content = await self.store.read_all(row.message_id)
            body = parse(content).get_body(("plain",))
            assert body is not None
            texts.append(" ".join(body.get_content().split()))
        return texts

    async def test_open_sends_a_pin_and_the_pin_opens(self) -> None:
        """Open sends a PIN to the masked number; no content or session until it is typed."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        self.assertEqual(reply.code, 200, reply.text)
        self.assertIn("+49 15 *** *** *00", reply.text)
        self.assertNotIn(PHONE, reply.text)
        self.assertIn(f'action="{letter.link}/pin/verify"', reply.text)
        self.assertNotIn(SESSION, reply.set_cookies())
        self.assert_no_content(reply)
        self.assertEqual(self.woken, 1)
        [(number, text)] = await self.outbox()
        self.assertEqual(number, PHONE)
        self.assertRegex(text, r"^Secure mail: your PIN is \d{6}\. It works for 10 minutes\.")
        pin = await self.sent_pin()
        self.assertNotIn(pin, reply.text)
        self.assertEqual(await self.browser_hash(letter), None)  # no binding: a PIN every time
        self.assertEqual(await self.count("sessions"), 0)
        read = await browser.get("/read")
        self.assertEqual(read.code, 401)

        signed = await browser.post(f"{letter.link}/pin/verify", {"csrf": reply.csrf(), "pin": pin})
        self.assertEqual(signed.code, 303, signed.text)
        self.assertEqual(signed.header("Location"), "/read")
        read = await browser.get("/read")
        self.assertEqual(read.code, 200)
        self.assertIn(b"SecretBodyText", read.body)
        again = await self.browser().post(
            f"{letter.link}/pin/verify", {"csrf": reply.csrf(), "pin": pin}
        )
        self.assertEqual(again.code, 200)
        self.assertIn("no longer works", again.text)
        kinds = await self.event_kinds(letter)
        self.assertIn("PIN ordered", kinds)
        self.assertIn("PIN accepted", kinds)

    async def test_pin_text_in_the_readers_language(self) -> None:
        """The PIN page and the PIN SMS are in the reader's language (the language cookie)."""
        letter = await self.letter(level="registered")
        browser = self.browser(**{"__Host-secmail-lang": "fi"})
        reply = await self.open(browser, letter)
        self.assertIn("Syötä PIN-koodi", reply.text)
        [(_, text)] = await self.outbox()
        self.assertRegex(
            text, r"^Suojattu posti: PIN-koodisi on \d{6}\. Se on voimassa 10 minuuttia"
        )

    async def test_wrong_pins(self) -> None:
        """A wrong PIN says so; after 5 tries the PIN is dead and a new one must be ordered."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        csrf = reply.csrf()
        pin = await self.sent_pin()
        wrong = f"{(int(pin) + 1) % 10**6:06d}"
        for attempt in range(4):
            answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": wrong})
            self.assertEqual(answer.code, 200)
            self.assertIn("not right", answer.text, attempt)
        answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": wrong})
        self.assertIn("no longer works", answer.text)
        answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": pin})
        self.assertIn("no longer works", answer.text)
        self.assertNotIn(SESSION, browser.cookies)
        for bad in ("12345", "abcdef", "1234567", "", "１２３４５６", "١٢٣٤٥٦"):
            answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": bad})
            self.assertIn("The PIN has 6 digits.", answer.text, bad)
        # Ordering again within a minute sends nothing new.
        answer = await browser.post(f"{letter.link}/pin", {"csrf": csrf})
        self.assertIn("less than a minute ago", answer.text)
        self.assertEqual(len(await self.outbox()), 1)
        self.clock.advance(61)
        answer = await browser.post(f"{letter.link}/pin", {"csrf": csrf})
        self.assertIn("A new PIN is on its way.", answer.text)
        fresh = await self.sent_pin()
        self.assertEqual(len(await self.outbox()), 1, "the unsent older PIN is replaced")
        signed = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": fresh})
        self.assertEqual(signed.code, 303)

    async def test_late_sms_with_an_older_pin(self) -> None:
        """An older PIN typed after a newer one was ordered is told apart, not counted."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        older = await self.sent_pin()
        self.clock.advance(61)
        await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        newer = await self.sent_pin()
        self.assertNotEqual(older, newer)
        answer = await browser.post(
            f"{letter.link}/pin/verify", {"csrf": reply.csrf(), "pin": older}
        )
        self.assertIn("That PIN was replaced by a newer one.", answer.text)
        failures = await self.db.run(
            lambda txn: txn.execute(
                "SELECT pin_failures FROM envelopes WHERE id = ?", (letter.envelope_id,)
            ).fetchone()[0]
        )
        self.assertEqual(failures, 0)
        signed = await browser.post(
            f"{letter.link}/pin/verify", {"csrf": reply.csrf(), "pin": newer}
        )
        self.assertEqual(signed.code, 303)

    async def test_pin_expires_after_ten_minutes(self) -> None:
        """A PIN typed more than 10 minutes after it was sent no longer works."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        pin = await self.sent_pin()
        self.clock.advance(10 * MINUTE + 1)
        answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": reply.csrf(), "pin": pin})
        self.assertEqual(answer.code, 200)
        self.assertIn("no longer works", answer.text)

    async def test_five_pins_an_hour(self) -> None:
        """At most 5 PINs an hour for one letter; the sixth is refused until the hour has passed."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        for _ in range(4):
            self.clock.advance(61)
            answer = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
            self.assertIn("A new PIN is on its way.", answer.text)
        self.clock.advance(61)
        answer = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertIn("Too many PINs were ordered in the last hour.", answer.text)
        self.clock.advance(HOUR)
        answer = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertIn("A new PIN is on its way.", answer.text)

    async def test_ten_pins_a_day(self) -> None:
        """At most 10 PINs a day for one letter (not 120); then a clear page (429)."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        for _ in range(9):
            self.clock.advance(HOUR // 2)
            answer = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
            self.assertIn("A new PIN is on its way.", answer.text)
        self.clock.advance(HOUR // 2)
        answer = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertEqual(answer.code, 429)
        self.assertIn("10 PINs were ordered for this message in the last 24 hours", answer.text)
        self.assertIn('name="pin"', answer.text)  # the newest PIN can still be typed

    async def test_twenty_wrong_pins_lock_and_tell_the_sender(self) -> None:
        """The 20th wrong PIN locks the letter for good and tells the sender, without content."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        csrf = reply.csrf()
        answer = reply
        for failure in range(20):
            if failure and failure % 5 == 0:
                self.clock.advance(61)
                await browser.post(f"{letter.link}/pin", {"csrf": csrf})
            pin = await self.sent_pin()
            wrong = f"{(int(pin) + 1) % 10**6:06d}"
            answer = await browser.post(f"{letter.link}/pin/verify", {"csrf": csrf, "pin": wrong})
            if failure < 19:
                self.assertEqual(answer.code, 200, failure)
                self.assertEqual(await self.notices(), [], failure)
        self.assertEqual(answer.code, 403)
        self.assertIn("This message is locked", answer.text)
        [notice] = await self.notices()
        self.assertIn(f"Your registered letter to {BOB}", notice)
        self.assertIn("locked: a wrong PIN was typed 20 times", notice)
        self.assertNotIn("SecretBodyText", notice)
        self.assertEqual(await self.outbox(), [])
        # Locked for good: the right PIN, a new order and a new open all show the lock.
        self.clock.advance(HOUR)
        for path in (f"{letter.link}/pin", f"{letter.link}/pin/verify", letter.link):
            answer = await browser.post(path, {"csrf": csrf, "pin": "000000"})
            self.assertEqual(answer.code, 403, path)
            self.assertIn("This message is locked", answer.text)
        self.assertEqual(await self.outbox(), [])
        self.assertEqual(len(await self.notices()), 1)
        self.assertIn("locked", await self.event_kinds(letter))

    async def test_wrong_number_asks_first(self) -> None:
        """ "Wrong number?" asks before the sender is told (a form, no script): "No" goes back
        to the PIN page without telling anyone or sending a PIN; "Yes" tells the sender."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        sent = len(await self.outbox())
        asked = await browser.post(f"{letter.link}/wrong-number", {"csrf": reply.csrf()})
        self.assertEqual(asked.code, 200)
        self.assertIn("Is this number not yours?", asked.text)
        self.assertIn("+49 15 *** *** *00", asked.text)
        self.assertNotIn(PHONE, asked.text)
        self.assertIn(f'<form method="post" action="{letter.link}/wrong-number"', asked.text)
        self.assertIn('name="answer" value="yes"', asked.text)
        self.assertIn('name="answer" value="no"', asked.text)
        self.assertNotIn("<script", asked.text)
        for answer in ("", "maybe", "YES"):  # only "yes" tells
            form = {"csrf": asked.csrf(), "answer": answer}
            again = await browser.post(f"{letter.link}/wrong-number", form)
            self.assertIn("Is this number not yours?", again.text, answer)
        back = await browser.post(
            f"{letter.link}/wrong-number", {"csrf": asked.csrf(), "answer": "no"}
        )
        self.assertEqual(back.code, 200)
        self.assertIn("Type the PIN", back.text)
        self.assertIn(f'action="{letter.link}/wrong-number"', back.text)
        self.assertEqual(await self.notices(), [])
        self.assertEqual(len(await self.outbox()), sent)  # going back sends no new PIN
        told = await browser.post(
            f"{letter.link}/wrong-number", {"csrf": asked.csrf(), "answer": "yes"}
        )
        self.assertIn(f"We have told the sender ({ALICE})", told.text)
        self.assertEqual(len(await self.notices()), 1)

    async def test_wrong_number_tells_the_sender_once(self) -> None:
        """A wrong-number report tells the sender once (number masked), then is not offered."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        self.assertIn(f'action="{letter.link}/wrong-number"', reply.text)
        told = await browser.post(
            f"{letter.link}/wrong-number", {"csrf": reply.csrf(), "answer": "yes"}
        )
        self.assertEqual(told.code, 200)
        self.assertIn(f"We have told the sender ({ALICE})", told.text)
        [notice] = await self.notices()
        self.assertIn("says that the phone number its PIN goes to (+49 15 *** *** *00)", notice)
        self.assertNotIn(PHONE, notice)
        for form in ({"csrf": reply.csrf()}, {"csrf": reply.csrf(), "answer": "yes"}):
            again = await browser.post(f"{letter.link}/wrong-number", form)
            self.assertIn("The sender has been told", again.text)  # not asked again
        self.assertEqual(len(await self.notices()), 1)
        self.clock.advance(61)
        page = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertIn("You have told the sender that this number is not yours.", page.text)
        self.assertNotIn(f'action="{letter.link}/wrong-number"', page.text)

    async def test_phone_directory_makes_letters_registered(self) -> None:
        """A secure letter to an address in the directory needs a PIN sent to that number."""
        letter = await self.letter()  # a secure letter, sent before the address was added
        await self.sms.set_phone(BOB.upper(), "+358401234567", self.now())
        browser = self.browser()
        landing = await browser.get(letter.link)
        self.assertIn("Registered letter", landing.text)
        reply = await browser.post(letter.link, {"csrf": landing.csrf()})
        self.assertEqual(reply.code, 200)
        self.assertIn("+358 40 *** **67", reply.text)
        self.assertNotIn(SESSION, reply.set_cookies())
        self.assertIsNone(await self.browser_hash(letter))  # not bound: a PIN every time
        self.assertEqual([n for n, _ in await self.outbox()], ["+358401234567"])
        for path in ("code", "verify"):  # the letter's e-mail codes no longer open it
            other = await browser.post(f"{letter.link}/{path}", {"csrf": landing.csrf()})
            self.assertEqual(other.code, 403, path)
        signed = await browser.post(
            f"{letter.link}/pin/verify", {"csrf": landing.csrf(), "pin": await self.sent_pin()}
        )
        self.assertEqual(signed.code, 303)
        told = await browser.post(
            f"{letter.link}/wrong-number", {"csrf": landing.csrf(), "answer": "yes"}
        )
        self.assertEqual(told.code, 200)
        [notice] = await self.notices()
        self.assertIn("correct the number in the phone directory", notice)
        # Removed from the directory: a secure letter again.
        await self.sms.remove_phone(BOB)
        landing = await self.browser().get(letter.link)
        self.assertIn("Secure letter", landing.text)

    async def test_sms_given_up_is_shown(self) -> None:
        """When every backend refused the SMS for good, the page says so instead of waiting."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        [item] = await self.sms.claim("node", self.now(), 60, 10)
        await self.sms.drop(item, "sms not sent", "http: gateway refused the message", self.now())
        page = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertIn("We could not send the text message with your PIN.", page.text)
        self.assertNotIn("less than a minute ago", page.text)
        self.clock.advance(61)
        page = await browser.post(f"{letter.link}/pin", {"csrf": reply.csrf()})
        self.assertIn("A new PIN is on its way.", page.text)
        self.assertNotIn("We could not send", page.text)

    async def test_letter_codes_do_not_open_registered_letters(self) -> None:
        """E-mail codes do not open a registered letter, and PIN routes refuse a plain letter."""
        letter = await self.letter(level="registered")
        browser = self.browser()
        landing = await browser.get(letter.link)
        self.assertIn(b"Registered letter", landing.body)
        for path in ("code", "verify"):
            other = await browser.post(
                f"{letter.link}/{path}", {"csrf": landing.csrf(), "code": "123456"}
            )
            self.assertEqual(other.code, 403, path)
        self.assertEqual(await self.rows("code"), [])
        plain = await self.letter()
        plain_csrf = (await browser.get(plain.link)).csrf()  # a valid form: refused for the level
        for path in ("pin", "pin/verify", "wrong-number"):
            answer = await browser.post(
                f"{plain.link}/{path}", {"csrf": plain_csrf, "pin": "123456"}
            )
            self.assertEqual(answer.code, 403, path)
        self.assertEqual(await self.outbox(), [])
        self.assertEqual(await self.notices(), [])

    async def test_forged_forms_are_refused(self) -> None:
        """PIN, verify and wrong-number forms without the right CSRF token are refused (403)."""
        letter = await self.letter(level="registered")
        browser, reply = await self.opened(letter)
        pin = await self.sent_pin()
        for path in ("pin", "pin/verify", "wrong-number"):
            answer = await browser.post(f"{letter.link}/{path}", {"csrf": "forged", "pin": pin})
            self.assertEqual(answer.code, 403, path)
        self.assertEqual(len(await self.outbox()), 1)
        self.assertEqual(await self.notices(), [])
        self.assertNotIn(SESSION, browser.cookies)


class RegisteredWithoutSmsTests(PortalFixture):
    async def test_no_sms_backend(self) -> None:
        """Without [sms] the reader is told that no PIN can be sent, and sees no content."""
        letter = await self.letter(level="registered")
        browser = self.browser()
        reply = await self.open(browser, letter)
        self.assertEqual(reply.code, 503)
        self.assertIn(b"cannot send text messages", reply.body)
        self.assertNotIn(SESSION, reply.set_cookies())
        self.assert_no_content(reply)


class HeaderTests(PortalFixture):
    async def every_route(self) -> dict[str, Reply]:
        letter = await self.letter()
        browser = self.browser()
        replies: dict[str, Reply] = {}
        replies["landing"] = landing = await browser.get(letter.link)
        replies["open"] = await browser.post(letter.link, {"csrf": landing.csrf()})
        replies["read"] = page = await browser.get("/read")
        replies["read/html"] = await browser.get("/read/html")
        replies["cid"] = await browser.get("/read/cid/logo@corp.example")
        replies["cid 404"] = await browser.get("/read/cid/nothing@corp.example")
        replies["attachment"] = await browser.get("/read/attachment/0")
        replies["attachment 404"] = await browser.get("/read/attachment/7")
        replies["eml"] = await browser.get("/read/eml")
        replies["code page"] = await self.open(self.browser(), letter)
        replies["403"] = await browser.post(letter.link, {"csrf": "wrong"})
        replies["logout"] = await browser.post("/logout", {"csrf": page.csrf()})
        replies["401"] = await browser.get("/read")
        replies["css"] = await browser.get("/static/portal.css")
        replies["404 link"] = await browser.get("/m/" + "x" * 40)
        replies["404 path"] = await browser.get("/no/such/page")
        replies["405"] = await browser.get("/logout")
        return replies

    async def test_status_of_every_route(self) -> None:
        """Each route answers with the status it should (so the header checks see real pages)."""
        codes = {name: reply.code for name, reply in (await self.every_route()).items()}
        self.assertEqual(
            codes,
            {
                "landing": 200,
                "open": 303,
                "read": 200,
                "read/html": 200,
                "cid": 200,
                "cid 404": 404,
                "attachment": 200,
                "attachment 404": 404,
                "eml": 200,
                "code page": 200,
                "403": 403,
                "logout": 200,
                "401": 401,
                "css": 200,
                "404 link": 404,
                "404 path": 404,
                "405": 405,
            },
        )

    async def test_security_headers_everywhere(self) -> None:
        """HSTS, nosniff, no-referrer and a CSP that frames nothing and runs no script."""
        for name, reply in (await self.every_route()).items():
            self.assertEqual(
                reply.header("Strict-Transport-Security"),
                "max-age=31536000; includeSubDomains",
                name,
            )
            self.assertEqual(reply.header("X-Content-Type-Options"), "nosniff", name)
            self.assertEqual(reply.header("Referrer-Policy"), "no-referrer", name)
            csp = directives(reply)
            raw = reply.header("Content-Security-Policy") or ""
            framing = ["'self'"] if name == "read/html" else ["'none'"]
            self.assertEqual(csp.get("frame-ancestors"), framing, name)
            self.assertNotIn("unsafe-inline", raw, name)
            self.assertNotIn("unsafe-eval", raw, name)
            self.assertEqual(csp.get("script-src", csp.get("default-src")), ["'none'"], name)
            if name != "css":
                self.assertEqual(reply.header("Cache-Control"), "no-store", name)

    async def test_site_sends_no_banner(self) -> None:
        """On the real site every response, also Twisted's own, has HSTS and no Server banner."""
        site = make_site(self.portal)
        site.reactor = Clock()  # the channel's timeouts, never fired here
        letter = await self.letter()

        def broken(request: object) -> object:
            raise RuntimeError("render failed")

        answers = {}
        for name, head in [
            ("landing", f"GET {letter.link} HTTP/1.1"),
            ("404", "GET /no/such/page HTTP/1.1"),
            ("compose 404", "GET /compose/nobody@evil.example HTTP/1.1"),
            ("options", "OPTIONS * HTTP/1.1"),
            ("twisted 500", "GET /static/portal.css HTTP/1.1"),
        ]:
            if name == "twisted 500":
                self.patch(site, "getResourceFor", broken)
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5555))
            channel.makeConnection(transport)
            channel.dataReceived(
                f"{head}\r\nHost: portal.gw.example\r\nConnection: close\r\n\r\n".encode()
            )
            for _ in range(2000):
                if transport.disconnecting:
                    break
                await deferLater(reactor, 0.001, lambda: None)
            channel.connectionLost(Failure(ConnectionError("test over")))
            answers[name] = transport.value().split(b"\r\n\r\n", 1)[0].decode("latin-1")
        self.flushLoggedErrors(RuntimeError)
        for name, head in answers.items():
            lines = head.lower().split("\r\n")
            self.assertTrue(lines[0].startswith("http/1.1 "), (name, head))
            self.assertFalse([n for n in lines if n.startswith("server:")], (name, head))
            self.assertNotIn("twisted", head.lower(), name)
            self.assertIn(
                "strict-transport-security: max-age=31536000; includesubdomains", lines, name
            )
            self.assertIn("x-content-type-options: nosniff", lines, name)
            self.assertTrue([n for n in lines if n.startswith("content-security-policy:")], name)
        self.assertTrue(answers["twisted 500"].startswith("HTTP/1.1 500"), answers)

    async def test_unknown_path_is_a_page(self) -> None:
        """An unknown path (or method) is a portal page with its 404 (405), not a logged 500."""
        reply = await self.browser().get("/no/such/page")
        self.assertEqual(reply.code, 404)
        self.assertIn(b"Page not found", reply.body)
        wrong_method = await self.browser().get("/logout")
        self.assertEqual(wrong_method.code, 405)
        self.assertEqual(wrong_method.header("Allow"), "POST")
        self.assertEqual(self.flushLoggedErrors(), [])


class ExpiryTests(PortalFixture):
    async def test_deleted_message(self) -> None:
        """A letter deleted by retention: its link is 404 with advice, its session shows nothing."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        self.assertEqual(await self.store.delete_expired(self.now() + 1, self.now()), 1)
        for reply in (
            await browser.get(letter.link),
            await browser.post(letter.link, {"csrf": "x"}),
        ):
            self.assertEqual(reply.code, 404)
            self.assertIn(b"Please contact the sender", reply.body)
            self.assert_no_content(reply)
        for path in ("/read", "/read/html", "/read/attachment/0", "/read/eml"):
            reply = await browser.get(path)
            self.assertIn(reply.code, (401, 410), path)
            self.assert_no_content(reply)
            self.assertNotIn(BINARY[:64], reply.body)
        cid = await browser.get("/read/cid/logo@corp.example")
        self.assertNotEqual(cid.code, 200)
        self.assertNotIn(PNG, cid.body)


class InjectionTests(PortalFixture):
    async def test_form_fields_with_line_breaks(self) -> None:
        """CR/LF in the code or CSRF field never becomes a header of the response."""
        letter = await self.letter()
        reader = await self.signed_in(letter)
        browser = self.browser()
        csrf = (await browser.get(letter.link)).csrf()
        injected = "\r\nX-Injected: 1\r\nSet-Cookie: evil=1\r\n"
        attempts = [
            ("/verify", {"csrf": csrf, "code": "123456" + injected}),
            ("/verify", {"csrf": csrf, "code": injected + "123456"}),
            ("/verify", {"csrf": csrf + injected, "code": "123456"}),
            ("/code", {"csrf": csrf + injected}),
            ("", {"csrf": csrf + injected}),
        ]
        for suffix, data in attempts:
            reply = await browser.post(letter.link + suffix, data)
            self.assertIn(reply.code, (200, 403))
            self.assertIsNone(reply.headers.getRawHeaders(b"X-Injected"))
            for _, values in reply.headers.getAllRawHeaders():
                for value in values:
                    self.assertNotIn(b"evil", value)
                    self.assertNotIn(b"\r", value)
                    self.assertNotIn(b"\n", value)
        logout = await reader.post("/logout", {"csrf": injected})
        self.assertEqual(logout.code, 403)
        self.assertIsNone(logout.headers.getRawHeaders(b"X-Injected"))

    async def test_filename_with_line_breaks(self) -> None:
        """A file name with CR/LF, quotes and a path stays inside one Content-Disposition."""
        browser = await self.signed_in(await self.letter())
        reply = await browser.get("/read/attachment/0")
        disposition = reply.header("Content-Disposition")  # exactly one
        self.assertEqual(disposition, SAFE_DISPOSITION)
        assert disposition is not None
        self.assertNotIn("/", disposition)
        self.assertNotIn("\r", disposition)
        self.assertIsNone(reply.headers.getRawHeaders(b"X"))


def nested_messages(depth: int) -> bytes:
    """A letter whose text sits inside C{depth} attached messages inside each other."""
    raw = b"Content-Type: text/plain\r\n\r\nDeepSecretText\r\n"
    for _ in range(depth):
        raw = b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + raw
    return mime(*HEAD) + raw


class HardeningTests(PortalFixture):
    """A hostile or damaged letter costs the gateway little and tells the reader what it is."""

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        self.patch(access_module, "log", Logger(observer=self.logged.append))

    def log_lines(self) -> list[str]:
        return [formatEvent(event) for event in self.logged]

    async def test_rendering_runs_on_the_injected_thread_runner(self) -> None:
        """Parsing and rendering for /read, /read/html, cid pictures and downloads go
        through the portal's run_in_thread, never on the reactor thread."""
        ran: list[str] = []

        def runner(work: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
            ran.append(getattr(work, "__name__", repr(work)))
            return maybeDeferred(work, *args, **kwargs)

        self.portal.run_in_thread = runner
        browser = await self.signed_in(await self.letter())
        for path in ("/read", "/read/html", "/read/cid/logo@corp.example", "/read/attachment/0"):
            ran.clear()
            reply = await browser.get(path)
            self.assertEqual(reply.code, 200, path)
            self.assertTrue(ran, f"{path} rendered on the reactor thread")

    async def test_deeply_nested_letter_gets_a_clear_page(self) -> None:
        """A letter nested beyond the limit (a RecursionError and a 500 before) answers a
        page that says so and offers the .eml, with one log line and no traceback."""
        raw = nested_messages(600)
        letter = await self.letter(raw)
        browser = await self.signed_in(letter)
        self.logged.clear()
        for path in ("/read", "/read/attachment/0", "/read/html"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 422, path)
            self.assertIn("too complex", reply.text)
            self.assertIn('href="/read/eml"', reply.text)
            self.assertNotIn("DeepSecretText", reply.text)
        self.assertEqual(self.flushLoggedErrors(), [])
        lines = self.log_lines()
        self.assertEqual(len(lines), 3, lines)  # one per request
        for line in lines:
            self.assertIn(letter.message_id, line)
            self.assertIn("nested more than 20 deep", line)
            self.assertNotIn("Traceback", line)
        self.assertNotIn("log_failure", self.logged[0])
        self.assertNotIn("viewed", await self.event_kinds(letter))
        eml = await browser.get("/read/eml")
        self.assertEqual((eml.code, eml.body), (200, raw))

    async def test_too_complex_page_is_translated(self) -> None:
        """The too-complex page speaks the reader's language."""
        letter = await self.letter(nested_messages(600))
        browser = await self.signed_in(letter)
        browser.cookies["__Host-secmail-lang"] = "fi"
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 422)
        self.assertIn("liian monimutkainen", reply.text)

    async def tamper(self, letter: Letter) -> None:
        """Flip one bit of the letter's stored ciphertext, as an attacker with the disk could."""

        def flip(txn: Any) -> None:
            (data,) = txn.execute(
                "SELECT data FROM message_chunks WHERE message_id = ? AND seq = 0",
                (letter.message_id,),
            ).fetchone()
            data = bytearray(bytes(data))
            data[len(data) // 2] ^= 1
            txn.execute(
                "UPDATE message_chunks SET data = ? WHERE message_id = ? AND seq = 0",
                (bytes(data), letter.message_id),
            )

        await self.db.run(flip)

    async def test_tampered_letter_is_shown_as_damaged(self) -> None:
        """Ciphertext that fails authentication gives a "damaged" page (not "temporary
        problem"), a "damaged" event on the message once, and a log line naming it."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        await self.tamper(letter)
        self.logged.clear()
        for path in ("/read", "/read/eml", "/read/attachment/0"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 500, path)
            self.assertIn("damaged", reply.text)
            self.assertNotIn("Temporary problem", reply.text)
            self.assert_no_content(reply)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((await self.event_kinds(letter)).count("damaged"), 1)
        lines = self.log_lines()
        self.assertEqual(len(lines), 3, lines)
        for line in lines:
            self.assertIn(letter.message_id, line)
            self.assertNotIn("Traceback", line)
        self.assertNotIn("log_failure", self.logged[0])


class RouteGuardTests(PortalFixture):
    """The routes' preambles (web.access's decorators) answer what is missing, on every route."""

    async def test_link_routes_need_the_letter_and_its_form(self) -> None:
        """Every /m/<token> route answers 404 for an unknown link, and every POST there 403
        for a form without the link page's CSRF token; nothing is bound or sent."""
        letter = await self.letter()
        browser = self.browser()
        unknown = "/m/" + "A" * 43
        self.assertEqual((await browser.get(unknown)).code, 404)
        for suffix in ("", "/code", "/verify", "/pin", "/pin/verify", "/wrong-number"):
            self.assertEqual((await browser.post(unknown + suffix, {"csrf": "0"})).code, 404)
            refused = await browser.post(letter.link + suffix, {"csrf": "0" * 64, "code": "1"})
            self.assertEqual(refused.code, 403, suffix)
        self.assertIsNone(await self.browser_hash(letter))
        self.assertEqual(await self.count("sessions"), 0)

    async def test_reading_routes_need_a_session(self) -> None:
        """Every route after sign-in answers 401 ("open the link again") without a session."""
        browser = self.browser()
        for method, path in (
            ("GET", "/read"),
            ("GET", "/read/html"),
            ("GET", "/read/cid/logo@corp.example"),
            ("GET", "/read/attachment/0"),
            ("GET", "/read/eml"),
            ("POST", "/read/reply"),
            ("GET", "/read/sent"),
        ):
            reply = await browser.request(method, path)
            self.assertEqual(reply.code, 401, path)
            self.assertIn(b"Please open the link again", reply.body)
