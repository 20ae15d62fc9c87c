# -*- test-case-name: tests.test_summary -*-
"""
The statistics mail: a plain-text summary of the week (each Monday, for Monday to Sunday
before it) or the month (on the 1st, for the month before) to C{[monitoring] statistics_to},
made from the daily statistics of every node. Off unless that address is set.

The job runs hourly on every node. The first node to find the last period unsent writes the
mail to the queue and marks the period sent, in one transaction (C{stats_mail}); a second
node's transaction fails on the mark and queues nothing. A period that ended more than
L{LATE_DAYS} days ago is not sent (a gateway that was stopped for long does not send old ones).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from secmail.config import GatewayIdentity, RouteSettings
from secmail.config.monitoring import MonitoringSettings
from secmail.crypto import MasterKey
from secmail.letters import routed_mail
from secmail.monitoring.summary import lines, table
from secmail.store.database import Database, Txn
from secmail.store.rows import insert_messages_txn
from secmail.store.stats import DailyStats

log = Logger()

#: The audit trail the statistics mails' deliveries are recorded on.
STATS_MAIL_TRAIL = "statistics-mail"
#: A period that ended longer ago than this is not sent.
LATE_DAYS = 6


def last_period(today: date, every: str) -> tuple[date, date]:
    """The last whole week (Monday to Sunday) or month before C{today}: first and last day."""
    if every == "week":
        end = today - timedelta(days=today.weekday() + 1)
        return end - timedelta(days=6), end
    end = today.replace(day=1) - timedelta(days=1)
    return end.replace(day=1), end


def period_key(every: str, first: date) -> str:
    return f"week:{first.isoformat()}" if every == "week" else f"month:{first.isoformat()[:7]}"


def statistics_message(
    identity: GatewayIdentity,
    to: str,
    every: str,
    first: date,
    last: date,
    counts: dict[tuple[str, str, str], int],
    now: datetime,
) -> bytes:
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    what = "week" if every == "week" else "month"
    message = EmailMessage()
    message["From"] = identity.notification_from
    message["To"] = to
    message["Subject"] = (
        f"secmail statistics: {what} {first.isoformat()} to {last.isoformat()} "
        f"({identity.hostname})"
    )
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(domain=identity.hostname)
    message["Auto-Submitted"] = "auto-generated"
    body = (
        f"The secmail gateway {identity.hostname}, all nodes, {first.isoformat()} to "
        f"{last.isoformat()} (UTC days).\n\n"
        + table(lines(counts, days), days, per_day=every == "week")
        + "\nThe same figures: secmail stats --days N. Sent because [monitoring] statistics_to"
        " is set.\n"
    )
    message.set_content(body, cte="quoted-printable")
    return message.as_bytes().replace(b"\n", b"\r\n")


class StatisticsMail:
    def __init__(
        self,
        settings: MonitoringSettings,
        identity: GatewayIdentity,
        routes: RouteSettings,
        master: MasterKey,
        db: Database,
        clock: IReactorTime,
        on_commit: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.routes = routes
        self.master = master
        self.db = db
        self.clock = clock
        self.on_commit = on_commit

    async def run_once(self) -> bool:
        """Queue the last period's mail unless a node has; whether this run queued it."""
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        every = self.settings.statistics_every
        first, last = last_period(now.date(), every)
        if (now.date() - last).days > LATE_DAYS + 1:
            return False
        key = period_key(every, first)
        if await self.db.run(lambda txn: _sent_txn(txn, key)):
            return False
        counts = await DailyStats(self.db).days(first.isoformat(), last.isoformat())
        content = statistics_message(
            self.identity, self.settings.statistics_to, every, first, last, counts, now
        )
        mail = routed_mail(
            self.routes,
            self.master,
            kind="statistics",
            sender=self.identity.bounce_address,
            to=self.settings.statistics_to,
            content=content,
            about=STATS_MAIL_TRAIL,
        )
        stamp = int(now.timestamp())

        def txn_(txn: Txn) -> None:
            txn.execute("INSERT INTO stats_mail (period, sent) VALUES (?, ?)", (key, stamp))
            insert_messages_txn(txn, [mail], stamp)

        try:
            await self.db.run(txn_)
        except Exception as e:
            if await self.db.run(lambda txn: _sent_txn(txn, key)):
                return False  # another node was first
            raise e
        log.info(
            "Statistics mail for {period} queued to {to}",
            period=key,
            to=self.settings.statistics_to,
        )
        self.on_commit()
        return True

    def run(self) -> Deferred[None]:
        """For an hourly TimerService: a failure is logged, and the next hour tries again."""

        async def once() -> None:
            try:
                await self.run_once()
            except Exception as e:
                log.warn("Cannot queue the statistics mail (next try in an hour): {e}", e=str(e))

        return Deferred.fromCoroutine(once())


def _sent_txn(txn: Txn, key: str) -> bool:
    return txn.execute("SELECT 1 FROM stats_mail WHERE period = ?", (key,)).fetchone() is not None
