"""The queue's sender: queue rows delivered over SMTP along their route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.names.common import ResolverBase

from secmail.config import Settings, parse_route
from secmail.smtp.client import (
    ClientOptions,
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    OutgoingMessage,
    RunInThread,
    Timeouts,
    deliver_many_via_route,
)
from secmail.store.messages import QueueItem

Content = Callable[[], AsyncIterator[bytes]]


def session_key(item: QueueItem) -> tuple[str, str]:
    """Rows with the same key can share one SMTP session: the same route, and for C{mx} the
    same domain (whose MX hosts the session goes to).

    It reads the route as stored, without parsing it, so that a row with a broken route
    fails on its own when it is sent instead of upsetting whoever groups the rows.
    """
    mx = item.route.strip().lower() == "mx"
    return (item.route, item.domain.lower() if mx else "")


class SmtpSender:
    """Sends queue rows to a relay host or, for the C{mx} route, to the domain's MX hosts."""

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        resolver: ResolverBase | Any,
        run_in_thread: RunInThread = deferToThread,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.options = ClientOptions(
            helo=settings.gateway.hostname,
            ca_file=settings.routes.relay_ca_file or None,
            timeouts=Timeouts(connect=settings.queue.connect_timeout),
            run_in_thread=run_in_thread,  # where 8-bit mail is made 7-bit for a peer
        )

    async def send(self, item: QueueItem, content: Content) -> DeliveryResult:
        """Send one row; raises the L{DeliveryError} that failed the whole of it."""
        [outcome] = await self.send_many([item], [content])
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    async def send_many(
        self, items: Sequence[QueueItem], contents: Sequence[Content]
    ) -> list[DeliveryOutcome]:
        """Send rows that share a L{session_key}, one session per host, one outcome per row.

        C{contents[i]} reads the message of C{items[i]}.
        """
        if len(items) != len(contents):
            raise ValueError(f"{len(items)} rows but {len(contents)} contents")
        if not items:
            return []
        first = items[0]
        if any(session_key(item) != session_key(first) for item in items):
            raise ValueError("rows sent in one session must share their route (and MX domain)")
        messages = [
            OutgoingMessage(sender=item.sender, recipients=item.recipients, content=content)
            for item, content in zip(items, contents, strict=True)
        ]
        return await deliver_many_via_route(
            self.reactor,
            self.resolver,
            parse_route(first.route),
            first.domain,
            messages,
            self.options,
        )
