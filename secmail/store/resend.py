# -*- test-case-name: tests.test_resend -*-
"""
Resending a letter's notification: a new link for each (or the one) secure recipient.

L{ResendRows.letters} says which envelopes a resend is for (and refuses a withdrawn, locked or
deleted letter); L{ResendRows.resend} then, in one transaction, gives each its new link token
(stored hashed: the old link finds nothing any more), resets its browser binding, ends its
sessions, codes and unsent PINs, drops its unsent old notification, stores the new one with a
C{resent} event, and writes the admin's audit row. The notifications themselves are built
outside the store (L{secmail.resend}), as the intake builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.rows import (
    NewMessage,
    add_event_txn,
    drop_unused_message_txn,
    insert_messages_txn,
    short_id,
)
from secmail.store.trace import LetterConflict, TraceError, UnknownMessage, check_id, resolve_txn

REVOKED = "revoked"


@dataclass(frozen=True)
class LetterToResend:
    """One secure envelope a resend is for, with what its new notification needs."""

    envelope_id: str
    message_id: str
    recipient: str
    original: str
    level: str
    phone: str | None
    #: The letter's envelope sender ('' for <>).
    sender: str
    #: When the letter came in (unix seconds): it can be read until then + retention_days.
    created: int = 0


@dataclass(frozen=True)
class FreshLink:
    """An envelope's new link (its token's hash) and the notification that carries it."""

    envelope_id: str
    token_hash: str
    notification: NewMessage


class ResendRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def letters(
        self, text: str, keys: tuple[str, str] | None, recipient: str | None = None
    ) -> list[LetterToResend]:
        """
        The envelopes of the message C{text} names (a full, short or envelope id) that a
        resend is for: the one C{keys} (real and given address, lower-cased) or the envelope
        id names, else every secure recipient's that is not withdrawn.

        @raise UnknownMessage: no message has that id.
        @raise TraceError: C{recipient} is no secure recipient of it.
        @raise LetterConflict: the letter was withdrawn, is locked, or is gone.
        """
        check_id(text)
        return await self.db.run(lambda txn: _letters_txn(txn, text, keys, recipient))

    async def resend(
        self, message_id: str, links: Sequence[FreshLink], *, now: int, audit: AuditRow
    ) -> list[str]:
        """
        Give each envelope of C{links} its new link and notification in one transaction, with
        a C{resent} event each and one audit row (action C{resent}); the envelope ids.

        @raise LetterConflict: an envelope was withdrawn or locked meanwhile (nothing changes).
        """
        return await self.db.run(lambda txn: _resend_txn(txn, message_id, links, now, audit))


def _letters_txn(
    txn: Txn, text: str, keys: tuple[str, str] | None, recipient: str | None
) -> list[LetterToResend]:
    message_id, envelope_only = resolve_txn(txn, text)
    if message_id is None:
        raise UnknownMessage(f"no message has the id {text.strip()}")
    short = short_id(message_id)
    rows = txn.execute(
        "SELECT e.id, e.recipient, e.original, e.level, e.phone, e.state, e.locked, m.sender, "
        "m.created "
        "FROM envelopes e JOIN messages m ON m.id = e.message_id WHERE e.message_id = ? "
        "ORDER BY e.created, e.id",
        (message_id,),
    ).fetchall()
    if not rows:
        raise LetterConflict(
            f"message {short} has no letter to resend: it was relayed in the clear, or it "
            "has expired and been deleted"
        )
    if envelope_only is not None:
        rows = [r for r in rows if r[0] == envelope_only]
    if keys is not None:
        rows = [r for r in rows if r[1].lower() == keys[0] or r[2].lower() == keys[1]]
        if not rows:
            raise TraceError(f"{recipient} is not a secure recipient of message {short}")
    chosen = envelope_only is not None or keys is not None
    live = [r for r in rows if r[5] != REVOKED]
    if not live or (chosen and len(live) < len(rows)):
        raise LetterConflict(
            f"message {short} was withdrawn from {', '.join(r[1] for r in rows if r[5] == REVOKED)}"
            ": a withdrawn letter cannot be resent"
        )
    locked = [r[1] for r in live if r[6] is not None]
    if locked:
        raise LetterConflict(
            f"message {short} is locked for {', '.join(locked)} after too many wrong codes or "
            "PINs: a locked letter cannot be resent"
        )
    return [
        LetterToResend(
            str(r[0]), message_id, str(r[1]), str(r[2]), str(r[3]), r[4], str(r[7]), int(r[8])
        )
        for r in live
    ]


def _resend_txn(
    txn: Txn, message_id: str, links: Sequence[FreshLink], now: int, audit: AuditRow
) -> list[str]:
    done: list[tuple[str, str]] = []
    for link in links:
        # The UPDATE first: on PostgreSQL it holds the row against a revoke at the same time.
        txn.execute(
            "UPDATE envelopes SET token_hash = ?, browser_hash = NULL, opened = NULL, "
            "state = 'notified' WHERE id = ? AND message_id = ? AND state <> ? "
            "AND locked IS NULL",
            (link.token_hash, link.envelope_id, message_id, REVOKED),
        )
        if txn.rowcount != 1:
            raise LetterConflict(
                f"message {short_id(message_id)} was withdrawn or locked meanwhile: "
                "a withdrawn or locked letter cannot be resent"
            )
        address = txn.execute(
            "SELECT recipient FROM envelopes WHERE id = ?", (link.envelope_id,)
        ).fetchone()[0]
        unsent = txn.execute(
            "SELECT id, message_id FROM queue WHERE about = ? AND kind = 'notification' "
            "AND sender LIKE ?",
            (message_id, f"%+{link.envelope_id}@%"),
        ).fetchall()
        for queue_id, old in unsent:
            txn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))
            drop_unused_message_txn(txn, old)
        txn.execute("DELETE FROM sms_outbox WHERE envelope_id = ?", (link.envelope_id,))
        txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (link.envelope_id,))
        txn.execute("DELETE FROM sessions WHERE envelope_id = ?", (link.envelope_id,))
        insert_messages_txn(txn, [link.notification], now)
        detail = f"new link to {address} by {audit.admin}; the old link no longer works"
        if unsent:
            detail += "; the unsent old notification was dropped"
        add_event_txn(txn, message_id, link.envelope_id, "resent", detail, now)
        done.append((link.envelope_id, str(address)))
    if done:
        audit_txn(
            txn,
            replace(
                audit,
                action="resent",
                after=f"message {message_id} to {', '.join(a for _, a in done)}",
            ),
        )
    return [envelope_id for envelope_id, _ in done]
