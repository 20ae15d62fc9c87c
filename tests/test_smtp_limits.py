"""The intake's limits as pure rules (secmail.smtp.limits), without a connection."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from secmail.config import SmtpSettings
from secmail.smtp.limits import (
    MessageLimits,
    client_name,
    earliest_deadline,
    mail_parameters_refusal,
    peer_accepted,
    with_enhanced_code,
)

SETTINGS = SmtpSettings(
    accepted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
    idle_timeout=300,
    transaction_timeout=3600,
    min_data_rate=500,
    max_message_size=1000,
    max_header_size=100,
    max_hops=2,
)


class DeadlineTests(SynchronousTestCase):
    def test_nothing_under_way(self) -> None:
        """With no transaction and no unfinished command line there is no deadline."""
        self.assertIsNone(earliest_deadline(SETTINGS, None, 0, None))

    def test_command_line(self) -> None:
        """An unfinished command line must be whole within idle_timeout of its first byte."""
        self.assertEqual(
            earliest_deadline(SETTINGS, None, 0, 50.0),
            (350.0, "a command line took longer than idle_timeout"),
        )

    def test_transaction_rate_and_length(self) -> None:
        """A transaction is held to min_data_rate after idle_timeout, and to transaction_timeout."""
        self.assertEqual(
            earliest_deadline(SETTINGS, 0.0, 1000, None),
            (302.0, "the transaction was slower than min_data_rate"),
        )
        fast = earliest_deadline(SETTINGS, 0.0, 10_000_000, None)
        self.assertEqual(fast, (3600.0, "the transaction took longer than transaction_timeout"))


class MailParameterTests(SynchronousTestCase):
    def test_parameters(self) -> None:
        """SIZE within the limit and BODY=7BIT/8BITMIME are taken; anything else is refused."""
        self.assertIsNone(mail_parameters_refusal(b"SIZE=1000 BODY=8BITMIME", SETTINGS))
        self.assertIsNone(mail_parameters_refusal(None, SETTINGS))
        self.assertEqual(
            mail_parameters_refusal(b"SIZE=x", SETTINGS), (501, "5.5.4 Bad SIZE parameter")
        )
        self.assertEqual(
            mail_parameters_refusal(b"SIZE=1001", SETTINGS),
            (552, "5.3.4 Message size exceeds fixed limit"),
        )
        self.assertEqual(
            mail_parameters_refusal(b"AUTH=<>", SETTINGS),
            (555, "5.5.4 Unsupported parameter: AUTH=<>"),
        )


class MessageLimitsTests(SynchronousTestCase):
    def test_headerless_body_gets_a_blank_line(self) -> None:
        """A body without headers is given a blank line first; dots are unstuffed."""
        limits = MessageLimits(SETTINGS)
        self.assertEqual(limits.take(b"..hello"), [b"", b".hello"])
        self.assertEqual(limits.take(b"Subject: not a header now"), [b"Subject: not a header now"])

    def test_refusals(self) -> None:
        """Bare CR, NUL, size, header size and hops each refuse the message with their code."""
        self.assertEqual(MessageLimits(SETTINGS).take(b"a\rb")[0], 550)
        self.assertEqual(MessageLimits(SETTINGS).take(b"a\0b")[0], 550)
        self.assertEqual(MessageLimits(SETTINGS).take(b"x" * 999)[0], 552)
        self.assertEqual(
            MessageLimits(SETTINGS).take(b"X-Long: " + b"y" * 100),
            (552, "5.3.4 Message header too large"),
        )
        hops = MessageLimits(replace(SETTINGS, max_header_size=10_000))
        self.assertEqual(hops.take(b"Received: a"), [b"Received: a"])
        self.assertEqual(hops.take(b"Received: b"), [b"Received: b"])
        self.assertEqual(hops.take(b"Received: c"), (554, "5.4.6 Too many hops (mail loop?)"))


class PeerTests(SynchronousTestCase):
    def test_accepted_networks(self) -> None:
        """UNIX sockets and accepted networks (also IPv4-mapped) may relay; others may not."""
        self.assertTrue(peer_accepted(UNIXAddress(b"/run/s"), SETTINGS))
        self.assertTrue(peer_accepted(IPv4Address("TCP", "10.1.2.3", 1), SETTINGS))
        self.assertTrue(peer_accepted(IPv6Address("TCP", "::ffff:10.1.2.3", 1), SETTINGS))
        self.assertFalse(peer_accepted(IPv4Address("TCP", "192.0.2.1", 1), SETTINGS))
        self.assertEqual(client_name(IPv6Address("TCP", "fe80::1%eth0", 1)), "fe80::1")
        self.assertEqual(client_name(UNIXAddress(b"/run/s")), "unix")

    def test_enhanced_code(self) -> None:
        """A passed-through reply text without an enhanced status code gets a generic one."""
        self.assertEqual(with_enhanced_code(451, "busy"), b"4.0.0 busy")
        self.assertEqual(with_enhanced_code(550, b"5.1.1 no"), b"5.1.1 no")
