# -*- test-case-name: tests.test_settings -*-
"""
The cluster settings' rows (schema 13): one TOML value a key, and the version counter that
every change raises in the same transaction, so that a running node polls one cheap row.
What the values mean, and which keys may be stored, is L{secmail.config.cluster}'s.
"""

from __future__ import annotations

from collections.abc import Mapping

from secmail.store.database import Txn
from secmail.store.engines import Engine


def version_txn(txn: Txn) -> int:
    row = txn.execute("SELECT version FROM settings_version WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


def stored_txn(txn: Txn) -> dict[str, str]:
    """Every stored key and its value as TOML text."""
    return dict(txn.execute("SELECT key, value FROM settings ORDER BY key").fetchall())


def lock_txn(txn: Txn) -> None:
    """
    Take the settings' write lock (the version row) before reading them for a change: two
    changes at once (two nodes, the console and a command) then run one after the other, each
    checked against what the other stored (PostgreSQL reads committed data per statement;
    SQLite's BEGIN IMMEDIATE already serialises writers).
    """
    txn.execute("UPDATE settings_version SET version = version WHERE id = 1")


def write_txn(txn: Txn, changes: Mapping[str, str | None], admin: str, now: int) -> int:
    """
    Store C{changes} (a key's TOML text, or None to remove the key) and raise the version
    counter; returns the new version. Call it inside the change's own transaction.
    """
    for key, value in changes.items():
        txn.execute("DELETE FROM settings WHERE key = ?", (key,))
        if value is not None:
            txn.execute(
                "INSERT INTO settings (key, value, changed_at, changed_by) VALUES (?, ?, ?, ?)",
                (key, value, now, admin),
            )
    txn.execute("UPDATE settings_version SET version = version + 1 WHERE id = 1")
    return version_txn(txn)


def stored_blocking(engine: Engine) -> tuple[int, dict[str, str]]:
    """The version and the stored values, read before the reactor runs (at start-up)."""
    conn = engine.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(engine.begin)
        txn = Txn(engine, cursor)
        result = version_txn(txn), stored_txn(txn)
        cursor.execute("COMMIT")
    finally:
        conn.close()
    return result
