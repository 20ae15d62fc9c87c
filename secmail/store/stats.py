# -*- test-case-name: tests.test_counting -*-
"""Daily statistics (C{stats_daily}): counts added by every node, read per day."""

from __future__ import annotations

from collections.abc import Mapping

from secmail.store.database import Database, Txn

#: (day, name, label) -> how many.
Counts = Mapping[tuple[str, str, str], int]


def add_counts_txn(txn: Txn, counts: Counts) -> None:
    for (day, name, label), value in sorted(counts.items()):
        txn.execute(
            "INSERT INTO stats_daily (day, name, label, value) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (day, name, label) DO UPDATE SET value = stats_daily.value + "
            "excluded.value",
            (day, name, label, value),
        )


class DailyStats:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, counts: Counts) -> None:
        """Add C{counts} to the stored ones, in one transaction."""
        await self.db.run(lambda txn: add_counts_txn(txn, counts))

    async def days(self, first: str, last: str) -> dict[tuple[str, str, str], int]:
        """The counts of the days from C{first} to C{last} (YYYY-MM-DD, both included)."""

        def txn_(txn: Txn) -> dict[tuple[str, str, str], int]:
            rows = txn.execute(
                "SELECT day, name, label, value FROM stats_daily WHERE day >= ? AND day <= ?",
                (first, last),
            ).fetchall()
            return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

        return await self.db.run(txn_)

    async def days_of(self, day: str) -> dict[tuple[str, str, str], int]:
        """The counts of one day (YYYY-MM-DD)."""
        return await self.days(day, day)
