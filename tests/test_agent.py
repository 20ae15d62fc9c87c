"""The monitoring agent (secmail.monitoring.agent): reports, retries, what a report holds."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from secmail.config import ConfigError, describe, from_mapping
from secmail.config.monitoring import MonitoringSettings
from secmail.monitoring.agent import REPORT_FIELDS, ReportAgent, ReportBuilder, today_counts
from secmail.monitoring.health import CheckResult
from secmail.store.queue_rows import QueueFigures

SETTINGS = MonitoringSettings(
    report_url="https://mon.example.net/report?key=secret", report_interval=300, report_token="t"
)


class FakeReadiness:
    async def check(self) -> list[CheckResult]:
        return [CheckResult("database", True, "write committed in 1 ms")]


class Poster:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, body: bytes) -> int:
        self.bodies.append(json.loads(body))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return int(answer)


async def small_report() -> dict[str, Any]:
    return {"version": "x"}


class AgentTests(SynchronousTestCase):
    def start(self, poster: Poster) -> tuple[Clock, ReportAgent]:
        clock = Clock()
        agent = ReportAgent(SETTINGS, clock, small_report, poster)
        agent.startService()
        self.addCleanup(agent.stopService)
        return clock, agent

    def test_reports_at_start_and_every_interval(self) -> None:
        poster = Poster()
        clock, _ = self.start(poster)
        clock.advance(0)
        self.assertEqual(len(poster.bodies), 1)
        clock.advance(299)
        self.assertEqual(len(poster.bodies), 1)
        clock.advance(1)
        self.assertEqual(len(poster.bodies), 2)

    def test_failures_retry_with_backoff_and_log_once(self) -> None:
        poster = Poster(ConnectionRefusedError("refused"), 503, 500, 200)
        with capturedLogs() as events:
            clock, agent = self.start(poster)
            clock.advance(0)  # fails: refused
            clock.advance(10)  # fails: 503
            clock.advance(19)
            self.assertEqual(len(poster.bodies), 2)
            clock.advance(1)  # fails: 500
            clock.advance(40)  # sent
            self.assertEqual(agent.failures, 0)
            clock.advance(299)
            self.assertEqual(len(poster.bodies), 4)
            clock.advance(1)
            self.assertEqual(len(poster.bodies), 5)
        lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("failed (ConnectionRefusedError:", lines[0])
        self.assertIn("https://mon.example.net/report?key=***", lines[0])
        self.assertNotIn("secret", " ".join(lines))
        self.assertIn("sent again", lines[1])

    def test_backoff_stops_at_the_interval(self) -> None:
        poster = Poster(*[500] * 10)
        clock, _ = self.start(poster)
        clock.advance(0)
        for wait in (10, 20, 40, 80, 160, 300, 300):
            clock.advance(wait - 1)
            before = len(poster.bodies)
            clock.advance(1)
            self.assertEqual(len(poster.bodies), before + 1, wait)

    def test_stopping_during_a_report_is_no_failure(self) -> None:
        pending: Deferred[int] = Deferred()

        async def hanging(body: bytes) -> int:
            return await pending

        clock = Clock()
        agent = ReportAgent(SETTINGS, clock, small_report, hanging)
        with capturedLogs() as events:
            agent.startService()
            clock.advance(0)
            agent.stopService()
        assert agent.failures == 0
        assert [e for e in events if e["log_level"] >= LogLevel.warn] == []

    def test_stop_cancels_the_timer(self) -> None:
        poster = Poster()
        clock, agent = self.start(poster)
        clock.advance(0)
        agent.stopService()
        clock.advance(1000)
        self.assertEqual(len(poster.bodies), 1)


class BuilderTests(SynchronousTestCase):
    def test_report_fields(self) -> None:
        clock = Clock()
        clock.advance(1_796_688_000)  # 2026-12-08 00:00 UTC
        builder = ReportBuilder(
            clock,
            "gw.example.com/node1",
            1_796_688_000 - 90,
            FakeReadiness(),  # type: ignore[arg-type]
            lambda now: succeed(QueueFigures(4, 1, 0, now - 30)),
            lambda day: succeed({(day, "smtp_messages", "letter"): 3, (day, "bounces", ""): 1}),
        )
        report = self.successResultOf(Deferred.fromCoroutine(builder.build()))
        self.assertEqual(tuple(report), REPORT_FIELDS)
        self.assertEqual(report["node"], "gw.example.com/node1")
        self.assertEqual(report["time"], "2026-12-08T00:00:00+00:00")
        self.assertEqual(report["uptime_seconds"], 90)
        self.assertIs(report["ready"], True)
        self.assertEqual(
            report["queue"], {"waiting": 4, "leased": 1, "quarantined": 0, "oldest_age_seconds": 30}
        )
        self.assertEqual(report["today"], {"bounces": 1, "smtp_messages": {"letter": 3}})
        self.assertEqual(
            set(report["errors"]),
            {"database", "deliveries_deferred", "deliveries_bounced", "quarantined"},
        )

    def test_a_hung_database_does_not_stop_the_report(self) -> None:
        clock = Clock()
        builder = ReportBuilder(
            clock,
            "n",
            0,
            FakeReadiness(),  # type: ignore[arg-type]
            lambda now: Deferred(),  # never answers
            lambda day: succeed({}),
        )
        d = Deferred.fromCoroutine(builder.build())
        assert not d.called
        clock.advance(2)
        report = self.successResultOf(d)
        self.assertIsNone(report["queue"])

    def test_database_down_still_reports(self) -> None:
        def down(now: int) -> Deferred[QueueFigures]:
            raise ConnectionError("down")

        builder = ReportBuilder(
            Clock(),
            "n",
            0,
            FakeReadiness(),
            down,
            lambda day: succeed({}),  # type: ignore[arg-type]
        )
        report = self.successResultOf(Deferred.fromCoroutine(builder.build()))
        self.assertIsNone(report["queue"])
        self.assertIsNone(report["today"])


def test_today_counts() -> None:
    assert today_counts({("d", "sms", "modem/sent"): 2, ("d", "portal_opens", ""): 5}) == {
        "portal_opens": 5,
        "sms": {"modem/sent": 2},
    }


def test_settings_checks() -> None:
    good = from_mapping(
        {"monitoring": {"report_url": "https://mon.example.net/r?key=k1", "report_token": "s3"}}
    )
    assert good.monitoring.report_interval == 300
    shown = "\n".join(describe(good))
    assert "monitoring.report_token = '***'" in shown
    assert "s3" not in shown and "k1" not in shown
    for values, error in [
        ({"report_url": "http://mon.example.net/r"}, "must be an https:// URL"),
        ({"report_interval": 0.5}, "less than 1 second"),
        ({"report_token": "a\nb"}, "must be one line"),
        ({"report_ca_file": "/nonexistent/ca.pem"}, "not found"),
    ]:
        try:
            from_mapping({"monitoring": values})
        except ConfigError as e:
            assert str(e).startswith("monitoring."), e
            assert error in str(e)
        else:
            raise AssertionError(f"{values} was accepted")
