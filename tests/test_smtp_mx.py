"""
Tests for secmail.smtp.mx: the hosts to try for a domain.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from secmail.smtp.mx import resolve_mx
from secmail.smtp.outgoing import (
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from tests.fixtures.smtp import (
    FakeResolver,
    mx,
)


class ResolveMxTests(SynchronousTestCase):
    def resolve(self, answer: list[dns.RRHeader] | Exception, **kw: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(resolve_mx(FakeResolver(answer), "example.com", **kw))

    def test_sorted_by_preference(self) -> None:
        """MX hosts come lowest preference first, each with port 25."""
        records = [mx(20, b"b.example.com"), mx(5, b"a.example.com"), mx(30, b"c.example.com")]
        self.assertEqual(
            self.successResultOf(self.resolve(records)),
            [("a.example.com", 25), ("b.example.com", 25), ("c.example.com", 25)],
        )

    def test_equal_preference_repeatable(self) -> None:
        """Equal preferences are shuffled, repeatably for a seeded random source."""
        records = [mx(10, b"%d.example.com" % i) for i in range(6)] + [mx(5, b"first.example")]
        orders = set()
        for seed in range(10):
            one = self.successResultOf(self.resolve(records, rng=random.Random(seed)))
            two = self.successResultOf(self.resolve(records, rng=random.Random(seed)))
            self.assertEqual(one, two)
            self.assertEqual(one[0], ("first.example", 25))
            orders.add(tuple(one))
        self.assertGreater(len(orders), 1)

    def test_no_mx(self) -> None:
        """With no MX records the domain itself is the host (RFC 5321 §5.1)."""
        self.assertEqual(self.successResultOf(self.resolve([])), [("example.com", 25)])

    def test_cname_ignored(self) -> None:
        """Records other than MX in the answer are ignored."""
        cname = dns.RRHeader(name=b"example.com", type=dns.CNAME, payload=dns.Record_CNAME(b"x"))
        records = [cname, mx(10, b"mx.example.net", owner=b"x")]
        self.assertEqual(self.successResultOf(self.resolve(records)), [("mx.example.net", 25)])

    def test_trailing_dot_and_duplicates(self) -> None:
        """Exchange names lose a trailing dot and appear only once."""
        records = [mx(10, b"mx.example.com."), mx(20, b"mx.example.com")]
        self.assertEqual(self.successResultOf(self.resolve(records)), [("mx.example.com", 25)])

    def test_null_mx(self) -> None:
        """A null MX (RFC 7505) is a permanent failure."""
        for name in (b"", b"."):
            error = self.failureResultOf(self.resolve([mx(0, name)]), PermanentDeliveryError).value
            self.assertEqual(error.text, "domain does not accept mail (null MX)")

    def test_nxdomain(self) -> None:
        """A domain that does not exist is a permanent failure."""
        error = self.failureResultOf(self.resolve(DNSNameError()), PermanentDeliveryError).value
        self.assertIn("does not exist", error.text)

    def test_dns_timeout(self) -> None:
        """A DNS timeout is a temporary failure."""
        self.failureResultOf(self.resolve(DNSQueryTimeoutError(1)), TemporaryDeliveryError)

    def test_servfail(self) -> None:
        """A DNS server failure is a temporary failure."""
        self.failureResultOf(self.resolve(DNSServerError()), TemporaryDeliveryError)
