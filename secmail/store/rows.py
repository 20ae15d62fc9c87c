# -*- test-case-name: tests.test_store -*-
"""
The rows a commit writes: messages with their sealed chunks, secure envelopes, events and
queue rows, in as few statements as possible; and the one hash of a secret kept in the
database (link tokens, session cookies, browser cookies).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from secmail.store.database import Txn


def new_id() -> str:
    return secrets.token_hex(16)


SHORT_ID_LENGTH = 10


def short_id(message_id: str) -> str:
    """
    The first ten hex digits of a message id: what every log line about the message shows,
    like Postfix's queue id, and what C{secmail messages show} takes. Unique in practice
    (40 bits); the commands say so when a short id names more than one message.
    """
    return message_id[:SHORT_ID_LENGTH]


def hash_token(token: str) -> str:
    """
    The SHA-256 of a 256-bit random secret (a link token, a session or browser cookie): what
    the database keeps instead of the secret. No key: the secret itself is unguessable.
    """
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
    insert_traces_txn(txn, messages, now)
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


#: The kinds of message a trace finds: mail handed to the gateway, and what outsiders write
#: in the portal. What the gateway writes about them (notifications, codes, bounces) shows
#: in their events instead.
TRACED_KINDS = ("mail", "compose")


def insert_traces_txn(txn: Txn, messages: Sequence[NewMessage], now: int) -> None:
    """
    What L{secmail.store.trace} searches: the sender and every recipient of each message,
    secure or relayed, kept with the events after the message and its queue rows are gone.
    """
    traced = [m for m in messages if m.kind in TRACED_KINDS]
    if not traced:
        return
    insert_rows_txn(
        txn,
        "traces",
        ("message_id", "received", "sender", "kind"),
        [(m.content.message_id, now, m.sender.lower(), m.kind) for m in traced],
    )
    recipients: list[tuple[str, str, str, str, str | None]] = []
    for m in traced:
        own = m.content.message_id
        recipients += [
            (own, e.recipient.lower(), e.original.lower(), e.level, e.id) for e in m.envelopes
        ]
        recipients += [
            (own, address.lower(), address.lower(), d.kind, None)
            for d in m.deliveries
            if d.about in ("", own)
            for address in d.recipients
        ]
    insert_rows_txn(
        txn,
        "trace_recipients",
        ("message_id", "address", "original", "level", "envelope_id"),
        recipients,
    )


def add_event_txn(
    txn: Txn, message_id: str, envelope_id: str | None, kind: str, detail: str, now: int
) -> None:
    txn.execute(
        "INSERT INTO events (message_id, envelope_id, at, kind, detail) VALUES (?, ?, ?, ?, ?)",
        (message_id, envelope_id, now, kind, detail),
    )


def drop_unused_message_txn(txn: Txn, message_id: str) -> int:
    """
    Delete a message nothing refers to any more (no queue row, no secure envelope); or only
    its content when every secure envelope of it is revoked (the rows stay, so that the
    links answer "withdrawn"). How many chunks went with the content alone.
    """
    if txn.execute(
        "DELETE FROM messages WHERE id = ? "
        "AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?) "
        "AND NOT EXISTS (SELECT 1 FROM envelopes WHERE message_id = ?)",
        (message_id, message_id, message_id),
    ).rowcount:
        return 0
    return txn.execute(
        "DELETE FROM message_chunks WHERE message_id = ? "
        "AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?) "
        "AND EXISTS (SELECT 1 FROM envelopes WHERE message_id = ?) "
        "AND NOT EXISTS (SELECT 1 FROM envelopes WHERE message_id = ? AND state <> 'revoked')",
        (message_id, message_id, message_id, message_id),
    ).rowcount
