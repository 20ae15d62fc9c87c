"""Message trace and revoke (secmail.store.trace), on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from secmail.store.audit import AuditRow, AuditTrail
from secmail.store.messages import NewMessage, new_id
from secmail.store.rows import short_id
from secmail.store.spool import SealedBytes
from secmail.store.trace import MessageTrace, TraceError
from tests.dbs import on_each_engine
from tests.fixtures.intake import BODY, T0, IntakeFixture

BOB = "bob@partner.example"
CAROL = "carol@other.example"


@on_each_engine
class TraceMixin(IntakeFixture):
    engine_name = "sqlite"
    mode = "all"

    def setUp(self) -> None:
        super().setUp()
        self.trace = MessageTrace(self.db)

    async def letter(self, *recipients: bytes, sender: bytes = b"alice@corp.example") -> str:
        """A message through the intake to C{recipients}; its id."""
        message, _ = await self.receive(
            list(recipients) or [b"bob@partner.example.s"], sender=sender
        )
        return message.message_id

    async def sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self.db.run(lambda txn: txn.execute(sql, params).fetchall())

    async def chunks(self, message_id: str) -> int:
        rows = await self.sql(
            "SELECT COUNT(*) FROM message_chunks WHERE message_id = ?", (message_id,)
        )
        return int(rows[0][0])

    async def deliver(self, kind: str) -> None:
        for item in await self.rows(kind):
            await self.store.delivered(item, item.recipients, "250 2.0.0 ok", self.now())

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- search ------------------------------------------------------------------------

    async def test_recipient_real_or_marked(self) -> None:
        """A recipient is found by the real address or its marked form, in any case, exactly."""
        message_id = await self.letter(b"bob@partner.example.s", CAROL.encode())
        for query in (BOB, "BOB@Partner.Example", "bob@partner.example.s", CAROL):
            [found] = await self.trace.search(recipient=query)
            self.assertEqual(found.id, message_id, query)
        for query in ("bob@partner.exampl", "ob@partner.example", "alice@corp.example"):
            self.assertEqual(await self.trace.search(recipient=query), [], query)

    async def test_registered_found_by_each_form(self) -> None:
        """A registered letter is found by its real address and its marked form with the number."""
        await self.letter(b"bob@partner.example.0401234567.s")
        for query in (BOB, "bob@partner.example.0401234567.s"):
            [found] = await self.trace.search(recipient=query)
            self.assertEqual(found.recipients[0].level, "registered")

    async def test_recipients_levels_states_and_trails(self) -> None:
        """Secure and relayed recipients each show level, state and their own events."""
        message_id = await self.letter(b"bob@partner.example.s", CAROL.encode())
        [found] = await self.trace.search(message_id=message_id)
        self.assertEqual(
            (found.sender, found.kind, found.received), ("alice@corp.example", "mail", T0)
        )
        bob, carol = found.recipients
        self.assertEqual(
            (bob.address, bob.level, bob.state), (BOB, "letter", "notification queued")
        )
        self.assertEqual((carol.address, carol.level, carol.state), (CAROL, "relay", "queued"))
        self.assertIsNone(carol.envelope_id)
        self.assertEqual([e.kind for e in bob.events], ["notification queued"])
        self.assertEqual([e.kind for e in found.events], ["received"])
        self.clock.advance(60)
        await self.deliver("relay")
        await self.deliver("notification")
        [found] = await self.trace.search(recipient=CAROL)
        bob, carol = found.recipients
        self.assertEqual(carol.state, "delivered")
        self.assertEqual([e.kind for e in carol.events], ["delivered"])
        self.assertIn(CAROL, carol.events[0].detail)
        self.assertEqual(carol.events[0].at, T0 + 60)
        self.assertEqual(bob.state, "notified")
        self.assertEqual([e.kind for e in bob.events], ["notification queued", "delivered"])

    async def test_relayed_recipient_kept_after_delivery(self) -> None:
        """A message relayed to its only recipient is still found by it after delivery."""
        message_id = await self.letter(CAROL.encode())
        await self.deliver("relay")
        self.assertEqual(await self.sql("SELECT id FROM messages WHERE id = ?", (message_id,)), [])
        [found] = await self.trace.search(recipient=CAROL)
        self.assertEqual(found.id, message_id)
        self.assertEqual(found.recipients[0].state, "delivered")

    async def test_sender_and_time(self) -> None:
        """Sender matches exactly in any case; since and until include their bounds."""
        first = await self.letter(sender=b"Alice@Corp.Example")
        self.clock.advance(3600)
        second = await self.letter(sender=b"dave@corp.example")
        self.assertEqual(
            [m.id for m in await self.trace.search(sender="alice@corp.example")], [first]
        )
        self.assertEqual(
            [m.id for m in await self.trace.search(sender="<DAVE@corp.example>")], [second]
        )
        self.assertEqual(await self.trace.search(sender="alice@corp"), [])
        self.assertEqual([m.id for m in await self.trace.search()], [second, first])
        self.assertEqual([m.id for m in await self.trace.search(since=T0 + 3600)], [second])
        self.assertEqual([m.id for m in await self.trace.search(until=T0)], [first])
        self.assertEqual([m.id for m in await self.trace.search(limit=1)], [second])
        with self.assertRaises(TraceError):
            await self.trace.search(limit=0)

    async def test_null_sender(self) -> None:
        """A message with the null sender is found by '<>'."""
        message_id = await self.letter(sender=b"")
        self.assertEqual([m.id for m in await self.trace.search(sender="<>")], [message_id])

    async def test_ids(self) -> None:
        """A full id, the short id, a longer prefix and an envelope id each find the message."""
        message_id = await self.letter(b"bob@partner.example.s")
        [found] = await self.trace.search(message_id=message_id)
        envelope_id = found.recipients[0].envelope_id
        assert envelope_id is not None
        for query in (message_id, short_id(message_id), message_id[:20].upper(), envelope_id):
            self.assertEqual(
                [m.id for m in await self.trace.search(message_id=query)], [message_id]
            )
        self.assertEqual(await self.trace.search(message_id="0" * 32), [])
        with self.assertRaises(TraceError) as e:
            await self.trace.search(message_id="12345")
        self.assertIn("not a message id", str(e.exception))

    async def test_ambiguous_short_id(self) -> None:
        """A short id that names two messages is an error that says so."""
        prefix = "abcdef0123"
        for n in (1, 2):
            content = SealedBytes(self.master, prefix + str(n) * 22, b"x")
            await self.store.commit([NewMessage(content, "mail", "a@corp.example")], T0)
        with self.assertRaises(TraceError) as e:
            await self.trace.search(message_id=prefix)
        self.assertIn("more than one message", str(e.exception))
        self.assertEqual(len(await self.trace.search(message_id=prefix + "1")), 1)

    async def test_bad_recipient(self) -> None:
        """A malformed recipient is an error naming it."""
        with self.assertRaises(TraceError) as e:
            await self.trace.search(recipient="bob at partner")
        self.assertIn("bob at partner", str(e.exception))

    async def test_never_content(self) -> None:
        """A trace holds no subject, body or link token."""
        await self.letter(b"bob@partner.example.s")
        [found] = await self.trace.search(recipient=BOB)
        shown = repr(found)
        for secret in ("Merger", BODY.decode()):
            self.assertNotIn(secret, shown)
        tokens = await self.sql("SELECT token_hash FROM envelopes")
        self.assertNotIn(tokens[0][0], shown)

    async def test_no_attachment_names(self) -> None:
        """A portal reply's event shows that files were attached, not their names."""
        message_id = await self.letter(b"bob@partner.example.s")
        [found] = await self.trace.search(message_id=message_id)
        envelope_id = found.recipients[0].envelope_id
        summary = "Reply sent by e-mail to alice@corp.example. Attached: secret-plan.pdf, b.txt."
        await self.store.add_event(message_id, envelope_id, "replied", summary, T0)
        [found] = await self.trace.search(message_id=message_id)
        event = found.recipients[0].events[-1]
        self.assertEqual(
            (event.kind, event.detail),
            ("replied", "Reply sent by e-mail to alice@corp.example. With attachments."),
        )

    async def test_no_downloaded_attachment_names(self) -> None:
        """A download's event (also one stored with its file name before) shows no name."""
        message_id = await self.letter(b"bob@partner.example.s")
        [found] = await self.trace.search(message_id=message_id)
        envelope_id = found.recipients[0].envelope_id
        await self.store.add_event(message_id, envelope_id, "downloaded", "secret-plan.pdf", T0)
        [found] = await self.trace.search(message_id=message_id)
        event = found.recipients[0].events[-1]
        self.assertEqual((event.kind, event.detail), ("downloaded", "an attachment"))

    async def test_gateway_mail_is_not_a_message_of_its_own(self) -> None:
        """Notifications show in their letter's trail, not as messages of their own."""
        await self.letter(b"bob@partner.example.s")
        self.assertEqual(len(await self.trace.search()), 1)

    async def test_trail_outlives_the_message(self) -> None:
        """After retention deletes a letter, its trace and trail remain until audit_days."""
        message_id = await self.letter(b"bob@partner.example.s")
        await self.deliver("notification")
        self.clock.advance(31 * 86400)
        self.assertEqual(await self.store.delete_expired(self.now() - 30 * 86400, self.now()), 1)
        [found] = await self.trace.search(recipient=BOB)
        self.assertEqual(found.id, message_id)
        self.assertEqual(found.recipients[0].state, "expired")
        self.assertEqual([e.kind for e in found.events], ["received", "expired"])
        self.assertEqual(
            [e.kind for e in found.recipients[0].events], ["notification queued", "delivered"]
        )
        await self.store.delete_old_events(self.now() + 1)
        self.assertEqual(await self.trace.search(recipient=BOB), [])
        self.assertEqual(await self.sql("SELECT * FROM trace_recipients"), [])

    async def test_trace_stays_while_a_later_event_does(self) -> None:
        """A trace older than the cutoff stays while the message still has a newer event."""
        message_id = await self.letter(b"bob@partner.example.s")
        self.clock.advance(31 * 86400)
        await self.store.delete_expired(self.now() - 30 * 86400, self.now())
        await self.store.delete_old_events(self.now() - 1)  # "received" goes, "expired" stays
        [found] = await self.trace.search(recipient=BOB)
        self.assertEqual((found.id, [e.kind for e in found.events]), (message_id, ["expired"]))

    async def test_old_traces_of_live_messages_stay(self) -> None:
        """Pruning the events keeps the trace of a message still stored."""
        await self.letter(b"bob@partner.example.s")
        await self.store.delete_old_events(self.now() + 1)
        self.assertEqual(len(await self.trace.search(recipient=BOB)), 1)

    # --- revoke ------------------------------------------------------------------------

    async def test_revoke_all(self) -> None:
        """Revoke marks each letter, drops unsent notifications, ends sessions, deletes content."""
        message_id = await self.letter(b"bob@partner.example.s", b"eve@partner.example.s")
        [found] = await self.trace.search(message_id=message_id)
        envelope_ids = [r.envelope_id for r in found.recipients]
        await self.db.run(
            lambda txn: txn.execute(
                "INSERT INTO sessions (id_hash, envelope_id, created, last_seen, csrf) "
                "VALUES ('s1', ?, 1, 1, 'c')",
                (envelope_ids[0],),
            )
        )
        self.assertGreater(await self.chunks(message_id), 0)
        revoked = await self.trace.revoke(short_id(message_id), now=T0 + 5)
        self.assertEqual(sorted(revoked), sorted(envelope_ids))
        self.assertEqual(await self.rows("notification"), [])
        self.assertEqual(await self.sql("SELECT * FROM sessions"), [])
        self.assertEqual(await self.chunks(message_id), 0)
        self.assertEqual(await self.sql("SELECT COUNT(*) FROM messages"), [(1,)])
        [found] = await self.trace.search(message_id=message_id)
        self.assertEqual([r.state for r in found.recipients], ["revoked", "revoked"])
        self.assertEqual(found.recipients[0].events[-1].kind, "revoked")
        self.assertIn("content deleted", [e.kind for e in found.events])
        self.assertEqual(await self.trace.revoke(message_id, now=T0 + 6), [])

    async def test_revoke_one_recipient_keeps_content(self) -> None:
        """Revoking one of two letters keeps the content the other still reads."""
        message_id = await self.letter(b"bob@partner.example.s", b"eve@partner.example.s")
        revoked = await self.trace.revoke(message_id, "BOB@partner.example.s", now=T0)
        [found] = await self.trace.search(message_id=message_id)
        by_address = {r.address: r for r in found.recipients}
        self.assertEqual(revoked, [by_address[BOB].envelope_id])
        self.assertEqual(by_address["eve@partner.example"].state, "notification queued")
        self.assertEqual(
            [r.recipients for r in await self.rows("notification")], [("eve@partner.example",)]
        )
        self.assertGreater(await self.chunks(message_id), 0)

    async def test_revoke_by_envelope_id(self) -> None:
        """An envelope id names the one letter to withdraw."""
        message_id = await self.letter(b"bob@partner.example.s", b"eve@partner.example.s")
        [found] = await self.trace.search(message_id=message_id)
        envelope_id = found.recipients[1].envelope_id
        assert envelope_id is not None
        self.assertEqual(await self.trace.revoke(envelope_id, now=T0), [envelope_id])

    async def test_relay_copy_keeps_content_until_delivered(self) -> None:
        """A relayed copy still queued keeps the content; its delivery then deletes it."""
        message_id = await self.letter(b"bob@partner.example.s", CAROL.encode())
        await self.trace.revoke(message_id, now=T0)
        self.assertGreater(await self.chunks(message_id), 0)
        await self.deliver("relay")
        self.assertEqual(await self.chunks(message_id), 0)
        [found] = await self.trace.search(message_id=message_id)
        self.assertEqual([r.state for r in found.recipients], ["revoked", "delivered"])

    async def test_revoke_refusals(self) -> None:
        """No such message, not a secure recipient, or nothing secure: an error naming why."""
        message_id = await self.letter(b"bob@partner.example.s", CAROL.encode())
        relayed = await self.letter(CAROL.encode())
        cases = [
            ((new_id(),), "no message"),
            ((message_id, CAROL), "not a secure recipient"),
            ((relayed,), "no letter left to withdraw"),
        ]
        for args, words in cases:
            with self.assertRaises(TraceError) as e:
                await self.trace.revoke(*args, now=T0)
            self.assertIn(words, str(e.exception))

    async def test_revoke_writes_the_audit_row(self) -> None:
        """With an audit row, the revoke and its row are written together."""
        message_id = await self.letter(b"bob@partner.example.s")
        row = AuditRow(at=T0, admin="root", address="local", action="")
        await self.trace.revoke(message_id, now=T0, audit=row)
        [written] = await AuditTrail(self.db).since(0)
        self.assertEqual(
            (written.admin, written.address, written.action), ("root", "local", "revoked")
        )
        self.assertEqual(written.after, f"message {message_id} from {BOB}")
        [found] = await self.trace.search(message_id=message_id)
        self.assertIn("by root", found.recipients[0].events[-1].detail)
        with self.assertRaises(TraceError):
            await self.trace.revoke(message_id, "eve@partner.example", now=T0, audit=row)
        self.assertEqual(len(await AuditTrail(self.db).since(0)), 1)
