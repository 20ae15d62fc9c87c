"""
The durable outbound queue: relayed mail, notifications and bounces.

Due rows are leased from the database (so another node can take over a dead
node's work once the lease ends), handed to the sender, and then removed only
after the peer's 250 to the final dot. Temporary failures retry with doubling
backoff; a permanent failure, or the queue lifetime running out, produces one
RFC 3464 bounce to whoever is to be told (never to C{<>}).

A row whose message cannot be read (sealed under another master key, altered,
missing) is quarantined: kept, out of the queue until an admin retries it, its
sender told. It is found before the session, so it never delays the other rows,
and whatever fails while a row is read, sent or recorded ends that row in a
definite state (quarantined, or retried later), never leased until the lease ends.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmail import message_log
from secmail.config import QueueSettings, Retention, RouteSettings
from secmail.crypto import IntegrityError, UnknownKeyError
from secmail.dsn import FailedRecipient, bounce_message, build_dsn
from secmail.masking import mask_sms_recipients
from secmail.monitoring import counting
from secmail.scanning import ScanningService
from secmail.smtp.outgoing import (
    DeliveryOutcome,
    DeliveryResult,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from secmail.smtp.routing import session_key
from secmail.store.database import StoreUnavailable
from secmail.store.messages import MessageStore, NewMessage, QueueItem

log = Logger()

Content = Callable[[], AsyncIterator[bytes]]

#: How long a node may hold a row before another may take it over.
LEASE_SECONDS = 1800

#: How long shutdown waits for deliveries in flight.
STOP_GRACE_SECONDS = 10

#: The most rows sent over one SMTP session.
SESSION_ROWS = 50

#: The RFC 3463 status of a recipient whose message the gateway cannot read: our own failure.
DAMAGED_STATUS = "5.3.0"


class Sender(Protocol):
    """Delivers queue rows' messages over SMTP; see L{secmail.smtp.routing}."""

    async def send(self, item: QueueItem, content: Content) -> DeliveryResult:
        """Send one row; raise the L{secmail.smtp.outgoing.DeliveryError} that failed all of it."""

    async def send_many(
        self, items: Sequence[QueueItem], contents: Sequence[Content]
    ) -> list[DeliveryOutcome]:
        """Send rows that share a L{session_key} over one session; one outcome per row."""


def session_groups(items: Sequence[QueueItem], limit: int) -> list[list[QueueItem]]:
    """Split claimed rows into groups that can go over one session, at most C{limit} each.

    Groups keep the order in which their first rows came, and rows keep theirs.
    """
    open_groups: dict[tuple[str, str], list[QueueItem]] = {}
    groups: list[list[QueueItem]] = []
    for item in items:
        key = session_key(item)
        group = open_groups.get(key)
        if group is None or len(group) >= limit:
            group = open_groups[key] = []
            groups.append(group)
        group.append(item)
    return groups


def unreadable_reason(error: BaseException) -> str | None:
    """Why a message cannot be read, when C{error} says it is damaged; None for other errors.

    Damage does not mend itself (another try fails the same way), so the row is quarantined;
    any other error, such as the database being away for a while, is worth another try.
    """
    if isinstance(error, IntegrityError | UnknownKeyError | LookupError):
        return f"the message cannot be read: {error}"
    return None


def backoff(queue: QueueSettings, attempts: int) -> int:
    """Seconds to wait after the C{attempts}-th failure: initial, doubling, capped."""
    delay = queue.retry_initial * (2 ** max(0, attempts))
    return int(min(delay, queue.retry_max))


_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def enhanced_status(reply: str, default: str) -> str:
    """The RFC 3463 status in a reply text such as C{"550 5.1.1 no such user"}."""
    for word in reply.split():
        # Only what build_dsn accepts: a look-alike (24.1.1, 5.1234.1) would make the bounce fail.
        if _STATUS.fullmatch(word):
            return word
    return default


class OutboundQueue(ScanningService):
    name = "outbound-queue"
    what = "the queue"
    stop_grace = STOP_GRACE_SECONDS

    def __init__(
        self,
        queue: QueueSettings,
        hostname: str,
        routes: RouteSettings,
        store: MessageStore,
        sender: Sender,
        clock: IReactorTime,
        node_id: str,
    ) -> None:
        """
        C{hostname} is the gateway's, which signs its bounces; they go out on C{routes}.
        """
        super().__init__(clock)
        self.queue = queue
        self.hostname = hostname
        self.routes = routes
        self.store = store
        self.sender = sender
        self.node_id = node_id
        self._in_flight: set[int] = set()
        #: Rows this node has quarantined since it started (for metrics).
        self.quarantined_count = 0
        self._wanted = False  # between start_after_restart and stop_scanning

    def startService(self) -> None:
        super().startService()
        self.wake()

    def poll_interval(self) -> float:
        return self.queue.poll_interval

    def room(self) -> int:
        return self.queue.concurrency - len(self._in_flight)

    async def claim_and_start(self, room: int) -> int:
        items = await self.store.claim_due(self.node_id, self.now(), LEASE_SECONDS, room)
        for group in session_groups(items, SESSION_ROWS):
            ids = [item.id for item in group]
            self._in_flight.update(ids)
            self.run(
                self.deliver_group(group),
                f"Delivery of queue rows {ids}",
                partial(self._in_flight.difference_update, ids),
            )
        return len(items)

    async def release_own_leases(self) -> None:
        """After a restart, take back the rows this node had leased when it stopped."""
        await self.store.release_queue_leases(self.node_id)

    async def start_after_restart(self) -> None:
        """Take back this node's leases from before a restart, then start scanning.

        It scans even when the leases could not be taken back (they run out in time), but
        not when L{stop_scanning} came meanwhile.
        """
        self._wanted = True
        try:
            await self.release_own_leases()
        finally:
            if self._wanted:
                self.startService()

    def stop_scanning(self) -> Deferred[None] | None:
        """Stop scanning, waiting for the deliveries under way (see L{stopService})."""
        self._wanted = False
        return self.stopService() if self.running else None

    async def deliver(self, item: QueueItem) -> None:
        """Try one row once and record what happened."""
        await self.deliver_group([item])

    async def deliver_group(self, items: Sequence[QueueItem]) -> None:
        """Try rows that share a L{session_key} once, over one session, and record each outcome.

        Rows whose message cannot be read are set aside first, so the session carries only
        rows it can finish. The outcomes are recorded all at once, so the database commits
        them together. A lone row goes through C{send}, the sender's one-row form.
        """
        items = await self._readable(items)
        if not items:
            return
        damaged: dict[int, str] = {}
        contents = [self._content(item, damaged) for item in items]
        outcomes: list[DeliveryOutcome | Exception]
        if len(items) == 1:
            try:
                outcomes = [await self.sender.send(items[0], contents[0])]
            except Exception as e:
                outcomes = [e]
        else:
            try:
                outcomes = list(await self.sender.send_many(items, contents))
                if len(outcomes) != len(items):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(items)} rows")
            except Exception as e:
                ids = [item.id for item in items]
                log.failure("Queue rows {ids}: unexpected error; will retry", ids=ids)
                error = f"internal error: {type(e).__name__}"
                await _together(
                    [(i, self._settle(i, self._failed_session(i, error, damaged))) for i in items]
                )
                return
        pairs = zip(items, outcomes, strict=True)
        await _together(
            [(item, self._settle(item, self._record(item, o, damaged))) for item, o in pairs]
        )

    async def _readable(self, items: Sequence[QueueItem]) -> list[QueueItem]:
        """The rows whose message can be read; the others are quarantined or retried later."""
        checks = await DeferredList(
            [Deferred.fromCoroutine(self.store.unreadable(i.message_id)) for i in items],
            consumeErrors=True,
        )
        readable: list[QueueItem] = []
        work: list[tuple[QueueItem, Coroutine[Any, Any, None]]] = []
        for item, (_, value) in zip(items, checks, strict=True):
            if isinstance(value, Failure):
                log.failure("Queue row {id}: checking its message failed", value, id=item.id)
                error = f"internal error: {type(value.value).__name__} while reading the message"
                retry = self._retry(item, list(item.recipients), error)
                work.append((item, self._settle(item, retry)))
            elif value is None:
                readable.append(item)
            else:
                reason = f"the message cannot be read: {value}"
                work.append((item, self._quarantine(item, list(item.recipients), reason)))
        await _together(work)
        return readable

    def _content(self, item: QueueItem, damaged: dict[int, str]) -> Content:
        """The row's message for the sender; a read that finds it damaged is noted in C{damaged}."""

        async def read() -> AsyncIterator[bytes]:
            try:
                async for chunk in self.store.read(item.message_id):
                    yield chunk
            except Exception as e:
                reason = unreadable_reason(e)
                if reason is not None:
                    damaged[item.id] = reason
                raise

        return read

    async def _settle(self, item: QueueItem, work: Coroutine[Any, Any, None]) -> None:
        """Run C{work}, which records the row's outcome; if it fails, quarantine the row.

        Only a database that cannot be reached leaves the row leased: its lease then ends, and
        this or another node tries it again.
        """
        try:
            await work
        except StoreUnavailable:
            raise
        except Exception as e:
            log.failure("Queue row {id}: recording its outcome failed", id=item.id)
            reason = f"recording its outcome failed: {type(e).__name__}"
            await self._quarantine(item, list(item.recipients), reason, unreadable=False)

    async def _failed_session(self, item: QueueItem, error: str, damaged: dict[int, str]) -> None:
        """The sender failed a whole session unexpectedly: retry the row, unless it is damaged."""
        if item.id in damaged:
            await self._quarantine(item, list(item.recipients), damaged[item.id])
        else:
            await self._retry(item, list(item.recipients), error)

    async def _record(
        self, item: QueueItem, outcome: DeliveryOutcome | Exception, damaged: dict[int, str]
    ) -> None:
        """Record one row's outcome: delivered, bounced, deferred, quarantined, or a mix."""
        if item.id in damaged:
            # The read failed while the message was sent: it was not ended with a dot.
            await self._quarantine(item, list(item.recipients), damaged[item.id])
            return
        if isinstance(outcome, PermanentDeliveryError):
            failed = {r: outcome.recipients.get(r, str(outcome)) for r in item.recipients}
            await self._bounce(item, failed, remaining=())
            return
        if isinstance(outcome, TemporaryDeliveryError):
            await self._retry(item, list(item.recipients), str(outcome))
            return
        if isinstance(outcome, Exception):
            failure = Failure(outcome)
            log.failure("Queue row {id}: unexpected error; will retry", failure, id=item.id)
            error = f"internal error: {type(outcome).__name__}"
            await self._retry(item, list(item.recipients), error)
            return
        result = outcome
        now = self.now()
        relay, reply = message_log.split_reply(result.reply)
        for recipient in result.accepted:
            self._log_status(item, recipient, "sent", result.reply, relay, reply)
        if result.accepted and (result.permanent or result.temporary):
            await self.store.add_event(
                item.about,
                None,
                "delivered",
                f"{item.kind} to {', '.join(result.accepted)} via {item.route}",
                now,
            )
        if result.permanent:
            remaining = list(result.temporary)
            if not await self._bounce(item, dict(result.permanent), remaining=remaining):
                return
        if result.temporary:
            error = "; ".join(result.temporary.values())
            await self._retry(item, list(result.temporary), error, result.temporary)
        elif not result.permanent:
            await self.store.delivered(item, result.accepted, "250", now)

    def _log_status(
        self,
        item: QueueItem,
        recipient: str,
        status: str,
        text: str,
        relay: str | None = None,
        reply: str | None = None,
    ) -> None:
        """The recipient's line: its status, the host that answered and what it said."""
        if relay is None or reply is None:
            relay, reply = message_log.split_reply(text)
        message_log.delivery_status(
            message_id=item.message_id,
            about=item.about,
            kind=item.kind,
            recipient=recipient,
            relay=relay,
            delay=self.clock.seconds() - item.created,
            status=status,
            reply=reply,
        )

    async def _retry(
        self,
        item: QueueItem,
        recipients: list[str],
        error: str,
        texts: dict[str, str] | None = None,
    ) -> None:
        """Try C{recipients} again later; C{texts} has each one's own reply, if known."""
        now = self.now()
        if now - item.created >= self.queue.lifetime:
            days = self.queue.lifetime / 86400
            reason = f"gave up after {days:g} days in the queue; last error: {error}"
            await self._bounce(item, {r: reason for r in recipients}, remaining=())
            return
        delay = backoff(self.queue, item.attempts)
        for recipient in recipients:
            self._log_status(item, recipient, "deferred", (texts or {}).get(recipient, error))
        await self.store.defer(item, recipients, now + delay, error, now)

    async def _bounce(
        self, item: QueueItem, failed: dict[str, str], remaining: list[str] | tuple[()]
    ) -> bool:
        """Bounce C{failed}; False when the bounce could not be built and the row is quarantined."""
        now = self.now()
        for recipient, text in failed.items():
            self._log_status(item, recipient, "bounced", text)
        bounce = None
        if item.notify:
            try:
                bounce = await self._make_bounce(item, failed)
            except StoreUnavailable:
                raise
            except Exception as e:
                reason = unreadable_reason(e)
                unreadable = reason is not None
                if reason is None:
                    log.failure("Queue row {id}: building its bounce failed", id=item.id)
                    reason = f"building its bounce failed: {type(e).__name__}"
                recipients = [*failed, *remaining]
                await self._quarantine(item, recipients, reason, failed, unreadable=unreadable)
                return False
        else:
            log.warn(
                "{message_id}: queue row {id}: {kind} to {rcpts} failed and nobody is to be told"
                " (null sender)",
                message_id=message_log.line_id(item.about or item.message_id),
                id=item.id,
                kind=item.kind,
                rcpts=", ".join(
                    mask_sms_recipients(list(failed))[0] if item.kind == "sms" else failed
                ),
            )
        error = "; ".join(sorted(set(failed.values())))
        await self.store.fail(item, list(failed), error, bounce, now, remaining=list(remaining))
        if bounce is not None:
            counting.count("bounces")
        return True

    async def _quarantine(
        self,
        item: QueueItem,
        recipients: list[str],
        reason: str,
        diagnostics: dict[str, str] | None = None,
        *,
        unreadable: bool = True,
    ) -> None:
        """Set the row aside for C{recipients} with C{reason}; tell its sender it is damaged.

        C{diagnostics} holds what a peer already said about some recipients (a 550). A row set
        aside for another error (not C{unreadable}) bounces nobody: it may even have been
        delivered, so the admin looks at it (C{secmail queue list}) and retries or deletes it.
        """
        self.quarantined_count += 1
        counting.count("deliveries", item.kind, "quarantined")
        log.warn(
            "{message_id}: queue row {id}: quarantined ({kind}): {reason}; it stays out of the"
            " queue until `secmail queue retry {id}` (or `secmail queue delete {id}`)",
            message_id=message_log.line_id(item.about or item.message_id),
            id=item.id,
            kind=item.kind,
            reason=reason,
        )
        bounce = None
        if item.notify and unreadable:
            try:
                bounce = self._damaged_bounce(item, recipients, diagnostics or {})
            except Exception:
                log.failure("Queue row {id}: the bounce for its quarantine failed", id=item.id)
        await self.store.quarantine(item, recipients, reason, bounce, self.now())
        if bounce is not None:
            counting.count("bounces")

    def _damaged_bounce(
        self, item: QueueItem, recipients: list[str], diagnostics: dict[str, str]
    ) -> NewMessage | None:
        """The bounce for a row set aside: it quotes nothing of the message (we cannot read it)."""
        damaged = "the message is damaged: the gateway cannot read it"
        if item.kind == "notification":
            reason = (
                "This was the notification of a secure message from you. It could not be sent, "
                "and the gateway cannot read it any more (it is damaged), so the recipients "
                "below were not told that your message is waiting for them. It has been set "
                "aside for the administrator."
            )
        else:
            reason = (
                "Your message could not be delivered to the recipients below, and the gateway "
                "cannot read it any more (it is damaged). It has been set aside for the "
                "administrator."
            )
        failed = []
        for r in recipients:
            said = diagnostics.get(r)
            status = enhanced_status(said, DAMAGED_STATUS) if said else DAMAGED_STATUS
            if not status.startswith("5"):
                status = DAMAGED_STATUS
            failed.append(FailedRecipient(address=r, status=status, diagnostic=said or damaged))
        return self._bounce_for(item, failed, None, reason)

    async def _make_bounce(self, item: QueueItem, failed: dict[str, str]) -> NewMessage | None:
        head = await self.store.read_all(item.message_id, limit=64 * 1024)
        end = head.find(b"\r\n\r\n")
        headers = head[: end + 2] if end >= 0 else head
        if item.kind == "notification":
            reason = (
                "This was the notification of a secure message from you: the recipients "
                "below were not told that it is waiting for them."
            )
        elif item.attempts:
            reason = f"Delivery was tried {item.attempts + 1} times."
        else:
            reason = ""
        recipients = [
            FailedRecipient(address=r, status=enhanced_status(text, "5.0.0"), diagnostic=text)
            for r, text in failed.items()
        ]
        return self._bounce_for(item, recipients, headers, reason)

    def _bounce_for(
        self,
        item: QueueItem,
        failed: list[FailedRecipient],
        headers: bytes | None,
        reason: str,
    ) -> NewMessage | None:
        """The RFC 3464 bounce to a row's sender, sealed and queued like any mail we write."""
        hostname = self.hostname
        content = build_dsn(
            reporting_mta=hostname,
            original_sender=item.notify,
            original_envelope_id=None,
            failed=failed,
            original_headers=headers,
            arrival_date=datetime.fromtimestamp(item.created, UTC),
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
            from_address=f"MAILER-DAEMON@{hostname}",
            reason=reason,
        )
        if content is None:
            return None
        return bounce_message(self.routes, self.store.master, item.notify, content, item.about)


async def _together(work: list[tuple[QueueItem, Coroutine[Any, Any, None]]]) -> None:
    """Run each row's recording at once, so that the database commits them together.

    One that fails is logged and does not keep the others from being recorded.
    """
    tasks = [Deferred.fromCoroutine(coroutine) for _, coroutine in work]
    results = await DeferredList(tasks, consumeErrors=True)
    for (item, _), (ok, value) in zip(work, results, strict=True):
        if not ok:
            log.failure("Recording the outcome for queue row {id} failed", value, id=item.id)


class RetentionJob:
    """
    Deletes secure messages older than C{retention_days} and audit events older than
    C{audit_days}; run by a TimerService.
    """

    def __init__(self, retention: Retention, store: MessageStore, clock: IReactorTime) -> None:
        self.retention = retention
        self.store = store
        self.clock = clock

    def run(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: log.failure("Retention run failed; will try again", f)
        )

    async def _run(self) -> None:
        now = int(self.clock.seconds())
        cutoff = now - self.retention.retention_days * 86400
        deleted = await self.store.delete_expired(cutoff, now)
        if deleted:
            log.info("Retention: deleted {n} expired message(s)", n=deleted)
        pruned = await self.store.delete_old_events(now - self.retention.audit_days * 86400)
        if pruned:
            log.info("Retention: deleted {n} audit event(s) past audit_days", n=pruned)
