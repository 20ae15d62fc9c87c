"""The outbound queue: delivery, retry backoff, bounces (DSN), leases and retention."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from email.message import EmailMessage
from typing import Any, cast

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from secmail.config import Settings
from secmail.crypto import MasterKey
from secmail.queue import (
    LEASE_SECONDS,
    OutboundQueue,
    RetentionJob,
    Sender,
    backoff,
    enhanced_status,
    session_groups,
)
from secmail.smtp.outgoing import (
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from secmail.smtp.routing import SmtpSender
from secmail.store.database import Database, StoreUnavailable
from secmail.store.engines import PostgresEngine
from secmail.store.messages import (
    MessageStore,
    NewDelivery,
    NewEnvelope,
    NewMessage,
    QueueItem,
    hash_token,
    new_id,
)
from secmail.store.spool import SealedBytes
from tests.dbs import on_each_engine, open_store
from tests.fixtures.mails import parse
from tests.fixtures.settings import INTERNAL, RELAY, make_settings

T0 = 1_700_000_000
DAY = 86400
ALICE = "alice@corp.example"
BOB = "bob@partner.example"
ORIGINAL = (
    b"Received: from mail.corp.example ([192.0.2.10])\r\n\tby gw.example (secmail) with ESMTP\r\n"
    b"From: Alice <alice@corp.example>\r\n"
    b"To: bob@partner.example\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Message-ID: <q3@corp.example>\r\n"
    b"\r\n"
    b"SecretBodyText: the numbers are bad.\r\n"
)


Outcome = DeliveryResult | Exception | Callable[[QueueItem], DeliveryResult]


class ScriptedSender:
    """A Sender that reads the content and then does what the test scripted.

    An outcome in C{by_recipient} for a row's first recipient comes first; else the next
    one in C{script}; else the row is delivered.
    """

    def __init__(self) -> None:
        self.script: list[Outcome] = []
        self.by_recipient: dict[str, Outcome] = {}
        self.calls: list[tuple[QueueItem, bytes]] = []
        self.sessions: list[list[int]] = []

    async def send(self, item: QueueItem, content: Any) -> DeliveryResult:
        data = b"".join([chunk async for chunk in content()])
        self.calls.append((item, data))
        outcome = self.by_recipient.get(item.recipients[0])
        if outcome is None:
            outcome = self.script.pop(0) if self.script else None
        if outcome is None:
            return DeliveryResult(accepted=list(item.recipients), reply="250 2.0.0 queued")
        if isinstance(outcome, Exception):
            raise outcome
        if callable(outcome):
            return outcome(item)
        return outcome

    async def send_many(
        self, items: Sequence[QueueItem], contents: Sequence[Any]
    ) -> list[DeliveryOutcome]:
        """One scripted outcome per row, in order, as one session would give them."""
        self.sessions.append([item.id for item in items])
        outcomes: list[DeliveryOutcome] = []
        for item, content in zip(items, contents, strict=True):
            try:
                outcomes.append(await self.send(item, content))
            except DeliveryError as e:
                outcomes.append(e)
        return outcomes


def make_queue(
    settings: Settings, store: MessageStore, sender: Sender, clock: Any, node_id: str
) -> OutboundQueue:
    """The queue on the sections tap.py gives it."""
    return OutboundQueue(
        settings.queue, settings.gateway.hostname, settings.routes, store, sender, clock, node_id
    )


def row(id: int, route: str, domain: str, sender: str = ALICE, to: str = BOB) -> QueueItem:
    """A claimed queue row, for tests that need no database."""
    return QueueItem(id, "m", "m", "relay", sender, (to,), route, domain, sender, T0, T0, 0, "")


def content_of(data: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def produce() -> AsyncIterator[bytes]:
        yield data

    return produce


class PureTests(SynchronousTestCase):
    def test_backoff_doubles_to_cap(self) -> None:
        """Retry delays start at retry_initial, double per attempt and stop at retry_max."""
        settings = make_settings(tempfile.gettempdir())
        self.assertEqual(
            [backoff(settings.queue, n) for n in range(7)], [300, 600, 1200, 2400, 4000, 4000, 4000]
        )

    def test_enhanced_status(self) -> None:
        """The RFC 3463 code is found in a reply text; anything else gives the default."""
        said = "mx.partner.example[192.0.2.1]:25 said: 550 5.1.1 <bob@partner.example>: no user"
        self.assertEqual(enhanced_status(said, "5.0.0"), "5.1.1")
        self.assertEqual(enhanced_status("451 4.7.1 greylisted", "5.0.0"), "4.7.1")
        self.assertEqual(enhanced_status("connection to 192.0.2.1:25 failed", "5.0.0"), "5.0.0")
        self.assertEqual(enhanced_status("550 no status here", "5.0.0"), "5.0.0")

    def test_session_groups(self) -> None:
        """Rows group by route, and for mx by domain too; order is kept; big groups are split."""
        rows = [
            row(1, RELAY, "a.example"),
            row(2, "mx", "a.example"),
            row(3, RELAY, "b.example"),
            row(4, "mx", "b.example"),
            row(5, "mx", "A.example"),
            row(6, INTERNAL, "corp.example"),
            row(7, RELAY, "c.example"),
        ]
        groups = [[item.id for item in group] for group in session_groups(rows, 50)]
        self.assertEqual(groups, [[1, 3, 7], [2, 5], [4], [6]])
        groups = [[item.id for item in group] for group in session_groups(rows, 2)]
        self.assertEqual(groups, [[1, 3], [2, 5], [4], [6], [7]])

    def test_sender_refuses_mixed_rows(self) -> None:
        """SmtpSender.send_many() refuses rows that cannot share a session."""
        settings = make_settings(tempfile.gettempdir())
        sender = SmtpSender(
            settings.gateway.hostname, settings.routes, settings.queue, MemoryReactorClock(), None
        )
        rows = [row(1, "mx", "a.example"), row(2, "mx", "b.example")]
        d = Deferred.fromCoroutine(sender.send_many(rows, [content_of(b"x")] * 2))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(sender.send_many([], []))), [])

    def test_sender_one_session_per_group(self) -> None:
        """SmtpSender.send_many() sends rows on a relay route over one connection, in order."""
        reactor = MemoryReactorClock()
        settings = make_settings(tempfile.gettempdir())
        sender = SmtpSender(
            settings.gateway.hostname, settings.routes, settings.queue, reactor, None
        )
        route = "smtp://192.0.2.9:2525"
        rows = [row(1, route, "x.example"), row(2, route, "y.example", sender="", to=ALICE)]
        d = Deferred.fromCoroutine(sender.send_many(rows, [content_of(b"one"), content_of(b"two")]))
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("192.0.2.9", 2525))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        replies = [b"220 hi\r\n", b"250 hello\r\n"]
        replies += [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"] * 2
        for reply in replies:
            protocol.dataReceived(reply)
        wire = transport.value()
        self.assertIn(b"MAIL FROM:<alice@corp.example>\r\nRCPT TO:<bob@partner.example>", wire)
        self.assertIn(b"MAIL FROM:<>\r\nRCPT TO:<alice@corp.example>", wire)
        outcomes = self.successResultOf(d)
        self.assertEqual([cast(DeliveryResult, o).accepted for o in outcomes], [[BOB], [ALICE]])

    def test_enhanced_status_only_valid_codes(self) -> None:
        """Words that merely look like codes (24.1.1, 5.1234.1) are not taken as a status."""
        self.assertEqual(enhanced_status("version 24.1.1 said no", "5.0.0"), "5.0.0")
        self.assertEqual(enhanced_status("550 5.1234.1 odd", "5.0.0"), "5.0.0")


@on_each_engine
class QueueTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        self.engine, self.db, self.master, self.store = open_store(
            self.engine_name, self.addCleanup
        )
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.settings = make_settings(tempfile.mkdtemp(prefix="secmail-queue-"))
        self.sender = ScriptedSender()
        self.queue = make_queue(self.settings, self.store, self.sender, self.clock, "node-a")

    def now(self) -> int:
        return int(self.clock.seconds())

    async def enqueue(
        self,
        recipients: tuple[str, ...] = (BOB,),
        *,
        kind: str = "relay",
        sender: str = ALICE,
        notify: str = ALICE,
        route: str = RELAY,
        content: bytes = ORIGINAL,
        store: MessageStore | None = None,
    ) -> tuple[str, int]:
        """Commit one message with one queue row; returns (message id, queue id)."""
        store = store or self.store
        message = NewMessage(
            content=SealedBytes(store.master, new_id(), content),
            kind="mail" if kind == "relay" else kind,
            sender=sender,
            deliveries=[NewDelivery(kind, sender, recipients, route, "", notify)],
        )
        [queue_id] = await store.commit([message], now=self.now())
        return message.content.message_id, queue_id

    def other_node(self) -> MessageStore:
        """A node whose key ring lacks this one's key, on the same database (a bad cluster)."""
        return MessageStore(self.db, MasterKey(os.urandom(32)))

    async def claim(self) -> QueueItem:
        [item] = await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 10)
        return item

    async def rows(self, kind: str | None = None) -> list[QueueItem]:
        return [i for i in await self.store.queue_list() if kind is None or i.kind == kind]

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Wait (on the real reactor, as the database thread does) until C{check} is true."""
        for _ in range(200):
            if await check():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"timed out waiting until {what}")

    async def idle(self) -> bool:
        return not self.queue._scanning and not self.queue._tasks

    async def the_bounce(self) -> tuple[QueueItem, EmailMessage, bytes]:
        [bounce] = await self.rows("bounce")
        content = await self.store.read_all(bounce.message_id)
        return bounce, parse(content), content

    # --- outcomes of one attempt ------------------------------------------------------------

    async def test_delivered_removes_row_and_message(self) -> None:
        """A 250 to the final dot removes the row and the relayed message with it."""
        message_id, _ = await self.enqueue()
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows(), [])
        self.assertEqual(await self.store.count_messages(), 0)
        [(item, data)] = self.sender.calls
        self.assertEqual(data, ORIGINAL)
        self.assertEqual(item.recipients, (BOB,))
        self.assertIn("delivered", [e[1] for e in await self.store.events(message_id)])

    async def test_temporary_failure_backs_off(self) -> None:
        """Each temporary failure defers the row by 300, 600, 1200, 2400, 4000, 4000 s."""
        error = "relay.example[192.0.2.1]:25 said: 451 4.3.0 try again later"
        self.sender.script = [TemporaryDeliveryError(error) for _ in range(6)]
        await self.enqueue()
        for attempt, delay in enumerate([300, 600, 1200, 2400, 4000, 4000], start=1):
            started = self.now()
            await self.queue.deliver(await self.claim())
            [row] = await self.rows()
            self.assertEqual(row.next_attempt - started, delay)
            self.assertEqual(row.attempts, attempt)
            self.assertIn("451 4.3.0", row.last_error)
            # Not due a second early, and not leased any more.
            early = await self.store.claim_due("node-a", row.next_attempt - 1, LEASE_SECONDS, 10)
            self.assertEqual(early, [])
            self.clock.advance(delay)
        self.assertEqual(await self.rows("bounce"), [])

    async def test_temporary_rcpt_replies_defer(self) -> None:
        """A 4xx to every RCPT (a result, not an exception) defers the row for those recipients."""
        carol = "carol@partner.example"
        self.sender.script = [
            DeliveryResult(temporary={BOB: "451 4.2.1 busy", carol: "452 4.2.2 full"})
        ]
        await self.enqueue((BOB, carol))
        await self.queue.deliver(await self.claim())
        [row] = await self.rows()
        self.assertEqual(row.recipients, (BOB, carol))
        self.assertEqual(row.next_attempt, self.now() + 300)
        self.assertEqual(await self.rows("bounce"), [])

    async def test_unexpected_error_retries(self) -> None:
        """A bug in the sender is logged and the row retried later, never dropped."""
        self.sender.script = [RuntimeError("boom")]
        await self.enqueue()
        await self.queue.deliver(await self.claim())
        [row] = await self.rows()
        self.assertEqual(row.next_attempt, self.now() + 300)
        self.assertIn("internal error: RuntimeError", row.last_error)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_permanent_failure_bounces(self) -> None:
        """A 5xx replaces the row by a <> bounce to the sender, on the sender's domain's route."""
        error = "relay.example[192.0.2.1]:25 said: 550 5.1.1 <bob@partner.example>: no such user"
        self.sender.script = [PermanentDeliveryError(error)]
        message_id, _ = await self.enqueue()
        await self.queue.deliver(await self.claim())

        bounce, dsn, content = await self.the_bounce()
        self.assertEqual(await self.rows("relay"), [])
        self.assertEqual(bounce.sender, "")
        self.assertEqual(bounce.recipients, (ALICE,))
        self.assertEqual(bounce.route, INTERNAL)
        self.assertEqual(bounce.domain, "corp.example")
        self.assertEqual(bounce.notify, "")
        # The original is gone; only the bounce is stored.
        self.assertEqual(await self.store.count_messages(), 1)
        self.assertIn("bounced", [e[1] for e in await self.store.events(message_id)])

        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertEqual(dsn["To"], ALICE)
        self.assertEqual(
            [p.get_content_type() for p in dsn.iter_parts()],
            ["text/plain", "message/delivery-status", "text/rfc822-headers"],
        )
        self.assertIn(b"Final-Recipient: rfc822; bob@partner.example", content)
        self.assertIn(b"Status: 5.1.1", content)
        self.assertIn(b"Subject: Quarterly figures", content)
        self.assertIn(b"Message-ID: <q3@corp.example>", content)
        self.assertNotIn(b"SecretBodyText", content)

    async def test_permanent_failure_per_recipient_texts(self) -> None:
        """Each recipient refused on its own is reported with its own reply, not another's."""
        carol = "carol@partner.example"
        replies = {BOB: "550 5.1.1 no such user bob", carol: "552 5.2.2 mailbox full carol"}
        self.sender.script = [PermanentDeliveryError(replies[BOB], recipients=replies)]
        await self.enqueue((BOB, carol))
        await self.queue.deliver(await self.claim())
        _, dsn, content = await self.the_bounce()
        self.assertIn(b"Status: 5.1.1", content)
        self.assertIn(b"Status: 5.2.2", content)
        self.assertIn(b"mailbox full carol", content)

    async def test_odd_reply_still_bounces(self) -> None:
        """A reply with a status look-alike still bounces (as 5.0.0) instead of failing the row."""
        self.sender.script = [PermanentDeliveryError("550 5.1234.1 odd server, v24.1.1")]
        await self.enqueue()
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows("relay"), [])
        _, _, content = await self.the_bounce()
        self.assertIn(b"Status: 5.0.0", content)

    async def test_lifetime_exceeded_bounces(self) -> None:
        """A temporary failure after 5 days in the queue bounces instead of deferring again."""
        self.sender.script = [TemporaryDeliveryError("451 4.4.1 no answer") for _ in range(2)]
        await self.enqueue()
        self.clock.advance(5 * DAY - 300)
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows("bounce"), [])
        self.clock.advance(300)
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows("relay"), [])
        bounce, dsn, content = await self.the_bounce()
        self.assertEqual(bounce.recipients, (ALICE,))
        human = dsn.get_body(("plain",))
        assert human is not None
        self.assertIn("gave up after 5 days in the queue", human.get_content())
        self.assertIn(b"Final-Recipient: rfc822; bob@partner.example", content)

    async def test_partial_result(self) -> None:
        """One accepted, one 4xx, one 5xx: a bounce for the 5xx only, the row kept for the 4xx."""
        accepted, later, refused = (f"{n}@partner.example" for n in ("ann", "ben", "cat"))
        self.sender.script = [
            DeliveryResult(
                accepted=[accepted],
                temporary={later: "451 4.2.1 mailbox busy"},
                permanent={refused: "550 5.1.1 no such user"},
            )
        ]
        message_id, queue_id = await self.enqueue((accepted, later, refused))
        await self.queue.deliver(await self.claim())

        [row] = await self.rows("relay")
        self.assertEqual(row.id, queue_id)
        self.assertEqual(row.recipients, (later,))
        self.assertEqual(row.attempts, 1)
        self.assertEqual(row.next_attempt, self.now() + 300)
        _, _, content = await self.the_bounce()
        self.assertIn(f"Final-Recipient: rfc822; {refused}".encode(), content)
        self.assertNotIn(f"Final-Recipient: rfc822; {accepted}".encode(), content)
        self.assertNotIn(f"Final-Recipient: rfc822; {later}".encode(), content)
        # The message stays for the recipient still to be tried.
        self.assertEqual(await self.store.read_all(message_id), ORIGINAL)
        # The audit trail shows the recipient that did get it.
        events = await self.store.events(message_id)
        self.assertTrue(any(kind == "delivered" and accepted in d for _, kind, _, d in events))

    async def test_null_notify_never_bounces(self) -> None:
        """Mail from <> that fails for good is dropped: no bounce is ever sent to <>."""
        self.sender.script = [PermanentDeliveryError("550 5.1.1 no such user")]
        await self.enqueue(sender="", notify="")
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows(), [])
        self.assertEqual(await self.store.count_messages(), 0)

    async def test_failed_bounce_is_not_bounced(self) -> None:
        """A bounce that cannot be delivered is dropped rather than bounced again."""
        self.sender.script = [PermanentDeliveryError("550 5.1.1 no such user")]
        await self.enqueue((ALICE,), kind="bounce", sender="", notify="", route=INTERNAL)
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows(), [])

    async def test_failed_notification_bounces_to_original_sender(self) -> None:
        """A notification that fails for good is reported to the secure message's sender."""
        notification = (
            b"From: Alice via secmail <secmail@gw.example>\r\nTo: bob@partner.example\r\n"
            b"Subject: Secure message from Alice is waiting for you\r\n\r\nlink\r\n"
        )
        self.sender.script = [PermanentDeliveryError("550 5.1.1 no such user")]
        await self.enqueue(
            kind="notification", sender="bounces@gw.example", notify=ALICE, content=notification
        )
        await self.queue.deliver(await self.claim())
        self.assertEqual(await self.rows("notification"), [])
        bounce, dsn, content = await self.the_bounce()
        self.assertEqual(bounce.recipients, (ALICE,))
        self.assertEqual(bounce.route, INTERNAL)
        human = dsn.get_body(("plain",))
        assert human is not None
        self.assertIn("notification of a secure message", human.get_content())
        self.assertIn(b"Subject: Secure message from Alice is waiting for you", content)

    # --- rows that cannot be read ----------------------------------------------------------

    async def quarantined(self, queue_id: int) -> QueueItem:
        [item] = [i for i in await self.rows() if i.id == queue_id]
        self.assertEqual(item.state, "quarantined")
        return item

    async def test_damaged_row_does_not_hold_up_its_session(self) -> None:
        """A row sealed under another master key is quarantined, its sender bounced, and the
        healthy rows of its route still go out in the same session."""
        ann, ben, cat = (f"{n}@partner.example" for n in ("ann", "ben", "cat"))
        _, ann_row = await self.enqueue((ann,))
        damaged_message, damaged_row = await self.enqueue((ben,), store=self.other_node())
        _, cat_row = await self.enqueue((cat,))
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        await self.eventually(self.idle, "the queue is idle")

        self.assertEqual(self.sender.sessions, [[ann_row, cat_row]])
        delivered = {i.recipients for i, _ in self.sender.calls if i.kind == "relay"}
        self.assertEqual(delivered, {(ann,), (cat,)})
        # The damaged row is kept, out of the queue, with its reason.
        item = await self.quarantined(damaged_row)
        self.assertEqual(item.recipients, (ben,))
        self.assertIn("cannot be read", item.last_error)
        self.assertIn("not in this node's key ring", item.last_error)
        self.assertEqual(await self.store.count_quarantined(), 1)
        self.assertEqual(self.queue.quarantined_count, 1)
        [(_, kind, _, detail)] = [
            e for e in await self.store.events(damaged_message) if e[1] == "quarantined"
        ]
        self.assertIn("not in this node's key ring", detail)
        # Its sender was told, without a word of the message (which we cannot read anyway).
        [(bounce, dsn)] = [(i, d) for i, d in self.sender.calls if i.kind == "bounce"]
        self.assertEqual((bounce.sender, bounce.recipients), ("", (ALICE,)))
        parsed = parse(dsn)
        self.assertEqual(
            [p.get_content_type() for p in parsed.iter_parts()],
            ["text/plain", "message/delivery-status"],
        )
        self.assertIn(b"Final-Recipient: rfc822; ben@partner.example", dsn)
        self.assertIn(b"Status: 5.3.0", dsn)
        human = parsed.get_body(("plain",))
        assert human is not None
        self.assertIn("damaged", human.get_content())
        # It is never claimed again, not even once its lease would have ended.
        self.clock.advance(LEASE_SECONDS + DAY)
        self.assertEqual(await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 10), [])

    async def test_damaged_chunk_found_before_the_session(self) -> None:
        """A large message with one altered chunk is quarantined before the session starts."""
        big = ORIGINAL + b"x" * 200_000 + b"\r\n"
        _, healthy = await self.enqueue(("ann@partner.example",))
        message_id, damaged = await self.enqueue(content=big)
        self.store.recent.drop(message_id)  # read from the database, as after a restart

        def alter(txn: Any) -> None:
            txn.execute(
                "UPDATE message_chunks SET data = ? WHERE message_id = ? AND seq = 2",
                (b"\0" * 64, message_id),
            )

        await self.db.run(alter)
        await self.queue.deliver_group(
            await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 10)
        )
        self.assertEqual(self.sender.sessions, [])  # one healthy row left: sent on its own
        self.assertEqual([i.id for i, _ in self.sender.calls if i.kind == "relay"], [healthy])
        item = await self.quarantined(damaged)
        self.assertIn("chunk 2 fails to decrypt", item.last_error)

    async def test_damage_found_while_sending_quarantines(self) -> None:
        """A message that fails to read during the send is quarantined, not retried forever."""
        message_id, queue_id = await self.enqueue()
        self.store.recent.drop(message_id)
        store = self.store
        foreign = self.other_node()

        async def swap_key(item: QueueItem) -> None:
            # The check passed; then the node's key is not the one the message was sealed with.
            self.queue.store = MessageStore(store.db, foreign.master)

        sender = self.sender
        original_send = sender.send

        async def send(item: QueueItem, content: Any) -> DeliveryResult:
            await swap_key(item)
            return await original_send(item, content)

        sender.send = send  # type: ignore[method-assign]
        await self.queue.deliver(await self.claim())
        self.queue.store = store
        item = await self.quarantined(queue_id)
        self.assertIn("not in this node's key ring", item.last_error)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    async def test_failing_bounce_quarantines_instead_of_leasing_forever(self) -> None:
        """A bounce that cannot be built quarantines the row; it is not retried at lease end."""
        # An internationalised recipient refused with 550: RFC 3464 has no room for it.
        rcpt = "björn@partner.example"
        self.sender.script = [PermanentDeliveryError("550 5.1.1 no such user")]
        message_id, queue_id = await self.enqueue((rcpt,))
        await self.queue.deliver(await self.claim())
        item = await self.quarantined(queue_id)
        self.assertIn("building its bounce failed: ValueError", item.last_error)
        self.assertIn("quarantined", [e[1] for e in await self.store.events(message_id)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(await self.rows("bounce"), [])  # not damaged: the admin looks at it
        self.clock.advance(LEASE_SECONDS + 1)
        self.assertEqual(await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 10), [])

    async def test_failing_record_quarantines(self) -> None:
        """An error while recording an outcome quarantines the row; it is not left leased."""
        _, queue_id = await self.enqueue()
        real_delivered = self.store.delivered

        async def delivered(*args: Any) -> None:
            raise RuntimeError("boom")

        self.store.delivered = delivered  # type: ignore[method-assign]
        await self.queue.deliver(await self.claim())
        self.store.delivered = real_delivered  # type: ignore[method-assign]
        item = await self.quarantined(queue_id)
        self.assertEqual(item.last_error, "recording its outcome failed: RuntimeError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(await self.rows("bounce"), [])

    async def test_failing_bounce_of_damaged_row_tells_sender(self) -> None:
        """A row that fails for good and cannot be read to build its bounce is quarantined; its
        sender still gets a bounce with the peer's reply."""
        self.sender.script = [PermanentDeliveryError("550 5.1.1 no such user")]
        message_id, queue_id = await self.enqueue()
        real_read_all = self.store.read_all
        foreign = self.other_node()

        async def read_all(message_id: str, limit: int | None = None) -> bytes:
            # The key changed between the send and the bounce (another node took over).
            self.store.recent.drop(message_id)
            opener = MessageStore(self.db, foreign.master)
            return await opener.read_all(message_id, limit)

        self.store.read_all = read_all  # type: ignore[method-assign]
        await self.queue.deliver(await self.claim())
        self.store.read_all = real_read_all  # type: ignore[method-assign]
        item = await self.quarantined(queue_id)
        self.assertIn("not in this node's key ring", item.last_error)
        _, dsn, content = await self.the_bounce()
        self.assertIn(b"Status: 5.1.1", content)
        self.assertIn(b"no such user", content)
        self.assertNotIn(b"Quarterly", content)

    async def test_damaged_notification_tells_the_secure_sender(self) -> None:
        """A notification that cannot be read is quarantined; the secure message's sender is
        told its recipient was not notified."""
        _, queue_id = await self.enqueue(
            kind="notification",
            sender="bounces@gw.example",
            notify=ALICE,
            store=self.other_node(),
        )
        await self.queue.deliver(await self.claim())
        await self.quarantined(queue_id)
        self.assertEqual(self.sender.calls, [])
        bounce, dsn, _ = await self.the_bounce()
        self.assertEqual(bounce.recipients, (ALICE,))
        human = dsn.get_body(("plain",))
        assert human is not None
        self.assertIn("were not told", " ".join(human.get_content().split()))

    async def test_damaged_bounce_is_not_bounced(self) -> None:
        """A bounce that cannot be read is quarantined and nobody is told (never <>)."""
        await self.enqueue(
            (ALICE,), kind="bounce", sender="", notify="", route=INTERNAL, store=self.other_node()
        )
        [item] = await self.rows()
        await self.queue.deliver(await self.claim())
        await self.quarantined(item.id)
        self.assertEqual([i.id for i in await self.rows("bounce")], [item.id])
        self.assertEqual(await self.store.count_quarantined(), 1)

    async def test_retry_brings_a_quarantined_row_back(self) -> None:
        """After the key is fixed, `queue retry` puts the row back and it is delivered."""
        foreign = self.other_node()
        message_id, queue_id = await self.enqueue(store=foreign)
        await self.queue.deliver(await self.claim())
        await self.quarantined(queue_id)
        [bounce] = await self.rows("bounce")
        await self.store.queue_delete(bounce.id, self.now())

        before = await self.store.queue_retry(queue_id, self.now())
        assert before is not None
        self.assertEqual(before.state, "quarantined")
        self.assertIn("released", [e[1] for e in await self.store.events(message_id)])
        # The node now has the key the row was sealed with.
        fixed = make_queue(self.settings, foreign, self.sender, self.clock, "node-a")
        await fixed.deliver(await self.claim())
        self.assertEqual(await self.rows(), [])
        self.assertEqual([i.id for i, _ in self.sender.calls], [queue_id])

    # --- the service ------------------------------------------------------------------------

    async def test_start_delivers_due_rows(self) -> None:
        """Starting the queue claims and delivers every due row, then goes idle."""
        await self.enqueue((BOB,))
        await self.enqueue(("carol@partner.example",))
        self.queue.wake()  # not running: does nothing
        self.queue.startService()
        self.addCleanup(self.queue.stopService)

        async def empty() -> bool:
            return await self.rows() == [] and await self.idle()

        await self.eventually(empty, "the queue is empty")
        self.assertEqual(len(self.sender.calls), 2)
        self.assertEqual(await self.store.count_messages(), 0)

    async def test_rows_sharing_a_route_share_a_session(self) -> None:
        """Due rows on one route go in one session; each row's own outcome is recorded."""
        ann, ben, cat, dan = (f"{n}@partner.example" for n in ("ann", "ben", "cat", "dan"))
        self.sender.by_recipient = {
            ben: PermanentDeliveryError("relay.example[192.0.2.1]:25 said: 550 5.1.1 no such user"),
            cat: TemporaryDeliveryError("relay.example[192.0.2.1]:25 said: 451 4.3.0 later"),
        }
        ann_message, ann_row = await self.enqueue((ann,))
        ben_message, ben_row = await self.enqueue((ben,))
        _, cat_row = await self.enqueue((cat,))
        _, internal_row = await self.enqueue((ALICE,), route=INTERNAL)
        _, dan_row = await self.enqueue((dan,))
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        await self.eventually(self.idle, "the queue is idle")

        self.assertEqual(self.sender.sessions, [[ann_row, ben_row, cat_row, dan_row]])
        # The INTERNAL row went on its own, and so did the bounce for ben's row.
        sent = {item.id: (item, data) for item, data in self.sender.calls}
        self.assertEqual(len(sent), 6)
        self.assertIn(internal_row, sent)
        [(bounce, dsn)] = [(i, d) for i, d in sent.values() if i.kind == "bounce"]
        self.assertEqual((bounce.sender, bounce.recipients), ("", (ALICE,)))
        self.assertIn(b"Final-Recipient: rfc822; ben@partner.example", dsn)
        self.assertIn(b"Status: 5.1.1", dsn)
        # cat's row is deferred, every other row is done with.
        [deferred] = await self.rows()
        self.assertEqual((deferred.id, deferred.attempts), (cat_row, 1))
        self.assertEqual(deferred.next_attempt, self.now() + 300)
        self.assertIn("451 4.3.0", deferred.last_error)
        self.assertIn("delivered", [e[1] for e in await self.store.events(ann_message)])
        self.assertIn("bounced", [e[1] for e in await self.store.events(ben_message)])

    async def test_session_failure_retries_every_row(self) -> None:
        """A sender that fails for a whole session is logged once; every row is retried later."""
        self.sender.script = [RuntimeError("boom")]
        await self.enqueue((BOB,))
        await self.enqueue(("carol@partner.example",))
        await self.queue.deliver_group(
            await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 10)
        )
        rows = await self.rows()
        self.assertEqual(len(rows), 2)
        for row in rows:
            self.assertEqual(row.next_attempt, self.now() + 300)
            self.assertEqual(row.last_error, "internal error: RuntimeError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_concurrency_counts_rows(self) -> None:
        """With concurrency 2, a session takes two rows; the third waits for them to finish."""
        self.settings = make_settings(self.settings.gateway.data_dir, queue={"concurrency": 2})
        self.queue = make_queue(self.settings, self.store, self.sender, self.clock, "node-a")
        ids = [(await self.enqueue((f"{n}@partner.example",)))[1] for n in ("a", "b", "c")]
        self.queue.startService()
        self.addCleanup(self.queue.stopService)

        async def empty() -> bool:
            return await self.rows() == [] and await self.idle()

        await self.eventually(empty, "the queue is empty")
        self.assertEqual(self.sender.sessions, [ids[:2]])
        self.assertEqual([item.id for item, _ in self.sender.calls], ids)

    async def test_stop_waits_for_delivery_in_flight(self) -> None:
        """Stopping lets a delivery in flight record its outcome before the database goes."""
        gate: Deferred[None] = Deferred()
        calls: list[QueueItem] = []

        class SlowSender:
            async def send(self, item: QueueItem, content: Any) -> DeliveryResult:
                calls.append(item)
                await gate
                return DeliveryResult(accepted=list(item.recipients))

            async def send_many(
                self, items: Sequence[QueueItem], contents: Sequence[Any]
            ) -> list[DeliveryOutcome]:
                pairs = zip(items, contents, strict=True)
                return [await self.send(item, content) for item, content in pairs]

        self.queue.sender = SlowSender()
        await self.enqueue((BOB,))
        self.queue.startService()

        async def sending() -> bool:
            return bool(calls)

        await self.eventually(sending, "the delivery has started")
        stopped = self.queue.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        gate.callback(None)
        await stopped
        self.assertEqual(await self.rows(), [])

    async def test_wake_and_poll(self) -> None:
        """Rows queued while running go out on wake(); deferred rows on a later poll."""
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        await self.eventually(self.idle, "the first scan is done")
        self.sender.script = [TemporaryDeliveryError("451 4.3.0 later")]
        await self.enqueue()
        self.queue.wake()

        async def deferred() -> bool:
            rows = await self.rows()
            return len(rows) == 1 and rows[0].attempts == 1 and await self.idle()

        await self.eventually(deferred, "the row is deferred")
        self.assertEqual(len(self.sender.calls), 1)
        # The poll timer, on the queue's clock, finds it once it is due.
        self.clock.advance(300)

        async def empty() -> bool:
            return await self.rows() == [] and await self.idle()

        await self.eventually(empty, "the deferred row is delivered")
        self.assertEqual(len(self.sender.calls), 2)

    async def test_stop_cancels_timer(self) -> None:
        """A stopped queue leaves no timer behind and scans no more."""
        self.queue.startService()
        await self.eventually(self.idle, "the first scan is done")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.queue.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        await self.enqueue()
        self.queue.wake()
        self.assertEqual(len(await self.store.claim_due("other", self.now(), 60, 10)), 1)

    async def test_release_own_leases(self) -> None:
        """After a restart the node takes back its own leased rows, and only those."""
        _, mine = await self.enqueue()
        _, theirs = await self.enqueue()
        [a] = await self.store.claim_due("node-a", self.now(), LEASE_SECONDS, 1)
        [b] = await self.store.claim_due("node-b", self.now(), LEASE_SECONDS, 1)
        self.assertEqual({a.id, b.id}, {mine, theirs})
        await self.queue.release_own_leases()
        [again] = await self.store.claim_due("node-c", self.now(), LEASE_SECONDS, 10)
        self.assertEqual(again.id, a.id)

    async def test_start_after_restart(self) -> None:
        """At start the queue takes back its own leases, then scans; stop_scanning stops it."""
        _, mine = await self.enqueue()
        [leased] = await self.store.claim_due(self.queue.node_id, self.now(), LEASE_SECONDS, 1)
        self.assertEqual(leased.id, mine)
        await self.queue.start_after_restart()
        self.assertTrue(self.queue.running)
        await self.eventually(self.idle, "the first scan is done")
        self.assertEqual(len(self.sender.calls), 1)  # the row leased before the restart went
        stopping = self.queue.stop_scanning()
        if stopping is not None:
            await stopping
        self.assertFalse(self.queue.running)
        self.assertIsNone(self.queue.stop_scanning())  # stopping twice is harmless

    async def test_stopped_while_taking_back_leases(self) -> None:
        """A gateway stopped while the queue takes back its leases does not start scanning."""
        starting = Deferred.fromCoroutine(self.queue.start_after_restart())
        self.assertIsNone(self.queue.stop_scanning())
        await starting
        self.assertFalse(self.queue.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_retention_deletes_expired(self) -> None:
        """Secure messages past retention_days are deleted with their envelopes; newer stay."""

        def secure(token: str) -> NewMessage:
            envelope = NewEnvelope(BOB, BOB + ".s", "letter", None, hash_token(token))
            return NewMessage(
                SealedBytes(self.master, new_id(), ORIGINAL), "mail", ALICE, envelopes=[envelope]
            )

        await self.store.commit([secure("old")], now=T0 - 31 * DAY)
        await self.store.commit([secure("new")], now=T0 - 29 * DAY)
        await RetentionJob(self.settings.retention, self.store, self.clock).run()
        self.assertIsNone(await self.store.envelope_by_token("old"))
        self.assertIsNotNone(await self.store.envelope_by_token("new"))
        self.assertEqual(await self.store.count_messages(), 1)

    async def test_retention_prunes_the_audit_trail(self) -> None:
        """Events older than audit_days go (the message's own trail too); newer ones stay."""
        await self.store.add_event("gone", None, "opened", "", T0 - 366 * DAY)
        await self.store.add_event("gone", None, "expired", "", T0 - 300 * DAY)
        await self.store.add_event("kept", None, "opened", "", T0 - 364 * DAY)
        await RetentionJob(self.settings.retention, self.store, self.clock).run()
        self.assertEqual([kind for _, kind, _, _ in await self.store.events("gone")], ["expired"])
        self.assertEqual(len(await self.store.events("kept")), 1)
        shorter = make_settings(self.settings.gateway.data_dir, secure={"audit_days": 200})
        await RetentionJob(shorter.retention, self.store, self.clock).run()
        self.assertEqual(await self.store.events("gone"), [])
        self.assertEqual(await self.store.events("kept"), [])


class StoreDownTests(TestCase):
    def setUp(self) -> None:
        self.db = Database(PostgresEngine("postgresql://nobody@127.0.0.1:1/none"), reactor)
        self.db.start()
        self.addCleanup(self.db.stop)
        self.store = MessageStore(self.db, MasterKey(os.urandom(32)))
        self.settings = make_settings(tempfile.gettempdir())
        self.clock = task.Clock()

    async def test_retention_failure_logged(self) -> None:
        """A retention run that cannot reach the database logs and lets the timer run again."""
        await RetentionJob(self.settings.retention, self.store, self.clock).run()
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    async def test_scan_failure_polls_again(self) -> None:
        """A queue scan that cannot reach the database is logged and retried at the next poll."""
        queue = make_queue(self.settings, self.store, ScriptedSender(), self.clock, "n")
        queue.startService()
        self.addCleanup(queue.stopService)
        for _ in range(200):
            if not queue._scanning:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(queue._scanning)
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), self.settings.queue.poll_interval)
