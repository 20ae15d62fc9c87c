"""The console's overview, queue, SMS outbox, phone and D-Compose directory pages and their API
(GET/POST/DELETE queue, GET sms, GET/PUT/DELETE phones, GET stats), on SQLite and PostgreSQL:
the JSON each answers, the audit row each change writes (and none for a refused one), the
phone directory's checks (those of `secmail phones add`), and what each built-in role may do."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pyotp
from argon2 import PasswordHasher
from treq.testing import StubTreq
from twisted.internet.task import Clock

from secmail.admin.accounts import AdminAccounts
from secmail.config import from_mapping
from secmail.config.cluster import LiveSettings
from secmail.crypto import DerivedKeys
from secmail.monitoring.summary import LINES
from secmail.store.admins import Actor, AdminStore
from secmail.store.audit import AuditRow, AuditTrail
from secmail.store.messages import NewDelivery, NewMessage, new_id
from secmail.store.sms import SmsStore, queue_sms_txn
from secmail.store.spool import SealedBytes
from secmail.store.stats import DailyStats
from secmail.web.admin.console import Console
from secmail.web.admin.overview import Operations, bars, parse_days
from tests.dbs import on_each_engine, open_store
from tests.fixtures import console as fixture_console
from tests.fixtures.portal import BASE, Browser, Reply

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
START = 1_800_000_000  # 2027-01-15T08:00:00Z
TODAY = "2027-01-15"
CLI = Actor("root", "local")
NUMBER = "+358401234567"


class Api:
    """A client with C{Authorization: Bearer} and a JSON body, no cookies."""

    def __init__(self, resource: Any, token: str) -> None:
        self.resource = resource
        self.token = token
        self.pump = Browser(resource)

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        headers = {"Authorization": [f"Bearer {self.token}"]}
        kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False}
        if body is not None or raw is not None:
            kwargs["data"] = raw if raw is not None else json.dumps(body).encode()
            headers["Content-Type"] = ["application/json"]
        stub: Any = StubTreq(self.resource)
        response = await self.pump._settle(stub, stub.request(method, BASE + path, **kwargs))
        content: bytes = await self.pump._settle(stub, response.content())
        return Reply(response.code, response.headers, content)


def answer(reply: Reply, code: int = 200) -> Any:
    assert reply.code == code, (reply.code, reply.text)
    assert reply.header("Content-Type") == "application/json"
    return json.loads(reply.body)


@on_each_engine
class OperationsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, self.master, self.store = open_store(self.engine_name, self.addCleanup)
        self.clock = Clock()
        self.clock.advance(START)
        self.accounts = AdminAccounts(
            AdminStore(self.db),
            DerivedKeys(self.master, "admin-totp"),
            self.clock,
            hasher=FAST,
        )
        self.settings = from_mapping(
            {
                "gateway": {"hostname": "gw.example"},
                "routes": {
                    "incoming_domains": ["org.example"],
                    "incoming": "smtp://mail.org.example:25",
                },
                "portal": {"compose_directory": ["sales@org.example", "help@org.example"]},
            }
        )
        self.sms = SmsStore(self.db, DerivedKeys(self.master, "sms-outbox"))
        self.stats = DailyStats(self.db)
        console = Console(
            self.settings,
            self.accounts,
            AuditTrail(self.db),
            self.clock,
            form_key=os.urandom(32),
            ops=Operations(self.store, self.sms, self.stats.days, LiveSettings(self.settings)),
            cluster=fixture_console.cluster(self.db),
        )
        self.resource = console.app.resource()
        self.totp: dict[str, str] = {}

    async def api(self, name: str, role: str) -> Api:
        await self.accounts.add(name, role, PASSWORD, CLI)
        return Api(self.resource, await self.accounts.make_token(name, CLI))

    async def browser(self, name: str, role: str) -> Browser:
        added = await self.accounts.add(name, role, PASSWORD, CLI)
        secret = pyotp.parse_uri(added.uri).secret
        browser = Browser(self.resource)
        form = await browser.get("/signin")
        code = pyotp.TOTP(secret).at(int(self.clock.seconds()))
        reply = await browser.post(
            "/signin", {"csrf": form.csrf(), "name": name, "password": PASSWORD, "code": code}
        )
        assert reply.code == 303, reply.text
        return browser

    async def audit(self) -> list[AuditRow]:
        rows = await AuditTrail(self.db).since(0)
        return [r for r in rows if r.action not in ("admin added", "token made", "sign-in")]

    async def enqueue(self, kind: str = "relay", to: str = "bob@partner.example") -> int:
        message = NewMessage(
            content=SealedBytes(self.master, new_id(), b"Subject: hi\r\n\r\nhello\r\n"),
            kind="mail",
            sender="alice@org.example",
            deliveries=[
                NewDelivery(kind, "alice@org.example", (to,), "mx", to.partition("@")[2], "")
            ],
        )
        [queue_id] = await self.store.commit([message], now=START - 3 * 3600)
        return int(queue_id)

    async def outbox_row(self, error: str = "") -> None:
        message = NewMessage(
            content=SealedBytes(self.master, new_id(), b"x"), kind="mail", sender="a@org.example"
        )
        await self.store.commit([message], now=START)

        def txn_(txn: Any) -> None:
            queue_sms_txn(
                txn,
                self.sms.sealer,
                message_id=message.content.message_id,
                envelope_id=None,
                number=NUMBER,
                text="PIN 123456",
                now=START,
                expires=START + 600,
            )
            txn.execute("UPDATE sms_outbox SET last_error = ?", (error,))

        await self.db.run(txn_)

    # --- the queue ---------------------------------------------------------------------

    async def test_api_queue_lists_retries_and_deletes_with_audit_rows(self) -> None:
        """GET lists each row (RFC 3339 times, an SMS's number masked); POST …/retry makes it
        due now and DELETE drops it, each with its audit row; an unknown row is a JSON 404
        and writes none."""
        relay = await self.enqueue()
        sms = await self.enqueue("sms", "358401234567@sms.example")
        api = await self.api("alice", "admin")
        rows = answer(await api.call("GET", "/api/v1/queue"))
        assert [r["id"] for r in rows] == [relay, sms]
        assert rows[0] | {"message_id": ""} == {
            "id": relay,
            "message_id": "",
            "kind": "relay",
            "state": "queued",
            "sender": "alice@org.example",
            "recipients": ["bob@partner.example"],
            "route": "mx",
            "created": "2027-01-15T05:00:00Z",
            "next_attempt": "2027-01-15T05:00:00Z",
            "attempts": 0,
            "last_error": "",
            "quarantined": None,
        }
        assert rows[1]["recipients"] == ["+358 40 *** **67@sms.example"]
        assert "401234567" not in json.dumps(rows)

        self.clock.advance(60)
        done = answer(await api.call("POST", f"/api/v1/queue/{relay}/retry"))
        assert done == {"id": relay, "retried": True, "released": False}
        found = await self.store.queue_row(relay)
        assert found is not None and found[0].next_attempt == START + 60
        gone = answer(await api.call("DELETE", f"/api/v1/queue/{sms}"))
        assert gone == {"id": sms, "deleted": True}
        assert [i.id for i in await self.store.queue_list()] == [relay]
        missing = answer(await api.call("POST", "/api/v1/queue/99999/retry"), 404)
        assert "99999" in missing["error"]
        answer(await api.call("DELETE", "/api/v1/queue/99999"), 404)

        audit = await self.audit()
        assert [(r.admin, r.action) for r in audit] == [
            ("alice", "queue row retried"),
            ("alice", "queue row deleted"),
        ]
        assert audit[0].after == f"queue row {relay}: relay to bob@partner.example via mx"
        assert audit[1].before == f"queue row {sms}: sms to +358 40 *** **67@sms.example via mx"
        assert audit[0].at == START + 60 and audit[0].address != ""

    async def test_helpdesk_sees_the_queue_but_cannot_change_it(self) -> None:
        row = await self.enqueue()
        api = await self.api("hank", "helpdesk")
        assert len(answer(await api.call("GET", "/api/v1/queue"))) == 1
        refused = answer(await api.call("POST", f"/api/v1/queue/{row}/retry"), 403)
        assert "queue" in refused["error"]
        answer(await api.call("DELETE", f"/api/v1/queue/{row}"), 403)
        assert len(await self.store.queue_list()) == 1 and await self.audit() == []

    async def test_queue_page_retry_and_delete_after_confirmation(self) -> None:
        """The page lists rows; Retry is a form (303 back with a notice); Delete first shows a
        confirmation, then the form drops the row; both audited. The auditor gets no forms."""
        row = await self.enqueue()
        browser = await self.browser("alice", "admin")
        page = await browser.get("/queue")
        assert page.code == 200 and f'id="row-{row}"' in page.text
        assert "bob@partner.example" in page.text and "Retry now" in page.text
        retried = await browser.post("/queue/retry", {"csrf": page.csrf(), "id": str(row)})
        assert retried.code == 303 and retried.header("Location") == f"/queue?retried={row}"
        notice = await browser.get(f"/queue?retried={row}")
        assert f"Queue row {row} will be tried at the next queue scan." in notice.text
        asked = await browser.get(f"/queue?delete={row}")
        assert f"Delete queue row {row}?" in asked.text
        forged = await browser.post("/queue/delete", {"csrf": "nope", "id": str(row)})
        assert forged.code == 403 and len(await self.store.queue_list()) == 1
        deleted = await browser.post("/queue/delete", {"csrf": asked.csrf(), "id": str(row)})
        assert deleted.code == 303 and await self.store.queue_list() == []
        again = await browser.post("/queue/delete", {"csrf": asked.csrf(), "id": str(row)})
        assert again.header("Location") == f"/queue?missing={row}"
        bad = await browser.post("/queue/retry", {"csrf": asked.csrf(), "id": "x"})
        assert bad.code == 400 and "The form named no queue row." in bad.text
        assert [r.action for r in await self.audit()] == ["queue row retried", "queue row deleted"]

        await self.enqueue()
        auditor = await self.browser("ann", "auditor")
        seen = await auditor.get(f"/queue?delete={row}")
        assert seen.code == 200 and "bob@partner.example" in seen.text
        assert "Retry now" not in seen.text and "Delete queue row" not in seen.text

    # --- the SMS outbox ----------------------------------------------------------------

    async def test_sms_outbox_numbers_masked(self) -> None:
        """GET /api/v1/sms and the page show each row with its number masked as the CLI does,
        in the last error too, and never the text (it carries the PIN)."""
        await self.outbox_row(error=f"gateway refused {NUMBER}: 400")
        api = await self.api("hank", "helpdesk")
        [row] = answer(await api.call("GET", "/api/v1/sms"))
        assert row["number"] == "+358 40 *** **67"
        assert row["last_error"] == "gateway refused +358 40 *** **67: 400"
        assert row["expires"] == "2027-01-15T08:10:00Z" and row["attempts"] == 0
        assert "123456" not in json.dumps(row) and "401234567" not in json.dumps(row)
        page = await (await self.browser("ann", "auditor")).get("/sms")
        assert page.code == 200 and "+358 40 *** **67" in page.text
        assert "401234567" not in page.text and "123456" not in page.text

    # --- the phone directory -----------------------------------------------------------

    async def test_api_phones_put_list_delete_with_audit_rows(self) -> None:
        """PUT checks like `secmail phones add` (national form with the default country code,
        address lower-cased), answers the entry and whether it was new; GET lists; DELETE
        removes; each change one audit row with the number masked."""
        api = await self.api("hank", "helpdesk")
        added = answer(
            await api.call("PUT", "/api/v1/phones/Bob@Partner.Example", {"number": "040 123 4567"})
        )
        assert added == {
            "address": "bob@partner.example",
            "number": NUMBER,
            "changed": "2027-01-15T08:00:00Z",
            "added": True,
        }
        changed = answer(
            await api.call(
                "PUT", "/api/v1/phones/bob@partner.example", {"number": "+358 50 7654321"}
            )
        )
        assert changed["added"] is False and changed["number"] == "+358507654321"
        listed = answer(await api.call("GET", "/api/v1/phones"))
        assert listed == [
            {
                "address": "bob@partner.example",
                "number": "+358507654321",
                "changed": "2027-01-15T08:00:00Z",
            }
        ]
        removed = answer(await api.call("DELETE", "/api/v1/phones/bob@partner.example"))
        assert removed == {"address": "bob@partner.example", "removed": True}
        missing = answer(await api.call("DELETE", "/api/v1/phones/bob@partner.example"), 404)
        assert missing == {"error": "bob@partner.example is not in the phone directory"}
        audit = await self.audit()
        assert [(r.action, r.before, r.after) for r in audit] == [
            ("phone number added", None, "bob@partner.example +358 40 *** **67"),
            (
                "phone number changed",
                "bob@partner.example +358 40 *** **67",
                "bob@partner.example +358 50 *** **21",
            ),
            ("phone number removed", "bob@partner.example +358 50 *** **21", None),
        ]
        assert all(r.admin == "hank" for r in audit)

    async def test_api_phones_refuses_bad_input_with_one_line(self) -> None:
        """A bad number, address or body: 400 with the CLI's one-line error; nothing stored,
        no audit row."""
        api = await self.api("alice", "admin")
        cases = [
            (
                "bob@partner.example",
                {"number": "401234567"},
                "write the number with its country code",
            ),
            ("bob@partner.example", {"number": "+358 12"}, "is not a valid phone number"),
            (
                "bob@partner.example",
                {"number": "+0358401234567"},
                "a country code does not start with 0",
            ),
            ("no-at-sign", {"number": NUMBER}, "must contain exactly one @"),
            ("bob@partner.example", {"numero": NUMBER}, '{"number":'),
            ("bob@partner.example", [NUMBER], '{"number":'),
        ]
        for address, body, words in cases:
            error = answer(await api.call("PUT", f"/api/v1/phones/{address}", body), 400)["error"]
            assert words in error and "\n" not in error, (body, error)
        not_json = answer(await api.call("PUT", "/api/v1/phones/b@p.example", raw=b"{"), 400)
        assert "not JSON" in not_json["error"]
        too_long = answer(await api.call("PUT", "/api/v1/phones/b@p.example", raw=b" " * 5000), 400)
        assert "longer than" in too_long["error"]
        assert await self.sms.phones() == [] and await self.audit() == []

    async def test_auditor_may_list_phones_but_not_change_them(self) -> None:
        await self.sms.set_phone("bob@partner.example", NUMBER, START)
        api = await self.api("ann", "auditor")
        assert len(answer(await api.call("GET", "/api/v1/phones"))) == 1
        answer(await api.call("PUT", "/api/v1/phones/x@partner.example", {"number": NUMBER}), 403)
        answer(await api.call("DELETE", "/api/v1/phones/bob@partner.example"), 403)
        assert len(await self.sms.phones()) == 1 and await self.audit() == []
        page = await (await self.browser("ann2", "auditor")).get("/phones")
        assert NUMBER in page.text and "Add or change a number" not in page.text

    async def test_phones_page_add_refuse_and_remove(self) -> None:
        browser = await self.browser("hank", "helpdesk")
        page = await browser.get("/phones")
        assert page.code == 200 and "The phone directory is empty." in page.text
        bad = await browser.post(
            "/phones", {"csrf": page.csrf(), "address": "bob@partner.example", "number": "12"}
        )
        assert bad.code == 400 and "write the number with its country code" in bad.text
        assert 'value="bob@partner.example"' in bad.text  # what was typed stays
        saved = await browser.post(
            "/phones",
            {"csrf": page.csrf(), "address": "Bob@Partner.Example", "number": "040 1234567"},
        )
        assert saved.code == 303 and saved.header("Location") == "/phones?saved=bob@partner.example"
        listed = await browser.get("/phones?saved=bob@partner.example")
        assert "Saved: bob@partner.example" in listed.text and NUMBER in listed.text
        spoof = await browser.get("/phones?saved=someone@else.example")
        assert "Saved:" not in spoof.text  # a notice only for what is true
        asked = await browser.get("/phones?remove=bob@partner.example")
        assert "Remove bob@partner.example?" in asked.text
        gone = await browser.post(
            "/phones/remove", {"csrf": asked.csrf(), "address": "bob@partner.example"}
        )
        assert gone.code == 303 and await self.sms.phones() == []
        assert [r.action for r in await self.audit()] == [
            "phone number added",
            "phone number removed",
        ]

    # --- statistics and the overview ---------------------------------------------------

    async def count(self) -> None:
        await self.stats.add(
            {
                (TODAY, "smtp_messages", "letter"): 3,
                (TODAY, "smtp_messages", "relay"): 5,
                ("2027-01-14", "smtp_messages", "registered"): 2,
                ("2027-01-01", "smtp_messages", "relay"): 7,
                (TODAY, "sms", "modem/sent"): 4,
                (TODAY, "sms", "http/failed"): 1,
                (TODAY, "deliveries", "notification/sent"): 3,
            }
        )

    async def test_api_stats_per_day_and_total(self) -> None:
        """GET /api/v1/stats?days=N: the summary's figures per day and in total (the names
        `secmail stats` prints), SMS by backend and result, and the queue now."""
        await self.count()
        await self.enqueue()
        api = await self.api("hank", "helpdesk")
        stats = answer(await api.call("GET", "/api/v1/stats?days=2"))
        assert stats["from"] == "2027-01-14" and stats["to"] == TODAY
        assert stats["figures"][: len(LINES)] == [label.strip() for label, _, _ in LINES]
        assert stats["figures"][len(LINES) :] == ["SMS failed (http)", "SMS sent (modem)"]
        assert [d["day"] for d in stats["days"]] == ["2027-01-14", TODAY]
        assert stats["days"][0]["figures"]["Received"] == 2
        assert stats["days"][1]["figures"]["secure letters"] == 3
        assert stats["total"]["Received"] == 10 and stats["total"]["relayed"] == 5
        assert stats["total"]["SMS sent (modem)"] == 4
        assert stats["total"]["Notifications sent"] == 3
        assert stats["queue"] == {
            "waiting": 1,
            "leased": 0,
            "quarantined": 0,
            "oldest": "2027-01-15T05:00:00Z",
        }
        week = answer(await api.call("GET", "/api/v1/stats"))
        assert len(week["days"]) == 7 and week["total"]["Received"] == 10
        month = answer(await api.call("GET", "/api/v1/stats?days=30"))
        assert month["total"]["relayed"] == 12
        for bad in ("0", "367", "x", "-1", "7.5"):
            error = answer(await api.call("GET", f"/api/v1/stats?days={bad}"), 400)["error"]
            assert error.startswith("days:") and "1 to 366" in error
        assert len(answer(await api.call("GET", "/api/v1/stats?days=366"))["days"]) == 366

    async def test_overview_is_the_home_page_with_charts(self) -> None:
        """An admin's home page is the overview: the queue's depth and oldest row, today / 7 /
        30 days of every figure and SMS line, and inline SVG bars (no external resource)."""
        await self.count()
        await self.enqueue()
        browser = await self.browser("alice", "admin")
        home = await browser.get("/")
        assert home.code == 200 and "<h1>Overview</h1>" in home.text
        assert home.text.count("<svg") == 1 + len(LINES) + 2
        assert "<title>2027-01-14: 2</title>" in home.text
        assert "SMS sent via modem" in home.text and "3 h" in home.text
        received = re.search(r"<th scope=\"row\">Received</th>(.*?)</tr>", home.text)
        assert received is not None
        assert re.findall(r'class="num"[^>]*>(\d+)<', received.group(1)) == ["8", "10", "17"]
        assert "http://" not in home.text.replace("http://www.w3.org", "")
        assert "https://" not in home.text
        finnish = await browser.get("/overview")
        assert finnish.code == 200
        browser.cookies["__Host-secmail-lang"] = "fi"
        assert "Yleiskatsaus" in (await browser.get("/")).text

    async def test_home_page_without_overview_rights_lists_pages(self) -> None:
        from secmail.admin.roles import Role

        await AdminStore(self.db).save_role(Role("phoner", {"phones": "full"}), START, CLI)
        browser = await self.browser("pat", "phoner")
        home = await browser.get("/")
        assert home.code == 200 and "<h1>Home</h1>" in home.text
        assert 'href="/phones"' in home.text and 'href="/queue"' not in home.text
        assert (await browser.get("/overview")).code == 403

    async def test_compose_directory_page_shows_the_setting(self) -> None:
        admin = await (await self.browser("alice", "admin")).get("/compose-directory")
        assert "sales@org.example" in admin.text and "help@org.example" in admin.text
        assert 'href="/settings#portal.compose_directory"' in admin.text
        desk = await (await self.browser("hank", "helpdesk")).get("/compose-directory")
        assert desk.code == 200 and "/settings" not in desk.text


def test_bars_scale_to_the_highest_day() -> None:
    found = bars([0, 5, 10], ["a", "b", "c"], 30, 20)
    assert [b.height for b in found] == [0.5, 10.0, 20.0]
    assert [b.y for b in found] == [19.5, 10.0, 0.0]
    assert [b.x for b in found] == [1.0, 11.0, 21.0] and found[0].width == 8.0
    assert [b.height for b in bars([0, 0], ["a", "b"], 10, 10)] == [0.5, 0.5]


def test_parse_days() -> None:
    assert parse_days("") == 7 and parse_days("1") == 1 and parse_days("366") == 366
    for bad in ("0", "367", "x", " ", "1e3"):
        try:
            parse_days(bad)
        except ValueError as e:
            assert str(e).startswith("days:")
        else:
            raise AssertionError(bad)
