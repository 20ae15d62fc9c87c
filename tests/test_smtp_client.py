"""
Tests for secmail.smtp.client (on secmail.smtp.session): the SMTP client state machine. No
sockets: the server is played by feeding replies to the protocol and checking the exact bytes
it writes.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmail.smtp.client import SmtpClientProtocol
from secmail.smtp.outbound import deliver
from secmail.smtp.outgoing import (
    ClientOptions,
    DeliveryResult,
    OutgoingMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    Timeouts,
    TlsPolicy,
)
from secmail.web.reply import build_reply
from tests.fixtures.settings import make_settings
from tests.fixtures.smtp import (
    BODY,
    EHLO_REPLY,
    GREETING,
    HELO,
    ONE,
    PEER,
    TlsStringTransport,
    decode_wire,
    make_message,
    said,
    three_messages,
)

EHLO_PIPELINING = b"250-mx.example.com hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


class Conversation:
    """A client protocol on a string transport, with the test playing the server."""

    def __init__(
        self,
        message: OutgoingMessage | Sequence[OutgoingMessage],
        tls: TlsPolicy = TlsPolicy.NONE,
        timeouts: Timeouts = Timeouts(),
        transport: StringTransport | None = None,
        ca_file: str | None = None,
        run_in_thread: Any = None,
    ) -> None:
        self.clock = Clock()
        options = ClientOptions(
            helo=HELO, timeouts=timeouts, ca_file=ca_file, run_in_thread=run_in_thread
        )
        messages = [message] if isinstance(message, OutgoingMessage) else list(message)
        self.protocol = SmtpClientProtocol(self.clock, "mx.example.com", messages, options, tls)
        self.transport = transport or TlsStringTransport()
        self.protocol.makeConnection(self.transport)

    def server(self, reply: bytes) -> bytes:
        """Send C{reply} as the server; return what the client wrote in answer."""
        self.transport.clear()
        self.protocol.dataReceived(reply)
        return self.transport.value()

    def up_to_mail(self, ehlo: bytes = EHLO_REPLY) -> None:
        assert self.server(GREETING) == b"EHLO gw.example.net\r\n"
        assert self.server(ehlo).startswith(b"MAIL FROM:")

    def up_to_data(self, recipients: int = 1) -> None:
        self.up_to_mail()
        self.server(b"250 2.1.0 ok\r\n")
        for _ in range(recipients):
            self.server(b"250 2.1.5 ok\r\n")


class ConversationTests(SynchronousTestCase):
    def test_happy_path_two_recipients(self) -> None:
        """The full exchange with two recipients writes exactly the expected commands and data."""
        c = Conversation(make_message("bob@example.com", "carol@example.com"))
        self.assertEqual(c.server(GREETING), b"EHLO gw.example.net\r\n")
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<alice@example.net>\r\n")
        self.assertEqual(c.server(b"250 2.1.0 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(c.server(b"250 2.1.5 ok\r\n"), b"RCPT TO:<carol@example.com>\r\n")
        self.assertEqual(c.server(b"250 2.1.5 ok\r\n"), b"DATA\r\n")
        self.assertNoResult(c.protocol.result)
        self.assertEqual(c.server(b"354 go ahead\r\n"), BODY + b".\r\n")
        self.assertNoResult(c.protocol.result)
        self.assertEqual(c.server(b"250 2.0.0 queued as 123\r\n"), b"QUIT\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(
            result,
            DeliveryResult(
                accepted=["bob@example.com", "carol@example.com"],
                reply=said("250 2.0.0 queued as 123", "end of data"),
            ),
        )
        self.assertFalse(c.transport.disconnecting)
        c.server(b"221 2.0.0 bye\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_multiline_ehlo_byte_by_byte(self) -> None:
        """A multi-line EHLO reply is read whole even one byte at a time, and SIZE is used."""
        c = Conversation(make_message(size=1234))
        c.server(GREETING)
        reply = b"250-mx.example.com\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 HELP\r\n"
        for byte in reply[:-1]:
            self.assertEqual(c.server(bytes([byte])), b"")
        self.assertEqual(c.server(reply[-1:]), b"MAIL FROM:<alice@example.net> SIZE=1234\r\n")

    def test_no_size_without_extension(self) -> None:
        """SIZE= is only sent to a server that advertises SIZE."""
        c = Conversation(make_message(size=1234))
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<alice@example.net>\r\n")

    def test_null_sender(self) -> None:
        """An empty sender is sent as the null reverse-path MAIL FROM:<>."""
        c = Conversation(make_message(sender=""))
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<>\r\n")

    def test_helo_fallback(self) -> None:
        """A 5xx to EHLO makes the client fall back to HELO, and then go on."""
        c = Conversation(make_message())
        c.server(GREETING)
        self.assertEqual(c.server(b"502 5.5.1 what?\r\n"), b"HELO gw.example.net\r\n")
        self.assertEqual(c.server(b"250 hi\r\n"), b"MAIL FROM:<alice@example.net>\r\n")

    def test_mixed_recipients(self) -> None:
        """One 4xx, one 5xx and one accepted recipient: data goes to the accepted one only."""
        c = Conversation(make_message("t@example.com", "p@example.com", "ok@example.com"))
        c.up_to_mail()
        c.server(b"250 ok\r\n")
        self.assertEqual(c.server(b"450 4.2.1 try later\r\n"), b"RCPT TO:<p@example.com>\r\n")
        self.assertEqual(c.server(b"550 5.1.1 no such user\r\n"), b"RCPT TO:<ok@example.com>\r\n")
        self.assertEqual(c.server(b"250 ok\r\n"), b"DATA\r\n")
        c.server(b"354 go\r\n")
        c.server(b"250 done\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(result.accepted, ["ok@example.com"])
        self.assertEqual(
            result.temporary, {"t@example.com": said("450 4.2.1 try later", "RCPT TO")}
        )
        self.assertEqual(
            result.permanent, {"p@example.com": said("550 5.1.1 no such user", "RCPT TO")}
        )

    def test_all_recipients_rejected(self) -> None:
        """When every recipient gets 5xx the transaction fails permanently, without DATA."""
        c = Conversation(make_message("a@example.com", "b@example.com"))
        c.up_to_mail()
        c.server(b"250 ok\r\n")
        c.server(b"550 5.1.1 no such user\r\n")
        self.assertEqual(c.server(b"551 5.1.6 moved\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("550 5.1.1 no such user", "RCPT TO"))
        self.assertEqual(
            error.recipients,
            {
                "a@example.com": said("550 5.1.1 no such user", "RCPT TO"),
                "b@example.com": said("551 5.1.6 moved", "RCPT TO"),
            },
        )

    def test_all_recipients_deferred(self) -> None:
        """When no recipient is accepted but some got 4xx, each keeps its own answer; no DATA."""
        c = Conversation(make_message("a@example.com", "b@example.com"))
        c.up_to_mail()
        c.server(b"250 ok\r\n")
        c.server(b"451 4.7.1 greylisted\r\n")
        self.assertEqual(c.server(b"550 5.1.1 unknown\r\n"), b"QUIT\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(result.accepted, [])
        self.assertEqual(list(result.temporary), ["a@example.com"])
        self.assertEqual(list(result.permanent), ["b@example.com"])

    def test_5xx_at_mail(self) -> None:
        """A 5xx to MAIL FROM is a permanent failure of the whole transaction, then QUIT."""
        c = Conversation(make_message())
        c.up_to_mail()
        self.assertEqual(c.server(b"553 5.7.1 sender rejected\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("553 5.7.1 sender rejected", "MAIL FROM"))
        self.assertEqual(error.recipients, {})

    def test_4xx_at_mail(self) -> None:
        """A 4xx to MAIL FROM is temporary, and another host may be tried."""
        c = Conversation(make_message())
        c.up_to_mail()
        c.server(b"421 4.3.2 shutting down\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertTrue(error.try_other_hosts)

    def test_5xx_at_data(self) -> None:
        """A 5xx to DATA is permanent."""
        c = Conversation(make_message())
        c.up_to_data()
        self.assertEqual(c.server(b"554 5.5.1 no valid recipients\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("554 5.5.1 no valid recipients", "DATA"))

    def test_5xx_at_final_dot(self) -> None:
        """A 5xx to the final dot is permanent."""
        c = Conversation(make_message())
        c.up_to_data()
        c.server(b"354 go\r\n")
        c.server(b"554 5.7.1 spam\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("554 5.7.1 spam", "end of data"))

    def test_4xx_at_final_dot(self) -> None:
        """A 4xx to the final dot is temporary, and is this host's definite answer (no next MX)."""
        c = Conversation(make_message())
        c.up_to_data()
        c.server(b"354 go\r\n")
        self.assertEqual(c.server(b"451 4.3.0 try again\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(error.text, said("451 4.3.0 try again", "end of data"))
        self.assertFalse(error.try_other_hosts)

    def test_421_greeting(self) -> None:
        """A 421 greeting is a temporary failure; the client says QUIT."""
        c = Conversation(make_message())
        self.assertEqual(c.server(b"421 4.3.2 too busy\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(error.text, said("421 4.3.2 too busy", "initial greeting"))
        self.assertTrue(error.try_other_hosts)

    def test_554_greeting_is_temporary(self) -> None:
        """A 5xx greeting only refuses this host, so it is temporary (Postfix skips such hosts)."""
        c = Conversation(make_message())
        c.server(b"554 no service\r\n")
        self.failureResultOf(c.protocol.result, TemporaryDeliveryError)

    def test_non_250_success_at_dot(self) -> None:
        """Only 250 to the final dot counts as delivered."""
        c = Conversation(make_message())
        c.up_to_data()
        c.server(b"354 go\r\n")
        c.server(b"252 maybe\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertFalse(error.try_other_hosts)

    def test_reply_text_sanitised(self) -> None:
        """Control characters and invalid UTF-8 in a reply do not reach the error text."""
        c = Conversation(make_message())
        c.server(b"421 bad\x1b[31m\xff\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(error.text, said("421 bad?[31m\ufffd", "initial greeting"))

    def test_multiline_error_reply(self) -> None:
        """The lines of a multi-line error reply are joined into one text."""
        c = Conversation(make_message())
        c.up_to_mail()
        c.server(b"550-5.7.1 first\r\n550 5.7.1 second\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("550 5.7.1 first 5.7.1 second", "MAIL FROM"))

    def test_malformed_reply(self) -> None:
        """A reply that is not 'NNN text' is a protocol error and the connection is aborted."""
        c = Conversation(make_message())
        c.server(b"hello there\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertIn("malformed reply", error.text)
        self.assertTrue(c.transport.disconnected)

    def test_overlong_reply_line(self) -> None:
        """A reply line longer than the limit is refused instead of buffered without end."""
        c = Conversation(make_message())
        c.server(b"220" + b"x" * 10_000)
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertIn("too long", error.text)

    def test_unsolicited_reply_is_protocol_error(self) -> None:
        """An extra reply sent before our next command cannot be taken as its answer."""
        c = Conversation(make_message("a@example.com"))
        c.up_to_mail()
        self.assertEqual(c.server(b"250 ok\r\n250 fake rcpt ok\r\n"), b"")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertIn("unexpected data after its reply to MAIL FROM", error.text)
        self.assertTrue(c.transport.disconnected)


class EnvelopeTests(SynchronousTestCase):
    def test_sender_with_crlf(self) -> None:
        """A sender with CRLF (SMTP command injection) is refused before anything is written."""
        message = make_message(sender="a@b>\r\nRCPT TO:<evil@x.com")
        self.assertRaises(PermanentDeliveryError, Conversation, message)

    def test_bad_characters(self) -> None:
        """NUL, CR, LF, angle brackets and spaces make a recipient address unusable."""
        for bad in ("a\x00@x", "a\r@x", "a\n@x", "a<@x", "a>@x", "a b@x", ""):
            reactor = MemoryReactorClock()
            d = Deferred.fromCoroutine(
                deliver(reactor, "mx", 25, make_message(bad), ClientOptions(HELO))
            )
            self.failureResultOf(d, PermanentDeliveryError)
            self.assertEqual(reactor.tcpClients, [])

    def test_non_ascii_address(self) -> None:
        """A non-ASCII address needs SMTPUTF8, which the client does not speak: refused unsent."""
        error = self.assertRaises(
            PermanentDeliveryError, Conversation, make_message(sender="j\u00f6rg@example.net")
        )
        self.assertEqual(
            error.text,
            "invalid sender address 'j\u00f6rg@example.net': has non-ASCII characters "
            "(needs SMTPUTF8)",
        )

    def test_one_bad_recipient(self) -> None:
        """An unusable recipient fails on its own; the others are still delivered."""
        c = Conversation(make_message("good@example.com", "bad\r\n@example.com"))
        c.up_to_mail()
        self.assertEqual(c.server(b"250 ok\r\n"), b"RCPT TO:<good@example.com>\r\n")
        self.assertEqual(c.server(b"250 ok\r\n"), b"DATA\r\n")
        c.server(b"354 go\r\n")
        c.server(b"250 ok\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(result.accepted, ["good@example.com"])
        self.assertEqual(list(result.permanent), ["bad\r\n@example.com"])
        self.assertIn("contains CR", result.permanent["bad\r\n@example.com"])

    def test_bad_helo(self) -> None:
        """A HELO name with a line break is a configuration error."""
        self.assertRaises(ValueError, ClientOptions, "gw\r\nMAIL FROM:<x>")


class ContentTests(SynchronousTestCase):
    """Content sent as it is read. The messages made here with C{eight_bit=False} are known
    to be 7-bit, so nothing is read before DATA, as for a message over PREFETCH_LIMIT."""

    def deliver_chunks(self, *chunks: bytes) -> bytes:
        c = Conversation(make_message(chunks=chunks))
        c.up_to_data()
        return c.server(b"354 go\r\n")

    def test_dot_stuffing_at_chunk_boundary(self) -> None:
        """On the wire, a chunk starting with '.x' after one ending in CRLF is stuffed."""
        self.assertEqual(self.deliver_chunks(b"a\r\n", b".x\r\n"), b"a\r\n..x\r\n.\r\n")

    def test_first_line_dot(self) -> None:
        """On the wire, a message whose first line starts with '.' is stuffed."""
        self.assertEqual(self.deliver_chunks(b".first\r\n"), b"..first\r\n.\r\n")

    def test_long_line(self) -> None:
        """On the wire, a 3000-byte line is folded."""
        wire = self.deliver_chunks(b"x" * 3000 + b"\r\n")
        self.assertTrue(all(len(line) <= 998 for line in wire.split(b"\r\n")))
        self.assertTrue(wire.startswith(b"x" * 998 + b"\r\n x"))

    def test_bare_lf(self) -> None:
        """On the wire, bare LFs are CRLF."""
        self.assertEqual(self.deliver_chunks(b"a\nb\n"), b"a\r\nb\r\n.\r\n")

    def test_content_read_again_per_attempt(self) -> None:
        """The content factory is called for each attempt, so a retry sends the whole message."""
        message = make_message()
        for _ in range(2):
            c = Conversation(message)
            c.up_to_data()
            self.assertEqual(c.server(b"354 go\r\n"), BODY + b".\r\n")

    def test_flow_control(self) -> None:
        """While the transport has paused us, no further content is read or written."""
        reads: list[int] = []

        async def produce() -> AsyncIterator[bytes]:
            for i in range(3):
                reads.append(i)
                yield b"chunk %d\r\n" % i

        transport = PausingTransport()
        message = OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=False)
        c = Conversation(message, transport=transport)
        c.up_to_data()
        self.assertEqual(c.server(b"354 go\r\n"), b"chunk 0\r\n")
        self.assertIs(transport.producer, c.protocol)
        self.assertEqual(reads, [0])
        transport.clear()
        c.protocol.resumeProducing()
        self.assertEqual(transport.value(), b"chunk 1\r\n")
        transport.clear()
        c.protocol.resumeProducing()
        self.assertEqual(transport.value(), b"chunk 2\r\n")
        self.assertEqual(reads, [0, 1, 2])
        transport.clear()
        c.protocol.resumeProducing()
        self.assertEqual(transport.value(), b".\r\n")
        self.assertIsNone(transport.producer)

    def test_connection_lost_mid_data(self) -> None:
        """A lost connection while sending content is temporary; the dot is never sent."""
        gate: Deferred[bytes] = Deferred()
        closed: list[bool] = []

        async def produce() -> AsyncIterator[bytes]:
            try:
                yield b"first\r\n"
                yield await gate
            finally:
                closed.append(True)

        c = Conversation(
            OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=False)
        )
        c.up_to_data()
        self.assertEqual(c.server(b"354 go\r\n"), b"first\r\n")
        c.transport.clear()
        c.protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"lost connection with {PEER} while sending the message content"
        )
        self.assertTrue(error.try_other_hosts)
        self.assertEqual(c.transport.value(), b"")
        self.assertEqual(closed, [True])

    def test_content_source_fails(self) -> None:
        """If reading the content fails, the connection is aborted without the final dot."""

        async def produce() -> AsyncIterator[bytes]:
            yield b"part one\r\n"
            raise OSError("disk on fire: secret body text")

        c = Conversation(
            OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=False)
        )
        c.up_to_data()
        self.assertEqual(c.server(b"354 go\r\n"), b"part one\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(error.text, "reading the message content failed (OSError)")
        self.assertTrue(c.transport.disconnected)
        self.flushLoggedErrors(OSError)

    def test_early_reply_during_content(self) -> None:
        """A 5xx while the content is still being sent ends the attempt permanently."""
        gate: Deferred[bytes] = Deferred()

        async def produce() -> AsyncIterator[bytes]:
            yield b"first\r\n"
            yield await gate

        c = Conversation(
            OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=False)
        )
        c.up_to_data()
        c.server(b"354 go\r\n")
        c.server(b"552 5.3.4 too big\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("552 5.3.4 too big", "message content"))
        self.assertTrue(c.transport.disconnected)
        self.assertNotIn(b".\r\n", c.transport.value())


EHLO_7BIT = b"250-mx.example.com hello\r\n250 SIZE 10000000\r\n"
"""A peer that does not offer 8BITMIME (nor PIPELINING)."""

EIGHT_BIT = (
    b"From: J\xc3\xb6rg <jorg@example.net>\r\n"
    b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe\r\n"
    b".\r\n"
)


def send_one(c: Conversation, ehlo: bytes) -> tuple[bytes, bytes]:
    """Play a server with C{ehlo}; return the MAIL FROM line and the DATA content written."""
    c.server(GREETING)
    mail = c.server(ehlo)
    c.server(b"250 2.1.0 ok\r\n")
    c.server(b"250 2.1.5 ok\r\n")
    wire = c.server(b"354 go\r\n")
    c.server(b"250 2.0.0 queued\r\n")
    return mail, wire


def immediately(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """A thread runner for tests: runs C{f} at once."""
    return succeed(f(*args))


class EightBitTests(SynchronousTestCase):
    """RFC 6152: BODY=8BITMIME to a peer that offers it, a 7-bit conversion to one that does not."""

    def test_body_8bitmime_only_for_8bit_mail(self) -> None:
        """An 8-bit message gets BODY=8BITMIME and goes as it is; a 7-bit one does not get it."""
        messages = [make_message(chunks=[EIGHT_BIT]), make_message(chunks=[BODY])]
        c = Conversation(messages)
        c.server(GREETING)
        mail = c.server(EHLO_REPLY)
        self.assertEqual(mail, b"MAIL FROM:<alice@example.net> BODY=8BITMIME\r\n")
        c.server(b"250 ok\r\n")
        c.server(b"250 ok\r\n")
        self.assertEqual(decode_wire(c.server(b"354 go\r\n")), EIGHT_BIT)
        self.assertEqual(c.server(b"250 ok\r\n"), b"MAIL FROM:<alice@example.net>\r\n")
        self.successResultOf(c.protocol.results[0])

    def test_known_8bit_not_read_before_mail(self) -> None:
        """A message known to be 8-bit (eight_bit=True) is not read before its MAIL FROM."""
        reads: list[int] = []

        async def produce() -> AsyncIterator[bytes]:
            reads.append(1)
            yield EIGHT_BIT

        message = OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=True)
        c = Conversation(message)
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n")
        self.assertEqual(reads, [])

    def test_downgraded_without_8bitmime(self) -> None:
        """To a peer without 8BITMIME the message goes 7-bit, without BODY=, same content."""
        runs: list[int] = []

        def runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            runs.append(len(args[0]))
            return succeed(f(*args))

        c = Conversation(
            make_message(chunks=[EIGHT_BIT[:30], EIGHT_BIT[30:]]), run_in_thread=runner
        )
        mail, wire = send_one(c, EHLO_7BIT)
        self.assertEqual(mail, b"MAIL FROM:<alice@example.net>\r\n")
        self.assertEqual(runs, [len(EIGHT_BIT)])
        self.assertTrue(wire.isascii())
        sent = email.message_from_bytes(decode_wire(wire), policy=email.policy.default)
        self.assertEqual(sent["Subject"], "Gr\u00fc\u00dfe")
        self.assertEqual(sent["From"].addresses[0].display_name, "J\u00f6rg")
        self.assertEqual(sent["Content-Transfer-Encoding"], "quoted-printable")
        self.assertEqual(sent.get_content(), "Sch\u00f6ne Gr\u00fc\u00dfe\r\n.\r\n")
        self.successResultOf(c.protocol.result)

    def test_downgraded_size(self) -> None:
        """SIZE= gives the size of the converted message, which is what is sent."""
        message = make_message(chunks=[EIGHT_BIT], size=len(EIGHT_BIT))
        c = Conversation(message, run_in_thread=immediately)
        c.server(GREETING)
        mail = c.server(EHLO_7BIT)
        match = re.fullmatch(rb"MAIL FROM:<alice@example.net> SIZE=(\d+)\r\n", mail)
        assert match is not None, mail
        self.assertGreater(int(match[1]), len(EIGHT_BIT))

    def test_not_convertible_bounces(self) -> None:
        """An 8-bit message that cannot be made 7-bit fails permanently, unsent; the next goes."""
        bad = b"From: j\xc3\xb6rg@example.net\r\n\r\nbody\r\n"
        messages = [make_message(chunks=[bad]), make_message(chunks=[BODY], sender="eve@ex.net")]
        c = Conversation(messages, run_in_thread=immediately)
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_7BIT), b"MAIL FROM:<eve@ex.net>\r\n")
        error = self.failureResultOf(c.protocol.results[0], PermanentDeliveryError).value
        self.assertEqual(
            error.text,
            f"{PEER} does not accept 8-bit mail (no 8BITMIME) and the message could not be "
            "converted to 7-bit: an address in the From header has non-ASCII characters "
            "(that needs SMTPUTF8)",
        )
        self.assertNoResult(c.protocol.results[1])

    def test_conversion_off_the_reactor(self) -> None:
        """The conversion runs in the thread runner; a session lost meanwhile sends nothing."""
        pending: list[Deferred[Any]] = []

        def runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            d.addCallback(lambda _: f(*args))
            return d

        c = Conversation(make_message(chunks=[EIGHT_BIT]), run_in_thread=runner)
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_7BIT), b"")
        self.assertEqual(len(pending), 1)
        c.protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"lost connection with {PEER} while reading the message content"
        )
        c.transport.clear()
        pending[0].callback(None)
        self.assertEqual(c.transport.value(), b"")

    def test_read_once_unless_past_prefetch_limit(self) -> None:
        """A small message is read once (what was read to check it is sent); one larger than
        PREFETCH_LIMIT is scanned to its end, then read again to be sent."""
        big = b"x" * 1000 + b"\r\n"
        for chunks, reads_wanted in [
            ([b"Subject: small\r\n\r\n\xc3\xa4\r\n"], 1),
            ([b"Subject: big\r\n\r\n", *[big] * 1100, b"\xc3\xa4\r\n"], 2),
        ]:
            reads: list[int] = []

            async def produce(
                chunks: list[bytes] = chunks, reads: list[int] = reads
            ) -> AsyncIterator[bytes]:
                reads.append(1)
                for chunk in chunks:
                    yield chunk

            c = Conversation(OutgoingMessage("a@example.net", ["b@example.com"], produce))
            mail, wire = send_one(c, EHLO_REPLY)
            self.assertEqual(mail, b"MAIL FROM:<a@example.net> BODY=8BITMIME\r\n")
            self.assertEqual(len(reads), reads_wanted)
            self.assertEqual(decode_wire(wire), b"".join(chunks))

    def test_reply_while_preparing(self) -> None:
        """A reply that comes before our MAIL FROM (a 421, say) ends the session, temporarily."""
        gate: Deferred[bytes] = Deferred()

        async def produce() -> AsyncIterator[bytes]:
            yield await gate

        c = Conversation(OutgoingMessage("a@example.net", ["b@example.com"], produce))
        c.server(GREETING)
        c.server(EHLO_REPLY)
        c.server(b"421 4.4.2 idle too long\r\n")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"{PEER} sent '421 4.4.2 idle too long' before our next command"
        )
        self.assertTrue(error.try_other_hosts)
        self.assertTrue(c.transport.disconnected)

    def test_content_fails_before_mail(self) -> None:
        """Reading fails before MAIL FROM: that message is retried later, the next one goes."""

        async def broken() -> AsyncIterator[bytes]:
            yield b"part one\r\n"
            raise OSError("disk on fire: secret body text")

        first = OutgoingMessage("a@example.net", ["b@example.com"], broken)
        c = Conversation([first, make_message(sender="eve@ex.net")])
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<eve@ex.net>\r\n")
        error = self.failureResultOf(c.protocol.results[0], TemporaryDeliveryError).value
        self.assertEqual(error.text, "reading the message content failed (OSError)")
        self.assertFalse(c.transport.disconnecting)
        self.flushLoggedErrors(OSError)

    def test_stalled_read_before_mail(self) -> None:
        """Reading that makes no progress for 180 s before MAIL FROM ends the attempt."""
        gate: Deferred[bytes] = Deferred()

        async def produce() -> AsyncIterator[bytes]:
            yield await gate

        c = Conversation(OutgoingMessage("a@example.net", ["b@example.com"], produce))
        c.server(GREETING)
        c.server(EHLO_REPLY)
        c.clock.advance(180)
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"conversation with {PEER} timed out while reading the message content"
        )
        self.assertTrue(error.try_other_hosts)

    def test_portal_forward(self) -> None:
        """The portal's forward of an 8-bit mail (8-bit message/rfc822) gets BODY=8BITMIME, or
        goes 7-bit, its attached original intact, to an internal server without 8BITMIME."""
        settings = make_settings("/nonexistent/secmail-client-tests")
        original = EIGHT_BIT.replace(b"From: J", b"To: bob@partner.example\r\nFrom: J")
        mail = build_reply(
            original=original,
            mode="forward",
            reader="bob@partner.example",
            reader_original="bob@partner.example.s",
            text="F\u00fcr dich",
            uploads=(),
            forward_to="dave@corp.example",
            routes=settings.routes,
            secure=settings.secure,
            identity=settings.identity,
            date=datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
        )
        self.assertFalse(mail.content.isascii())
        c = Conversation(make_message(chunks=[mail.content]))
        mail_line, wire = send_one(c, EHLO_REPLY)
        self.assertTrue(mail_line.endswith(b" BODY=8BITMIME\r\n"))
        self.assertEqual(decode_wire(wire), mail.content)

        c = Conversation(make_message(chunks=[mail.content]), run_in_thread=immediately)
        mail_line, wire = send_one(c, EHLO_7BIT)
        self.assertNotIn(b"BODY=", mail_line)
        self.assertTrue(wire.isascii())
        sent = email.message_from_bytes(decode_wire(wire), policy=email.policy.default)
        [attached] = [p for p in sent.walk() if p.get_content_type() == "message/rfc822"]
        self.assertEqual(attached["Content-Transfer-Encoding"], "7bit")
        inner = attached.get_content()
        self.assertEqual(inner["Subject"], "Gr\u00fc\u00dfe")
        self.assertEqual(inner.get_content(), "Sch\u00f6ne Gr\u00fc\u00dfe\r\n.\r\n")
        self.successResultOf(c.protocol.result)


class PausingTransport(TlsStringTransport):
    """A transport whose buffer is 'full' after every content write while a producer is set."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None:
            self.producer.pauseProducing()


class TimeoutTests(SynchronousTestCase):
    def check_timeout(self, c: Conversation, seconds: float, phrase: str) -> TemporaryDeliveryError:
        c.clock.advance(seconds - 0.5)
        self.assertNoResult(c.protocol.result)
        c.clock.advance(0.5)
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(error.text, f"conversation with {PEER} timed out {phrase}")
        self.assertTrue(c.transport.disconnected)
        return error

    def test_greeting(self) -> None:
        """No greeting within 300 s is a temporary failure."""
        self.check_timeout(
            Conversation(make_message()), 300, "while receiving the initial greeting"
        )

    def test_ehlo(self) -> None:
        """No EHLO reply within 300 s is a temporary failure."""
        c = Conversation(make_message())
        c.server(GREETING)
        self.check_timeout(c, 300, "while waiting for the reply to EHLO")

    def test_mail(self) -> None:
        """No MAIL reply within 300 s is a temporary failure."""
        c = Conversation(make_message())
        c.up_to_mail()
        self.check_timeout(c, 300, "while waiting for the reply to MAIL FROM")

    def test_rcpt(self) -> None:
        """No RCPT reply within 300 s is a temporary failure."""
        c = Conversation(make_message())
        c.up_to_mail()
        c.server(b"250 ok\r\n")
        self.check_timeout(c, 300, "while waiting for the reply to RCPT TO")

    def test_data(self) -> None:
        """No DATA reply within 120 s is a temporary failure."""
        c = Conversation(make_message())
        c.up_to_data()
        self.check_timeout(c, 120, "while waiting for the reply to DATA")

    def test_stalled_content(self) -> None:
        """Content that makes no progress for 180 s ends the attempt without the dot."""
        gate: Deferred[bytes] = Deferred()

        async def produce() -> AsyncIterator[bytes]:
            yield b"first\r\n"
            yield await gate

        c = Conversation(
            OutgoingMessage("a@example.net", ["b@example.com"], produce, eight_bit=False)
        )
        c.up_to_data()
        c.server(b"354 go\r\n")
        self.check_timeout(c, 180, "while sending the message content")
        self.assertNotIn(b".\r\n", c.transport.value())

    def test_final_dot(self) -> None:
        """No reply to the final dot within 600 s is temporary, and no other host is tried."""
        c = Conversation(make_message())
        c.up_to_data()
        c.server(b"354 go\r\n")
        c.clock.advance(599)  # the content timeout must not fire once the dot is sent
        error = self.check_timeout(c, 1, "while waiting for the reply to end of data")
        self.assertFalse(error.try_other_hosts)

    def test_custom_timeouts(self) -> None:
        """The timeouts come from the Timeouts passed in."""
        c = Conversation(make_message(), timeouts=Timeouts(greeting=5))
        self.check_timeout(c, 5, "while receiving the initial greeting")

    def test_quit_without_reply(self) -> None:
        """A QUIT that gets no reply does not spoil the delivery; the client closes after a wait."""
        c = Conversation(make_message())
        c.up_to_data()
        c.server(b"354 go\r\n")
        c.server(b"250 ok\r\n")
        self.successResultOf(c.protocol.result)
        self.assertFalse(c.transport.disconnecting)
        c.clock.advance(10)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(c.clock.getDelayedCalls(), [])


class StartTlsTests(SynchronousTestCase):
    EHLO_TLS = b"250-mx.example.com\r\n250-STARTTLS\r\n250 8BITMIME\r\n"

    def test_opportunistic(self) -> None:
        """STARTTLS is used when offered, without verification, then EHLO is sent again."""
        c = Conversation(make_message(), tls=TlsPolicy.OPPORTUNISTIC)
        c.server(GREETING)
        self.assertEqual(c.server(self.EHLO_TLS), b"STARTTLS\r\n")
        self.assertEqual(c.server(b"220 2.0.0 ready\r\n"), b"EHLO gw.example.net\r\n")
        [creator] = c.transport.tls_started
        self.assertIsInstance(creator, CertificateOptions)
        self.assertFalse(creator.verify)
        # The server still lists STARTTLS after TLS: the client must not try it twice.
        self.assertEqual(c.server(self.EHLO_TLS), b"MAIL FROM:<alice@example.net>\r\n")

    def test_injection_after_starttls(self) -> None:
        """Plain-text data after '220 ready' (CVE-2011-0411 style) aborts instead of being read."""
        c = Conversation(make_message(), tls=TlsPolicy.OPPORTUNISTIC)
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        self.assertEqual(c.server(b"220 ready\r\n250-fake\r\n250 ok\r\n"), b"")
        self.assertEqual(c.transport.tls_started, [])
        self.failureResultOf(c.protocol.result, TemporaryDeliveryError)

    def test_not_offered(self) -> None:
        """Without STARTTLS in EHLO, even VERIFY carries on in plain text."""
        c = Conversation(make_message(), tls=TlsPolicy.VERIFY)
        c.server(GREETING)
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<alice@example.net>\r\n")

    def test_policy_none(self) -> None:
        """TlsPolicy.NONE never sends STARTTLS."""
        c = Conversation(make_message(), tls=TlsPolicy.NONE)
        c.server(GREETING)
        self.assertEqual(c.server(self.EHLO_TLS), b"MAIL FROM:<alice@example.net>\r\n")

    def test_verify_uses_hostname_check(self) -> None:
        """Under VERIFY, TLS is started with a creator that checks the certificate's host name."""
        c = Conversation(make_message(), tls=TlsPolicy.VERIFY)
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        c.server(b"220 ready\r\n")
        [creator] = c.transport.tls_started
        self.assertEqual(type(creator).__name__, "ClientTLSOptions")
        self.assertEqual(creator._hostnameASCII, "mx.example.com")

    def test_verify_with_bad_ca_file(self) -> None:
        """An unreadable CA file is a temporary failure, not a fallback to no verification."""
        c = Conversation(make_message(), tls=TlsPolicy.VERIFY, ca_file="/nonexistent/ca.pem")
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        c.server(b"220 ready\r\n")
        self.assertEqual(c.transport.tls_started, [])
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertIn("cannot use CA file", error.text)
        self.flushLoggedErrors(TemporaryDeliveryError)

    def test_refused_opportunistic(self) -> None:
        """A 454 to STARTTLS under OPPORTUNISTIC carries on in plain text."""
        c = Conversation(make_message(), tls=TlsPolicy.OPPORTUNISTIC)
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        self.assertEqual(c.server(b"454 4.7.0 no TLS\r\n"), b"MAIL FROM:<alice@example.net>\r\n")

    def test_refused_verify(self) -> None:
        """A 454 to STARTTLS under VERIFY is a temporary failure."""
        c = Conversation(make_message(), tls=TlsPolicy.VERIFY)
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        self.assertEqual(c.server(b"454 4.7.0 no TLS\r\n"), b"QUIT\r\n")
        self.failureResultOf(c.protocol.result, TemporaryDeliveryError)

    def test_handshake_failure(self) -> None:
        """A connection lost during the TLS handshake is a temporary TLS failure."""
        c = Conversation(make_message(), tls=TlsPolicy.OPPORTUNISTIC)
        c.server(GREETING)
        c.server(self.EHLO_TLS)
        c.server(b"220 ready\r\n")
        c.protocol.connectionLost(Failure(SSL.Error([("SSL routines", "", "bad record")])))
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith(f"TLS handshake with {PEER} failed"))


def transcript(c: Conversation, replies: Sequence[bytes]) -> bytes:
    """Everything the client writes while the server sends C{replies} one by one."""
    return b"".join(c.server(reply) for reply in replies)


def up_to_second_mail(c: Conversation) -> None:
    """Deliver the first message, so that the client has just sent the second MAIL FROM."""
    c.server(GREETING)
    c.server(EHLO_REPLY)
    replies = [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
    transcript(c, replies)
    assert c.server(b"250 2.0.0 queued\r\n").startswith(b"MAIL FROM:<eve@ex.net>")


class SessionTests(SynchronousTestCase):
    def test_two_messages(self) -> None:
        """The second message starts with MAIL FROM right after the first one's 250 to the dot."""
        one, two = three_messages()[:2]
        c = Conversation([one, two])
        self.assertEqual(c.server(GREETING), b"EHLO gw.example.net\r\n")
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<alice@example.net>\r\n")
        self.assertEqual(c.server(b"250 2.1.0 ok\r\n"), b"RCPT TO:<bob@example.com>\r\n")
        self.assertEqual(c.server(b"250 2.1.5 ok\r\n"), b"DATA\r\n")
        self.assertEqual(c.server(b"354 go ahead\r\n"), ONE + b".\r\n")
        self.assertEqual(c.server(b"250 2.0.0 queued as 1\r\n"), b"MAIL FROM:<eve@ex.net>\r\n")
        first = self.successResultOf(c.protocol.results[0])
        self.assertEqual(first.reply, said("250 2.0.0 queued as 1", "end of data"))
        self.assertNoResult(c.protocol.results[1])
        self.assertEqual(c.server(b"250 2.1.0 ok\r\n"), b"RCPT TO:<carol@example.com>\r\n")
        self.assertEqual(c.server(b"250 2.1.5 ok\r\n"), b"RCPT TO:<dan@example.com>\r\n")
        self.assertEqual(c.server(b"250 2.1.5 ok\r\n"), b"DATA\r\n")
        self.assertEqual(c.server(b"354 go ahead\r\n"), b"Subject: two\r\n\r\n..second\r\n.\r\n")
        self.assertEqual(c.server(b"250 2.0.0 queued as 2\r\n"), b"QUIT\r\n")
        second = self.successResultOf(c.protocol.results[1])
        self.assertEqual(second.accepted, ["carol@example.com", "dan@example.com"])
        self.assertEqual(second.reply, said("250 2.0.0 queued as 2", "end of data"))
        c.server(b"221 bye\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_three_messages_transcript(self) -> None:
        """Three messages over one connection: one EHLO, three transactions, one QUIT."""
        c = Conversation(three_messages())
        replies = [GREETING, EHLO_REPLY]
        for rcpts in (1, 2, 1):
            replies += [b"250 ok\r\n"] * (1 + rcpts) + [b"354 go\r\n", b"250 done\r\n"]
        self.assertEqual(
            transcript(c, replies),
            b"EHLO gw.example.net\r\n"
            b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            + ONE
            + b".\r\n"
            b"MAIL FROM:<eve@ex.net>\r\nRCPT TO:<carol@example.com>\r\n"
            b"RCPT TO:<dan@example.com>\r\nDATA\r\n"
            b"Subject: two\r\n\r\n..second\r\n.\r\n"
            b"MAIL FROM:<>\r\nRCPT TO:<fay@example.com>\r\nDATA\r\n"
            b"Subject: three\r\n\r\nthird\r\n.\r\n"
            b"QUIT\r\n",
        )
        accepted = [self.successResultOf(d).accepted for d in c.protocol.results]
        self.assertEqual(
            accepted,
            [["bob@example.com"], ["carol@example.com", "dan@example.com"], ["fay@example.com"]],
        )

    def test_rset_after_failed_transaction(self) -> None:
        """Whatever failed the first transaction, RSET comes before the second MAIL FROM."""
        failures: list[tuple[list[bytes], type[Exception] | None]] = [
            ([b"550 5.7.1 sender refused\r\n"], PermanentDeliveryError),
            ([b"451 4.3.0 later\r\n"], TemporaryDeliveryError),
            ([b"250 ok\r\n", b"550 5.1.1 no such user\r\n"], PermanentDeliveryError),
            ([b"250 ok\r\n", b"450 4.2.1 busy\r\n"], None),  # a result: all RCPTs deferred
            ([b"250 ok\r\n", b"250 ok\r\n", b"554 5.5.1 no\r\n"], PermanentDeliveryError),
            ([b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 no\r\n"], TemporaryDeliveryError),
            (
                [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"554 5.7.1 spam\r\n"],
                PermanentDeliveryError,
            ),
            (
                [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"451 4.3.0 later\r\n"],
                TemporaryDeliveryError,
            ),
        ]
        for replies, error in failures:
            c = Conversation(three_messages()[:2])
            c.server(GREETING)
            c.server(EHLO_REPLY)
            *before, last = replies
            transcript(c, before)
            self.assertEqual(c.server(last), b"RSET\r\n", replies)
            if error is None:
                result = self.successResultOf(c.protocol.results[0])
                self.assertEqual(list(result.temporary), ["bob@example.com"])
            else:
                self.failureResultOf(c.protocol.results[0], error)
            self.assertEqual(c.server(b"250 2.0.0 reset\r\n"), b"MAIL FROM:<eve@ex.net>\r\n")
            rest = [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok\r\n"]
            self.assertTrue(transcript(c, rest).endswith(b".\r\nQUIT\r\n"), replies)
            self.assertEqual(len(self.successResultOf(c.protocol.results[1]).accepted), 2)

    def test_no_rset_after_last_message(self) -> None:
        """A failed last transaction is followed by QUIT alone: there is nothing to reset for."""
        c = Conversation(three_messages()[:2])
        up_to_second_mail(c)
        self.assertEqual(c.server(b"550 5.7.1 no\r\n"), b"QUIT\r\n")
        self.successResultOf(c.protocol.results[0])
        self.failureResultOf(c.protocol.results[1], PermanentDeliveryError)

    def test_rset_refused(self) -> None:
        """When RSET is refused the session ends with QUIT and the next message is not tried."""
        c = Conversation(three_messages()[:2])
        c.server(GREETING)
        c.server(EHLO_REPLY)
        self.assertEqual(c.server(b"550 5.7.1 no\r\n"), b"RSET\r\n")
        self.assertEqual(c.server(b"500 5.5.1 what?\r\n"), b"QUIT\r\n")
        self.failureResultOf(c.protocol.results[0], PermanentDeliveryError)
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        self.assertEqual(
            error.text,
            f"not tried: the session with {PEER} ended before this message was sent "
            f"({said('500 5.5.1 what?', 'RSET')})",
        )
        self.assertTrue(error.try_other_hosts)

    def test_connection_lost_after_first_message(self) -> None:
        """A connection lost after the first message's 250: the others fail as not tried."""
        c = Conversation(three_messages())
        up_to_second_mail(c)
        c.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.successResultOf(c.protocol.results[0]).accepted, ["bob@example.com"])
        cause = f"lost connection with {PEER} while waiting for the reply to MAIL FROM"
        for later in c.protocol.results[1:]:
            error = self.failureResultOf(later, TemporaryDeliveryError).value
            self.assertEqual(
                error.text,
                f"not tried: the session with {PEER} ended before this message was sent ({cause})",
            )
            self.assertTrue(error.try_other_hosts)

    def test_connection_lost_before_any_message(self) -> None:
        """A session lost before any MAIL FROM was answered gives every message that error."""
        c = Conversation(three_messages())
        c.server(GREETING)
        c.protocol.connectionLost(Failure(ConnectionLost()))
        for result in c.protocol.results:
            error = self.failureResultOf(result, TemporaryDeliveryError).value
            self.assertEqual(
                error.text, f"lost connection with {PEER} while waiting for the reply to EHLO"
            )

    def test_421_greeting_every_message(self) -> None:
        """A 421 greeting is every message's answer, with its own text, and may go elsewhere."""
        c = Conversation(three_messages())
        self.assertEqual(c.server(b"421 4.3.2 busy\r\n"), b"QUIT\r\n")
        for result in c.protocol.results:
            error = self.failureResultOf(result, TemporaryDeliveryError).value
            self.assertEqual(error.text, said("421 4.3.2 busy", "initial greeting"))
            self.assertTrue(error.try_other_hosts)

    def test_lost_in_the_middle_of_a_message(self) -> None:
        """The message in progress gets the session's error, the ones after it 'not tried'."""
        c = Conversation(three_messages())
        up_to_second_mail(c)
        c.server(b"250 ok\r\n")
        c.protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"lost connection with {PEER} while waiting for the reply to RCPT TO"
        )
        error = self.failureResultOf(c.protocol.results[2], TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith("not tried: "))

    def test_421_between_messages(self) -> None:
        """A 421 to a later MAIL FROM ends the session without RSET: the peer is closing."""
        c = Conversation(three_messages())
        up_to_second_mail(c)
        self.assertEqual(c.server(b"421 4.7.0 too many messages\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        self.assertEqual(error.text, said("421 4.7.0 too many messages", "MAIL FROM"))
        error = self.failureResultOf(c.protocol.results[2], TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith("not tried: "))
        self.assertIn("421 4.7.0 too many messages", error.text)

    def test_timeout_at_second_dot(self) -> None:
        """A timeout after the second dot: it may have arrived; the third one was not tried."""
        c = Conversation(three_messages())
        up_to_second_mail(c)
        transcript(c, [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"])
        self.assertTrue(c.server(b"354 go\r\n").endswith(b"\r\n.\r\n"))
        c.clock.advance(599)
        self.assertNoResult(c.protocol.results[1])
        c.clock.advance(1)
        self.assertTrue(c.transport.disconnected)
        self.successResultOf(c.protocol.results[0])
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        cause = f"conversation with {PEER} timed out while waiting for the reply to end of data"
        self.assertEqual(error.text, cause)
        self.assertFalse(error.try_other_hosts)
        error = self.failureResultOf(c.protocol.results[2], TemporaryDeliveryError).value
        self.assertEqual(
            error.text,
            f"not tried: the session with {PEER} ended before this message was sent ({cause})",
        )
        self.assertTrue(error.try_other_hosts)
        self.assertEqual(c.clock.getDelayedCalls(), [])

    def test_rset_timeout(self) -> None:
        """An RSET without reply within 20 s ends the session; the next message was not tried."""
        c = Conversation(three_messages()[:2])
        c.server(GREETING)
        c.server(EHLO_REPLY)
        self.assertEqual(c.server(b"550 5.7.1 no\r\n"), b"RSET\r\n")
        self.failureResultOf(c.protocol.results[0], PermanentDeliveryError)
        c.clock.advance(19.5)
        self.assertNoResult(c.protocol.results[1])
        c.clock.advance(0.5)
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        self.assertIn("timed out while waiting for the reply to RSET", error.text)
        self.assertTrue(error.text.startswith("not tried: "))
        self.assertTrue(c.transport.disconnected)

    def test_content_read_when_its_turn_comes(self) -> None:
        """Each message's content is read only once its DATA got 354, not up front."""
        reads: list[str] = []

        def content(name: str) -> Callable[[], AsyncIterator[bytes]]:
            async def produce() -> AsyncIterator[bytes]:
                reads.append(name)
                yield b"x\r\n"

            return produce

        messages = [
            OutgoingMessage("a@ex.net", ["b@example.com"], content(n), eight_bit=False)
            for n in "12"
        ]
        c = Conversation(messages)
        c.server(GREETING)
        c.server(EHLO_REPLY)
        transcript(c, [b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"])
        self.assertEqual(reads, ["1"])
        transcript(c, [b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n"])
        self.assertEqual(reads, ["1"])
        c.server(b"354 go\r\n")
        self.assertEqual(reads, ["1", "2"])

    def test_empty_session_refused(self) -> None:
        """A session needs at least one message."""
        self.assertRaises(ValueError, Conversation, [])


class WriteRecordingTransport(TlsStringTransport):
    """Keeps every write on its own, to check what went out together."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def pipelined(messages: OutgoingMessage | Sequence[OutgoingMessage]) -> Conversation:
    """A conversation up to the first pipelined group, which the client has just written."""
    c = Conversation(messages, transport=WriteRecordingTransport())
    c.server(GREETING)
    c.server(EHLO_PIPELINING)
    return c


class PipeliningTests(SynchronousTestCase):
    def test_envelope_in_one_write(self) -> None:
        """MAIL FROM, every RCPT TO and DATA go out in one write; the content after the 354."""
        c = Conversation(three_messages()[1], transport=WriteRecordingTransport())
        c.server(GREETING)
        transport = cast(WriteRecordingTransport, c.transport)
        transport.writes.clear()
        c.server(EHLO_PIPELINING)
        self.assertEqual(
            transport.writes,
            [
                b"MAIL FROM:<eve@ex.net>\r\nRCPT TO:<carol@example.com>\r\n"
                b"RCPT TO:<dan@example.com>\r\nDATA\r\n"
            ],
        )
        self.assertEqual(c.server(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"), b"")
        self.assertEqual(c.server(b"354 go ahead\r\n"), b"Subject: two\r\n\r\n..second\r\n.\r\n")
        self.assertEqual(c.server(b"250 2.0.0 queued\r\n"), b"QUIT\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(result.accepted, ["carol@example.com", "dan@example.com"])
        self.assertEqual(result.reply, said("250 2.0.0 queued", "end of data"))

    def test_replies_together_or_byte_by_byte(self) -> None:
        """The group's replies are read in order however they arrive, all in one or byte by byte."""
        replies = b"250 ok\r\n250 ok\r\n250-fine\r\n250 ok\r\n354 go\r\n"
        for pieces in ([replies], [replies[i : i + 1] for i in range(len(replies))]):
            c = pipelined(three_messages()[1])
            wire = transcript(c, pieces)
            self.assertEqual(wire, b"Subject: two\r\n\r\n..second\r\n.\r\n")
            c.server(b"250 ok\r\n")
            self.assertEqual(len(self.successResultOf(c.protocol.result).accepted), 2)

    def test_two_messages(self) -> None:
        """Each message of a pipelining session is one envelope write and one write of its
        content with the final dot (it was read into memory before its MAIL FROM)."""
        c = pipelined(three_messages()[:2])
        transport = cast(WriteRecordingTransport, c.transport)
        transport.writes.clear()
        replies = [b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 one\r\n"]
        replies += [b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", b"250 two\r\n"]
        transcript(c, replies)
        self.assertEqual(
            transport.writes,
            [
                ONE + b".\r\n",
                b"MAIL FROM:<eve@ex.net>\r\nRCPT TO:<carol@example.com>\r\n"
                b"RCPT TO:<dan@example.com>\r\nDATA\r\n",
                b"Subject: two\r\n\r\n..second\r\n.\r\n",
                b"QUIT\r\n",
            ],
        )
        replies_of = [self.successResultOf(d).reply for d in c.protocol.results]
        self.assertEqual(
            replies_of, [said("250 one", "end of data"), said("250 two", "end of data")]
        )

    def test_mixed_recipients(self) -> None:
        """Each RCPT TO reply in a group is matched with its own recipient."""
        c = pipelined(make_message("t@example.com", "p@example.com", "ok@example.com"))
        c.server(b"250 ok\r\n450 4.2.1 try later\r\n550 5.1.1 no such user\r\n250 ok\r\n")
        self.assertEqual(c.server(b"354 go\r\n"), BODY + b".\r\n")
        c.server(b"250 done\r\n")
        result = self.successResultOf(c.protocol.result)
        self.assertEqual(result.accepted, ["ok@example.com"])
        self.assertEqual(
            result.temporary, {"t@example.com": said("450 4.2.1 try later", "RCPT TO")}
        )
        self.assertEqual(
            result.permanent, {"p@example.com": said("550 5.1.1 no such user", "RCPT TO")}
        )

    def test_mail_refused(self) -> None:
        """A refused MAIL FROM fails the message; the replies after it are read, then RSET."""
        c = pipelined(three_messages()[:2])
        self.assertEqual(c.server(b"553 5.7.1 sender refused\r\n"), b"")
        self.assertNoResult(c.protocol.results[0])
        self.assertEqual(c.server(b"503 5.5.1 need MAIL\r\n"), b"")  # to RCPT TO
        self.assertEqual(c.server(b"503 5.5.1 no valid recipients\r\n"), b"RSET\r\n")
        error = self.failureResultOf(c.protocol.results[0], PermanentDeliveryError).value
        self.assertEqual(error.text, said("553 5.7.1 sender refused", "MAIL FROM"))
        self.assertEqual(error.recipients, {})
        self.assertTrue(c.server(b"250 ok\r\n").startswith(b"MAIL FROM:<eve@ex.net>\r\n"))

    def test_every_recipient_refused(self) -> None:
        """With every RCPT TO refused, the refused DATA ends the transaction: no content."""
        c = pipelined(make_message("a@example.com", "b@example.com"))
        c.server(b"250 ok\r\n550 5.1.1 no a\r\n551 5.1.6 moved\r\n")
        self.assertEqual(c.server(b"554 5.5.1 no valid recipients\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.result, PermanentDeliveryError).value
        self.assertEqual(error.text, said("550 5.1.1 no a", "RCPT TO"))
        self.assertEqual(list(error.recipients), ["a@example.com", "b@example.com"])

    def test_data_accepted_without_recipients(self) -> None:
        """A 354 to DATA after every RCPT TO was refused gets a lone dot, not the content."""
        c = pipelined(three_messages()[:2])
        c.server(b"250 ok\r\n450 4.2.1 busy\r\n")
        self.assertEqual(c.server(b"354 go\r\n"), b".\r\n")
        self.assertEqual(c.server(b"250 2.0.0 empty message queued\r\n"), b"RSET\r\n")
        result = self.successResultOf(c.protocol.results[0])
        self.assertEqual(result.accepted, [])
        self.assertEqual(result.temporary, {"bob@example.com": said("450 4.2.1 busy", "RCPT TO")})

    def test_421_to_mail(self) -> None:
        """A 421 to MAIL FROM ends the session at once, without waiting for the other replies."""
        c = pipelined(three_messages()[:2])
        self.assertEqual(c.server(b"421 4.3.2 closing\r\n"), b"QUIT\r\n")
        error = self.failureResultOf(c.protocol.results[0], TemporaryDeliveryError).value
        self.assertEqual(error.text, said("421 4.3.2 closing", "MAIL FROM"))
        error = self.failureResultOf(c.protocol.results[1], TemporaryDeliveryError).value
        self.assertTrue(error.text.startswith("not tried: "))
        c.server(b"421 4.3.2 closing\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_timeout_in_the_group(self) -> None:
        """Each reply of a group has its own timeout, named after its command."""
        c = pipelined(three_messages()[1])
        c.server(b"250 ok\r\n")
        c.clock.advance(299)
        c.server(b"250 ok\r\n")
        c.clock.advance(299)
        self.assertNoResult(c.protocol.result)
        c.server(b"250 ok\r\n")
        c.clock.advance(120)
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"conversation with {PEER} timed out while waiting for the reply to DATA"
        )
        self.assertTrue(c.transport.disconnected)

    def test_lost_in_the_group(self) -> None:
        """A connection lost while replies of a group are due names the one waited for."""
        c = pipelined(three_messages()[1])
        c.server(b"250 ok\r\n")
        c.protocol.connectionLost(Failure(ConnectionLost()))
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertEqual(
            error.text, f"lost connection with {PEER} while waiting for the reply to RCPT TO"
        )

    def test_extra_reply_after_group(self) -> None:
        """A reply beyond those the group asked for is a protocol error, not the dot's answer."""
        c = pipelined(make_message())
        self.assertEqual(c.server(b"250 ok\r\n250 ok\r\n354 go\r\n250 fake\r\n"), b"")
        error = self.failureResultOf(c.protocol.result, TemporaryDeliveryError).value
        self.assertIn("unexpected data after its reply to DATA", error.text)
        self.assertTrue(c.transport.disconnected)

    def test_not_after_helo_or_without_the_keyword(self) -> None:
        """Without PIPELINING in the EHLO reply after STARTTLS, commands go one at a time."""
        c = Conversation(make_message(), tls=TlsPolicy.OPPORTUNISTIC)
        c.server(GREETING)
        self.assertEqual(
            c.server(b"250-mx.example.com\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
            b"STARTTLS\r\n",
        )
        c.server(b"220 ready\r\n")
        self.assertEqual(c.server(EHLO_REPLY), b"MAIL FROM:<alice@example.net>\r\n")
