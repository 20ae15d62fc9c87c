"""
The portal's durable state: which browser a letter is bound to, sessions and e-mail codes.

Sessions live in the database so that they survive restarts and work on every
node of a cluster. Only hashes of cookies and codes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from secmail.store.database import Database, Txn
from secmail.store.messages import add_event_txn

#: Sessions end after this long without a request, and this long after they began.
SESSION_IDLE = 30 * 60
SESSION_MAX = 12 * 3600

#: E-mail codes: how long one is good for, how many tries it allows, how many an hour.
CODE_LIFETIME = 10 * 60
CODE_TRIES = 5
CODES_PER_HOUR = 5


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Session:
    envelope_id: str
    message_id: str
    csrf: str
    created: int


class CodeState:
    OK = "ok"
    WRONG = "wrong"
    EXPIRED = "expired"  # none valid: expired, used up or never sent


class PortalStore:
    def __init__(self, db: Database, code_key: bytes) -> None:
        self.db = db
        self._code_key = code_key

    def _code_hash(self, envelope_id: str, code: str) -> str:
        return hmac.new(self._code_key, f"{envelope_id}:{code}".encode(), "sha256").hexdigest()

    # --- binding and sessions ---------------------------------------------------------

    async def open_envelope(self, envelope_id: str, browser: str, now: int) -> bool:
        """
        The first explicit open binds a letter to this browser. True when this browser
        may open it without a code (it is the bound one, or the letter was unbound).
        """
        browser_hash = digest(browser)

        def txn_(txn: Txn) -> bool:
            txn.execute(
                "UPDATE envelopes SET browser_hash = ?, opened = ? "
                "WHERE id = ? AND browser_hash IS NULL",
                (browser_hash, now, envelope_id),
            )
            if txn.rowcount == 1:
                add_event_txn(
                    txn,
                    _message_of(txn, envelope_id),
                    envelope_id,
                    "opened",
                    "first open; bound to this browser",
                    now,
                )
                return True
            row = txn.execute(
                "SELECT browser_hash FROM envelopes WHERE id = ?", (envelope_id,)
            ).fetchone()
            return row is not None and hmac.compare_digest(row[0] or "", browser_hash)

        return await self.db.run(txn_)

    async def create_session(self, envelope_id: str, now: int, how: str) -> str:
        """A new session for the envelope; returns the cookie value (stored only hashed)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)

        def txn_(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO sessions (id_hash, envelope_id, created, last_seen, csrf) "
                "VALUES (?, ?, ?, ?, ?)",
                (digest(session_id), envelope_id, now, now, csrf),
            )
            add_event_txn(txn, _message_of(txn, envelope_id), envelope_id, "signed in", how, now)

        await self.db.run(txn_)
        return session_id

    async def session(self, session_id: str, now: int) -> Session | None:
        """The live session for a cookie, touched; None when unknown or timed out."""
        id_hash = digest(session_id)

        def txn_(txn: Txn) -> Session | None:
            row = txn.execute(
                "SELECT s.envelope_id, e.message_id, s.csrf, s.created, s.last_seen "
                "FROM sessions s JOIN envelopes e ON e.id = s.envelope_id WHERE s.id_hash = ?",
                (id_hash,),
            ).fetchone()
            if row is None:
                return None
            created, last_seen = int(row[3]), int(row[4])
            if now - last_seen > SESSION_IDLE or now - created > SESSION_MAX:
                txn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
                return None
            txn.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, id_hash))
            return Session(envelope_id=row[0], message_id=row[1], csrf=row[2], created=created)

        return await self.db.run(txn_)

    async def end_session(self, session_id: str) -> None:
        id_hash = digest(session_id)
        await self.db.run(
            lambda txn: txn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
        )

    async def delete_stale_sessions(self, now: int) -> int:
        def txn_(txn: Txn) -> int:
            txn.execute(
                "DELETE FROM sessions WHERE last_seen < ? OR created < ?",
                (now - SESSION_IDLE, now - SESSION_MAX),
            )
            return txn.rowcount

        return await self.db.run(txn_)

    # --- one-time codes by e-mail ----------------------------------------------------------

    async def new_code(self, envelope_id: str, now: int) -> str | None:
        """A fresh 6-digit code (older ones stop working); None when too many were sent."""
        code = f"{secrets.randbelow(10**6):06d}"

        def txn_(txn: Txn) -> bool:
            sent = txn.execute(
                "SELECT COUNT(*) FROM access_codes WHERE envelope_id = ? AND created > ?",
                (envelope_id, now - 3600),
            ).fetchone()[0]
            if int(sent) >= CODES_PER_HOUR:
                return False
            txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,))
            txn.execute(
                "INSERT INTO access_codes (envelope_id, code_hash, created, expires) "
                "VALUES (?, ?, ?, ?)",
                (envelope_id, self._code_hash(envelope_id, code), now, now + CODE_LIFETIME),
            )
            add_event_txn(
                txn,
                _message_of(txn, envelope_id),
                envelope_id,
                "code sent",
                "to the recipient's address",
                now,
            )
            return True

        return code if await self.db.run(txn_) else None

    async def check_code(self, envelope_id: str, code: str, now: int) -> str:
        """Try a code: L{CodeState}.OK once, WRONG (tries left), or EXPIRED (order a new one)."""
        candidate = self._code_hash(envelope_id, code.strip())

        def txn_(txn: Txn) -> str:
            row = txn.execute(
                "SELECT code_hash, expires, tries FROM access_codes "
                "WHERE envelope_id = ? AND used = 0 ORDER BY created DESC LIMIT 1",
                (envelope_id,),
            ).fetchone()
            message_id = _message_of(txn, envelope_id)
            if row is None or int(row[1]) < now or int(row[2]) >= CODE_TRIES:
                add_event_txn(txn, message_id, envelope_id, "code refused", "no valid code", now)
                return CodeState.EXPIRED
            if hmac.compare_digest(row[0], candidate):
                txn.execute(
                    "UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,)
                )
                add_event_txn(txn, message_id, envelope_id, "code accepted", "", now)
                return CodeState.OK
            txn.execute(
                "UPDATE access_codes SET tries = tries + 1 WHERE envelope_id = ? AND used = 0 "
                "AND code_hash = ?",
                (envelope_id, row[0]),
            )
            add_event_txn(txn, message_id, envelope_id, "code wrong", f"try {int(row[2]) + 1}", now)
            return CodeState.WRONG if int(row[2]) + 1 < CODE_TRIES else CodeState.EXPIRED

        return await self.db.run(txn_)


def _message_of(txn: Txn, envelope_id: str) -> str:
    row = txn.execute("SELECT message_id FROM envelopes WHERE id = ?", (envelope_id,)).fetchone()
    return str(row[0]) if row is not None else ""
