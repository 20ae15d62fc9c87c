# -*- test-case-name: tests.test_smtp_server -*-
"""
The ESMTP intake: Twisted's ESMTP server with the gaps a relay gateway cannot leave open closed.

Twisted's C{SMTP}/C{ESMTP} classes do the address parsing and the reply framing; everything that
decides what a byte from the network may cause is ours: line splitting (so that a long or bare-LF
line can never end DATA or switch back to command mode), STARTTLS (no plaintext survives the
upgrade), pipelining (replies stay in command order while a validation or the store is still
working), limits, timeouts and the client's address. The wire side (input, timers, error
limits, STARTTLS) is L{secmail.smtp.connection}; the limits themselves, as pure rules, are
L{secmail.smtp.limits}; this module has the commands, DATA and the listening factory.

The protocol talks only to the connection's L{IMessageDelivery} and the L{IMessageSMTP} objects it
returns: it knows nothing about storage or policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ITLSTransport,
)
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.python.failure import Failure

from secmail import message_log
from secmail.config import SmtpSettings
from secmail.monitoring import counting
from secmail.smtp.connection import GatewayConnection
from secmail.smtp.limits import (
    BARE_NEWLINE,
    FORBIDDEN_COMMANDS,
    JUNK_COMMANDS,
    MessageLimits,
    client_name,
    mail_parameters_refusal,
    printable,
    with_enhanced_code,
)

_log = Logger()

DeliveryFactory = Callable[[], IMessageDelivery]

TRANSACTION_COMMANDS = frozenset({b"MAIL", b"RCPT", b"DATA"})
"""The commands whose refusal is logged as a refused message (with the end of DATA)."""


class GatewayESMTP(GatewayConnection):
    """
    One ESMTP connection from an internal mail server.

    The wire side (input, timers, error limits, STARTTLS) is L{GatewayConnection}'s. A DATA
    line longer than L{DATA_LINE_LIMIT} fails the message with 500 5.5.0 once the client has
    sent CRLF.CRLF, and the session stays in step.

    The connection's delivery (from C{delivery_factory}, called once the client is accepted)
    provides C{receivedHeader}, C{validateFrom} and C{validateTo} of L{IMessageDelivery}; the
    latter two may return Deferreds, and while one is pending no later command is answered.
    C{validateTo} returns a callable giving the transaction's L{IMessageSMTP}: the same object
    for every recipient gets one copy of the message.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        hostname: str,
        delivery_factory: DeliveryFactory,
        clock: IReactorTime,
        tls_context_factory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None = None,
        connections: GatewayESMTPFactory | None = None,
    ) -> None:
        super().__init__(settings, hostname, clock, tls_context_factory)
        self._delivery_factory = delivery_factory
        self._connections = connections
        self._junk = 0

        self._messages: list[IMessageSMTP] = []
        self._data_error: tuple[int, bytes] | None = None
        #: The transaction command being answered (MAIL, RCPT, DATA, end of DATA) and the
        #: transaction's sender (None before MAIL), for the log.
        self._answering: str | None = None
        self._answering_sender: str | None = None
        self._limits = MessageLimits(settings)

        self._commands: dict[bytes, Callable[[bytes], None]] = {
            b"HELO": self.do_HELO,
            b"EHLO": self.do_EHLO,
            b"MAIL": self.do_MAIL,
            b"RCPT": self.do_RCPT,
            b"DATA": self.do_DATA,
            b"RSET": self.do_RSET,
            b"NOOP": self.do_NOOP,
            b"QUIT": self.do_QUIT,
            b"VRFY": self.do_VRFY,
            b"EXPN": self.do_EXPN,
            b"STARTTLS": self.ext_STARTTLS,
        }

    def connectionMade(self) -> None:
        """Refuse clients outside the accepted networks or over their connection limit."""
        counting.count("smtp_sessions")
        peer = self._wire.getPeer()
        self._client = client_name(peer)
        self._helo = (None, self._client.encode("ascii", "replace"))
        count = 1
        if self._connections is not None:
            count = self._connections.client_connected(self._client)
        if not self._peer_accepted():
            _log.info("Refused SMTP client {client}: not in accepted networks", client=self._client)
            self._close_with(
                554, f"5.7.1 {self._client} is not allowed to relay through this gateway"
            )
            return
        if count > self._settings.max_connections_per_client:
            _log.warn("Refused SMTP client {client}: too many connections", client=self._client)
            self._close_with(
                421, f"4.7.0 {self._hostname} Error: too many connections from {self._client}"
            )
            return
        self.canStartTLS = ITLSTransport.providedBy(self.transport) and self.ctx is not None
        try:
            self.delivery = self._delivery_factory()
        except Exception:
            _log.failure("Could not create the message delivery for {client}", client=self._client)
            self._close_with(421, f"4.3.0 {self._hostname} Error: local error, try again later")
            return
        self.sendCode(220, f"{self._hostname} ESMTP secmail")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Abort an unfinished message and give the client's connection slot back."""
        self._lost = True
        self._abort_transaction()
        self._lines.clear()
        self._buffer = b""
        self.setTimeout(None)
        self._set_deadline(None)
        if self._tarpit is not None and self._tarpit.active():
            self._tarpit.cancel()
        if self._connections is not None and self._client is not None:
            self._connections.client_disconnected(self._client)
            self._client = None

    # --- commands -------------------------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Refuse an over-long line without ever leaving DATA mode.

        Twisted's version switches back to command mode, so the rest of the body would run as
        commands (a smuggling primitive); here the body is consumed up to CRLF.CRLF and refused.
        """
        if self.mode == smtp.DATA:
            self._fail_data(500, "5.5.0 Line too long")
        else:
            self.sendCode(500, "5.5.0 Error: line too long")

    def lineReceived(self, line: bytes) -> None:
        if self.mode == smtp.DATA:
            self._data_line(line)
        else:
            self._command(line)

    def _command(self, line: bytes) -> None:
        if b"\0" in line or BARE_NEWLINE.search(line):
            self.sendCode(500, "5.5.2 Error: bare CR, LF or NUL in command")
            return
        parts = line.strip().split(None, 1)
        if not parts:
            self.sendCode(500, "5.5.2 Error: bad syntax")
            return
        verb = parts[0].upper()
        self._answering = None
        if verb in TRANSACTION_COMMANDS:
            rest = parts[1] if len(parts) == 2 else b""
            self._answering = printable(verb + (b" " + rest if rest else b""))[:300]
            self._answering_sender = str(self._from) if self._from is not None else None
        if verb in FORBIDDEN_COMMANDS:
            _log.warn("Dropping SMTP client {client}: sent {verb}", client=self._client, verb=verb)
            self._abort_transaction()
            self._close_with(221, "2.7.0 Error: this is a mail server; goodbye")
            return
        handler = self._commands.get(verb)
        if handler is None:
            self.sendCode(500, "5.5.2 Error: command not recognized")
            return
        if verb in JUNK_COMMANDS:
            self._junk += 1
            if self._junk > self._settings.junk_command_limit:
                _log.info(
                    "Dropping SMTP client {client}: too many commands that send no mail",
                    client=self._client,
                )
                self._abort_transaction()
                self._close_with(421, f"4.7.0 {self._hostname} Error: too many junk commands")
                return
        handler(parts[1] if len(parts) == 2 else b"")

    def sendCode(self, code: int, message: bytes | str = b"") -> None:
        """Send a reply; a refused transaction command gets its log line (never the DATA)."""
        if code >= 400 and self._answering is not None and not self._lost:
            reason = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
            message_log.refused(
                peer=self._client or "unknown",
                command=self._answering,
                code=code,
                reason=" ".join(reason.split()),
                sender=self._answering_sender,
            )
        super().sendCode(code, message)

    def lookupMethod(self, command: bytes | str) -> Callable[[bytes], None] | None:
        """Only our commands exist (no AUTH, no TURN): the same table the dispatcher uses."""
        if isinstance(command, str):
            command = command.encode("ascii", "replace")
        return self._commands.get(command.upper())

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        """What EHLO advertises: only what is implemented, and no AUTH."""
        ext: dict[bytes, list[bytes] | None] = {
            b"PIPELINING": None,
            b"SIZE": [str(self._settings.max_message_size).encode("ascii")],
            b"8BITMIME": None,
            b"ENHANCEDSTATUSCODES": None,
        }
        if self._starttls_offered():
            ext[b"STARTTLS"] = None
        return ext

    def _greet(self, rest: bytes, verb: str) -> bool:
        if not rest:
            self.sendCode(501, f"5.5.4 Syntax: {verb} hostname")
            return False
        self._helo = (rest, (self._client or "").encode("ascii", "replace"))
        self._greeted = True
        self._stop_transaction_clock()
        self._from = None
        self._to = []
        return True

    def do_HELO(self, rest: bytes) -> None:
        if self._greet(rest, "HELO"):
            self._pipelining = False
            self.sendCode(250, self._hostname)

    def do_EHLO(self, rest: bytes) -> None:
        if self._greet(rest, "EHLO"):
            self._pipelining = True
            self.sendCode(250, self.host + b"\n" + self.listExtensions())

    def do_MAIL(self, rest: bytes) -> None:
        if not self._greeted:
            self.sendCode(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self._from is not None:
            self.sendCode(503, "5.5.1 Error: nested MAIL command")
            return
        match = self.mail_re.match(rest)
        if not match:
            self.sendCode(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        refusal = mail_parameters_refusal(match.group("opts"), self._settings)
        if refusal is not None:
            self.sendCode(*refusal)
            return
        try:
            origin = smtp.Address(match.group("path"), self.host)
        except smtp.AddressError as e:
            self.sendCode(553, f"5.1.7 Bad sender address syntax: {e}")
            return
        self._to = []
        d = defer.maybeDeferred(self.validateFrom, self._helo, origin)
        d.addCallbacks(self._sender_accepted, self._sender_refused, callbackArgs=(origin,))
        self._wait_for(d)

    def validateFrom(self, helo: tuple[bytes | None, bytes], origin: smtp.Address) -> Any:
        assert self.delivery is not None
        return self.delivery.validateFrom(helo, origin)

    def _sender_accepted(self, result: object, origin: smtp.Address) -> None:
        self._from = result if isinstance(result, smtp.Address) else origin
        self._start_transaction_clock()
        self.sendCode(250, "2.1.0 Ok")

    def _sender_refused(self, failure: Failure) -> None:
        self._send_failure(failure, "validating the sender")

    def do_RCPT(self, rest: bytes) -> None:
        if self._from is None:
            self.sendCode(503, "5.5.1 Error: need MAIL command")
            return
        if not self._peer_accepted():
            client = client_name(self._wire.getPeer())
            self.sendCode(550, f"5.7.1 {client} is not allowed to relay through this gateway")
            return
        match = self.rcpt_re.match(rest)
        if not match:
            self.sendCode(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        if match.group("opts"):
            self.sendCode(555, f"5.5.4 Unsupported parameter: {printable(match.group('opts'))}")
            return
        if len(self._to) >= self._settings.max_recipients:
            self.sendCode(452, "4.5.3 Too many recipients")
            return
        try:
            user = smtp.User(match.group("path"), self._helo, self, self._from)
        except smtp.AddressError as e:
            self.sendCode(553, f"5.1.3 Bad recipient address syntax: {e}")
            return
        d = defer.maybeDeferred(self.validateTo, user)
        d.addCallbacks(self._recipient_accepted, self._recipient_refused, callbackArgs=(user,))
        self._wait_for(d)

    def validateTo(self, user: smtp.User) -> Any:
        assert self.delivery is not None
        return self.delivery.validateTo(user)

    def _recipient_accepted(
        self, message_factory: Callable[[], IMessageSMTP], user: smtp.User
    ) -> None:
        self._to.append((user, message_factory))
        self.sendCode(250, "2.1.5 Ok")

    def _recipient_refused(self, failure: Failure) -> None:
        self._send_failure(failure, "validating the recipient")

    def receivedHeader(
        self, helo: tuple[bytes | None, bytes], origin: smtp.Address, recipients: list[smtp.User]
    ) -> bytes:
        assert self.delivery is not None
        header = self.delivery.receivedHeader(helo, origin, recipients)
        if isinstance(header, str):
            header = header.encode("utf-8")
        return header or b""

    def do_RSET(self, rest: bytes) -> None:
        self._stop_transaction_clock()
        self._from = None
        self._to = []
        self.sendCode(250, "2.0.0 Ok")

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, "2.0.0 Ok")

    def do_QUIT(self, rest: bytes) -> None:
        self._close_with(221, "2.0.0 Bye")

    def do_VRFY(self, rest: bytes) -> None:
        self.sendCode(252, "2.0.0 Cannot VRFY user; try RCPT to attempt delivery")

    def do_EXPN(self, rest: bytes) -> None:
        self.sendCode(502, "5.5.1 EXPN command not implemented")

    def do_UNKNOWN(self, rest: bytes) -> None:
        self.sendCode(500, "5.5.2 Error: command not recognized")

    # --- DATA -----------------------------------------------------------------------------------

    def do_DATA(self, rest: bytes) -> None:
        """
        Open the message: one IMessage per distinct object the recipients' callables return.

        Our delivery returns the same message for every recipient of a transaction, so it gets each
        line once, one Received header naming all recipients, and one eomReceived.
        """
        if self._lines or self._buffer:
            # RFC 2920: DATA ends a pipelined group. Bytes already behind it would run as
            # commands if DATA were refused, so the client is out of step: drop it.
            _log.warn("Dropping SMTP client {client}: input after DATA", client=self._client)
            self._abort_transaction()
            self._close_with(554, "5.5.0 Error: SMTP protocol synchronization")
            return
        if self._from is None:
            self.sendCode(503, "5.5.1 Error: need MAIL command")
            return
        if not self._to:
            self.sendCode(554, "5.5.1 Error: no valid recipients")
            return
        helo, origin, recipients = self._helo, self._from, self._to
        self._from = None
        self._to = []
        messages: list[IMessageSMTP] = []
        try:
            for _user, message_factory in recipients:
                message = message_factory()
                if not any(message is known for known in messages):
                    messages.append(message)
            header = self.receivedHeader(helo, origin, [user for user, _ in recipients])
        except Exception:
            _abort(messages)
            self._send_failure(Failure(), "opening the message")
            return

        self._messages = messages
        self._data_error = None
        self._limits = MessageLimits(self._settings)
        self.mode = smtp.DATA
        for line in header.splitlines():
            self._feed(line)
        if self._data_error is not None:
            self._end_of_data()
            return
        self.sendCode(354, "End data with <CR><LF>.<CR><LF>")

    def _data_line(self, line: bytes) -> None:
        if line == b".":
            self._end_of_data()
            return
        if self._data_error is not None:
            return
        taken = self._limits.take(line)
        if isinstance(taken, tuple):
            self._fail_data(*taken)
            return
        for piece in taken:
            self._feed(piece)

    def _feed(self, line: bytes) -> None:
        """Give a line to the message; a message that fails makes the whole DATA fail."""
        if self._data_error is not None:
            return
        try:
            for message in self._messages:
                message.lineReceived(line)
        except smtp.SMTPServerError as e:
            code = int(e.code) if 400 <= int(e.code) < 600 else 451
            self._fail_data(code, with_enhanced_code(code, e.resp).decode("utf-8", "replace"))
        except Exception:
            _log.failure("Message refused a line; answering 451")
            self._fail_data(451, "4.3.0 Temporary failure storing the message, try again later")

    def _fail_data(self, code: int, text: str) -> None:
        """Store nothing, keep reading to CRLF.CRLF, then answer with the first error found."""
        if self._data_error is None:
            self._data_error = (code, text.encode("utf-8"))
        messages, self._messages = self._messages, []
        _abort(messages)

    def _end_of_data(self) -> None:
        self.mode = smtp.COMMAND
        self._answering = "end of DATA"
        self._stop_transaction_clock()
        error, self._data_error = self._data_error, None
        messages, self._messages = self._messages, []
        if error is not None:
            _abort(messages)
            self.sendCode(*error)
            return
        stored = [defer.maybeDeferred(m.eomReceived) for m in messages]
        d: defer.Deferred[Any] = defer.DeferredList(stored, consumeErrors=True).addCallback(
            _first_failure_or_result
        )
        d.addCallbacks(self._message_queued, self._message_not_queued)
        self._wait_for(d)

    def _message_queued(self, result: object) -> None:
        self._errors = 0
        self._junk = 0
        if isinstance(result, str):
            result = result.encode("utf-8", "replace")
        queue_id = printable(result) if isinstance(result, bytes) else ""
        self.sendCode(250, f"2.0.0 Ok: queued as {queue_id}" if queue_id else "2.0.0 Ok: queued")

    def _message_not_queued(self, failure: Failure) -> None:
        self._send_failure(failure, "storing the message")

    def _abort_transaction(self) -> None:
        """Forget the transaction; a message still being received is aborted, never stored."""
        self._stop_transaction_clock()
        if self.mode == smtp.DATA:
            self.mode = smtp.COMMAND
            self._data_error = None
        messages, self._messages = self._messages, []
        _abort(messages)
        self._from = None
        self._to = []


class GatewayESMTPFactory(smtp.SMTPFactory):
    """Builds one L{GatewayESMTP} per connection and counts connections per client address."""

    def __init__(
        self,
        settings: SmtpSettings,
        hostname: str,
        delivery_factory: DeliveryFactory,
        clock: IReactorTime,
        tls_context_factory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.hostname = hostname
        self.timeout = settings.idle_timeout
        self._delivery_factory = delivery_factory
        self._clock = clock
        self._tls_context_factory = tls_context_factory
        self._connections: Counter[str] = Counter()

    def use(
        self,
        settings: SmtpSettings,
        hostname: str,
        tls_context_factory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None,
    ) -> None:
        """New settings for the sessions that start from now on; those running keep theirs."""
        self.settings = settings
        self.hostname = hostname
        self.timeout = settings.idle_timeout
        self._tls_context_factory = tls_context_factory

    def buildProtocol(self, addr: IAddress | None) -> GatewayESMTP:
        protocol = GatewayESMTP(
            self.settings,
            self.hostname,
            self._delivery_factory,
            self._clock,
            self._tls_context_factory,
            connections=self,
        )
        protocol.factory = self
        return protocol

    def client_connected(self, client: str) -> int:
        """Count a new connection from C{client}; returns how many it now has open."""
        self._connections[client] += 1
        return self._connections[client]

    def client_disconnected(self, client: str) -> None:
        self._connections[client] -= 1
        if self._connections[client] <= 0:
            del self._connections[client]

    def connections_from(self, client: str) -> int:
        """Open connections from C{client} (an IP address as text, or C{"unix"})."""
        return self._connections[client]


def _abort(messages: list[IMessageSMTP]) -> None:
    for message in messages:
        try:
            message.connectionLost()
        except Exception:
            _log.failure("Aborting a message failed")


def _first_failure_or_result(results: list[tuple[bool, Any]]) -> Any:
    """All messages must be stored for a 250; the first failure decides the reply otherwise."""
    for success, value in results:
        if not success:
            return value
    return results[0][1] if results else None
