# -*- test-case-name: tests.test_portal_store,tests.test_compose -*-
"""
Sessions in the database, for the portal and D-Compose alike: create, touch (30 minutes
idle, 12 hours in all: L{secmail.limits.session_alive}), rotate, end, delete the stale.

They live in the database so that they survive restarts and work on every node of a
cluster. Only the SHA-256 of the cookie (L{hash_token}) is stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from secmail.limits import SESSION_IDLE, SESSION_MAX, session_alive
from secmail.store.database import Txn
from secmail.store.rows import hash_token

#: What a live session is shown as (L{SessionTable}'s C{build}).
S = TypeVar("S")


def new_session() -> tuple[str, str]:
    """A fresh cookie value and CSRF token (made before a transaction, which may run twice)."""
    return secrets.token_urlsafe(32), secrets.token_urlsafe(24)


class SessionTable(Generic[S]):
    """
    One table of sessions (C{id_hash, <subject columns>, created, last_seen, csrf}).

    @param subject: the columns that say whose session it is (stored at creation).
    @param build: makes a live session of the C{read} values, C{csrf=} and C{created=}.
    @param idle: seconds a session lives after its last request; C{lifetime}: after it began.
    @param read: what L{touch_txn} reads of it (columns of C{s}, the session row, or of a
        table C{join} brings in); the subject columns by default.
    """

    def __init__(
        self,
        table: str,
        subject: Sequence[str],
        build: Callable[..., S],
        read: str = "",
        join: str = "",
        idle: int = SESSION_IDLE,
        lifetime: int = SESSION_MAX,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.table = table
        self.subject = tuple(subject)
        self.build = build
        self.read = read or ", ".join(f"s.{c}" for c in self.subject)
        self.join = join

    def create_txn(
        self,
        txn: Txn,
        session_id: str,
        csrf: str,
        subject: Sequence[Any],
        now: int,
        replaces: str | None = None,
    ) -> tuple[Any, ...] | None:
        """
        Store a new session; with C{replaces}, end that one in the same transaction (a new
        session id at every sign-in). Returns the replaced session's subject, if it existed.
        """
        replaced = None if replaces is None else self.end_txn(txn, replaces)
        columns = ("id_hash", *self.subject, "created", "last_seen", "csrf")
        txn.execute(
            f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES "
            f"({', '.join('?' for _ in columns)})",
            (hash_token(session_id), *subject, now, now, csrf),
        )
        return replaced

    def touch_txn(self, txn: Txn, session_id: str, now: int) -> S | None:
        """The live session for a cookie, its last request now; None when unknown or over."""
        id_hash = hash_token(session_id)
        row = txn.execute(
            f"SELECT {self.read}, s.csrf, s.created, s.last_seen FROM {self.table} s "
            f"{self.join} WHERE s.id_hash = ?",
            (id_hash,),
        ).fetchone()
        if row is None:
            return None
        csrf, created, last_seen = row[-3], int(row[-2]), int(row[-1])
        if not session_alive(created, last_seen, now, self.idle, self.lifetime):
            txn.execute(f"DELETE FROM {self.table} WHERE id_hash = ?", (id_hash,))
            return None
        txn.execute(f"UPDATE {self.table} SET last_seen = ? WHERE id_hash = ?", (now, id_hash))
        return self.build(*row[:-3], csrf=csrf, created=created)

    def end_txn(self, txn: Txn, session_id: str) -> tuple[Any, ...] | None:
        """End a session; its subject columns, or None when there was no such session."""
        row = txn.execute(
            f"DELETE FROM {self.table} WHERE id_hash = ? RETURNING {', '.join(self.subject)}",
            (hash_token(session_id),),
        ).fetchone()
        return None if row is None else tuple(row)

    def end_all_txn(self, txn: Txn, column: str, value: Any) -> None:
        """End every session whose C{column} (a subject column) is C{value}."""
        txn.execute(f"DELETE FROM {self.table} WHERE {column} = ?", (value,))

    def delete_stale_txn(self, txn: Txn, now: int) -> int:
        """Remove sessions past their idle or absolute limit; how many went."""
        txn.execute(
            f"DELETE FROM {self.table} WHERE last_seen < ? OR created < ?",
            (now - self.idle, now - self.lifetime),
        )
        return txn.rowcount
