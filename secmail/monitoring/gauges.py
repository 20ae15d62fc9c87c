# -*- test-case-name: tests.test_monitoring -*-
"""The queue's gauges, set from one cheap query every few seconds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from secmail.monitoring.metrics import QUEUE_OLDEST, QUEUE_ROWS
from secmail.store.queue_rows import QueueFigures

log = Logger()


class QueueGauges:
    """Sets the queue's gauges from one cheap query; run every [queue] poll_interval (>= 1 s)."""

    def __init__(self, figures: Callable[[int], Awaitable[QueueFigures]], clock: IReactorTime):
        self.figures = figures
        self.clock = clock
        self._failing = False

    async def refresh(self) -> None:
        now = int(self.clock.seconds())
        try:
            figures = await self.figures(now)
        except Exception as e:
            if not self._failing:  # once per run of failures, not every 15 s
                log.warn("Cannot read the queue's figures for metrics: {error}", error=str(e))
            self._failing = True
            return
        self._failing = False
        QUEUE_ROWS.labels("waiting").set(figures.waiting)
        QUEUE_ROWS.labels("leased").set(figures.leased)
        QUEUE_ROWS.labels("quarantined").set(figures.quarantined)
        oldest = figures.oldest_created
        QUEUE_OLDEST.set(0 if oldest is None else max(now - oldest, 0))

    def run(self) -> Deferred[None]:
        """For a TimerService: never fails, so the timer keeps running."""
        return Deferred.fromCoroutine(self.refresh())
