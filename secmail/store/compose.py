"""
D-Compose state: e-mail codes that prove an outsider's address, and the sessions they open.

An outsider who wants to write to the organisation first proves that an address
is theirs: a code goes to it, and typing the code opens a session in which the
verified address is the sender. Only hashes of session cookies and codes are
stored; codes are counted per address so that the portal cannot be made to flood
a mailbox with code mails.

Each outsider address has its own audit trail in the events table, under the
id C{compose:<address>} (see L{trail_id}): codes sent, tried and accepted,
sign-ins and messages written.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from secmail.crypto import DerivedKeys, purpose_keys
from secmail.store.database import Database, Txn
from secmail.store.messages import add_event_txn
from secmail.store.portal import SESSION_IDLE, SESSION_MAX, CodeState, digest, matches_any

__all__ = [
    "CODE_LIFETIME",
    "CODE_TRIES",
    "CODE_WINDOW",
    "CODES_PER_WINDOW",
    "SESSION_IDLE",
    "SESSION_MAX",
    "CodeState",
    "ComposeSession",
    "ComposeStore",
    "trail_id",
]

#: A code is good for this long, and for this many tries.
CODE_LIFETIME = 10 * 60
CODE_TRIES = 5
#: At most this many code mails go to one address within this many seconds.
CODES_PER_WINDOW = 5
CODE_WINDOW = 24 * 3600


def trail_id(address: str) -> str:
    """The audit trail (events.message_id) of everything one outsider address did."""
    return "compose:" + address.lower()


@dataclass(frozen=True)
class ComposeSession:
    """A signed-in outsider: C{address} is the verified sender of what they write."""

    address: str
    csrf: str
    created: int


class ComposeStore:
    """
    @param code_key: the HMAC key for code hashes (derived from the master key), so
        that a copy of the database does not let anyone try all million codes offline.
    """

    def __init__(self, db: Database, code_key: bytes | DerivedKeys) -> None:
        self.db = db
        self._code_keys = purpose_keys(code_key)

    @staticmethod
    def _hmac(code_key: bytes, key: str, code: str) -> str:
        return hmac.new(code_key, f"compose:{key}:{code}".encode(), "sha256").hexdigest()

    # --- codes ------------------------------------------------------------------------------

    async def new_code(self, address: str, now: int) -> str | None:
        """
        A fresh 6-digit code for C{address} (older ones stop working), to be mailed
        to it; None when L{CODES_PER_WINDOW} codes went to it in the last 24 hours.
        Addresses are counted without regard to case.
        """
        key = address.lower()
        code = f"{secrets.randbelow(10**6):06d}"

        def txn_(txn: Txn) -> bool:
            sent = txn.execute(
                "SELECT COUNT(*) FROM compose_codes WHERE address = ? AND created > ?",
                (key, now - CODE_WINDOW),
            ).fetchone()[0]
            if int(sent) >= CODES_PER_WINDOW:
                add_event_txn(
                    txn,
                    trail_id(key),
                    None,
                    "code refused",
                    f"{CODES_PER_WINDOW} code mails in the last 24 hours",
                    now,
                )
                return False
            txn.execute("UPDATE compose_codes SET used = 1 WHERE address = ?", (key,))
            key_id, code_key = self._code_keys.current()
            txn.execute(
                "INSERT INTO compose_codes (address, code_hash, key_id, created, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, self._hmac(code_key, key, code), key_id, now, now + CODE_LIFETIME),
            )
            add_event_txn(txn, trail_id(key), None, "code sent", f"code mail {int(sent) + 1}", now)
            return True

        return code if await self.db.run(txn_) else None

    async def check_code(self, address: str, code: str, now: int) -> str:
        """Try a code: L{CodeState}.OK once, WRONG (tries left), or EXPIRED (ask for a new one)."""
        key = address.lower()
        # Under every key of the ring: a code outlives a rotation.
        candidates = [self._hmac(k, key, code.strip()) for _, k in self._code_keys.all()]

        def txn_(txn: Txn) -> str:
            row = txn.execute(
                "SELECT code_hash, expires, tries FROM compose_codes "
                "WHERE address = ? AND used = 0 ORDER BY created DESC LIMIT 1",
                (key,),
            ).fetchone()
            trail = trail_id(key)
            if row is None or int(row[1]) < now or int(row[2]) >= CODE_TRIES:
                add_event_txn(txn, trail, None, "code refused", "no valid code", now)
                return CodeState.EXPIRED
            if matches_any(row[0], candidates):
                txn.execute("UPDATE compose_codes SET used = 1 WHERE address = ?", (key,))
                add_event_txn(txn, trail, None, "code accepted", "", now)
                return CodeState.OK
            tries = int(row[2]) + 1
            txn.execute(
                "UPDATE compose_codes SET tries = ? WHERE address = ? AND used = 0 "
                "AND code_hash = ?",
                (tries, key, row[0]),
            )
            add_event_txn(txn, trail, None, "code wrong", f"try {tries}", now)
            return CodeState.WRONG if tries < CODE_TRIES else CodeState.EXPIRED

        return await self.db.run(txn_)

    # --- sessions ---------------------------------------------------------------------------

    async def create_session(self, address: str, now: int) -> str:
        """A session whose sender is C{address}; returns the cookie value (stored only hashed)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)

        def txn_(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO compose_sessions (id_hash, address, created, last_seen, csrf) "
                "VALUES (?, ?, ?, ?, ?)",
                (digest(session_id), address, now, now, csrf),
            )
            add_event_txn(txn, trail_id(address), None, "signed in", "e-mail code", now)

        await self.db.run(txn_)
        return session_id

    async def session(self, session_id: str, now: int) -> ComposeSession | None:
        """The live session for a cookie, touched; None when unknown or timed out."""
        id_hash = digest(session_id)

        def txn_(txn: Txn) -> ComposeSession | None:
            row = txn.execute(
                "SELECT address, csrf, created, last_seen FROM compose_sessions WHERE id_hash = ?",
                (id_hash,),
            ).fetchone()
            if row is None:
                return None
            created, last_seen = int(row[2]), int(row[3])
            if now - last_seen > SESSION_IDLE or now - created > SESSION_MAX:
                txn.execute("DELETE FROM compose_sessions WHERE id_hash = ?", (id_hash,))
                return None
            txn.execute(
                "UPDATE compose_sessions SET last_seen = ? WHERE id_hash = ?", (now, id_hash)
            )
            return ComposeSession(address=row[0], csrf=row[1], created=created)

        return await self.db.run(txn_)

    async def end_session(self, session_id: str, now: int) -> None:
        id_hash = digest(session_id)

        def txn_(txn: Txn) -> None:
            row = txn.execute(
                "SELECT address FROM compose_sessions WHERE id_hash = ?", (id_hash,)
            ).fetchone()
            if row is None:
                return
            txn.execute("DELETE FROM compose_sessions WHERE id_hash = ?", (id_hash,))
            add_event_txn(txn, trail_id(row[0]), None, "signed out", "", now)

        await self.db.run(txn_)

    # --- audit and clean-up -----------------------------------------------------------------

    async def add_event(self, address: str, kind: str, detail: str, now: int) -> None:
        """An event on the outsider's own trail (L{trail_id})."""
        await self.db.run(
            lambda txn: add_event_txn(txn, trail_id(address), None, kind, detail, now)
        )

    async def delete_stale(self, now: int) -> int:
        """Remove timed-out sessions and codes too old to count; returns how many rows went."""

        def txn_(txn: Txn) -> int:
            txn.execute(
                "DELETE FROM compose_sessions WHERE last_seen < ? OR created < ?",
                (now - SESSION_IDLE, now - SESSION_MAX),
            )
            removed = txn.rowcount
            txn.execute("DELETE FROM compose_codes WHERE created <= ?", (now - CODE_WINDOW,))
            return removed + txn.rowcount

        return await self.db.run(txn_)
