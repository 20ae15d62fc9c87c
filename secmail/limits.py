# -*- test-case-name: tests.test_limits -*-
"""
Pure: the rules for one-time codes (the portal's e-mail codes, SMS PINs, D-Compose's
address codes) and for sessions.

Numbers in, a decision out: how many codes may go out in an hour or a day, how soon one may
follow the last, how long a code lives and how many tries it allows, after how many wrong
ones its holder is locked and for how long, when a session ends. The store's transactions
count rows and ask here; nothing here touches a database or a clock, so every rule is
unit-tested on its own (NIST SP 800-63B 5.2.2: a limit on failed attempts for any secret).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HOUR = 3600
DAY = 24 * HOUR

#: A holder (a letter, a mailbox) locks after this many wrong codes or PINs in all (NIST SP
#: 800-63B 5.2.2: a limit on failed attempts for any one-time secret).
LOCK_AFTER = 20

#: Sessions end after this long without a request, and this long after they began.
SESSION_IDLE = 30 * 60
SESSION_MAX = 12 * HOUR


class CodeState:
    """What trying a code (or a PIN) came to."""

    OK = "ok"
    WRONG = "wrong"
    EXPIRED = "expired"  # none valid: expired, used up or never sent
    LOCKED = "locked"  # locked before this try
    LOCKED_NOW = "locked now"  # this wrong one locked its holder
    SUPERSEDED = "superseded"  # one that worked until a newer one was ordered (PINs)


@dataclass(frozen=True)
class Quota:
    """At most C{limit} codes within C{seconds}; C{refusal} is the answer once reached."""

    refusal: str
    limit: int
    seconds: int


@dataclass(frozen=True)
class CodeRules:
    """One kind of code: its life, its tries, and when its holder locks."""

    lifetime: int = 10 * 60
    tries: int = 5  # per code
    lock_after: int = LOCK_AFTER  # wrong ones in all, for the holder (a letter, a mailbox)
    lock_time: int | None = None  # how long a lock lasts; None: for good
    interval: int = 0  # at least this long between two codes (0: no such rule)


def is_locked(rules: CodeRules, locked_at: int | None, now: int) -> bool:
    """Whether a holder locked at C{locked_at} (None: never) is still locked."""
    end = lock_ends(rules, locked_at)
    return locked_at is not None and (end is None or end > now)


def lock_ends(rules: CodeRules, locked_at: int | None) -> int | None:
    """When a lock made at C{locked_at} is lifted; None when it lasts for good (or is none)."""
    if locked_at is None or rules.lock_time is None:
        return None
    return locked_at + rules.lock_time


def next_order_at(rules: CodeRules, last: int | None) -> int | None:
    """The earliest time the next code may go out after the last one (None: any time)."""
    if last is None or not rules.interval:
        return None
    return last + rules.interval


def too_soon(rules: CodeRules, last: int | None, now: int) -> bool:
    """Whether C{now} is within the interval after the last code."""
    earliest = next_order_at(rules, last)
    return earliest is not None and now < earliest


def over_quota(counts: Sequence[tuple[Quota, int]]) -> Quota | None:
    """The first quota whose count (codes sent within its window) has reached its limit."""
    for quota, count in counts:
        if count >= quota.limit:
            return quota
    return None


def code_live(rules: CodeRules, expires: int, tries: int, now: int) -> bool:
    """Whether a code may still be tried: not expired and tries left."""
    return expires >= now and tries < rules.tries


def after_wrong(rules: CodeRules, tries: int, failures: int) -> str:
    """
    The state after a wrong try, given the code's tries and the holder's wrong ones in all,
    this one counted: LOCKED_NOW at the lock limit, else WRONG while the code has tries
    left, else EXPIRED (order a new one).
    """
    if failures >= rules.lock_after:
        return CodeState.LOCKED_NOW
    return CodeState.WRONG if tries < rules.tries else CodeState.EXPIRED


def session_alive(
    created: int, last_seen: int, now: int, idle: int = SESSION_IDLE, lifetime: int = SESSION_MAX
) -> bool:
    """A session lives C{idle} after its last request and C{lifetime} after it began."""
    return now - last_seen <= idle and now - created <= lifetime
