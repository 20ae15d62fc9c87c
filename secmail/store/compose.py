# -*- test-case-name: tests.test_compose -*-
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

from dataclasses import dataclass

from secmail import limits as code_rules
from secmail.address import mailbox_key
from secmail.crypto import DerivedKeys, purpose_keys
from secmail.limits import HOUR, LOCK_AFTER, SESSION_IDLE, SESSION_MAX, CodeState, Quota
from secmail.store.codes import HolderRow, OneTimeCodes, new_code
from secmail.store.database import Database, Txn
from secmail.store.rows import NewMessage, add_event_txn
from secmail.store.sessions import SessionTable, new_session

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
CODE_WINDOW = 24 * HOUR
#: A mailbox with LOCK_AFTER wrong codes gets no code for this long (the limit on guesses:
#: 20 a month; a lock for good would let anyone shut anyone out of D-Compose for good).
LOCK_TIME = 30 * 24 * 3600

CODE_RULES = code_rules.CodeRules(
    lifetime=CODE_LIFETIME, tries=CODE_TRIES, lock_after=LOCK_AFTER, lock_time=LOCK_TIME
)


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


class MailboxHolder(HolderRow):
    """A mailbox as the holder of its addresses' codes: LOCK_AFTER wrong ones lock it a while."""

    table, key_column, failures_column = "compose_mailboxes", "mailbox", "failures"

    def __init__(self, address: str, mailbox: str) -> None:
        self.trail = trail_id(address)
        self.key = self.mailbox = mailbox

    def failures_txn(self, txn: Txn, now: int) -> int | None:
        failures = _lock_mailbox(txn, self.mailbox, now)
        if failures is None:
            self.event_txn(txn, "code refused", "mailbox locked", now)
        return failures

    def lock_txn(self, txn: Txn, failures: int, now: int) -> None:
        self.lock_row_txn(txn, failures, now)
        txn.execute("UPDATE compose_codes SET used = 1 WHERE mailbox = ?", (self.mailbox,))

    def event_txn(self, txn: Txn, kind: str, detail: str, now: int) -> None:
        add_event_txn(txn, self.trail, None, kind, detail, now)

    def wrong_detail(self, tries: int, failures: int) -> str:
        return f"try {tries}, {failures} for {self.mailbox}"

    def lock_detail(self, failures: int) -> str:
        return f"{failures} wrong codes for {self.mailbox}"


class ComposeStore:
    """
    @param code_key: the HMAC key for code hashes (derived from the master key), so
        that a copy of the database does not let anyone try all million codes offline.
    """

    def __init__(self, db: Database, code_key: bytes | DerivedKeys) -> None:
        self.db = db
        self._codes = OneTimeCodes(
            "compose_codes", "address", purpose_keys(code_key), CODE_RULES, context="compose:"
        )
        self._sessions = SessionTable("compose_sessions", ("address",), ComposeSession)

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
        code = new_code()

        def txn_(txn: Txn) -> str | None:
            # Serialise every order across nodes (see the module docstring).
            txn.execute("UPDATE compose_guard SET orders = orders + 1 WHERE id = 1")
            refusal, detail = self._refusal_txn(txn, mailbox, client, now, limits)
            if refusal is not None:
                add_event_txn(txn, trail_id(key), None, "code refused", detail, now)
                return refusal
            self._codes.make_txn(txn, key, code, now, mailbox=mailbox, client=client)
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
        candidates = self._codes.candidates(key, code)

        def txn_(txn: Txn) -> str:
            holder = MailboxHolder(key, mailbox_key(key))
            return self._codes.check_txn(txn, holder, key, candidates, now, lock_notice)

        return await self.db.run(txn_)

    def _refusal_txn(
        self, txn: Txn, mailbox: str, client: str, now: int, limits: CodeLimits
    ) -> tuple[str | None, str]:
        """Which limit a new code mail would break, if any, and the audit detail either way."""
        locked = txn.execute(
            "SELECT locked FROM compose_mailboxes WHERE mailbox = ?", (mailbox,)
        ).fetchone()
        if locked is not None and code_rules.is_locked(CODE_RULES, locked[0], now):
            return CodeRefusal.LOCKED, f"{mailbox} is locked after too many wrong codes"
        windows = [HOUR, CODE_WINDOW]
        (_, to_mailbox), _ = self._codes.sent_txn(txn, now, windows, "mailbox", mailbox)
        (hour, day), _ = self._codes.sent_txn(txn, now, windows)
        counts = [(Quota(CodeRefusal.MAILBOX, limits.per_mailbox, CODE_WINDOW), to_mailbox)]
        if client:  # "" when unknown: not counted
            (from_client,), _ = self._codes.sent_txn(txn, now, [HOUR], "client", client)
            counts.append((Quota(CodeRefusal.CLIENT, limits.per_client, HOUR), from_client))
        counts.append((Quota(CodeRefusal.HOUR, limits.per_hour, HOUR), hour))
        counts.append((Quota(CodeRefusal.DAY, limits.per_day, CODE_WINDOW), day))
        quota = code_rules.over_quota(counts)
        if quota is None:
            return None, f"code mail {to_mailbox + 1} to {mailbox}, for {client or 'unknown'}"
        return quota.refusal, {
            CodeRefusal.MAILBOX: f"{limits.per_mailbox} code mails to {mailbox} in 24 hours",
            CodeRefusal.CLIENT: f"{limits.per_client} code mails for {client} in an hour",
            CodeRefusal.HOUR: f"{limits.per_hour} code mails in all in an hour",
            CodeRefusal.DAY: f"{limits.per_day} code mails in all in 24 hours",
        }[quota.refusal]

    # --- sessions ---------------------------------------------------------------------------

    async def create_session(self, address: str, now: int, replaces: str | None = None) -> str:
        """
        A session whose sender is C{address}; returns the cookie value (stored only hashed).
        With C{replaces}, that session ends (signed out) in the same transaction.
        """
        session_id, csrf = new_session()

        def txn_(txn: Txn) -> None:
            old = self._sessions.create_txn(txn, session_id, csrf, (address,), now, replaces)
            if old is not None:
                add_event_txn(txn, trail_id(old[0]), None, "signed out", "", now)
            add_event_txn(txn, trail_id(address), None, "signed in", "e-mail code", now)

        await self.db.run(txn_)
        return session_id

    async def session(self, session_id: str, now: int) -> ComposeSession | None:
        """The live session for a cookie, touched; None when unknown or timed out."""

        return await self.db.run(lambda txn: self._sessions.touch_txn(txn, session_id, now))

    async def end_session(self, session_id: str, now: int) -> None:
        def txn_(txn: Txn) -> None:
            old = self._sessions.end_txn(txn, session_id)
            if old is not None:
                add_event_txn(txn, trail_id(old[0]), None, "signed out", "", now)

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
            removed = self._sessions.delete_stale_txn(txn, now)
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
