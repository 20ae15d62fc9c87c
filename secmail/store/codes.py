# -*- test-case-name: tests.test_portal_store,tests.test_compose,tests.test_sms_store -*-
"""
One-time codes, for the portal's e-mail codes, registered letters' SMS PINs and D-Compose's
address codes alike: make one (older ones stop working), check one (expiry, tries, a
constant-time compare under every key of the ring), count the wrong ones against their
holder and lock it.

A code is kept only as an HMAC under a key derived from the master key (a copy of the
database does not let anyone try all million codes offline), with that key's id, so that a
code outlives a rotation. The rules (lifetime, tries, locks, limits) are
L{secmail.limits}'; what a holder is (a letter, a mailbox) is a L{CodeHolder}.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

from secmail.crypto import DerivedKeys
from secmail.limits import CodeRules, CodeState, after_wrong, code_live
from secmail.store.database import Txn
from secmail.store.rows import NewMessage, insert_messages_txn

#: C{used}: 0 live, 1 used or given up, 2 replaced by a newer one (told apart from a wrong one).
USED = 1
SUPERSEDED = 2


class CodeHolder(Protocol):
    """Whom wrong codes count against, and what a lock locks: a letter, or a mailbox."""

    def failures_txn(self, txn: Txn, now: int) -> int | None:
        """
        Take the holder's row for this transaction (on PostgreSQL another node's check
        waits here, so no wrong code goes uncounted); its wrong codes so far, or None while
        it is locked.
        """

    def count_failure_txn(self, txn: Txn, failures: int, now: int) -> None:
        """Store the holder's count of wrong codes."""

    def lock_txn(self, txn: Txn, failures: int, now: int) -> None:
        """Lock the holder: store the count and the time, and give up its codes."""

    def event_txn(self, txn: Txn, kind: str, detail: str, now: int) -> None:
        """An event on the holder's audit trail."""

    def wrong_detail(self, tries: int, failures: int) -> str:
        """The audit detail of a wrong code: this code's tries, the holder's wrong ones."""

    def lock_detail(self, failures: int) -> str:
        """The audit detail of the lock."""


class HolderRow:
    """
    A holder kept as one row of C{table} (C{key_column} = C{key}) with its count of wrong
    codes (C{failures_column}) and the time it was locked (C{locked}).
    """

    table = ""
    key_column = ""
    failures_column = ""
    key = ""

    def count_failure_txn(self, txn: Txn, failures: int, now: int) -> None:
        txn.execute(
            f"UPDATE {self.table} SET {self.failures_column} = ? WHERE {self.key_column} = ?",
            (failures, self.key),
        )

    def lock_row_txn(self, txn: Txn, failures: int, now: int) -> None:
        txn.execute(
            f"UPDATE {self.table} SET {self.failures_column} = ?, locked = ? "
            f"WHERE {self.key_column} = ?",
            (failures, now, self.key),
        )


def new_code() -> str:
    """Six random digits."""
    return f"{secrets.randbelow(10**6):06d}"


def matches_any(stored: str, candidates: Sequence[str]) -> bool:
    """Whether C{stored} is one of the candidates; every one compared, in constant time."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(stored, candidate)
    return found


class OneTimeCodes:
    """
    The codes of one kind in one table (C{<owner>, code_hash, key_id, created, expires,
    tries, used}), for one owner column (an envelope id, an address).

    @param context: put before the owner in what is HMACed, so that the codes of two kinds
        never match each other.
    @param name: how the audit trail names the code ("code", "PIN").
    @param superseded: keep codes a newer one replaced apart (C{used} = 2) and answer
        SUPERSEDED, not WRONG, when one of them is typed while it would still have been good.
    """

    def __init__(
        self,
        table: str,
        owner: str,
        keys: DerivedKeys,
        rules: CodeRules,
        *,
        context: str = "",
        name: str = "code",
        superseded: bool = False,
    ) -> None:
        self.table = table
        self.owner = owner
        self.keys = keys
        self.rules = rules
        self.context = context
        self.name = name
        self.superseded = superseded

    def _hmac(self, key: bytes, owner: str, code: str) -> str:
        return hmac.new(key, f"{self.context}{owner}:{code}".encode(), "sha256").hexdigest()

    def candidates(self, owner: str, code: str) -> list[str]:
        """The code's HMAC under every key of the ring: a code outlives a rotation."""
        return [self._hmac(key, owner, code.strip()) for _, key in self.keys.all()]

    def sent_txn(
        self, txn: Txn, now: int, windows: Sequence[int], column: str = "", value: Any = None
    ) -> tuple[list[int], int | None]:
        """
        How many codes went out within each of C{windows} (seconds before C{now}), and the
        newest one's time: all codes, or those whose C{column} is C{value}.
        """
        where = f"AND {column} = ? " if column else ""
        counts = ", ".join("SUM(CASE WHEN created > ? THEN 1 ELSE 0 END)" for _ in windows)
        row = txn.execute(
            f"SELECT {counts}, MAX(created) FROM {self.table} WHERE created > ? {where}",
            (
                *(now - seconds for seconds in windows),
                now - max(windows),
                *((value,) if column else ()),
            ),
        ).fetchone()
        newest = row[len(windows)]
        return [int(n or 0) for n in row[: len(windows)]], None if newest is None else int(newest)

    def make_txn(self, txn: Txn, owner: str, code: str, now: int, **columns: Any) -> None:
        """Store a new code for C{owner}: the older ones stop working."""
        if self.superseded:
            txn.execute(
                f"UPDATE {self.table} SET used = {SUPERSEDED} WHERE {self.owner} = ? AND used = 0",
                (owner,),
            )
        else:
            txn.execute(f"UPDATE {self.table} SET used = {USED} WHERE {self.owner} = ?", (owner,))
        key_id, key = self.keys.current()
        names = (self.owner, *columns, "code_hash", "key_id", "created", "expires")
        txn.execute(
            f"INSERT INTO {self.table} ({', '.join(names)}) VALUES "
            f"({', '.join('?' for _ in names)})",
            (
                owner,
                *columns.values(),
                self._hmac(key, owner, code),
                key_id,
                now,
                now + self.rules.lifetime,
            ),
        )

    def check_txn(
        self,
        txn: Txn,
        holder: CodeHolder,
        owner: str,
        candidates: Sequence[str],
        now: int,
        lock_notice: NewMessage | None,
    ) -> str:
        """
        Try a code (its L{candidates}): a L{CodeState}. OK once; a wrong one counts against
        the code (tries) and its holder (lock_after), and the one that locks the holder
        stores C{lock_notice} (the mail telling whom it concerns) in the same transaction.
        """
        failures = holder.failures_txn(txn, now)
        if failures is None:
            return CodeState.LOCKED
        row = txn.execute(
            f"SELECT code_hash, expires, tries FROM {self.table} "
            f"WHERE {self.owner} = ? AND used = 0 ORDER BY created DESC LIMIT 1",
            (owner,),
        ).fetchone()
        if row is None or not code_live(self.rules, int(row[1]), int(row[2]), now):
            holder.event_txn(txn, f"{self.name} refused", f"no valid {self.name}", now)
            return CodeState.EXPIRED
        if matches_any(row[0], candidates):
            txn.execute(f"UPDATE {self.table} SET used = {USED} WHERE {self.owner} = ?", (owner,))
            holder.event_txn(txn, f"{self.name} accepted", "", now)
            return CodeState.OK
        if self.superseded and self._superseded_txn(txn, owner, candidates, now):
            # Typed from a message that arrived after a newer code was ordered: not a guess.
            holder.event_txn(txn, f"{self.name} refused", f"an older {self.name}", now)
            return CodeState.SUPERSEDED
        tries, failures = int(row[2]) + 1, failures + 1
        txn.execute(
            f"UPDATE {self.table} SET tries = tries + 1 WHERE {self.owner} = ? AND used = 0 "
            "AND code_hash = ?",
            (owner, row[0]),
        )
        holder.event_txn(txn, f"{self.name} wrong", holder.wrong_detail(tries, failures), now)
        state = after_wrong(self.rules, tries, failures)
        if state != CodeState.LOCKED_NOW:
            holder.count_failure_txn(txn, failures, now)
            return state
        holder.lock_txn(txn, failures, now)
        holder.event_txn(txn, "locked", holder.lock_detail(failures), now)
        if lock_notice is not None:
            insert_messages_txn(txn, [lock_notice], now)
        return state

    def _superseded_txn(self, txn: Txn, owner: str, candidates: Sequence[str], now: int) -> bool:
        marks = ", ".join("?" for _ in candidates)
        row = txn.execute(
            f"SELECT 1 FROM {self.table} WHERE {self.owner} = ? AND used = {SUPERSEDED} "
            f"AND code_hash IN ({marks}) AND expires >= ?",
            (owner, *candidates, now),
        ).fetchone()
        return row is not None
