"""
The loop shared by the services that send durable rows when they fall due: the outbound
mail queue and the SMS outbox.

A scan claims as many due rows as there is room for and starts work on them, again and
again while rows keep coming; then a timer wakes the next scan. A commit that adds a row
wakes a scan at once (`wake`), and so does finished work, which makes room. When the
service stops, work in flight may still record its outcome within a grace period; work
that takes longer keeps its lease, and the next start on this node takes it back.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class ScanningService(Service):
    #: What the log calls the table (e.g. "the queue").
    what = "the table"
    #: How long stopping waits for work in flight.
    stop_grace: float = 10

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._tasks: set[Deferred[None]] = set()
        self._timer: IDelayedCall | None = None
        self._scanning = False
        self._rescan = False
        #: When the last scan ended without an error (clock seconds; None: none yet).
        self.last_scan: float | None = None

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- for subclasses ------------------------------------------------------------------

    def poll_interval(self) -> float:
        """Seconds between scans when nothing wakes one."""
        raise NotImplementedError

    def room(self) -> int:
        """How many more rows may be claimed now."""
        raise NotImplementedError

    async def claim_and_start(self, room: int) -> int:
        """Claim up to C{room} due rows and start work on them (L{run}); how many were claimed."""
        raise NotImplementedError

    async def next_scan(self, poll: float) -> float:
        """Seconds until the next scan, given the poll interval (sooner if a row is due)."""
        return poll

    # --- the loop ------------------------------------------------------------------------

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._tasks:
            return None
        waiting = DeferredList(list(self._tasks), consumeErrors=True)
        waiting.addTimeout(self.stop_grace, self.clock)
        return waiting.addBoth(lambda _: None)

    def wake(self) -> None:
        """Look for due rows now (called after a commit that added one)."""
        if not self.running:
            return
        if self._scanning:
            self._rescan = True
            return
        Deferred.fromCoroutine(self._scan()).addErrback(
            lambda f: log.failure("Scanning {what} failed", f, what=self.what)
        )

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(delay, 0), self.wake)

    async def _scan(self) -> None:
        self._scanning = True
        delay = self.poll_interval()
        try:
            while True:
                self._rescan = False
                room = self.room()
                if room <= 0:  # busy: every slot is working
                    self.last_scan = self.clock.seconds()
                    return
                claimed = await self.claim_and_start(room)
                if claimed < room and not self._rescan:
                    break
            delay = await self.next_scan(delay)
            self.last_scan = self.clock.seconds()
        except Exception:
            log.failure(
                "Cannot read {what}; trying again in {delay} s", what=self.what, delay=delay
            )
        finally:
            self._scanning = False
            self._schedule(delay)

    def run(
        self,
        work: Coroutine[Any, Any, None],
        describe: str,
        finished: Callable[[], None] = lambda: None,
    ) -> None:
        """
        Run C{work} as work in flight: a failure is logged with C{describe} (a cancellation
        at stop is not a failure); when it ends, C{finished} is called and a scan woken.
        """
        task = Deferred.fromCoroutine(work)
        self._tasks.add(task)

        def failed(failure: Failure) -> None:
            if not failure.check(CancelledError):
                log.failure("{describe} failed", failure, describe=describe)

        def done(_: object) -> None:
            self._tasks.discard(task)
            finished()
            self.wake()

        task.addErrback(failed)
        task.addBoth(done)
