# -*- test-case-name: tests.test_admin_ops -*-
"""
The overview (today, the last 7 and 30 days of the daily statistics, SMS by backend and
result, the queue's depth and oldest row) and C{GET /api/v1/stats?days=N}. The figures are
L{secmail.monitoring.summary.lines}, the same that C{secmail stats} prints; the charts are
inline SVG drawn here, so the page needs nothing from outside.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.web.iweb import IRequest

from secmail.admin.roles import VIEW
from secmail.config import Settings
from secmail.config.cluster import LiveSettings
from secmail.monitoring.summary import LINES, Line, last_days, lines, utc_today
from secmail.store.messages import MessageStore
from secmail.store.queue_rows import QueueFigures
from secmail.store.sms import SmsStore
from secmail.web.admin.access import ConsoleBase, SignedIn, guarded, json_body, json_error
from secmail.web.forms import form_arg
from secmail.web.i18n import N_

#: The statistics API's C{days}: without it a week, as C{secmail stats}.
DEFAULT_DAYS = 7
MAX_DAYS = 366
#: The overview's window, and the two shorter sums it shows beside today.
WINDOW = 30

#: The figures' names on the page (the summary's labels, stripped, are the API's names).
FIGURE_NAMES = {
    "Received": N_("Received"),
    "secure letters": N_("secure letters"),
    "registered letters": N_("registered letters"),
    "relayed": N_("relayed"),
    "Refused at intake": N_("Refused at intake"),
    "Notifications sent": N_("Notifications sent"),
    "Letters opened": N_("Letters opened"),
    "Replies and forwards": N_("Replies and forwards"),
    "D-Compose messages": N_("D-Compose messages"),
    "Bounces": N_("Bounces"),
    "Deliveries deferred": N_("Deliveries deferred"),
}
assert set(FIGURE_NAMES) == {label.strip() for label, _, _ in LINES}
SMS_NAME = N_("SMS {result} via {backend}")


@dataclass(frozen=True)
class Operations:
    """What the overview, queue, SMS outbox and directory pages read and change."""

    #: queue_list, queue_retry, queue_delete, queue_figures.
    queue: MessageStore
    #: The outbox and the phone directory.
    sms: SmsStore
    #: L{secmail.store.stats.DailyStats}.days.
    stats: Callable[[str, str], Awaitable[Mapping[tuple[str, str, str], int]]]
    #: The settings this node uses now (the phone country code, the D-Compose directory).
    live: LiveSettings

    @property
    def settings(self) -> Settings:
        return self.live.current


@dataclass(frozen=True)
class Bar:
    """One day's bar in a chart (SVG user units) and its tooltip."""

    x: float
    y: float
    width: float
    height: float
    day: str
    value: int


@dataclass(frozen=True)
class Figure:
    """One line of the overview: its name, today, 7 and 30 days, and a bar a day."""

    name: str
    #: The name's placeholders (an SMS line's backend and result).
    params: dict[str, str]
    sub: bool
    today: int
    week: int
    month: int
    bars: list[Bar]
    values: tuple[int, ...]


def bars(values: Sequence[int], days: Sequence[str], width: float, height: float) -> list[Bar]:
    """A bar a day, scaled so the highest fills C{height}; a zero is a hairline."""
    top = max(values, default=0) or 1
    step = width / max(len(values), 1)
    found = []
    for i, (value, day) in enumerate(zip(values, days, strict=True)):
        h = max(height * value / top, 0.5)
        found.append(
            Bar(
                round(i * step + step * 0.1, 2),
                round(height - h, 2),
                round(step * 0.8, 2),
                round(h, 2),
                day,
                value,
            )
        )
    return found


def figure_names(counts: Mapping[tuple[str, str, str], int]) -> list[tuple[str, dict[str, str]]]:
    """Each summary line's message id and its values for format(), in L{lines}'s order."""
    named: list[tuple[str, dict[str, str]]] = [
        (FIGURE_NAMES[label.strip()], {}) for label, _, _ in LINES
    ]
    for label in sorted({label for (_, n, label) in counts if n == "sms"}):
        backend, _, result = label.partition("/")
        named.append((SMS_NAME, {"result": result, "backend": backend}))
    return named


def api_name(line: Line) -> str:
    return line.label.strip()


def stats_json(counts: Mapping[tuple[str, str, str], int], days: Sequence[str]) -> dict[str, Any]:
    """The API's statistics: each day's figures and their totals, named as C{secmail stats}."""
    found = lines(counts, days)
    return {
        "from": days[0],
        "to": days[-1],
        "figures": [api_name(line) for line in found],
        "days": [
            {"day": day, "figures": {api_name(line): line.values[i] for line in found}}
            for i, day in enumerate(days)
        ],
        "total": {api_name(line): line.total for line in found},
    }


def queue_json(figures: QueueFigures, rfc3339: Callable[[int], str]) -> dict[str, Any]:
    oldest = figures.oldest_created
    return {
        "waiting": figures.waiting,
        "leased": figures.leased,
        "quarantined": figures.quarantined,
        "oldest": None if oldest is None else rfc3339(oldest),
    }


def age_parts(seconds: int) -> tuple[str, int]:
    """An age as a message id and a number: minutes up to 2 hours, hours up to 2 days."""
    seconds = max(seconds, 0)
    if seconds < 7200:
        return N_("{n} min"), seconds // 60
    if seconds < 2 * 86400:
        return N_("{n} h"), seconds // 3600
    return N_("{n} d"), seconds // 86400


def parse_days(text: str) -> int:
    """The API's C{days}: a whole number from 1 to L{MAX_DAYS}; ValueError naming it else."""
    if not text:
        return DEFAULT_DAYS
    if not (text.strip().isascii() and text.strip().isdigit()) or not 1 <= int(text) <= MAX_DAYS:
        raise ValueError(f"days: {text[:20]!r} is not a whole number from 1 to {MAX_DAYS}")
    return int(text)


def rfc3339(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OverviewPages(ConsoleBase):
    """The overview page (also the home page of a role that may see it) and the stats API."""

    ops: Operations

    @guarded("/overview", "overview", VIEW)
    async def overview(self, request: IRequest, who: SignedIn) -> bytes:
        return await self.overview_page(request, who)

    async def overview_page(self, request: IRequest, who: SignedIn) -> bytes:
        now = int(self.clock.seconds())
        days = last_days(utc_today(now), WINDOW)
        counts = await self.ops.stats(days[0], days[-1])
        queue = await self.ops.queue.queue_figures(now)
        found = lines(counts, days)
        figures = [
            Figure(
                name=name,
                params=params,
                sub=line.label.startswith(" "),
                today=line.values[-1],
                week=sum(line.values[-7:]),
                month=line.total,
                bars=bars(line.values, days, 120, 24),
                values=line.values,
            )
            for line, (name, params) in zip(found, figure_names(counts), strict=True)
        ]
        received = found[0]
        age = None
        if queue.oldest_created is not None:
            age = age_parts(now - queue.oldest_created)
        return self.page(
            request,
            who,
            "admin/overview.html",
            figures=figures,
            days=days,
            received=bars(received.values, days, 600, 119),
            received_top=max(received.values),
            queue=queue,
            age=age,
            can_see_queue=who.role.allows("queue", VIEW),
        )

    @guarded("/api/v1/stats", "overview", VIEW, api=True)
    async def api_stats(self, request: IRequest, who: SignedIn) -> bytes:
        try:
            n = parse_days(form_arg(request, b"days", 20))
        except ValueError as e:
            return json_error(request, 400, str(e))
        now = int(self.clock.seconds())
        days = last_days(utc_today(now), n)
        body = stats_json(await self.ops.stats(days[0], days[-1]), days)
        body["queue"] = queue_json(await self.ops.queue.queue_figures(now), rfc3339)
        return json_body(request, body)
