"""
Tests for secmail.smtp.outbound: connecting to a host, and trying hosts in turn, on a memory
reactor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmail.smtp.outbound import deliver, deliver_many, deliver_many_to_hosts, deliver_to_hosts
from secmail.smtp.outgoing import (
    ClientOptions,
    DeliveryResult,
    OutgoingMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    Timeouts,
)
from tests.fixtures.smtp import (
    EHLO_REPLY,
    GREETING,
    HELO,
    OPTIONS,
    FakeHostResolver,
    accept,
    make_message,
    make_reactor,
    serve,
    session_replies,
    three_messages,
)


def refuse(reactor: MemoryReactorClock) -> None:
    """Fail the latest connection attempt as refused, and let HostnameEndpoint notice."""
    _host, _port, factory, _timeout, _bind = reactor.tcpClients[-1]
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
    reactor.advance(1)


SUCCESS = [GREETING, EHLO_REPLY, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]


class DeliverTests(SynchronousTestCase):
    def test_deliver(self) -> None:
        """deliver() connects through HostnameEndpoint on the injected reactor and delivers."""
        reactor = make_reactor()
        d = Deferred.fromCoroutine(deliver(reactor, "mx1.example.com", 25, make_message(), OPTIONS))
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.1", 25))
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, SUCCESS)
        self.assertTrue(wire.startswith(b"EHLO gw.example.net\r\nMAIL FROM:<alice@example.net>"))
        result = self.successResultOf(d)
        self.assertEqual(result.accepted, ["bob@example.com"])
        self.assertIn("mx1.example.com[192.0.2.1]:25 said: 250 ok", result.reply)

    def test_refused(self) -> None:
        """A refused connection is a temporary failure naming the host."""
        reactor = make_reactor()
        d = Deferred.fromCoroutine(deliver(reactor, "mx1.example.com", 25, make_message(), OPTIONS))
        refuse(reactor)
        error = self.failureResultOf(d, TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith("connection to mx1.example.com:25 failed"))

    def test_connect_timeout(self) -> None:
        """A connection attempt that hangs fails after the connect timeout."""
        reactor = make_reactor()
        options = ClientOptions(HELO, timeouts=Timeouts(connect=30))
        d = Deferred.fromCoroutine(deliver(reactor, "mx1.example.com", 25, make_message(), options))
        self.assertEqual(reactor.tcpClients[0][3], 30)
        reactor.advance(29)
        self.assertNoResult(d)
        reactor.advance(1)
        error = self.failureResultOf(d, TemporaryDeliveryError).value
        self.assertEqual(error.text, "connection to mx1.example.com:25 timed out")

    def test_unknown_host(self) -> None:
        """A host name that does not resolve is a temporary failure."""
        reactor = make_reactor()
        d = Deferred.fromCoroutine(deliver(reactor, "nowhere.example", 25, make_message(), OPTIONS))
        self.failureResultOf(d, TemporaryDeliveryError)

    def test_ip_literal_needs_no_lookup(self) -> None:
        """A relay given as an IP address is connected to directly, without a name lookup."""
        reactor = MemoryReactorClock()
        reactor.installNameResolver(FakeHostResolver({}))  # would fail any lookup
        d = Deferred.fromCoroutine(deliver(reactor, "192.0.2.9", 2525, make_message(), OPTIONS))
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.9", 2525))
        protocol, transport = accept(reactor)
        serve(protocol, transport, SUCCESS)
        self.assertEqual(self.successResultOf(d).accepted, ["bob@example.com"])


class DeliverToHostsTests(SynchronousTestCase):
    def start(self, hosts: list[str], reactor: MemoryReactorClock) -> Deferred[DeliveryResult]:
        return Deferred.fromCoroutine(
            deliver_to_hosts(reactor, [(h, 25) for h in hosts], make_message(), OPTIONS)
        )

    def test_second_host_after_refusal(self) -> None:
        """When the first MX refuses the connection, the second one is tried and delivers."""
        reactor = make_reactor()
        d = self.start(["mx1.example.com", "mx2.example.com"], reactor)
        refuse(reactor)
        self.assertEqual([c[0] for c in reactor.tcpClients], ["192.0.2.1", "192.0.2.2"])
        protocol, transport = accept(reactor)
        serve(protocol, transport, SUCCESS)
        self.assertEqual(self.successResultOf(d).accepted, ["bob@example.com"])

    def test_second_host_after_421(self) -> None:
        """A 421 greeting moves on to the next host too."""
        reactor = make_reactor()
        d = self.start(["mx1.example.com", "mx2.example.com"], reactor)
        protocol, transport = accept(reactor)
        serve(protocol, transport, [b"421 busy\r\n"])
        self.assertEqual(len(reactor.tcpClients), 2)
        protocol, transport = accept(reactor)
        serve(protocol, transport, SUCCESS)
        self.successResultOf(d)

    def test_permanent_stops(self) -> None:
        """A permanent failure is final: no other host is tried."""
        reactor = make_reactor()
        d = self.start(["mx1.example.com", "mx2.example.com"], reactor)
        protocol, transport = accept(reactor)
        serve(protocol, transport, [GREETING, EHLO_REPLY, b"550 go away\r\n"])
        self.failureResultOf(d, PermanentDeliveryError)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_4xx_after_data_stops(self) -> None:
        """A 4xx to the final dot is a definite answer: no other host is tried."""
        reactor = make_reactor()
        d = self.start(["mx1.example.com", "mx2.example.com"], reactor)
        protocol, transport = accept(reactor)
        serve(protocol, transport, [*SUCCESS[:-1], b"451 later\r\n"])
        self.failureResultOf(d, TemporaryDeliveryError)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_at_most_five_hosts(self) -> None:
        """At most five hosts are tried; then the last host's error is raised."""
        reactor = make_reactor()
        d = self.start([f"mx{i}.example.com" for i in range(1, 8)], reactor)
        for _ in range(5):
            refuse(reactor)
        self.assertEqual(len(reactor.tcpClients), 5)
        error = self.failureResultOf(d, TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith("connection to mx5.example.com:25 failed"))

    def test_no_hosts(self) -> None:
        """An empty host list is a temporary failure."""
        self.failureResultOf(self.start([], make_reactor()), TemporaryDeliveryError)


def senders_on(wire: bytes) -> list[bytes]:
    return re.findall(rb"MAIL FROM:<([^>]*)>", wire)


class DeliverManyTests(SynchronousTestCase):
    def start(self, reactor: MemoryReactorClock, messages: Sequence[OutgoingMessage]) -> Any:
        return Deferred.fromCoroutine(
            deliver_many(reactor, "mx1.example.com", 25, messages, OPTIONS)
        )

    def test_one_connection(self) -> None:
        """deliver_many() sends every message over one connection and returns outcomes in order."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages())
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(1, 2, 1))
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertEqual(senders_on(wire), [b"alice@example.net", b"eve@ex.net", b""])
        outcomes = self.successResultOf(d)
        self.assertEqual(
            [cast(DeliveryResult, o).accepted for o in outcomes],
            [["bob@example.com"], ["carol@example.com", "dan@example.com"], ["fay@example.com"]],
        )

    def test_outcomes_not_raised(self) -> None:
        """A failed message is an outcome in the list; the messages after it still go."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages()[:2])
        protocol, transport = accept(reactor)
        replies = [GREETING, EHLO_REPLY, b"550 5.7.1 no\r\n", b"250 reset\r\n"]
        serve(protocol, transport, replies + session_replies(2)[2:])
        first, second = self.successResultOf(d)
        self.assertIsInstance(first, PermanentDeliveryError)
        self.assertIsInstance(second, DeliveryResult)

    def test_bad_envelope_not_sent(self) -> None:
        """A message with an unusable envelope fails on its own and is left out of the session."""
        reactor = make_reactor()
        bad = make_message(sender="x>\r\nRCPT TO:<evil@example.org")
        good = make_message("bob@example.com")
        d = self.start(reactor, [bad, good])
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(1))
        self.assertEqual(senders_on(wire), [b"alice@example.net"])
        self.assertNotIn(b"evil", wire)
        first, second = self.successResultOf(d)
        self.assertIsInstance(first, PermanentDeliveryError)
        self.assertEqual(cast(DeliveryResult, second).accepted, ["bob@example.com"])

    def test_no_connection_without_sendable_message(self) -> None:
        """When no envelope can be sent, no connection is made at all."""
        reactor = make_reactor()
        d = self.start(reactor, [make_message(""), make_message(sender="a b@example.net")])
        self.assertEqual([type(o) for o in self.successResultOf(d)], [PermanentDeliveryError] * 2)
        self.assertEqual(reactor.tcpClients, [])

    def test_refused_every_message(self) -> None:
        """A refused connection is every message's outcome."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages())
        refuse(reactor)
        for outcome in self.successResultOf(d):
            assert isinstance(outcome, TemporaryDeliveryError)
            self.assertTrue(outcome.text.startswith("connection to mx1.example.com:25 failed"))


class DeliverManyToHostsTests(SynchronousTestCase):
    def start(
        self, reactor: MemoryReactorClock, messages: Sequence[OutgoingMessage], hosts: int = 2
    ) -> Any:
        addresses = [(f"mx{i}.example.com", 25) for i in range(1, hosts + 1)]
        return Deferred.fromCoroutine(deliver_many_to_hosts(reactor, addresses, messages, OPTIONS))

    def test_refused_moves_every_message(self) -> None:
        """When the first host refuses, every message goes to the second one, in one session."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages())
        refuse(reactor)
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(1, 2, 1))
        self.assertEqual(reactor.tcpClients[-1][0], "192.0.2.2")
        self.assertEqual(senders_on(wire), [b"alice@example.net", b"eve@ex.net", b""])
        self.assertTrue(all(isinstance(o, DeliveryResult) for o in self.successResultOf(d)))

    def test_421_greeting_moves_every_message(self) -> None:
        """A 421 greeting moves every message on to the next host too."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages()[:2])
        protocol, transport = accept(reactor)
        serve(protocol, transport, [b"421 busy\r\n"])
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(1, 2))
        self.assertEqual(senders_on(wire), [b"alice@example.net", b"eve@ex.net"])
        self.assertTrue(all(isinstance(o, DeliveryResult) for o in self.successResultOf(d)))

    def test_dot_sent_is_never_resent(self) -> None:
        """After a session lost at the second dot, only the untried third goes to the next host."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages())
        protocol, transport = accept(reactor)
        serve(protocol, transport, session_replies(1, 2)[:-1])  # no reply to the second dot
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(reactor.tcpClients), 2)
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(1))
        self.assertEqual(senders_on(wire), [b""])
        self.assertNotIn(b"second", wire)
        first, second, third = self.successResultOf(d)
        self.assertIn("mx1.example.com", cast(DeliveryResult, first).reply)
        assert isinstance(second, TemporaryDeliveryError)
        self.assertEqual(
            second.text,
            "lost connection with mx1.example.com[192.0.2.1]:25 "
            "while waiting for the reply to end of data",
        )
        self.assertIn("mx2.example.com", cast(DeliveryResult, third).reply)

    def test_4xx_to_dot_stays_untried_rest_moves(self) -> None:
        """A 4xx to a dot is final for that message; one untried after a 421 moves on."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages())
        protocol, transport = accept(reactor)
        replies = session_replies(1)[:-1] + [b"451 4.3.0 later\r\n", b"421 4.3.2 closing\r\n"]
        self.assertTrue(serve(protocol, transport, replies).endswith(b"RSET\r\nQUIT\r\n"))
        protocol, transport = accept(reactor)
        wire = serve(protocol, transport, session_replies(2, 1))
        self.assertEqual(senders_on(wire), [b"eve@ex.net", b""])
        first, second, third = self.successResultOf(d)
        assert isinstance(first, TemporaryDeliveryError)
        self.assertFalse(first.try_other_hosts)
        self.assertIsInstance(second, DeliveryResult)
        self.assertIsInstance(third, DeliveryResult)

    def test_last_host_error_kept(self) -> None:
        """When every host fails, each message keeps the last host's error."""
        reactor = make_reactor()
        d = self.start(reactor, three_messages()[:2], hosts=3)
        for _ in range(3):
            refuse(reactor)
        for outcome in self.successResultOf(d):
            assert isinstance(outcome, TemporaryDeliveryError)
            self.assertTrue(outcome.text.startswith("connection to mx3.example.com:25 failed"))

    def test_no_hosts(self) -> None:
        """An empty host list is every message's temporary failure."""
        d = self.start(make_reactor(), three_messages()[:2], hosts=0)
        for outcome in self.successResultOf(d):
            assert isinstance(outcome, TemporaryDeliveryError)
            self.assertEqual(outcome.text, "no host to deliver to")
