"""Message trace in the console and its API (secmail/web/admin/trace.py) on StubTreq, and the
resend (secmail/resend.py, secmail/store/resend.py), on SQLite and PostgreSQL: the JSON's shape
and what it never holds, 400s, revoke and resend with their audit rows (none for a refused
one), the old link gone after a resend and the new one working."""

from __future__ import annotations

import json
import os
import re
import secrets
from typing import Any

import pyotp
from argon2 import PasswordHasher
from treq.testing import StubTreq

from secmail.admin.accounts import AdminAccounts
from secmail.crypto import DerivedKeys, MasterKey
from secmail.resend import LetterResend
from secmail.store.admins import Actor, AdminStore
from secmail.store.audit import AuditTrail
from secmail.store.messages import hash_token
from secmail.store.portal import PortalStore
from secmail.store.trace import MessageTrace
from secmail.web.admin.console import Console
from secmail.web.portal import Portal
from tests.dbs import on_each_engine
from tests.fixtures import console as fixture_console
from tests.fixtures.intake import BODY, IntakeFixture
from tests.fixtures.mails import parse
from tests.fixtures.portal import BASE, Browser, Reply
from tests.fixtures.settings import make_settings

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
CLI = Actor("root", "local")
BOB = "bob@partner.example"
CAROL = "carol@other.example"
SUBJECT = "Merger plans for Q3"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class ApiClient(Browser):
    """Sends C{Authorization: Bearer} and, for a POST, a JSON body; no cookies."""

    def __init__(self, resource: Any, token: str) -> None:
        super().__init__(resource)
        self.token = token

    async def call(self, method: str, path: str, body: Any = None) -> Reply:
        headers = {"Authorization": [f"Bearer {self.token}"]}
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if body is not None:
            headers["Content-Type"] = ["application/json"]
            kwargs["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        stub: Any = StubTreq(self.resource)
        response = await self._settle(stub, stub.request(method, BASE + path, **kwargs))
        content: bytes = await self._settle(stub, response.content())
        return Reply(response.code, response.headers, content)


@on_each_engine
class AdminTraceMixin(IntakeFixture):
    engine_name = "sqlite"
    mode = "all"

    def setUp(self) -> None:
        super().setUp()
        self.tokens: list[str] = []
        self.accounts = AdminAccounts(
            AdminStore(self.db),
            DerivedKeys(MasterKey(os.urandom(32)), "admin-totp"),
            self.clock,
            hasher=FAST,
        )
        self.trace = MessageTrace(self.db)
        self.resender = LetterResend(
            self.store,
            self.master,
            self.trace,
            lambda: self.settings,
            self.clock,
            on_commit=self.committed,
            new_token=self.new_token,
        )
        self.console = Console(
            self.settings,
            self.accounts,
            AuditTrail(self.db),
            self.clock,
            form_key=os.urandom(32),
            ops=fixture_console.operations(self.db, self.settings, self.master, self.store),
            cluster=fixture_console.cluster(self.db),
            trace=self.trace,
            resender=self.resender,
        )
        self.resource = self.console.app.resource()
        self.portal = Portal(
            self.settings,
            self.store,
            PortalStore(self.db, os.urandom(32)),
            self.clock,
            csrf_key=os.urandom(32),
        ).app.resource()
        self.secrets: dict[str, str] = {}

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self.tokens.append(token)
        return token

    async def api(self, role: str = "helpdesk") -> ApiClient:
        name = f"api-{role}"
        await self.accounts.add(name, role, PASSWORD, CLI)
        token = await self.accounts.make_token(name, CLI)
        assert token is not None
        return ApiClient(self.resource, token)

    async def signed_in(self, name: str, role: str) -> Browser:
        added = await self.accounts.add(name, role, PASSWORD, CLI)
        code = pyotp.TOTP(pyotp.parse_uri(added.uri).secret).at(int(self.clock.seconds()))
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        reply = await browser.post(
            "/signin", {"csrf": form.csrf(), "name": name, "password": PASSWORD, "code": code}
        )
        assert reply.code == 303, reply.text
        return browser

    async def letter(self, *recipients: bytes) -> str:
        message, _ = await self.receive(list(recipients) or [b"bob@partner.example.s"])
        return message.message_id

    async def audit_actions(self) -> list[str]:
        rows = await AuditTrail(self.db).since(0)
        return [r.action for r in rows if r.action in ("revoked", "resent")]

    async def landing(self, token: str) -> int:
        return (await Browser(self.portal).get(f"/m/{token}")).code

    async def sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self.db.run(lambda txn: txn.execute(sql, params).fetchall())

    # --- GET /api/v1/messages ------------------------------------------------------------

    async def test_api_shape_as_the_contract_says(self) -> None:
        """Each message: id, received, sender, recipients (address, level, state, events with
        at, kind, detail); times RFC 3339 UTC; a marked or real recipient finds it."""
        message_id = await self.letter(b"bob@partner.example.s", CAROL.encode())
        api = await self.api()
        for query in ("recipient=bob@partner.example.s", "recipient=BOB@partner.example"):
            reply = await api.call("GET", f"/api/v1/messages?{query}")
            assert reply.code == 200 and reply.header("Content-Type") == "application/json"
            [found] = json.loads(reply.body)
            assert found["id"] == message_id and found["sender"] == "alice@corp.example"
            assert RFC3339.fullmatch(found["received"])
            bob, carol = found["recipients"]
            assert set(bob) == {"address", "level", "state", "events"}
            assert (bob["address"], bob["level"], bob["state"]) == (
                BOB,
                "letter",
                "notification queued",
            )
            assert (carol["address"], carol["level"]) == (CAROL, "relay")
            [event] = bob["events"]
            assert set(event) == {"at", "kind", "detail"} and RFC3339.fullmatch(event["at"])
        assert json.loads((await api.call("GET", "/api/v1/messages?sender=x@y.example")).body) == []
        by_id = await api.call("GET", f"/api/v1/messages?id={message_id[:10]}&since=2000-01-01")
        assert [m["id"] for m in json.loads(by_id.body)] == [message_id]

    async def test_api_never_holds_subject_body_attachments_or_tokens(self) -> None:
        """No subject, body, attachment name or link token anywhere in the JSON: a reply's
        attachment names are shown as "With attachments."."""
        message_id = await self.letter()
        await self.store.add_event(
            message_id, None, "replied", "to alice@corp.example. Attached: Q3-merger.pdf", 1
        )
        api = await self.api()
        await api.call("POST", f"/api/v1/messages/{message_id}/resend")
        body = (await api.call("GET", "/api/v1/messages")).body
        text = body.decode()
        assert "With attachments." in text
        for secret in (SUBJECT, "Merger", BODY.decode(), "Q3-merger.pdf", *self.tokens):
            assert secret not in text, secret
        token_hashes = await self.sql("SELECT token_hash FROM envelopes")
        assert token_hashes and all(h[0] not in text for h in token_hashes)

    async def test_api_bad_parameters_are_400(self) -> None:
        """A bad time, id, address, limit or an unknown parameter: 400 naming it."""
        api = await self.api()
        for query, named in (
            ("since=yesterday", "since"),
            ("until=2026-13-40", "until"),
            ("id=zz", "not a message id"),
            ("recipient=not-an-address", "recipient"),
            ("limit=0", "limit"),
            ("recipent=bob@partner.example", "recipent"),
        ):
            reply = await api.call("GET", f"/api/v1/messages?{query}")
            assert reply.code == 400, query
            assert named in json.loads(reply.body)["error"], (query, reply.body)

    # --- revoke ----------------------------------------------------------------------------

    async def test_api_revoke_with_audit_row_and_portal_410(self) -> None:
        """POST .../revoke withdraws the letter (its link answers 410) with one audit row;
        a refused revoke writes none."""
        message_id = await self.letter()
        api = await self.api()
        for path, code in (
            ("/api/v1/messages/0123456789/revoke", 404),
            ("/api/v1/messages/nonsense/revoke", 400),
        ):
            reply = await api.call("POST", path)
            assert reply.code == code and "error" in json.loads(reply.body), path
        wrong = await api.call(
            "POST", f"/api/v1/messages/{message_id}/revoke", {"recipient": CAROL}
        )
        assert wrong.code == 400 and "not a secure recipient" in json.loads(wrong.body)["error"]
        bad_body = await api.call("POST", f"/api/v1/messages/{message_id}/revoke", b"{not json")
        assert bad_body.code == 400
        assert await self.audit_actions() == []
        reply = await api.call(
            "POST", f"/api/v1/messages/{message_id}/revoke", {"recipient": f"{BOB}.s"}
        )
        assert reply.code == 200, reply.body
        answer = json.loads(reply.body)
        assert answer["revoked"] == [BOB]
        assert answer["message"]["recipients"][0]["state"] == "revoked"
        assert await self.audit_actions() == ["revoked"]
        rows = await AuditTrail(self.db).since(0)
        assert rows[-1].admin == "api-helpdesk" and message_id in (rows[-1].after or "")

    # --- resend ----------------------------------------------------------------------------

    async def test_api_resend_new_link_works_old_does_not(self) -> None:
        """A resend gives a new link (the old one answers 404), resets the browser binding,
        replaces the unsent notification, adds a resent event and one audit row."""
        message_id = await self.letter()
        [envelope_id] = [r[0] for r in await self.sql("SELECT id FROM envelopes")]
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE envelopes SET browser_hash = 'x', opened = 1 WHERE id = ?", (envelope_id,)
            )
        )
        old_hash = (await self.sql("SELECT token_hash FROM envelopes"))[0][0]
        before = [i.message_id for i in await self.rows("notification")]
        commits = self.commits
        api = await self.api()
        reply = await api.call("POST", f"/api/v1/messages/{message_id}/resend")
        assert reply.code == 200, reply.body
        assert json.loads(reply.body)["resent"] == [BOB]
        [token] = self.tokens
        assert await self.landing(token) == 200
        [(new_hash, binding, opened, state)] = await self.sql(
            "SELECT token_hash, browser_hash, opened, state FROM envelopes"
        )
        assert new_hash != old_hash and binding is None and opened is None and state == "notified"
        after = await self.rows("notification")
        assert len(after) == 1 and after[0].message_id not in before
        assert f"+{envelope_id}@" in after[0].sender  # the envelope's VERP address
        content = await self.store.read_all(after[0].message_id)
        assert f"/m/{token}".encode() in content.replace(b"=\r\n", b"")
        assert self.commits == commits + 1
        [found] = await self.trace.search(message_id=message_id)
        assert [e.kind for e in found.recipients[0].events][-1] == "resent"
        assert await self.audit_actions() == ["resent"]

    async def test_old_link_stops_working(self) -> None:
        """The link from the first notification finds nothing after a resend (404)."""
        token = secrets.token_urlsafe(32)
        message_id = await self.letter()
        await self.db.run(
            lambda txn: txn.execute("UPDATE envelopes SET token_hash = ?", (hash_token(token),))
        )
        assert await self.landing(token) == 200
        api = await self.api()
        assert (await api.call("POST", f"/api/v1/messages/{message_id}/resend")).code == 200
        assert await self.landing(token) == 404
        assert await self.landing(self.tokens[0]) == 200

    async def test_revoked_letter_cannot_be_resent(self) -> None:
        """Resend after revoke: 409 saying it was withdrawn; no audit row, nothing queued."""
        message_id = await self.letter()
        api = await self.api()
        assert (await api.call("POST", f"/api/v1/messages/{message_id}/revoke")).code == 200
        reply = await api.call("POST", f"/api/v1/messages/{message_id}/resend")
        assert reply.code == 409
        assert "withdrawn letter cannot be resent" in json.loads(reply.body)["error"]
        assert await self.audit_actions() == ["revoked"]
        assert self.tokens == [] and await self.rows("notification") == []

    async def test_resend_to_one_recipient(self) -> None:
        """{"recipient": ...} limits the resend to that secure recipient."""
        message_id = await self.letter(b"bob@partner.example.s", b"carol@other.example.s")
        hashes = dict(await self.sql("SELECT recipient, token_hash FROM envelopes"))
        api = await self.api()
        reply = await api.call(
            "POST", f"/api/v1/messages/{message_id}/resend", {"recipient": CAROL}
        )
        assert reply.code == 200 and json.loads(reply.body)["resent"] == [CAROL]
        now = dict(await self.sql("SELECT recipient, token_hash FROM envelopes"))
        assert now[BOB] == hashes[BOB] and now[CAROL] != hashes[CAROL]
        assert len(self.tokens) == 1
        rows = await AuditTrail(self.db).since(0)
        assert rows[-1].after == f"message {message_id} to {CAROL}"

    async def test_resent_notification_is_built_as_the_intake_builds_it(self) -> None:
        """The same From name, Subject (shown when the settings say so) and route as the
        first notification, read from the stored message; only the link differs."""
        self.settings = make_settings(
            self.data_dir, secure={"mode": "all", "notification_shows_subject": True}
        )
        self.intake.texts = self.settings.notification_texts
        message_id = await self.letter()
        [first] = await self.rows("notification")
        first_mail = parse(await self.store.read_all(first.message_id))
        api = await self.api()
        assert (await api.call("POST", f"/api/v1/messages/{message_id}/resend")).code == 200
        [again] = await self.rows("notification")
        mail = parse(await self.store.read_all(again.message_id))
        assert mail["Subject"] == first_mail["Subject"]
        assert SUBJECT in mail["Subject"] and "Alice Example" in mail["From"]
        assert (again.route, again.sender, again.recipients) == (
            first.route,
            first.sender,
            first.recipients,
        )

    async def test_resent_on_a_later_day_promises_the_first_deadline(self) -> None:
        """A resend says the letter can be read until its arrival + retention_days, not
        later: the retention job deletes it by its arrival."""
        message_id = await self.letter()
        [first] = await self.rows("notification")
        first_text = (await self.store.read_all(first.message_id)).decode("ascii", "replace")
        self.clock.advance(10 * 86400)
        api = await self.api()
        assert (await api.call("POST", f"/api/v1/messages/{message_id}/resend")).code == 200
        [again] = await self.rows("notification")
        text = (await self.store.read_all(again.message_id)).decode("ascii", "replace")

        def until(mail: str) -> str:
            return mail.split("read the message until", 1)[1].split(".", 1)[0]

        assert until(text) == until(first_text)

    async def test_locked_letter_cannot_be_resent(self) -> None:
        message_id = await self.letter()
        await self.db.run(lambda txn: txn.execute("UPDATE envelopes SET locked = 5"))
        api = await self.api()
        reply = await api.call("POST", f"/api/v1/messages/{message_id}/resend")
        assert reply.code == 409 and "locked" in json.loads(reply.body)["error"]
        assert await self.audit_actions() == []

    async def test_auditor_may_search_but_not_act(self) -> None:
        message_id = await self.letter()
        api = await self.api("auditor")
        assert (await api.call("GET", "/api/v1/messages")).code == 200
        for action in ("revoke", "resend"):
            reply = await api.call("POST", f"/api/v1/messages/{message_id}/{action}")
            assert reply.code == 403, action
        assert await self.audit_actions() == []

    # --- pages -----------------------------------------------------------------------------

    async def test_pages_find_show_and_revoke(self) -> None:
        """Helpdesk finds the letter by recipient, sees its state and PIN events, confirms and
        revokes it (CSRF needed); the portal then answers 410."""
        message_id = await self.letter(b"bob@partner.example.0401234567.s")
        await self.store.add_event(message_id, None, "sms failed", "modem to +35840****567", 2)
        browser = await self.signed_in("hanna", "helpdesk")
        found = await browser.get("/trace?recipient=bob@partner.example")
        assert found.code == 200 and f'href="/trace/{message_id}"' in found.text
        assert SUBJECT not in found.text
        bad = await browser.get("/trace?since=someday")
        assert bad.code == 400 and "since" in bad.text
        page = await browser.get(f"/trace/{message_id}")
        assert page.code == 200 and BOB in page.text and "sms failed" in page.text
        assert "PIN, codes and SMS" in page.text and SUBJECT not in page.text
        assert f'action="/trace/{message_id}/resend"' in page.text
        confirm = await browser.get(f"/trace/{message_id}/revoke?recipient={BOB}")
        assert confirm.code == 200 and "cannot be undone" in confirm.text
        forged = await browser.post(f"/trace/{message_id}/revoke", {"recipient": BOB})
        assert forged.code == 403 and await self.audit_actions() == []
        done = await browser.post(
            f"/trace/{message_id}/revoke", {"csrf": confirm.csrf(), "recipient": BOB}
        )
        assert done.code == 303
        assert done.header("Location") == f"/trace/{message_id}?done=revoked"
        after = await browser.get(f"/trace/{message_id}?done=revoked")
        assert "The letter was withdrawn." in after.text and "withdrawn" in after.text
        assert await self.audit_actions() == ["revoked"]
        again = await browser.post(f"/trace/{message_id}/resend", {"csrf": confirm.csrf()})
        assert again.code == 409 and "cannot be resent" in again.text
        assert await self.audit_actions() == ["revoked"]

    async def test_page_resend_and_auditor_sees_no_buttons(self) -> None:
        message_id = await self.letter()
        auditor = await self.signed_in("ann", "auditor")
        seen = await auditor.get(f"/trace/{message_id}")
        assert seen.code == 200 and "/resend" not in seen.text and "/revoke" not in seen.text
        assert (await auditor.get(f"/trace/{message_id}/revoke")).code == 403
        browser = await self.signed_in("hanna", "helpdesk")
        page = await browser.get(f"/trace/{message_id}")
        done = await browser.post(
            f"/trace/{message_id}/resend", {"csrf": page.csrf(), "recipient": BOB}
        )
        assert done.code == 303 and await self.audit_actions() == ["resent"]
        assert await self.landing(self.tokens[0]) == 200
        missing = await browser.get("/trace/0123456789")
        assert missing.code == 404 and "no message has the id" in missing.text
