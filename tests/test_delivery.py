"""The intake: what the ESMTP server's DATA becomes in the encrypted store, and when it says 250."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.mail import smtp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from secmail.crypto import CHUNK_SIZE
from secmail.smtp.delivery import (
    GatewayDelivery,
    IncomingMessage,
    subject_and_sender_name,
    subject_keyword_texts,
)
from secmail.store.database import Database
from secmail.store.engines import PostgresEngine, SqliteEngine
from secmail.store.messages import MessageStore, NewMessage
from tests.dbs import on_each_engine
from tests.fixtures.intake import BODY, HELO, SUBJECT, T0, IntakeFixture, make_intake
from tests.fixtures.mails import parse
from tests.fixtures.settings import INTERNAL, RELAY, make_settings


@on_each_engine
class IntakeTestsMixin(IntakeFixture):
    # --- secure and plain recipients ---------------------------------------------------------

    async def test_marked_recipient(self) -> None:
        """A marked recipient gets an envelope and a notification row, and no relay row."""
        message, _ = await self.receive([b"bob@partner.example.s"])
        self.assertEqual(self.commits, 1)
        self.assertEqual(await self.rows("relay"), [])
        [row] = await self.rows()
        self.assertEqual(row.kind, "notification")
        # The bounce address, or its VERP form naming the envelope.
        verp = re.fullmatch(r"bounces(?:\+([0-9a-f]{32}))?@gw\.example", row.sender)
        assert verp is not None, row.sender
        self.assertEqual(row.notify, "alice@corp.example")
        self.assertEqual(row.recipients, ("bob@partner.example",))
        self.assertEqual(row.route, RELAY)
        self.assertNotEqual(row.message_id, message.message_id)
        self.assertEqual(await self.count("envelopes"), 1)

        content = await self.store.read_all(row.message_id)
        notification = parse(content)
        text = notification.get_body(("plain",))
        assert text is not None
        [token] = re.findall(r"https://portal\.gw\.example/m/([A-Za-z0-9_-]+)", text.get_content())
        envelope = await self.store.envelope_by_token(token)
        assert envelope is not None
        self.assertEqual(envelope.message_id, message.message_id)
        self.assertEqual(envelope.recipient, "bob@partner.example")
        self.assertEqual(envelope.original, "bob@partner.example.s")
        self.assertEqual(envelope.level, "letter")
        self.assertEqual(envelope.sender, "alice@corp.example")
        if verp.group(1):
            self.assertEqual(verp.group(1), envelope.id)
        for secret in (b"Merger plans", b"ConfidentialBodyText", b"Initech"):
            self.assertNotIn(secret, content)
            self.assertNotIn(secret.decode(), str(notification))

    def test_recipient_without_domain_refused(self) -> None:
        """RCPT TO:<bob> is refused (553), not completed with the gateway's own host name."""
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        user = smtp.User(b"bob", HELO, type("P", (), {"host": b"gw.example"})(), origin)
        self.assertEqual(str(user.dest), "bob@gw.example")  # what Twisted made of it
        with self.assertRaises(smtp.SMTPBadRcpt) as e:
            delivery.validateTo(user)
        self.assertEqual(e.exception.code, 553)

    def test_short_disk_refuses_with_452(self) -> None:
        """Below 1.5 x max_message_size of free disk, MAIL FROM gets 452 4.3.1, never 250."""
        st = os.statvfs(self.data_dir)
        free = st.f_bavail * st.f_frsize
        settings = make_settings(self.data_dir, smtp={"max_message_size": free})
        intake = make_intake(settings, self.store, self.master, self.clock, deferToThread)
        with self.assertRaises(smtp.SMTPBadSender) as e:
            GatewayDelivery(intake).validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        self.assertEqual(e.exception.code, 452)
        self.assertIn("4.3.1", str(e.exception))
        # With room to spare the same sender is accepted.
        GatewayDelivery(self.intake).validateFrom(HELO, smtp.Address(b"alice@corp.example"))

    async def test_audit_trail_on_original(self) -> None:
        """The notification's delivery is recorded on the original message's audit trail."""
        message, _ = await self.receive([b"bob@partner.example.s"])
        [item] = await self.store.claim_due("n", now=T0, lease=60, limit=5)
        await self.store.delivered(item, item.recipients, "250", now=T0 + 1)
        kinds = [
            (kind, detail) for _, kind, _, detail in await self.store.events(message.message_id)
        ]
        self.assertEqual([k for k, _ in kinds], ["received", "notification queued", "delivered"])
        self.assertIn("notification to bob@partner.example", kinds[-1][1])

    async def test_registered_letter(self) -> None:
        """A number in the marking makes a registered letter with the number in E.164 form."""
        message, _ = await self.receive([b"bob@partner.example.0401234567.s"])
        [row] = await self.rows()
        content = await self.store.read_all(row.message_id)
        text = parse(content).get_body(("plain",))
        assert text is not None
        [token] = re.findall(r"/m/([A-Za-z0-9_-]+)", text.get_content())
        envelope = await self.store.envelope_by_token(token)
        assert envelope is not None
        self.assertEqual(envelope.level, "registered")
        self.assertEqual(envelope.phone, "+358401234567")

    async def test_plain_to_incoming_domain(self) -> None:
        """In mode "marked", plain mail to our own domain is relayed on the incoming route."""
        message, _ = await self.receive([b"carol@corp.example"])
        [row] = await self.rows()
        self.assertEqual(row.kind, "relay")
        self.assertEqual(row.route, INTERNAL)
        self.assertEqual(row.recipients, ("carol@corp.example",))
        self.assertEqual(row.sender, "alice@corp.example")
        self.assertEqual(row.notify, "alice@corp.example")
        self.assertEqual(row.message_id, message.message_id)
        self.assertEqual(await self.count("envelopes"), 0)

    async def test_mixed_message_stored_once(self) -> None:
        """One secure and one plain recipient: one stored message serves both."""
        message, _ = await self.receive([b"bob@partner.example.s", b"carol@corp.example"])
        [relay] = await self.rows("relay")
        [notification] = await self.rows("notification")
        self.assertEqual(relay.message_id, message.message_id)
        self.assertEqual(relay.recipients, ("carol@corp.example",))
        self.assertEqual(notification.recipients, ("bob@partner.example",))
        self.assertEqual(await self.count("envelopes"), 1)
        # The original once, plus the notification.
        self.assertEqual(await self.store.count_messages(), 2)

    async def test_duplicate_recipient_once(self) -> None:
        """The same recipient given twice gets one envelope and one notification."""
        await self.receive([b"bob@partner.example.s", b"bob@partner.example.s"])
        self.assertEqual(len(await self.rows("notification")), 1)
        self.assertEqual(await self.count("envelopes"), 1)

    async def test_null_sender(self) -> None:
        """A secure message from <> is kept, and its notification never bounces back to <>."""
        await self.receive([b"bob@partner.example.s"], sender=b"")
        [row] = await self.rows()
        self.assertEqual(row.notify, "")

    # --- headers only the gateway sets ---------------------------------------------------------

    FORGED = [
        b"X-Secmail-Verified: boss@corp.example",
        b"x-secmail-verified: boss@corp.example",
        b"X-SECMAIL-VERIFIED \t: boss@corp.example",
        b"X-Secmail-Verified:",
        b"\tboss@corp.example",
        b"X-Secmail-Anything-Else: boss@corp.example",
    ]

    async def assert_forged_headers_removed(self, recipient: bytes) -> bytes:
        lines = [
            b"From: alice@corp.example",
            *self.FORGED[:3],
            SUBJECT,
            *self.FORGED[3:],
            b"X-Other: kept",
            b" and its continuation",
            b"",
            b"X-Secmail-Verified: a body line is content, not a header",
        ]
        message, received = await self.receive([recipient], lines)
        stored = await self.store.read_all(message.message_id)
        head, _, body = stored.partition(b"\r\n\r\n")
        self.assertNotIn(b"secmail-", head.lower())
        self.assertNotIn(b"boss@corp.example", stored)
        self.assertEqual(
            head + b"\r\n",
            b"\r\n".join(
                [
                    *received.splitlines(),
                    b"From: alice@corp.example",
                    SUBJECT,
                    b"X-Other: kept",
                    b" and its continuation",
                ]
            )
            + b"\r\n",
        )
        self.assertEqual(body, b"X-Secmail-Verified: a body line is content, not a header\r\n")
        return stored

    async def test_forged_gateway_headers_removed_before_relaying(self) -> None:
        """Incoming X-Secmail-* fields (any case, folded, space before colon) are never relayed."""
        await self.assert_forged_headers_removed(b"carol@corp.example")
        [row] = await self.rows("relay")
        self.assertEqual(row.route, INTERNAL)

    async def test_forged_gateway_headers_removed_before_storing_a_letter(self) -> None:
        """A secure letter is stored without the forged X-Secmail-* fields the portal would show."""
        await self.assert_forged_headers_removed(b"bob@partner.example.s")
        self.assertEqual(await self.count("envelopes"), 1)

    async def test_body_without_blank_line_gets_one(self) -> None:
        """A body that starts without a blank line gets one, so no later line reads as a header."""
        lines = [SUBJECT, b"This starts the body", b"X-Secmail-Verified: boss@corp.example"]
        message, received = await self.receive([b"carol@corp.example"], lines)
        expected = b"\r\n".join([*received.splitlines(), SUBJECT, b"", *lines[1:]]) + b"\r\n"
        self.assertEqual(await self.store.read_all(message.message_id), expected)

    # --- senders and the postmaster -------------------------------------------------------------

    def test_sender_without_domain_refused(self) -> None:
        """MAIL FROM:<alice> gets 553 5.1.7, not completed with the gateway's own host name."""
        origin = smtp.Address(b"<alice>", b"gw.example")
        self.assertEqual(str(origin), "alice@gw.example")  # what Twisted made of it
        with self.assertRaises(smtp.SMTPBadSender) as e:
            GatewayDelivery(self.intake).validateFrom(HELO, origin)
        self.assertEqual(e.exception.code, 553)
        self.assertIn("needs a domain", str(e.exception))

    def test_over_long_sender_refused(self) -> None:
        """A sender over 254 characters gets 553 5.1.7."""
        origin = smtp.Address(b"<" + b"a" * 64 + b"@" + b"b" * 182 + b".example>")
        with self.assertRaises(smtp.SMTPBadSender) as e:
            GatewayDelivery(self.intake).validateFrom(HELO, origin)
        self.assertEqual(e.exception.code, 553)

    async def test_bare_postmaster_relayed_to_internal_server(self) -> None:
        """RCPT TO:<PostMaster> (no domain, any case) is relayed to [routes] incoming."""
        message, _ = await self.receive([b"<PostMaster>", b"carol@corp.example"])
        [row] = await self.rows("relay")
        self.assertEqual(row.route, INTERNAL)
        self.assertEqual(row.recipients, ("postmaster", "carol@corp.example"))
        self.assertEqual(row.message_id, message.message_id)
        self.assertEqual(await self.count("envelopes"), 0)

    # --- refused at RCPT TO --------------------------------------------------------------------

    def test_marked_mode_refuses_plain_outside(self) -> None:
        """Mode "marked" refuses an unmarked outside recipient with 550 at RCPT TO."""
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        with self.assertRaises(smtp.SMTPBadRcpt) as e:
            delivery.validateTo(self.user(b"bob@partner.example", origin))
        self.assertEqual(e.exception.code, 550)
        self.assertIn("bob@partner.example.s", str(e.exception))

    def test_malformed_address_refused(self) -> None:
        """Addresses we cannot or will not handle are refused with 501 or 553."""
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        for address, code in [
            (b"bob@partner..example.s", 501),
            (b'"bob smith"@partner.example.s', 553),
            (b"bob@partner", 553),
        ]:
            with self.assertRaises(smtp.SMTPBadRcpt) as e:
                delivery.validateTo(self.user(address, origin))
            self.assertEqual(e.exception.code, code, address)

    def test_rcpt_before_mail(self) -> None:
        """RCPT TO without a MAIL FROM is refused with 503."""
        delivery = GatewayDelivery(self.intake)
        with self.assertRaises(smtp.SMTPBadRcpt) as e:
            delivery.validateTo(self.user(b"bob@partner.example.s", smtp.Address(b"")))
        self.assertEqual(e.exception.code, 503)

    # --- the bytes -----------------------------------------------------------------------------

    async def test_byte_exact(self) -> None:
        """The stored message is the Received header and the lines as given, CRLF-joined."""
        lines = [
            b"From: alice@corp.example",
            b"X-Odd:   spaces kept   \t",
            b"Subject: =?utf-8?q?caf=C3=A9?=",
            b"",
            b"From the start of a line",
            b".leading dot (already unstuffed)",
            b"\xff\xfe not utf-8",
            b"x" * 3000,
            b"",
            b"",
        ]
        message, received = await self.receive([b"carol@corp.example"], lines)
        self.assertTrue(received.startswith(b"Received: from mail.corp.example ([192.0.2.10])"))
        self.assertIn(
            b"by gw.example (secmail) with ESMTP id " + message.message_id.encode(), received
        )
        expected = b"\r\n".join([*received.splitlines(), *lines]) + b"\r\n"
        self.assertEqual(await self.store.read_all(message.message_id), expected)

    async def test_headers_only(self) -> None:
        """A message with no blank line and no body is stored as it came."""
        lines = [b"Subject: only headers", b"To: carol@corp.example"]
        message, received = await self.receive([b"carol@corp.example"], lines)
        expected = b"\r\n".join([*received.splitlines(), *lines]) + b"\r\n"
        self.assertEqual(await self.store.read_all(message.message_id), expected)

    async def test_large_message_round_trip(self) -> None:
        """A message over three 64 KiB chunks is sealed as it streams and reads back whole."""
        body = [os.urandom(30).hex().encode() for _ in range(4 * CHUNK_SIZE // 60)]
        lines = [b"Subject: big", b"", *body]
        message, received = await self.receive([b"carol@corp.example"], lines)
        expected = b"\r\n".join([*received.splitlines(), *lines]) + b"\r\n"
        self.assertGreater(len(expected), 3 * CHUNK_SIZE)
        self.assertEqual(await self.store.read_all(message.message_id), expected)
        await self.spool_empties()

    # --- failures --------------------------------------------------------------------------------

    async def test_store_failure_is_451(self) -> None:
        """When the database cannot commit, the final dot gets 451, never 250."""
        db = Database(PostgresEngine("postgresql://nobody@127.0.0.1:1/none"), reactor)
        db.start()
        self.addCleanup(db.stop)
        intake = self.make_intake(MessageStore(db, self.master))
        message, _ = self.start([b"bob@partner.example.s"], intake=intake)
        for line in [SUBJECT, b"", *(b"y" * 998 for _ in range(200))]:
            message.lineReceived(line)
        with self.assertRaises(smtp.SMTPServerError) as e:
            await message.eomReceived()
        self.assertEqual(e.exception.code, 451)
        self.assertEqual(self.commits, 0)
        await self.spool_empties()

    async def test_unexpected_store_error_is_451(self) -> None:
        """An error other than StoreUnavailable (e.g. SQLite "disk full" mid-insert) is a 451."""

        class BrokenStore(MessageStore):
            async def commit(self, messages: Sequence[NewMessage], now: int) -> list[int]:
                raise sqlite3.OperationalError("database or disk is full")

        intake = self.make_intake(BrokenStore(self.db, self.master))
        message, _ = self.start([b"carol@corp.example"], intake=intake)
        for line in [SUBJECT, b"", *(b"y" * 998 for _ in range(200))]:
            message.lineReceived(line)
        with self.assertRaises(smtp.SMTPServerError) as e:
            await message.eomReceived()
        self.assertEqual(e.exception.code, 451)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        await self.spool_empties()
        self.assertEqual(self.commits, 0)

    async def test_connection_lost_stores_nothing(self) -> None:
        """A message cut off before the final dot leaves nothing in the store or the spool."""
        message, _ = self.start([b"bob@partner.example.s", b"carol@corp.example"])
        for line in [SUBJECT, b"", *(b"z" * 998 for _ in range(200))]:
            message.lineReceived(line)
        await message._spool.finished()  # the full chunks are sealed into the spool file
        self.assertEqual(len(os.listdir(self.intake.spool_dir)), 1)
        message.connectionLost()
        await self.spool_empties()
        self.assertEqual(await self.store.count_messages(), 0)
        self.assertEqual(await self.rows(), [])
        self.assertEqual(self.commits, 0)

    async def test_new_transaction_aborts_unfinished(self) -> None:
        """A new MAIL FROM on the connection throws away a message that never got its dot."""
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        message = delivery.validateTo(self.user(b"carol@corp.example", origin))()
        message.lineReceived(SUBJECT)
        delivery.validateFrom(HELO, origin)
        self.assertTrue(message.done)
        self.assertEqual(await self.store.count_messages(), 0)

    # --- notifications that come back ----------------------------------------------------------

    async def test_returned_notification_tells_sender(self) -> None:
        """A DSN to a notification's VERP address bounces to the original sender; none is stored."""
        await self.receive([b"bob@partner.example.s"])
        [row] = await self.rows("notification")
        report = (
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
            b"",
            b"--b",
            b"Content-Type: message/delivery-status",
            b"",
            b"Reporting-MTA: dns; mx.partner.example",
            b"",
            b"Final-Recipient: rfc822; bob@partner.example",
            b"Action: failed",
            b"Status: 5.1.1",
            b"Diagnostic-Code: smtp; 550 5.1.1 no such user",
            b"--b--",
        )
        messages_before = await self.store.count_messages()
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"<>"))
        returned = delivery.validateTo(self.user(row.sender.encode(), origin))()
        self.assertNotIsInstance(returned, IncomingMessage)
        for line in report:
            returned.lineReceived(line)
        self.assertEqual(await returned.eomReceived(), b"returned")
        [bounce] = await self.rows("bounce")
        self.assertEqual(bounce.sender, "")
        self.assertEqual(bounce.recipients, ("alice@corp.example",))
        dsn = await self.store.read_all(bounce.message_id)
        self.assertIn(b"bob@partner.example", dsn)
        self.assertIn(b"no such user", dsn)
        # Only the bounce to alice was added: the returned mail itself is not kept.
        self.assertEqual(await self.store.count_messages(), messages_before + 1)
        envelope_id = row.sender.split("+", 1)[1].split("@", 1)[0]
        envelope = await self.store.envelope_by_id(envelope_id)
        assert envelope is not None
        self.assertEqual(envelope.state, "notification returned")

    async def test_returned_non_report_dropped(self) -> None:
        """An auto-reply to a notification's sender address is accepted and dropped."""
        await self.receive([b"bob@partner.example.s"])
        [row] = await self.rows("notification")
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"<>"))
        returned = delivery.validateTo(self.user(row.sender.encode(), origin))()
        returned.lineReceived(b"Subject: Out of office")
        returned.lineReceived(b"")
        returned.lineReceived(b"I am away.")
        self.assertEqual(await returned.eomReceived(), b"dropped")
        self.assertEqual(await self.rows("bounce"), [])

    def test_bounce_address_needs_own_transaction(self) -> None:
        """The bounce address and ordinary recipients are not mixed in one transaction."""
        delivery = GatewayDelivery(self.intake)
        origin = delivery.validateFrom(HELO, smtp.Address(b"alice@corp.example"))
        delivery.validateTo(self.user(b"carol@corp.example", origin))
        with self.assertRaises(smtp.SMTPBadRcpt) as e:
            delivery.validateTo(self.user(b"bounces+" + b"a" * 32 + b"@gw.example", origin))
        self.assertEqual(e.exception.code, 452)


class SqliteFileTests(IntakeFixture, TestCase):
    """The SQLite database files themselves, read from disk."""

    engine_name = "sqlite"

    async def test_no_plaintext_on_disk(self) -> None:
        """After commit neither the subject nor the body is anywhere in the database files."""
        body = [BODY] * (3 * CHUNK_SIZE // len(BODY))
        await self.receive([b"bob@partner.example.s", b"carol@corp.example"], [SUBJECT, b"", *body])
        await self.spool_empties()
        assert isinstance(self.engine, SqliteEngine)
        stored = b""
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(self.engine.path + suffix):
                with open(self.engine.path + suffix, "rb") as f:
                    stored += f.read()
        self.assertGreater(len(stored), 3 * CHUNK_SIZE)
        self.assertNotIn(b"Merger plans", stored)
        self.assertNotIn(b"ConfidentialBodyText", stored)
        self.assertNotIn(b"Initech", stored)


class AllModeTests(IntakeFixture, TestCase):
    mode = "all"

    async def test_subject_keyword_makes_secure(self) -> None:
        """In mode "all" the subject keyword turns a plain outside recipient into a letter."""
        lines = [b"Subject: [secure] Contract draft", b"", BODY]
        message, _ = await self.receive([b"bob@partner.example"], lines)
        self.assertEqual(await self.rows("relay"), [])
        [row] = await self.rows("notification")
        self.assertEqual(row.recipients, ("bob@partner.example",))
        self.assertEqual(await self.count("envelopes"), 1)
        content = await self.store.read_all(row.message_id)
        self.assertNotIn(b"Contract draft", content)

    async def assert_secure(self, lines: Sequence[bytes]) -> None:
        await self.receive([b"bob@partner.example"], [*lines, b"", BODY])
        self.assertEqual(await self.rows("relay"), [])
        [row] = await self.rows("notification")
        self.assertEqual(row.recipients, ("bob@partner.example",))

    async def test_keyword_in_a_second_subject_makes_secure(self) -> None:
        """A second Subject field carrying the keyword is not relayed in the clear."""
        await self.assert_secure([b"Subject: Contract draft", b"sUbJeCt : [secure] Contract"])

    async def test_encoded_word_keyword_makes_secure(self) -> None:
        """The keyword in RFC 2047 encoded words (even split, or an odd charset) is found."""
        await self.assert_secure([b"Subject: =?utf-8?q?=5Bsecure=5D_Contract?="])

    async def test_split_encoded_word_keyword_makes_secure(self) -> None:
        """Adjacent encoded words join up, whatever charsets they name."""
        await self.assert_secure([b"Subject: Re: =?utf-8?b?W3NlYw==?= =?x-unknown?q?ure=5D?="])

    async def test_folded_keyword_subject_makes_secure(self) -> None:
        """A folded Subject is unfolded before the keyword is looked for."""
        await self.assert_secure([b"Subject: Contract draft", b"\t[secure]"])

    async def test_plain_relayed_without_keyword(self) -> None:
        """In mode "all" unmarked mail without the keyword is relayed on the outgoing route."""
        message, _ = await self.receive([b"bob@partner.example"])
        [row] = await self.rows()
        self.assertEqual(row.kind, "relay")
        self.assertEqual(row.route, RELAY)
        self.assertEqual(row.message_id, message.message_id)
        self.assertEqual(await self.count("envelopes"), 0)


class HeaderReadingTests(SynchronousTestCase):
    def test_subject_and_name(self) -> None:
        """Subject and From display name are unfolded and RFC 2047 decoded."""
        block = (
            b"From: =?utf-8?q?=C3=84lice?= <alice@corp.example>\r\n"
            b"Subject: Merger\r\n plans [secure]\r\nX-Other: y\r\n"
        )
        self.assertEqual(subject_and_sender_name(block), ("Merger plans [secure]", "Älice"))

    def test_missing_and_case(self) -> None:
        """Field names are case-insensitive; a bare address has no display name."""
        self.assertEqual(subject_and_sender_name(b"from: bob@x.example\r\n"), (None, None))
        self.assertEqual(subject_and_sender_name(b""), (None, None))

    def test_first_field_wins(self) -> None:
        """A second Subject field does not replace the first."""
        block = b"Subject: one\r\nSubject: two\r\n"
        self.assertEqual(subject_and_sender_name(block)[0], "one")

    def test_keyword_texts_of_every_subject(self) -> None:
        """Every Subject field is read, unfolded, raw, decoded and decoded ignoring charsets."""
        block = (
            b"Subject: one\r\nFrom: x\r\nSUBJECT : =?x-bogus?q?=5Bsecure=5D?=\r\n"
            b"Subject: folded\r\n two\r\n"
        )
        texts = subject_keyword_texts(block)
        self.assertIn("one", texts)
        self.assertIn("[secure]", texts)
        self.assertIn("folded two", texts)
        self.assertEqual(subject_keyword_texts(b"From: x\r\n"), [])

    @given(st.binary(max_size=300))
    def test_keyword_texts_never_raise(self, block: bytes) -> None:
        """Any header bytes give a list of texts, never an exception."""
        self.assertTrue(all(isinstance(t, str) for t in subject_keyword_texts(block)))

    def test_only_text_charsets_are_honoured(self) -> None:
        """Encoded words labelled with a non-text codec (punycode: work growing with the
        square of the header; unicode_escape) are not decoded with it."""
        block = (
            b"From: =?unicode_escape?q?\\u0041lice?= <alice@corp.example>\r\n"
            b"Subject: =?punycode?q?caf-dma?= =?iso-8859-1?q?=E4?=\r\n"
        )
        self.assertEqual(subject_and_sender_name(block), ("caf-dmaä", "\\u0041lice"))

    @given(st.binary(max_size=300))
    def test_never_raises(self, block: bytes) -> None:
        """Any header bytes give a result, never an exception."""
        subject, name = subject_and_sender_name(block)
        self.assertTrue(subject is None or isinstance(subject, str))
        self.assertTrue(name is None or isinstance(name, str))
