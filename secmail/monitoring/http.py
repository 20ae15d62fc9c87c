# -*- test-case-name: tests.test_monitoring -*-
"""
The monitoring listener ([metrics] listen): C{GET /metrics} (Prometheus' text format),
C{GET /livez} and C{GET /readyz} (small JSON objects; a caller reads the status code).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from secmail import __version__
from secmail.monitoring.health import Readiness
from secmail.monitoring.metrics import REGISTRY

log = Logger()


class JsonAnswer(Resource):
    """A GET answered with C{(status, object)} from an async function."""

    isLeaf = True

    def __init__(self, answer: Callable[[], Awaitable[tuple[int, dict[str, Any]]]]) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: Request) -> Any:
        async def run() -> tuple[int, dict[str, Any]]:
            return await self.answer()

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def send(result: tuple[int, dict[str, Any]]) -> None:
            if gone:  # the caller stopped waiting (a probe's own timeout): nobody to answer
                return
            code, body = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps(body, indent=1).encode("utf-8") + b"\n")
            request.finish()

        def failed_answer(failure: Failure) -> tuple[int, dict[str, Any]]:
            log.failure("Health answer failed", failure)
            return 500, {"status": "error"}

        Deferred.fromCoroutine(run()).addErrback(failed_answer).addCallback(send).addErrback(
            lambda f: log.failure("Sending a health answer failed", f)
        )
        return NOT_DONE_YET


def live_answer(clock: Any, started: float) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    async def answer() -> tuple[int, dict[str, Any]]:
        uptime = int(clock.seconds() - started)
        return 200, {"status": "live", "version": __version__, "uptime_seconds": uptime}

    return answer


def ready_answer(readiness: Readiness) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    async def answer() -> tuple[int, dict[str, Any]]:
        results = await readiness.check()
        ready = all(r.ok for r in results)
        return 200 if ready else 503, {
            "status": "ready" if ready else "not ready",
            "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results},
        }

    return answer


class QuietSite(Site):
    """No access log: a scrape every 15 s would drown the gateway's own lines."""

    def log(self, request: http.Request) -> None:
        pass


def monitoring_site(clock: Any, started: float, readiness: Readiness) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(REGISTRY))
    root.putChild(b"livez", JsonAnswer(live_answer(clock, started)))
    root.putChild(b"readyz", JsonAnswer(ready_answer(readiness)))
    return QuietSite(root)
