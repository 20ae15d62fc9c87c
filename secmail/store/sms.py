"""
The SMS outbox and the phone directory.

An SMS carrying a PIN is written to the outbox in the same transaction that makes the
PIN valid, so a PIN is never valid without its SMS on the way, and a restart loses
none. The text is sealed (AES-GCM, a key derived from the master key ring): it carries the
PIN, which is otherwise stored only as an HMAC. A row is leased while a node sends it,
removed once a backend took it, and dropped when its PIN has expired unsent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secmail.crypto import DerivedKeys, purpose_keys
from secmail.masking import mask_number
from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.queue_rows import claim_due_txn, release_leases_txn
from secmail.store.rows import add_event_txn


class SmsText:
    """
    Seals an outbox text to its row's message and number, with the key derived from the
    sealing master key; opens it with any key of the ring (a row outlives a rotation).
    """

    def __init__(self, key: bytes | DerivedKeys) -> None:
        self.keys = purpose_keys(key)

    @staticmethod
    def _aad(message_id: str, number: str) -> bytes:
        return f"secmail-sms:{message_id}:{number}".encode()

    def seal(self, message_id: str, number: str, text: str) -> bytes:
        return self.seal_with_id(message_id, number, text)[1]

    def seal_with_id(self, message_id: str, number: str, text: str) -> tuple[str, bytes]:
        """The sealed text and the id of the master key it was sealed under."""
        key_id, key = self.keys.current()
        nonce = os.urandom(12)
        aad = self._aad(message_id, number)
        return key_id, nonce + AESGCM(key).encrypt(nonce, text.encode(), aad)

    def open(self, message_id: str, number: str, sealed: bytes) -> str:
        """The text; L{ValueError} when the row was altered or sealed with another key."""
        aad = self._aad(message_id, number)
        for _, key in self.keys.all():
            try:
                return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad).decode()
            except InvalidTag:
                continue
        raise ValueError("the SMS text does not open with any key of the master key ring")


@dataclass(frozen=True)
class OutboxItem:
    id: int
    message_id: str
    envelope_id: str | None
    number: str
    sealed: bytes
    created: int
    expires: int
    attempts: int


@dataclass(frozen=True)
class Pending:
    """An SMS for an envelope that is still in the outbox."""

    attempts: int
    last_error: str


_COLUMNS = "id, message_id, envelope_id, number, text, created, expires, attempts"


def _item(row: Sequence[Any]) -> OutboxItem:
    return OutboxItem(
        id=int(row[0]),
        message_id=row[1],
        envelope_id=row[2],
        number=row[3],
        sealed=bytes(row[4]),
        created=int(row[5]),
        expires=int(row[6]),
        attempts=int(row[7]),
    )


def queue_sms_txn(
    txn: Txn,
    sealer: SmsText,
    *,
    message_id: str,
    envelope_id: str | None,
    number: str,
    text: str,
    now: int,
    expires: int,
) -> None:
    """Put one SMS in the outbox, due at once."""
    key_id, sealed = sealer.seal_with_id(message_id, number, text)
    txn.execute(
        "INSERT INTO sms_outbox (message_id, envelope_id, number, text, key_id, created, "
        "expires, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (message_id, envelope_id, number, sealed, key_id, now, expires, now),
    )


class SmsStore:
    def __init__(self, db: Database, text_key: bytes | DerivedKeys) -> None:
        self.db = db
        self.sealer = SmsText(text_key)

    # --- the outbox ---------------------------------------------------------------------

    async def claim(self, owner: str, now: int, lease: int, limit: int) -> list[OutboxItem]:
        """Lease up to C{limit} due rows (expired ones too, to be dropped) for C{owner}."""

        def txn_(txn: Txn) -> list[OutboxItem]:
            rows = claim_due_txn(txn, "sms_outbox", _COLUMNS, owner, now, lease, limit)
            return sorted((_item(r) for r in rows), key=lambda i: i.id)

        return await self.db.run(txn_)

    async def next_due(self) -> int | None:
        """
        When the earliest row can be claimed (None: the outbox is empty): a leased row
        only once its lease ran out.
        """
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT MIN(CASE WHEN lease_until IS NULL THEN next_attempt "
                "ELSE lease_until + 1 END) FROM sms_outbox"
            ).fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    async def sent(self, item: OutboxItem) -> None:
        """A backend took the SMS (the dispatcher recorded the event): remove the row."""
        await self.db.run(
            lambda txn: txn.execute("DELETE FROM sms_outbox WHERE id = ?", (item.id,))
        )

    async def recipient(self, envelope_id: str) -> str:
        """The address of an SMS's envelope, for the log ('' when it is gone)."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT recipient FROM envelopes WHERE id = ?", (envelope_id,)
            ).fetchone()
        )
        return str(row[0]) if row is not None else ""

    async def retry(self, item: OutboxItem, next_attempt: int, error: str) -> None:
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE sms_outbox SET next_attempt = ?, attempts = attempts + 1, "
                "last_error = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (next_attempt, error[:1000], item.id),
            )
        )

    async def drop(self, item: OutboxItem, kind: str, detail: str, now: int) -> None:
        """Give up on an SMS, with an event saying why."""

        def txn_(txn: Txn) -> None:
            txn.execute("DELETE FROM sms_outbox WHERE id = ?", (item.id,))
            add_event_txn(txn, item.message_id, item.envelope_id, kind, detail, now)

        await self.db.run(txn_)

    async def release_own_leases(self, owner: str) -> None:
        """Rows this node leased before a restart are due again at once."""
        await self.db.run(lambda txn: release_leases_txn(txn, "sms_outbox", owner))

    async def pending(self, envelope_id: str) -> Pending | None:
        """The envelope's SMS still waiting in the outbox, if any."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT attempts, last_error FROM sms_outbox WHERE envelope_id = ? "
                "ORDER BY id DESC LIMIT 1",
                (envelope_id,),
            ).fetchone()
        )
        return None if row is None else Pending(attempts=int(row[0]), last_error=row[1])

    async def failed_since_order(self, message_id: str, envelope_id: str) -> bool:
        """Whether the envelope's latest PIN SMS was given up on (refused or expired)."""
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT kind FROM events WHERE message_id = ? AND envelope_id = ? "
                "AND kind IN ('PIN ordered', 'sms not sent', 'sms expired') "
                "ORDER BY id DESC LIMIT 1",
                (message_id, envelope_id),
            ).fetchone()
        )
        return row is not None and row[0] in ("sms not sent", "sms expired")

    async def outbox(self) -> list[tuple[OutboxItem, int, str]]:
        """Every row with its next attempt and last error, oldest first (for admins)."""

        def txn_(txn: Txn) -> list[tuple[OutboxItem, int, str]]:
            rows = txn.execute(
                f"SELECT {_COLUMNS}, next_attempt, last_error FROM sms_outbox ORDER BY id"
            ).fetchall()
            return [(_item(r), int(r[8]), r[9]) for r in rows]

        return await self.db.run(txn_)

    # --- the phone directory ------------------------------------------------------------

    async def set_phone(
        self, address: str, number: str, now: int, audit: AuditRow | None = None
    ) -> bool:
        """
        Add or change an address's number; True when the address was new. With C{audit},
        that admin's audit row (numbers masked) is written in the same transaction.
        """
        address = address.lower()

        def txn_(txn: Txn) -> bool:
            row = txn.execute("SELECT number FROM phones WHERE address = ?", (address,)).fetchone()
            if row is not None:
                txn.execute(
                    "UPDATE phones SET number = ?, updated = ? WHERE address = ?",
                    (number, now, address),
                )
            else:
                txn.execute(
                    "INSERT INTO phones (address, number, updated) VALUES (?, ?, ?)",
                    (address, number, now),
                )
            if audit is not None:
                audit_txn(
                    txn,
                    replace(
                        audit,
                        action="phone number changed" if row else "phone number added",
                        before=None if row is None else _phone(address, row[0]),
                        after=_phone(address, number),
                    ),
                )
            return row is None

        return await self.db.run(txn_)

    async def remove_phone(self, address: str, audit: AuditRow | None = None) -> bool:
        """Remove an address's number; False when it had none (and no audit row is written)."""
        address = address.lower()

        def txn_(txn: Txn) -> bool:
            row = txn.execute("SELECT number FROM phones WHERE address = ?", (address,)).fetchone()
            if row is None:
                return False
            txn.execute("DELETE FROM phones WHERE address = ?", (address,))
            if audit is not None:
                audit_txn(
                    txn,
                    replace(audit, action="phone number removed", before=_phone(address, row[0])),
                )
            return True

        return await self.db.run(txn_)

    async def phones(self) -> list[tuple[str, str, int]]:
        rows = await self.db.run(
            lambda txn: txn.execute(
                "SELECT address, number, updated FROM phones ORDER BY address"
            ).fetchall()
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def phone_for(self, address: str) -> str | None:
        row = await self.db.run(
            lambda txn: txn.execute(
                "SELECT number FROM phones WHERE address = ?", (address.lower(),)
            ).fetchone()
        )
        return None if row is None else str(row[0])


def _phone(address: str, number: str) -> str:
    """A directory entry in an audit row: the address and its number, masked as in the log."""
    return f"{address} {mask_number(number)}"
