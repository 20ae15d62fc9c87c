# -*- test-case-name: tests.test_monitoring -*-
"""The nodes running on this database: each one's last write probe (GET /readyz)."""

from __future__ import annotations

from secmail.store.database import Database, Txn


async def write_probe(db: Database, node: str, version: str, now: int) -> None:
    """Write this node's row and commit: proof that the database takes writes now."""

    def txn_(txn: Txn) -> None:
        txn.execute(
            "INSERT INTO nodes (name, seen, version) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seen = excluded.seen, version = excluded.version",
            (node, now, version),
        )

    await db.run(txn_)
