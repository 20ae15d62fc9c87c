"""Counting events for Prometheus and the day's statistics (secmail.monitoring.counting)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent

from secmail.monitoring import counting, metrics
from secmail.store.stats import DailyStats
from tests.dbs import on_each_engine, open_store

DAY1 = 1_796_601_600  # 2026-12-07 00:00 UTC
DAY2 = DAY1 + 86_400


@pytest.fixture(autouse=True)
def clean_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    counting.take_pending()
    monkeypatch.setattr(counting, "now", lambda: DAY1 + 10)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_counts_in_prometheus_and_for_the_day() -> None:
    before = sample("secmail_deliveries_total", kind="notification", result="sent")
    counting.count("deliveries", "notification", "sent")
    counting.count("deliveries", "notification", "sent", n=2)
    counting.count("bounces")
    assert sample("secmail_deliveries_total", kind="notification", result="sent") == before + 3
    assert counting.take_pending() == {
        ("2026-12-07", "deliveries", "notification/sent"): 3,
        ("2026-12-07", "bounces", ""): 1,
    }
    assert counting.take_pending() == {}


def test_wrong_labels_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="deliveries takes the labels"):
        counting.count("deliveries", "sent")
    with pytest.raises(KeyError):
        counting.count("no_such_counter")


def test_days_are_utc_dates(monkeypatch: pytest.MonkeyPatch) -> None:
    counting.count("portal_opens")
    monkeypatch.setattr(counting, "now", lambda: DAY2 - 1)
    counting.count("portal_opens")
    monkeypatch.setattr(counting, "now", lambda: DAY2)
    counting.count("portal_opens")
    assert counting.take_pending() == {
        ("2026-12-07", "portal_opens", ""): 2,
        ("2026-12-08", "portal_opens", ""): 1,
    }


class FailingStats:
    def __init__(self) -> None:
        self.failing = True
        self.added: list[dict[Any, int]] = []

    def add(self, counts: dict[Any, int]) -> Deferred[None]:
        if self.failing:
            raise ConnectionError("database gone")
        self.added.append(dict(counts))
        return Deferred.fromCoroutine(_nothing())


async def _nothing() -> None:
    return None


def test_counts_wait_while_the_database_cannot_take_them() -> None:
    stats = FailingStats()
    flush = counting.DailyFlush(stats)  # type: ignore[arg-type]
    counting.count("smtp_messages", "letter")
    with capturedLogs() as events:
        flush.run()
        counting.count("smtp_messages", "letter")
        flush.run()
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warned == ["Cannot write the day's statistics (kept for later): database gone"]
    stats.failing = False
    flush.run()
    assert stats.added == [{("2026-12-07", "smtp_messages", "letter"): 2}]
    flush.run()  # nothing counted since: nothing written
    assert len(stats.added) == 1


@on_each_engine
class DailyStatsTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, _, self.store = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.stats = DailyStats(self.db)

    async def test_counts_add_up_per_day_name_and_label(self) -> None:
        await self.stats.add(
            {("2026-12-07", "sms", "modem/sent"): 2, ("2026-12-07", "bounces", ""): 1}
        )
        await self.stats.add(
            {("2026-12-07", "sms", "modem/sent"): 3, ("2026-12-08", "bounces", ""): 4}
        )
        assert await self.stats.days("2026-12-07", "2026-12-08") == {
            ("2026-12-07", "sms", "modem/sent"): 5,
            ("2026-12-07", "bounces", ""): 1,
            ("2026-12-08", "bounces", ""): 4,
        }
        assert await self.stats.days("2026-12-08", "2026-12-08") == {
            ("2026-12-08", "bounces", ""): 4
        }

    async def test_retention_drops_the_days_before_the_cutoffs_day(self) -> None:
        await self.stats.add({("2026-12-06", "bounces", ""): 1, ("2026-12-07", "bounces", ""): 2})
        await self.store.delete_old_events(DAY1 + 3600)
        assert await self.stats.days("2000-01-01", "2100-01-01") == {
            ("2026-12-07", "bounces", ""): 2
        }


def test_the_message_log_counts_what_it_logs() -> None:
    """Each event of the message log moves its counter: one place, so they never disagree."""
    from secmail import message_log

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        value("secmail_smtp_messages_total", kind="letter"),
        value("secmail_smtp_messages_total", kind="relay"),
        value("secmail_smtp_refused_total", reason="rcpt/550"),
        value("secmail_deliveries_total", kind="notification", result="deferred"),
        value("secmail_portal_reads_total"),
        value("secmail_sms_total", backend="modem", result="sent"),
    )
    message_log.accepted(
        "a" * 32,
        peer="192.0.2.1",
        sender="alice@corp.example",
        size=10,
        recipients=[("b@p.example", "letter"), ("c@p.example", "letter"), ("d@p.example", "relay")],
    )
    # The command line as the server passes it: the address must not become a label.
    message_log.refused(
        peer="192.0.2.1",
        command="RCPT TO:<bob@partner.example.0401234567.s>",
        code=550,
        reason="no",
    )
    message_log.delivery_status(
        message_id="b" * 32,
        about="a" * 32,
        kind="notification",
        recipient="b@p.example",
        relay="none",
        delay=1.0,
        status="deferred",
        reply="connection refused",
    )
    message_log.opened("a" * 32, envelope_id="e", recipient="b@p.example", peer="192.0.2.9")
    message_log.pin_sent(
        "a" * 32, envelope_id="e", recipient="b@p.example", number="+358401234567", via="modem"
    )
    after = (
        value("secmail_smtp_messages_total", kind="letter"),
        value("secmail_smtp_messages_total", kind="relay"),
        value("secmail_smtp_refused_total", reason="rcpt/550"),
        value("secmail_deliveries_total", kind="notification", result="deferred"),
        value("secmail_portal_reads_total"),
        value("secmail_sms_total", backend="modem", result="sent"),
    )
    # Two letter recipients are one message of kind letter.
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 1, 1]
    assert counting.take_pending()[("2026-12-07", "smtp_refused", "rcpt/550")] == 1
    exposition = generate_latest(metrics.REGISTRY).decode()
    assert "partner.example" not in exposition and "0401234567" not in exposition
