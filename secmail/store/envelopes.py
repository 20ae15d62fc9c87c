# -*- test-case-name: tests.test_store -*-
"""
Secure envelopes (one per recipient of a letter) and every message's audit trail (events).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from secmail.store.database import Database, Txn
from secmail.store.rows import NewMessage, add_event_txn, hash_token, insert_messages_txn


@dataclass(frozen=True)
class Envelope:
    id: str
    message_id: str
    recipient: str
    original: str
    level: str
    phone: str | None
    state: str
    created: int
    sender: str
    #: When the letter was locked after too many wrong PINs (None: not locked).
    locked: int | None = None
    #: When the recipient said the letter's phone number is not theirs.
    wrong_number: int | None = None


class EnvelopeRows:
    """L{MessageStore}'s envelope and event methods (a mixin: it holds C{db})."""

    db: Database

    async def envelope_by_token(self, token: str) -> Envelope | None:
        token_hash = hash_token(token)
        return await self.db.run(lambda txn: envelope_by_hash_txn(txn, token_hash))

    async def envelope_by_id(self, envelope_id: str) -> Envelope | None:
        return await self.db.run(lambda txn: envelope_by_id_txn(txn, envelope_id))

    async def notification_returned(
        self, envelope: Envelope, bounce: NewMessage | None, detail: str, now: int
    ) -> None:
        """A recipient's notification bounced: mark the envelope, tell the sender."""

        def txn_(txn: Txn) -> None:
            txn.execute(
                "UPDATE envelopes SET state = 'notification returned' WHERE id = ?",
                (envelope.id,),
            )
            add_event_txn(
                txn, envelope.message_id, envelope.id, "notification returned", detail, now
            )
            if bounce is not None:
                insert_messages_txn(txn, [bounce], now)

        await self.db.run(txn_)

    async def add_event(
        self, message_id: str, envelope_id: str | None, kind: str, detail: str, now: int
    ) -> None:
        await self.db.run(
            lambda txn: add_event_txn(txn, message_id, envelope_id, kind, detail, now)
        )

    async def events(self, message_id: str) -> list[tuple[int, str, str | None, str]]:
        return await self.db.run(
            lambda txn: [
                (int(r[0]), r[1], r[2], r[3])
                for r in txn.execute(
                    "SELECT at, kind, envelope_id, detail FROM events "
                    "WHERE message_id = ? ORDER BY id",
                    (message_id,),
                ).fetchall()
            ]
        )

    async def delete_old_events(self, cutoff: int) -> int:
        """
        Delete messages' events and admins' audit rows recorded before C{cutoff}, the traces
        (sender and recipients) of messages received before it that are gone and have no event
        left, and the daily statistics of the days before its day; how many events and audit
        rows.
        """

        day = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%d")

        def txn_(txn: Txn) -> int:
            events = txn.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount
            gone = (
                "SELECT message_id FROM traces t WHERE received < ? "
                "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = t.message_id) "
                "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_id = t.message_id)"
            )
            txn.execute(f"DELETE FROM trace_recipients WHERE message_id IN ({gone})", (cutoff,))
            txn.execute(f"DELETE FROM traces WHERE message_id IN ({gone})", (cutoff,))
            txn.execute("DELETE FROM stats_daily WHERE day < ?", (day,))
            return events + txn.execute("DELETE FROM admin_audit WHERE at < ?", (cutoff,)).rowcount

        return await self.db.run(txn_)

    async def has_event(self, message_id: str, kind: str) -> bool:
        """Whether message C{message_id} has an event of C{kind} (events outlive messages)."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT 1 FROM events WHERE message_id = ? AND kind = ? LIMIT 1", (message_id, kind)
            ).fetchone()
        )
        return row is not None


_ENVELOPE_SELECT = (
    "SELECT e.id, e.message_id, e.recipient, e.original, e.level, e.phone, e.state, "
    "e.created, m.sender, e.locked, e.wrong_number "
    "FROM envelopes e JOIN messages m ON m.id = e.message_id "
)


def envelope_by_hash_txn(txn: Txn, token_hash: str) -> Envelope | None:
    return _envelope(
        txn.execute(_ENVELOPE_SELECT + "WHERE e.token_hash = ?", (token_hash,)).fetchone()
    )


def envelope_by_id_txn(txn: Txn, envelope_id: str) -> Envelope | None:
    return _envelope(txn.execute(_ENVELOPE_SELECT + "WHERE e.id = ?", (envelope_id,)).fetchone())


def _envelope(row: Sequence[Any] | None) -> Envelope | None:
    if row is None:
        return None
    return Envelope(
        id=row[0],
        message_id=row[1],
        recipient=row[2],
        original=row[3],
        level=row[4],
        phone=row[5],
        state=row[6],
        created=int(row[7]),
        sender=row[8],
        locked=None if row[9] is None else int(row[9]),
        wrong_number=None if row[10] is None else int(row[10]),
    )
