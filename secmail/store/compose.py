"""
D-Compose state: e-mail codes that prove an outsider's address, and the sessions they open.

An outsider who wants to write to the organisation first proves that an address
is theirs: a code goes to it, and typing the code opens a session in which the
verified address is the sender. Only hashes of session cookies and codes are
stored.

The portal must not be made to flood a mailbox (or everyone) with code mails, nor let
anyone guess codes without end: code mails are counted per mailbox (L{mailbox_key}:
lower-cased, C{+tag} removed, so the spellings of one mailbox share one limit), per
client (an IPv4 address or an IPv6 /64) and in total (L{CodeLimits}); wrong codes are
counted per mailbox, and LOCK_AFTER of them lock the mailbox for codes for LOCK_TIME,
its owner told by mail in the same transaction. Every code order first updates the one
row of C{compose_guard}, so orders on two cluster nodes wait for each other and each
counts what the other committed: no node sends one over a limit.

Each outsider address has its own audit trail in the events table, under the
id C{compose:<address>} (see L{trail_id}): codes sent, tried and accepted,
sign-ins and messages written.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from secmail.address import mailbox_key
from secmail.crypto import DerivedKeys, purpose_keys
from secmail.store.database import Database, Txn
from secmail.store.messages import NewMessage, add_event_txn, insert_messages_txn
from secmail.store.portal import (
    LOCK_AFTER,
    SESSION_IDLE,
    SESSION_MAX,
    CodeState,
    digest,
    matches_any,
)

__all__ = [
    "CODE_LIFETIME",
    "CODE_TRIES",
    "CODE_WINDOW",
    "CODES_PER_WINDOW",
    "LOCK_AFTER",
    "LOCK_TIME",
    "SESSION_IDLE",
    "SESSION_MAX",
    "CodeLimits",
    "CodeRefusal",
    "CodeState",
    "ComposeSession",
    "ComposeStore",
    "trail_id",
]

#: A code is good for this long, and for this many tries.
CODE_LIFETIME = 10 * 60
CODE_TRIES = 5
#: By default at most this many code mails go to one mailbox within this many seconds.
CODES_PER_WINDOW = 5
CODE_WINDOW = 24 * 3600
HOUR = 3600
#: A mailbox with LOCK_AFTER wrong codes gets no code for this long (the limit on guesses:
#: 20 a month; a lock for good would let anyone shut anyone out of D-Compose for good).
LOCK_TIME = 30 * 24 * 3600


@dataclass(frozen=True)
class CodeLimits:
    """How many code mails may go out: [portal] compose_codes_* in the settings."""

    per_mailbox: int = CODES_PER_WINDOW  # to one mailbox in 24 hours
    per_client: int = 10  # for one client (IPv4 address or IPv6 /64) in an hour
    per_hour: int = 60  # to everyone in an hour
    per_day: int = 300  # to everyone in 24 hours


class CodeRefusal:
    """Why no code mail went out."""

    MAILBOX = "mailbox"
    CLIENT = "client"
    HOUR = "hour"
    DAY = "day"
    LOCKED = "locked"


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

    async def new_code(
        self, address: str, now: int, client: str = "", limits: CodeLimits = CodeLimits()
    ) -> str | None:
        """A fresh code to mail to C{address}, or None when refused (see L{order_code})."""
        return (await self.order_code(address, now, client, limits))[0]

    async def order_code(
        self, address: str, now: int, client: str = "", limits: CodeLimits = CodeLimits()
    ) -> tuple[str | None, str | None]:
        """
        A fresh 6-digit code for C{address} (older ones stop working), to be mailed to it,
        and None; or None and a L{CodeRefusal} when a limit is reached or the mailbox is
        locked. Addresses are counted by mailbox (L{mailbox_key}); C{client} is the
        requester's key (IPv4 address or IPv6 /64; "" when unknown: not counted).
        """
        key = address.lower()
        mailbox = mailbox_key(key)
        code = f"{secrets.randbelow(10**6):06d}"

        def txn_(txn: Txn) -> str | None:
            # Serialise every order across nodes (see the module docstring).
            txn.execute("UPDATE compose_guard SET orders = orders + 1 WHERE id = 1")
            refusal, detail = _refusal(txn, mailbox, client, now, limits)
            if refusal is not None:
                add_event_txn(txn, trail_id(key), None, "code refused", detail, now)
                return refusal
            txn.execute("UPDATE compose_codes SET used = 1 WHERE address = ?", (key,))
            key_id, code_key = self._code_keys.current()
            txn.execute(
                "INSERT INTO compose_codes (address, mailbox, client, code_hash, key_id, "
                "created, expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    mailbox,
                    client,
                    self._hmac(code_key, key, code),
                    key_id,
                    now,
                    now + CODE_LIFETIME,
                ),
            )
            add_event_txn(txn, trail_id(key), None, "code sent", detail, now)
            return None

        refusal = await self.db.run(txn_)
        return (code, None) if refusal is None else (None, refusal)

    async def check_code(
        self, address: str, code: str, now: int, lock_notice: NewMessage | None = None
    ) -> str:
        """
        Try a code: L{CodeState}.OK once, WRONG (tries left), EXPIRED (ask for a new one),
        or LOCKED. A wrong one counts against the code (CODE_TRIES) and the mailbox
        (LOCK_AFTER); the one that locks the mailbox stores C{lock_notice} (the mail
        telling its owner) in the same transaction and answers LOCKED_NOW.
        """
        key = address.lower()
        mailbox = mailbox_key(key)
        # Under every key of the ring: a code outlives a rotation.
        candidates = [self._hmac(k, key, code.strip()) for _, k in self._code_keys.all()]

        def txn_(txn: Txn) -> str:
            trail = trail_id(key)
            failures = _lock_mailbox(txn, mailbox, now)
            if failures is None:
                add_event_txn(txn, trail, None, "code refused", "mailbox locked", now)
                return CodeState.LOCKED
            row = txn.execute(
                "SELECT code_hash, expires, tries FROM compose_codes "
                "WHERE address = ? AND used = 0 ORDER BY created DESC LIMIT 1",
                (key,),
            ).fetchone()
            if row is None or int(row[1]) < now or int(row[2]) >= CODE_TRIES:
                add_event_txn(txn, trail, None, "code refused", "no valid code", now)
                return CodeState.EXPIRED
            if matches_any(row[0], candidates):
                txn.execute("UPDATE compose_codes SET used = 1 WHERE address = ?", (key,))
                add_event_txn(txn, trail, None, "code accepted", "", now)
                return CodeState.OK
            tries = int(row[2]) + 1
            failures += 1
            txn.execute(
                "UPDATE compose_codes SET tries = ? WHERE address = ? AND used = 0 "
                "AND code_hash = ?",
                (tries, key, row[0]),
            )
            add_event_txn(
                txn, trail, None, "code wrong", f"try {tries}, {failures} for {mailbox}", now
            )
            if failures >= LOCK_AFTER:
                txn.execute(
                    "UPDATE compose_mailboxes SET failures = ?, locked = ? WHERE mailbox = ?",
                    (failures, now, mailbox),
                )
                txn.execute("UPDATE compose_codes SET used = 1 WHERE mailbox = ?", (mailbox,))
                add_event_txn(
                    txn, trail, None, "locked", f"{failures} wrong codes for {mailbox}", now
                )
                if lock_notice is not None:
                    insert_messages_txn(txn, [lock_notice], now)
                return CodeState.LOCKED_NOW
            txn.execute(
                "UPDATE compose_mailboxes SET failures = ? WHERE mailbox = ?", (failures, mailbox)
            )
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
            removed += txn.rowcount
            # Mailboxes with nothing to remember: no lock in force.
            txn.execute(
                "DELETE FROM compose_mailboxes WHERE locked IS NULL AND failures = 0 "
                "OR locked <= ?",
                (now - LOCK_TIME,),
            )
            return removed

        return await self.db.run(txn_)


def _refusal(
    txn: Txn, mailbox: str, client: str, now: int, limits: CodeLimits
) -> tuple[str | None, str]:
    """Which limit a new code mail would break, if any, and the audit detail either way."""
    locked = txn.execute(
        "SELECT locked FROM compose_mailboxes WHERE mailbox = ?", (mailbox,)
    ).fetchone()
    if locked is not None and locked[0] is not None and int(locked[0]) > now - LOCK_TIME:
        return CodeRefusal.LOCKED, f"{mailbox} is locked after too many wrong codes"
    day, hour = txn.execute(
        "SELECT COUNT(*), SUM(CASE WHEN created > ? THEN 1 ELSE 0 END) FROM compose_codes "
        "WHERE created > ?",
        (now - HOUR, now - CODE_WINDOW),
    ).fetchone()
    to_mailbox = txn.execute(
        "SELECT COUNT(*) FROM compose_codes WHERE mailbox = ? AND created > ?",
        (mailbox, now - CODE_WINDOW),
    ).fetchone()[0]
    if int(to_mailbox) >= limits.per_mailbox:
        return CodeRefusal.MAILBOX, f"{limits.per_mailbox} code mails to {mailbox} in 24 hours"
    if client:
        from_client = txn.execute(
            "SELECT COUNT(*) FROM compose_codes WHERE client = ? AND created > ?",
            (client, now - HOUR),
        ).fetchone()[0]
        if int(from_client) >= limits.per_client:
            return CodeRefusal.CLIENT, f"{limits.per_client} code mails for {client} in an hour"
    if int(hour or 0) >= limits.per_hour:
        return CodeRefusal.HOUR, f"{limits.per_hour} code mails in all in an hour"
    if int(day) >= limits.per_day:
        return CodeRefusal.DAY, f"{limits.per_day} code mails in all in 24 hours"
    return None, f"code mail {int(to_mailbox) + 1} to {mailbox}, for {client or 'unknown'}"


def _lock_mailbox(txn: Txn, mailbox: str, now: int) -> int | None:
    """
    Take the mailbox's row (made if new) for this transaction: on PostgreSQL another
    node's check of the same mailbox waits here, so no wrong code goes uncounted. Its
    wrong codes so far, or None while it is locked (a lock that ran out starts afresh).
    """
    txn.execute(
        "INSERT INTO compose_mailboxes (mailbox, failures) VALUES (?, 0) "
        "ON CONFLICT (mailbox) DO NOTHING",
        (mailbox,),
    )
    # The row lock (each statement after it sees what was committed before it), and a
    # lock that ran out is lifted.
    txn.execute(
        "UPDATE compose_mailboxes SET "
        "failures = CASE WHEN locked <= ? THEN 0 ELSE failures END, "
        "locked = CASE WHEN locked <= ? THEN NULL ELSE locked END "
        "WHERE mailbox = ?",
        (now - LOCK_TIME, now - LOCK_TIME, mailbox),
    )
    row = txn.execute(
        "SELECT failures, locked FROM compose_mailboxes WHERE mailbox = ?", (mailbox,)
    ).fetchone()
    if row[1] is not None:
        return None
    return int(row[0])
