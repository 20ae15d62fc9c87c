"""The admin console and API on StubTreq: every guarded route × none/view/full, sign-in,
cookies and headers, CSRF, the audit page and API, and the split from the portal."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pyotp
from argon2 import PasswordHasher
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from secmail.admin.accounts import AdminAccounts
from secmail.admin.roles import FULL, LEVELS, NONE, VIEW, Role
from secmail.config import from_mapping
from secmail.crypto import DerivedKeys, MasterKey
from secmail.store.admins import Actor, AdminStore
from secmail.store.audit import AuditTrail
from secmail.web.admin.access import REGISTRY, SESSION_COOKIE, Endpoint
from secmail.web.admin.console import Console
from secmail.web.layout import PAGE_CSP
from tests.dbs import open_store
from tests.fixtures import console as fixture_console
from tests.fixtures.portal import BASE, Browser, PortalFixture, Reply

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
START = 1_800_000_000
CLI = Actor("root", "local")
RANK = {NONE: 0, VIEW: 1, FULL: 2}
SESSION = SESSION_COOKIE.decode()


def concrete(path: str) -> str:
    """A registered path with each <placeholder> filled in (no such row need exist)."""
    return re.sub(r"<[^>]+>", "1", path)


def needs_more(endpoint: Endpoint) -> bool:
    """A route that needs a row or a body the matrix does not give (a 400 or 404 is its
    answer once the guard let the request through); plain GETs and role forms need none."""
    return (
        "<" in endpoint.path
        or endpoint.method not in ("GET", "POST")
        or (endpoint.method == "POST" and endpoint.path != "/admins/roles")
    )


class ApiClient(Browser):
    """A client that sends C{Authorization: Bearer} (or nothing) and no cookies."""

    def __init__(self, resource: Any, token: str | None) -> None:
        super().__init__(resource)
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | bytes | None = None,
        content_type: str | None = None,
    ) -> Reply:
        headers = {"Authorization": [f"Bearer {self.token}"]} if self.token else {}
        stub: Any = StubTreq(self.resource)
        response = await self._settle(
            stub, stub.request(method, BASE + path, headers=headers, allow_redirects=False)
        )
        body: bytes = await self._settle(stub, response.content())
        return Reply(response.code, response.headers, body)


class ConsoleTests(TestCase):
    def setUp(self) -> None:
        _, self.db, master, store = open_store("sqlite", self.addCleanup)
        self.clock = Clock()
        self.clock.advance(START)
        self.store = AdminStore(self.db)
        self.accounts = AdminAccounts(
            self.store,
            DerivedKeys(MasterKey(os.urandom(32)), "admin-totp"),
            self.clock,
            hasher=FAST,
        )
        settings = from_mapping({"gateway": {"hostname": "gw.example"}})
        self.console = Console(
            settings,
            self.accounts,
            AuditTrail(self.db),
            self.clock,
            form_key=os.urandom(32),
            ops=fixture_console.operations(self.db, settings, master, store),
            cluster=fixture_console.cluster(self.db),
        )
        self.resource = self.console.app.resource()
        self.secrets: dict[str, str] = {}

    async def add(self, name: str, role: str) -> None:
        added = await self.accounts.add(name, role, PASSWORD, CLI)
        self.secrets[name] = pyotp.parse_uri(added.uri).secret

    def code(self, name: str) -> str:
        return pyotp.TOTP(self.secrets[name]).at(int(self.clock.seconds()))  # type: ignore[no-any-return]

    async def signed_in(self, name: str, role: str = "admin") -> Browser:
        """A browser that signed in through the form."""
        await self.add(name, role)
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        reply = await browser.post(
            "/signin",
            {"csrf": form.csrf(), "name": name, "password": PASSWORD, "code": self.code(name)},
        )
        assert reply.code == 303 and reply.header("Location") == "/", reply.text
        return browser

    # --- the registry ----------------------------------------------------------------------

    async def test_every_route_by_role_level(self) -> None:
        """Each registered page and API endpoint × none/view/full: 200 (303 after a form)
        when the level is enough, else 403; the API without a valid token 401."""
        pages = [e for e in REGISTRY if not e.api]
        apis = [e for e in REGISTRY if e.api]
        assert pages and apis
        wrong: list[tuple[Endpoint, str, int]] = []
        for n, endpoint in enumerate(REGISTRY):
            for level in LEVELS:
                role = f"r{n}-{level}"
                await self.store.save_role(Role(role, {endpoint.area: level}), START, CLI)
                name = f"u{n}-{level}"
                allowed = RANK[level] >= RANK[endpoint.need]
                path = concrete(endpoint.path)
                if endpoint.api:
                    await self.add(name, role)
                    token = await self.accounts.make_token(name, CLI)
                    reply = await ApiClient(self.resource, token).request(endpoint.method, path)
                    expected = {200} if allowed else {403}
                    if reply.code in (400, 403, 404):
                        assert "error" in json.loads(reply.body)
                else:
                    browser = await self.signed_in(name, role)
                    if endpoint.method == "GET":
                        reply = await browser.get(path)
                        expected = {200} if allowed else {403}
                    else:
                        home = await browser.get("/")
                        reply = await browser.post(
                            path, {"csrf": home.csrf(), "name": f"made{n}{level}"}
                        )
                        expected = {303} if allowed else {403}
                if allowed and needs_more(endpoint):
                    expected |= {400, 404, 409}  # past the guard, the route says what is wrong
                if reply.code not in expected:
                    wrong.append((endpoint, level, reply.code))
            if endpoint.api:
                for token in (None, "x" * 43):
                    reply = await ApiClient(self.resource, token).request(
                        endpoint.method, concrete(endpoint.path)
                    )
                    if reply.code != 401 or "error" not in json.loads(reply.body):
                        wrong.append((endpoint, f"token {token}", reply.code))
            else:
                reply = await Browser(self.resource).request(
                    endpoint.method, concrete(endpoint.path)
                )
                if reply.code != 303 or reply.header("Location") != "/signin":
                    wrong.append((endpoint, "signed out", reply.code))
        assert wrong == []

    # --- sign-in ---------------------------------------------------------------------------

    async def test_sign_in_cookie_and_headers(self) -> None:
        """The session cookie is __Host-, Secure, HttpOnly, SameSite=Strict; pages carry the
        portal's strict headers; the home page names the admin and only pages that exist."""
        await self.add("alice", "admin")
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        assert form.code == 200 and form.header("Content-Security-Policy") == PAGE_CSP.decode()
        assert form.header("X-Frame-Options") == "DENY"
        reply = await browser.post(
            "/signin",
            {
                "csrf": form.csrf(),
                "name": "alice",
                "password": PASSWORD,
                "code": self.code("alice"),
            },
        )
        value, attributes = reply.set_cookies()[SESSION]
        assert value and attributes["samesite"].lower() == "strict"
        assert {"secure", "httponly"} <= attributes.keys() and attributes["path"] == "/"
        home = await browser.get("/")
        assert home.code == 200 and "alice" in home.text
        assert re.findall(r'<nav class="menu".*?</nav>', home.text) and 'href="/audit"' in home.text
        assert 'href="/trace"' in home.text
        assert 'href="/settings"' in home.text
        assert home.header("Strict-Transport-Security") is not None
        assert home.header("Cache-Control") == "no-store"

    async def test_sign_in_form_needs_its_csrf_token(self) -> None:
        await self.add("alice", "admin")
        browser = Browser(self.resource)
        await browser.get("/signin")
        reply = await browser.post(
            "/signin", {"name": "alice", "password": PASSWORD, "code": self.code("alice")}
        )
        assert reply.code == 403 and SESSION not in reply.set_cookies()
        rows = await AuditTrail(self.db).since(0)
        assert [r.action for r in rows] == ["admin added"]  # no sign-in was tried

    async def test_wrong_code_shows_one_message(self) -> None:
        await self.add("alice", "admin")
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        reply = await browser.post(
            "/signin",
            {"csrf": form.csrf(), "name": "alice", "password": PASSWORD, "code": "000000"},
        )
        assert reply.code == 401 and "The name, password or code is wrong." in reply.text
        assert PASSWORD not in reply.text
        assert SESSION not in reply.set_cookies()

    async def test_sign_out(self) -> None:
        """Sign-out (a form with the session's CSRF token) ends the session and is audited."""
        browser = await self.signed_in("alice")
        home = await browser.get("/")
        forged = await browser.post("/signout", {"csrf": "nope"})
        assert forged.code == 403 and (await browser.get("/admins")).code == 200
        reply = await browser.post("/signout", {"csrf": home.csrf()})
        assert reply.code == 303 and reply.header("Location") == "/signin?out=1"
        assert (await browser.get("/admins")).code == 303
        assert [r.action for r in await AuditTrail(self.db).since(0)][-1] == "sign-out"

    async def test_session_idle_limit_signs_out(self) -> None:
        browser = await self.signed_in("alice")
        self.clock.advance(15 * 60 + 1)
        reply = await browser.get("/audit")
        assert reply.code == 303 and reply.header("Location") == "/signin"

    # --- pages -----------------------------------------------------------------------------

    async def test_make_role_needs_csrf_and_is_audited(self) -> None:
        browser = await self.signed_in("alice")
        page = await browser.get("/admins")
        assert "Make a role" in page.text and "helpdesk" in page.text
        refused = await browser.post("/admins/roles", {"name": "desk2", "trace": "view"})
        assert refused.code == 403 and await self.store.role("desk2") is None
        made = await browser.post(
            "/admins/roles", {"csrf": page.csrf(), "name": "desk2", "trace": "view", "queue": "x"}
        )
        assert made.code == 303
        role = await self.store.role("desk2")
        assert role is not None and role.level("trace") == VIEW and role.level("queue") == NONE
        bad = await browser.post("/admins/roles", {"csrf": page.csrf(), "name": "Bad Name"})
        assert bad.code == 400 and "lower-case" in bad.text
        builtin = await browser.post("/admins/roles", {"csrf": page.csrf(), "name": "admin"})
        assert builtin.code == 400
        rows = await AuditTrail(self.db).since(0)
        assert [(r.admin, r.action) for r in rows if r.action.startswith("role")] == [
            ("alice", "role made")
        ]

    async def test_no_role_gives_more_than_its_maker_has(self) -> None:
        """Full rights on "admins" alone make no role with other rights, nor change one's own."""
        await self.store.save_role(Role("keeper", {"admins": FULL}), START, CLI)
        browser = await self.signed_in("kim", "keeper")
        page = await browser.get("/admins")
        for form in (
            {"name": "keeper", "admins": "full", "settings": "full"},  # its own role
            {"name": "wider", "settings": "full"},  # a right it does not have
            {"name": "wider", "audit": "view"},
        ):
            refused = await browser.post("/admins/roles", {"csrf": page.csrf(), **form})
            assert refused.code == 403 and "only rights your own role has" in refused.text
        assert await self.store.role("wider") is None
        keeper = await self.store.role("keeper")
        assert keeper is not None and keeper.level("settings") == NONE
        made = await browser.post(
            "/admins/roles", {"csrf": page.csrf(), "name": "narrow", "admins": "view"}
        )
        assert made.code == 303

    async def test_auditor_sees_admins_without_the_form(self) -> None:
        browser = await self.signed_in("ann", "auditor")
        page = await browser.get("/admins")
        assert page.code == 200 and "Make a role" not in page.text

    async def test_audit_page_lists_sign_ins_since_a_date(self) -> None:
        browser = await self.signed_in("alice")
        page = await browser.get("/audit")
        assert page.code == 200 and "sign-in" in page.text and "admin added" in page.text
        later = await browser.get("/audit?since=2030-01-01")
        assert "sign-in" not in later.text and "Nothing was recorded" in later.text
        bad = await browser.get("/audit?since=yesterday")
        assert "YYYY-MM-DD" in bad.text

    async def test_api_failures_are_json(self) -> None:
        """Whatever goes wrong under /api/ (a bad number, the database, a fault) is JSON."""
        await self.signed_in("alice")
        api = ApiClient(self.resource, await self.accounts.make_token("alice", CLI))
        bad = await api.get("/api/v1/messages?limit=%C2%B2")  # a digit, but not 0-9
        assert bad.code == 400 and "error" in json.loads(bad.body)

        async def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("the disk is on fire")

        self.console.trail.since = broken  # type: ignore[method-assign]
        failed = await api.get("/api/v1/audit")
        assert failed.code == 500 and failed.header("Content-Type") == "application/json"
        assert json.loads(failed.body) == {"error": "a temporary problem on the gateway; try again"}
        assert len(self.flushLoggedErrors(RuntimeError)) == 1

    async def test_a_wrong_method_is_405_naming_the_right_ones(self) -> None:
        await self.signed_in("alice")
        api = ApiClient(self.resource, await self.accounts.make_token("alice", CLI))
        wrong = await api.request("DELETE", "/api/v1/settings")
        assert wrong.code == 405 and wrong.header("Allow") == "GET, PATCH"
        assert "error" in json.loads(wrong.body)
        nothing = await api.get("/api/v1/nothing")
        assert nothing.code == 404 and "error" in json.loads(nothing.body)

    async def test_api_audit_as_the_contract_says(self) -> None:
        """GET /api/v1/audit?since=: at, admin, address, action; key/before/after only where
        they apply; 400 with a JSON error for a bad since."""
        await self.signed_in("alice")
        token = await self.accounts.make_token("alice", CLI)
        api = ApiClient(self.resource, token)
        reply = await api.get("/api/v1/audit?since=2027-01-15T08:00:00Z")
        assert reply.code == 200 and reply.header("Content-Type") == "application/json"
        rows = json.loads(reply.body)
        assert [r["action"] for r in rows] == ["admin added", "sign-in", "token made"]
        assert rows[1] == {
            "at": "2027-01-15T08:00:00Z",
            "admin": "alice",
            "address": rows[1]["address"],
            "action": "sign-in",
        }
        assert rows[0]["after"] == "alice (admin)" and "key" not in rows[0]
        none = json.loads((await api.get("/api/v1/audit?since=2030-01-01T00:00:00Z")).body)
        assert none == []
        bad = await api.get("/api/v1/audit?since=soon")
        assert bad.code == 400 and "since" in json.loads(bad.body)["error"]
        unknown = await api.get("/api/v1/nothing")
        assert unknown.code == 404 and "error" in json.loads(unknown.body)

    async def test_no_portal_pages_here(self) -> None:
        """The console's app has none of the portal's routes."""
        browser = Browser(self.resource)
        for path in ("/m/" + "t" * 43, "/read", "/compose", "/static/portal.css", "/static/logo"):
            assert (await browser.get(path)).code == 404, path


class PortalHasNoConsoleTests(PortalFixture):
    async def test_portal_answers_404_for_the_console_and_api(self) -> None:
        browser = self.browser()
        for path in ("/api/v1/audit", "/api/v1/settings", "/signin", "/admins", "/audit"):
            assert (await browser.get(path)).code == 404, path
        assert (await browser.post("/signin", {"name": "a"})).code in (404, 405)
