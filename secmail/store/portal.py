"""
The portal's durable state: which browser a letter is bound to, sessions and e-mail codes.

Sessions live in the database so that they survive restarts and work on every
node of a cluster. Only hashes of cookies and codes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from secmail.crypto import DerivedKeys, purpose_keys
from secmail.masking import mask_number
from secmail.store.database import Database, Txn
from secmail.store.messages import NewMessage, add_event_txn, insert_messages_txn
from secmail.store.sms import SmsText, queue_sms_txn

#: Sessions end after this long without a request, and this long after they began.
SESSION_IDLE = 30 * 60
SESSION_MAX = 12 * 3600

#: E-mail codes: how long one is good for, how many tries it allows, how many an hour.
CODE_LIFETIME = 10 * 60
CODE_TRIES = 5
CODES_PER_HOUR = 5
#: ... and how many a day, per letter (else 5 an hour would allow 120 a day).
CODES_PER_DAY = 10

#: SMS PINs for registered letters: the same lifetime, tries, hourly and daily limits as
#: e-mail codes, and at most one a minute.
PIN_INTERVAL = 60
#: A letter locks for good after this many wrong codes or PINs in all (NIST SP 800-63B
#: 5.2.2: a limit on failed attempts for any one-time secret), and its sender is told.
LOCK_AFTER = 20
PIN_LOCK_AFTER = LOCK_AFTER
DAY = 24 * 3600


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
    LOCKED = "locked"  # locked for codes before this try
    LOCKED_NOW = "locked now"  # this wrong code locked it


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


class PinState:
    OK = "ok"
    WRONG = "wrong"
    EXPIRED = "expired"  # none valid: expired, used up or never sent
    LOCKED = "locked"  # locked before this try
    LOCKED_NOW = "locked now"  # this wrong PIN locked the letter
    SUPERSEDED = "superseded"  # a PIN that worked until a newer one was ordered


class PortalStore:
    def __init__(self, db: Database, code_key: bytes | DerivedKeys) -> None:
        self.db = db
        self._code_keys = purpose_keys(code_key)

    def _code_hash(self, envelope_id: str, code: str) -> tuple[str, str]:
        """The code's HMAC under the sealing key, and that key's id."""
        key_id, key = self._code_keys.current()
        return key_id, _hmac(key, envelope_id, code)

    def _candidates(self, envelope_id: str, code: str) -> list[str]:
        """The code's HMAC under every key of the ring: a code outlives a rotation."""
        return [_hmac(key, envelope_id, code) for _, key in self._code_keys.all()]

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
        """A fresh 6-digit code (older ones stop working); None when refused (L{order_code})."""
        return (await self.order_code(envelope_id, now))[1]

    async def order_code(self, envelope_id: str, now: int) -> tuple[str, str | None]:
        """
        A L{CodeOrder} and, when SENT, a fresh 6-digit code to mail (older ones stop
        working); refused when the letter is locked or CODES_PER_HOUR / CODES_PER_DAY
        codes went out.
        """
        code = f"{secrets.randbelow(10**6):06d}"

        def txn_(txn: Txn) -> str:
            _lock_envelope(txn, envelope_id)
            row = txn.execute(
                "SELECT locked, message_id FROM envelopes WHERE id = ?", (envelope_id,)
            ).fetchone()
            if row is None or row[0] is not None:
                return CodeOrder.LOCKED
            today, this_hour, _last = _codes_sent(txn, envelope_id, now)
            if this_hour >= CODES_PER_HOUR:
                return CodeOrder.TOO_MANY
            if today >= CODES_PER_DAY:
                return CodeOrder.TOO_MANY_TODAY
            txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,))
            _insert_code_txn(txn, envelope_id, self._code_hash(envelope_id, code), now)
            add_event_txn(txn, row[1], envelope_id, "code sent", "to the recipient's address", now)
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
        candidates = self._candidates(envelope_id, code.strip())

        def txn_(txn: Txn) -> str:
            _lock_envelope(txn, envelope_id)
            envelope = txn.execute(
                "SELECT locked, pin_failures, message_id FROM envelopes WHERE id = ?",
                (envelope_id,),
            ).fetchone()
            if envelope is None or envelope[0] is not None:
                return CodeState.LOCKED
            failures, message_id = int(envelope[1]), envelope[2]
            row = txn.execute(
                "SELECT code_hash, expires, tries FROM access_codes "
                "WHERE envelope_id = ? AND used = 0 ORDER BY created DESC LIMIT 1",
                (envelope_id,),
            ).fetchone()
            if row is None or int(row[1]) < now or int(row[2]) >= CODE_TRIES:
                add_event_txn(txn, message_id, envelope_id, "code refused", "no valid code", now)
                return CodeState.EXPIRED
            if matches_any(row[0], candidates):
                txn.execute(
                    "UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,)
                )
                add_event_txn(txn, message_id, envelope_id, "code accepted", "", now)
                return CodeState.OK
            failures += 1
            txn.execute(
                "UPDATE access_codes SET tries = tries + 1 WHERE envelope_id = ? AND used = 0 "
                "AND code_hash = ?",
                (envelope_id, row[0]),
            )
            add_event_txn(
                txn,
                message_id,
                envelope_id,
                "code wrong",
                f"try {int(row[2]) + 1} of this code, {failures} in all",
                now,
            )
            if _count_failure_txn(
                txn, envelope_id, message_id, failures, "wrong codes", lock_notice, now
            ):
                return CodeState.LOCKED_NOW
            return CodeState.WRONG if int(row[2]) + 1 < CODE_TRIES else CodeState.EXPIRED

        return await self.db.run(txn_)

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
        pin = f"{secrets.randbelow(10**6):06d}"
        text = text_for(pin)

        def txn_(txn: Txn) -> str:
            _lock_envelope(txn, envelope_id)
            row = txn.execute(
                "SELECT locked, message_id FROM envelopes WHERE id = ?", (envelope_id,)
            ).fetchone()
            if row is None or row[0] is not None:
                return PinOrder.LOCKED
            message_id = row[1]
            today, this_hour, last = _codes_sent(txn, envelope_id, now)
            if last is not None and last > now - PIN_INTERVAL:
                return PinOrder.TOO_SOON
            if this_hour >= CODES_PER_HOUR:
                return PinOrder.TOO_MANY
            if today >= CODES_PER_DAY:
                return PinOrder.TOO_MANY_TODAY
            # Older PINs stop working; kept apart (used = 2) to tell a late SMS from a wrong PIN.
            txn.execute(
                "UPDATE access_codes SET used = 2 WHERE envelope_id = ? AND used = 0",
                (envelope_id,),
            )
            _insert_code_txn(txn, envelope_id, self._code_hash(envelope_id, pin), now)
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
                expires=now + CODE_LIFETIME,
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
        (the mail telling the sender) in the same transaction.
        """
        candidates = self._candidates(envelope_id, pin.strip())

        def txn_(txn: Txn) -> str:
            _lock_envelope(txn, envelope_id)
            envelope = txn.execute(
                "SELECT locked, pin_failures, message_id FROM envelopes WHERE id = ?",
                (envelope_id,),
            ).fetchone()
            if envelope is None or envelope[0] is not None:
                return PinState.LOCKED
            failures, message_id = int(envelope[1]), envelope[2]
            row = txn.execute(
                "SELECT code_hash, expires, tries FROM access_codes "
                "WHERE envelope_id = ? AND used = 0 ORDER BY created DESC LIMIT 1",
                (envelope_id,),
            ).fetchone()
            if row is None or int(row[1]) < now or int(row[2]) >= CODE_TRIES:
                add_event_txn(txn, message_id, envelope_id, "PIN refused", "no valid PIN", now)
                return PinState.EXPIRED
            if matches_any(row[0], candidates):
                txn.execute(
                    "UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,)
                )
                add_event_txn(txn, message_id, envelope_id, "PIN accepted", "", now)
                return PinState.OK
            marks = ", ".join("?" for _ in candidates)
            superseded = txn.execute(
                "SELECT 1 FROM access_codes WHERE envelope_id = ? AND used = 2 "
                f"AND code_hash IN ({marks}) AND expires >= ?",
                (envelope_id, *candidates, now),
            ).fetchone()
            if superseded is not None:
                # An SMS that arrived after a newer PIN was ordered: not a wrong guess.
                add_event_txn(txn, message_id, envelope_id, "PIN refused", "an older PIN", now)
                return PinState.SUPERSEDED
            failures += 1
            txn.execute(
                "UPDATE access_codes SET tries = tries + 1 WHERE envelope_id = ? AND used = 0 "
                "AND code_hash = ?",
                (envelope_id, row[0]),
            )
            add_event_txn(
                txn,
                message_id,
                envelope_id,
                "PIN wrong",
                f"try {int(row[2]) + 1} of this PIN, {failures} in all",
                now,
            )
            if _count_failure_txn(
                txn, envelope_id, message_id, failures, "wrong PINs", lock_notice, now
            ):
                return PinState.LOCKED_NOW
            return PinState.WRONG if int(row[2]) + 1 < CODE_TRIES else PinState.EXPIRED

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


def _codes_sent(txn: Txn, envelope_id: str, now: int) -> tuple[int, int, int | None]:
    """Codes or PINs made for a letter in the last day, in the last hour, and the newest's time."""
    row = txn.execute(
        "SELECT COUNT(*), SUM(CASE WHEN created > ? THEN 1 ELSE 0 END), MAX(created) "
        "FROM access_codes WHERE envelope_id = ? AND created > ?",
        (now - 3600, envelope_id, now - DAY),
    ).fetchone()
    return int(row[0]), int(row[1] or 0), None if row[2] is None else int(row[2])


def _count_failure_txn(
    txn: Txn,
    envelope_id: str,
    message_id: str,
    failures: int,
    what: str,
    lock_notice: NewMessage | None,
    now: int,
) -> bool:
    """
    Store a letter's count of wrong codes and PINs; at LOCK_AFTER lock it for good, end
    its sessions and codes, and store C{lock_notice} (to the sender) in the same
    transaction. True when this failure locked it.
    """
    if failures < LOCK_AFTER:
        txn.execute("UPDATE envelopes SET pin_failures = ? WHERE id = ?", (failures, envelope_id))
        return False
    txn.execute(
        "UPDATE envelopes SET pin_failures = ?, locked = ? WHERE id = ?",
        (failures, now, envelope_id),
    )
    txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,))
    txn.execute("DELETE FROM sms_outbox WHERE envelope_id = ?", (envelope_id,))
    txn.execute("DELETE FROM sessions WHERE envelope_id = ?", (envelope_id,))
    add_event_txn(txn, message_id, envelope_id, "locked", f"{failures} {what}", now)
    if lock_notice is not None:
        insert_messages_txn(txn, [lock_notice], now)
    return True


def _hmac(key: bytes, envelope_id: str, code: str) -> str:
    return hmac.new(key, f"{envelope_id}:{code}".encode(), "sha256").hexdigest()


def matches_any(stored: str, candidates: list[str]) -> bool:
    """Whether C{stored} is one of the candidates; every one compared, in constant time."""
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(stored, candidate)
    return found


def _insert_code_txn(txn: Txn, envelope_id: str, code_hash: tuple[str, str], now: int) -> None:
    key_id, digest_ = code_hash
    txn.execute(
        "INSERT INTO access_codes (envelope_id, code_hash, key_id, created, expires) "
        "VALUES (?, ?, ?, ?, ?)",
        (envelope_id, digest_, key_id, now, now + CODE_LIFETIME),
    )


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
