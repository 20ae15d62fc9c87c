# -*- test-case-name: tests.test_agent -*-
"""
The monitoring agent: a JSON health report POSTed over HTTPS to a monitoring service
(C{[monitoring] report_url}) at start-up and then every C{report_interval} seconds.

A report that fails (no connection, a certificate that does not verify, an answer other than
2xx) is tried again after 10 s, then 20, 40, ... up to the interval; the first failure of a
run is logged as a warning and the recovery as an info line. The report holds figures only:
no address, subject, token or content (see L{REPORT_FIELDS}).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from secmail import __version__
from secmail.config.monitoring import MonitoringSettings
from secmail.masking import mask_url
from secmail.monitoring import metrics
from secmail.monitoring.health import CHECK_TIMEOUT, Readiness
from secmail.store.queue_rows import QueueFigures

log = Logger()

#: The first retry after a failed report, in seconds; it doubles up to the interval.
FIRST_RETRY = 10.0
#: Seconds a report may take.
REPORT_TIMEOUT = 30.0

#: The report's top-level fields (documented in README "Monitoring").
REPORT_FIELDS = (
    "version",
    "node",
    "time",
    "uptime_seconds",
    "ready",
    "checks",
    "queue",
    "errors",
    "today",
)

#: Posts a report body; fires with the HTTP status code.
Post = Callable[[bytes], Awaitable[int]]


def sample(name: str, **labels: str) -> int:
    return int(metrics.REGISTRY.get_sample_value(name, labels) or 0)


def error_counts() -> dict[str, int]:
    """Errors counted since the process started."""
    by_result: dict[str, int] = {}
    for family in metrics.DELIVERIES.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                result = s.labels.get("result", "")
                by_result[result] = by_result.get(result, 0) + int(s.value)
    return {
        "database": sample("secmail_db_errors_total"),
        "deliveries_deferred": by_result.get("deferred", 0),
        "deliveries_bounced": by_result.get("bounced", 0),
        "quarantined": by_result.get("quarantined", 0),
    }


def today_counts(counts: dict[tuple[str, str, str], int]) -> dict[str, Any]:
    """The day's statistics as C{{name: value}} or C{{name: {label: value}}}."""
    today: dict[str, Any] = {}
    for (_, name, label), value in sorted(counts.items()):
        if label:
            today.setdefault(name, {})[label] = value
        else:
            today[name] = value
    return today


def describe_error(error: Exception) -> str:
    """One line: the error, or for treq's wrapped failures the reasons inside them."""
    reasons = getattr(error, "reasons", None)
    text = "; ".join(r.getErrorMessage() for r in reasons) if reasons else str(error)
    return " ".join(f"{type(error).__name__}: {text}".split())[:300]


async def _bounded(work: Awaitable[Any], clock: IReactorTime) -> Any:
    """C{work}'s result, or TimeoutError after L{CHECK_TIMEOUT} seconds."""

    async def run() -> Any:
        return await work

    attempt = Deferred.fromCoroutine(run())
    attempt.addTimeout(CHECK_TIMEOUT, clock)
    return await attempt


class ReportBuilder:
    """Gathers one report: readiness checks, the queue, errors and the day's counters."""

    def __init__(
        self,
        clock: IReactorTime,
        node: str,
        started: float,
        readiness: Readiness,
        queue_figures: Callable[[int], Awaitable[QueueFigures]],
        day_counts: Callable[[str], Awaitable[dict[tuple[str, str, str], int]]],
    ) -> None:
        self.clock = clock
        self.node = node
        self.started = started
        self.readiness = readiness
        self.queue_figures = queue_figures
        self.day_counts = day_counts

    async def build(self) -> dict[str, Any]:
        now = self.clock.seconds()
        checks = await self.readiness.check()
        report: dict[str, Any] = {
            "version": __version__,
            "node": self.node,
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "uptime_seconds": int(now - self.started),
            "ready": all(c.ok for c in checks),
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
            "queue": None,
            "errors": error_counts(),
            "today": None,
        }
        try:
            # Bounded like the checks: a hung database must not stop the reports.
            figures = await _bounded(self.queue_figures(int(now)), self.clock)
            oldest = figures.oldest_created
            report["queue"] = {
                "waiting": figures.waiting,
                "leased": figures.leased,
                "quarantined": figures.quarantined,
                "oldest_age_seconds": 0 if oldest is None else max(int(now) - oldest, 0),
            }
            day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
            report["today"] = today_counts(await _bounded(self.day_counts(day), self.clock))
        except Exception as e:  # the database is down: the checks say so; report anyway
            log.debug("Report without queue figures: {error}", error=str(e))
        return report


class ReportAgent(Service):
    name = "monitoring-agent"

    def __init__(
        self,
        settings: MonitoringSettings,
        clock: IReactorTime,
        build: Callable[[], Awaitable[dict[str, Any]]],
        post: Post,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.build = build
        self.post = post
        self.failures = 0
        self._timer: IDelayedCall | None = None
        self._sending: Deferred[bool] | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._sending is not None:
            self._sending.cancel()

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._timer = self.clock.callLater(delay, self._send)

    def _send(self) -> None:
        self._timer = None
        self._sending = Deferred.fromCoroutine(self.report_once())
        self._sending.addBoth(self._sent)

    def _sent(self, ok: object) -> None:
        self._sending = None
        interval = self.settings.report_interval
        if ok is True:
            self._schedule(interval)
        else:
            self._schedule(min(FIRST_RETRY * 2 ** (self.failures - 1), interval))

    async def report_once(self) -> bool:
        """Build and send one report; whether the service took it (2xx)."""
        where = mask_url(self.settings.report_url)
        try:
            body = json.dumps(await self.build()).encode("utf-8")
            code = await self.post(body)
            problem = None if 200 <= code < 300 else f"HTTP {code}"
        except CancelledError:
            if not self.running:
                return False  # stopping: not a failed report
            problem = "CancelledError"
        except Exception as e:
            problem = describe_error(e)
        if problem is None:
            if self.failures:
                log.info("Monitoring report to {url} sent again", url=where)
            self.failures = 0
            return True
        self.failures += 1
        if self.failures == 1:
            log.warn(
                "Monitoring report to {url} failed ({problem}); retrying with backoff",
                url=where,
                problem=problem,
            )
        return False


def https_post(settings: MonitoringSettings, reactor: Any) -> Post:
    """POSTs to C{report_url} with treq, verifying the certificate (C{report_ca_file} or the
    system's CAs) and sending the token as a bearer token."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    from secmail.tls import trust_root_from_pem

    trust = trust_root_from_pem(settings.report_ca_file) if settings.report_ca_file else None
    client = HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust)))
    headers: dict[bytes | str, bytes | str] = {
        "Content-Type": "application/json",
        "User-Agent": f"secmail/{__version__}",
    }
    if settings.report_token:
        headers["Authorization"] = f"Bearer {settings.report_token}"

    async def post(body: bytes) -> int:
        response = await client.post(
            settings.report_url, data=body, headers=headers, timeout=REPORT_TIMEOUT
        )
        await treq.content(response)
        return int(response.code)

    return post
