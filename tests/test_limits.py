"""The rules for one-time codes and sessions, as pure functions: no database, no clock."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from secmail.limits import (
    HOUR,
    SESSION_IDLE,
    SESSION_MAX,
    CodeRules,
    CodeState,
    Quota,
    after_wrong,
    code_live,
    is_locked,
    lock_ends,
    next_order_at,
    over_quota,
    session_alive,
    too_soon,
)

T0 = 1_700_000_000
RULES = CodeRules(lifetime=600, tries=5, lock_after=20)
FOR_A_MONTH = CodeRules(lock_after=20, lock_time=30 * 24 * HOUR)
PINS = CodeRules(interval=60)


class CodeRulesTests(SynchronousTestCase):
    def test_code_live(self) -> None:
        """A code may be tried until it expires (inclusive) and while it has tries left."""
        self.assertTrue(code_live(RULES, expires=T0, tries=4, now=T0))
        self.assertFalse(code_live(RULES, expires=T0, tries=4, now=T0 + 1))
        self.assertFalse(code_live(RULES, expires=T0 + 600, tries=5, now=T0))

    def test_after_wrong(self) -> None:
        """A wrong try: WRONG with tries left, EXPIRED when used up, LOCKED_NOW at the limit."""
        self.assertEqual(after_wrong(RULES, tries=4, failures=19), CodeState.WRONG)
        self.assertEqual(after_wrong(RULES, tries=5, failures=19), CodeState.EXPIRED)
        self.assertEqual(after_wrong(RULES, tries=1, failures=20), CodeState.LOCKED_NOW)

    def test_lock_for_good(self) -> None:
        """Without a lock time a lock never ends; no lock is no lock."""
        self.assertTrue(is_locked(RULES, T0, T0 + 10 * 365 * 24 * HOUR))
        self.assertIsNone(lock_ends(RULES, T0))
        self.assertFalse(is_locked(RULES, None, T0))

    def test_lock_for_a_while(self) -> None:
        """A lock with a lock time ends then, and says when."""
        end = T0 + 30 * 24 * HOUR
        self.assertEqual(lock_ends(FOR_A_MONTH, T0), end)
        self.assertTrue(is_locked(FOR_A_MONTH, T0, end - 1))
        self.assertFalse(is_locked(FOR_A_MONTH, T0, end))

    def test_interval(self) -> None:
        """With an interval the next code may go out that long after the last, not sooner."""
        self.assertEqual(next_order_at(PINS, T0), T0 + 60)
        self.assertTrue(too_soon(PINS, T0, T0 + 59))
        self.assertFalse(too_soon(PINS, T0, T0 + 60))
        self.assertFalse(too_soon(PINS, None, T0))
        self.assertIsNone(next_order_at(RULES, T0))
        self.assertFalse(too_soon(RULES, T0, T0))

    def test_first_quota_reached(self) -> None:
        """The first quota whose count reached its limit refuses; below every limit, none."""
        hour, day = Quota("too many", 5, HOUR), Quota("too many today", 10, 24 * HOUR)
        self.assertIsNone(over_quota([(hour, 4), (day, 9)]))
        self.assertEqual(over_quota([(hour, 5), (day, 10)]), hour)
        self.assertEqual(over_quota([(hour, 2), (day, 10)]), day)


class SessionRulesTests(SynchronousTestCase):
    def test_idle_and_absolute(self) -> None:
        """A session lives 30 minutes after its last request and 12 hours after it began."""
        self.assertTrue(session_alive(T0, T0, T0 + SESSION_IDLE))
        self.assertFalse(session_alive(T0, T0, T0 + SESSION_IDLE + 1))
        self.assertTrue(session_alive(T0, T0 + SESSION_MAX - 1, T0 + SESSION_MAX))
        self.assertFalse(session_alive(T0, T0 + SESSION_MAX, T0 + SESSION_MAX + 1))
