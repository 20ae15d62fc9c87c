"""
Messages, secure envelopes, the outbound queue and events: the gateway's durable state.

Every public method is C{async} and runs its SQL as one C{*_txn} function on
the database thread. Nothing here knows SMTP or HTTP.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from secmail.crypto import IntegrityError, MasterKey, Opener, UnknownKeyError
from secmail.masking import mask_sms_recipients
from secmail.store.database import Database, Txn


def new_id() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class Sealable(Protocol):
    message_id: str
    size: int

    @property
    def key_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes: ...
    @property
    def chunk_count(self) -> int: ...
    def sealed_chunks(self) -> Iterator[bytes]: ...
    def small_plaintext(self) -> bytes | None: ...


@dataclass(frozen=True)
class NewEnvelope:
    recipient: str
    original: str
    level: str
    phone: str | None
    token_hash: str
    id: str = field(default_factory=new_id)


@dataclass(frozen=True)
class NewDelivery:
    """One queue row to be: C{recipients} on one route, all in one domain."""

    kind: str
    sender: str
    recipients: tuple[str, ...]
    route: str
    domain: str
    notify: str
    about: str = ""  # the message whose audit trail this belongs to; "" for the one sent


@dataclass
class NewMessage:
    """A message to commit with its envelopes and queue rows."""

    content: Sealable
    kind: str
    sender: str
    envelopes: Sequence[NewEnvelope] = ()
    deliveries: Sequence[NewDelivery] = ()
    events: Sequence[tuple[str | None, str, str]] = ()  # (envelope id, kind, detail)


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


class MessageStore:
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

    # --- the queue ------------------------------------------------------------------

    async def claim_due(self, owner: str, now: int, lease: int, limit: int) -> list[QueueItem]:
        """Lease up to C{limit} due rows for C{owner}; other nodes skip them meanwhile."""

        def claim_txn(txn: Txn) -> list[QueueItem]:
            rows = claim_due_txn(
                txn, "queue", _QUEUE_COLUMNS, owner, now, lease, limit, "quarantined IS NULL"
            )
            return sorted((_queue_item(r) for r in rows), key=lambda i: (i.next_attempt, i.id))

        return await self.db.run(claim_txn)

    async def release_leases(self, owner: str) -> None:
        """After a restart, the queue rows C{owner} had leased are due again at once."""
        await self.db.run(lambda txn: release_leases_txn(txn, "queue", owner))

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

    async def queue_list(self) -> list[QueueItem]:
        return await self.db.run(
            lambda txn: [
                _queue_item(r)
                for r in txn.execute(
                    f"SELECT {_QUEUE_COLUMNS} FROM queue ORDER BY next_attempt, id"
                ).fetchall()
            ]
        )

    async def queue_retry(self, queue_id: int, now: int) -> QueueItem | None:
        """
        Make the row due now; a quarantined row goes back into the queue (an audit event).
        Returns the row as it was, or None when there is no such row.
        """

        def txn_(txn: Txn) -> QueueItem | None:
            row = txn.execute(
                f"SELECT {_QUEUE_COLUMNS} FROM queue WHERE id = ?", (queue_id,)
            ).fetchone()
            if row is None:
                return None
            item = _queue_item(row)
            txn.execute(
                "UPDATE queue SET next_attempt = ?, quarantined = NULL, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                (now, queue_id),
            )
            if item.quarantined is not None:
                detail = _detail(item, item.recipients, "released from quarantine by admin")
                add_event_txn(txn, item.about, None, "released", detail, now)
            return item

        return await self.db.run(txn_)

    async def queue_delete(self, queue_id: int, now: int) -> bool:
        def txn_(txn: Txn) -> bool:
            row = txn.execute(
                f"SELECT {_QUEUE_COLUMNS} FROM queue WHERE id = ?", (queue_id,)
            ).fetchone()
            if row is None:
                return False
            item = _queue_item(row)
            txn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))
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

    async def delete_old_events(self, cutoff: int) -> int:
        """Delete audit-trail events recorded before C{cutoff}."""

        def txn_(txn: Txn) -> int:
            txn.execute("DELETE FROM events WHERE at < ?", (cutoff,))
            return txn.rowcount

        return await self.db.run(txn_)

    async def has_event(self, message_id: str, kind: str) -> bool:
        """Whether message C{message_id} has an event of C{kind} (events outlive messages)."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT 1 FROM events WHERE message_id = ? AND kind = ? LIMIT 1", (message_id, kind)
            ).fetchone()
        )
        return row is not None

    async def count_messages(self) -> int:
        row = await self.db.run(lambda txn: txn.execute("SELECT COUNT(*) FROM messages").fetchone())
        return int(row[0])


def _detail(item: QueueItem, recipients: Sequence[str], text: str) -> str:
    if item.kind == "sms":  # an SMS by e-mail: the address is the phone number
        shown, text = mask_sms_recipients(recipients, text)
        recipients = shown
    return f"{item.kind} to {', '.join(recipients)} via {item.route}: {text}"[:2000]


#: Rows per multi-row INSERT (well under SQLite's 32766 parameters).
ROWS_PER_INSERT = 500


def insert_rows_txn(
    txn: Txn, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], returning: str = ""
) -> list[Any]:
    """
    Insert C{rows} with as few statements as possible: the database thread gives up the GIL
    at every statement, so one multi-row INSERT is much cheaper than one INSERT a row.
    """
    found: list[Any] = []
    marks = "(" + ", ".join("?" for _ in columns) + ")"
    for start in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[start : start + ROWS_PER_INSERT]
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join(marks for _ in part)
            + (f" RETURNING {returning}" if returning else "")
        )
        txn.execute(sql, [value for row in part for value in row])
        if returning:
            found += txn.fetchall()
    return found


def insert_messages_txn(txn: Txn, messages: Sequence[NewMessage], now: int) -> list[int]:
    """Store messages with their chunks, envelopes, events and queue rows; the queue row ids."""
    if not messages:
        return []
    insert_rows_txn(
        txn,
        "messages",
        ("id", "kind", "sender", "created", "size", "key_id", "wrapped_key", "chunk_count"),
        [
            (
                m.content.message_id,
                m.kind,
                m.sender,
                now,
                m.content.size,
                m.content.key_id,
                m.content.wrapped_key,
                m.content.chunk_count,
            )
            for m in messages
        ],
    )
    single_chunks = []
    for m in messages:
        if m.content.chunk_count == 1:
            [data] = list(m.content.sealed_chunks())
            single_chunks.append((m.content.message_id, 0, data))
        else:
            # Large messages one chunk at a time, so memory stays at one chunk.
            for seq, data in enumerate(m.content.sealed_chunks()):
                txn.execute(
                    "INSERT INTO message_chunks (message_id, seq, data) VALUES (?, ?, ?)",
                    (m.content.message_id, seq, data),
                )
    insert_rows_txn(txn, "message_chunks", ("message_id", "seq", "data"), single_chunks)
    envelopes = [
        (
            e.id,
            m.content.message_id,
            e.recipient,
            e.original,
            e.level,
            e.phone,
            e.token_hash,
            now,
            "notified",
        )
        for m in messages
        for e in m.envelopes
    ]
    if envelopes:
        insert_rows_txn(
            txn,
            "envelopes",
            (
                "id",
                "message_id",
                "recipient",
                "original",
                "level",
                "phone",
                "token_hash",
                "created",
                "state",
            ),
            envelopes,
        )
    events = [
        (m.content.message_id, envelope_id, now, kind, detail)
        for m in messages
        for envelope_id, kind, detail in m.events
    ]
    if events:
        insert_rows_txn(
            txn, "events", ("message_id", "envelope_id", "at", "kind", "detail"), events
        )
    deliveries = [
        (
            m.content.message_id,
            d.about or m.content.message_id,
            d.kind,
            d.sender,
            json.dumps(list(d.recipients)),
            d.route,
            d.domain,
            d.notify,
            now,
            now,
        )
        for m in messages
        for d in m.deliveries
    ]
    if not deliveries:
        return []
    rows = insert_rows_txn(
        txn,
        "queue",
        (
            "message_id",
            "about",
            "kind",
            "sender",
            "recipients",
            "route",
            "domain",
            "notify",
            "created",
            "next_attempt",
        ),
        deliveries,
        returning="id",
    )
    return sorted(int(row[0]) for row in rows)


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


def add_event_txn(
    txn: Txn, message_id: str, envelope_id: str | None, kind: str, detail: str, now: int
) -> None:
    txn.execute(
        "INSERT INTO events (message_id, envelope_id, at, kind, detail) VALUES (?, ?, ?, ?, ?)",
        (message_id, envelope_id, now, kind, detail),
    )


def drop_unused_message_txn(txn: Txn, message_id: str) -> None:
    """Delete a message nothing refers to any more (no queue row, no secure envelope)."""
    txn.execute(
        "DELETE FROM messages WHERE id = ? "
        "AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?) "
        "AND NOT EXISTS (SELECT 1 FROM envelopes WHERE message_id = ?)",
        (message_id, message_id, message_id),
    )


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
