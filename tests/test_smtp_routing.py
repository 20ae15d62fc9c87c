"""
Tests for secmail.smtp.routing: a route (relay or MX) turned into hosts for the delivery
coroutines.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.names.error import DNSNameError, DNSQueryTimeoutError
from twisted.trial.unittest import SynchronousTestCase

from secmail.config import MX, Route
from secmail.smtp.outgoing import (
    DeliveryResult,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from secmail.smtp.routing import deliver_many_via_route, deliver_via_route
from tests.fixtures.smtp import (
    GREETING,
    OPTIONS,
    FakeResolver,
    accept,
    make_message,
    make_reactor,
    mx,
    serve,
    session_replies,
    three_messages,
)


class DeliverViaRouteTests(SynchronousTestCase):
    def test_mx_route(self) -> None:
        """An MX route looks up the domain's MX hosts and uses opportunistic TLS."""
        reactor = make_reactor()
        resolver = FakeResolver([mx(10, b"mx3.example.com")])
        d = Deferred.fromCoroutine(
            deliver_via_route(reactor, resolver, MX, "example.com", make_message(), OPTIONS)
        )
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.3", 25))
        protocol, transport = accept(reactor)
        ehlo_tls = b"250-mx3.example.com\r\n250 STARTTLS\r\n"
        serve(protocol, transport, [GREETING, ehlo_tls, b"220 go\r\n"])
        self.assertIsInstance(transport.tls_started[0], CertificateOptions)
        self.assertNoResult(d)

    def test_relay_route(self) -> None:
        """A relay route goes to its host and port with verified TLS, without an MX lookup."""
        reactor = make_reactor()
        resolver = FakeResolver(AssertionError("no MX lookup expected"))
        route = Route(mx=False, host="mx4.example.com", port=587)
        d = Deferred.fromCoroutine(
            deliver_via_route(reactor, resolver, route, "example.com", make_message(), OPTIONS)
        )
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.4", 587))
        protocol, transport = accept(reactor)
        ehlo_tls = b"250-mx4.example.com\r\n250 STARTTLS\r\n"
        serve(protocol, transport, [GREETING, ehlo_tls, b"220 go\r\n"])
        self.assertEqual(type(transport.tls_started[0]).__name__, "ClientTLSOptions")
        self.assertNoResult(d)


class DeliverManyViaRouteTests(SynchronousTestCase):
    def test_relay_route_one_session(self) -> None:
        """A relay route sends every message to its host over one session."""
        reactor = make_reactor()
        resolver = FakeResolver(AssertionError("no MX lookup expected"))
        route = Route(mx=False, host="mx4.example.com", port=587)
        d = Deferred.fromCoroutine(
            deliver_many_via_route(
                reactor, resolver, route, "example.com", three_messages()[:2], OPTIONS
            )
        )
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.4", 587))
        protocol, transport = accept(reactor)
        serve(protocol, transport, session_replies(1, 2))
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertTrue(all(isinstance(o, DeliveryResult) for o in self.successResultOf(d)))

    def test_mx_lookup_failure_every_message(self) -> None:
        """A failed MX lookup is every message's outcome: temporary or permanent as the DNS says."""
        for answer, kind in [
            (DNSQueryTimeoutError(1), TemporaryDeliveryError),
            (DNSNameError(), PermanentDeliveryError),
        ]:
            reactor = make_reactor()
            d = Deferred.fromCoroutine(
                deliver_many_via_route(
                    reactor, FakeResolver(answer), MX, "example.com", three_messages(), OPTIONS
                )
            )
            self.assertEqual([type(o) for o in self.successResultOf(d)], [kind] * 3)
            self.assertEqual(reactor.tcpClients, [])
