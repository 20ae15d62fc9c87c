"""
Tests for the ESMTP intake: each closes one gap of Twisted's server (reliability.md sections 3-5).

No sockets: the protocol runs on a StringTransport with a task.Clock, and talks to a fake delivery
that records what the message received.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from secmail.config import SmtpSettings
from secmail.smtp.limits import DATA_LINE_LIMIT
from secmail.smtp.server import GatewayESMTP, GatewayESMTPFactory

HOST = "gw.example.com"
LOCAL = IPv4Address("TCP", "127.0.0.1", 1234)
SETTINGS = SmtpSettings(
    accepted_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
)
RECEIVED = b"Received: from client.example (127.0.0.1)\r\n\tby gw.example.com; now"


@implementer(IOpenSSLServerConnectionCreator)
class FakeTLSContext:
    """Stands for the server's TLS context factory; the fake transport never uses it."""

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        raise NotImplementedError


@implementer(ILogObserver)
class LogEvents(list[dict[str, Any]]):
    """A log observer keeping the events it sees."""

    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


@implementer(IMessageSMTP)
class FakeMessage:
    """An IMessage that records lines, end-of-message calls and aborts."""

    def __init__(self, store: Callable[[], Any] | None = None) -> None:
        self.lines: list[bytes] = []
        self.eom_calls = 0
        self.aborts = 0
        self._store = store or (lambda: defer.succeed("Q123"))

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Any:
        self.eom_calls += 1
        return self._store()

    def connectionLost(self) -> None:
        self.aborts += 1

    @property
    def body(self) -> list[bytes]:
        """The lines after our Received header."""
        return self.lines[len(RECEIVED.split(b"\r\n")) :]


@implementer(IMessageDelivery)
class FakeDelivery:
    """An IMessageDelivery returning one message per transaction, with hooks to misbehave."""

    def __init__(self) -> None:
        self.message = FakeMessage()
        self.senders: list[bytes] = []
        self.recipients: list[bytes] = []
        self.header_recipients: list[list[bytes]] = []
        self.check_sender: Callable[[Any], Any] = lambda origin: origin
        self.check_recipient: Callable[[Any], Any] = lambda user: lambda: self.message

    def receivedHeader(self, helo: Any, origin: Any, recipients: list[Any]) -> bytes:
        self.header_recipients.append([bytes(r) for r in recipients])
        return RECEIVED

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        self.senders.append(bytes(origin))
        return self.check_sender(origin)

    def validateTo(self, user: Any) -> Any:
        self.recipients.append(bytes(user))
        return self.check_recipient(user)


class TLSCapableTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing a handshake."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        alsoProvides(self, ITLSTransport)
        self.tls_started_with: list[object] = []

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:
        self.tls_started_with.append(contextFactory)


class Session:
    """One client connection to a GatewayESMTP, with helpers to talk and read replies."""

    def __init__(
        self,
        settings: SmtpSettings = SETTINGS,
        peer: Any = LOCAL,
        tls: FakeTLSContext | None = None,
        factory: GatewayESMTPFactory | None = None,
        delivery: FakeDelivery | None = None,
        clock: task.Clock | None = None,
    ) -> None:
        self.delivery = delivery or FakeDelivery()
        self.deliveries_made = 0
        self.clock = clock or task.Clock()
        self.transport = (
            TLSCapableTransport(peerAddress=peer) if tls else StringTransport(peerAddress=peer)
        )
        if factory is not None:
            self.protocol = factory.buildProtocol(peer)
        else:
            self.protocol = GatewayESMTP(
                settings, HOST, self._make_delivery, self.clock, tls_context_factory=tls
            )
        self.protocol.makeConnection(self.transport)

    def _make_delivery(self) -> FakeDelivery:
        self.deliveries_made += 1
        return self.delivery

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def replies(self) -> list[str]:
        """Reply lines written since the last call."""
        text = self.transport.value().decode("utf-8")
        self.transport.clear()
        return [line for line in text.split("\r\n") if line]

    def ready(self, ehlo: bool = True) -> Session:
        """Greeted with EHLO (or HELO), output cleared."""
        self.send(b"EHLO client.example\r\n" if ehlo else b"HELO client.example\r\n")
        self.replies()
        return self

    def envelope(self, *recipients: bytes) -> None:
        """MAIL and RCPT commands, all expected to succeed."""
        self.send(b"MAIL FROM:<alice@example.com>\r\n")
        for rcpt in recipients or (b"bob@example.net",):
            self.send(b"RCPT TO:<" + rcpt + b">\r\n")
        assert all(r.startswith("250 ") for r in self.replies())

    def start_data(self) -> None:
        self.envelope()
        self.send(b"DATA\r\n")
        assert self.replies() == ["354 End data with <CR><LF>.<CR><LF>"]


def settings_with(**changes: Any) -> SmtpSettings:
    return replace(SETTINGS, **changes)


@pytest.fixture
def logged() -> Any:
    """Collect log events for the test."""
    events = LogEvents()
    globalLogPublisher.addObserver(events)
    yield events
    globalLogPublisher.removeObserver(events)


# --- connection: accepted networks, greeting, connection limit ---------------------------------


def test_greeting_names_the_gateway() -> None:
    """An accepted client is greeted with the gateway's hostname and ESMTP."""
    s = Session()
    assert s.replies() == [f"220 {HOST} ESMTP secmail"]
    assert not s.transport.disconnecting


def test_client_outside_accepted_networks_is_refused_at_connect() -> None:
    """A client outside accepted_networks gets 554 5.7.1 and is disconnected before any command."""
    s = Session(
        settings=settings_with(accepted_networks=(ipaddress.ip_network("127.0.0.1/32"),)),
        peer=IPv4Address("TCP", "127.0.0.2", 1234),
    )
    assert s.replies() == ["554 5.7.1 127.0.0.2 is not allowed to relay through this gateway"]
    assert s.transport.disconnecting
    s.send(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    assert s.replies() == []
    assert s.deliveries_made == 0


def test_no_accepted_networks_refuses_everyone() -> None:
    """With the default empty accepted_networks nothing relays."""
    s = Session(settings=SmtpSettings())
    assert s.replies()[0].startswith("554 5.7.1 127.0.0.1 ")


@pytest.mark.parametrize(
    "peer",
    [
        IPv6Address("TCP", "::1", 1234),
        IPv6Address("TCP", "::ffff:127.0.0.5", 1234),
        UNIXAddress(b"/run/secmail.sock"),
    ],
)
def test_ipv6_mapped_and_unix_clients_are_accepted(peer: Any) -> None:
    """IPv6, IPv4-mapped IPv6 and UNIX-socket clients are judged correctly and accepted."""
    s = Session(peer=peer)
    assert s.replies() == [f"220 {HOST} ESMTP secmail"]


def test_ipv6_client_outside_accepted_networks_is_refused() -> None:
    """An IPv6 client outside the accepted networks is refused like an IPv4 one."""
    s = Session(peer=IPv6Address("TCP", "2001:db8::1", 1234))
    assert s.replies() == ["554 5.7.1 2001:db8::1 is not allowed to relay through this gateway"]


def test_rcpt_is_refused_when_peer_is_not_accepted() -> None:
    """RCPT re-checks the client's address (defence in depth) and refuses with 550 5.7.1."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    s.transport.peerAddr = IPv4Address("TCP", "192.0.2.9", 1234)
    s.send(b"RCPT TO:<b@example.net>\r\n")
    assert s.replies() == [
        "250 2.1.0 Ok",
        "550 5.7.1 192.0.2.9 is not allowed to relay through this gateway",
    ]
    assert s.delivery.recipients == []


def test_factory_limits_connections_per_client_ip() -> None:
    """Connections are counted per IP: one too many gets 421 4.7.0; freed slots are reused."""
    clock = task.Clock()
    factory = GatewayESMTPFactory(
        settings_with(max_connections_per_client=2), HOST, FakeDelivery, clock, None
    )
    first, second = Session(factory=factory), Session(factory=factory)
    third = Session(factory=factory)
    assert first.replies()[0].startswith("220 ")
    assert second.replies()[0].startswith("220 ")
    assert third.replies() == [f"421 4.7.0 {HOST} Error: too many connections from 127.0.0.1"]
    assert third.transport.disconnecting
    other = Session(factory=factory, peer=IPv4Address("TCP", "127.0.0.9", 1))
    assert other.replies()[0].startswith("220 ")

    third.protocol.connectionLost(Failure(Exception("closed")))
    first.protocol.connectionLost(Failure(Exception("closed")))
    assert factory.connections_from("127.0.0.1") == 1
    fourth = Session(factory=factory)
    assert fourth.replies()[0].startswith("220 ")


# --- EHLO and commands ----------------------------------------------------------------------


def test_ehlo_advertises_the_implemented_extensions_only() -> None:
    """EHLO lists SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES; no AUTH, no STARTTLS w/o TLS."""
    s = Session()
    s.replies()
    s.send(b"EHLO client.example\r\n")
    assert s.replies() == [
        f"250-{HOST}",
        "250-PIPELINING",
        "250-SIZE 10240000",
        "250-8BITMIME",
        "250 ENHANCEDSTATUSCODES",
    ]


def test_ehlo_advertises_starttls_when_configured() -> None:
    """STARTTLS is offered with a context factory, a TLS-capable transport and starttls on."""
    s = Session(tls=FakeTLSContext())
    s.replies()
    s.send(b"EHLO client.example\r\n")
    assert "250 STARTTLS" in s.replies()


def test_starttls_not_offered_when_disabled_in_settings() -> None:
    """smtp.starttls = false hides STARTTLS and refuses the command."""
    s = Session(settings=settings_with(starttls=False), tls=FakeTLSContext()).ready()
    s.send(b"EHLO client.example\r\n")
    assert not any("STARTTLS" in r for r in s.replies())
    s.send(b"STARTTLS\r\n")
    assert s.replies() == ["502 5.5.1 Error: command not implemented"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"VRFY bob", "252 2.0.0 Cannot VRFY user; try RCPT to attempt delivery"),
        (b"EXPN staff", "502 5.5.1 EXPN command not implemented"),
        (b"FOO bar", "500 5.5.2 Error: command not recognized"),
        (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", "500 5.5.2 Error: command not recognized"),
        (b"TURN", "500 5.5.2 Error: command not recognized"),
        (b"NOOP", "250 2.0.0 Ok"),
        (b"RSET", "250 2.0.0 Ok"),
        (b"\xff\xfe", "500 5.5.2 Error: command not recognized"),
    ],
)
def test_simple_commands(command: bytes, reply: str) -> None:
    """VRFY 252, EXPN 502, unknown (and AUTH, not offered) 500 5.5.2, NOOP/RSET 250."""
    s = Session().ready()
    s.send(command + b"\r\n")
    assert s.replies() == [reply]


def test_mail_requires_helo_first() -> None:
    """MAIL before HELO/EHLO is refused with 503 5.5.1."""
    s = Session()
    s.replies()
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    assert s.replies() == ["503 5.5.1 Error: send HELO/EHLO first"]


def test_helo_is_enough_for_a_transaction() -> None:
    """A client saying HELO (not EHLO) can still send mail."""
    s = Session().ready(ehlo=False)
    s.envelope()
    assert s.delivery.senders == [b"alice@example.com"]


def test_command_with_bare_lf_is_refused() -> None:
    """A bare LF inside a command line cannot smuggle a second command."""
    s = Session().ready()
    s.send(b"NOOP\nMAIL FROM:<a@example.com>\r\n")
    assert s.replies() == ["500 5.5.2 Error: bare CR, LF or NUL in command"]
    assert s.delivery.senders == []


def test_http_request_drops_the_connection() -> None:
    """A browser POSTing to the SMTP port (cross-protocol attack) is disconnected at once."""
    s = Session().ready()
    s.send(b"POST / HTTP/1.1\r\nHost: gw\r\n\r\nMAIL FROM:<a@example.com>\r\n")
    assert s.replies() == ["221 2.7.0 Error: this is a mail server; goodbye"]
    assert s.transport.disconnecting
    assert s.delivery.senders == []


def test_quit_closes_the_connection() -> None:
    """QUIT is answered 221 and closes; nothing after it is processed."""
    s = Session().ready()
    s.send(b"QUIT\r\nNOOP\r\n")
    assert s.replies() == ["221 2.0.0 Bye"]
    assert s.transport.disconnecting


def test_over_long_command_line_is_refused_and_session_continues() -> None:
    """A command line over the limit gets 500 5.5.0 and the rest of that line is ignored."""
    s = Session(settings=settings_with(max_line_length=1000)).ready()
    s.send(b"NOOP " + b"x" * 1200)
    s.send(b"y" * 100 + b"\r\nNOOP\r\n")
    assert s.replies() == ["500 5.5.0 Error: line too long", "250 2.0.0 Ok"]


def test_command_line_limit_is_at_least_1000() -> None:
    """A configured line limit below 1000 does not refuse RFC-sized command lines."""
    s = Session(settings=settings_with(max_line_length=100)).ready()
    s.send(b"NOOP " + b"x" * 900 + b"\r\n")
    assert s.replies() == ["250 2.0.0 Ok"]


# --- MAIL and RCPT ------------------------------------------------------------------------------


def test_mail_size_parameter_over_the_limit_is_refused() -> None:
    """MAIL ... SIZE=n above max_message_size gets 552 5.3.4 before any data is sent."""
    s = Session(settings=settings_with(max_message_size=1000)).ready()
    s.send(b"MAIL FROM:<a@example.com> SIZE=1001\r\nMAIL FROM:<a@example.com> SIZE=1000\r\n")
    assert s.replies() == ["552 5.3.4 Message size exceeds fixed limit", "250 2.1.0 Ok"]


@pytest.mark.parametrize("params", [b"BODY=7BIT", b"BODY=8BITMIME", b"body=8bitmime SIZE=10"])
def test_mail_body_parameter_is_accepted(params: bytes) -> None:
    """BODY=7BIT and BODY=8BITMIME (8BITMIME is advertised) are accepted."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com> " + params + b"\r\n")
    assert s.replies() == ["250 2.1.0 Ok"]


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        (b"SMTPUTF8", "555 5.5.4 Unsupported parameter: SMTPUTF8"),
        (b"BODY=BINARYMIME", "555 5.5.4 Unsupported parameter: BODY=BINARYMIME"),
        (b"AUTH=<>", "555 5.5.4 Unsupported parameter: AUTH=<>"),
        (b"SIZE=big", "501 5.5.4 Bad SIZE parameter"),
    ],
)
def test_unsupported_mail_parameter_is_refused(params: bytes, reply: str) -> None:
    """MAIL parameters we do not implement get 555 5.5.4 instead of being ignored."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com> " + params + b"\r\n")
    assert s.replies() == [reply]
    assert s.delivery.senders == []


def test_rcpt_parameter_is_refused() -> None:
    """RCPT parameters (we offer no DSN) get 555 5.5.4."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net> NOTIFY=NEVER\r\n")
    assert s.replies() == ["250 2.1.0 Ok", "555 5.5.4 Unsupported parameter: NOTIFY=NEVER"]


def test_recipients_over_the_limit_get_452_and_the_accepted_ones_are_kept() -> None:
    """RCPT beyond max_recipients gets 452 4.5.3; the transaction goes on with the accepted ones."""
    s = Session(settings=settings_with(max_recipients=2)).ready()
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    s.send(b"RCPT TO:<b1@example.net>\r\nRCPT TO:<b2@example.net>\r\nRCPT TO:<b3@example.net>\r\n")
    assert s.replies() == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "452 4.5.3 Too many recipients",
    ]
    s.send(b"DATA\r\n")
    s.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
    assert s.replies()[-1] == "250 2.0.0 Ok: queued as Q123"
    assert s.delivery.header_recipients == [[b"b1@example.net", b"b2@example.net"]]


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (smtp.SMTPBadRcpt(b"b@example.net", 452, "4.3.1 Insufficient system storage"), "452 4.3.1"),
        (smtp.SMTPBadRcpt(b"b@example.net", 553, "5.1.3 Bad address"), "553 5.1.3 Bad address"),
        (smtp.SMTPBadRcpt(b"b@example.net", 501, "5.1.3 Bad syntax"), "501 5.1.3 Bad syntax"),
        (smtp.SMTPBadRcpt(b"b@example.net"), "550 5.0.0 Cannot receive for specified address"),
    ],
)
def test_recipient_refusal_keeps_the_delivery_code(error: Exception, reply: str) -> None:
    """The code an SMTPBadRcpt carries is the code sent (an enhanced code is added if missing)."""
    s = Session().ready()

    def refuse(user: Any) -> Any:
        raise error

    s.delivery.check_recipient = refuse
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert s.replies()[1].startswith(reply)


def test_sender_refusal_keeps_the_delivery_code() -> None:
    """The code an SMTPBadSender carries is the code sent, and no transaction starts."""
    s = Session().ready()

    def refuse(origin: Any) -> Any:
        raise smtp.SMTPBadSender(origin, 553, "5.7.1 Sender not allowed")

    s.delivery.check_sender = refuse
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert s.replies() == ["553 5.7.1 Sender not allowed", "503 5.5.1 Error: need MAIL command"]


def test_unexpected_validation_error_is_temporary(logged: list[dict[str, Any]]) -> None:
    """A delivery bug while validating a recipient gives 451 4.3.0 (and a log), never 5xx."""
    s = Session().ready()

    def broken(user: Any) -> Any:
        raise RuntimeError("database went away")

    s.delivery.check_recipient = broken
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert s.replies()[1] == (
        "451 4.3.0 Temporary failure validating the recipient, try again later"
    )
    assert any("log_failure" in e for e in logged)


# --- DATA: a normal message -------------------------------------------------------------------


def test_message_is_delivered_once_with_unstuffed_lines() -> None:
    """One message per transaction: every line once (dot un-stuffed), one Received, one eom."""
    s = Session().ready()
    s.envelope(b"b1@example.net", b"b2@example.net", b"b3@example.net")
    s.send(b"DATA\r\n")
    s.send(b"Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\n")
    assert s.replies() == ["354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q123"]
    message = s.delivery.message
    assert message.lines == [
        b"Received: from client.example (127.0.0.1)",
        b"\tby gw.example.com; now",
        b"Subject: hi",
        b"",
        b".leading dot",
        b"line",
    ]
    assert message.eom_calls == 1
    assert message.aborts == 0
    assert len(s.delivery.header_recipients) == 1
    assert len(s.delivery.header_recipients[0]) == 3


def test_message_without_headers_gets_a_blank_line_after_received() -> None:
    """A body-only message is separated from our Received header by a blank line."""
    s = Session().ready()
    s.start_data()
    s.send(b"just text\r\n.\r\n")
    assert s.delivery.message.body == [b"", b"just text"]


@pytest.mark.parametrize("result", [b"Q9", "Q9"])
def test_queue_id_is_reported(result: Any) -> None:
    """A str or bytes result of eomReceived is the queue id in the 250 reply."""
    s = Session().ready()
    s.delivery.message = FakeMessage(lambda: defer.succeed(result))
    s.start_data()
    s.send(b"x\r\n.\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q9"]


def test_other_eom_result_gives_plain_queued() -> None:
    """An eomReceived result that is not text gives '250 2.0.0 Ok: queued'."""
    s = Session().ready()
    s.delivery.message = FakeMessage(lambda: defer.succeed(None))
    s.start_data()
    s.send(b"x\r\n.\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued"]


def test_storage_failure_gives_451_and_is_logged(logged: list[dict[str, Any]]) -> None:
    """An unexpected storage failure is 451 4.3.0 (client keeps the message), logged, never 550."""
    s = Session().ready()
    s.delivery.message = FakeMessage(lambda: defer.fail(OSError("disk full")))
    s.start_data()
    s.send(b"x\r\n.\r\n")
    assert s.replies() == ["451 4.3.0 Temporary failure storing the message, try again later"]
    failures = [e for e in logged if "log_failure" in e]
    assert failures and failures[0]["log_failure"].check(OSError)


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (smtp.SMTPServerError(452, "4.3.1 Insufficient system storage"), "452 4.3.1 Insufficient"),
        (smtp.SMTPServerError(554, "5.7.0 Policy says no"), "554 5.7.0 Policy says no"),
        (smtp.SMTPServerError(451, b"try later"), "451 4.0.0 try later"),
        (smtp.SMTPServerError(250, "2.0.0 not really"), "451 4.3.0 Temporary failure storing"),
    ],
)
def test_storage_smtp_error_code_is_passed_through(error: Exception, reply: str) -> None:
    """An SMTPServerError from eomReceived sets the reply; a non-error code becomes 451."""
    s = Session().ready()
    s.delivery.message = FakeMessage(lambda: defer.fail(error))
    s.start_data()
    s.send(b"x\r\n.\r\n")
    assert s.replies()[0].startswith(reply)


def test_data_without_recipients_is_refused() -> None:
    """DATA with no accepted recipient is refused and nothing is opened."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    s.send(b"DATA\r\n")
    assert s.replies() == ["250 2.1.0 Ok", "554 5.5.1 Error: no valid recipients"]


def test_connection_lost_during_data_aborts_the_message() -> None:
    """A dropped connection mid-DATA aborts the message; nothing is stored."""
    s = Session().ready()
    s.start_data()
    s.send(b"Subject: half\r\n")
    s.protocol.connectionLost(Failure(Exception("gone")))
    assert s.delivery.message.aborts == 1
    assert s.delivery.message.eom_calls == 0


# --- DATA: refusals -----------------------------------------------------------------------------

SMUGGLED = b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"bare LF\nhere\r\n",
        b"bare CR\rhere\r\n",
        b"ends with CR\r\r\n",
        b"smuggle\n.\n" + SMUGGLED,
        b"smuggle\n.\r\n" + SMUGGLED,
        b"smuggle\r\n.\n" + SMUGGLED,
        b"smuggle\r.\r" + SMUGGLED,
    ],
)
def test_bare_cr_or_lf_is_refused_and_does_not_end_data(payload: bytes) -> None:
    """Bare CR/LF (and <LF>.<LF>-style terminators) end nothing; the message is refused with 550."""
    s = Session().ready()
    s.start_data()
    s.send(b"Subject: x\r\n\r\n" + payload)
    assert s.replies() == []
    s.send(b".\r\n")
    assert s.replies() == ["550 5.5.2 Message contains bare CR or LF (SMTP smuggling defence)"]
    assert s.delivery.message.aborts == 1
    assert s.delivery.message.eom_calls == 0
    assert s.delivery.senders == [b"alice@example.com"]


def test_nul_in_data_is_refused() -> None:
    """A NUL byte in DATA gets 550 5.5.2 and nothing is stored."""
    s = Session().ready()
    s.start_data()
    s.send(b"Subject: x\r\n\r\nnul\x00here\r\n.\r\n")
    assert s.replies() == ["550 5.5.2 Message contains a NUL character"]
    assert s.delivery.message.eom_calls == 0


def test_message_over_size_limit_is_refused_after_end_of_data() -> None:
    """Counting the bytes, a message over max_message_size is aborted and answered 552 5.3.4."""
    s = Session(settings=settings_with(max_message_size=200)).ready()
    s.start_data()
    s.send(b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n")
    s.send(b"y" * 100 + b"\r\n" + SMUGGLED)
    assert s.replies() == []
    s.send(b".\r\n")
    assert s.replies() == ["552 5.3.4 Message size exceeds fixed limit"]
    assert s.delivery.message.aborts == 1
    assert s.delivery.message.eom_calls == 0
    assert len(s.delivery.senders) == 1


def test_message_at_size_limit_is_accepted() -> None:
    """A message of exactly max_message_size bytes (counting CRLFs) is accepted."""
    s = Session(settings=settings_with(max_message_size=20)).ready()
    s.start_data()
    s.send(b"Subject: x\r\n" + b"z" * 6 + b"\r\n.\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q123"]


def test_header_block_over_limit_is_refused() -> None:
    """A header block over max_header_size gets 552 5.3.4 Message header too large."""
    s = Session(settings=settings_with(max_header_size=100)).ready()
    s.start_data()
    s.send(b"Subject: " + b"h" * 80 + b"\r\n\tcontinued " + b"h" * 20 + b"\r\n\r\nbody\r\n.\r\n")
    assert s.replies() == ["552 5.3.4 Message header too large"]
    assert s.delivery.message.eom_calls == 0


def test_long_body_does_not_count_as_header() -> None:
    """Only the header block counts toward max_header_size, not the body."""
    s = Session(settings=settings_with(max_header_size=100)).ready()
    s.start_data()
    s.send(b"Subject: x\r\n\r\n" + (b"b" * 90 + b"\r\n") * 3 + b".\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q123"]


def test_too_many_received_headers_is_refused_as_a_loop() -> None:
    """More than max_hops Received headers gets 554 5.4.6 Too many hops."""
    s = Session(settings=settings_with(max_hops=3)).ready()
    s.start_data()
    s.send(b"Received: a\r\nreceived : b\r\nRECEIVED: c\r\nReceived: d\r\n\r\nbody\r\n.\r\n")
    assert s.replies() == ["554 5.4.6 Too many hops (mail loop?)"]
    assert s.delivery.message.eom_calls == 0


def test_received_headers_up_to_max_hops_are_accepted() -> None:
    """Exactly max_hops Received headers pass; 'Received:' in the body does not count."""
    s = Session(settings=settings_with(max_hops=2)).ready()
    s.start_data()
    s.send(b"Received: a\r\nReceived: b\r\n\r\nReceived: in body\r\n.\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q123"]


def test_long_data_line_never_returns_to_command_mode() -> None:
    """A DATA line over the limit followed by commands in the body does not start a transaction."""
    s = Session().ready()
    s.start_data()
    s.send(b"Subject: x\r\n\r\n" + b"a" * (DATA_LINE_LIMIT + 1) + b"\r\n" + SMUGGLED + b".\r\n")
    assert s.replies() == ["500 5.5.0 Line too long"]
    assert s.delivery.senders == [b"alice@example.com"]
    assert s.delivery.message.aborts == 1
    assert s.delivery.message.eom_calls == 0
    s.send(b"NOOP\r\n")
    assert s.replies() == ["250 2.0.0 Ok"]


def test_long_data_line_in_pieces_never_returns_to_command_mode() -> None:
    """An over-long DATA line arriving in chunks (CR and LF split apart) is skipped to its end."""
    s = Session().ready()
    s.start_data()
    chunk = b"a" * 65536
    for _ in range(DATA_LINE_LIMIT // len(chunk) + 1):
        s.send(chunk)
    s.send(b".MAIL FROM:<ceo@example.com>\r")
    s.send(b"\n" + SMUGGLED)
    assert s.replies() == []
    s.send(b".\r\n")
    assert s.replies() == ["500 5.5.0 Line too long"]
    assert s.delivery.senders == [b"alice@example.com"]


def test_long_data_line_split_between_cr_and_lf_still_ends_before_the_dot() -> None:
    """When the CR ending an over-long line arrives alone, the next LF still ends the line."""
    s = Session().ready()
    s.start_data()
    s.send(b"a" * (DATA_LINE_LIMIT + 1) + b"\r")
    s.send(b"\n.\r\n")
    assert s.replies() == ["500 5.5.0 Line too long"]


def test_data_line_of_1000_bytes_and_more_is_accepted() -> None:
    """Body lines longer than the command limit (up to the DATA line bound) are normal mail."""
    s = Session(settings=settings_with(max_line_length=1000)).ready()
    s.start_data()
    s.send(b"Subject: x\r\n\r\n" + b"h" * 50_000 + b"\r\n.\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q123"]
    assert s.delivery.message.body[-1] == b"h" * 50_000


def test_data_pipelined_with_its_body_drops_the_client() -> None:
    """Bytes after DATA before the 354 (RFC 2920 violation) drop the client; nothing runs."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com>\r\nDATA\r\n" + SMUGGLED)
    assert s.replies() == ["250 2.1.0 Ok", "554 5.5.0 Error: SMTP protocol synchronization"]
    assert s.transport.disconnecting
    assert s.delivery.senders == [b"a@example.com"]


_PIECES = [b"\r", b"\n", b".", b"\r\n", b"\0", b"a", b"MAIL FROM:<x@y.z>", b"\n.\n", b"\r\n.\r"]


@settings(max_examples=200, deadline=None)
@given(
    payload=st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
)
def test_no_data_payload_ends_data_early_or_runs_commands(payload: bytes, cuts: list[int]) -> None:
    """Whatever the body and however it is split, only CRLF.CRLF ends DATA and one reply follows."""
    assume(b"." not in payload.split(b"\r\n"))
    s = Session().ready()
    s.start_data()
    stream = payload + b"\r\n.\r\n"
    last = 0
    for cut in sorted(c for c in cuts if c < len(stream)):
        s.send(stream[last:cut])
        last = cut
    s.send(stream[last:])
    replies = s.replies()
    assert len(replies) == 1
    assert s.delivery.senders == [b"alice@example.com"]
    lines = payload.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line or b"\0" in line for line in lines):
        assert replies[0].startswith("550 5.5.2 ")
        assert s.delivery.message.eom_calls == 0
    else:
        assert replies[0] == "250 2.0.0 Ok: queued as Q123"
        unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
        assert s.delivery.message.body in (unstuffed, [b"", *unstuffed])


# --- STARTTLS -----------------------------------------------------------------------------------


def test_starttls_discards_plaintext_sent_with_it() -> None:
    """Commands in the same packet as STARTTLS are dropped (CVE-2011-0411); EHLO is needed again."""
    ctx = FakeTLSContext()
    s = Session(tls=ctx).ready()
    s.send(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\npartial")
    assert s.replies() == ["220 2.0.0 Ready to start TLS"]
    assert isinstance(s.transport, TLSCapableTransport)
    assert s.transport.tls_started_with == [ctx]
    assert s.delivery.senders == []

    s.send(b"MAIL FROM:<a@example.com>\r\n")
    assert s.replies() == ["503 5.5.1 Error: send HELO/EHLO first"]
    s.send(b"EHLO client.example\r\n")
    assert not any("STARTTLS" in r for r in s.replies())
    s.send(b"STARTTLS\r\n")
    assert s.replies() == ["503 5.5.1 Error: TLS already active"]
    s.envelope()
    assert s.delivery.senders == [b"alice@example.com"]


def test_starttls_forgets_the_transaction_started_before() -> None:
    """STARTTLS inside a transaction is refused; after TLS nothing from plaintext survives."""
    s = Session(tls=FakeTLSContext()).ready()
    s.send(b"MAIL FROM:<a@example.com>\r\nSTARTTLS\r\n")
    assert s.replies() == ["250 2.1.0 Ok", "503 5.5.1 Error: MAIL transaction in progress"]
    s.send(b"RSET\r\nSTARTTLS\r\n")
    assert s.replies() == ["250 2.0.0 Ok", "220 2.0.0 Ready to start TLS"]
    s.send(b"RCPT TO:<b@example.net>\r\n")
    assert s.replies() == ["503 5.5.1 Error: need MAIL command"]


# --- pipelining order ---------------------------------------------------------------------------


def test_pipelined_commands_wait_for_the_message_to_be_stored() -> None:
    """While eomReceived is pending, later pipelined commands wait; then all answer in order."""
    stored: defer.Deferred[str] = defer.Deferred()
    s = Session().ready()
    s.delivery.message = FakeMessage(lambda: stored)
    s.start_data()
    s.send(b"Subject: x\r\n\r\nbody\r\n")
    s.send(b".\r\nMAIL FROM:<next@example.com>\r\nRCPT TO:<c@example.net>\r\nQUIT\r\n")
    assert s.replies() == []
    assert s.delivery.senders == [b"alice@example.com"]
    assert s.transport.producerState == "paused"
    stored.callback("Q77")
    assert s.replies() == [
        "250 2.0.0 Ok: queued as Q77",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "221 2.0.0 Bye",
    ]


def test_pipelined_data_waits_for_async_recipient_validation() -> None:
    """DATA pipelined behind a slow RCPT is answered after it (354, not 503), in order."""
    pending: list[defer.Deferred[Any]] = []
    s = Session().ready()

    def slow(user: Any) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        pending.append(d)
        return d

    s.delivery.check_recipient = slow
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@x.net>\r\nDATA\r\n")
    assert s.replies() == ["250 2.1.0 Ok"]
    pending[0].callback(lambda: s.delivery.message)
    assert s.replies() == ["250 2.1.5 Ok"]
    pending[1].errback(smtp.SMTPBadRcpt(b"c@x.net", 550, "5.1.1 No such user"))
    assert s.replies() == ["550 5.1.1 No such user", "354 End data with <CR><LF>.<CR><LF>"]


def test_slow_sender_validation_holds_later_commands() -> None:
    """A pending validateFrom holds the pipelined RCPT so it is not refused with 503."""
    pending: defer.Deferred[Any] = defer.Deferred()
    s = Session().ready()
    s.delivery.check_sender = lambda origin: pending
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert s.replies() == []
    pending.callback(None)
    assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok"]


# --- timeouts and error limits ------------------------------------------------------------------


def test_idle_client_is_disconnected_after_idle_timeout() -> None:
    """After idle_timeout seconds without input: 421 4.4.2 and close, aborting a partial message."""
    s = Session(settings=settings_with(idle_timeout=30, min_data_rate=1)).ready()
    s.start_data()
    s.send(b"Subject: x\r\n")
    s.clock.advance(29)
    assert not s.transport.disconnecting
    s.send(b"more" * 10 + b"\r\n")  # fast enough for min_data_rate: only silence counts here
    s.clock.advance(29)
    assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert s.transport.disconnecting
    assert s.delivery.message.aborts == 1


def test_idle_timer_waits_while_the_message_is_being_stored() -> None:
    """Slow storage is not the client's idleness: no timeout while eomReceived is pending."""
    stored: defer.Deferred[str] = defer.Deferred()
    s = Session(settings=settings_with(idle_timeout=30)).ready()
    s.delivery.message = FakeMessage(lambda: stored)
    s.start_data()
    s.send(b"x\r\n.\r\n")
    s.clock.advance(100)
    assert not s.transport.disconnecting
    stored.callback("Q1")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q1"]
    s.clock.advance(30)
    assert s.transport.disconnecting


def test_hard_error_limit_disconnects() -> None:
    """At hard_error_limit errors the client gets 421 4.7.0 Too many errors and is dropped."""
    s = Session(settings=settings_with(hard_error_limit=3, soft_error_limit=100)).ready()
    s.send(b"BAD1\r\nBAD2\r\nBAD3\r\nNOOP\r\n")
    assert s.replies() == [
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "421 4.7.0 Too many errors",
    ]
    assert s.transport.disconnecting


def test_soft_error_limit_slows_the_client_down() -> None:
    """From soft_error_limit errors on, each error delays the next reply by a second."""
    s = Session(settings=settings_with(soft_error_limit=2, hard_error_limit=10)).ready()
    s.send(b"BAD1\r\nBAD2\r\nNOOP\r\n")
    assert len(s.replies()) == 2
    s.clock.advance(1)
    assert s.replies() == ["250 2.0.0 Ok"]


def test_delivered_message_resets_the_error_count() -> None:
    """Errors are counted between deliveries, so a long busy session is not dropped."""
    s = Session(settings=settings_with(hard_error_limit=3, soft_error_limit=100)).ready()
    s.send(b"BAD1\r\nBAD2\r\n")
    assert len(s.replies()) == 2
    s.start_data()
    s.send(b"x\r\n.\r\n")
    s.send(b"BAD3\r\nBAD4\r\nNOOP\r\n")
    assert s.replies()[-1] == "250 2.0.0 Ok"
    assert not s.transport.disconnecting


# --- slow clients: deadlines besides the idle timer ---------------------------------------------


def test_dripping_data_is_cut_by_min_data_rate(logged: list[dict[str, Any]]) -> None:
    """A byte every few seconds in DATA resets the idle timer, not the rate: 421 4.4.2, logged."""
    s = Session(settings=settings_with(idle_timeout=30, min_data_rate=10)).ready()
    s.start_data()
    for _ in range(100):
        if s.transport.disconnecting:
            break
        s.send(b"x")
        s.clock.advance(5)
    assert s.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert s.transport.disconnecting
    assert s.delivery.message.aborts == 1
    # Cut once the grace (idle_timeout) is spent and the average is below 10 bytes a second.
    assert 30 < s.clock.seconds() <= 40
    assert any(
        e.get("client") == "127.0.0.1" and "min_data_rate" in e.get("what", "") for e in logged
    )


def test_data_at_min_rate_is_not_cut() -> None:
    """A slow but steady client (at min_data_rate) finishes its message."""
    s = Session(
        settings=settings_with(idle_timeout=30, min_data_rate=10, transaction_timeout=10_000)
    ).ready()
    s.start_data()
    for _ in range(200):
        s.send(b"x" * 48 + b"\r\n")  # 50 bytes every 5 seconds
        s.clock.advance(5)
    s.send(b".\r\n")
    assert s.replies() == ["250 2.0.0 Ok: queued as Q123"]


def test_transaction_timeout_bounds_the_transaction(logged: list[dict[str, Any]]) -> None:
    """However fast the bytes come, DATA ends by transaction_timeout: 421 4.4.2, message aborted."""
    s = Session(
        settings=settings_with(idle_timeout=30, min_data_rate=1, transaction_timeout=100)
    ).ready()
    s.start_data()
    s.send(b"x" * 10_000 + b"\r\n")
    for _ in range(19):
        s.send(b"y\r\n")
        s.clock.advance(5)
    assert not s.transport.disconnecting
    s.send(b"y\r\n")
    s.clock.advance(5)
    assert s.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert s.delivery.message.aborts == 1
    assert any("transaction_timeout" in e.get("what", "") for e in logged)


def test_dripping_recipients_are_cut_by_min_data_rate(logged: list[dict[str, Any]]) -> None:
    """Whole RCPT lines sent just inside idle_timeout still fall below min_data_rate: 421 4.4.2."""
    s = Session(settings=settings_with(idle_timeout=30, min_data_rate=10)).ready()
    s.send(b"MAIL FROM:<alice@example.com>\r\n")
    for n in range(20):
        if s.transport.disconnecting:
            break
        s.clock.advance(29)
        s.send(b"RCPT TO:<r%d@example.net>\r\n" % n)
    assert s.replies()[-1] == f"421 4.4.2 {HOST} Error: timeout exceeded"
    assert s.clock.seconds() < 90
    assert any("min_data_rate" in e.get("what", "") for e in logged)


def test_rset_ends_the_transaction_clock() -> None:
    """A client waiting between transactions is judged by idle_timeout alone."""
    s = Session(settings=settings_with(idle_timeout=30, min_data_rate=10)).ready()
    for _ in range(5):
        s.send(b"MAIL FROM:<alice@example.com>\r\n")
        s.send(b"RSET\r\n")
        s.clock.advance(29)
    assert not s.transport.disconnecting


def test_dripping_command_line_is_cut_after_idle_timeout() -> None:
    """A command line must arrive whole within idle_timeout, however slowly its bytes trickle."""
    s = Session(settings=settings_with(idle_timeout=30)).ready()
    for byte in b"MAIL FROM:<alice@example.com>":
        if s.transport.disconnecting:
            break
        s.send(bytes([byte]))
        s.clock.advance(3)
    assert s.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert s.clock.seconds() <= 33
    assert s.delivery.senders == []


def test_command_deadline_does_not_run_while_idle_between_commands() -> None:
    """Whole commands each reset the deadline; the idle timer alone decides between commands."""
    s = Session(settings=settings_with(idle_timeout=30)).ready()
    for _ in range(5):
        s.send(b"MAIL FROM:<alice@example.com>\r\n")
        s.clock.advance(20)
        s.send(b"RSET\r\n")
        s.clock.advance(20)
    assert not s.transport.disconnecting


# --- junk commands and pipelining without EHLO --------------------------------------------------


def test_junk_commands_over_the_limit_drop_the_client(logged: list[dict[str, Any]]) -> None:
    """More than junk_command_limit NOOP/RSET/VRFY/... commands: 421 4.7.0 and close."""
    s = Session(settings=settings_with(junk_command_limit=3)).ready()  # EHLO is the first
    s.send(b"NOOP\r\n")
    s.send(b"VRFY bob\r\n")
    assert not s.transport.disconnecting
    s.send(b"RSET\r\n")
    assert s.replies()[-1] == f"421 4.7.0 {HOST} Error: too many junk commands"
    assert s.transport.disconnecting
    assert any(e.get("client") == "127.0.0.1" for e in logged)


def test_delivered_message_resets_the_junk_count() -> None:
    """A connection reused for many messages (RSET before each) is not dropped as junk."""
    s = Session(settings=settings_with(junk_command_limit=2)).ready()
    for _ in range(5):
        s.send(b"RSET\r\n")
        s.start_data()
        s.send(b"x\r\n.\r\n")
        assert s.replies()[-1].startswith("250 2.0.0 Ok: queued")
    assert not s.transport.disconnecting


@pytest.mark.parametrize(
    "pipelined",
    [
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n",
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@exa",
        b"RSET\r\nNOOP\r\n",
    ],
)
def test_pipelining_after_helo_drops_the_client(pipelined: bytes) -> None:
    """After HELO (no PIPELINING offered) commands sent ahead get 554 5.5.0 and the client goes."""
    s = Session().ready(ehlo=False)
    s.send(pipelined)
    assert s.replies() == ["554 5.5.0 Error: SMTP protocol synchronization"]
    assert s.transport.disconnecting
    assert s.delivery.senders == []


def test_pipelining_before_the_ehlo_reply_drops_the_client() -> None:
    """EHLO must end its group: commands sent with it, before the reply, are out of step."""
    s = Session()
    s.replies()
    s.send(b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n")
    assert s.replies() == ["554 5.5.0 Error: SMTP protocol synchronization"]
    assert s.delivery.senders == []


def test_helo_client_waiting_for_replies_is_served() -> None:
    """A HELO client that waits for each reply (even with commands split in pieces) sends mail."""
    s = Session().ready(ehlo=False)
    s.send(b"MAIL FROM:<a@exa")
    s.send(b"mple.com>\r\n")
    s.send(b"RCPT TO:<b@example.net>\r\n")
    s.send(b"DATA\r\n")
    s.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert s.replies() == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as Q123",
    ]


def test_pipelining_after_ehlo_is_still_allowed() -> None:
    """After EHLO (PIPELINING offered) a group of commands is answered in order."""
    s = Session().ready()
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\n")
    assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"]
