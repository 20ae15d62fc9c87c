"""The SMS outbox service: leases, retries, drops, concurrency and stopping.

The store is real (SQLite on its database thread, so tests wait on the real reactor as
tests/test_queue.py does); the outbox's clock is a C{task.Clock}, advanced to make time
pass; the dispatcher is a fake the test scripts.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from secmail.masking import mask_number
from secmail.sms.dispatch import SmsDispatcher
from secmail.sms.errors import SmsPermanentError, SmsTemporaryError
from secmail.sms.outbox import (
    CONCURRENCY,
    LEASE_SECONDS,
    POLL_SECONDS,
    STOP_GRACE_SECONDS,
    SmsOutbox,
    retry_delay,
)
from secmail.store.messages import NewEnvelope, NewMessage, hash_token, new_id
from secmail.store.portal import PinOrder, PinState, PortalStore
from secmail.store.sms import OutboxItem, SmsStore, SmsText, queue_sms_txn
from secmail.store.spool import SealedBytes
from tests.dbs import open_store

T0 = 1_700_000_000
ALICE = "alice@corp.example"
BOB = "bob@partner.example"
NUMBER = "+358401234567"
MASKED = mask_number(NUMBER)
TEXT = "Secure mail: your PIN is 482913. It works for 10 minutes. Do not share it."

#: What the fake dispatcher does with one call: None sends, an exception is raised, a
#: Deferred is waited for (its result is then taken as the outcome).
Outcome = None | BaseException | Deferred[Any]


class FakeDispatcher:
    """An L{SmsDispatcher} stand-in: records each call and does what the test scripted."""

    def __init__(self) -> None:
        self.script: list[Outcome] = []
        self.hold = False  # every unscripted call waits on a Deferred of its own
        self.gates: list[Deferred[Any]] = []
        self.calls: list[tuple[str, str, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, number: str, text: str, *, about: str) -> tuple[str, str]:
        self.calls.append((number, text, about))
        outcome: Any = self.script.pop(0) if self.script else None
        if outcome is None and self.hold:
            outcome = Deferred()
            self.gates.append(outcome)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if isinstance(outcome, Deferred):
                outcome = await outcome
            if isinstance(outcome, BaseException):
                raise outcome
        finally:
            self.in_flight -= 1
        return "fake", "ref-1"


class OutboxTests(TestCase):
    def setUp(self) -> None:
        self.engine, self.db, self.master, self.store = open_store("sqlite", self.addCleanup)
        self.sms = SmsStore(self.db, os.urandom(32))
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.dispatcher = FakeDispatcher()
        self.outbox = self.make_outbox()

    def make_outbox(self, node_id: str = "node-a") -> SmsOutbox:
        outbox = SmsOutbox(self.sms, cast(SmsDispatcher, self.dispatcher), self.clock, node_id)
        self.addCleanup(self.stop, outbox)
        return outbox

    async def stop(self, outbox: SmsOutbox) -> None:
        """Stop an outbox left running, giving up on sends still in flight."""
        if outbox.running:
            stopped = outbox.stopService()
            if stopped is not None:
                self.clock.advance(STOP_GRACE_SECONDS)
                for gate in self.dispatcher.gates:  # should the timeout not have cancelled them
                    if not gate.called:
                        gate.cancel()
                await stopped
        await self.eventually(lambda: self.idle(outbox), "the outbox is idle")
        self.flushLoggedErrors(CancelledError)

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- helpers ----------------------------------------------------------------------------

    async def letter(self) -> tuple[str, str]:
        """A registered letter: (message id, envelope id)."""
        env = NewEnvelope(BOB, BOB + ".0401234567.s", "registered", NUMBER, hash_token(new_id()))
        message = NewMessage(
            SealedBytes(self.master, new_id(), b"x"), "mail", ALICE, envelopes=[env]
        )
        await self.store.commit([message], now=T0)
        return message.content.message_id, env.id

    async def put(
        self,
        text: str = TEXT,
        *,
        now: int | None = None,
        expires: int | None = None,
        sealer: SmsText | None = None,
    ) -> OutboxItem:
        """A new letter with one SMS in the outbox, due at C{now}; the row."""
        message_id, env = await self.letter()
        at = self.now() if now is None else now
        await self.db.run(
            lambda txn: queue_sms_txn(
                txn,
                sealer or self.sms.sealer,
                message_id=message_id,
                envelope_id=env,
                number=NUMBER,
                text=text,
                now=at,
                expires=at + 600 if expires is None else expires,
            )
        )
        return (await self.sms.outbox())[-1][0]

    async def rows(self) -> list[tuple[OutboxItem, int, str]]:
        return await self.sms.outbox()

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Wait (on the real reactor, as the database thread does) until C{check} is true."""
        for _ in range(300):
            if await check():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting until {what}")

    async def idle(self, outbox: SmsOutbox | None = None) -> bool:
        outbox = outbox or self.outbox
        return not outbox._scanning and not outbox._tasks

    async def empty(self) -> bool:
        return await self.rows() == [] and await self.idle()

    async def settle(self) -> None:
        """Let the database thread and the reactor run a little: nothing more should happen."""
        for _ in range(5):
            await deferLater(reactor, 0.01, lambda: None)
        await self.eventually(self.idle, "the outbox is idle")

    async def start(self) -> None:
        """Start the outbox and wait until its first scan is over (its timer is set)."""
        self.outbox.startService()

        async def scanned() -> bool:
            return self.outbox._timer is not None and await self.idle()

        await self.eventually(scanned, "the first scan is done")

    async def kinds(self, message_id: str) -> list[tuple[str, str]]:
        return [(kind, detail) for _, kind, _, detail in await self.store.events(message_id)]

    # --- tests ------------------------------------------------------------------------------

    def test_retry_delays(self) -> None:
        """Retries come 10 s after the first failure, doubling, at most a minute apart."""
        self.assertEqual([retry_delay(n) for n in range(1, 8)], [10, 20, 40, 60, 60, 60, 60])

    async def test_woken_outbox_sends_unsealed_text(self) -> None:
        """wake() sends a due row: the dispatcher gets the unsealed text; the row is removed."""
        await self.start()
        item = await self.put()
        await self.settle()
        self.assertEqual(self.dispatcher.calls, [])  # not woken, and no poll yet
        self.outbox.wake()
        await self.eventually(self.empty, "the outbox is empty")
        self.assertEqual(self.dispatcher.calls, [(NUMBER, TEXT, item.message_id)])
        kinds = [kind for kind, _ in await self.kinds(item.message_id)]
        self.assertNotIn("sms not sent", kinds)
        self.assertNotIn("sms expired", kinds)

    async def test_poll_finds_rows_without_wake(self) -> None:
        """A row written by another node is found at the next poll."""
        await self.start()
        await self.put()
        self.clock.advance(POLL_SECONDS)
        await self.eventually(self.empty, "the outbox is empty")
        self.assertEqual(len(self.dispatcher.calls), 1)

    async def test_pin_from_outbox_opens_letter(self) -> None:
        """The SMS of a PIN order carries a PIN that opens the letter."""
        portal = PortalStore(self.db, os.urandom(32))
        message_id, env = await self.letter()
        texts: list[str] = []

        def text_for(pin: str) -> str:
            texts.append(f"Secure mail: your PIN is {pin}.")
            return texts[-1]

        await self.start()
        order = await portal.new_pin(env, NUMBER, text_for, self.sms.sealer, self.now())
        self.assertEqual(order, PinOrder.SENT)
        self.outbox.wake()
        await self.eventually(self.empty, "the outbox is empty")
        [(number, text, about)] = self.dispatcher.calls
        self.assertEqual((number, text, about), (NUMBER, texts[0], message_id))
        pin = text.rsplit(" ", 1)[1].rstrip(".")
        self.assertEqual(await portal.check_pin(env, pin, self.now(), None), PinState.OK)

    async def test_temporary_failure_retries(self) -> None:
        """A temporary failure is tried again after 10, 20, 40, 60, 60 s, not a second earlier."""
        delays = [10, 20, 40, 60, 60]
        self.dispatcher.script = [SmsTemporaryError("gateway busy") for _ in delays]
        item = await self.put()
        await self.start()
        for attempt, delay in enumerate(delays, start=1):
            failed_at = self.now()

            async def retried(attempt: int = attempt) -> bool:
                rows = await self.rows()
                return len(rows) == 1 and rows[0][0].attempts == attempt and await self.idle()

            await self.eventually(retried, f"attempt {attempt} is recorded")
            [(row, next_attempt, error)] = await self.rows()
            self.assertEqual(
                (row.id, next_attempt, error), (item.id, failed_at + delay, "gateway busy")
            )
            self.assertEqual(len(self.dispatcher.calls), attempt)
            self.clock.advance(delay - 1)
            await self.settle()
            self.assertEqual(len(self.dispatcher.calls), attempt)
            self.clock.advance(1)
        await self.eventually(self.empty, "the row is sent")
        self.assertEqual(len(self.dispatcher.calls), len(delays) + 1)
        self.assertEqual({call[1] for call in self.dispatcher.calls}, {TEXT})

    async def test_unexpected_error_retries_without_its_words(self) -> None:
        """An unexpected error is retried; only its type is kept (its words may hold the text)."""
        self.dispatcher.script = [RuntimeError(f"could not send {TEXT}")]
        await self.put()
        await self.start()
        [(row, next_attempt, error)] = await self.rows()
        self.assertEqual((row.attempts, next_attempt, error), (1, self.now() + 10, "RuntimeError"))

    async def test_permanent_failure_drops(self) -> None:
        """A permanent failure drops the row with an event; it is never tried again."""
        self.dispatcher.script = [SmsPermanentError("gateway refused the message (HTTP 403)")]
        item = await self.put()
        await self.start()
        await self.eventually(self.empty, "the row is dropped")
        events = await self.store.events(item.message_id)
        self.assertIn(
            (
                self.now(),
                "sms not sent",
                item.envelope_id,
                "gateway refused the message (HTTP 403)",
            ),
            events,
        )
        self.clock.advance(3600)
        await self.settle()
        self.assertEqual(len(self.dispatcher.calls), 1)

    async def test_expired_row_dropped_unsent(self) -> None:
        """A row whose PIN expired is dropped with an event, without calling the dispatcher."""
        item = await self.put(now=T0 - 700, expires=T0)
        fresh = await self.put(now=T0 - 700, expires=T0 + 1)
        await self.start()
        await self.eventually(self.empty, "the outbox is empty")
        self.assertEqual(self.dispatcher.calls, [(NUMBER, TEXT, fresh.message_id)])
        [(kind, detail)] = [
            (k, d) for k, d in await self.kinds(item.message_id) if k.startswith("sms")
        ]
        self.assertEqual(kind, "sms expired")
        self.assertIn(MASKED, detail)
        self.assertNotIn(NUMBER, detail)
        self.assertIn("tried 0 times", detail)
        self.assertNotIn("sms expired", [k for k, _ in await self.kinds(fresh.message_id)])

    async def test_row_expiring_while_retried_is_dropped(self) -> None:
        """A row that keeps failing is dropped once its PIN has expired, naming the tries."""
        self.dispatcher.script = [SmsTemporaryError("no network") for _ in range(3)]
        item = await self.put(expires=T0 + 65)
        await self.start()
        for delay in (10, 20, 40):

            async def rescheduled(delay: int = delay) -> bool:
                rows = await self.rows()
                return bool(rows) and rows[0][1] == self.now() + delay and await self.idle()

            await self.eventually(rescheduled, f"the retry in {delay} s")
            self.clock.advance(delay)
        await self.eventually(self.empty, "the row is dropped")
        self.assertEqual(len(self.dispatcher.calls), 3)
        self.assertIn("sms expired", [k for k, _ in await self.kinds(item.message_id)])
        [detail] = [d for k, d in await self.kinds(item.message_id) if k == "sms expired"]
        self.assertIn("tried 3 times", detail)

    async def test_unopenable_row_dropped(self) -> None:
        """A row that does not open with this key is dropped, never sent as ciphertext."""
        item = await self.put(sealer=SmsText(os.urandom(32)))
        await self.start()
        await self.eventually(self.empty, "the row is dropped")
        self.assertEqual(self.dispatcher.calls, [])
        self.assertIn("sms failed", [k for k, _ in await self.kinds(item.message_id)])

    async def test_own_leases_taken_back_at_start(self) -> None:
        """Rows this node leased before a restart go out at start; another node's wait."""
        mine = await self.put()
        theirs = await self.put()
        [a] = await self.sms.claim("node-a", self.now(), LEASE_SECONDS, 1)
        [b] = await self.sms.claim("node-b", self.now(), LEASE_SECONDS, 1)
        self.assertEqual((a.id, b.id), (mine.id, theirs.id))
        await self.start()
        await self.eventually(
            lambda: self._only_row(theirs.id), "node-a's row is sent and node-b's kept"
        )
        self.assertEqual(self.dispatcher.calls, [(NUMBER, TEXT, mine.message_id)])
        # node-b's lease runs out: node-a takes the row over.
        self.clock.advance(LEASE_SECONDS + 1)
        await self.eventually(self.empty, "the outbox is empty")
        self.assertEqual(
            [about for _, _, about in self.dispatcher.calls], [mine.message_id, theirs.message_id]
        )

    async def _only_row(self, row_id: int) -> bool:
        return [item.id for item, _, _ in await self.rows()] == [row_id] and await self.idle()

    async def test_concurrency(self) -> None:
        """At most CONCURRENCY SMS are in flight; the next starts when one finishes."""
        self.dispatcher.hold = True
        count = CONCURRENCY + 2
        for _ in range(count):
            await self.put()
        self.outbox.startService()

        async def full() -> bool:
            return len(self.dispatcher.calls) == CONCURRENCY and not self.outbox._scanning

        await self.eventually(full, "CONCURRENCY sends are in flight")
        self.clock.advance(POLL_SECONDS)  # a poll while full changes nothing
        self.outbox.wake()
        for _ in range(5):
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.dispatcher.calls), CONCURRENCY)
        self.assertEqual(self.dispatcher.in_flight, CONCURRENCY)
        self.dispatcher.gates[0].callback(None)

        async def next_one() -> bool:
            return len(self.dispatcher.calls) == CONCURRENCY + 1

        await self.eventually(next_one, "the next send has started")
        self.dispatcher.hold = False
        for gate in self.dispatcher.gates[1:]:
            gate.callback(None)
        await self.eventually(self.empty, "every row is sent")
        self.assertEqual(len(self.dispatcher.calls), count)
        self.assertEqual(self.dispatcher.most_in_flight, CONCURRENCY)

    async def test_stop_waits_for_send_in_flight(self) -> None:
        """stopService() waits for a send in flight to be recorded."""
        self.dispatcher.hold = True
        await self.put()
        self.outbox.startService()

        async def sending() -> bool:
            return bool(self.dispatcher.calls)

        await self.eventually(sending, "the send has started")
        stopped = self.outbox.stopService()
        assert stopped is not None
        self.clock.advance(STOP_GRACE_SECONDS - 1)
        self.assertNoResult(stopped)
        self.dispatcher.gates[0].callback(None)
        await stopped
        self.assertEqual(await self.rows(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_stop_gives_up_after_grace(self) -> None:
        """A send that outlasts the grace period keeps its lease; the next start sends it."""
        self.dispatcher.hold = True
        item = await self.put()
        self.outbox.startService()

        async def sending() -> bool:
            return bool(self.dispatcher.calls)

        await self.eventually(sending, "the send has started")
        stopped = self.outbox.stopService()
        assert stopped is not None
        self.clock.advance(STOP_GRACE_SECONDS - 0.5)
        self.assertNoResult(stopped)
        self.clock.advance(0.5)
        self.successResultOf(stopped)
        self.flushLoggedErrors(CancelledError)
        [(row, _, _)] = await self.rows()
        self.assertEqual(row.id, item.id)
        [(owner,)] = await self.db.run(
            lambda txn: txn.execute("SELECT lease_owner FROM sms_outbox").fetchall()
        )
        self.assertEqual(owner, "node-a")
        # The same node, started again, sends it at once.
        self.dispatcher.hold = False
        again = self.make_outbox()
        again.startService()
        await self.eventually(lambda: self._empty_with(again), "the row is sent after restart")
        self.assertEqual(len(self.dispatcher.calls), 2)

    async def _empty_with(self, outbox: SmsOutbox) -> bool:
        return await self.rows() == [] and await self.idle(outbox)

    async def test_no_busy_polling_while_sending(self) -> None:
        """While a row is in flight, the outbox reads the database no more than every poll."""
        self.dispatcher.hold = True
        await self.put()
        claims: list[int] = []
        claim = self.sms.claim

        async def counted(owner: str, now: int, lease: int, limit: int) -> list[OutboxItem]:
            claims.append(now)
            return await claim(owner, now, lease, limit)

        self.patch(self.sms, "claim", counted)
        self.outbox.startService()

        async def sending() -> bool:
            return bool(self.dispatcher.calls) and await self.idle_but_sending()

        await self.eventually(sending, "the send has started")
        first = len(claims)
        for _ in range(10):  # ten seconds of a send in flight (a slow modem), well within a poll
            self.clock.advance(1)
            await self.eventually(self.idle_but_sending, "the scan is over")
        self.assertEqual(len(claims) - first, 0, f"scans at {[t - T0 for t in claims]}")

    async def idle_but_sending(self) -> bool:
        return not self.outbox._scanning and len(self.outbox._tasks) == 1
