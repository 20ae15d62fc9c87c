# -*- test-case-name: tests.test_smtp_routing,tests.test_queue -*-
"""The queue's sender: queue rows delivered over SMTP along their route.

A route is a relay (C{smtp://host:port}, with a verified certificate when it offers
STARTTLS) or C{mx} (the domain's MX hosts, opportunistic TLS); this module turns it into
hosts and ports and a TLS policy for the delivery coroutines of L{secmail.smtp.outbound}.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTCP, IResolver
from twisted.internet.threads import deferToThread
from twisted.names.common import ResolverBase

from secmail.config import QueueSettings, Route, RouteSettings, parse_route
from secmail.smtp.mx import resolve_mx
from secmail.smtp.outbound import deliver_many_to_hosts, result_or_raise, with_envelopes_checked
from secmail.smtp.outgoing import (
    ClientOptions,
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    OutgoingMessage,
    RunInThread,
    Timeouts,
    TlsPolicy,
)
from secmail.store.messages import QueueItem

Content = Callable[[], AsyncIterator[bytes]]


async def deliver_many_via_route(
    reactor: IReactorTCP,
    resolver: IResolver,
    route: Route,
    domain: str,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    *,
    rng: random.Random | None = None,
) -> list[DeliveryOutcome]:
    """Deliver C{messages}, all for C{domain}, the way C{route} says: one session per host.

    An MX route goes to the domain's MX hosts with opportunistic TLS. An
    C{smtp://host:port} route goes to that relay, with a verified certificate when it
    offers STARTTLS. A failed MX lookup is every message's outcome.
    """

    async def send(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        if not route.mx:
            hosts = [(route.host, route.port)]
            return await deliver_many_to_hosts(reactor, hosts, sendable, options, TlsPolicy.VERIFY)
        try:
            hosts = await resolve_mx(resolver, domain, rng=rng)
        except DeliveryError as e:
            return [e] * len(sendable)
        return await deliver_many_to_hosts(
            reactor, hosts, sendable, options, TlsPolicy.OPPORTUNISTIC
        )

    return await with_envelopes_checked(messages, send)


async def deliver_via_route(
    reactor: IReactorTCP,
    resolver: IResolver,
    route: Route,
    domain: str,
    message: OutgoingMessage,
    options: ClientOptions,
    *,
    rng: random.Random | None = None,
) -> DeliveryResult:
    """Deliver mail for C{domain} the way C{route} says (see L{deliver_many_via_route})."""
    [outcome] = await deliver_many_via_route(
        reactor, resolver, route, domain, [message], options, rng=rng
    )
    return result_or_raise(outcome)


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
        hostname: str,
        routes: RouteSettings,
        queue: QueueSettings,
        reactor: Any,
        resolver: ResolverBase | Any,
        run_in_thread: RunInThread = deferToThread,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.run_in_thread = run_in_thread  # where 8-bit mail is made 7-bit for a peer
        self.use(hostname, routes, queue)

    def use(self, hostname: str, routes: RouteSettings, queue: QueueSettings) -> None:
        """The HELO name, relay CA file and connect timeout for sessions opened from now on."""
        self.options = ClientOptions(
            helo=hostname,
            ca_file=routes.relay_ca_file or None,
            timeouts=Timeouts(connect=queue.connect_timeout),
            run_in_thread=self.run_in_thread,
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
