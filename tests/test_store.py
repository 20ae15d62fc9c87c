"""Storage: schema, group commit, encrypted messages and the queue, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from secmail.crypto import CHUNK_SIZE, IntegrityError, MasterKey, UnknownKeyError
from secmail.store.database import (
    Database,
    StoreUnavailable,
    Txn,
    apply_schema_txn,
    schema_files,
)
from secmail.store.messages import (
    ROWS_PER_INSERT,
    MessageStore,
    NewDelivery,
    NewEnvelope,
    NewMessage,
    RecentMessages,
    hash_token,
    new_id,
)
from secmail.store.spool import SealedBytes, SpooledMessage
from tests.dbs import make_engine, on_each_engine, open_store


@on_each_engine
class StoreTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        self.engine, self.db, self.master, self.store = open_store(
            self.engine_name, self.addCleanup
        )
        self.spool_dir = tempfile.mkdtemp(prefix="secmail-spool-")

    def small(self, content: bytes, **kw: object) -> NewMessage:
        return NewMessage(
            content=SealedBytes(self.master, new_id(), content),
            kind=str(kw.get("kind", "mail")),
            sender="alice@corp.example",
            envelopes=kw.get("envelopes", ()),  # type: ignore[arg-type]
            deliveries=kw.get("deliveries", ()),  # type: ignore[arg-type]
        )

    async def test_schema_twice(self) -> None:
        """Applying the schema again to an up-to-date database changes nothing."""
        version = self.db.prepare_blocking()
        self.assertEqual(version, max(schema_files()))

    def test_upgrade_from_version_1(self) -> None:
        """A database made by schema version 1, with a message in it, upgrades to the newest."""
        engine = make_engine(self.engine_name, self.addCleanup)
        conn = engine.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(engine.begin)
            apply_schema_txn(Txn(engine, cursor), engine, target=1)
            Txn(engine, cursor).execute(
                "INSERT INTO messages (id, kind, sender, created, size, key_id, wrapped_key, "
                "chunk_count) VALUES ('m1', 'mail', '', 1, 0, 'k', ?, 1)",
                (b"x",),
            )
            cursor.execute("COMMIT")
        finally:
            conn.close()
        upgraded = Database(engine, reactor)
        self.assertEqual(upgraded.prepare_blocking(), max(schema_files()))
        conn = engine.connect()
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT browser_hash, opened FROM envelopes")
            cursor.execute("SELECT COUNT(*) FROM messages")
            self.assertEqual(cursor.fetchone()[0], 1)
        finally:
            conn.close()

    async def test_round_trip_small(self) -> None:
        """A small message reads back byte for byte."""
        message = self.small(b"Subject: hi\r\n\r\nbody\r\n")
        await self.store.commit([message], now=100)
        data = await self.store.read_all(message.content.message_id)
        self.assertEqual(data, b"Subject: hi\r\n\r\nbody\r\n")

    async def test_round_trip_streamed(self) -> None:
        """A message larger than several chunks is sealed as it arrives and reads back whole."""
        message_id = new_id()
        spool = SpooledMessage(self.master, message_id, self.spool_dir, deferToThread)
        payload = os.urandom(CHUNK_SIZE * 3 + 123)
        for i in range(0, len(payload), 1000):
            spool.write(payload[i : i + 1000])
        await spool.finished()
        self.assertEqual(spool.chunk_count, 4)
        await self.store.commit([NewMessage(spool, "mail", "a@b.example")], now=1)
        spool.discard()
        self.assertEqual(await self.store.read_all(message_id), payload)

    async def test_no_plaintext_in_database(self) -> None:
        """The stored bytes contain neither the subject nor the body in the clear."""
        message = self.small(b"Subject: TopSecretSubject\r\n\r\nConfidentialBody\r\n")
        await self.store.commit([message], now=1)

        def dump(txn):
            rows = txn.execute("SELECT data FROM message_chunks").fetchall()
            return b"".join(bytes(r[0]) for r in rows)

        stored = await self.db.run(dump)
        self.assertNotIn(b"TopSecretSubject", stored)
        self.assertNotIn(b"ConfidentialBody", stored)

    async def test_wrong_master_key(self) -> None:
        """A message sealed under a key not in the ring: UnknownKeyError naming the key id."""
        message = self.small(b"x")
        await self.store.commit([message], now=1)
        other = MessageStore(self.db, MasterKey(os.urandom(32)))
        with self.assertRaises(UnknownKeyError) as raised:
            await other.read_all(message.content.message_id)
        self.assertEqual(raised.exception.key_id, self.master.key_id)
        self.assertIn(self.master.key_id, str(raised.exception))
        self.assertNotIsInstance(raised.exception, IntegrityError)

    async def test_tampered_wrapped_key(self) -> None:
        """A wrapped key altered under a known key id is IntegrityError, not UnknownKeyError."""
        message = self.small(b"x")
        await self.store.commit([message], now=1)
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE messages SET wrapped_key = ? WHERE id = ?",
                (b"\0" * 60, message.content.message_id),
            )
        )
        with self.assertRaises(IntegrityError):
            await self.store.read_all(message.content.message_id)

    async def test_group_commit(self) -> None:
        """Transactions that arrive together are committed in fewer batches, all of them stored."""
        messages = [self.small(b"m%d" % i) for i in range(50)]
        await gatherResults(
            [Deferred.fromCoroutine(self.store.commit([m], now=1)) for m in messages]
        )
        self.assertEqual(await self.store.count_messages(), 50)
        self.assertLess(self.db.batches, 50)

    async def test_failing_work_isolated(self) -> None:
        """One failing transaction in a batch does not undo the others in it."""
        good = self.small(b"good")
        dup = self.small(b"dup")
        await self.store.commit([dup], now=1)
        results = await gatherResults(
            [
                Deferred.fromCoroutine(self.store.commit([good], now=1)).addErrback(
                    lambda f: f.value
                ),
                Deferred.fromCoroutine(self.store.commit([dup], now=1)).addErrback(
                    lambda f: f.value
                ),
            ]
        )
        self.assertIsInstance(results[0], list)
        self.assertIsInstance(results[1], Exception)
        self.assertEqual(await self.store.read_all(good.content.message_id), b"good")

    async def test_envelope_by_token(self) -> None:
        """An envelope is found by its token, and only the token's hash is stored."""
        token = "tok-" + new_id()
        env = NewEnvelope(
            "bob@partner.example", "bob@partner.example.s", "letter", None, hash_token(token)
        )
        message = self.small(b"x", envelopes=[env])
        await self.store.commit([message], now=5)
        found = await self.store.envelope_by_token(token)
        assert found is not None
        self.assertEqual(found.recipient, "bob@partner.example")
        self.assertEqual(found.sender, "alice@corp.example")
        self.assertIsNone(await self.store.envelope_by_token("other"))

        def tokens(txn):
            return txn.execute("SELECT token_hash FROM envelopes").fetchall()

        self.assertNotIn(token, str(await self.db.run(tokens)))

    async def test_queue_lifecycle(self) -> None:
        """Rows are leased once, deferred with their new recipients, and removed when delivered."""
        d = NewDelivery(
            "relay",
            "alice@corp.example",
            ("a@x.example", "b@x.example"),
            "mx",
            "x.example",
            "alice@corp.example",
        )
        message = self.small(b"x", kind="mail", deliveries=[d])
        [queue_id] = await self.store.commit([message], now=10)
        items = await self.store.claim_due("node1", now=10, lease=60, limit=10)
        self.assertEqual([i.id for i in items], [queue_id])
        self.assertEqual(await self.store.claim_due("node2", now=11, lease=60, limit=10), [])
        await self.store.defer(items[0], ["b@x.example"], next_attempt=400, error="451", now=11)
        self.assertEqual(await self.store.claim_due("node1", now=399, lease=60, limit=10), [])
        [again] = await self.store.claim_due("node1", now=400, lease=60, limit=10)
        self.assertEqual(again.recipients, ("b@x.example",))
        self.assertEqual(again.attempts, 1)
        await self.store.delivered(again, again.recipients, "250 ok", now=401)
        self.assertEqual(await self.store.queue_list(), [])
        self.assertEqual(await self.store.count_messages(), 0)
        kinds = [e[1] for e in await self.store.events(message.content.message_id)]
        self.assertEqual(kinds, ["deferred", "delivered"])

    async def test_expired_lease_reclaimed(self) -> None:
        """A row leased by a node that died is claimed again after the lease ends."""
        d = NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")
        await self.store.commit([self.small(b"x", deliveries=[d])], now=10)
        self.assertEqual(len(await self.store.claim_due("dead", now=10, lease=60, limit=5)), 1)
        self.assertEqual(len(await self.store.claim_due("live", now=71, lease=60, limit=5)), 1)

    async def test_release_queue_leases(self) -> None:
        """At a restart a node takes back its own leases at once, and only its own."""
        d = NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")
        await self.store.commit([self.small(b"x", deliveries=[d])], now=10)
        await self.store.commit([self.small(b"y", deliveries=[d])], now=10)
        self.assertEqual(len(await self.store.claim_due("n1", now=10, lease=60, limit=1)), 1)
        self.assertEqual(len(await self.store.claim_due("n2", now=10, lease=60, limit=1)), 1)
        await self.store.release_queue_leases("n1")
        self.assertEqual(len(await self.store.claim_due("n3", now=11, lease=60, limit=5)), 1)

    async def test_retention(self) -> None:
        """Secure messages past retention are deleted; ones with pending deliveries stay."""
        old = self.small(
            b"old",
            envelopes=[
                NewEnvelope("b@x.example", "b@x.example.s", "letter", None, hash_token("t1"))
            ],
        )
        pending = self.small(
            b"p", deliveries=[NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")]
        )
        await self.store.commit([old, pending], now=10)
        new = self.small(b"new")
        await self.store.commit([new], now=1000)
        self.assertEqual(await self.store.delete_expired(cutoff=500, now=1000), 1)
        self.assertIsNone(await self.store.envelope_by_token("t1"))
        self.assertEqual(await self.store.count_messages(), 2)

    async def test_fail_stores_bounce(self) -> None:
        """A permanent failure replaces the row by the bounce's row in one transaction."""
        d = NewDelivery(
            "relay", "alice@corp.example", ("a@x.example",), "mx", "x.example", "alice@corp.example"
        )
        message = self.small(b"x", deliveries=[d])
        await self.store.commit([message], now=1)
        [item] = await self.store.claim_due("n", now=1, lease=60, limit=5)
        bounce = self.small(
            b"dsn",
            kind="bounce",
            deliveries=[
                NewDelivery(
                    "bounce", "", ("alice@corp.example",), "smtp://127.0.0.1:25", "corp.example", ""
                )
            ],
        )
        await self.store.fail(item, item.recipients, "550 no", bounce, now=2)
        [row] = await self.store.queue_list()
        self.assertEqual(row.kind, "bounce")
        self.assertEqual(row.sender, "")
        self.assertEqual(await self.store.read_all(row.message_id), b"dsn")

    async def test_reconnects_after_broken_connection(self) -> None:
        """A connection that broke (server restart) fails one batch with 4xx, then is replaced."""
        await self.store.count_messages()
        assert self.db._conn is not None
        self.db._conn.close()
        with self.assertRaises(StoreUnavailable):
            await self.store.count_messages()
        self.assertEqual(await self.store.count_messages(), 0)

    async def test_recent_cache(self) -> None:
        """A just-committed small message is read from memory; the database copy is the same."""
        d = NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")
        message = self.small(b"Subject: s\r\n\r\nhello\r\n", deliveries=[d])
        await self.store.commit([message], now=1)
        message_id = message.content.message_id
        self.assertEqual(self.store.recent.get(message_id), b"Subject: s\r\n\r\nhello\r\n")
        fresh = MessageStore(self.db, self.master)  # as after a restart: nothing in memory
        self.assertEqual(await fresh.read_all(message_id), await self.store.read_all(message_id))
        [item] = await self.store.claim_due("n", now=1, lease=60, limit=5)
        await self.store.delivered(item, item.recipients, "250", now=2)
        self.assertIsNone(self.store.recent.get(message_id))
        with self.assertRaises(LookupError):
            await self.store.read_all(message_id)

    async def test_many_in_one_commit(self) -> None:
        """More rows than one multi-row INSERT takes are all stored, with every queue row id."""
        d = NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")
        messages = [self.small(b"m%d" % i, deliveries=[d]) for i in range(ROWS_PER_INSERT + 7)]
        ids = await self.store.commit(messages, now=1)
        self.assertEqual(len(set(ids)), ROWS_PER_INSERT + 7)
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(await self.store.count_messages(), ROWS_PER_INSERT + 7)
        fresh = MessageStore(self.db, self.master)
        self.assertEqual(
            await fresh.read_all(messages[-1].content.message_id), b"m%d" % (ROWS_PER_INSERT + 6)
        )

    async def test_queue_admin(self) -> None:
        """Admins can retry a row now and delete a row."""
        d = NewDelivery("relay", "", ("a@x.example",), "mx", "x.example", "")
        [qid] = await self.store.commit([self.small(b"x", deliveries=[d])], now=1)
        [item] = await self.store.claim_due("n", now=1, lease=60, limit=5)
        await self.store.defer(item, item.recipients, next_attempt=5000, error="451", now=1)
        self.assertTrue(await self.store.queue_retry(qid, now=2))
        [retried] = await self.store.claim_due("n", now=2, lease=60, limit=5)  # due at once
        self.assertEqual(retried.id, qid)
        self.assertTrue(await self.store.queue_delete(qid, now=3))
        self.assertFalse(await self.store.queue_delete(qid, now=3))
        self.assertEqual(await self.store.queue_list(), [])


class UnavailableTests(TestCase):
    async def test_unreachable_database(self) -> None:
        """A database that cannot be reached fails the work with StoreUnavailable (a 4xx)."""
        from secmail.store.engines import PostgresEngine

        db = Database(PostgresEngine("postgresql://nobody@127.0.0.1:1/none"), reactor)
        db.start()
        self.addCleanup(db.stop)
        with self.assertRaises(StoreUnavailable):
            await db.run(lambda txn: txn.execute("SELECT 1").fetchone())

    def test_newer_schema_refused(self) -> None:
        """A database from a newer secmail is refused with a clear error."""
        engine = make_engine("sqlite", self.addCleanup)
        conn = engine.connect()
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
        from secmail.store.database import Txn

        with self.assertRaises(StoreUnavailable) as e:
            apply_schema_txn(Txn(engine, conn.cursor()), engine)
        self.assertIn("upgrade secmail", str(e.exception))


class RecentMessagesTests(TestCase):
    def test_bounded(self) -> None:
        """The cache of recent messages stays within its byte budget, oldest out first."""
        recent = RecentMessages(max_bytes=1600)
        for i in range(20):
            recent.put(f"m{i}", bytes(100))
        self.assertIsNone(recent.get("m0"))
        self.assertEqual(recent.get("m19"), bytes(100))
        recent.put("big", bytes(101))  # over max_bytes / 16: not kept
        self.assertIsNone(recent.get("big"))
