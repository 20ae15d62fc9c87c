"""The settings page and /api/v1/settings on StubTreq, on SQLite and PostgreSQL: the GET's
shape and masking, PATCH 200/400/409 with one audit row a changed key (none for a refused
change), roles, the page's read-only keys and forms; and the help texts kept equal to the
comments of etc/secmail.toml."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyotp
from argon2 import PasswordHasher
from treq.testing import StubTreq
from twisted.internet.task import Clock

from secmail.admin.accounts import AdminAccounts
from secmail.config import from_mapping
from secmail.config.cluster import KEYS
from secmail.crypto import DerivedKeys, MasterKey
from secmail.settings import ClusterSettings
from secmail.store.admins import Actor, AdminStore
from secmail.store.audit import AuditRow, AuditTrail
from secmail.web import i18n
from secmail.web.admin.console import Console
from secmail.web.admin.settings_help import HELP, SECTION_HELP, SECTIONS
from tests.dbs import on_each_engine, open_store
from tests.fixtures import console as fixture_console
from tests.fixtures.portal import BASE, Browser, Reply

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
START = 1_800_000_000
CLI = Actor("root", "local")
ORIGIN = "/etc/secmail/node.toml"
PHRASE = "Blue heron at dawn"
HTTP_URL = "https://sms.example/send?user=gw&password=hunter2-secret&to={to}&text={text}"
#: The node's file: one cluster setting fixed by it, one secret node setting.
FILE = {"portal": {"brand_name": "File Ltd"}, "monitoring": {"report_token": "tok-s3cret"}}
EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "secmail.toml"


# --- the help texts and the example file ----------------------------------------------------


def file_comments(text: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """
    The sections of the example file in order, the comment lines above each section header
    (where there are some) and above each key (written, or commented out as an example), each
    comment's lines joined with a space. A key right under another of its section without a
    comment of its own shares that one's.
    """
    order: list[str] = []
    sections: dict[str, tuple[str, ...]] = {}
    keys: dict[str, tuple[str, ...]] = {}
    section, block, last = "", [], ""
    for line in text.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"#?\s*\[([a-z.]+)\]", stripped)
        if header:
            name = header.group(1)
            if name in KEYS:  # a table that is one key: [routes.domains]
                keys[name] = tuple(block)
                last = name
            else:
                if block:
                    sections[name] = tuple(block)
                if name not in order:
                    order.append(name)
            section, block = name, []
            continue
        assignment = re.match(r"#?\s*([a-z_]+)\s*=", stripped)
        if assignment and f"{section}.{assignment.group(1)}" in KEYS:
            name = f"{section}.{assignment.group(1)}"
            shared = keys[last] if last and KEYS[last].section == section else ()
            keys[name] = tuple(block) or shared
            last, block = name, []
            continue
        if stripped.startswith("#"):
            block.append(stripped[1:].strip())
        elif not stripped:
            block = []
    return (
        order,
        {name: " ".join(lines) for name, lines in sections.items()},
        {name: " ".join(lines) for name, lines in keys.items()},
    )


def test_help_texts_are_the_example_files_comments() -> None:
    """Every key's help text on the page is the comment above it in etc/secmail.toml, and
    every key of the configuration has its place there: change one, the test asks for both."""
    order, sections, keys = file_comments(EXAMPLE.read_text(encoding="utf-8"))
    assert list(SECTIONS) == order
    assert SECTION_HELP == sections
    assert HELP == keys
    assert list(HELP) == list(keys) and set(HELP) == set(KEYS)
    assert {KEYS[name].section for name in HELP} == set(SECTIONS)
    assert HELP["portal.verification_phrase"].startswith("A short phrase (at most 40 char")
    assert HELP["smtp.hard_error_limit"] == HELP["smtp.soft_error_limit"]
    assert HELP["sms.smtp.address"] == "" and SECTION_HELP["sms.smtp"]


def test_the_parser_sees_a_changed_comment() -> None:
    """The check above can fail: a comment changed in the file is a different help text."""
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "# Offer STARTTLS to clients", "# Offer STARTTLS to all clients"
    )
    assert file_comments(text)[2] != HELP


# --- the console with the settings, on each engine ------------------------------------------


@on_each_engine
class SettingsConsoleMixin:
    """The settings page and API of the console, on one engine."""

    engine_name: str

    def setUp(self) -> None:
        add_cleanup: Any = self.addCleanup  # type: ignore[attr-defined]
        _, self.db, _, _ = open_store(self.engine_name, add_cleanup)
        self.clock = Clock()
        self.clock.advance(START)
        self.store = AdminStore(self.db)
        self.accounts = AdminAccounts(
            self.store,
            DerivedKeys(MasterKey(os.urandom(32)), "admin-totp"),
            self.clock,
            hasher=FAST,
        )
        self.cluster = ClusterSettings(self.db, FILE, ORIGIN)
        settings = from_mapping({"gateway": {"hostname": "gw.example"}})
        self.console = Console(
            settings,
            self.accounts,
            AuditTrail(self.db),
            self.clock,
            form_key=os.urandom(32),
            ops=fixture_console.operations(self.db, settings),
            cluster=self.cluster,
        )
        self.resource = self.console.app.resource()
        self.secrets: dict[str, str] = {}

    async def add(self, name: str, role: str) -> None:
        added = await self.accounts.add(name, role, PASSWORD, CLI)
        self.secrets[name] = pyotp.parse_uri(added.uri).secret

    async def token(self, name: str, role: str = "admin") -> str:
        await self.add(name, role)
        return await self.accounts.make_token(name, CLI)

    async def signed_in(self, name: str, role: str = "admin") -> Browser:
        await self.add(name, role)
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        code = pyotp.TOTP(self.secrets[name]).at(int(self.clock.seconds()))
        reply = await browser.post(
            "/signin", {"csrf": form.csrf(), "name": name, "password": PASSWORD, "code": code}
        )
        assert reply.code == 303, reply.text
        return browser

    async def api(self, method: str, token: str, body: Any = None, raw: bytes = b"") -> Reply:
        """A request to /api/v1/settings with a Bearer token and a JSON body (or C{raw})."""
        kwargs: dict[str, Any] = {
            "headers": {"Authorization": [f"Bearer {token}"]},
            "allow_redirects": False,
        }
        if body is not None or raw:
            kwargs["data"] = raw or json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = ["application/json"]
        stub: Any = StubTreq(self.resource)
        client = Browser(self.resource)
        response = await client._settle(
            stub, stub.request(method, BASE + "/api/v1/settings", **kwargs)
        )
        content: bytes = await client._settle(stub, response.content())
        return Reply(response.code, response.headers, content)

    async def changes(self) -> list[AuditRow]:
        return [r for r in await AuditTrail(self.db).since(0) if r.setting is not None]

    # --- GET ------------------------------------------------------------------------------

    async def test_get_every_key_with_value_and_source_secrets_masked(self) -> None:
        """Every key as section.key → {value, source}; sources default, file and database;
        a secret from the file or the database is masked, never sent."""
        await self.cluster.set(
            {"sms.http.url": HTTP_URL, "queue.concurrency": 7}, admin="x", address="local", now=1
        )
        reply = await self.api("GET", await self.token("alice"))
        assert reply.code == 200 and reply.header("Content-Type") == "application/json"
        body = json.loads(reply.body)
        assert list(body) == list(KEYS)
        assert all(set(item) == {"value", "source"} for item in body.values())
        assert body["portal.brand_name"] == {"value": "File Ltd", "source": "file"}
        assert body["queue.concurrency"] == {"value": 7, "source": "database"}
        assert body["portal.verification_phrase"] == {"value": "", "source": "default"}
        assert body["gateway.data_dir"]["source"] == "default"  # a node setting: this node's
        assert body["monitoring.report_token"] == {"value": "***", "source": "file"}
        assert body["sms.http.url"]["source"] == "database"
        assert "password=***" in body["sms.http.url"]["value"]
        assert "hunter2" not in reply.text and "tok-s3cret" not in reply.text

    # --- PATCH ----------------------------------------------------------------------------

    async def test_patch_changes_and_audits_each_key_then_null_resets(self) -> None:
        """200 with a GET's body; one audit row per changed key, naming the admin and the
        client's address; an unchanged key writes none; null takes a key back to its default."""
        token = await self.token("alice")
        reply = await self.api(
            "PATCH",
            token,
            {"portal.verification_phrase": PHRASE, "queue.concurrency": 20, "smtp.max_hops": 40},
        )
        assert reply.code == 200, reply.text
        body = json.loads(reply.body)
        assert body == json.loads((await self.api("GET", token)).body)
        assert body["portal.verification_phrase"] == {"value": PHRASE, "source": "database"}
        assert body["smtp.max_hops"] == {"value": 40, "source": "database"}
        rows = await self.changes()
        # queue.concurrency = 20 is its default, now stored: a change of source, and a row
        assert body["queue.concurrency"]["source"] == "database"
        assert sorted((r.setting, r.before, r.after) for r in rows) == [
            ("portal.verification_phrase", '""', f'"{PHRASE}"'),
            ("queue.concurrency", "20", "20"),
            ("smtp.max_hops", "50", "40"),
        ]
        assert {(r.admin, r.address, r.action, r.at) for r in rows} == {
            ("alice", "127.0.0.1", "setting changed", START)
        }
        again = await self.api("PATCH", token, {"portal.verification_phrase": PHRASE})
        assert again.code == 200 and len(await self.changes()) == 3  # the same value: no row
        reset = await self.api("PATCH", token, {"portal.verification_phrase": None})
        assert reset.code == 200
        assert json.loads(reset.body)["portal.verification_phrase"] == {
            "value": "",
            "source": "default",
        }
        last = (await self.changes())[-1]
        assert (last.action, last.setting, last.after) == (
            "setting reset",
            "portal.verification_phrase",
            '""',
        )
        empty = await self.api("PATCH", token)
        assert empty.code == 200 and json.loads(empty.body) == json.loads(reset.body)

    async def test_patch_400_names_the_key_and_changes_nothing(self) -> None:
        """A value the file's rules refuse, an unknown key, a masked secret sent back or a body
        that is no JSON object: 400 with a one-line error, nothing stored, no audit row."""
        token = await self.token("alice")
        before = (await self.api("GET", token)).body
        cases = [
            (
                {"portal.verification_phrase": "x" * 41, "smtp.max_hops": 40},
                "portal.verification_phrase: must be one line of at most 40",
            ),
            ({"smtp.max_hops": "many"}, "smtp.max_hops: must be a whole number"),
            ({"smtp.max_hops": 0}, "smtp.max_hops: must be greater than 0"),
            ({"portal.languages": ["en", "de"]}, "portal.languages: 'de' is not one of"),
            ({"portal.colour": "#ffffff"}, "portal.colour: unknown key"),
            ({"sms.http.url": HTTP_URL.replace("hunter2-secret", "***")}, "sms.http.url: this"),
        ]
        for changes, error in cases:
            reply = await self.api("PATCH", token, changes)
            assert reply.code == 400, (changes, reply.text)
            message = json.loads(reply.body)["error"]
            assert message.startswith(error) and "\n" not in message, message
        for raw in (b"not json", b'["portal.brand_name"]', b"\xff"):
            reply = await self.api("PATCH", token, raw=raw)
            assert reply.code == 400 and "JSON object" in json.loads(reply.body)["error"]
        assert (await self.api("GET", token)).body == before
        assert await self.changes() == []

    async def test_patch_409_for_a_key_fixed_by_the_file_or_a_node_setting(self) -> None:
        """A key the node's file sets and a node setting: 409 naming the key and why; a change
        with such a key changes none of the others."""
        token = await self.token("alice")
        fixed = await self.api(
            "PATCH", token, {"smtp.max_hops": 40, "portal.brand_name": "Database Ltd"}
        )
        assert fixed.code == 409
        assert json.loads(fixed.body)["error"] == (
            f"portal.brand_name: fixed by {ORIGIN}; "
            "remove it there to change it as a cluster setting"
        )
        node = await self.api("PATCH", token, {"gateway.data_dir": "/tmp/elsewhere"})
        assert node.code == 409
        assert json.loads(node.body)["error"].startswith("gateway.data_dir: a node setting")
        listen = await self.api("PATCH", token, {"smtp.listen": ["tcp:25"]})
        assert listen.code == 409
        shown = json.loads((await self.api("GET", token)).body)
        assert shown["smtp.max_hops"] == {"value": 50, "source": "default"}
        assert await self.changes() == []

    async def test_roles_view_reads_full_changes(self) -> None:
        """auditor (view) reads, cannot change; helpdesk (none) neither; refused: no row."""
        auditor = await self.token("ann", "auditor")
        helpdesk = await self.token("hal", "helpdesk")
        assert (await self.api("GET", auditor)).code == 200
        for token in (auditor, helpdesk):
            reply = await self.api("PATCH", token, {"portal.verification_phrase": PHRASE})
            assert reply.code == 403 and "settings" in json.loads(reply.body)["error"]
        assert (await self.api("GET", helpdesk)).code == 403
        assert (await self.api("GET", "x" * 43)).code == 401
        assert await self.changes() == []

    # --- the page -------------------------------------------------------------------------

    async def test_page_groups_keys_with_help_source_and_read_only_reasons(self) -> None:
        """Sections in the file's order, each key with its help text, value and source; the
        file's key and the node settings read-only saying why; a form with CSRF for others;
        a secret's value is never put in a field."""
        await self.cluster.set({"sms.http.url": HTTP_URL}, admin="x", address="local", now=1)
        browser = await self.signed_in("alice")
        page = await browser.get("/settings")
        assert page.code == 200, page.text
        text = page.text
        assert 'href="/settings" aria-current="page"' in text
        headings = re.findall(r"<h2>\[([a-z.]+)\]</h2>", text)
        assert headings == list(SECTIONS)
        assert "A short phrase (at most 40 characters) chosen by the organisation" in text
        assert "Default: secmail-bounces@&lt;hostname&gt;" in text  # the file's words, escaped

        def block(name: str) -> str:
            found = re.search(
                rf'<div class="setting[^"]*" id="k-{re.escape(name)}">(.*?)</div>\s*'
                r'(?=<div class="setting|</section>)',
                text,
                re.S,
            )  # noqa: E501
            assert found, name
            return found.group(1)

        brand = block("portal.brand_name")
        assert "File Ltd" in brand and "<form" not in brand and f"fixed by {ORIGIN}" in brand
        data_dir = block("gateway.data_dir")
        assert "<form" not in data_dir and "a node setting" in data_dir
        phrase = block("portal.verification_phrase")
        assert 'name="key" value="portal.verification_phrase"' in phrase
        assert f'name="csrf" value="{page.csrf()}"' in phrase and ">default<" in phrase
        url = block("sms.http.url")
        assert "hunter2" not in text and "password=***" in url and ">database<" in url
        assert re.search(r'<input type="text" id="v-sms.http.url" name="value" value=""', url)

    async def test_page_in_finnish_with_translated_help(self) -> None:
        """The help texts come in the page's language, from the catalogue."""
        browser = await self.signed_in("alice")
        browser.cookies[i18n.LANG_COOKIE.decode()] = "fi"
        page = await browser.get("/settings")
        assert "<h1>Asetukset</h1>" in page.text
        assert "Organisaation valitsema lyhyt tunnuslause (enintään 40 merkkiä)" in page.text
        assert "secmail-bounces@&lt;hostname&gt;" in page.text
        assert "A short phrase" not in page.text

    async def test_page_form_changes_a_key_and_shows_errors_next_to_it(self) -> None:
        """A key's form stores its value (303 back, audited as the admin); a refused value
        shows its one-line error next to the key (400, nothing stored); a form without the
        session's CSRF token is refused (403); reset takes the default back."""
        browser = await self.signed_in("alice")
        page = await browser.get("/settings")
        form = {"csrf": page.csrf(), "key": "portal.verification_phrase", "do": "set"}
        saved = await browser.post("/settings", form | {"value": PHRASE})
        assert saved.code == 303
        assert saved.header("Location") == (
            "/settings?saved=portal.verification_phrase#k-portal.verification_phrase"
        )
        shown = await self.cluster.show()
        assert shown["portal.verification_phrase"] == (PHRASE, "database")
        ints = await browser.post(
            "/settings", form | {"key": "smtp.max_hops", "value": "40"}
        )  # typed as TOML: a number
        assert ints.code == 303 and (await self.cluster.show())["smtp.max_hops"][0] == 40
        after = await browser.get("/settings?saved=smtp.max_hops")
        assert "Saved: smtp.max_hops" in after.text
        bad = await browser.post("/settings", form | {"key": "smtp.max_hops", "value": "0"})
        assert bad.code == 400
        assert re.search(
            r'<p class="error" role="alert" id="e-smtp.max_hops">Not saved: '
            r"smtp.max_hops: must be greater than 0, got 0</p>",
            bad.text,
        ), bad.text
        assert 'id="v-smtp.max_hops" name="value" value="0" ' in bad.text  # kept to mend
        fixed = await browser.post("/settings", form | {"key": "portal.brand_name", "value": "Y"})
        assert fixed.code == 409 and f"fixed by {ORIGIN}" in fixed.text
        forged = await browser.post("/settings", form | {"csrf": "x" * 40, "value": "Forged"})
        assert forged.code == 403
        rows = await self.changes()
        assert [(r.admin, r.setting, r.after) for r in rows] == [
            ("alice", "portal.verification_phrase", f'"{PHRASE}"'),
            ("alice", "smtp.max_hops", "40"),
        ]
        reset = await browser.post("/settings", form | {"do": "reset", "value": ""})
        assert reset.code == 303
        assert (await self.cluster.show())["portal.verification_phrase"] == ("", "default")

    async def test_page_read_only_without_full_rights(self) -> None:
        """An auditor sees the settings and no form; a POST from its session is refused."""
        browser = await self.signed_in("ann", "auditor")
        page = await browser.get("/settings")
        assert page.code == 200 and "<h2>[portal]</h2>" in page.text
        assert 'name="key"' not in page.text
        home = await browser.get("/")
        refused = await browser.post(
            "/settings",
            {"csrf": home.csrf(), "key": "portal.verification_phrase", "value": PHRASE},
        )
        assert refused.code == 403 and await self.changes() == []
        desk = await self.signed_in("hal", "helpdesk")
        assert (await desk.get("/settings")).code == 403
        assert 'href="/settings"' not in (await desk.get("/")).text
