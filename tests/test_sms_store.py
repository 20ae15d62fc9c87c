"""The SMS outbox and phone directory (SmsStore), and the SMS PINs of registered letters.

Every test runs on SQLite and, when SECMAIL_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sqlite3
import tempfile
from typing import Any

import psycopg

import secmail.store.codes as codes_module
from secmail.letters import routed_mail
from secmail.masking import mask_number
from secmail.store.messages import NewEnvelope, NewMessage, hash_token, new_id
from secmail.store.portal import (
    CODE_LIFETIME,
    CODE_TRIES,
    CODES_PER_DAY,
    CODES_PER_HOUR,
    PIN_INTERVAL,
    PIN_LOCK_AFTER,
    PinOrder,
    PinState,
    PortalStore,
)
from secmail.store.sms import OutboxItem, Pending, SmsStore, SmsText, queue_sms_txn
from secmail.store.spool import SealedBytes
from tests.dbs import on_each_engine, open_store
from tests.fixtures.settings import make_settings

T0 = 1_700_000_000
ALICE = "alice@corp.example"
BOB = "bob@partner.example"
NUMBER = "+358401234567"
MASKED = mask_number(NUMBER)
TEXT = "Secure mail: your PIN is 482913. It works for 10 minutes. Do not share it."
LEASE = 300


class FixedPins:
    """Stands in for the C{secrets} module in secmail.store.codes: PINs chosen by the test."""

    def __init__(self, *pins: int) -> None:
        self.pins = list(pins)

    def randbelow(self, n: int) -> int:
        return self.pins.pop(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(secrets, name)


def sms_text(pin: str) -> str:
    return f"Secure mail: your PIN is {pin}."


def other(pin: str) -> str:
    """A PIN that is surely not C{pin}."""
    return f"{(int(pin) + 1) % 10**6:06d}"


@on_each_engine
class SmsStoreMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        opened = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.engine, self.db, self.master, self.store = opened
        self.sms = SmsStore(self.db, os.urandom(32))
        self.code_key = os.urandom(32)
        self.portal = PortalStore(self.db, self.code_key)
        self.settings = make_settings(tempfile.gettempdir())
        self.pins: list[str] = []

    # --- helpers ----------------------------------------------------------------------------

    async def letter(self, sender: str = ALICE) -> tuple[str, str]:
        """A registered letter to BOB: (message id, envelope id)."""
        env = NewEnvelope(
            BOB, "bob@partner.example.0401234567.s", "registered", NUMBER, hash_token(new_id())
        )
        message = NewMessage(
            SealedBytes(self.master, new_id(), b"x"), "mail", sender, envelopes=[env]
        )
        await self.store.commit([message], now=T0)
        return message.content.message_id, env.id

    async def put(
        self,
        message_id: str,
        envelope_id: str | None,
        *,
        text: str = TEXT,
        number: str = NUMBER,
        now: int = T0,
        expires: int | None = None,
    ) -> OutboxItem:
        """One SMS in the outbox, due at C{now}; the new row."""
        until = now + CODE_LIFETIME if expires is None else expires
        await self.db.run(
            lambda txn: queue_sms_txn(
                txn,
                self.sms.sealer,
                message_id=message_id,
                envelope_id=envelope_id,
                number=number,
                text=text,
                now=now,
                expires=until,
            )
        )
        return (await self.sms.outbox())[-1][0]

    async def raw(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self.db.run(lambda txn: txn.execute(sql, params).fetchall())

    async def ids(self) -> list[int]:
        return [item.id for item, _, _ in await self.sms.outbox()]

    def text_for(self, pin: str) -> str:
        self.pins.append(pin)
        return sms_text(pin)

    async def order(self, envelope_id: str, now: int) -> str:
        return await self.portal.new_pin(envelope_id, NUMBER, self.text_for, self.sms.sealer, now)

    async def check(self, envelope_id: str, pin: str, now: int, notice: Any = None) -> str:
        return await self.portal.check_pin(envelope_id, pin, now, notice)

    async def event_kinds(self, message_id: str) -> list[str]:
        return [kind for _, kind, _, _ in await self.store.events(message_id)]

    def notice(self, about: str, to: str = ALICE) -> NewMessage:
        return routed_mail(
            self.settings.routes,
            self.master,
            kind="notice",
            sender=self.settings.gateway.bounce_address,
            to=to,
            content=b"Subject: notice\r\n\r\nYour letter is locked.\r\n",
            about=about,
        )

    async def envelope_row(self, envelope_id: str) -> tuple[Any, ...]:
        [row] = await self.raw(
            "SELECT pin_failures, locked, wrong_number FROM envelopes WHERE id = ?",
            (envelope_id,),
        )
        return tuple(row)

    # --- the outbox: sealed texts -----------------------------------------------------------

    async def test_text_is_sealed(self) -> None:
        """The stored text is ciphertext; it opens only with this key, number and message."""
        message_id, env = await self.letter()
        item = await self.put(message_id, env)
        [(stored,)] = await self.raw("SELECT text FROM sms_outbox")
        stored = bytes(stored)
        self.assertNotIn(TEXT.encode(), stored)
        self.assertNotIn(b"482913", stored)
        self.assertEqual(stored, item.sealed)
        self.assertEqual(self.sms.sealer.open(message_id, NUMBER, stored), TEXT)
        with self.assertRaises(ValueError):
            SmsText(os.urandom(32)).open(message_id, NUMBER, stored)
        with self.assertRaises(ValueError):
            self.sms.sealer.open(message_id, "+358409999999", stored)
        with self.assertRaises(ValueError):
            self.sms.sealer.open(new_id(), NUMBER, stored)
        altered = stored[:-1] + bytes([stored[-1] ^ 1])
        with self.assertRaises(ValueError):
            self.sms.sealer.open(message_id, NUMBER, altered)

    # --- the outbox: leases -----------------------------------------------------------------

    async def test_claim_only_due_rows(self) -> None:
        """claim() leases the rows due now and leaves later ones; the lease is stored."""
        message_id, env = await self.letter()
        due = await self.put(message_id, env)
        later = await self.put(message_id, env, now=T0 + 100)
        [claimed] = await self.sms.claim("node-a", T0, LEASE, 10)
        self.assertEqual(claimed.id, due.id)
        self.assertEqual((claimed.number, claimed.envelope_id), (NUMBER, env))
        self.assertEqual(claimed.message_id, message_id)
        self.assertEqual((claimed.created, claimed.expires, claimed.attempts), (T0, T0 + 600, 0))
        rows = await self.raw("SELECT id, lease_owner, lease_until FROM sms_outbox ORDER BY id")
        self.assertEqual(
            [tuple(r) for r in rows], [(due.id, "node-a", T0 + LEASE), (later.id, None, None)]
        )
        self.assertEqual(await self.sms.claim("node-a", T0 + 99, LEASE, 10), [])
        [claimed] = await self.sms.claim("node-b", T0 + 100, LEASE, 10)
        self.assertEqual(claimed.id, later.id)

    async def test_claim_skips_leased_rows_until_lease_ends(self) -> None:
        """A leased row is skipped by every node until its lease has run out; then taken over."""
        message_id, env = await self.letter()
        row = await self.put(message_id, env)
        self.assertEqual([i.id for i in await self.sms.claim("node-a", T0, LEASE, 10)], [row.id])
        self.assertEqual(await self.sms.claim("node-a", T0 + 1, LEASE, 10), [])
        self.assertEqual(await self.sms.claim("node-b", T0 + 1, LEASE, 10), [])
        self.assertEqual(await self.sms.claim("node-b", T0 + LEASE, LEASE, 10), [])
        [taken] = await self.sms.claim("node-b", T0 + LEASE + 1, LEASE, 10)
        self.assertEqual(taken.id, row.id)
        [(owner,)] = await self.raw("SELECT lease_owner FROM sms_outbox")
        self.assertEqual(owner, "node-b")

    async def test_claim_returns_expired_rows(self) -> None:
        """Rows whose PIN has expired are claimed too (the outbox drops them)."""
        message_id, env = await self.letter()
        row = await self.put(message_id, env, expires=T0 + 600)
        [claimed] = await self.sms.claim("node-a", T0 + 700, LEASE, 10)
        self.assertEqual((claimed.id, claimed.expires), (row.id, T0 + 600))

    async def test_claim_limit(self) -> None:
        """claim() takes at most C{limit} rows, oldest first; the next claim gets the rest."""
        message_id, env = await self.letter()
        rows = [await self.put(message_id, env, now=T0 + i) for i in range(3)]
        first = await self.sms.claim("node-a", T0 + 5, LEASE, 2)
        self.assertEqual([i.id for i in first], [rows[0].id, rows[1].id])
        second = await self.sms.claim("node-a", T0 + 5, LEASE, 2)
        self.assertEqual([i.id for i in second], [rows[2].id])

    async def test_retry(self) -> None:
        """retry() moves the next attempt, counts the attempt, keeps the error, ends the lease."""
        message_id, env = await self.letter()
        await self.put(message_id, env)
        [item] = await self.sms.claim("node-a", T0, LEASE, 10)
        await self.sms.retry(item, T0 + 10, "gateway busy")
        [(row, next_attempt, error)] = await self.sms.outbox()
        self.assertEqual((row.attempts, next_attempt, error), (1, T0 + 10, "gateway busy"))
        [lease] = await self.raw("SELECT lease_owner, lease_until FROM sms_outbox")
        self.assertEqual(tuple(lease), (None, None))
        # Not due before its time, then due to any node although node-a's lease was longer.
        self.assertEqual(await self.sms.claim("node-b", T0 + 9, LEASE, 10), [])
        [again] = await self.sms.claim("node-b", T0 + 10, LEASE, 10)
        self.assertEqual(again.attempts, 1)
        await self.sms.retry(again, T0 + 30, "x" * 5000)
        [(row, next_attempt, error)] = await self.sms.outbox()
        self.assertEqual((row.attempts, next_attempt, len(error)), (2, T0 + 30, 1000))

    async def test_sent_removes_row(self) -> None:
        """sent() removes that row and no other."""
        message_id, env = await self.letter()
        first = await self.put(message_id, env)
        second = await self.put(message_id, env)
        claimed = await self.sms.claim("node-a", T0, LEASE, 1)
        self.assertEqual([i.id for i in claimed], [first.id])
        await self.sms.sent(claimed[0])
        self.assertEqual(await self.ids(), [second.id])

    async def test_drop_records_event(self) -> None:
        """drop() removes the row and records why on the message's audit trail."""
        message_id, env = await self.letter()
        first = await self.put(message_id, env)
        second = await self.put(message_id, env)
        await self.sms.drop(first, "sms not sent", "gateway refused the number", T0 + 5)
        self.assertEqual(await self.ids(), [second.id])
        events = await self.store.events(message_id)
        self.assertIn((T0 + 5, "sms not sent", env, "gateway refused the number"), events)

    async def test_release_own_leases(self) -> None:
        """release_own_leases() frees this node's rows at once, and no other node's."""
        message_id, env = await self.letter()
        await self.put(message_id, env)
        await self.put(message_id, env)
        [mine] = await self.sms.claim("node-a", T0, LEASE, 1)
        [theirs] = await self.sms.claim("node-b", T0, LEASE, 1)
        self.assertNotEqual(mine.id, theirs.id)
        await self.sms.release_own_leases("node-a")
        [again] = await self.sms.claim("node-c", T0 + 1, LEASE, 10)
        self.assertEqual(again.id, mine.id)
        [(owner,)] = await self.raw("SELECT lease_owner FROM sms_outbox WHERE id = ?", (theirs.id,))
        self.assertEqual(owner, "node-b")

    async def test_pending_and_next_due(self) -> None:
        """next_due() is the earliest next attempt; pending() an envelope's row, if any."""
        message_id, env = await self.letter()
        other_message, other_env = await self.letter()
        self.assertIsNone(await self.sms.next_due())
        self.assertIsNone(await self.sms.pending(env))
        await self.put(message_id, env, now=T0 + 50)
        await self.put(other_message, other_env, now=T0 + 20)
        self.assertEqual(await self.sms.next_due(), T0 + 20)
        self.assertEqual(await self.sms.pending(env), Pending(attempts=0, last_error=""))
        [item] = await self.sms.claim("node-a", T0 + 50, LEASE, 1)
        self.assertEqual(item.envelope_id, other_env)
        await self.sms.retry(item, T0 + 90, "no network")
        self.assertEqual(await self.sms.next_due(), T0 + 50)
        self.assertEqual(await self.sms.pending(other_env), Pending(1, "no network"))
        self.assertEqual(await self.sms.pending(env), Pending(0, ""))
        [mine] = await self.sms.claim("node-a", T0 + 50, LEASE, 1)
        await self.sms.sent(mine)
        self.assertIsNone(await self.sms.pending(env))
        self.assertEqual(await self.sms.next_due(), T0 + 90)

    async def test_retention_cascades_to_outbox(self) -> None:
        """Deleting a letter (retention) deletes its SMS rows, with or without an envelope."""
        message_id, env = await self.letter()
        keep_message, keep_env = await self.letter()
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE messages SET created = ? WHERE id = ?", (T0 + 100, keep_message)
            )
        )
        await self.put(message_id, env)
        await self.put(message_id, None)
        kept = await self.put(keep_message, keep_env)
        self.assertEqual(await self.store.delete_expired(T0 + 1, T0 + 2), 1)
        self.assertEqual(await self.ids(), [kept.id])

    # --- the phone directory ----------------------------------------------------------------

    async def test_phone_directory(self) -> None:
        """Addresses are stored lower-cased; set says whether an address was new."""
        self.assertTrue(await self.sms.set_phone("Bob@Partner.Example", NUMBER, T0))
        self.assertTrue(await self.sms.set_phone("ann@partner.example", "+358501111111", T0))
        self.assertEqual(
            await self.sms.phones(),
            [("ann@partner.example", "+358501111111", T0), ("bob@partner.example", NUMBER, T0)],
        )
        self.assertFalse(await self.sms.set_phone("bob@partner.example", "+358402222222", T0 + 5))
        self.assertEqual(await self.sms.phone_for("BOB@partner.example"), "+358402222222")
        self.assertEqual(len(await self.sms.phones()), 2)
        self.assertIn(("bob@partner.example", "+358402222222", T0 + 5), await self.sms.phones())
        self.assertTrue(await self.sms.remove_phone("bob@PARTNER.example"))
        self.assertFalse(await self.sms.remove_phone("bob@partner.example"))
        self.assertIsNone(await self.sms.phone_for("bob@partner.example"))
        self.assertEqual(await self.sms.phones(), [("ann@partner.example", "+358501111111", T0)])

    # --- PINs: ordering ---------------------------------------------------------------------

    async def test_new_pin_queues_one_sms(self) -> None:
        """A PIN order puts exactly one SMS in the outbox and records the masked number."""
        message_id, env = await self.letter()
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        [pin] = self.pins
        self.assertTrue(len(pin) == 6 and pin.isdigit())
        [(item, next_attempt, error)] = await self.sms.outbox()
        self.assertEqual(
            (item.message_id, item.envelope_id, item.number), (message_id, env, NUMBER)
        )
        self.assertEqual((item.created, item.expires, next_attempt), (T0, T0 + CODE_LIFETIME, T0))
        self.assertEqual((item.attempts, error), (0, ""))
        opened = self.sms.sealer.open(message_id, NUMBER, item.sealed)
        self.assertEqual(opened, sms_text(pin))
        self.assertIn((T0, "PIN ordered", env, f"to {MASKED}"), await self.store.events(message_id))
        self.assertEqual(await self.check(env, pin, T0 + 1), PinState.OK)

    async def test_pin_never_stored_readable(self) -> None:
        """The PIN is in no event and no access_codes column: only its keyed HMAC is stored."""
        self.patch(codes_module, "secrets", FixedPins(482913, 482914))
        message_id, env = await self.letter()
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        self.assertEqual(await self.check(env, "000001", T0 + 1), PinState.WRONG)
        self.assertEqual(await self.order(env, T0 + PIN_INTERVAL + 1), PinOrder.SENT)
        self.assertEqual(await self.check(env, "482914", T0 + 70), PinState.OK)
        self.assertEqual(self.pins, ["482913", "482914"])
        rows = await self.raw(
            "SELECT code_hash, created, expires, tries, used FROM access_codes ORDER BY created"
        )
        self.assertEqual(len(rows), 2)
        for row, pin in zip(rows, self.pins, strict=True):
            expected = hmac.new(self.code_key, f"{env}:{pin}".encode(), "sha256").hexdigest()
            self.assertEqual(row[0], expected)
            self.assertNotIn(pin, repr(tuple(row[1:])))
        events = await self.raw("SELECT at, kind, detail FROM events")
        self.assertIn("PIN ordered", repr(events))
        for pin in self.pins:
            self.assertNotIn(pin, repr(events))
        self.assertNotIn(NUMBER, repr(events))
        self.assertNotIn(NUMBER[1:], repr(events))

    async def test_new_pin_is_one_transaction(self) -> None:
        """When the SMS cannot be queued, the new PIN is not made and the old one still works."""

        class BrokenSealer(SmsText):
            def seal_with_id(self, message_id: str, number: str, text: str) -> tuple[str, bytes]:
                raise RuntimeError("cannot seal")

        message_id, env = await self.letter()
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        [first] = await self.ids()
        with self.assertRaises(RuntimeError):
            await self.portal.new_pin(
                env, NUMBER, self.text_for, BrokenSealer(os.urandom(32)), T0 + PIN_INTERVAL + 1
            )
        self.assertEqual(await self.ids(), [first])
        self.assertEqual(len(await self.raw("SELECT * FROM access_codes")), 1)
        self.assertEqual((await self.event_kinds(message_id)).count("PIN ordered"), 1)
        self.assertEqual(await self.check(env, self.pins[0], T0 + 70), PinState.OK)

    async def test_pin_too_soon(self) -> None:
        """A second PIN within a minute is refused: no new code, no new SMS."""
        message_id, env = await self.letter()
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        [row] = await self.ids()
        self.assertEqual(await self.order(env, T0 + PIN_INTERVAL - 1), PinOrder.TOO_SOON)
        self.assertEqual(await self.ids(), [row])
        self.assertEqual(len(await self.raw("SELECT * FROM access_codes")), 1)
        self.assertEqual(await self.order(env, T0 + PIN_INTERVAL + 1), PinOrder.SENT)
        self.assertEqual(len(await self.raw("SELECT * FROM access_codes")), 2)
        self.assertEqual(await self.check(env, self.pins[-1], T0 + 62), PinState.OK)

    async def test_pin_too_soon_keeps_first_pin(self) -> None:
        """The PIN sent before a refused order still works."""
        _, env = await self.letter()
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        self.assertEqual(await self.order(env, T0 + 30), PinOrder.TOO_SOON)
        self.assertEqual(await self.check(env, self.pins[0], T0 + 31), PinState.OK)

    async def test_pins_per_hour(self) -> None:
        """At most 5 PINs an hour, even a minute apart; an hour after the first, one more."""
        _, env = await self.letter()
        step = PIN_INTERVAL + 1
        for i in range(CODES_PER_HOUR):
            self.assertEqual(await self.order(env, T0 + i * step), PinOrder.SENT)
        now = T0 + CODES_PER_HOUR * step
        self.assertEqual(await self.order(env, now), PinOrder.TOO_MANY)
        self.assertEqual(await self.order(env, now + 600), PinOrder.TOO_MANY)
        self.assertEqual(len(await self.raw("SELECT * FROM access_codes")), CODES_PER_HOUR)
        self.assertEqual(len(await self.ids()), 1)
        self.assertEqual(await self.order(env, T0 + 3601), PinOrder.SENT)

    async def test_pins_per_day(self) -> None:
        """At most 10 PINs a day for one letter (5 an hour would allow 120)."""
        _, env = await self.letter()
        for i in range(CODES_PER_DAY):
            self.assertEqual(await self.order(env, T0 + i * 1800), PinOrder.SENT)
        self.assertEqual(await self.order(env, T0 + CODES_PER_DAY * 1800), PinOrder.TOO_MANY_TODAY)
        self.assertEqual(await self.order(env, T0 + 24 * 3600 - 1), PinOrder.TOO_MANY_TODAY)
        self.assertEqual(await self.order(env, T0 + 24 * 3600 + 1), PinOrder.SENT)

    async def test_new_pin_replaces_unsent_sms(self) -> None:
        """A new PIN's SMS replaces an older one still waiting; one being sent is left alone."""
        message_id, env = await self.letter()
        other_message, other_env = await self.letter()
        theirs = await self.put(other_message, other_env)
        self.assertEqual(await self.order(env, T0), PinOrder.SENT)
        self.assertEqual(await self.order(env, T0 + 61), PinOrder.SENT)
        rows = [item for item, _, _ in await self.sms.outbox() if item.envelope_id == env]
        [row] = rows
        self.assertEqual(
            self.sms.sealer.open(message_id, NUMBER, row.sealed), sms_text(self.pins[1])
        )
        # The row retried after a failure waits unleased: it is replaced too.
        claimed = await self.sms.claim("node-a", T0 + 61, LEASE, 10)
        self.assertEqual({i.id for i in claimed}, {row.id, theirs.id})
        [mine] = [i for i in claimed if i.id == row.id]
        await self.sms.retry(mine, T0 + 71, "busy")
        self.assertEqual(await self.order(env, T0 + 122), PinOrder.SENT)
        [row] = [item for item, _, _ in await self.sms.outbox() if item.envelope_id == env]
        self.assertNotEqual(row.id, mine.id)
        # A row leased by a node (being sent now) stays; the new one is added.
        [sending] = await self.sms.claim("node-a", T0 + 122, LEASE, 10)
        self.assertEqual(await self.order(env, T0 + 183), PinOrder.SENT)
        ids = [item.id for item, _, _ in await self.sms.outbox() if item.envelope_id == env]
        self.assertEqual(len(ids), 2)
        self.assertIn(sending.id, ids)
        # Another letter's SMS is never touched.
        self.assertIn(theirs.id, await self.ids())

    async def test_new_pin_locked(self) -> None:
        """A locked letter, or an unknown envelope, gets no PIN and no SMS."""
        _, env = await self.letter()
        await self.db.run(
            lambda txn: txn.execute("UPDATE envelopes SET locked = ? WHERE id = ?", (T0, env))
        )
        self.assertEqual(await self.order(env, T0 + 1), PinOrder.LOCKED)
        self.assertEqual(await self.order(new_id(), T0 + 1), PinOrder.LOCKED)
        self.assertEqual(await self.ids(), [])
        self.assertEqual(await self.raw("SELECT * FROM access_codes"), [])

    # --- PINs: checking ---------------------------------------------------------------------

    async def test_check_pin_once(self) -> None:
        """A wrong PIN is WRONG; the right one is OK once, then EXPIRED."""
        message_id, env = await self.letter()
        await self.order(env, T0)
        [pin] = self.pins
        self.assertEqual(await self.check(env, other(pin), T0 + 1), PinState.WRONG)
        self.assertEqual(await self.check(env, f" {pin} ", T0 + 2), PinState.OK)
        self.assertEqual(await self.check(env, pin, T0 + 3), PinState.EXPIRED)
        kinds = await self.event_kinds(message_id)
        self.assertEqual(kinds[-3:], ["PIN wrong", "PIN accepted", "PIN refused"])

    async def test_check_without_pin(self) -> None:
        """Before any PIN is ordered, every PIN is EXPIRED and nothing counts against the letter."""
        _, env = await self.letter()
        self.assertEqual(await self.check(env, "123456", T0), PinState.EXPIRED)
        self.assertEqual(await self.envelope_row(env), (0, None, None))

    async def test_check_pin_expires(self) -> None:
        """A PIN works for 10 minutes."""
        _, env = await self.letter()
        await self.order(env, T0)
        self.assertEqual(
            await self.check(env, self.pins[0], T0 + CODE_LIFETIME + 1), PinState.EXPIRED
        )
        await self.order(env, T0 + 700)
        self.assertEqual(await self.check(env, self.pins[1], T0 + 700 + CODE_LIFETIME), PinState.OK)

    async def test_check_pin_tries(self) -> None:
        """After 5 wrong tries even the right PIN is EXPIRED; tries after that do not count."""
        _, env = await self.letter()
        await self.order(env, T0)
        [pin] = self.pins
        results = [await self.check(env, other(pin), T0 + i) for i in range(CODE_TRIES)]
        self.assertEqual(results, [PinState.WRONG] * (CODE_TRIES - 1) + [PinState.EXPIRED])
        self.assertEqual(await self.check(env, pin, T0 + 10), PinState.EXPIRED)
        self.assertEqual(await self.check(env, other(pin), T0 + 11), PinState.EXPIRED)
        self.assertEqual(await self.envelope_row(env), (CODE_TRIES, None, None))

    async def test_lock_after_too_many_wrong_pins(self) -> None:
        """
        Wrong PINs count across PINs; the 20th locks the letter and, in that transaction,
        ends its sessions, drops its SMS and stores the notice to the sender with its queue row.
        """
        message_id, env = await self.letter()
        other_message, other_env = await self.letter()
        other_session = await self.portal.create_session(other_env, T0, "test")
        theirs = await self.put(other_message, other_env)
        session = await self.portal.create_session(env, T0, "test")
        rounds = PIN_LOCK_AFTER // CODE_TRIES
        now = T0
        for n in range(rounds):
            now = T0 + n * (PIN_INTERVAL + 1)
            self.assertEqual(await self.order(env, now), PinOrder.SENT)
            pin = self.pins[-1]
            for i in range(CODE_TRIES - 1):
                self.assertEqual(await self.check(env, other(pin), now + i), PinState.WRONG)
            self.assertEqual(await self.envelope_row(env), (n * CODE_TRIES + 4, None, None))
            if n < rounds - 1:
                self.assertEqual(await self.check(env, other(pin), now + 5), PinState.EXPIRED)
                self.assertEqual(await self.envelope_row(env), ((n + 1) * CODE_TRIES, None, None))
        self.assertEqual(len(await self.ids()), 2)  # the last PIN's SMS and the other letter's
        notice = self.notice(message_id)
        locked_at = now + 5
        state = await self.check(env, other(self.pins[-1]), locked_at, notice)
        self.assertEqual(state, PinState.LOCKED_NOW)

        self.assertEqual(await self.envelope_row(env), (PIN_LOCK_AFTER, locked_at, None))
        envelope = await self.store.envelope_by_id(env)
        assert envelope is not None
        self.assertEqual(envelope.locked, locked_at)
        self.assertEqual(await self.raw("SELECT * FROM sessions WHERE envelope_id = ?", (env,)), [])
        self.assertIsNone(await self.portal.session(session, locked_at))
        self.assertEqual(await self.ids(), [theirs.id])
        # The notice and its queue row are stored.
        [queued] = await self.store.queue_list()
        self.assertEqual(queued.message_id, notice.content.message_id)
        self.assertEqual(
            (queued.kind, queued.about, queued.recipients), ("notice", message_id, (ALICE,))
        )
        self.assertIn(b"Your letter is locked.", await self.store.read_all(queued.message_id))
        self.assertIn(
            (locked_at, "locked", env, f"{PIN_LOCK_AFTER} wrong PINs"),
            await self.store.events(message_id),
        )
        # Locked for good: even the right PIN of the last order, and no new PIN.
        self.assertEqual(await self.check(env, self.pins[-1], locked_at + 1), PinState.LOCKED)
        self.assertEqual(await self.order(env, locked_at + 3600), PinOrder.LOCKED)
        self.assertEqual(await self.ids(), [theirs.id])
        self.assertEqual(len(await self.store.queue_list()), 1)
        # The other letter is untouched.
        self.assertIsNotNone(await self.portal.session(other_session, locked_at))
        self.assertEqual(await self.envelope_row(other_env), (0, None, None))

    async def test_lock_is_one_transaction(self) -> None:
        """When the lock notice cannot be stored, nothing of the lock is stored either."""
        message_id, env = await self.letter()
        session = await self.portal.create_session(env, T0, "test")
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE envelopes SET pin_failures = ? WHERE id = ?", (PIN_LOCK_AFTER - 1, env)
            )
        )
        await self.order(env, T0)
        [pin] = self.pins
        [row] = await self.ids()
        # A notice with the letter's own message id cannot be inserted.
        broken = self.notice(message_id)
        broken.content = SealedBytes(self.master, message_id, b"duplicate")
        with self.assertRaises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            await self.check(env, other(pin), T0 + 1, broken)
        self.assertEqual(await self.envelope_row(env), (PIN_LOCK_AFTER - 1, None, None))
        self.assertIsNotNone(await self.portal.session(session, T0 + 1))
        self.assertEqual(await self.ids(), [row])
        self.assertNotIn("locked", await self.event_kinds(message_id))
        self.assertEqual(await self.store.queue_list(), [])
        state = await self.check(env, other(pin), T0 + 2, self.notice(message_id))
        self.assertEqual(state, PinState.LOCKED_NOW)
        self.assertEqual(len(await self.store.queue_list()), 1)

    async def test_lock_without_notice(self) -> None:
        """A letter from <> locks all the same, with no notice."""
        _, env = await self.letter(sender="")
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE envelopes SET pin_failures = ? WHERE id = ?", (PIN_LOCK_AFTER - 1, env)
            )
        )
        await self.order(env, T0)
        self.assertEqual(await self.check(env, other(self.pins[0]), T0 + 1), PinState.LOCKED_NOW)
        self.assertEqual(await self.envelope_row(env), (PIN_LOCK_AFTER, T0 + 1, None))
        self.assertEqual(await self.store.queue_list(), [])

    # --- wrong number -----------------------------------------------------------------------

    async def test_report_wrong_number_once(self) -> None:
        """The first report stores the notice; later ones are refused and store nothing."""
        message_id, env = await self.letter()
        first = self.notice(message_id)
        self.assertTrue(await self.portal.report_wrong_number(env, T0 + 5, first))
        self.assertEqual(await self.envelope_row(env), (0, None, T0 + 5))
        [queued] = await self.store.queue_list()
        self.assertEqual((queued.message_id, queued.about), (first.content.message_id, message_id))
        self.assertEqual(await self.store.count_messages(), 2)
        self.assertFalse(
            await self.portal.report_wrong_number(env, T0 + 9, self.notice(message_id))
        )
        self.assertEqual(await self.envelope_row(env), (0, None, T0 + 5))
        self.assertEqual(len(await self.store.queue_list()), 1)
        self.assertEqual(await self.store.count_messages(), 2)
        self.assertEqual((await self.event_kinds(message_id)).count("wrong number"), 1)

    async def test_report_wrong_number_without_notice(self) -> None:
        """A letter from <> is marked all the same, with no notice."""
        _, env = await self.letter(sender="")
        self.assertTrue(await self.portal.report_wrong_number(env, T0, None))
        self.assertEqual(await self.envelope_row(env), (0, None, T0))
        self.assertFalse(await self.portal.report_wrong_number(env, T0 + 1, None))
        self.assertEqual(await self.store.queue_list(), [])
