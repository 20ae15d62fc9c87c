# -*- test-case-name: tests.test_counting -*-
"""
One call counts an event twice over: in the process's Prometheus counter (L{metrics}) and in
the day's statistics (the C{stats_daily} table: the admin overview, C{secmail stats}, the
statistics mail), which survive restarts.

L{count} only adds to memory; L{DailyFlush} writes what was counted to the database every
L{FLUSH_INTERVAL} seconds, in one transaction, and once more when the gateway stops. A crash
loses at most that many seconds of the day's figures, never mail. When the database cannot
take them, the counts wait in memory for the next flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from secmail.monitoring import metrics
from secmail.store.stats import DailyStats

log = Logger()

#: Seconds between two writes of the counts to the database.
FLUSH_INTERVAL = 10.0

#: Every name L{count} takes, with its Prometheus counter and the names of its labels.
COUNTERS: dict[str, tuple[Counter, tuple[str, ...]]] = {
    "smtp_sessions": (metrics.SMTP_SESSIONS, ()),
    "smtp_messages": (metrics.SMTP_MESSAGES, ("kind",)),
    "smtp_refused": (metrics.SMTP_REFUSED, ("reason",)),
    "deliveries": (metrics.DELIVERIES, ("kind", "result")),
    "bounces": (metrics.BOUNCES, ()),
    "portal_opens": (metrics.PORTAL_OPENS, ()),
    "portal_reads": (metrics.PORTAL_READS, ()),
    "portal_codes": (metrics.PORTAL_CODES, ("kind",)),
    "portal_code_failures": (metrics.PORTAL_CODE_FAILURES, ("kind",)),
    "portal_replies": (metrics.PORTAL_REPLIES, ()),
    "compose_messages": (metrics.COMPOSE_MESSAGES, ()),
    "sms": (metrics.SMS, ("backend", "result")),
}

#: (day, name, label) -> counted since the last flush.
_pending: dict[tuple[str, str, str], int] = {}
#: The clock days are taken from (a test may replace it).
now: Callable[[], float] = time.time


def utc_day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def count(name: str, *labels: str, n: int = 1) -> None:
    """
    Count C{n} events of C{name} (a key of L{COUNTERS}) with its labels' values in order,
    e.g. C{count("deliveries", "notification", "sent")}. The day's statistics keep the
    values joined by "/" (C{"notification/sent"}).
    """
    counter, names = COUNTERS[name]
    if len(labels) != len(names):
        raise ValueError(f"{name} takes the labels {names}, not {labels}")
    (counter.labels(*labels) if labels else counter).inc(n)
    key = (utc_day(now()), name, "/".join(labels))
    _pending[key] = _pending.get(key, 0) + n


def take_pending() -> dict[tuple[str, str, str], int]:
    """What was counted since the last call (emptied)."""
    taken = dict(_pending)
    _pending.clear()
    return taken


def give_back(counts: dict[tuple[str, str, str], int]) -> None:
    """Put counts that could not be written back, for the next flush."""
    for key, value in counts.items():
        _pending[key] = _pending.get(key, 0) + value


class DailyFlush:
    """Writes the counts to C{stats_daily}: run by a TimerService, and once more at stop."""

    def __init__(self, stats: DailyStats) -> None:
        self.stats = stats
        self._failing = False

    async def flush(self) -> None:
        counts = take_pending()
        if not counts:
            return
        try:
            await self.stats.add(counts)
        except Exception as e:
            give_back(counts)
            if not self._failing:
                log.warn(
                    "Cannot write the day's statistics (kept for later): {error}", error=str(e)
                )
            self._failing = True
            return
        self._failing = False

    def run(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.flush())
