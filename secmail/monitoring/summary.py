# -*- test-case-name: tests.test_summary -*-
"""
The day's statistics in words: the lines that C{secmail stats}, the statistics mail and the
admin overview show, made from the C{stats_daily} counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

#: (label, counter name, label prefix): a line sums the counts of that name whose label starts
#: with the prefix ("" for all of them).
LINES: tuple[tuple[str, str, str], ...] = (
    ("Received", "smtp_messages", ""),
    ("  secure letters", "smtp_messages", "letter"),
    ("  registered letters", "smtp_messages", "registered"),
    ("  relayed", "smtp_messages", "relay"),
    ("Refused at intake", "smtp_refused", ""),
    ("Notifications sent", "deliveries", "notification/sent"),
    ("Letters opened", "portal_opens", ""),
    ("Replies and forwards", "portal_replies", ""),
    ("D-Compose messages", "compose_messages", ""),
    ("Bounces", "bounces", ""),
    ("Deliveries deferred", "deliveries", ""),
)


@dataclass(frozen=True)
class Line:
    label: str
    values: tuple[int, ...]  # one per day

    @property
    def total(self) -> int:
        return sum(self.values)


def last_days(today: date, n: int) -> list[str]:
    """The C{n} UTC dates up to and including C{today}, oldest first (YYYY-MM-DD)."""
    return [(today - timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


def utc_today(timestamp: float) -> date:
    return datetime.fromtimestamp(timestamp, UTC).date()


def lines(counts: Mapping[tuple[str, str, str], int], days: Sequence[str]) -> list[Line]:
    """The figures of L{LINES}, then SMS by backend and result, for each of C{days}."""

    def total(day: str, name: str, prefix: str, suffix: str = "") -> int:
        return sum(
            value
            for (d, n, label), value in counts.items()
            if d == day and n == name and label.startswith(prefix) and label.endswith(suffix)
        )

    found = []
    for label, name, prefix in LINES:
        if label == "Deliveries deferred":
            values = tuple(total(day, name, "", "/deferred") for day in days)
        else:
            values = tuple(total(day, name, prefix) for day in days)
        found.append(Line(label, values))
    sms = sorted({label for (_, n, label) in counts if n == "sms"})
    for backend_result in sms:
        backend, _, result = backend_result.partition("/")
        found.append(
            Line(
                f"SMS {result} ({backend})",
                tuple(total(day, "sms", backend_result) for day in days),
            )
        )
    return found


def table(found: Sequence[Line], days: Sequence[str], per_day: bool = True) -> str:
    """A plain-text table: a row per line, a column per day (when C{per_day}) and the total."""
    heads = [d[5:] for d in days] if per_day else []
    heads.append("total")
    rows = [[*(str(v) for v in line.values)] if per_day else [] for line in found]
    for row, line in zip(rows, found, strict=True):
        row.append(str(line.total))
    label_width = max([len(line.label) for line in found] + [len("")])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    out = [
        " " * label_width + "  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    ]
    for line, row in zip(found, rows, strict=True):
        cells = "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
        out.append(line.label.ljust(label_width) + "  " + cells)
    return "\n".join(out) + "\n"
