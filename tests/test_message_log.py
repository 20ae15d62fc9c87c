"""
The message log: one line per event of a message's life, each starting with its short id.

The formats are checked line by line; then a message is driven through the intake, the
queue, the portal and the SMS outbox with an observer on Twisted's global log publisher, and
the whole log of its life is checked: every event has its line, and no subject, body, link
token or PIN is anywhere in it (neither in the text nor in an event field).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from secmail import message_log
from secmail.crypto import MasterKey
from secmail.logs import as_record
from secmail.queue import LEASE_SECONDS, OutboundQueue
from secmail.sms.dispatch import SmsDispatcher
from secmail.sms.outbox import SmsOutbox
from secmail.smtp.outgoing import DeliveryOutcome, DeliveryResult, TemporaryDeliveryError
from secmail.smtp.server import GatewayESMTPFactory
from secmail.store.messages import NewDelivery, NewEnvelope, NewMessage, QueueItem, new_id
from secmail.store.rows import short_id
from secmail.store.sms import SmsStore
from secmail.store.spool import SealedBytes
from secmail.web.portal import Portal
from tests.fixtures.intake import BODY, SUBJECT
from tests.fixtures.logs import CapturedLog
from tests.fixtures.mails import parse
from tests.fixtures.portal import Letter, PortalFixture
from tests.fixtures.settings import make_settings

MX = "mx.partner.example[198.51.100.4]:25"
INTERNAL = "mail.corp.example[192.0.2.25]:25"


class FormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.log = CapturedLog(self)

    def test_accepted(self) -> None:
        """Accepted: client, sender, size and every recipient with its level, after the id."""
        message_log.accepted(
            "3f9a2c81d0" + "e" * 22,
            peer="192.0.2.7",
            sender="alice@corp.example",
            size=5120,
            recipients=[("bob@partner.example", "letter"), ("carol@corp.example", "relay")],
        )
        self.assertEqual(
            self.log.lines(),
            [
                "3f9a2c81d0: accepted from 192.0.2.7 sender=<alice@corp.example> size=5120"
                " recipients=<bob@partner.example> (letter), <carol@corp.example> (relay)"
            ],
        )
        [event] = self.log.events
        self.assertEqual(event["message_id"], "3f9a2c81d0")
        self.assertEqual(event["peer"], "192.0.2.7")

    def test_refused(self) -> None:
        """Refused: no message id yet; the client, the command, the code and the reply."""
        message_log.refused(
            peer="192.0.2.7", command="RCPT TO:<x@y>", code=550, reason="5.1.1 no such user"
        )
        self.assertEqual(
            self.log.lines(), ["refused: RCPT TO:<x@y> from 192.0.2.7: 550 5.1.1 no such user"]
        )

    def test_delivery_of_a_notification_names_both_ids(self) -> None:
        """A notification's line starts with the letter's id and names its own after its kind."""
        message_log.delivery_status(
            message_id="7c1e2d3f4a" + "0" * 22,
            about="3f9a2c81d0" + "0" * 22,
            kind="notification",
            recipient="bob@partner.example",
            relay=MX,
            delay=1.25,
            status="sent",
            reply="250 2.0.0 Ok: queued as ABC",
        )
        self.assertEqual(
            self.log.lines(),
            [
                f"3f9a2c81d0: notification 7c1e2d3f4a to=<bob@partner.example> relay={MX}"
                " delay=1.2s status=sent (250 2.0.0 Ok: queued as ABC)"
            ],
        )

    def test_sms_by_mail_masks_the_number(self) -> None:
        """A row to an e-mail-to-SMS gateway shows the number masked."""
        message_log.delivery_status(
            message_id="a" * 32,
            about="b" * 32,
            kind="sms",
            recipient="358401234567@sms.example",
            relay="none",
            delay=0,
            status="bounced",
            reply="550 5.1.1 <358401234567@sms.example>: Recipient address rejected",
        )
        [line] = self.log.lines()
        self.assertNotIn("358401234567", self.log.everything())  # nor in the peer's echo
        self.assertIn("to=<+358 40 *** **67@sms.example>", line)

    def test_mail_about_a_trail_names_the_trail(self) -> None:
        """A code mail of D-Compose is about an outsider's trail, not a message: named whole."""
        message_log.delivery_status(
            message_id="c" * 32,
            about="compose:eve@outside.example",
            kind="code",
            recipient="eve@outside.example",
            relay="none",
            delay=0.04,
            status="deferred",
            reply="connection to relay.example:25 timed out",
        )
        self.assertEqual(
            self.log.lines(),
            [
                "compose:eve@outside.example: code cccccccccc to=<eve@outside.example>"
                " relay=none delay=0s status=deferred (connection to relay.example:25 timed out)"
            ],
        )

    def test_json_record_has_the_fields(self) -> None:
        """With --json-logs a line is an object with its text and stable field names."""
        message_log.opened(
            "3f9a2c81d0" + "0" * 22, envelope_id="e1", recipient="bob@x", peer="203.0.113.9"
        )
        [event] = self.log.events
        record = as_record(event)
        self.assertEqual(record["namespace"], "secmail.messages")
        self.assertEqual(record["text"], "3f9a2c81d0: opened to=<bob@x> from 203.0.113.9")
        self.assertEqual(
            (record["event"], record["message_id"], record["envelope_id"], record["peer"]),
            ("opened", "3f9a2c81d0", "e1", "203.0.113.9"),
        )

    def test_split_reply(self) -> None:
        """The host is taken from a reply it gave; a failure without a host has relay none."""
        self.assertEqual(
            message_log.split_reply(f"{MX} said: 550 5.1.1 no (in reply to RCPT TO)"),
            (MX, "550 5.1.1 no (in reply to RCPT TO)"),
        )
        self.assertEqual(
            message_log.split_reply("connection to mx:25 failed: refused"),
            ("none", "connection to mx:25 failed: refused"),
        )

    def test_pin_sent_masks_the_number(self) -> None:
        """PIN sent: the recipient, the number masked, the backend; never the whole number."""
        message_log.pin_sent(
            "3f9a2c81d0" + "0" * 22,
            envelope_id="e1",
            recipient="dave@partner.example",
            number="+358401234567",
            via="modem",
        )
        self.assertEqual(
            self.log.lines(),
            ["3f9a2c81d0: PIN sent to=<dave@partner.example> phone=+358 40 *** **67 via modem"],
        )
        self.assertNotIn("401234567", self.log.everything())

    def test_accepted_messages_from_the_portal(self) -> None:
        """Mail written in the portal: accepted with its levels, then its notifications."""
        letter_id, relay_id, notification_id = new_id(), new_id(), new_id()
        envelope = NewEnvelope("bob@partner.example", "bob@partner.example.s", "letter", None, "h")
        master = MasterKey(os.urandom(32))
        messages = [
            NewMessage(
                content=SealedBytes(master, relay_id, b"x" * 10),
                kind="reply",
                sender="b",
                deliveries=[_delivery("reply", ("alice@corp.example",), relay_id)],
            ),
            NewMessage(
                content=SealedBytes(master, letter_id, b"y" * 20),
                kind="mail",
                sender="b",
                envelopes=[envelope],
            ),
            NewMessage(
                content=SealedBytes(master, notification_id, b"z"),
                kind="notification",
                sender="b",
                deliveries=[_delivery("notification", ("bob@partner.example",), letter_id)],
            ),
        ]
        message_log.accepted_messages(messages, peer="203.0.113.9", sender="eve@x", via="D-Compose")
        self.assertEqual(
            self.log.lines(),
            [
                f"{short_id(relay_id)}: accepted from 203.0.113.9 via D-Compose sender=<eve@x>"
                " size=10 recipients=<alice@corp.example> (relay)",
                f"{short_id(letter_id)}: accepted from 203.0.113.9 via D-Compose sender=<eve@x>"
                " size=20 recipients=<bob@partner.example> (letter)",
                f"{short_id(letter_id)}: notification {short_id(notification_id)} queued"
                " to=<bob@partner.example>",
            ],
        )


def _delivery(kind: str, recipients: tuple[str, ...], about: str) -> NewDelivery:
    return NewDelivery(kind, "b", recipients, "smtp://x:25", "x", "", about)


class RefusedTests(SynchronousTestCase):
    def test_refused_commands_are_logged_once_each(self) -> None:
        """A refused MAIL, RCPT or DATA gets one line with the client, command, code, reply."""
        log = CapturedLog(self)
        settings = make_settings("/nonexistent", smtp={"accepted_networks": ["192.0.2.0/24"]})
        factory = GatewayESMTPFactory(settings.smtp, "gw.example", _RefusingDelivery, Clock())
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
        protocol.makeConnection(transport)
        for line in (
            b"EHLO mail.corp.example",
            b"DATA",
            b"MAIL FROM:<alice@corp.example>",
            b"RCPT TO:<nobody@partner.example>",
            b"DATA",
            b"RSET",
            b"MAIL FROM:<>",
            b"RCPT TO:<ok@corp.example>",
            b"DATA",
            b"Subject: SecretSubjectText",
            b"",
            b"SecretBodyText",
            b".",
        ):
            protocol.dataReceived(line + b"\r\n")
        self.assertIn(b"554 5.6.0 refused at the end\r\n", transport.value())
        self.assertEqual(
            log.lines(),
            [
                "refused: DATA from 192.0.2.10: 503 5.5.1 Error: need MAIL command",
                "refused: RCPT TO:<nobody@partner.example> from 192.0.2.10"
                " sender=<alice@corp.example>: 550 5.1.1 nobody here",
                "refused: DATA from 192.0.2.10 sender=<alice@corp.example>:"
                " 554 5.5.1 Error: no valid recipients",
                "refused: end of DATA from 192.0.2.10 sender=<>: 554 5.6.0 refused at the end",
            ],
        )
        self.assertNotIn("Secret", log.everything())


@implementer(IMessageDelivery)
class _RefusingDelivery:
    """A delivery that takes any sender and refuses every recipient."""

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        if str(user.dest).startswith("ok@"):
            return _RefusedAtTheEnd
        raise smtp.SMTPBadRcpt(user, 550, "5.1.1 nobody here")

    def receivedHeader(self, *args: Any) -> bytes:
        return b""


@implementer(IMessageSMTP)
class _RefusedAtTheEnd:
    """A message that takes every line and is refused at the final dot."""

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> Any:
        return fail(smtp.SMTPServerError(554, "5.6.0 refused at the end"))

    def connectionLost(self) -> None:
        pass


class ScriptedSender:
    """Answers each queue row as a peer would: by its first recipient, in the order given."""

    def __init__(self, answers: dict[str, list[DeliveryOutcome]]) -> None:
        self.answers = answers

    async def send(self, item: QueueItem, content: Any) -> DeliveryResult:
        [outcome] = await self.send_many([item], [content])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def send_many(self, items: Sequence[QueueItem], contents: Any) -> list[DeliveryOutcome]:
        outcomes = []
        for item in items:
            scripted = self.answers.get(item.recipients[0])
            if scripted:
                outcomes.append(scripted.pop(0))
            else:
                outcomes.append(
                    DeliveryResult(
                        accepted=list(item.recipients),
                        reply=f"{MX} said: 250 2.0.0 Ok: queued as ABC (in reply to end of data)",
                    )
                )
        return outcomes


class FakeModem:
    """An SMS backend that takes every SMS and remembers its text."""

    name = "modem"

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send(self, number: str, text: str) -> str:
        self.texts.append(text)
        return "ref-1"


class LifeTests(PortalFixture):
    """A message's life, from the intake to the PIN, as the log tells it."""

    def setUp(self) -> None:
        super().setUp()
        self.settings = make_settings(
            self.data_dir, sms={"order": ["smtp"], "smtp": {"address": "{to}@sms.example"}}
        )
        self.sms = SmsStore(self.db, os.urandom(32))
        self.portal = Portal(
            self.settings,
            self.store,
            self.portal_store,
            self.clock,
            csrf_key=os.urandom(32),
            on_commit=self.committed,
            sms=self.sms,
        )
        self.resource = self.portal.app.resource()
        self.log = CapturedLog(self)

    async def deliver_all(self, queue: OutboundQueue) -> None:
        """Every row due now, once."""
        items = await self.store.claim_due("node", self.now(), LEASE_SECONDS, 100)
        for item in items:
            await queue.deliver(item)

    async def token_for(self, recipient: str) -> str:
        for row in await self.rows("notification"):
            if row.recipients == (recipient,):
                text = parse(await self.store.read_all(row.message_id)).get_body(("plain",))
                assert text is not None
                [token] = re.findall(
                    r"https://portal\.gw\.example/m/([A-Za-z0-9_-]+)", text.get_content()
                )
                return token
        raise AssertionError(f"no notification to {recipient}")

    async def test_a_message_from_intake_to_pin(self) -> None:
        """
        Accepted, notifications queued, sent, deferred and bounced, opened and PIN sent: each
        its line, all starting with the message's short id, with no secret anywhere.
        """
        bob, carol, dave = "bob@partner.example", "carol@corp.example", "dave@partner.example"
        message, _ = await self.receive(
            [b"bob@partner.example.s", b"carol@corp.example", b"dave@partner.example.0401234567.s"]
        )
        sid = short_id(message.message_id)
        tokens = {r: await self.token_for(r) for r in (bob, dave)}
        notification_ids = {
            row.recipients[0]: short_id(row.message_id) for row in await self.rows("notification")
        }
        sender = ScriptedSender(
            {
                bob: [
                    TemporaryDeliveryError(
                        f"{MX} said: 451 4.7.1 Try again later (in reply to RCPT TO)"
                    )
                ],
                dave: [
                    DeliveryResult(
                        permanent={
                            dave: f"{MX} said: 550 5.1.1 No such user (in reply to RCPT TO)"
                        },
                        reply="",
                    )
                ],
                carol: [
                    DeliveryResult(
                        accepted=[carol],
                        reply=f"{INTERNAL} said: 250 2.0.0 Ok: queued as XYZ"
                        " (in reply to end of data)",
                    )
                ],
            }
        )
        queue = OutboundQueue(
            self.settings.queue,
            self.settings.gateway.hostname,
            self.settings.routes,
            self.store,
            sender,
            self.clock,
            "node",
        )
        self.clock.advance(2)
        await self.deliver_all(queue)  # carol sent, bob deferred, dave bounced
        self.clock.advance(3600)
        await self.deliver_all(queue)  # bob's notification sent, and the bounce to alice

        bobs = await self.store.envelope_by_token(tokens[bob])
        assert bobs is not None
        envelope_of_bob = bobs.id
        browser = await self.signed_in(Letter(tokens[bob], message.message_id, bobs.id))
        read = await browser.get("/read")
        self.assertEqual(read.code, 200)

        envelope = await self.store.envelope_by_token(tokens[dave])
        assert envelope is not None
        opened = await self.open(
            self.browser(), Letter(tokens[dave], message.message_id, envelope.id)
        )
        self.assertEqual(opened.code, 200, opened.text)
        modem = FakeModem()
        outbox = SmsOutbox(self.sms, SmsDispatcher([modem]), self.clock, "node")
        [item] = await self.sms.claim("node", self.now(), 300, 10)
        await outbox.send(item)
        [pin] = re.findall(r"\b\d{6}\b", modem.texts[0])

        lines = [line for line in self.log.lines() if line.startswith(sid)]
        self.assertEqual(lines, self.log.lines(), "every line of this life starts with its id")
        n = notification_ids
        expected = [
            f"{sid}: accepted from 192.0.2.10 sender=<alice@corp.example> size=\\d+ recipients="
            f"<{bob}> \\(letter\\), <{carol}> \\(relay\\), <{dave}> \\(registered\\)",
            f"{sid}: notification {n[bob]} queued to=<{bob}>",
            f"{sid}: notification {n[dave]} queued to=<{dave}>",
        ]
        first_round = [
            f"{sid}: to=<{carol}> relay={re.escape(INTERNAL)} delay=2s status=sent"
            " \\(250 2.0.0 Ok: queued as XYZ\\)",
            f"{sid}: notification {n[bob]} to=<{bob}> relay={re.escape(MX)} delay=2s"
            " status=deferred \\(451 4.7.1 Try again later \\(in reply to RCPT TO\\)\\)",
            f"{sid}: notification {n[dave]} to=<{dave}> relay={re.escape(MX)} delay=2s"
            " status=bounced \\(550 5.1.1 No such user \\(in reply to RCPT TO\\)\\)",
        ]
        second_round = [
            f"{sid}: notification {n[bob]} to=<{bob}> relay={re.escape(MX)} delay=3602s"
            " status=sent \\(250 2.0.0 Ok: queued as ABC\\)",
            f"{sid}: bounce [0-9a-f]{{10}} to=<alice@corp.example> relay={re.escape(MX)}"
            " delay=3600s status=sent \\(250 2.0.0 Ok: queued as ABC\\)",
        ]
        rest = [
            f"{sid}: opened to=<{bob}> from 127.0.0.1",
            f"{sid}: PIN sent to=<{dave}> phone=\\+358 40 \\*\\*\\* \\*\\*67 via modem",
        ]
        got = self.log.lines()
        self.assertEqual(len(got), 10, "\n".join(got))
        for pattern, line in zip(expected, got[:3], strict=True):
            self.assertRegex(line, f"^{pattern}$")
        # Within one round the rows go in the order they were claimed: any order here.
        for patterns, lines in ((first_round, got[3:6]), (second_round, got[6:8])):
            for pattern in patterns:
                matching = [line for line in lines if re.fullmatch(pattern, line)]
                self.assertEqual(len(matching), 1, (pattern, lines))
        for pattern, line in zip(rest, got[8:], strict=True):
            self.assertRegex(line, f"^{pattern}$")
        events = [e for e in self.log.events if e.get("log_namespace") == "secmail.messages"]
        self.assertEqual({e["message_id"] for e in events}, {sid})
        [opened_event] = [e for e in events if "opened" in e["log_format"]]
        self.assertEqual(opened_event["peer"], "127.0.0.1")
        self.assertEqual(opened_event["envelope_id"], envelope_of_bob)

        everything = self.log.everything()
        secrets = [
            SUBJECT.decode().removeprefix("Subject: "),
            BODY.decode(),
            "Initech",
            *tokens.values(),
            pin,
            "+358401234567",
            "0401234567",
        ]
        for secret in secrets:
            self.assertNotIn(secret, everything)


def test_a_locked_letter_is_a_line_of_its_life() -> None:
    """Locking a letter is logged under its short id, with its event name, never a code."""
    from twisted.logger import capturedLogs, formatEvent

    with capturedLogs() as events:
        message_log.letter_locked(
            "3f9a2c81d0" + "0" * 22,
            envelope_id="e1",
            recipient="bob@partner.example",
            reason="after too many wrong PINs",
        )
    [event] = events
    assert formatEvent(event) == (
        "3f9a2c81d0: locked after too many wrong PINs to=<bob@partner.example>"
    )
    assert (event["event"], event["envelope_id"]) == ("locked", "e1")
