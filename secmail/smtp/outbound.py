# -*- test-case-name: tests.test_smtp_outbound -*-
"""
The delivery coroutines the queue's sender calls: messages to one host, or to a list of
hosts in turn, each given as host and port with a TLS policy.

L{deliver_many} and L{deliver_many_to_hosts} return one outcome per message. L{deliver}
and L{deliver_to_hosts} are their one-message forms, which raise the message's error.
Which hosts a route means (a relay, or a domain's MX hosts from L{secmail.smtp.mx}) is
decided by L{secmail.smtp.routing}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from secmail.smtp.client import SmtpClientProtocol
from secmail.smtp.outgoing import (
    ClientOptions,
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    OutgoingMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    TlsPolicy,
    check_envelope,
)

_log = Logger()

MAX_HOSTS = 5
"""How many hosts L{deliver_to_hosts} tries at most. Postfix's smtp_mx_address_limit is also 5."""


async def deliver_many(
    reactor: IReactorTCP,
    host: str,
    port: int,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
) -> list[DeliveryOutcome]:
    """Connect to C{host}:C{port} once and send C{messages} over that one session.

    Returns one outcome per message, in the same order: a L{DeliveryResult} with the
    per-recipient outcomes, or the L{DeliveryError} that failed the whole transaction. A
    message whose envelope cannot be sent gets its error without being sent; when the
    connection cannot be made, every message gets that error. See L{SmtpClientProtocol}
    for what a session that ends early does to the messages still to come.
    """

    async def session(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        try:
            protocol = await _connect(reactor, host, port, sendable, options, tls)
        except TemporaryDeliveryError as e:
            return [e] * len(sendable)
        return [await _outcome(result) for result in protocol.results]

    return await with_envelopes_checked(messages, session)


async def deliver(
    reactor: IReactorTCP,
    host: str,
    port: int,
    message: OutgoingMessage,
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
) -> DeliveryResult:
    """Connect to C{host}:C{port} and run one SMTP transaction for C{message}.

    Returns per-recipient outcomes. Raises L{TemporaryDeliveryError} or
    L{PermanentDeliveryError} when the whole transaction failed.
    """
    [outcome] = await deliver_many(reactor, host, port, [message], options, tls)
    return result_or_raise(outcome)


async def _connect(
    reactor: IReactorTCP,
    host: str,
    port: int,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy,
) -> SmtpClientProtocol:
    clock = IReactorTime(reactor)
    endpoint = _endpoint(reactor, host, port, options.timeouts.connect)
    factory = Factory.forProtocol(partial(SmtpClientProtocol, clock, host, messages, options, tls))
    factory.noisy = False  # two log lines per session otherwise
    connecting = endpoint.connect(factory)
    connecting.addTimeout(options.timeouts.connect, clock)
    try:
        return cast(SmtpClientProtocol, await connecting)
    except (defer.TimeoutError, ConnectingCancelledError):
        # HostnameEndpoint answers our timeout's cancel() with ConnectingCancelledError.
        raise TemporaryDeliveryError(f"connection to {host}:{port} timed out") from None
    except Exception as e:
        raise TemporaryDeliveryError(f"connection to {host}:{port} failed: {e}") from None


def _endpoint(reactor: IReactorTCP, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An IP address is connected to directly; a name goes through HostnameEndpoint's lookup."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, str(address), port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, str(address), port, timeout=timeout)


async def _outcome(result: Deferred[DeliveryResult]) -> DeliveryOutcome:
    try:
        return await result
    except DeliveryError as e:
        return e


def result_or_raise(outcome: DeliveryOutcome) -> DeliveryResult:
    if isinstance(outcome, DeliveryError):
        raise outcome
    return outcome


async def with_envelopes_checked(
    messages: Sequence[OutgoingMessage],
    send: Callable[[list[OutgoingMessage]], Awaitable[list[DeliveryOutcome]]],
) -> list[DeliveryOutcome]:
    """Outcomes for C{messages}: envelope errors at once, the rest from C{send}, in order.

    A message whose envelope cannot be sent fails on its own, so it never costs the
    others their session, and when no message is left nothing is sent at all.
    """
    outcomes: dict[int, DeliveryOutcome] = {}
    sendable: list[int] = []
    for index, message in enumerate(messages):
        try:
            check_envelope(message)
        except PermanentDeliveryError as e:
            outcomes[index] = e
        else:
            sendable.append(index)
    if sendable:
        results = await send([messages[index] for index in sendable])
        outcomes.update(zip(sendable, results, strict=True))
    return [outcomes[index] for index in range(len(messages))]


async def deliver_many_to_hosts(
    reactor: IReactorTCP,
    hosts: Sequence[tuple[str, int]],
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    *,
    max_hosts: int = MAX_HOSTS,
) -> list[DeliveryOutcome]:
    """Try C{hosts} in order, one session each, until every message has a definite answer.

    A message moves on to the next host when its outcome is a temporary failure from
    before the host saw the whole message (C{try_other_hosts}): all of them after a
    connection-level failure (refused, timed out, 4xx greeting, TLS failure and so on);
    after a session that ended part-way, the message in progress (unless its final dot was
    sent) and those whose turn never came. A message whose final dot was sent is never
    offered to another host. Every other outcome is final. A message still without one
    after the last host keeps that host's error.
    """

    async def send(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = [TemporaryDeliveryError("no host to deliver to")] * len(
            sendable
        )
        pending = list(range(len(sendable)))
        for host, port in list(hosts)[:max_hosts]:
            batch = [sendable[index] for index in pending]
            results = await deliver_many(reactor, host, port, batch, options, tls)
            moving: list[int] = []
            for index, outcome in zip(pending, results, strict=True):
                outcomes[index] = outcome
                if isinstance(outcome, TemporaryDeliveryError) and outcome.try_other_hosts:
                    moving.append(index)
            if not moving:
                break
            _log.info(
                "Delivery of {n} message(s) via {host}:{port} failed, next host: {text}",
                n=len(moving),
                host=host,
                port=port,
                text=cast(DeliveryError, outcomes[moving[0]]).text,
            )
            pending = moving
        return outcomes

    return await with_envelopes_checked(messages, send)


async def deliver_to_hosts(
    reactor: IReactorTCP,
    hosts: Sequence[tuple[str, int]],
    message: OutgoingMessage,
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    *,
    max_hosts: int = MAX_HOSTS,
) -> DeliveryResult:
    """Try C{hosts} in order until one gives a definite answer.

    A temporary failure before the host has seen the whole message (refused, timed out,
    4xx greeting, TLS failure and so on) moves on to the next host. Any other outcome is
    final. When every host fails, the last host's error is raised.
    """
    [outcome] = await deliver_many_to_hosts(
        reactor, hosts, [message], options, tls, max_hosts=max_hosts
    )
    return result_or_raise(outcome)
