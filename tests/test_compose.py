"""D-Compose: outsiders prove their address by code and write to the organisation, and only there.

The web tests drive the real portal (C{Portal(..., compose=Compose(...).app.resource())})
through C{treq.testing.StubTreq} against a real SQLite store; the clock is a C{task.Clock}.
The store tests run on SQLite and, when SECMAIL_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from secmail.letters import routed_mail
from secmail.store.compose import (
    CODE_LIFETIME,
    CODE_TRIES,
    CODE_WINDOW,
    CODES_PER_WINDOW,
    LOCK_AFTER,
    LOCK_TIME,
    SESSION_IDLE,
    SESSION_MAX,
    CodeLimits,
    CodeRefusal,
    CodeState,
    ComposeStore,
    trail_id,
)
from secmail.store.database import Database
from secmail.store.messages import QueueItem
from secmail.store.portal import PortalStore
from secmail.store.rows import short_id
from secmail.web.compose import Compose
from secmail.web.compose_mail import MAX_FILENAME_CHARS, client_key, parse_form, upload_name
from secmail.web.portal import Portal
from tests.dbs import on_each_engine, open_store
from tests.fixtures.intake import IntakeFixture
from tests.fixtures.logs import CapturedLog
from tests.fixtures.mails import BINARY, PNG, parse
from tests.fixtures.portal import Browser, Reply, directives
from tests.fixtures.settings import INTERNAL, RELAY, make_settings

T0 = 1_700_000_000
MINUTE = 60
HOUR = 3600
SALES = "sales@corp.example"
HELP = "help@corp.example"
OUTSIDER = "olga@outside.example"
ELSEWHERE = "bob@partner.example"
SESSION = "__Host-secmail-compose"
FORM = "__Host-secmail-compose-form"
INJECTED = "\r\nBcc: bob@partner.example\r\nX-Injected: 1"


def multipart(
    fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, str, bytes]] = ()
) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it: (name, filename, type, bytes) files."""
    boundary = "----secmail" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode("utf-8")
        + b"\r\n"
        for name, value in fields
    ]
    for name, filename, content_type, data in files:
        disposition = f'form-data; name="{name}"; filename="{filename}"'
        if filename.startswith("*="):  # an RFC 2231 name, written as given
            disposition = f'form-data; name="{name}"; filename{filename}'
        parts.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class ComposeBrowser(Browser):
    """
    The portal tests' browser with the compose forms (repeated fields, files). Like a
    browser, C{send} posts the last write page's form id unless the test gives one.
    """

    form_id: str | None = None

    def remember_form(self, page: Reply) -> Reply:
        """Keep the write page's form id, as the browser's form would."""
        self.form_id = page.form_id()
        assert self.form_id is not None, page.text
        return page

    async def post_pairs(self, path: str, pairs: Sequence[tuple[str, str]]) -> Reply:
        return await self.post_body(
            path, urlencode(pairs).encode(), "application/x-www-form-urlencoded"
        )

    async def send(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[tuple[str, str, str, bytes]] = (),
    ) -> Reply:
        if self.form_id is not None and all(name != "form" for name, _ in fields):
            fields = [*fields, ("form", self.form_id)]
        body, content_type = multipart(fields, files)
        return await self.post_body("/compose/send", body, content_type)


class ComposeFixture(IntakeFixture, TestCase):
    """The intake's store, clock and settings; the portal with D-Compose mounted at /compose."""

    directory: tuple[str, ...] = (SALES, HELP)
    max_upload_size = 10_240_000

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.settings = make_settings(
            self.data_dir,
            portal={
                "compose_directory": list(self.directory),
                "max_upload_size": self.max_upload_size,
            },
        )
        self.compose_store = ComposeStore(self.db, os.urandom(32))
        self.resource = self.portal_with(self.settings)

    def portal_with(self, settings: Any) -> Any:
        compose = Compose(
            settings,
            self.store,
            self.compose_store,
            self.clock,
            csrf_key=os.urandom(32),
            on_commit=self.committed,
        )
        portal = Portal(
            settings,
            self.store,
            PortalStore(self.db, os.urandom(32)),
            self.clock,
            csrf_key=os.urandom(32),
            on_commit=self.committed,
            compose=compose.app.resource(),
        )
        return portal.app.resource()

    def browser(self, **cookies: str) -> ComposeBrowser:
        return ComposeBrowser(self.resource, cookies)

    async def ask_code(
        self, browser: ComposeBrowser, sender: str = OUTSIDER, to: str = SALES
    ) -> Reply:
        """What a person does: open the direct link, type their address, ask for a code."""
        page = await browser.get(f"/compose/{to}")
        self.assertEqual(page.code, 200, page.text)
        return await browser.post(
            "/compose/start", {"csrf": page.csrf(), "to": to, "sender": sender}
        )

    async def try_code(
        self, browser: ComposeBrowser, code: str, sender: str = OUTSIDER, to: str = SALES
    ) -> Reply:
        csrf = (await browser.get(f"/compose/{to}")).csrf()
        return await browser.post(
            "/compose/verify", {"csrf": csrf, "to": to, "sender": sender, "code": code}
        )

    async def mailed_code(self) -> str:
        """The code in the newest code mail in the queue."""
        rows = await self.rows("code")
        self.assertTrue(rows)
        text = parse(await self.store.read_all(rows[-1].message_id)).get_body(("plain",))
        assert text is not None
        match = re.search(r"\b(\d{6})\b", text.get_content())
        assert match is not None
        return match.group(1)

    async def signed_in(self, sender: str = OUTSIDER, to: str = SALES) -> ComposeBrowser:
        browser = self.browser()
        self.assertEqual((await self.ask_code(browser, sender, to)).code, 200)
        reply = await self.try_code(browser, await self.mailed_code(), sender, to)
        self.assertEqual(reply.code, 303, reply.text)
        self.assertIn(SESSION, browser.cookies)
        return browser

    async def write_csrf(self, browser: ComposeBrowser, to: str = SALES) -> str:
        page = await browser.get(f"/compose/write?to={to}")
        self.assertEqual(page.code, 200, page.text)
        return browser.remember_form(page).csrf()

    async def composed(self) -> list[QueueItem]:
        return await self.rows("compose")

    async def trail(self, address: str = OUTSIDER) -> list[str]:
        return [kind for _, kind, _, _ in await self.store.events(trail_id(address))]

    def assert_no_injection(self, reply: Reply) -> None:
        self.assertIsNone(reply.headers.getRawHeaders(b"X-Injected"))
        self.assertIsNone(reply.headers.getRawHeaders(b"Bcc"))
        for _, values in reply.headers.getAllRawHeaders():
            for value in values:
                self.assertNotIn(b"\r", value)
                self.assertNotIn(b"\n", value)


class MountTests(ComposeFixture):
    async def test_directory_lists_addresses(self) -> None:
        """GET /compose offers the directory's addresses and a sender field; stores nothing."""
        reply = await self.browser().get("/compose")
        self.assertEqual(reply.code, 200)
        slash = await self.browser().get("/compose/")
        self.assertEqual((slash.code, slash.header("Location")), (301, "/compose"))
        for address in (SALES, HELP):
            self.assertIn(f'<option value="{address}">{address}</option>', reply.text)
        self.assertIn('<form method="post" action="/compose/start"', reply.text)
        self.assertIn('name="sender"', reply.text)
        self.assertIn("Your e-mail address", reply.text)
        self.assertEqual(await self.count("compose_codes"), 0)
        self.assertEqual(await self.count("compose_sessions"), 0)

    async def test_form_cookie(self) -> None:
        """The pre-sign-in form cookie is a __Host- cookie: Secure, HttpOnly, SameSite=Lax."""
        reply = await self.browser().get("/compose")
        value, attributes = reply.set_cookies()[FORM]
        self.assertRegex(value, r"^[A-Za-z0-9_-]{16,200}$")
        self.assertIn("secure", attributes)
        self.assertIn("httponly", attributes)
        self.assertEqual(attributes.get("samesite", "").lower(), "lax")
        self.assertEqual(attributes.get("path"), "/")
        self.assertNotIn("domain", attributes)
        self.assertNotIn(value, reply.text)  # the page has only its HMAC

    async def test_branch_paths(self) -> None:
        """Klein's branch hands the compose app the path after /compose, for every route."""
        browser = self.browser()
        direct = await browser.get(f"/compose/{SALES}")
        self.assertEqual(direct.code, 200)
        self.assertIn(f'<input type="hidden" name="to" value="{SALES}">', direct.text)
        encoded = await browser.get("/compose/sales%40corp.example")
        self.assertEqual(encoded.code, 200)
        self.assertIn(f'value="{SALES}"', encoded.text)
        self.assertEqual((await browser.get("/compose/write?to=" + SALES)).code, 401)
        self.assertEqual((await browser.post("/compose/send", {})).code, 401)
        self.assertEqual((await browser.get("/compose/start")).code, 404)
        self.assertEqual((await browser.post(f"/compose/{SALES}", {})).code, 405)
        self.assertEqual((await browser.get("/compose/a/b/c")).code, 404)

    async def test_not_mounted(self) -> None:
        """A portal without D-Compose answers /compose with its 404 page."""
        portal = Portal(
            self.settings,
            self.store,
            PortalStore(self.db, os.urandom(32)),
            self.clock,
            csrf_key=os.urandom(32),
        )
        reply = await Browser(portal.app.resource()).get(f"/compose/{SALES}")
        self.assertEqual(reply.code, 404)


class EmptyDirectoryTests(ComposeFixture):
    directory = ()

    async def test_empty_directory_asks_for_link(self) -> None:
        """With no directory, /compose explains the direct link; a direct link still works."""
        reply = await self.browser().get("/compose")
        self.assertEqual(reply.code, 200)
        self.assertIn("use the link", reply.text)
        self.assertIn("https://portal.gw.example/compose/name@example.com", reply.text)
        self.assertNotIn("<form", reply.text)
        direct = await self.browser().get(f"/compose/{SALES}")
        self.assertEqual(direct.code, 200)
        self.assertIn('name="sender"', direct.text)


class DestinationTests(ComposeFixture):
    async def test_outside_address_refused(self) -> None:
        """A direct link to anything but an incoming-domain address is a clear 404 page."""
        browser = self.browser()
        for address in (
            ELSEWHERE,
            "sales@corp.example.evil",
            "sales@sub.corp.example",
            "not-an-address",
            "sales@corp.example,bob@partner.example",
            "sales%40corp.example%0D%0ABcc:%20bob@partner.example",
            '"sales"@corp.example',
        ):
            reply = await browser.get(f"/compose/{address}")
            self.assertEqual(reply.code, 404, address)
            self.assertIn("not found", reply.text, address)
            self.assertNotIn('name="sender"', reply.text, address)
        self.assertEqual(await self.rows(), [])

    async def test_start_to_outside_refused(self) -> None:
        """A tampered start form naming an outside (or a second) address mails no code."""
        browser = self.browser()
        csrf = (await browser.get("/compose")).csrf()
        for pairs in (
            [("csrf", csrf), ("to", ELSEWHERE), ("sender", OUTSIDER)],
            [("csrf", csrf), ("to", SALES), ("to", ELSEWHERE), ("sender", OUTSIDER)],
            [("csrf", csrf), ("to", SALES + INJECTED), ("sender", OUTSIDER)],
            [("csrf", csrf), ("sender", OUTSIDER)],
        ):
            reply = await browser.post_pairs("/compose/start", pairs)
            self.assertEqual(reply.code, 400, pairs)
            self.assertIn("Nothing was sent", reply.text)
        self.assertEqual(await self.rows(), [])

    async def test_route_forms_refused(self) -> None:
        """A To with %, ! or a route (link, start form, send form) is refused, naming it."""
        percent = "boss%evil.example@corp.example"
        bang = "evil.example!boss@corp.example"
        browser = self.browser()
        for address in (percent, bang):
            page = await browser.get(f"/compose/{address}")
            self.assertEqual(page.code, 404, address)
            self.assertIn(address, page.text)
        csrf = (await browser.get("/compose")).csrf()
        for address in (percent, bang, "@corp.example:boss@evil.example"):
            reply = await browser.post_pairs(
                "/compose/start", [("csrf", csrf), ("to", address), ("sender", OUTSIDER)]
            )
            self.assertEqual(reply.code, 400, address)
            self.assertIn(address, reply.text)
        sneaky = await browser.post_pairs(
            "/compose/start", [("csrf", csrf), ("to", SALES), ("sender", "olga%x@outside.example")]
        )
        self.assertEqual(sneaky.code, 400)
        self.assertEqual(await self.rows(), [])
        signed_in = await self.signed_in()
        write_csrf = await self.write_csrf(signed_in)
        sent = await signed_in.send([("csrf", write_csrf), ("to", percent), ("text", "hi")])
        self.assertEqual(sent.code, 400)
        self.assertIn(percent, sent.text)
        self.assertEqual(await self.composed(), [])


class CodeTests(ComposeFixture):
    async def test_code_flow(self) -> None:
        """The code goes by mail to the outsider; the right one signs in and leads to /write."""
        browser = self.browser()
        commits = self.commits
        reply = await self.ask_code(browser)
        self.assertEqual(reply.code, 200)
        self.assertIn(f"We sent a 6-digit code to {OUTSIDER}", reply.text)
        self.assertEqual(self.commits, commits + 1)
        [row] = await self.rows("code")
        self.assertEqual(row.recipients, (OUTSIDER,))
        self.assertEqual(row.route, RELAY)  # the outsider's domain is on the outgoing route
        self.assertEqual(row.domain, "outside.example")
        self.assertEqual(row.sender, "bounces@gw.example")
        self.assertEqual(row.about, trail_id(OUTSIDER))
        mail = parse(await self.store.read_all(row.message_id))
        self.assertEqual(mail["To"], OUTSIDER)
        self.assertIn(SALES, mail.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        code = await self.mailed_code()
        self.assertNotIn(code, reply.text)

        right = await self.try_code(browser, code)
        self.assertEqual(right.code, 303)
        self.assertEqual(right.header("Location"), f"/compose/write?to={SALES}")
        value, attributes = right.set_cookies()[SESSION]
        self.assertRegex(value, r"^[A-Za-z0-9_-]{16,200}$")
        self.assertIn("secure", attributes)
        self.assertIn("httponly", attributes)
        self.assertEqual(attributes.get("samesite", "").lower(), "lax")
        self.assertEqual(attributes.get("path"), "/")
        page = await browser.get(f"/compose/write?to={SALES}")
        self.assertEqual(page.code, 200)
        self.assertIn(f"<dd>{OUTSIDER} (confirmed)</dd>", page.text)
        self.assertIn('enctype="multipart/form-data"', page.text)
        self.assertIn('name="attachment" multiple', page.text)
        rows = await self.db.run(
            lambda txn: (
                txn.execute("SELECT * FROM compose_sessions").fetchall()
                + txn.execute("SELECT * FROM compose_codes").fetchall()
            )
        )
        self.assertNotIn(value, repr(rows))
        self.assertNotIn(code, repr(rows))
        self.assertEqual(await self.trail(), ["code sent", "code accepted", "signed in"])

    async def test_wrong_code(self) -> None:
        """A wrong code is refused and signs nobody in; five wrong ones use the code up."""
        browser = self.browser()
        await self.ask_code(browser)
        code = await self.mailed_code()
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        for _ in range(CODE_TRIES - 1):
            reply = await self.try_code(browser, wrong)
            self.assertEqual(reply.code, 200)
            self.assertIn("That code is not right", reply.text)
            self.assertNotIn(SESSION, reply.set_cookies())
        self.assertIn("no longer works", (await self.try_code(browser, wrong)).text)
        last = await self.try_code(browser, code)
        self.assertIn("no longer works", last.text)
        self.assertNotIn(SESSION, browser.cookies)
        self.assertEqual(await self.count("compose_sessions"), 0)
        bad = await self.try_code(browser, "12345" + INJECTED)
        self.assertEqual(bad.code, 400)
        self.assert_no_injection(bad)

    async def test_expired_code(self) -> None:
        """A code works for 10 minutes and once; a new one works again."""
        browser = self.browser()
        await self.ask_code(browser)
        code = await self.mailed_code()
        self.clock.advance(CODE_LIFETIME + 1)
        reply = await self.try_code(browser, code)
        self.assertEqual(reply.code, 200)
        self.assertIn("no longer works", reply.text)
        self.assertNotIn(SESSION, browser.cookies)
        await self.ask_code(browser)
        code = await self.mailed_code()
        self.assertEqual((await self.try_code(browser, code)).code, 303)
        used = await self.try_code(self.browser(), code)
        self.assertIn("no longer works", used.text)

    async def test_code_mails_per_day(self) -> None:
        """At most 5 code mails a day go to one address (in any case); then a clear refusal."""
        browser = self.browser()
        for i in range(CODES_PER_WINDOW):
            sender = OUTSIDER.upper() if i % 2 else OUTSIDER
            self.assertEqual((await self.ask_code(browser, sender)).code, 200)
            self.clock.advance(MINUTE)
        refused = await self.ask_code(browser)
        self.assertEqual(refused.code, 429)
        self.assertIn(f"{CODES_PER_WINDOW} codes have been sent to {OUTSIDER}", refused.text)
        self.assertEqual(len(await self.rows("code")), CODES_PER_WINDOW)
        self.assertEqual((await self.ask_code(browser, "other@outside.example")).code, 200)
        self.clock.advance(CODE_WINDOW)
        self.assertEqual((await self.ask_code(browser)).code, 200)
        self.assertIn("code refused", await self.trail())

    async def test_code_mails_per_mailbox_not_per_spelling(self) -> None:
        """Case and +tag spellings of one mailbox share its limit; the page says so (429)."""
        browser = self.browser()
        spellings = [OUTSIDER, OUTSIDER.upper(), "olga+a@outside.example", "Olga+b@Outside.example"]
        for i in range(CODES_PER_WINDOW):
            reply = await self.ask_code(browser, spellings[i % len(spellings)])
            self.assertEqual(reply.code, 200, i)
            self.clock.advance(MINUTE)
        refused = await self.ask_code(browser, "olga+c@outside.example")
        self.assertEqual(refused.code, 429)
        self.assertIn(f"{CODES_PER_WINDOW} codes have been sent to", refused.text)
        self.assertEqual(len(await self.rows("code")), CODES_PER_WINDOW)

    async def test_code_mails_per_client_and_in_all(self) -> None:
        """Per client (here every test request comes from one address) and in all: 429 pages."""
        self.resource = self.portal_with(
            make_settings(
                self.data_dir,
                portal={
                    "compose_directory": list(self.directory),
                    "compose_codes_per_client": 2,
                    "compose_codes_per_hour": 3,
                },
            )
        )
        browser = self.browser()
        for n in range(2):
            self.assertEqual((await self.ask_code(browser, f"m{n}@outside.example")).code, 200)
        refused = await self.ask_code(browser, "m2@outside.example")
        self.assertEqual(refused.code, 429)
        self.assertIn("Many codes have been asked for from your network", refused.text)
        self.assertEqual(len(await self.rows("code")), 2)
        self.clock.advance(HOUR)
        self.assertEqual((await self.ask_code(browser, "m3@outside.example")).code, 200)

    async def test_twenty_wrong_codes_lock_the_mailbox(self) -> None:
        """20 wrong codes for one mailbox (any spelling) lock it, and its owner is mailed."""
        browser = self.browser()
        answer = None
        for n in range(LOCK_AFTER // CODE_TRIES):
            sender = OUTSIDER if n % 2 else "olga+x@outside.example"
            self.assertEqual((await self.ask_code(browser, sender)).code, 200)
            code = await self.mailed_code()
            for _ in range(CODE_TRIES):
                answer = await self.try_code(browser, f"{(int(code) + 1) % 10**6:06d}", sender)
        assert answer is not None
        self.assertEqual(answer.code, 403)
        self.assertIn("A wrong code was typed too many times", answer.text)
        [notice] = await self.rows("notice")
        self.assertEqual(notice.recipients, (OUTSIDER,))
        body = parse(await self.store.read_all(notice.message_id)).get_body(("plain",))
        assert body is not None
        self.assertIn(f"was typed {LOCK_AFTER} times", " ".join(body.get_content().split()))
        codes = len(await self.rows("code"))
        self.clock.advance(CODE_WINDOW)
        locked = await self.ask_code(browser, "OLGA+y@outside.example")
        self.assertEqual(locked.code, 403)
        self.assertEqual(len(await self.rows("code")), codes)
        self.assertEqual((await self.ask_code(browser, "other@outside.example")).code, 200)

    async def test_bad_sender_address(self) -> None:
        """A sender address we could not mail (or with a line break) is asked again; no code."""
        browser = self.browser()
        for typed in ("", "olga", "olga@outside", OUTSIDER + INJECTED, "a,b@outside.example"):
            reply = await self.ask_code(browser, typed)
            self.assertEqual(reply.code, 400, typed)
            self.assertIn('class="error"', reply.text)
            self.assert_no_injection(reply)
        self.assertEqual(await self.rows(), [])

    async def test_sign_in_rotates_session(self) -> None:
        """Signing in again gives a new session id, and the old one stops working."""
        browser = await self.signed_in()
        old = browser.cookies[SESSION]
        self.clock.advance(MINUTE)
        await self.ask_code(browser)
        self.assertEqual((await self.try_code(browser, await self.mailed_code())).code, 303)
        self.assertNotEqual(browser.cookies[SESSION], old)
        stale = self.browser(**{SESSION: old})
        self.assertEqual((await stale.get(f"/compose/write?to={SALES}")).code, 401)
        self.assertEqual(await self.count("compose_sessions"), 1)


class CsrfTests(ComposeFixture):
    async def test_csrf_missing(self) -> None:
        """Every state change without its CSRF value is 403 and changes nothing."""
        browser = self.browser()
        csrf = (await browser.get("/compose")).csrf()
        cross_site = self.browser()  # another site's form: the value, but not our cookie
        attempts = [
            (browser, "/compose/start", {"to": SALES, "sender": OUTSIDER}),
            (browser, "/compose/start", {"csrf": "0" * 64, "to": SALES, "sender": OUTSIDER}),
            (cross_site, "/compose/start", {"csrf": csrf, "to": SALES, "sender": OUTSIDER}),
            (browser, "/compose/verify", {"to": SALES, "sender": OUTSIDER, "code": "123456"}),
            (cross_site, "/compose/verify", {"csrf": csrf, "to": SALES, "sender": OUTSIDER}),
            # Not ASCII: refused like any wrong value (not a 500 from compare_digest on str).
            (browser, "/compose/start", {"csrf": "é" * 64, "to": SALES, "sender": OUTSIDER}),
        ]
        for client, path, data in attempts:
            reply = await client.post(path, data)
            self.assertEqual(reply.code, 403, (path, data))
            self.assertNotIn(SESSION, reply.set_cookies())
        self.assertEqual(await self.rows(), [])

        writer = await self.signed_in()
        form_csrf = writer.cookies[FORM]
        for fields in (
            [("to", SALES), ("text", "hello")],
            [("csrf", "x" * 32), ("to", SALES), ("text", "hello")],
            [("csrf", csrf), ("to", SALES), ("text", "hello")],  # the pre-sign-in value
            [("csrf", form_csrf), ("to", SALES), ("text", "hello")],
        ):
            self.assertEqual((await writer.send(fields)).code, 403, fields)
        self.assertEqual(await self.composed(), [])
        self.assertEqual((await writer.post("/compose/logout", {})).code, 403)
        self.assertEqual(await self.count("compose_sessions"), 1)

    async def test_sign_out(self) -> None:
        """Sign-out with the session's CSRF ends the session and clears its cookie."""
        writer = await self.signed_in()
        old = writer.cookies[SESSION]
        reply = await writer.post("/compose/logout", {"csrf": await self.write_csrf(writer)})
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.set_cookies()[SESSION][1].get("max-age"), "0")
        self.assertEqual(await self.count("compose_sessions"), 0)
        again = self.browser(**{SESSION: old})
        self.assertEqual((await again.get(f"/compose/write?to={SALES}")).code, 401)
        self.assertIn("signed out", await self.trail())


class SendTests(ComposeFixture):
    async def test_send_with_attachments(self) -> None:
        """
        The message is queued on the incoming route, From the verified sender and Reply-To
        its marked form (a reply from inside stays secure, also in mode all).
        """
        writer = await self.signed_in()
        commits = self.commits
        log = CapturedLog(self)
        reply = await writer.send(
            [
                ("csrf", await self.write_csrf(writer)),
                ("to", SALES),
                ("subject", "Offer for the tender – №42"),
                ("text", "Hello,\r\nplease find our offer attached.\r\nÅsa"),
            ],
            [
                ("attachment", "offer.bin", "application/octet-stream", BINARY),
                ("attachment", "logo.png", "image/png", PNG),
                ("attachment", "", "application/octet-stream", b""),  # no file chosen
            ],
        )
        self.assertEqual(reply.code, 200, reply.text)
        self.assertIn(f"Your message to {SALES} is on its way", reply.text)
        self.assertEqual(self.commits, commits + 1)
        [row] = await self.composed()
        self.assertEqual(row.recipients, (SALES,))
        self.assertEqual(row.route, INTERNAL)
        self.assertEqual(row.domain, "corp.example")
        self.assertEqual(row.sender, "bounces@gw.example")
        self.assertEqual(row.notify, "")
        self.assertEqual(row.about, row.message_id)
        self.assertEqual(
            log.lines(),
            [
                f"{short_id(row.message_id)}: accepted from 127.0.0.1 via D-Compose"
                f" sender=<{OUTSIDER}> size={len(await self.store.read_all(row.message_id))}"
                f" recipients=<{SALES}> (relay)"
            ],
        )
        for secret in ("Offer for the tender", "please find our offer"):
            self.assertNotIn(secret, log.everything())

        raw = await self.store.read_all(row.message_id)
        mail = parse(raw)
        self.assertEqual(mail["From"], OUTSIDER)
        self.assertEqual(mail["Reply-To"], OUTSIDER + ".s")
        self.assertEqual(mail["X-Secmail-Verified"], OUTSIDER)
        self.assertEqual(mail["To"], SALES)
        self.assertEqual(mail["Subject"], "Offer for the tender – №42")
        self.assertIsNotNone(mail["Message-ID"])
        self.assertIsNotNone(mail["Date"])
        body = mail.get_body(("plain",))
        assert body is not None
        self.assertEqual(
            body.get_content().splitlines(), ["Hello,", "please find our offer attached.", "Åsa"]
        )
        attachments = list(mail.iter_attachments())
        self.assertEqual(
            [(a.get_filename(), a.get_content_type()) for a in attachments],
            [("offer.bin", "application/octet-stream"), ("logo.png", "image/png")],
        )
        self.assertEqual([a.get_content() for a in attachments], [BINARY, PNG])
        self.assertTrue(raw.isascii())
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))

        kinds = [kind for _, kind, _, _ in await self.store.events(row.message_id)]
        self.assertEqual(kinds, ["composed"])
        self.assertEqual(
            await self.trail(), ["code sent", "code accepted", "signed in", "composed"]
        )

    async def test_double_send_queues_once(self) -> None:
        """A second post of the same form (a double click, a reload) sends nothing more."""
        writer = await self.signed_in()
        fields = [("csrf", await self.write_csrf(writer)), ("to", SALES), ("text", "Hello")]
        first = await writer.send(fields)
        self.assertIn("is on its way", first.text)
        again = await writer.send(fields)
        self.assertEqual(again.code, 200)
        self.assertIn("This message has already been sent.", again.text)
        self.assertEqual(len(await self.composed()), 1)
        # A new write page is a new message.
        fields = [("csrf", await self.write_csrf(writer)), ("to", SALES), ("text", "Hello")]
        self.assertIn("is on its way", (await writer.send(fields)).text)
        self.assertEqual(len(await self.composed()), 2)

    async def test_send_without_form_id_refused(self) -> None:
        """A send without a well-formed send-once form id is refused (403) and queues nothing."""
        writer = await self.signed_in()
        csrf = await self.write_csrf(writer)
        for form_id in ("", "short", "x" * 65, "bad chars!!!!!!!!!!"):
            reply = await writer.send(
                [("csrf", csrf), ("to", SALES), ("text", "Hi"), ("form", form_id)]
            )
            self.assertEqual(reply.code, 403, form_id)
        self.assertEqual(await self.composed(), [])

    async def test_send_to_outside_refused(self) -> None:
        """A tampered write form naming any other destination is refused and queues nothing."""
        writer = await self.signed_in()
        csrf = await self.write_csrf(writer)
        for tos in (
            [ELSEWHERE],
            [SALES, ELSEWHERE],
            [],
            [f"{SALES},{ELSEWHERE}"],
            [f"{SALES} {ELSEWHERE}"],
            [SALES + INJECTED],
            [f"Sales <{SALES}>"],
            ["sales@corp.example.partner.example"],
        ):
            fields = [("csrf", csrf), *[("to", to) for to in tos], ("text", "hello")]
            reply = await writer.send(fields)
            self.assertEqual(reply.code, 400, tos)
            self.assertIn("Nothing was sent", reply.text)
            self.assert_no_injection(reply)
        self.assertEqual(await self.composed(), [])
        self.assertIn("compose refused", await self.trail())
        outside = await writer.get(f"/compose/write?to={ELSEWHERE}")
        self.assertEqual(outside.code, 404)

    async def test_header_injection_impossible(self) -> None:
        """CR/LF in the subject or a file name never makes a header of the mail."""
        writer = await self.signed_in()
        reply = await writer.send(
            [
                ("csrf", await self.write_csrf(writer)),
                ("to", SALES),
                ("subject", "Hi" + INJECTED),
                ("text", "Body\r\n.\r\nBcc: bob@partner.example\r\n"),
            ],
            [
                ("attachment", "*=utf-8''a.pdf%0D%0ABcc%3A%20bob%40partner.example", "x", b"1"),
                ("attachment", "../../etc/passwd", "text/plain\r\nBcc: x", b"2"),
                ("attachment", "C:\\Users\\o\\evil.exe", "application/x-msdownload", b"3"),
                ("attachment", "..", "application/octet-stream", b"4"),
            ],
        )
        self.assertEqual(reply.code, 200, reply.text)
        self.assert_no_injection(reply)
        [row] = await self.composed()
        raw = await self.store.read_all(row.message_id)
        mail = parse(raw)
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertNotIn(b"\r\nBcc:", head)
        self.assertNotIn(b"\r\nX-Injected:", head)
        self.assertIsNone(mail["Bcc"])
        self.assertEqual(mail.get_all("To"), [SALES])
        self.assertEqual(mail["Subject"], "Hi Bcc: bob@partner.example X-Injected: 1")
        attachments = list(mail.iter_attachments())
        names = [a.get_filename() for a in attachments]
        self.assertEqual(
            names, ["a.pdf Bcc: bob@partner.example", "passwd", "evil.exe", "attachment"]
        )
        for part in attachments:
            for name, value in part.items():
                self.assertNotIn("\n", str(value), name)
        self.assertEqual(
            [a.get_content_type() for a in attachments],
            # "x" is no type; the CR/LF ended the type's header line (Bcc became a part header).
            ["application/octet-stream", "text/plain",
             "application/x-msdownload", "application/octet-stream"],
        )  # fmt: skip
        self.assertEqual(len([p for p in mail.walk() if p["Bcc"] is not None]), 0)

    async def test_empty_message(self) -> None:
        """A message without text or attachments is asked for again, not sent."""
        writer = await self.signed_in()
        reply = await writer.send([("csrf", await self.write_csrf(writer)), ("to", SALES)])
        self.assertEqual(reply.code, 400)
        self.assertIn("Please write a message", reply.text)
        self.assertEqual(await self.composed(), [])

    async def test_session_idle_timeout(self) -> None:
        """A compose session ends after 30 minutes without a request; nothing can be sent."""
        writer = await self.signed_in()
        csrf = await self.write_csrf(writer)
        self.clock.advance(SESSION_IDLE + 1)
        reply = await writer.send([("csrf", csrf), ("to", SALES), ("text", "late")])
        self.assertEqual(reply.code, 401)
        self.assertIn(
            f'href="/compose/{SALES}"', (await writer.get(f"/compose/write?to={SALES}")).text
        )
        self.assertEqual(await self.composed(), [])


class SizeTests(ComposeFixture):
    max_upload_size = 4096

    async def test_too_large(self) -> None:
        """Text and attachments over max_upload_size: a clear 413 page, nothing queued."""
        writer = await self.signed_in()
        csrf = await self.write_csrf(writer)
        reply = await writer.send(
            [("csrf", csrf), ("to", SALES), ("subject", "Big"), ("text", "x" * 100)],
            [("attachment", "big.bin", "application/octet-stream", b"\0" * 4000)],
        )
        self.assertEqual(reply.code, 413)
        self.assertIn("come to 5 kB; at most 4 kB can be sent", reply.text)
        self.assertIn('value="Big"', reply.text)  # what was typed is kept
        self.assertEqual(await self.composed(), [])
        fits = await writer.send(
            [("csrf", csrf), ("to", SALES), ("text", "x" * 96)],
            [("attachment", "ok.bin", "application/octet-stream", b"\0" * 4000)],
        )
        self.assertEqual(fits.code, 200)
        self.assertEqual(len(await self.composed()), 1)


class HeaderTests(ComposeFixture):
    async def every_route(self) -> dict[str, Reply]:
        replies: dict[str, Reply] = {}
        browser = self.browser()
        replies["directory"] = page = await browser.get("/compose")
        replies["direct"] = await browser.get(f"/compose/{SALES}")
        replies["404 address"] = await browser.get(f"/compose/{ELSEWHERE}")
        replies["405"] = await browser.post(f"/compose/{SALES}", {})
        replies["403"] = await browser.post("/compose/start", {"to": SALES, "sender": OUTSIDER})
        replies["400 start"] = await browser.post(
            "/compose/start", {"csrf": page.csrf(), "to": ELSEWHERE, "sender": OUTSIDER}
        )
        replies["code page"] = await self.ask_code(browser)
        code = await self.mailed_code()
        replies["wrong code"] = await self.try_code(browser, f"{(int(code) + 1) % 10**6:06d}")
        replies["verified"] = await self.try_code(browser, code)
        replies["write"] = browser.remember_form(await browser.get(f"/compose/write?to={SALES}"))
        csrf = replies["write"].csrf()
        replies["sent"] = await browser.send(
            [("csrf", csrf), ("to", SALES), ("text", "hi")],
            [("attachment", "a.bin", "application/octet-stream", b"a")],
        )
        replies["400 send"] = await browser.send([("csrf", csrf), ("to", ELSEWHERE)])
        replies["logout"] = await browser.post("/compose/logout", {"csrf": csrf})
        replies["401"] = await browser.get(f"/compose/write?to={SALES}")
        for _ in range(CODES_PER_WINDOW):
            await self.ask_code(browser, "many@outside.example")
        replies["429"] = await self.ask_code(browser, "many@outside.example")
        return replies

    async def test_security_headers_everywhere(self) -> None:
        """Every compose response has the portal's security headers and its own status."""
        replies = await self.every_route()
        self.assertEqual(
            {name: reply.code for name, reply in replies.items()},
            {
                "directory": 200,
                "direct": 200,
                "404 address": 404,
                "405": 405,
                "403": 403,
                "400 start": 400,
                "code page": 200,
                "wrong code": 200,
                "verified": 303,
                "write": 200,
                "sent": 200,
                "400 send": 400,
                "logout": 200,
                "401": 401,
                "429": 429,
            },
        )
        for name, reply in replies.items():
            self.assertEqual(
                reply.header("Strict-Transport-Security"),
                "max-age=31536000; includeSubDomains",
                name,
            )
            self.assertEqual(reply.header("X-Content-Type-Options"), "nosniff", name)
            self.assertEqual(reply.header("Referrer-Policy"), "no-referrer", name)
            self.assertEqual(reply.header("Cache-Control"), "no-store", name)
            self.assertEqual(reply.header("X-Frame-Options"), "DENY", name)
            csp = directives(reply)
            raw = reply.header("Content-Security-Policy") or ""
            self.assertEqual(csp.get("frame-ancestors"), ["'none'"], name)
            self.assertEqual(csp.get("form-action"), ["'self'"], name)
            self.assertNotIn("unsafe-inline", raw, name)
            self.assertNotIn("unsafe-eval", raw, name)
            self.assertEqual(csp.get("script-src", csp.get("default-src")), ["'none'"], name)
            self.assert_no_injection(reply)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_no_secrets_in_urls(self) -> None:
        """Codes and cookies travel only in form bodies and cookies: the redirect has neither."""
        browser = self.browser()
        await self.ask_code(browser)
        code = await self.mailed_code()
        reply = await self.try_code(browser, code)
        location = reply.header("Location") or ""
        self.assertNotIn(code, location)
        for value in browser.cookies.values():
            self.assertNotIn(value, location)


# --- pure parts ---------------------------------------------------------------------------


class ClientKeyTests(SynchronousTestCase):
    def test_client_key(self) -> None:
        """A client is its IPv4 address, or its IPv6 /64; anything else is not counted."""
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(client_key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64")
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("/run/secmail.sock"), "")
        self.assertEqual(client_key(""), "")


class FormTests(SynchronousTestCase):
    def test_parse_form_keeps_names_and_bytes(self) -> None:
        """The multipart parser keeps each file's name, type and exact bytes, and repeats."""
        body, content_type = multipart(
            [("to", SALES), ("to", HELP), ("text", "Grüße\r\n")],
            [("attachment", "r\u00e9sum\u00e9.pdf", "application/pdf", BINARY)],
        )
        form = parse_form(content_type, body)
        self.assertEqual(form.fields["to"], [SALES, HELP])
        self.assertIsNone(form.one("to"))  # given twice: no single value
        self.assertEqual(form.one("text"), "Grüße\r\n")
        [upload] = form.uploads("attachment")
        self.assertEqual((upload.filename, upload.content_type), ("résumé.pdf", "application/pdf"))
        self.assertEqual(upload.data, BINARY)

    def test_parse_form_other_bodies(self) -> None:
        """A URL-encoded body gives its fields; any other type gives nothing."""
        form = parse_form("application/x-www-form-urlencoded", b"to=a%40b.example&text=x")
        self.assertEqual(form.one("to"), "a@b.example")
        self.assertEqual(parse_form("text/plain", b"to=x").fields, {})
        self.assertEqual(parse_form("multipart/form-data", b"garbage").fields, {})

    @given(st.text(max_size=400))
    def test_upload_name_is_safe(self, filename: str) -> None:
        """Any file name becomes one short line without a path, control or format character."""
        name = upload_name(filename)
        self.assertTrue(name)
        self.assertLessEqual(len(name), MAX_FILENAME_CHARS)
        self.assertFalse(set(name) & set("/\\\r\n\t\0"))
        self.assertFalse(name.startswith("."))
        self.assertEqual(upload_name(name), name)


# --- the store on both engines ------------------------------------------------------------


@on_each_engine
class ComposeStoreMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        opened = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.engine, self.db, self.master, self.store = opened
        self.codes = ComposeStore(self.db, os.urandom(32))

    async def kinds(self, address: str = OUTSIDER) -> list[str]:
        return [kind for _, kind, _, _ in await self.store.events(trail_id(address))]

    async def test_code_once(self) -> None:
        """A code works once; a wrong one counts a try; case does not matter."""
        code = await self.codes.new_code(OUTSIDER, T0)
        assert code is not None and re.fullmatch(r"\d{6}", code)
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        self.assertEqual(await self.codes.check_code(OUTSIDER, wrong, T0 + 1), CodeState.WRONG)
        upper = OUTSIDER.upper()
        self.assertEqual(await self.codes.check_code(upper, code, T0 + 2), CodeState.OK)
        self.assertEqual(await self.codes.check_code(OUTSIDER, code, T0 + 3), CodeState.EXPIRED)
        self.assertEqual(
            await self.kinds(), ["code sent", "code wrong", "code accepted", "code refused"]
        )

    async def test_code_belongs_to_its_address(self) -> None:
        """A code mailed to one address does not prove another."""
        code = await self.codes.new_code(OUTSIDER, T0)
        assert code is not None
        other = "other@outside.example"
        self.assertEqual(await self.codes.check_code(other, code, T0 + 1), CodeState.EXPIRED)
        other_code = await self.codes.new_code(other, T0 + 2)
        if other_code != code:
            self.assertEqual(await self.codes.check_code(other, code, T0 + 3), CodeState.WRONG)

    async def test_code_expires(self) -> None:
        """A code is good for 10 minutes."""
        code = await self.codes.new_code(OUTSIDER, T0)
        assert code is not None
        late = T0 + CODE_LIFETIME + 1
        self.assertEqual(await self.codes.check_code(OUTSIDER, code, late), CodeState.EXPIRED)

    async def test_code_tries(self) -> None:
        """After 5 wrong tries even the right code no longer works."""
        code = await self.codes.new_code(OUTSIDER, T0)
        assert code is not None
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        results = [await self.codes.check_code(OUTSIDER, wrong, T0 + i) for i in range(CODE_TRIES)]
        self.assertEqual(results, [CodeState.WRONG] * (CODE_TRIES - 1) + [CodeState.EXPIRED])
        self.assertEqual(await self.codes.check_code(OUTSIDER, code, T0 + 9), CodeState.EXPIRED)

    async def test_new_code_replaces_old(self) -> None:
        """Asking for a new code makes the old one stop working."""
        old = await self.codes.new_code(OUTSIDER, T0)
        new = await self.codes.new_code(OUTSIDER, T0 + 1)
        assert old is not None and new is not None
        if old != new:
            self.assertEqual(await self.codes.check_code(OUTSIDER, old, T0 + 2), CodeState.WRONG)
        self.assertEqual(await self.codes.check_code(OUTSIDER, new, T0 + 3), CodeState.OK)

    async def test_codes_per_day(self) -> None:
        """At most 5 codes go to one address in 24 hours."""
        for i in range(CODES_PER_WINDOW):
            self.assertIsNotNone(await self.codes.new_code(OUTSIDER, T0 + i * HOUR))
        self.assertIsNone(await self.codes.new_code(OUTSIDER.upper(), T0 + 5 * HOUR))
        self.assertIsNotNone(await self.codes.new_code("other@outside.example", T0 + 5 * HOUR))
        self.assertIsNone(await self.codes.new_code(OUTSIDER, T0 + CODE_WINDOW - 1))
        self.assertIsNotNone(await self.codes.new_code(OUTSIDER, T0 + CODE_WINDOW))

    async def test_session_limits(self) -> None:
        """A session ends after 30 minutes idle or 12 hours in all, and on sign-out."""
        sid = await self.codes.create_session(OUTSIDER, T0)
        session = await self.codes.session(sid, T0 + SESSION_IDLE - 1)
        assert session is not None
        self.assertEqual(session.address, OUTSIDER)
        self.assertIsNone(await self.codes.session(sid, T0 + 2 * SESSION_IDLE))
        sid = await self.codes.create_session(OUTSIDER, T0)
        now = T0
        while now + SESSION_IDLE - 60 < T0 + SESSION_MAX:
            now += SESSION_IDLE - 60
            self.assertIsNotNone(await self.codes.session(sid, now))
        self.assertIsNone(await self.codes.session(sid, T0 + SESSION_MAX + 1))
        sid = await self.codes.create_session(OUTSIDER, T0)
        await self.codes.end_session(sid, T0 + 1)
        self.assertIsNone(await self.codes.session(sid, T0 + 2))
        self.assertIsNone(await self.codes.session("not-a-session-id-at-all", T0))

    async def test_session_rotated_in_one_step(self) -> None:
        """A new session replacing another ends the old one (signed out) in the same step."""
        old = await self.codes.create_session(OUTSIDER, T0)
        new = await self.codes.create_session(OUTSIDER, T0 + 1, replaces=old)
        self.assertIsNone(await self.codes.session(old, T0 + 2))
        self.assertIsNotNone(await self.codes.session(new, T0 + 2))
        kinds = await self.db.run(
            lambda txn: [
                r[0] for r in txn.execute("SELECT kind FROM events ORDER BY id").fetchall()
            ]
        )
        self.assertEqual(kinds, ["signed in", "signed out", "signed in"])

    async def test_secrets_not_stored(self) -> None:
        """Only hashes of session cookies and codes are in the database."""
        code = await self.codes.new_code(OUTSIDER, T0)
        sid = await self.codes.create_session(OUTSIDER, T0)
        assert code is not None
        rows = await self.db.run(
            lambda txn: (
                txn.execute("SELECT * FROM compose_sessions").fetchall()
                + txn.execute("SELECT * FROM compose_codes").fetchall()
            )
        )
        self.assertNotIn(sid, repr(rows))
        self.assertNotIn(code, repr(rows))

    async def test_delete_stale(self) -> None:
        """The clean-up removes timed-out sessions and codes too old to count, nothing else."""
        await self.codes.new_code(OUTSIDER, T0)
        old = await self.codes.create_session(OUTSIDER, T0)
        later = T0 + CODE_WINDOW
        await self.codes.new_code(OUTSIDER, later)
        live = await self.codes.create_session(OUTSIDER, later)
        self.assertEqual(await self.codes.delete_stale(later + 1), 2)
        self.assertIsNone(await self.codes.session(old, later + 2))
        self.assertIsNotNone(await self.codes.session(live, later + 2))
        rows = await self.db.run(
            lambda txn: txn.execute("SELECT COUNT(*) FROM compose_codes").fetchone()
        )
        self.assertEqual(rows[0], 1)

    async def test_codes_per_mailbox(self) -> None:
        """Code mails are counted per mailbox: lower-cased, +tag removed."""
        for i, address in enumerate(
            [OUTSIDER, "Olga+1@outside.example", "olga+2@OUTSIDE.example", OUTSIDER, OUTSIDER]
        ):
            self.assertIsNotNone(await self.codes.new_code(address, T0 + i, f"192.0.2.{i}"))
        self.assertEqual(
            await self.codes.order_code("olga+3@outside.example", T0 + 9, "192.0.2.9"),
            (None, CodeRefusal.MAILBOX),
        )
        self.assertIsNotNone(await self.codes.new_code("olgb@outside.example", T0 + 9))

    async def test_codes_per_client_and_in_all(self) -> None:
        """Code mails are counted per client in an hour, and in all per hour and per day."""
        limits = CodeLimits(per_mailbox=5, per_client=2, per_hour=3, per_day=4)
        order = self.codes.order_code
        self.assertIsNotNone((await order("a@x.example", T0, "192.0.2.1", limits))[0])
        self.assertIsNotNone((await order("b@x.example", T0, "192.0.2.1", limits))[0])
        refused = await order("c@x.example", T0, "192.0.2.1", limits)
        self.assertEqual(refused, (None, CodeRefusal.CLIENT))
        self.assertIsNotNone((await order("c@x.example", T0, "2001:db8::/64", limits))[0])
        hour = await order("d@x.example", T0 + 1, "2001:db8:1::/64", limits)
        self.assertEqual(hour, (None, CodeRefusal.HOUR))
        self.assertIsNotNone((await order("d@x.example", T0 + HOUR, "192.0.2.1", limits))[0])
        day = await order("e@x.example", T0 + 2 * HOUR, "192.0.2.5", limits)
        self.assertEqual(day, (None, CodeRefusal.DAY))
        self.assertIn("code refused", await self.kinds("e@x.example"))

    async def test_wrong_codes_lock_the_mailbox(self) -> None:
        """
        Wrong codes count per mailbox across codes and spellings; the 20th locks it for
        LOCK_TIME and stores the notice in that transaction; then nothing is sent or checked.
        """
        notice = routed_mail(
            make_settings("/nonexistent/secmail-compose-tests").routes,
            self.master,
            kind="notice",
            sender="bounces@gw.example",
            to=OUTSIDER,
            content=b"Subject: locked\r\n\r\nNo more codes.\r\n",
            about=trail_id(OUTSIDER),
        )
        results = []
        now = T0
        for n in range(LOCK_AFTER // CODE_TRIES):
            address = OUTSIDER if n % 2 else "OLGA+x@outside.example"
            now = T0 + n * HOUR
            code = await self.codes.new_code(address, now)
            assert code is not None
            wrong = f"{(int(code) + 1) % 10**6:06d}"
            for i in range(CODE_TRIES):
                results.append(await self.codes.check_code(address, wrong, now + i, notice))
        self.assertEqual(results[-1], CodeState.LOCKED_NOW)
        self.assertNotIn(CodeState.LOCKED_NOW, results[:-1])
        [queued] = await self.store.queue_list()
        self.assertEqual((queued.kind, queued.recipients), ("notice", (OUTSIDER,)))
        self.assertEqual(
            await self.codes.order_code("olga+y@outside.example", now + 10), (None, "locked")
        )
        self.assertEqual(await self.codes.check_code(OUTSIDER, "123456", now + 11), "locked")
        self.assertEqual(len(await self.store.queue_list()), 1)
        self.assertIn("locked", await self.kinds(OUTSIDER))
        later = now + CODE_TRIES + LOCK_TIME
        code = await self.codes.new_code(OUTSIDER, later)
        assert code is not None
        self.assertEqual(await self.codes.check_code(OUTSIDER, code, later + 1), CodeState.OK)

    async def test_two_nodes_never_send_over_the_limit(self) -> None:
        """Orders from two nodes (two connections) at once: never more than the limit."""
        if self.engine_name == "sqlite":
            raise SkipTest("one SQLite writer at a time; the race is PostgreSQL's")
        other = Database(self.engine, reactor)
        other.start()
        self.addCleanup(other.stop)
        node_b = ComposeStore(other, os.urandom(32))
        orders = []
        for i in range(2 * CODES_PER_WINDOW):
            node = self.codes if i % 2 else node_b
            orders.append(node.new_code(f"olga+{i}@outside.example", T0))
        codes = await gatherResults([Deferred.fromCoroutine(o) for o in orders])
        self.assertEqual(len([c for c in codes if c is not None]), CODES_PER_WINDOW)
        rows = await self.db.run(
            lambda txn: txn.execute("SELECT COUNT(*) FROM compose_codes").fetchone()
        )
        self.assertEqual(rows[0], CODES_PER_WINDOW)
