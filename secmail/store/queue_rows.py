# -*- test-case-name: tests.test_store,tests.test_queue -*-
"""
The outbound queue's rows: leased by one node at a time, deferred, bounced, quarantined,
released; and the plaintext of small messages just committed, kept for the queue.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from secmail.masking import mask_sms_recipients
from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.rows import (
    NewMessage,
    add_event_txn,
    drop_unused_message_txn,
    insert_messages_txn,
)


@dataclass(frozen=True)
class QueueItem:
    id: int
    message_id: str
    about: str
    kind: str
    sender: str
    recipients: tuple[str, ...]
    route: str
    domain: str
    notify: str
    created: int
    next_attempt: int
    attempts: int
    last_error: str
    #: When the row was quarantined: its message could not be read (None: in the queue).
    quarantined: int | None = None

    @property
    def state(self) -> str:
        """What C{secmail queue list} shows: quarantined, deferred (tried before) or queued."""
        if self.quarantined is not None:
            return "quarantined"
        return "deferred" if self.attempts else "queued"


@dataclass(frozen=True)
class QueueFigures:
    """The queue at a glance, for metrics and health reports."""

    waiting: int
    leased: int
    quarantined: int
    #: When the oldest row that is not quarantined was made (None: there is none).
    oldest_created: int | None


_QUEUE_COLUMNS = (
    "id, message_id, about, kind, sender, recipients, route, domain, notify, created, "
    "next_attempt, attempts, last_error, quarantined"
)


def _queue_item(row: Sequence[Any]) -> QueueItem:
    return QueueItem(
        id=int(row[0]),
        message_id=row[1],
        about=row[2],
        kind=row[3],
        sender=row[4],
        recipients=tuple(json.loads(row[5])),
        route=row[6],
        domain=row[7],
        notify=row[8],
        created=int(row[9]),
        next_attempt=int(row[10]),
        attempts=int(row[11]),
        last_error=row[12],
        quarantined=None if row[13] is None else int(row[13]),
    )


def _queue_row_txn(txn: Txn, queue_id: int) -> QueueItem | None:
    row = txn.execute(f"SELECT {_QUEUE_COLUMNS} FROM queue WHERE id = ?", (queue_id,)).fetchone()
    return None if row is None else _queue_item(row)


class RecentMessages:
    """
    The plaintext of small messages just committed, kept in memory for the queue.

    A notification or a small relayed message is usually sent right after it is
    stored; reading it back from the database would cost a round trip and a
    decryption. Bounded in bytes; never written anywhere.
    """

    def __init__(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def put(self, message_id: str, content: bytes) -> None:
        if len(content) > self.max_bytes // 16:
            return
        self.drop(message_id)
        self._items[message_id] = content
        self._bytes += len(content)
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)

    def get(self, message_id: str) -> bytes | None:
        return self._items.get(message_id)

    def drop(self, message_id: str) -> None:
        old = self._items.pop(message_id, None)
        if old is not None:
            self._bytes -= len(old)


class QueueRows:
    """L{MessageStore}'s queue methods (a mixin: it holds C{db} and C{recent})."""

    db: Database
    recent: RecentMessages

    async def claim_due(self, owner: str, now: int, lease: int, limit: int) -> list[QueueItem]:
        """Lease up to C{limit} due rows for C{owner}; other nodes skip them meanwhile."""

        def claim_txn(txn: Txn) -> list[QueueItem]:
            rows = claim_due_txn(
                txn, "queue", _QUEUE_COLUMNS, owner, now, lease, limit, "quarantined IS NULL"
            )
            return sorted((_queue_item(r) for r in rows), key=lambda i: (i.next_attempt, i.id))

        return await self.db.run(claim_txn)

    async def delivered(
        self, item: QueueItem, recipients: Sequence[str], detail: str, now: int
    ) -> None:
        """The peer said 250 to the final dot: remove the row (and the message if unused)."""

        def txn_(txn: Txn) -> None:
            txn.execute("DELETE FROM queue WHERE id = ?", (item.id,))
            add_event_txn(
                txn, item.about, None, "delivered", _detail(item, recipients, detail), now
            )
            drop_unused_message_txn(txn, item.message_id)

        await self.db.run(txn_)
        self.recent.drop(item.message_id)

    async def defer(
        self, item: QueueItem, recipients: Sequence[str], next_attempt: int, error: str, now: int
    ) -> None:
        """Try C{recipients} again at C{next_attempt}; the others are done with."""

        def txn_(txn: Txn) -> None:
            txn.execute(
                "UPDATE queue SET recipients = ?, next_attempt = ?, attempts = attempts + 1, "
                "last_error = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (json.dumps(list(recipients)), next_attempt, error[:1000], item.id),
            )
            add_event_txn(txn, item.about, None, "deferred", _detail(item, recipients, error), now)

        await self.db.run(txn_)

    async def fail(
        self,
        item: QueueItem,
        recipients: Sequence[str],
        error: str,
        bounce: NewMessage | None,
        now: int,
        remaining: Sequence[str] = (),
    ) -> None:
        """C{recipients} failed for good: store the bounce; keep the row only for C{remaining}."""

        def txn_(txn: Txn) -> None:
            if bounce is not None:
                insert_messages_txn(txn, [bounce], now)
            if remaining:
                txn.execute(
                    "UPDATE queue SET recipients = ? WHERE id = ?",
                    (json.dumps(list(remaining)), item.id),
                )
            else:
                txn.execute("DELETE FROM queue WHERE id = ?", (item.id,))
            add_event_txn(txn, item.about, None, "bounced", _detail(item, recipients, error), now)
            if not remaining:
                drop_unused_message_txn(txn, item.message_id)

        await self.db.run(txn_)
        if not remaining:
            self.recent.drop(item.message_id)

    async def quarantine(
        self,
        item: QueueItem,
        recipients: Sequence[str],
        reason: str,
        bounce: NewMessage | None,
        now: int,
    ) -> None:
        """
        Set the row aside, for C{recipients} (those not done with), with C{reason}: kept, but
        never claimed again until an admin retries it (L{queue_retry}); store the C{bounce}.
        """

        def txn_(txn: Txn) -> None:
            txn.execute(
                "UPDATE queue SET quarantined = ?, recipients = ?, last_error = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (now, json.dumps(list(recipients)), reason[:1000], item.id),
            )
            if bounce is not None:
                insert_messages_txn(txn, [bounce], now)
            add_event_txn(
                txn, item.about, None, "quarantined", _detail(item, recipients, reason), now
            )

        await self.db.run(txn_)
        self.recent.drop(item.message_id)

    async def count_quarantined(self) -> int:
        """How many queue rows are quarantined now (for C{queue list} and metrics)."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT COUNT(*) FROM queue WHERE quarantined IS NOT NULL"
            ).fetchone()
        )
        return int(row[0])

    async def queue_figures(self, now: int) -> QueueFigures:
        """Rows by state and the oldest row's age, in one query (no row is read)."""

        def txn_(txn: Txn) -> QueueFigures:
            row = txn.execute(
                "SELECT COUNT(*), "
                "SUM(CASE WHEN quarantined IS NOT NULL THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN quarantined IS NULL AND lease_until > ? THEN 1 ELSE 0 END), "
                "MIN(CASE WHEN quarantined IS NULL THEN created END) FROM queue",
                (now,),
            ).fetchone()
            total, quarantined, leased = (int(v or 0) for v in row[:3])
            return QueueFigures(
                waiting=total - quarantined - leased,
                leased=leased,
                quarantined=quarantined,
                oldest_created=None if row[3] is None else int(row[3]),
            )

        return await self.db.run(txn_)

    async def queue_list(self) -> list[QueueItem]:
        return await self.db.run(
            lambda txn: [
                _queue_item(r)
                for r in txn.execute(
                    f"SELECT {_QUEUE_COLUMNS} FROM queue ORDER BY next_attempt, id"
                ).fetchall()
            ]
        )

    async def queue_row(self, queue_id: int) -> tuple[QueueItem, str | None, int | None] | None:
        """One row, with who holds its lease and until when (C{secmail queue show})."""

        def txn_(txn: Txn) -> tuple[QueueItem, str | None, int | None] | None:
            row = txn.execute(
                f"SELECT {_QUEUE_COLUMNS}, lease_owner, lease_until FROM queue WHERE id = ?",
                (queue_id,),
            ).fetchone()
            if row is None:
                return None
            until = row[-1]
            return _queue_item(row[:-2]), row[-2], None if until is None else int(until)

        return await self.db.run(txn_)

    async def queue_retry(
        self, queue_id: int, now: int, audit: AuditRow | None = None
    ) -> QueueItem | None:
        """
        Make the row due now; a quarantined row goes back into the queue (an audit event).
        Returns the row as it was, or None when there is no such row. With C{audit}, that
        admin's audit row (action C{queue row retried}) is written in the same transaction.
        """

        def txn_(txn: Txn) -> QueueItem | None:
            item = _queue_row_txn(txn, queue_id)
            if item is None:
                return None
            txn.execute(
                "UPDATE queue SET next_attempt = ?, quarantined = NULL, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                (now, queue_id),
            )
            if item.quarantined is not None:
                detail = _detail(item, item.recipients, "released from quarantine by admin")
                add_event_txn(txn, item.about, None, "released", detail, now)
            if audit is not None:
                audit_txn(txn, replace(audit, action="queue row retried", after=describe(item)))
            return item

        return await self.db.run(txn_)

    async def queue_delete(self, queue_id: int, now: int, audit: AuditRow | None = None) -> bool:
        """Drop the row without a bounce; with C{audit}, its audit row in the same transaction."""

        def txn_(txn: Txn) -> bool:
            item = _queue_row_txn(txn, queue_id)
            if item is None:
                return False
            txn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))
            if audit is not None:
                audit_txn(txn, replace(audit, action="queue row deleted", before=describe(item)))
            add_event_txn(
                txn,
                item.about,
                None,
                "deleted",
                _detail(item, item.recipients, "by admin"),
                now,
            )
            drop_unused_message_txn(txn, item.message_id)
            self.recent.drop(item.message_id)
            return True

        return await self.db.run(txn_)

    async def release_queue_leases(self, node_id: str) -> None:
        """After a restart, the rows this node had leased are due again at once."""
        await self.db.run(lambda txn: release_leases_txn(txn, "queue", node_id))


def describe(item: QueueItem) -> str:
    """A queue row in an audit row: its id, kind, recipients (an SMS's number masked), route."""
    recipients = list(item.recipients)
    if item.kind == "sms":
        recipients = mask_sms_recipients(recipients)[0]
    return f"queue row {item.id}: {item.kind} to {', '.join(recipients)} via {item.route}"[:1000]


def _detail(item: QueueItem, recipients: Sequence[str], text: str) -> str:
    if item.kind == "sms":  # an SMS by e-mail: the address is the phone number
        shown, text = mask_sms_recipients(recipients, text)
        recipients = shown
    return f"{item.kind} to {', '.join(recipients)} via {item.route}: {text}"[:2000]


def claim_due_txn(
    txn: Txn,
    table: str,
    columns: str,
    owner: str,
    now: int,
    lease: int,
    limit: int,
    condition: str = "",
) -> list[Any]:
    """
    Lease up to C{limit} due rows of C{table} (the queue or the SMS outbox) to C{owner}
    until C{now + lease}; other nodes skip them meanwhile. Returns their C{columns}.
    C{condition}, a fixed SQL condition (no parameters), leaves out rows that are set aside.
    """
    also = f"AND {condition} " if condition else ""
    return txn.execute(
        f"UPDATE {table} SET lease_owner = ?, lease_until = ? WHERE id IN ("
        f"SELECT id FROM {table} WHERE next_attempt <= ? "
        f"AND (lease_until IS NULL OR lease_until < ?) {also}"
        "ORDER BY next_attempt, id LIMIT ?" + txn.skip_locked + ") "
        f"RETURNING {columns}",
        (owner, now + lease, now, now, limit),
    ).fetchall()


def release_leases_txn(txn: Txn, table: str, owner: str) -> None:
    """After a restart, the rows of C{table} this node had leased are due again at once."""
    txn.execute(
        f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
        (owner,),
    )
