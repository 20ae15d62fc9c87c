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
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from secmail.config import Settings
from secmail.crypto import MasterKey
from secmail.dsn import FailedRecipient, build_dsn
from secmail.smtp.client import DeliveryResult, PermanentDeliveryError, TemporaryDeliveryError
from secmail.store.messages import MessageStore, NewDelivery, NewMessage, QueueItem, new_id
from secmail.store.spool import SealedBytes

log = Logger()

Content = Callable[[], AsyncIterator[bytes]]

#: How long a node may hold a row before another may take it over.
LEASE_SECONDS = 1800

#: How long shutdown waits for deliveries in flight.
STOP_GRACE_SECONDS = 10


class Sender(Protocol):
    """Delivers one queue row's message over SMTP; see L{secmail.smtp.routing}."""

    async def send(self, item: QueueItem, content: Content) -> DeliveryResult: ...


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


class OutboundQueue(Service):
    name = "outbound-queue"

    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        sender: Sender,
        clock: IReactorTime,
        node_id: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender
        self.clock = clock
        self.node_id = node_id
        self._in_flight: set[int] = set()
        self._tasks: set[Deferred[None]] = set()
        self._timer: IDelayedCall | None = None
        self._scanning = False
        self._rescan = False

    def now(self) -> int:
        return int(self.clock.seconds())

    def startService(self) -> None:
        super().startService()
        self.wake()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._tasks:
            return None
        # Let deliveries in flight record their outcome while the database is still up.
        # One that takes longer keeps its lease; the next start on this node takes it back.
        waiting = DeferredList(list(self._tasks), consumeErrors=True)
        waiting.addTimeout(STOP_GRACE_SECONDS, self.clock)
        return waiting.addBoth(lambda _: None)

    def wake(self) -> None:
        """Look for due rows now (called after a commit that queued something)."""
        if not self.running:
            return
        if self._scanning:
            self._rescan = True
            return
        Deferred.fromCoroutine(self._scan()).addErrback(
            lambda f: log.failure("Queue scan failed", f)
        )

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self.wake)

    async def _scan(self) -> None:
        self._scanning = True
        try:
            while True:
                self._rescan = False
                room = self.settings.queue.concurrency - len(self._in_flight)
                if room <= 0:
                    return
                items = await self.store.claim_due(self.node_id, self.now(), LEASE_SECONDS, room)
                for item in items:
                    self._start(item)
                if len(items) < room and not self._rescan:
                    break
        except Exception:
            log.failure(
                "Cannot read the queue; trying again in {delay} s",
                delay=self.settings.queue.poll_interval,
            )
        finally:
            self._scanning = False
            self._schedule(self.settings.queue.poll_interval)

    def _start(self, item: QueueItem) -> None:
        self._in_flight.add(item.id)
        task = Deferred.fromCoroutine(self.deliver(item))
        self._tasks.add(task)

        def finished(_: object) -> None:
            self._in_flight.discard(item.id)
            self._tasks.discard(task)
            self.wake()

        task.addErrback(lambda f: log.failure("Delivery of queue row {id} failed", f, id=item.id))
        task.addBoth(finished)

    async def release_own_leases(self) -> None:
        """After a restart, take back the rows this node had leased when it stopped."""
        await self.store.db.run(
            lambda txn: txn.execute(
                "UPDATE queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                (self.node_id,),
            )
        )

    async def deliver(self, item: QueueItem) -> None:
        """Try one row once and record what happened."""
        try:
            result = await self.sender.send(item, lambda: self.store.read(item.message_id))
        except PermanentDeliveryError as e:
            log.info("Queue row {id}: permanent failure: {error}", id=item.id, error=str(e))
            failed = {r: e.recipients.get(r, str(e)) for r in item.recipients}
            await self._bounce(item, failed, remaining=())
            return
        except TemporaryDeliveryError as e:
            await self._retry(item, list(item.recipients), str(e))
            return
        except Exception as e:
            log.failure("Queue row {id}: unexpected error; will retry", id=item.id)
            await self._retry(item, list(item.recipients), f"internal error: {type(e).__name__}")
            return

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
                rcpts=", ".join(failed),
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


def bounce_message(
    settings: Settings, master: MasterKey, to: str, content: bytes, about: str
) -> NewMessage:
    """
    A bounce ready to commit: sealed, from C{<>}, queued on the route for C{to};
    its delivery is recorded on the message it is C{about}.
    """
    domain = to.rpartition("@")[2].lower()
    return NewMessage(
        content=SealedBytes(master, new_id(), content),
        kind="bounce",
        sender="",
        deliveries=[
            NewDelivery(
                kind="bounce",
                sender="",
                recipients=(to,),
                route=str(settings.routes.for_domain(domain)),
                domain=domain,
                notify="",
                about=about,
            )
        ],
    )


class RetentionJob:
    """Deletes secure messages older than C{retention_days}; run by a TimerService."""

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
