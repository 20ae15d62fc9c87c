# -*- test-case-name: tests.test_portal_store,tests.test_sms_store -*-
"""
The portal's durable state: which browser a letter is bound to, sessions and e-mail codes;
registered letters' SMS PINs and wrong-number reports.

Codes and PINs are L{OneTimeCodes} of one table (a registered letter uses no e-mail codes,
so the two never mix), counted against the letter (L{LetterHolder}); sessions are a
L{SessionTable}. Only hashes of cookies and codes are stored.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from secmail.crypto import DerivedKeys, purpose_keys
from secmail.limits import (
    DAY,
    HOUR,
    LOCK_AFTER,
    SESSION_IDLE,
    SESSION_MAX,
    CodeRules,
    CodeState,
    Quota,
    is_locked,
    over_quota,
    too_soon,
)
from secmail.masking import mask_number
from secmail.store.codes import HolderRow, OneTimeCodes, matches_any, new_code
from secmail.store.database import Database, Txn
from secmail.store.rows import NewMessage, add_event_txn, hash_token, insert_messages_txn
from secmail.store.sessions import SessionTable, new_session
from secmail.store.sms import SmsText, queue_sms_txn

__all__ = [
    "CODE_LIFETIME",
    "CODE_TRIES",
    "CODES_PER_DAY",
    "CODES_PER_HOUR",
    "DAY",
    "LOCK_AFTER",
    "PIN_INTERVAL",
    "PIN_LOCK_AFTER",
    "SESSION_IDLE",
    "SESSION_MAX",
    "CodeOrder",
    "CodeState",
    "PinOrder",
    "PinState",
    "PortalStore",
    "Session",
    "matches_any",
]

#: E-mail codes: how long one is good for, how many tries it allows, how many an hour.
CODE_LIFETIME = 10 * 60
CODE_TRIES = 5
CODES_PER_HOUR = 5
#: ... and how many a day, per letter (else 5 an hour would allow 120 a day).
CODES_PER_DAY = 10

#: SMS PINs for registered letters: the same lifetime, tries, hourly and daily limits as
#: e-mail codes, and at most one a minute.
PIN_INTERVAL = 60
#: A letter locks for good after LOCK_AFTER wrong codes or PINs in all, and its sender is told.
PIN_LOCK_AFTER = LOCK_AFTER

CODE_RULES = CodeRules(lifetime=CODE_LIFETIME, tries=CODE_TRIES, lock_after=LOCK_AFTER)
PIN_RULES = CodeRules(
    lifetime=CODE_LIFETIME, tries=CODE_TRIES, lock_after=PIN_LOCK_AFTER, interval=PIN_INTERVAL
)


@dataclass(frozen=True)
class Session:
    envelope_id: str
    message_id: str
    #: The envelope's state as the session was read (C{revoked}: it reads nothing more).
    state: str
    csrf: str
    created: int


class CodeOrder:
    SENT = "sent"
    TOO_MANY = "too many"  # CODES_PER_HOUR in the last hour
    TOO_MANY_TODAY = "too many today"  # CODES_PER_DAY in the last 24 hours
    LOCKED = "locked"


class PinOrder:
    SENT = "sent"
    TOO_SOON = "too soon"  # the last one went out less than a minute ago
    TOO_MANY = "too many"  # CODES_PER_HOUR in the last hour
    TOO_MANY_TODAY = "too many today"  # CODES_PER_DAY in the last 24 hours
    LOCKED = "locked"


#: The same values as L{CodeState}, SUPERSEDED among them.
PinState = CodeState

#: Codes and PINs a letter may have made: per hour, then per day (the same for both).
LETTER_QUOTAS = (
    Quota(CodeOrder.TOO_MANY, CODES_PER_HOUR, HOUR),
    Quota(CodeOrder.TOO_MANY_TODAY, CODES_PER_DAY, DAY),
)


class LetterHolder(HolderRow):
    """A letter as the holder of its codes and PINs: wrong ones in all lock it for good."""

    table, key_column, failures_column = "envelopes", "id", "pin_failures"

    def __init__(self, envelope_id: str, name: str, sessions: SessionTable[Session]) -> None:
        self.key = self.envelope_id = envelope_id
        self.name = name
        self.sessions = sessions
        self.message_id = ""

    def failures_txn(self, txn: Txn, now: int) -> int | None:
        _lock_envelope(txn, self.envelope_id)
        row = txn.execute(
            "SELECT locked, pin_failures, message_id FROM envelopes WHERE id = ?",
            (self.envelope_id,),
        ).fetchone()
        if row is None or row[0] is not None:
            return None
        self.message_id = row[2]
        return int(row[1])

    def lock_txn(self, txn: Txn, failures: int, now: int) -> None:
        """Lock for good: end its codes, unsent SMS and sessions."""
        self.lock_row_txn(txn, failures, now)
        txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (self.envelope_id,))
        txn.execute("DELETE FROM sms_outbox WHERE envelope_id = ?", (self.envelope_id,))
        self.sessions.end_all_txn(txn, "envelope_id", self.envelope_id)

    def event_txn(self, txn: Txn, kind: str, detail: str, now: int) -> None:
        add_event_txn(txn, self.message_id, self.envelope_id, kind, detail, now)

    def wrong_detail(self, tries: int, failures: int) -> str:
        return f"try {tries} of this {self.name}, {failures} in all"

    def lock_detail(self, failures: int) -> str:
        return f"{failures} wrong {self.name}s"


class PortalStore:
    def __init__(self, db: Database, code_key: bytes | DerivedKeys) -> None:
        self.db = db
        keys = purpose_keys(code_key)
        self._codes = OneTimeCodes("access_codes", "envelope_id", keys, CODE_RULES)
        self._pins = OneTimeCodes(
            "access_codes", "envelope_id", keys, PIN_RULES, name="PIN", superseded=True
        )
        self._sessions = SessionTable(
            "sessions",
            ("envelope_id",),
            Session,
            read="s.envelope_id, e.message_id, e.state",
            join="JOIN envelopes e ON e.id = s.envelope_id",
        )

    # --- binding and sessions ---------------------------------------------------------

    async def open_envelope(self, envelope_id: str, browser: str, now: int) -> bool:
        """
        The first explicit open binds a letter to this browser. True when this browser
        may open it without a code (it is the bound one, or the letter was unbound).
        """
        browser_hash = hash_token(browser)

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

    async def create_session(
        self, envelope_id: str, now: int, how: str, replaces: str | None = None
    ) -> str:
        """
        A new session for the envelope; returns the cookie value (stored only hashed). With
        C{replaces}, that session ends in the same transaction (a new id at every sign-in).
        """
        session_id, csrf = new_session()

        def txn_(txn: Txn) -> None:
            self._sessions.create_txn(txn, session_id, csrf, (envelope_id,), now, replaces)
            add_event_txn(txn, _message_of(txn, envelope_id), envelope_id, "signed in", how, now)

        await self.db.run(txn_)
        return session_id

    async def session(self, session_id: str, now: int) -> Session | None:
        """The live session for a cookie, touched; None when unknown or timed out."""

        return await self.db.run(lambda txn: self._sessions.touch_txn(txn, session_id, now))

    async def end_session(self, session_id: str) -> None:
        await self.db.run(lambda txn: self._sessions.end_txn(txn, session_id))

    async def delete_stale_sessions(self, now: int) -> int:
        return await self.db.run(lambda txn: self._sessions.delete_stale_txn(txn, now))

    # --- one-time codes by e-mail ----------------------------------------------------------

    async def new_code(self, envelope_id: str, now: int) -> str | None:
        """A fresh 6-digit code (older ones stop working); None when refused (L{order_code})."""
        return (await self.order_code(envelope_id, now))[1]

    async def order_code(self, envelope_id: str, now: int) -> tuple[str, str | None]:
        """
        A L{CodeOrder} and, when SENT, a fresh 6-digit code to mail (older ones stop
        working); refused when the letter is locked or CODES_PER_HOUR / CODES_PER_DAY
        codes went out.
        """
        code = new_code()

        def txn_(txn: Txn) -> str:
            refusal, message_id = self._order_refusal_txn(txn, self._codes, envelope_id, now)
            if refusal is not None:
                return refusal
            self._codes.make_txn(txn, envelope_id, code, now)
            add_event_txn(
                txn, message_id, envelope_id, "code sent", "to the recipient's address", now
            )
            return CodeOrder.SENT

        state = await self.db.run(txn_)
        return state, code if state == CodeOrder.SENT else None

    async def check_code(
        self, envelope_id: str, code: str, now: int, lock_notice: NewMessage | None = None
    ) -> str:
        """
        Try a code: L{CodeState}.OK once, WRONG (tries left), EXPIRED (order a new one),
        or LOCKED. A wrong one counts against the code (CODE_TRIES) and the letter
        (LOCK_AFTER, with the PINs'); the wrong code that locks the letter stores
        C{lock_notice} (the mail telling the sender) in the same transaction.
        """
        return await self._check(self._codes, envelope_id, code, now, lock_notice)

    # --- SMS PINs for registered letters ---------------------------------------------------

    async def new_pin(
        self,
        envelope_id: str,
        number: str,
        text_for: Callable[[str], str],
        sealer: SmsText,
        now: int,
    ) -> str:
        """
        Make a new PIN (older ones stop working) and put its SMS, C{text_for(pin)}, in the
        outbox in the same transaction. A L{PinOrder}: SENT, or why not.
        """
        pin = new_code()
        text = text_for(pin)

        def txn_(txn: Txn) -> str:
            refusal, message_id = self._order_refusal_txn(txn, self._pins, envelope_id, now)
            if refusal is not None:
                return refusal
            # Older PINs stop working; kept apart to tell a late SMS from a wrong PIN.
            self._pins.make_txn(txn, envelope_id, pin, now)
            # An older PIN still waiting to go out no longer works: do not send it.
            txn.execute(
                "DELETE FROM sms_outbox WHERE envelope_id = ? AND "
                "(lease_until IS NULL OR lease_until < ?)",
                (envelope_id, now),
            )
            queue_sms_txn(
                txn,
                sealer,
                message_id=message_id,
                envelope_id=envelope_id,
                number=number,
                text=text,
                now=now,
                expires=now + PIN_RULES.lifetime,
            )
            add_event_txn(
                txn, message_id, envelope_id, "PIN ordered", f"to {mask_number(number)}", now
            )
            return PinOrder.SENT

        return await self.db.run(txn_)

    async def check_pin(
        self, envelope_id: str, pin: str, now: int, lock_notice: NewMessage | None
    ) -> str:
        """
        Try a PIN: a L{PinState}. A wrong one counts against the PIN (CODE_TRIES) and the
        letter (PIN_LOCK_AFTER); the wrong PIN that locks the letter stores C{lock_notice}
        (the mail telling the sender) in the same transaction. SUPERSEDED: a PIN that
        worked until a newer one was ordered (a late SMS, not a guess).
        """
        return await self._check(self._pins, envelope_id, pin, now, lock_notice)

    # --- shared by codes and PINs ----------------------------------------------------------

    def _order_refusal_txn(
        self, txn: Txn, codes: OneTimeCodes, envelope_id: str, now: int
    ) -> tuple[str | None, str]:
        """Why the letter may not have a new code or PIN now (None: it may), and its message."""
        _lock_envelope(txn, envelope_id)
        row = txn.execute(
            "SELECT locked, message_id FROM envelopes WHERE id = ?", (envelope_id,)
        ).fetchone()
        if row is None or is_locked(codes.rules, row[0], now):
            return CodeOrder.LOCKED, ""
        (this_hour, today), last = codes.sent_txn(
            txn, now, [q.seconds for q in LETTER_QUOTAS], "envelope_id", envelope_id
        )
        if too_soon(codes.rules, last, now):
            return PinOrder.TOO_SOON, row[1]
        quota = over_quota(list(zip(LETTER_QUOTAS, (this_hour, today), strict=True)))
        return (None if quota is None else quota.refusal), row[1]

    async def _check(
        self,
        codes: OneTimeCodes,
        envelope_id: str,
        code: str,
        now: int,
        lock_notice: NewMessage | None,
    ) -> str:
        candidates = codes.candidates(envelope_id, code)

        def txn_(txn: Txn) -> str:
            holder = LetterHolder(envelope_id, codes.name, self._sessions)
            return codes.check_txn(txn, holder, envelope_id, candidates, now, lock_notice)

        return await self.db.run(txn_)

    async def report_wrong_number(
        self, envelope_id: str, now: int, notice: NewMessage | None
    ) -> bool:
        """
        The recipient says the number is not theirs: stored once per letter, with
        C{notice} (the mail telling the sender). False when it was already reported.
        """

        def txn_(txn: Txn) -> bool:
            txn.execute(
                "UPDATE envelopes SET wrong_number = ? WHERE id = ? AND wrong_number IS NULL",
                (now, envelope_id),
            )
            if txn.rowcount != 1:
                return False
            add_event_txn(
                txn,
                _message_of(txn, envelope_id),
                envelope_id,
                "wrong number",
                "the recipient says the phone number is not theirs",
                now,
            )
            if notice is not None:
                insert_messages_txn(txn, [notice], now)
            return True

        return await self.db.run(txn_)


def _lock_envelope(txn: Txn, envelope_id: str) -> None:
    """
    Serialise the code and PIN checks of one envelope across cluster nodes: on PostgreSQL
    a second transaction waits here for the first to commit and then reads what it wrote
    (each statement sees what was committed before it). SQLite's writers are serial anyway.
    """
    txn.execute("UPDATE envelopes SET pin_failures = pin_failures WHERE id = ?", (envelope_id,))


def _message_of(txn: Txn, envelope_id: str) -> str:
    row = txn.execute("SELECT message_id FROM envelopes WHERE id = ?", (envelope_id,)).fetchone()
    return str(row[0]) if row is not None else ""
