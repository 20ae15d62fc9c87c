# -*- test-case-name: tests.test_audit -*-
"""
The admins' audit trail: who did what, when and from which address. A change and its audit
row are written in one transaction (L{audit_txn} inside the change's own function), so there
is never a change without its row, nor a row for a change that did not happen. Rows older
than C{[secure] audit_days} go with the messages' events (L{EnvelopeRows.delete_old_events}).
"""

from __future__ import annotations

from dataclasses import dataclass

from secmail.store.database import Database, Txn


@dataclass(frozen=True)
class AuditRow:
    at: int
    admin: str
    #: The client's IP address, or C{"local"} for a C{secmail} command.
    address: str
    action: str
    #: The setting a change is about (C{section.key}), and its values (secrets masked).
    setting: str | None = None
    before: str | None = None
    after: str | None = None


def audit_txn(txn: Txn, row: AuditRow) -> None:
    txn.execute(
        "INSERT INTO admin_audit (at, admin, address, action, setting, before, after) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row.at, row.admin, row.address, row.action, row.setting, row.before, row.after),
    )


class AuditTrail:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, row: AuditRow) -> None:
        await self.db.run(lambda txn: audit_txn(txn, row))

    async def since(self, at: int, limit: int = 1000) -> list[AuditRow]:
        """The rows from C{at} (unix seconds) on, oldest first, at most C{limit}."""

        def txn_(txn: Txn) -> list[AuditRow]:
            rows = txn.execute(
                "SELECT at, admin, address, action, setting, before, after FROM admin_audit "
                "WHERE at >= ? ORDER BY at, id LIMIT ?",
                (at, limit),
            ).fetchall()
            return [AuditRow(int(r[0]), *r[1:]) for r in rows]

        return await self.db.run(txn_)

    async def newest(self, at: int, limit: int = 1000) -> list[AuditRow]:
        """The newest C{limit} rows from C{at} on, newest first (the console's page)."""

        def txn_(txn: Txn) -> list[AuditRow]:
            rows = txn.execute(
                "SELECT at, admin, address, action, setting, before, after FROM admin_audit "
                "WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?",
                (at, limit),
            ).fetchall()
            return [AuditRow(int(r[0]), *r[1:]) for r in rows]

        return await self.db.run(txn_)
