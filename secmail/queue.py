"""
The durable outbound queue: relayed mail, notifications and bounces.

Due rows are leased from the database (so another node can take over a dead
node's work once the lease ends), handed to the sender, and then removed only
after the peer's 250 to the final dot. Temporary failures retry with doubling
backoff; a permanent failure, or the queue lifetime running out, produces one
RFC 3464 bounce to whoever is to be told (never to C{<>}).
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

from secmail.config import Settings
from secmail.crypto import MasterKey
from secmail.dsn import FailedRecipient, build_dsn
from secmail.letters import system_mail
from secmail.scanning import ScanningService
from secmail.sms.http import mask_sms_recipients
from secmail.smtp.client import (
    DeliveryOutcome,
    DeliveryResult,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from secmail.smtp.routing import session_key
from secmail.store.messages import MessageStore, NewMessage, QueueItem, release_leases_txn

log = Logger()

Content = Callable[[], AsyncIterator[bytes]]

#: How long a node may hold a row before another may take it over.
LEASE_SECONDS = 1800

#: How long shutdown waits for deliveries in flight.
STOP_GRACE_SECONDS = 10

#: The most rows sent over one SMTP session.
SESSION_ROWS = 50


class Sender(Protocol):
    """Delivers queue rows' messages over SMTP; see L{secmail.smtp.routing}."""

    async def send(self, item: QueueItem, content: Content) -> DeliveryResult:
        """Send one row; raise the L{secmail.smtp.client.DeliveryError} that failed all of it."""

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


def backoff(settings: Settings, attempts: int) -> int:
    """Seconds to wait after the C{attempts}-th failure: initial, doubling, capped."""
    delay = settings.queue.retry_initial * (2 ** max(0, attempts))
    return int(min(delay, settings.queue.retry_max))


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
        settings: Settings,
        store: MessageStore,
        sender: Sender,
        clock: IReactorTime,
        node_id: str,
    ) -> None:
        super().__init__(clock)
        self.settings = settings
        self.store = store
        self.sender = sender
        self.node_id = node_id
        self._in_flight: set[int] = set()

    def startService(self) -> None:
        super().startService()
        self.wake()

    def poll_interval(self) -> float:
        return self.settings.queue.poll_interval

    def room(self) -> int:
        return self.settings.queue.concurrency - len(self._in_flight)

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
        await self.store.db.run(lambda txn: release_leases_txn(txn, "queue", self.node_id))

    async def deliver(self, item: QueueItem) -> None:
        """Try one row once and record what happened."""
        try:
            outcome: DeliveryOutcome | Exception = await self.sender.send(item, self._content(item))
        except Exception as e:
            outcome = e
        await self._record(item, outcome)

    async def deliver_group(self, items: Sequence[QueueItem]) -> None:
        """Try rows that share a L{session_key} once, over one session, and record each outcome.

        The outcomes are recorded all at once, so the database commits them together. A
        lone row goes through L{deliver}: C{send} is the sender's one-row form.
        """
        if len(items) == 1:
            await self.deliver(items[0])
            return
        try:
            contents = [self._content(item) for item in items]
            outcomes = list(await self.sender.send_many(items, contents))
            if len(outcomes) != len(items):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(items)} rows")
        except Exception as e:
            ids = [item.id for item in items]
            log.failure("Queue rows {ids}: unexpected error; will retry", ids=ids)
            error = f"internal error: {type(e).__name__}"
            await _together([(i, self._retry(i, list(i.recipients), error)) for i in items])
            return
        pairs = zip(items, outcomes, strict=True)
        await _together([(item, self._record(item, outcome)) for item, outcome in pairs])

    def _content(self, item: QueueItem) -> Content:
        return partial(self.store.read, item.message_id)

    async def _record(self, item: QueueItem, outcome: DeliveryOutcome | Exception) -> None:
        """Record one row's outcome: delivered, bounced, deferred, or a mix per recipient."""
        if isinstance(outcome, PermanentDeliveryError):
            log.info("Queue row {id}: permanent failure: {error}", id=item.id, error=str(outcome))
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
        if result.accepted:
            log.info(
                "Queue row {id}: delivered to {n} recipient(s)", id=item.id, n=len(result.accepted)
            )
        if result.accepted and (result.permanent or result.temporary):
            await self.store.add_event(
                item.about,
                None,
                "delivered",
                f"{item.kind} to {', '.join(result.accepted)} via {item.route}",
                now,
            )
        if result.permanent:
            await self._bounce(item, dict(result.permanent), remaining=list(result.temporary))
        if result.temporary:
            error = "; ".join(result.temporary.values())
            await self._retry(item, list(result.temporary), error)
        elif not result.permanent:
            await self.store.delivered(item, result.accepted, "250", now)

    async def _retry(self, item: QueueItem, recipients: list[str], error: str) -> None:
        now = self.now()
        if now - item.created >= self.settings.queue.lifetime:
            days = self.settings.queue.lifetime / 86400
            reason = f"gave up after {days:g} days in the queue; last error: {error}"
            await self._bounce(item, {r: reason for r in recipients}, remaining=())
            return
        delay = backoff(self.settings, item.attempts)
        log.info(
            "Queue row {id}: deferred for {delay} s: {error}", id=item.id, delay=delay, error=error
        )
        await self.store.defer(item, recipients, now + delay, error, now)

    async def _bounce(
        self, item: QueueItem, failed: dict[str, str], remaining: list[str] | tuple[()]
    ) -> None:
        now = self.now()
        bounce = None
        if item.notify:
            bounce = await self._make_bounce(item, failed)
        else:
            log.warn(
                "Queue row {id}: {kind} to {rcpts} failed and nobody is to be told (null sender)",
                id=item.id,
                kind=item.kind,
                rcpts=", ".join(
                    mask_sms_recipients(list(failed))[0] if item.kind == "sms" else failed
                ),
            )
        error = "; ".join(sorted(set(failed.values())))
        await self.store.fail(item, list(failed), error, bounce, now, remaining=list(remaining))

    async def _make_bounce(self, item: QueueItem, failed: dict[str, str]) -> NewMessage | None:
        hostname = self.settings.gateway.hostname
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
        content = build_dsn(
            reporting_mta=hostname,
            original_sender=item.notify,
            original_envelope_id=None,
            failed=[
                FailedRecipient(address=r, status=enhanced_status(text, "5.0.0"), diagnostic=text)
                for r, text in failed.items()
            ],
            original_headers=headers,
            arrival_date=datetime.fromtimestamp(item.created, UTC),
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
            from_address=f"MAILER-DAEMON@{hostname}",
            reason=reason,
        )
        if content is None:
            return None
        return bounce_message(
            self.settings,
            self.store.master,
            item.notify,
            content,
            item.about,
        )


async def _together(work: list[tuple[QueueItem, Coroutine[Any, Any, None]]]) -> None:
    """Run each row's recording at once, so that the database commits them together.

    One that fails is logged and does not keep the others from being recorded.
    """
    tasks = [Deferred.fromCoroutine(coroutine) for _, coroutine in work]
    results = await DeferredList(tasks, consumeErrors=True)
    for (item, _), (ok, value) in zip(work, results, strict=True):
        if not ok:
            log.failure("Recording the outcome for queue row {id} failed", value, id=item.id)


def bounce_message(
    settings: Settings, master: MasterKey, to: str, content: bytes, about: str
) -> NewMessage:
    """
    A bounce ready to commit: sealed, from C{<>}, queued on the route for C{to};
    its delivery is recorded on the message it is C{about}.
    """
    return system_mail(
        settings, master, kind="bounce", sender="", to=to, content=content, about=about
    )


class RetentionJob:
    """
    Deletes secure messages older than C{retention_days} and audit events older than
    C{audit_days}; run by a TimerService.
    """

    def __init__(self, settings: Settings, store: MessageStore, clock: IReactorTime) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def run(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: log.failure("Retention run failed; will try again", f)
        )

    async def _run(self) -> None:
        now = int(self.clock.seconds())
        cutoff = now - self.settings.secure.retention_days * 86400
        deleted = await self.store.delete_expired(cutoff, now)
        if deleted:
            log.info("Retention: deleted {n} expired message(s)", n=deleted)
        pruned = await self.store.delete_old_events(now - self.settings.secure.audit_days * 86400)
        if pruned:
            log.info("Retention: deleted {n} audit event(s) past audit_days", n=pruned)
