# -*- test-case-name: tests.test_trace -*-
"""
Message trace: find a message by sender, recipient, time or id, and show each recipient's
level, state and event trail, never its content; and withdraw (revoke) a letter sent to
the wrong person. The C{secmail messages} command and the admin API both call
L{MessageTrace}.

A message is found through its trace (schema 9: the sender and every recipient, secure or
relayed, written with the message by L{secmail.store.rows.insert_traces_txn}) and its
events, which outlive the message: a letter deleted after C{retention_days} still shows
its trail until C{audit_days}. Subjects, bodies, attachment names and link tokens are not
in these tables, so no answer can hold them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from secmail.address import AddressError, parse_recipient
from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.rows import SHORT_ID_LENGTH, add_event_txn, drop_unused_message_txn, short_id


class TraceError(ValueError):
    """A search or a revoke that cannot be done: one line for a person (the API's 400)."""


class UnknownMessage(TraceError):
    """No message has the id given (the API's 404)."""


class LetterConflict(TraceError):
    """The letter is not in a state that allows it: withdrawn, locked, gone (the API's 409)."""


@dataclass(frozen=True)
class TraceEvent:
    at: int  # unix seconds
    kind: str
    detail: str


@dataclass(frozen=True)
class TracedRecipient:
    #: The real address (marking stripped), lower-cased.
    address: str
    #: letter or registered (kept in the portal); relay or compose (sent on in the clear).
    level: str
    #: Secure: notified, notification queued/deferred, opened, locked, notification returned,
    #: revoked, expired, deleted. Relayed: queued, deferred, quarantined, delivered, bounced,
    #: deleted by admin, unknown.
    state: str
    #: The secure envelope (the letter's link); None for a relayed recipient.
    envelope_id: str | None
    events: list[TraceEvent] = field(default_factory=list)

    @property
    def secure(self) -> bool:
        return self.envelope_id is not None


@dataclass(frozen=True)
class TracedMessage:
    id: str
    received: int  # unix seconds
    sender: str  # '' for <>
    kind: str  # mail, compose
    recipients: list[TracedRecipient]
    #: The message's own events (received, expired, ... ): those of no one recipient.
    events: list[TraceEvent] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return short_id(self.id)


#: Longest IN (...) list in one statement.
_BATCH = 500
#: A delivery's event detail (L{secmail.store.queue_rows._detail}): "KIND to A, B via ROUTE: ...".
_DELIVERY = re.compile(r"^([a-z][a-z-]*) to (.+?) via ")
#: Deliveries whose events belong to a secure recipient (the letter's mails to them) or to a
#: relayed one; those of other kinds (bounces and notices to the sender) are the message's.
_TO_SECURE = ("notification", "code")
_TO_RELAYED = ("relay", "compose")
#: A notification's envelope sender: the bounce address + the envelope id (VERP).
_VERP = re.compile(r"\+([0-9a-f]{32})@")
#: The last event that settles a relayed recipient's state, and the state it gives.
_RELAY_ENDS = {"delivered": "delivered", "bounced": "bounced", "deleted": "deleted by admin"}
_ID_HELP = "give the short id (10 hex digits), the full message id or an envelope id"


class MessageTrace:
    """
    Search and revoke over a L{Database}. C{extension} and C{default_country_code} (the
    C{[secure]} settings) read a marked recipient address as the intake does.
    """

    def __init__(
        self, db: Database, *, extension: str = ".s", default_country_code: str = "358"
    ) -> None:
        self.db = db
        self.extension = extension
        self.default_country_code = default_country_code

    # --- search ----------------------------------------------------------------------

    async def search(
        self,
        *,
        recipient: str | None = None,
        sender: str | None = None,
        since: int | None = None,
        until: int | None = None,
        message_id: str | None = None,
        limit: int = 100,
    ) -> list[TracedMessage]:
        """
        Messages that match every criterion given, newest first, at most C{limit}.
        C{recipient}: the real address or its marked form, exactly, ignoring case;
        C{sender}: the envelope sender, exactly, ignoring case ('' or '<>' for the null
        sender); C{since}/C{until}: received in that span (unix seconds, both included);
        C{message_id}: a full id, a short id (or a longer prefix) or an envelope id.

        @raise TraceError: a criterion is malformed, or a short id names more than one message.
        """
        if limit < 1:
            raise TraceError(f"limit must be at least 1, not {limit}")
        keys = None if recipient is None else self.recipient_keys(recipient)
        sender_key = None if sender is None else _sender_key(sender)
        if message_id is not None:
            check_id(message_id)

        def txn_(txn: Txn) -> list[TracedMessage]:
            where: list[str] = []
            params: list[Any] = []
            if message_id is not None:
                found, _ = resolve_txn(txn, message_id)
                if found is None:
                    return []
                where.append("t.message_id = ?")
                params.append(found)
            if sender_key is not None:
                where.append("t.sender = ?")
                params.append(sender_key)
            if since is not None:
                where.append("t.received >= ?")
                params.append(since)
            if until is not None:
                where.append("t.received <= ?")
                params.append(until)
            if keys is not None:
                where.append(
                    "t.message_id IN (SELECT message_id FROM trace_recipients "
                    "WHERE address = ? OR original = ?)"
                )
                params += keys
            rows = txn.execute(
                "SELECT t.message_id, t.received, t.sender, t.kind FROM traces t "
                + ("WHERE " + " AND ".join(where) + " " if where else "")
                + "ORDER BY t.received DESC, t.message_id LIMIT ?",
                (*params, limit),
            ).fetchall()
            return _load_txn(txn, rows)

        return await self.db.run(txn_)

    async def message(self, message_id: str) -> TracedMessage:
        """One message by a full, short or envelope id.

        @raise TraceError: no such message, or a short id names more than one.
        """
        found = await self.search(message_id=message_id, limit=1)
        if not found:
            raise UnknownMessage(f"no message has the id {message_id.strip()}")
        return found[0]

    def recipient_keys(self, text: str) -> tuple[str, str]:
        """The real address and the address as given, lower-cased, for a recipient search."""
        given = text.strip()
        try:
            real = parse_recipient(given, self.extension, self.default_country_code).address
        except AddressError as e:
            raise TraceError(f"recipient {given}: {_reason(e)}") from None
        return real.lower(), given.lower()

    # --- revoke ----------------------------------------------------------------------

    async def revoke(
        self,
        message_id: str,
        recipient: str | None = None,
        *,
        now: int,
        audit: AuditRow | None = None,
    ) -> list[str]:
        """
        Withdraw a letter: from C{recipient} (the real or marked address), or from the one
        recipient an envelope id names, or else from all its secure recipients. Each
        envelope is marked revoked (its link then answers that the sender withdrew it) with a
        C{revoked} event; its unsent notification, SMS and codes are removed and its
        sessions end. When no secure recipient can read the message any more, its content
        is deleted, at once or, while a relayed copy still waits in the queue, when that
        copy is delivered. With C{audit}, that admin's audit row (action C{revoked}) is
        written in the same transaction. Returns the envelope ids withdrawn now (none when
        all were withdrawn before).

        @raise TraceError: no such message, no such secure recipient of it, or none at all.
        """
        check_id(message_id)
        keys = None if recipient is None else self.recipient_keys(recipient)
        return await self.db.run(
            lambda txn: _revoke_txn(txn, message_id, keys, recipient, now, audit)
        )


# --- reading a message's trail ---------------------------------------------------------


def check_id(text: str) -> None:
    if not re.fullmatch(rf"[0-9a-f]{{{SHORT_ID_LENGTH},32}}", text.strip().lower()):
        raise TraceError(f"{text.strip()!r} is not a message id: {_ID_HELP}")


def resolve_txn(txn: Txn, text: str) -> tuple[str | None, str | None]:
    """The message a full, short or envelope id names, and the envelope id if it was one."""
    wanted = text.strip().lower()
    if len(wanted) == 32:
        row = txn.execute("SELECT 1 FROM traces WHERE message_id = ?", (wanted,)).fetchone()
        if row is not None:
            return wanted, None
        row = txn.execute(
            "SELECT message_id FROM trace_recipients WHERE envelope_id = ?", (wanted,)
        ).fetchone()
        return (None, None) if row is None else (row[0], wanted)
    # A prefix: the range keeps it to the primary key's index on both engines.
    rows = txn.execute(
        "SELECT message_id FROM traces WHERE message_id >= ? AND message_id < ? "
        "ORDER BY message_id LIMIT 2",
        (wanted, wanted + "g"),
    ).fetchall()
    if len(rows) > 1:
        raise TraceError(
            f"the id {wanted} names more than one message: give more digits or the full id"
        )
    return (rows[0][0], None) if rows else (None, None)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join('?' for _ in values)})"


def _batches(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


def _load_txn(txn: Txn, rows: Sequence[Sequence[Any]]) -> list[TracedMessage]:
    ids = [str(r[0]) for r in rows]
    recipients: dict[str, list[tuple[str, str, str | None]]] = {i: [] for i in ids}
    envelopes: dict[str, tuple[str, bool, bool]] = {}  # id -> state, opened, locked
    queued: dict[str, list[tuple[str, str, tuple[str, ...], str]]] = {i: [] for i in ids}
    events: dict[str, list[tuple[str | None, TraceEvent]]] = {i: [] for i in ids}
    for part in _batches(ids):
        for m, address, level, envelope_id in txn.execute(
            "SELECT message_id, address, level, envelope_id FROM trace_recipients WHERE "
            + _in("message_id", part)
            + " ORDER BY message_id, CASE WHEN envelope_id IS NULL THEN 1 ELSE 0 END, address",
            part,
        ).fetchall():
            recipients[m].append((address, level, envelope_id))
        for eid, state, opened, locked in txn.execute(
            "SELECT id, state, opened, locked FROM envelopes WHERE " + _in("message_id", part),
            part,
        ).fetchall():
            envelopes[eid] = (state, opened is not None, locked is not None)
        # The message's own queue rows (relays), and its notifications (about it).
        for m, about, kind, sender, rcpts, attempts, quarantined in txn.execute(
            "SELECT message_id, about, kind, sender, recipients, attempts, quarantined FROM queue "
            "WHERE " + _in("message_id", part) + " OR " + _in("about", part),
            (*part, *part),
        ).fetchall():
            state = (
                "quarantined" if quarantined is not None else "deferred" if attempts else "queued"
            )
            owner = m if m in queued else about
            queued[owner].append((kind, sender, tuple(json.loads(rcpts)), state))
        for m, envelope_id, at, kind, detail in txn.execute(
            "SELECT message_id, envelope_id, at, kind, detail FROM events WHERE "
            + _in("message_id", part)
            + " ORDER BY id",
            part,
        ).fetchall():
            events[m].append((envelope_id, TraceEvent(int(at), kind, _shown(kind, detail))))
    return [_message(r, recipients[r[0]], envelopes, queued[r[0]], events[r[0]]) for r in rows]


def _message(
    row: Sequence[Any],
    recipients: list[tuple[str, str, str | None]],
    envelopes: dict[str, tuple[str, bool, bool]],
    queued: list[tuple[str, str, tuple[str, ...], str]],
    events: list[tuple[str | None, TraceEvent]],
) -> TracedMessage:
    trails: list[list[TraceEvent]] = [[] for _ in recipients]
    by_envelope = {eid: n for n, (_, _, eid) in enumerate(recipients) if eid is not None}
    own: list[TraceEvent] = []
    for envelope_id, event in events:
        if envelope_id is not None and envelope_id in by_envelope:
            trails[by_envelope[envelope_id]].append(event)
            continue
        hits = _delivery_recipients(event, recipients)
        for n in hits:
            trails[n].append(event)
        if not hits:
            own.append(event)
    message_gone = any(e.kind == "expired" for e in own)
    traced = [
        TracedRecipient(
            address=address,
            level=level,
            state=_state(address, level, eid, envelopes, queued, trail, message_gone),
            envelope_id=eid,
            events=trail,
        )
        for (address, level, eid), trail in zip(recipients, trails, strict=True)
    ]
    return TracedMessage(
        id=row[0], received=int(row[1]), sender=row[2], kind=row[3], recipients=traced, events=own
    )


def _delivery_recipients(
    event: TraceEvent, recipients: list[tuple[str, str, str | None]]
) -> list[int]:
    """Which recipients an event of a delivery (a relay, a notification) is about."""
    match = _DELIVERY.match(event.detail)
    if match is None:
        return []
    kind = match.group(1)
    to = {a.strip().lower() for a in match.group(2).split(",")}
    return [
        n
        for n, (address, level, eid) in enumerate(recipients)
        if address in to
        and ((kind in _TO_SECURE and eid is not None) or (kind in _TO_RELAYED and level == kind))
    ]


def _state(
    address: str,
    level: str,
    envelope_id: str | None,
    envelopes: dict[str, tuple[str, bool, bool]],
    queued: list[tuple[str, str, tuple[str, ...], str]],
    trail: list[TraceEvent],
    message_gone: bool,
) -> str:
    if envelope_id is None:
        for kind, _, rcpts, state in queued:
            if kind == level and address in (r.lower() for r in rcpts):
                return state
        ends = [_RELAY_ENDS[e.kind] for e in trail if e.kind in _RELAY_ENDS]
        return ends[-1] if ends else "unknown"
    if envelope_id not in envelopes:
        if any(e.kind == "revoked" for e in trail):
            return "revoked"
        return "expired" if message_gone else "deleted"
    state, opened, locked = envelopes[envelope_id]
    if state != "notified":
        return str(state)  # revoked, notification returned
    if locked:
        return "locked"
    for kind, sender, _, queue_state in queued:
        verp = _VERP.search(sender)
        if kind == "notification" and verp is not None and verp.group(1) == envelope_id:
            return f"notification {queue_state}"
    return "opened" if opened else "notified"


# --- revoke ----------------------------------------------------------------------------


def _revoke_txn(
    txn: Txn,
    text: str,
    keys: tuple[str, str] | None,
    recipient: str | None,
    now: int,
    audit: AuditRow | None,
) -> list[str]:
    message_id, envelope_only = resolve_txn(txn, text)
    if message_id is None:
        raise UnknownMessage(f"no message has the id {text.strip()}")
    rows = txn.execute(
        "SELECT id, recipient, original, state FROM envelopes WHERE message_id = ? "
        "ORDER BY created, id",
        (message_id,),
    ).fetchall()
    if not rows:
        raise LetterConflict(
            f"message {short_id(message_id)} has no letter left to withdraw: it was relayed "
            "in the clear, or it has expired and been deleted"
        )
    if envelope_only is not None:
        rows = [r for r in rows if r[0] == envelope_only]
    if keys is not None:
        rows = [r for r in rows if r[1].lower() == keys[0] or r[2].lower() == keys[1]]
        if not rows:
            raise TraceError(
                f"{recipient} is not a secure recipient of message {short_id(message_id)}"
            )
    todo = [(str(r[0]), str(r[1])) for r in rows if r[3] != "revoked"]
    by = f" by {audit.admin}" if audit is not None else ""
    for envelope_id, address in todo:
        txn.execute("UPDATE envelopes SET state = 'revoked' WHERE id = ?", (envelope_id,))
        unsent = txn.execute(
            "SELECT id, message_id FROM queue WHERE about = ? AND kind = 'notification' "
            "AND sender LIKE ?",
            (message_id, f"%+{envelope_id}@%"),
        ).fetchall()
        for queue_id, notification in unsent:
            txn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))
            drop_unused_message_txn(txn, notification)
        txn.execute("DELETE FROM sms_outbox WHERE envelope_id = ?", (envelope_id,))
        txn.execute("UPDATE access_codes SET used = 1 WHERE envelope_id = ?", (envelope_id,))
        txn.execute("DELETE FROM sessions WHERE envelope_id = ?", (envelope_id,))
        detail = f"withdrawn from {address}{by}"
        if unsent:
            detail += "; its notification was not sent yet and never will be"
        add_event_txn(txn, message_id, envelope_id, "revoked", detail, now)
    if todo:
        if drop_unused_message_txn(txn, message_id):
            add_event_txn(
                txn, message_id, None, "content deleted", "withdrawn from every recipient", now
            )
        if audit is not None:
            withdrawn = ", ".join(address for _, address in todo)
            audit_txn(
                txn,
                replace(audit, action="revoked", after=f"message {message_id} from {withdrawn}"),
            )
    return [envelope_id for envelope_id, _ in todo]


#: A portal reply's event names its attachments last (L{secmail.web.reply.ReplyMail.summary}).
_ATTACHED = re.compile(r"(^|\s)Attached: .*\Z", re.DOTALL)


def _shown(kind: str, detail: str) -> str:
    """An event's detail as a trace shows it: without attachment names."""
    if kind in ("replied", "forwarded"):
        return _ATTACHED.sub(r"\1With attachments.", detail)
    if kind == "downloaded" and not detail.startswith("attachment "):
        return "an attachment"  # a row from before names were kept out of the trail
    return detail


def _sender_key(text: str) -> str:
    sender = text.strip().lower()
    return "" if sender == "<>" else sender.removeprefix("<").removesuffix(">")


def _reason(error: AddressError) -> str:
    return re.sub(r"^\d\.\d\.\d+ ", "", error.text)
