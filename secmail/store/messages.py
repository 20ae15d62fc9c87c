# -*- test-case-name: tests.test_store -*-
"""
Messages and their sealed chunks: the gateway's durable state, one class for its callers.

Every public method is C{async} and runs its SQL as one C{*_txn} function on
the database thread. Nothing here knows SMTP or HTTP. L{MessageStore} gathers the
queue's methods (L{secmail.store.queue_rows}) and the envelopes' and events'
(L{secmail.store.envelopes}); the rows a commit writes are in L{secmail.store.rows}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from secmail.crypto import IntegrityError, MasterKey, Opener, UnknownKeyError
from secmail.store.database import Database, Txn
from secmail.store.envelopes import (
    Envelope,
    EnvelopeRows,
    envelope_by_hash_txn,
    envelope_by_id_txn,
)
from secmail.store.queue_rows import (
    QueueItem,
    QueueRows,
    RecentMessages,
    claim_due_txn,
    release_leases_txn,
)
from secmail.store.rows import (
    ROWS_PER_INSERT,
    NewDelivery,
    NewEnvelope,
    NewMessage,
    Sealable,
    add_event_txn,
    drop_unused_message_txn,
    hash_token,
    insert_messages_txn,
    insert_rows_txn,
    new_id,
)

# Where callers have always found them.
__all__ = [
    "ROWS_PER_INSERT",
    "Envelope",
    "MessageStore",
    "NewDelivery",
    "NewEnvelope",
    "NewMessage",
    "QueueItem",
    "RecentMessages",
    "Sealable",
    "add_event_txn",
    "claim_due_txn",
    "drop_unused_message_txn",
    "envelope_by_hash_txn",
    "envelope_by_id_txn",
    "hash_token",
    "insert_messages_txn",
    "insert_rows_txn",
    "new_id",
    "release_leases_txn",
]


class MessageStore(QueueRows, EnvelopeRows):
    def __init__(self, db: Database, master: MasterKey) -> None:
        self.db = db
        self.master = master
        self.recent = RecentMessages()

    # --- intake ---------------------------------------------------------------------

    async def commit(self, messages: Sequence[NewMessage], now: int) -> list[int]:
        """Store messages, envelopes, queue rows and events in one transaction."""
        queue_ids = await self.db.run(lambda txn: self._commit_txn(txn, messages, now))
        for message in messages:
            if message.deliveries:
                plaintext = message.content.small_plaintext()
                if plaintext is not None:
                    self.recent.put(message.content.message_id, plaintext)
        return queue_ids

    def _commit_txn(self, txn: Txn, messages: Sequence[NewMessage], now: int) -> list[int]:
        return insert_messages_txn(txn, messages, now)

    # --- reading --------------------------------------------------------------------

    async def read(self, message_id: str) -> AsyncIterator[bytes]:
        """The plaintext of a message, chunk by chunk (decrypted on the database thread)."""
        recent = self.recent.get(message_id)
        if recent is not None:
            yield recent
            return
        first = await self.db.run(lambda txn: self._first_chunk_txn(txn, message_id))
        if first is None:
            raise LookupError(f"message {message_id} is not in the store")
        count, opener, data = first
        yield data
        for seq in range(1, count):
            final = seq == count - 1
            yield await self.db.run(self._chunk_reader(opener, message_id, seq, final))

    async def read_all(self, message_id: str, limit: int | None = None) -> bytes:
        parts = []
        size = 0
        async for chunk in self.read(message_id):
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                break
        return b"".join(parts)

    def _first_chunk_txn(self, txn: Txn, message_id: str) -> tuple[int, Opener, bytes] | None:
        row = txn.execute(
            "SELECT wrapped_key, chunk_count, key_id FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return None
        key_id = str(row[2])
        if self.master.get(key_id) is None:
            # Sealed by a node that rotated first: its ring file may be here already.
            self.master.reload()
        opener = Opener(self.master, message_id, bytes(row[0]), key_id)
        count = int(row[1])
        return count, opener, self._chunk_txn(txn, opener, message_id, 0, count == 1)

    def _chunk_reader(
        self, opener: Opener, message_id: str, seq: int, final: bool
    ) -> Callable[[Txn], bytes]:
        return lambda txn: self._chunk_txn(txn, opener, message_id, seq, final)

    def _chunk_txn(self, txn: Txn, opener: Opener, message_id: str, seq: int, final: bool) -> bytes:
        row = txn.execute(
            "SELECT data FROM message_chunks WHERE message_id = ? AND seq = ?", (message_id, seq)
        ).fetchone()
        if row is None:
            raise LookupError(f"message {message_id}: chunk {seq} is missing")
        return opener.open(seq, bytes(row[0]), final)

    async def unreadable(self, message_id: str) -> str | None:
        """
        Why a message cannot be read (every chunk opened), or None when it can.

        The queue asks before a session, so that a damaged message is set aside on its own
        instead of failing in the middle of DATA, which would end the session for the others.
        A message still held in L{RecentMessages} is readable: that is what is sent. A
        one-chunk message just opened is kept there, so the send does not open it again.
        """
        if self.recent.get(message_id) is not None:
            return None
        problem, plaintext = await self.db.run(lambda txn: self._unreadable_txn(txn, message_id))
        if plaintext is not None:
            self.recent.put(message_id, plaintext)
        return problem

    def _unreadable_txn(self, txn: Txn, message_id: str) -> tuple[str | None, bytes | None]:
        # The problem is returned, not raised: a failing piece would make the database run
        # its whole batch again, piece by piece.
        try:
            first = self._first_chunk_txn(txn, message_id)
            if first is None:
                return f"message {message_id} is not in the store", None
            count, opener, data = first
            for seq in range(1, count):
                self._chunk_txn(txn, opener, message_id, seq, seq == count - 1)
        except (IntegrityError, UnknownKeyError, LookupError) as e:
            # UnknownKeyError: sealed under a key this node's ring lacks (another node's).
            return str(e), None
        return None, data if count == 1 else None

    # --- retention ------------------------------------------------------------------

    async def delete_expired(self, cutoff: int, now: int) -> int:
        """Delete secure messages created before C{cutoff} that have nothing left to send."""

        def txn_(txn: Txn) -> int:
            rows = txn.execute(
                "SELECT id FROM messages m WHERE kind = 'mail' AND created < ? "
                "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.message_id = m.id)",
                (cutoff,),
            ).fetchall()
            for (message_id,) in rows:
                txn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                add_event_txn(txn, message_id, None, "expired", "retention period ended", now)
            return len(rows)

        return await self.db.run(txn_)

    async def count_messages(self) -> int:
        row = await self.db.run(lambda txn: txn.execute("SELECT COUNT(*) FROM messages").fetchone())
        return int(row[0])
