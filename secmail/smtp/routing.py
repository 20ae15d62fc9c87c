"""The queue's sender: one queue row delivered over SMTP along its route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.names.common import ResolverBase

from secmail.config import Settings, parse_route
from secmail.smtp.client import (
    ClientOptions,
    DeliveryResult,
    OutgoingMessage,
    Timeouts,
    deliver_via_route,
)
from secmail.store.messages import QueueItem


class SmtpSender:
    """Sends queue rows to a relay host or, for the C{mx} route, to the domain's MX hosts."""

    def __init__(self, settings: Settings, reactor: Any, resolver: ResolverBase | Any) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.options = ClientOptions(
            helo=settings.gateway.hostname,
            ca_file=settings.routes.relay_ca_file or None,
            timeouts=Timeouts(connect=settings.queue.connect_timeout),
        )

    async def send(
        self, item: QueueItem, content: Callable[[], AsyncIterator[bytes]]
    ) -> DeliveryResult:
        message = OutgoingMessage(sender=item.sender, recipients=item.recipients, content=content)
        route = parse_route(item.route)
        return await deliver_via_route(
            self.reactor, self.resolver, route, item.domain, message, self.options
        )
