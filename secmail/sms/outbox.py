"""
Sending what is in the SMS outbox: the service that turns durable outbox rows into SMS.

A row is leased, its text unsealed and handed to the L{SmsDispatcher}, which tries the
backends in order and records every attempt on the message. Then the row is removed
(sent), tried again soon (every backend failed, at least one maybe for now), or dropped
with an event (refused for good, or its PIN expired before any backend took it: a late
PIN is useless, and the recipient orders a new one). PINs are wanted within seconds, so
retries come quickly: 10 s, doubling, at most a minute apart.

Rows leased by this node when it stopped are taken back at start; rows of a node that
died are taken over once its lease runs out.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from secmail import message_log
from secmail.masking import mask_number
from secmail.scanning import ScanningService
from secmail.sms.dispatch import SmsDispatcher
from secmail.sms.errors import SmsPermanentError, SmsTemporaryError
from secmail.store.rows import short_id
from secmail.store.sms import OutboxItem, SmsStore

log = Logger()

#: How long a node may hold a row while it sends it (every backend's timeouts in turn).
LEASE_SECONDS = 300
RETRY_FIRST = 10
RETRY_MAX = 60
#: How often the outbox is read without being woken (for rows other nodes wrote).
POLL_SECONDS = 15
#: SMS in flight at once.
CONCURRENCY = 4
STOP_GRACE_SECONDS = 5


def retry_delay(attempts: int) -> int:
    """Seconds before the next try after C{attempts} failed ones (the first is 1)."""
    return min(RETRY_FIRST * 2 ** max(attempts - 1, 0), RETRY_MAX)


class SmsOutbox(ScanningService):
    name = "sms-outbox"
    what = "the SMS outbox"
    stop_grace = STOP_GRACE_SECONDS

    def __init__(
        self,
        store: SmsStore,
        dispatcher: SmsDispatcher,
        clock: IReactorTime,
        node_id: str,
        *,
        poll: float = POLL_SECONDS,
    ) -> None:
        super().__init__(clock)
        self.store = store
        self.dispatcher = dispatcher
        self.node_id = node_id
        self.poll = poll

    def startService(self) -> None:
        super().startService()

        async def start() -> None:
            try:
                await self.store.release_own_leases(self.node_id)
            finally:
                self.wake()

        Deferred.fromCoroutine(start()).addErrback(
            lambda f: log.failure("Cannot take back SMS outbox leases", f)
        )

    def poll_interval(self) -> float:
        return self.poll

    def room(self) -> int:
        return CONCURRENCY - len(self._tasks)

    async def claim_and_start(self, room: int) -> int:
        items = await self.store.claim(self.node_id, self.now(), LEASE_SECONDS, room)
        for item in items:
            self.run(self.send(item), f"SMS outbox row {item.id}")
        return len(items)

    async def next_scan(self, poll: float) -> float:
        due = await self.store.next_due()
        if due is None:
            return poll
        return min(poll, max(due - self.clock.seconds(), 0.5))

    async def send(self, item: OutboxItem) -> None:
        """Try one row once and record what happened."""
        masked = mask_number(item.number)
        now = self.now()
        if item.expires <= now:
            await self.store.drop(
                item,
                "sms expired",
                f"not sent to {masked} before its PIN expired (tried {item.attempts} times)",
                now,
            )
            return
        try:
            text = self.store.sealer.open(item.message_id, item.number, item.sealed)
        except ValueError as e:
            await self.store.drop(item, "sms failed", f"to {masked}: {e}", now)
            return
        try:
            backend, _ = await self.dispatcher.send(item.number, text, about=item.message_id)
        except CancelledError:
            raise
        except SmsPermanentError as e:
            await self.store.drop(item, "sms not sent", str(e), self.now())
            return
        except Exception as e:
            reason = str(e) if isinstance(e, SmsTemporaryError) else type(e).__name__
            next_attempt = self.now() + retry_delay(item.attempts + 1)
            log.warn(
                "{id}: SMS to {number} will be tried again in {delay} s",
                id=short_id(item.message_id),
                message_id=short_id(item.message_id),
                envelope_id=item.envelope_id or "",
                number=masked,
                delay=next_attempt - self.now(),
            )
            await self.store.retry(item, next_attempt, reason)
            return
        await self.store.sent(item)
        recipient = await self.store.recipient(item.envelope_id) if item.envelope_id else ""
        message_log.pin_sent(
            item.message_id,
            envelope_id=item.envelope_id,
            recipient=recipient,
            number=item.number,
            via=backend,
        )
