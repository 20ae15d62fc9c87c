# -*- test-case-name: tests.test_services,tests.test_plugin -*-
"""
One service shape for the parts of the gateway that are opened at start and closed at stop.

The database thread, the rendering threads, the outbound queue and the modem link each
have a C{start} and a C{stop}; L{StartStopService} runs them as a Twisted service, so the
service tree starts them in the order they were added and stops them in the reverse order
(STYLE.md). The model is C{twisted.application.internet}'s services, which wrap a thing
that is not itself a service.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger

log = Logger()

Step = Callable[[], Coroutine[Any, Any, Any] | Deferred[Any] | None]
"""A start or stop: plain, or returning a coroutine or Deferred to wait for."""


class StartStopService(Service):
    """Runs C{start} when the service starts and C{stop} when it stops.

    A C{start} that returns an awaitable runs on: start-up does not wait for it, and its
    failure is logged (the gateway runs on without that part, as before). What C{stop}
    returns, the service tree waits for before it stops what was started earlier.
    """

    def __init__(self, name: str, start: Step, stop: Step) -> None:
        self.name = name
        self.start = start
        self.stop = stop

    def startService(self) -> None:
        super().startService()
        started = self.start()
        if started is not None:
            ensureDeferred(started).addErrback(
                lambda f: log.failure("Starting {name} failed", f, name=self.name)
            )

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        stopped = self.stop()
        if stopped is not None:
            return ensureDeferred(stopped)
        return None


class OrderedServices(MultiService):
    """
    The gateway's service tree: children start in the order they were added and stop one after
    another in the reverse order, each only once the one started after it has finished
    stopping. (Twisted's L{MultiService} stops them all at once, so the database would close
    while the queue still records the outcomes of its last deliveries.) A child whose stop
    fails is logged, and the others stop all the same.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_each())

    async def _stop_each(self) -> None:
        for service in reversed(list(self)):
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=service.name)
