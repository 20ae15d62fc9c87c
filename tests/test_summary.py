"""The statistics in words: secmail stats's table and the statistics mail."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime

from twisted.internet.task import Clock

from secmail.config import GatewayIdentity, RouteSettings
from secmail.config.monitoring import MonitoringSettings
from secmail.monitoring.statsmail import StatisticsMail, last_period, period_key, statistics_message
from secmail.monitoring.summary import last_days, lines, table
from secmail.store.stats import DailyStats
from tests.dbs import on_each_engine, open_store

COUNTS = {
    ("2026-12-07", "smtp_messages", "letter"): 3,
    ("2026-12-07", "smtp_messages", "relay"): 10,
    ("2026-12-08", "smtp_messages", "registered"): 1,
    ("2026-12-08", "deliveries", "notification/sent"): 4,
    ("2026-12-08", "deliveries", "relay/deferred"): 2,
    ("2026-12-08", "deliveries", "notification/deferred"): 1,
    ("2026-12-08", "sms", "modem/sent"): 1,
    ("2026-12-08", "sms", "http/failed"): 2,
}
IDENTITY = GatewayIdentity("gw.example.com", "bounces@gw.example.com", "secmail@gw.example.com")


def test_lines_sum_per_day() -> None:
    found = {line.label.strip(): line for line in lines(COUNTS, ["2026-12-07", "2026-12-08"])}
    assert found["Received"].values == (13, 1)
    assert found["secure letters"].values == (3, 0)
    assert found["registered letters"].total == 1
    assert found["Notifications sent"].values == (0, 4)
    assert found["Deliveries deferred"].values == (0, 3)
    assert found["SMS sent (modem)"].total == 1
    assert found["SMS failed (http)"].total == 2


def test_table_text() -> None:
    days = ["2026-12-07", "2026-12-08"]
    text = table(lines(COUNTS, days), days)
    rows = text.splitlines()
    assert rows[0].split() == ["12-07", "12-08", "total"]
    assert rows[1].split() == ["Received", "13", "1", "14"]
    assert table(lines(COUNTS, days), days, per_day=False).splitlines()[1].split() == [
        "Received",
        "14",
    ]


def test_last_days() -> None:
    assert last_days(date(2026, 3, 1), 3) == ["2026-02-27", "2026-02-28", "2026-03-01"]


def test_last_period() -> None:
    # Tuesday 2026-12-08: the week before is Monday 11-30 to Sunday 12-06.
    assert last_period(date(2026, 12, 8), "week") == (date(2026, 11, 30), date(2026, 12, 6))
    assert last_period(date(2026, 12, 7), "week") == (date(2026, 11, 30), date(2026, 12, 6))
    assert last_period(date(2026, 12, 6), "week") == (date(2026, 11, 23), date(2026, 11, 29))
    assert last_period(date(2026, 12, 8), "month") == (date(2026, 11, 1), date(2026, 11, 30))
    assert last_period(date(2027, 1, 1), "month") == (date(2026, 12, 1), date(2026, 12, 31))
    assert period_key("week", date(2026, 11, 30)) == "week:2026-11-30"
    assert period_key("month", date(2026, 11, 1)) == "month:2026-11"


def test_statistics_message() -> None:
    raw = statistics_message(
        IDENTITY,
        "admins@corp.example",
        "week",
        date(2026, 12, 7),
        date(2026, 12, 13),
        COUNTS,
        datetime(2026, 12, 14, 6, 0, tzinfo=UTC),
    )
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"] == "admins@corp.example"
    assert parsed["From"] == "secmail@gw.example.com"
    assert parsed["Subject"] == (
        "secmail statistics: week 2026-12-07 to 2026-12-13 (gw.example.com)"
    )
    assert parsed["Auto-Submitted"] == "auto-generated"
    body = parsed.get_content()
    assert "Received" in body and "12-13" in body
    assert [row.split() for row in body.splitlines() if row.startswith("Received")] == [
        ["Received", "13", "1", "0", "0", "0", "0", "0", "14"]
    ]


@on_each_engine
class StatisticsMailTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, self.master, self.store = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.clock = Clock()
        self.clock.advance(datetime(2026, 12, 14, 6, 30, tzinfo=UTC).timestamp())
        self.woken: list[bool] = []

    def job(self, every: str = "week") -> StatisticsMail:
        settings = MonitoringSettings(statistics_to="admins@corp.example", statistics_every=every)
        routes = RouteSettings(incoming="smtp://127.0.0.1:2526", incoming_domains=("corp.example",))
        return StatisticsMail(
            settings,
            IDENTITY,
            routes,
            self.master,
            self.db,
            self.clock,
            lambda: self.woken.append(True),
        )

    async def test_one_mail_per_period_whichever_node_runs(self) -> None:
        await DailyStats(self.db).add(COUNTS)
        node_a, node_b = self.job(), self.job()
        assert await node_a.run_once() is True
        assert await node_b.run_once() is False
        assert await node_a.run_once() is False
        rows = await self.store.queue_list()
        assert [(r.kind, r.recipients, r.route) for r in rows] == [
            ("statistics", ("admins@corp.example",), "smtp://127.0.0.1:2526")
        ]
        assert self.woken == [True]

    async def test_each_period_once_and_a_month_long_past_not_at_all(self) -> None:
        self.clock.advance(8 * 86400)  # Tuesday 12-22: the week of 12-14 to 12-20
        assert await self.job().run_once() is True
        self.clock.advance(10 * 86400)  # Friday 2027-01-01: December
        assert await self.job("month").run_once() is True
        assert await self.job("month").run_once() is False
        assert len(await self.store.queue_list()) == 2

    async def test_a_month_that_ended_weeks_ago_is_not_sent(self) -> None:
        self.clock.advance(37 * 86400)  # 2027-01-20: December ended 20 days ago
        assert await self.job("month").run_once() is False
        assert await self.job("week").run_once() is True  # the week of 01-11 to 01-17
        assert len(await self.store.queue_list()) == 1


def test_stats_command(tmp_path: object) -> None:
    """secmail stats prints the day's figures of the last N days from the database."""
    import sqlite3
    import time

    from tests.test_cli import make_database, run, write

    directory = str(tmp_path)
    database = f"{directory}/secmail.sqlite"
    make_database(database)
    conf = write(directory, "s.toml", f'[store]\ndatabase = "sqlite:{database}"\n')
    today = datetime.fromtimestamp(time.time(), UTC).date().isoformat()
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO stats_daily (day, name, label, value) VALUES (?, 'smtp_messages', "
            "'letter', 4)",
            (today,),
        )
    status, out, err = run(["stats", "--days", "2", "--config", conf])
    assert (status, err) == (0, "")
    rows = out.splitlines()
    assert rows[0].startswith("secmail statistics, ") and rows[0].endswith(", all nodes")
    assert rows[2].split() == ["Received", "0", "4", "4"]
    assert rows[3].split() == ["secure", "letters", "0", "4", "4"]
    status, out, err = run(["stats", "--days", "0", "--config", conf])
    assert status == 1 and err == "secmail: --days: 0 is not between 1 and 3660\n"
    status, out, err = run(
        [
            "stats",
            "--config",
            write(directory, "n.toml", '[store]\ndatabase = "sqlite:/nonexistent/x.sqlite"\n'),
        ]
    )
    assert status == 1 and "no secmail database at" in err
