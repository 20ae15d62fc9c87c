"""Portal state: browser binding, sessions with idle and absolute limits, one-time codes."""

from __future__ import annotations

import os

from secmail.letters import routed_mail
from secmail.store.messages import NewEnvelope, NewMessage, hash_token, new_id
from secmail.store.portal import (
    CODE_LIFETIME,
    CODE_TRIES,
    CODES_PER_DAY,
    CODES_PER_HOUR,
    LOCK_AFTER,
    SESSION_IDLE,
    SESSION_MAX,
    CodeOrder,
    CodeState,
    PortalStore,
)
from secmail.store.spool import SealedBytes
from tests.dbs import on_each_engine, open_store
from tests.fixtures.settings import make_settings

T0 = 1_700_000_000


@on_each_engine
class PortalStoreMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        opened = open_store(self.engine_name, self.addCleanup)
        self.engine, self.db, self.master, self.store = opened
        self.portal = PortalStore(self.db, os.urandom(32))

    async def envelope(self) -> str:
        env = NewEnvelope(
            "bob@partner.example", "bob@partner.example.s", "letter", None, hash_token(new_id())
        )
        message = NewMessage(
            SealedBytes(self.master, new_id(), b"x"), "mail", "a@corp.example", envelopes=[env]
        )
        await self.store.commit([message], now=T0)
        return env.id

    async def test_first_open_binds(self) -> None:
        """The first browser to open a letter is bound to it; another browser is not."""
        env = await self.envelope()
        self.assertTrue(await self.portal.open_envelope(env, "browser-one-cookie", T0))
        self.assertTrue(await self.portal.open_envelope(env, "browser-one-cookie", T0 + 5))
        self.assertFalse(await self.portal.open_envelope(env, "browser-two-cookie", T0 + 9))

    async def test_session_limits(self) -> None:
        """A session ends after 30 minutes idle or 12 hours in all, and on sign-out."""
        env = await self.envelope()
        sid = await self.portal.create_session(env, T0, "test")
        self.assertIsNotNone(await self.portal.session(sid, T0 + SESSION_IDLE - 1))
        self.assertIsNone(await self.portal.session(sid, T0 + 2 * SESSION_IDLE))
        sid = await self.portal.create_session(env, T0, "test")
        now = T0
        while now + SESSION_IDLE - 60 < T0 + SESSION_MAX:
            now += SESSION_IDLE - 60
            self.assertIsNotNone(await self.portal.session(sid, now))
        self.assertIsNone(await self.portal.session(sid, T0 + SESSION_MAX + 1))
        sid = await self.portal.create_session(env, T0, "test")
        await self.portal.end_session(sid)
        self.assertIsNone(await self.portal.session(sid, T0 + 1))

    async def test_session_rotated_in_one_step(self) -> None:
        """A new session replacing another ends the old one in the same step."""
        env = await self.envelope()
        old = await self.portal.create_session(env, T0, "test")
        new = await self.portal.create_session(env, T0 + 1, "test", replaces=old)
        self.assertIsNone(await self.portal.session(old, T0 + 2))
        session = await self.portal.session(new, T0 + 2)
        assert session is not None
        self.assertEqual((session.envelope_id, session.created), (env, T0 + 1))

    async def test_session_id_not_stored(self) -> None:
        """Only a hash of the session cookie is in the database."""
        env = await self.envelope()
        sid = await self.portal.create_session(env, T0, "test")
        rows = await self.db.run(lambda txn: txn.execute("SELECT * FROM sessions").fetchall())
        self.assertNotIn(sid, repr(rows))

    async def test_code_once(self) -> None:
        """A code works once; a wrong one counts a try."""
        env = await self.envelope()
        code = await self.portal.new_code(env, T0)
        assert code is not None and len(code) == 6 and code.isdigit()
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        self.assertEqual(await self.portal.check_code(env, wrong, T0 + 1), CodeState.WRONG)
        self.assertEqual(await self.portal.check_code(env, code, T0 + 2), CodeState.OK)
        self.assertEqual(await self.portal.check_code(env, code, T0 + 3), CodeState.EXPIRED)

    async def test_code_expires(self) -> None:
        """A code is good for 10 minutes."""
        env = await self.envelope()
        code = await self.portal.new_code(env, T0)
        assert code is not None
        self.assertEqual(
            await self.portal.check_code(env, code, T0 + CODE_LIFETIME + 1), CodeState.EXPIRED
        )

    async def test_code_tries(self) -> None:
        """After 5 wrong tries even the right code no longer works."""
        env = await self.envelope()
        code = await self.portal.new_code(env, T0)
        assert code is not None
        wrong = f"{(int(code) + 1) % 10**6:06d}"
        results = [await self.portal.check_code(env, wrong, T0 + i) for i in range(CODE_TRIES)]
        self.assertEqual(results[-1], CodeState.EXPIRED)
        self.assertTrue(all(r == CodeState.WRONG for r in results[:-1]))
        self.assertEqual(await self.portal.check_code(env, code, T0 + 10), CodeState.EXPIRED)

    async def test_new_code_replaces_old(self) -> None:
        """Ordering a new code makes the old one stop working."""
        env = await self.envelope()
        old = await self.portal.new_code(env, T0)
        new = await self.portal.new_code(env, T0 + 1)
        assert old is not None and new is not None
        if old != new:
            self.assertEqual(await self.portal.check_code(env, old, T0 + 2), CodeState.WRONG)
        self.assertEqual(await self.portal.check_code(env, new, T0 + 3), CodeState.OK)

    async def test_codes_per_hour(self) -> None:
        """At most 5 codes an hour are sent for one letter."""
        env = await self.envelope()
        for i in range(CODES_PER_HOUR):
            self.assertIsNotNone(await self.portal.new_code(env, T0 + i))
        self.assertIsNone(await self.portal.new_code(env, T0 + 10))
        self.assertIsNotNone(await self.portal.new_code(env, T0 + 3601))

    async def test_codes_per_day(self) -> None:
        """At most 10 codes a day for one letter, however they are spread over the hours."""
        env = await self.envelope()
        sent = [await self.portal.order_code(env, T0 + i * 1800) for i in range(CODES_PER_DAY)]
        self.assertEqual([state for state, _ in sent], [CodeOrder.SENT] * CODES_PER_DAY)
        later = T0 + CODES_PER_DAY * 1800
        self.assertEqual(await self.portal.order_code(env, later), (CodeOrder.TOO_MANY_TODAY, None))
        self.assertIsNone(await self.portal.new_code(env, T0 + 24 * 3600 - 1))
        self.assertIsNotNone(await self.portal.new_code(env, T0 + 24 * 3600 + 1))

    async def test_lock_after_too_many_wrong_codes(self) -> None:
        """
        Wrong e-mail codes count across codes; the 20th locks the letter for codes for good
        and stores the notice to the sender in that transaction.
        """
        env = await self.envelope()
        message_id = (await self.store.envelope_by_id(env)).message_id  # type: ignore[union-attr]
        settings = make_settings("/nonexistent/secmail-portal-store-tests")
        notice = routed_mail(
            settings.routes,
            self.master,
            kind="notice",
            sender="bounces@gw.example",
            to="a@corp.example",
            content=b"Subject: notice\r\n\r\nYour letter is locked.\r\n",
            about=message_id,
        )
        now = T0
        results = []
        for n in range(LOCK_AFTER // CODE_TRIES):
            now = T0 + n * 3600  # within the hourly and daily limits
            code = await self.portal.new_code(env, now)
            assert code is not None
            wrong = f"{(int(code) + 1) % 10**6:06d}"
            for i in range(CODE_TRIES):
                results.append(await self.portal.check_code(env, wrong, now + i, notice))
        self.assertEqual(results[-1], CodeState.LOCKED_NOW)
        self.assertNotIn(CodeState.LOCKED_NOW, results[:-1])
        [queued] = await self.store.queue_list()
        self.assertEqual((queued.kind, queued.about), ("notice", message_id))
        events = await self.store.events(message_id)
        self.assertIn((now + CODE_TRIES - 1, "locked", env, f"{LOCK_AFTER} wrong codes"), events)
        envelope = await self.store.envelope_by_id(env)
        assert envelope is not None
        self.assertEqual(envelope.locked, now + CODE_TRIES - 1)
        # Locked for good: no new code, and no code is checked any more.
        self.assertEqual(await self.portal.order_code(env, now + 86400), (CodeOrder.LOCKED, None))
        self.assertEqual(await self.portal.check_code(env, "123456", now + 9), CodeState.LOCKED)
        self.assertEqual(len(await self.store.queue_list()), 1)
