"""The one start/stop service shape (secmail.services): order, waiting, failures."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from secmail.services import OrderedServices, StartStopService


class StartStopServiceTests(SynchronousTestCase):
    def test_start_and_stop_order(self) -> None:
        """Parts start in the order they were added and stop in the reverse order."""
        calls: list[str] = []
        top = MultiService()
        for name in ("database", "queue", "modem"):
            StartStopService(
                name,
                lambda name=name: calls.append(f"start {name}"),  # type: ignore[misc]
                lambda name=name: calls.append(f"stop {name}"),  # type: ignore[misc]
            ).setServiceParent(top)
        top.startService()
        top.stopService()
        self.assertEqual(
            calls,
            [
                "start database",
                "start queue",
                "start modem",
                "stop modem",
                "stop queue",
                "stop database",
            ],
        )

    def test_stop_is_waited_for(self) -> None:
        """What stop returns is what the service tree waits for before stopping earlier parts."""
        stopping: Deferred[None] = Deferred()
        service = StartStopService("queue", lambda: None, lambda: stopping)
        service.startService()
        stopped = service.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        self.assertFalse(service.running)
        stopping.callback(None)
        self.successResultOf(stopped)

    def test_async_start_runs_on_and_its_failure_is_logged(self) -> None:
        """An async start does not hold up start-up; when it fails, the failure is logged."""
        started: list[bool] = []

        async def start() -> None:
            started.append(True)
            await fail(RuntimeError("leases"))

        service = StartStopService("queue", start, lambda: None)
        service.startService()
        self.assertEqual(started, [True])
        self.assertTrue(service.running)
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(logged.value), "leases")
        self.assertIsNone(service.stopService())


class OrderedServicesTests(SynchronousTestCase):
    def test_each_stops_after_the_later_one_has_stopped(self) -> None:
        """The database is not closed while the queue is still finishing its deliveries."""
        calls: list[str] = []
        queue_stopping: Deferred[None] = Deferred()
        top = OrderedServices()
        StartStopService(
            "database", lambda: None, lambda: calls.append("stop database")
        ).setServiceParent(top)
        StartStopService(
            "queue", lambda: None, lambda: calls.append("stop queue") or queue_stopping
        ).setServiceParent(top)
        StartStopService(
            "listener", lambda: None, lambda: calls.append("stop listener")
        ).setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual(calls, ["stop listener", "stop queue"])
        self.assertNoResult(stopped)
        queue_stopping.callback(None)
        self.assertEqual(calls, ["stop listener", "stop queue", "stop database"])
        self.successResultOf(stopped)
        self.assertFalse(top.running)

    def test_a_failing_stop_is_logged_and_the_others_stop(self) -> None:
        calls: list[str] = []
        top = OrderedServices()
        StartStopService(
            "database", lambda: None, lambda: calls.append("stop database")
        ).setServiceParent(top)
        StartStopService(
            "modem", lambda: None, lambda: fail(RuntimeError("port gone"))
        ).setServiceParent(top)
        top.startService()
        self.successResultOf(top.stopService())
        self.assertEqual(calls, ["stop database"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
