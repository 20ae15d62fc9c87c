"""
The ESMTP intake: Twisted's ESMTP server with the gaps a relay gateway cannot leave open closed.

Twisted's C{SMTP}/C{ESMTP} classes do the address parsing and the reply framing; everything that
decides what a byte from the network may cause is ours: line splitting (so that a long or bare-LF
line can never end DATA or switch back to command mode), STARTTLS (no plaintext survives the
upgrade), pipelining (replies stay in command order while a validation or the store is still
working), limits, timeouts and the client's address.

The protocol talks only to the connection's L{IMessageDelivery} and the L{IMessageSMTP} objects it
returns: it knows nothing about storage or policy.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from twisted.python.failure import Failure

from secmail.config import SmtpSettings

_log = Logger()

DATA_LINE_LIMIT = 1024 * 1024
"""
Longest DATA line accepted, in bytes without CRLF.

RFC 5321 text lines are at most 1000 bytes, but Postfix accepts longer body lines and real mail
(HTML without line breaks) has them, so a body line is only refused beyond this bound; its bytes
count toward the message size like any others. Commands keep the configured, much shorter limit.
"""

MIN_COMMAND_LINE_LIMIT = 1000
"""RFC 5321 text line length (998 + CRLF): no configured limit may refuse a line that short."""

ERROR_SLEEP_SECONDS = 1.0
"""Pause after each error from the soft error limit on (Postfix C{smtpd_error_sleep_time})."""

FORBIDDEN_COMMANDS = frozenset({b"CONNECT", b"GET", b"POST"})
"""First words of HTTP requests: a browser tricked into talking to us is dropped (as Postfix)."""

JUNK_COMMANDS = frozenset({b"NOOP", b"RSET", b"VRFY", b"EXPN", b"HELO", b"EHLO"})
"""
Commands that move no mail: more than C{junk_command_limit} of them between two delivered
messages only hold a connection slot (Postfix C{smtpd_junk_command_limit}).
"""

_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_RECEIVED_FIELD = re.compile(rb"received[ \t]*:", re.IGNORECASE)
_ENHANCED_CODE = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_BARE_NEWLINE = re.compile(rb"[\r\n]")

DeliveryFactory = Callable[[], IMessageDelivery]


class GatewayESMTP(smtp.ESMTP):
    """
    One ESMTP connection from an internal mail server.

    Input is split into CRLF lines here rather than by C{LineOnlyReceiver}, because the gateway
    must queue lines while a reply is pending (pipelining), throw lines away after STARTTLS and
    never let an over-long line flip DATA back into command mode. Command lines are limited to
    max(C{max_line_length}, 1000) bytes; DATA lines to L{DATA_LINE_LIMIT} (1 MiB), because long
    body lines are ordinary mail; a longer one fails the message with 500 5.5.0 once the client
    has sent CRLF.CRLF, and the session stays in step.

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
        super().__init__(contextFactory=tls_context_factory)
        self.challengers = {}
        self._helo: tuple[bytes | None, bytes] = (None, b"")
        self.host = hostname
        self.timeout = settings.idle_timeout
        self._settings = settings
        self._hostname = hostname
        self._delivery_factory = delivery_factory
        self._clock = clock
        self._connections = connections
        self._client: str | None = None
        self._lost = False
        self._greeted = False
        self._errors = 0
        self._junk = 0
        self._pipelining = False
        self._tarpit: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._deadline_reason = ""
        self._line_started: float | None = None
        self._transaction_started: float | None = None
        self._transaction_bytes = 0
        self._command_limit = max(settings.max_line_length, MIN_COMMAND_LINE_LIMIT)
        self._data_line_limit = max(DATA_LINE_LIMIT, self._command_limit)
        self.MAX_LENGTH = self._command_limit

        self._lines: deque[bytes] = deque()
        self._buffer = b""
        self._skipping_line = False
        self._pauses = 0
        self._processing = False

        self._messages: list[IMessageSMTP] = []
        self._data_error: tuple[int, bytes] | None = None
        self._data_size = 0
        self._header_size = 0
        self._header_lines = 0
        self._hops = 0
        self._in_header = False

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

    @property
    def _wire(self) -> Any:
        """The transport; loosely typed because we need C{disconnecting} and producer methods."""
        return self.transport

    # --- connection life ----------------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """Schedule the idle timeout on the injected clock, not the global reactor."""
        return self._clock.callLater(period, func)

    def connectionMade(self) -> None:
        """Refuse clients outside the accepted networks or over their connection limit."""
        peer = self._wire.getPeer()
        self._client = _client_name(peer)
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

    def timeoutConnection(self) -> None:
        """An idle client loses its connection (and any message it was sending)."""
        _log.info("Dropping SMTP client {client}: idle for too long", client=self._client)
        self._timed_out()

    def _timed_out(self) -> None:
        self._abort_transaction()
        self._close_with(421, f"4.4.2 {self._hostname} Error: timeout exceeded")

    # --- deadlines: silence is not the only way to hold a connection slot ------------------

    def _update_deadline(self) -> None:
        """
        (Re)arm the deadline of what the client is sending now, besides the idle timer.

        The idle timer restarts with every byte, so a client dripping a byte every few seconds
        would never meet it (Postfix's answer: C{smtpd_per_request_deadline}). So a command line
        must arrive whole within C{idle_timeout} of its first byte, and a transaction (MAIL FROM
        to the final dot) must end within C{transaction_timeout} while averaging
        C{min_data_rate} bytes a second after its first C{idle_timeout} seconds. No deadline
        runs while we, not the client, are the slow side.
        """
        if self._pauses or self._lost or self._wire.disconnecting:
            self._set_deadline(None)
            return
        settings = self._settings
        deadlines: list[tuple[float, str]] = []
        if self._transaction_started is not None:
            started = self._transaction_started
            deadlines.append(
                (
                    started + settings.transaction_timeout,
                    "the transaction took longer than transaction_timeout",
                )
            )
            deadlines.append(
                (
                    started
                    + settings.idle_timeout
                    + self._transaction_bytes / settings.min_data_rate,
                    "the transaction was slower than min_data_rate",
                )
            )
        if self.mode != smtp.DATA and self._buffer and not self._skipping_line:
            if self._line_started is None:
                self._line_started = self._clock.seconds()
            deadlines.append(
                (
                    self._line_started + settings.idle_timeout,
                    "a command line took longer than idle_timeout",
                )
            )
        else:
            self._line_started = None
        if not deadlines:
            self._set_deadline(None)
            return
        at, self._deadline_reason = min(deadlines)
        self._set_deadline(at - self._clock.seconds())

    def _start_transaction_clock(self) -> None:
        self._transaction_started = self._clock.seconds()
        self._transaction_bytes = 0

    def _stop_transaction_clock(self) -> None:
        self._transaction_started = None

    def _set_deadline(self, seconds: float | None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if seconds is not None:
            self._deadline = self._clock.callLater(max(seconds, 0.0), self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._lost or self._wire.disconnecting:
            return
        _log.info(
            "Dropping SMTP client {client}: {what}", client=self._client, what=self._deadline_reason
        )
        self._timed_out()

    def _close_with(self, code: int, text: str) -> None:
        """Send a final reply and close; the reply is not counted as a client error."""
        smtp.ESMTP.sendCode(self, code, text.encode("utf-8", "replace"))
        self._lines.clear()
        self._buffer = b""
        self._wire.loseConnection()

    def _peer_accepted(self) -> bool:
        """Whether the client may hand us mail: UNIX sockets always, IPs from accepted networks."""
        peer = self._wire.getPeer()
        if isinstance(peer, UNIXAddress):
            return True
        address = _peer_ip(peer)
        if address is None:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(a in net for a in candidates for net in self._settings.accepted_networks)

    # --- replies and error limits ---------------------------------------------------------------

    def sendCode(self, code: int, message: bytes | str = b"") -> None:
        """Send a reply; 4xx/5xx replies count toward the error limits."""
        if self._lost:
            return
        if isinstance(message, str):
            message = message.encode("utf-8", "replace")
        super().sendCode(code, message)
        if code >= 400 and not self._wire.disconnecting:
            self._count_error()

    def _count_error(self) -> None:
        """Slow down a client making many errors and drop it at the hard limit, as Postfix does."""
        self._errors += 1
        if self._errors >= self._settings.hard_error_limit:
            _log.info("Dropping SMTP client {client}: too many errors", client=self._client)
            self._abort_transaction()
            self._close_with(421, "4.7.0 Too many errors")
        elif self._errors >= self._settings.soft_error_limit and self._tarpit is None:
            self._pause()
            self._tarpit = self._clock.callLater(ERROR_SLEEP_SECONDS, self._end_tarpit)

    def _end_tarpit(self) -> None:
        self._tarpit = None
        self._resume()

    def _send_failure(self, failure: Failure, what: str) -> None:
        """Reply with the code an SMTPServerError carries, or 451 for anything unexpected."""
        error = failure.value
        if isinstance(error, smtp.SMTPServerError) and 400 <= int(error.code) < 600:
            self.sendCode(int(error.code), _with_enhanced_code(int(error.code), error.resp))
        else:
            _log.failure("SMTP {what} failed; answering 451", failure=failure, what=what)
            self.sendCode(451, f"4.3.0 Temporary failure {what}, try again later")

    # --- input: CRLF lines, a queue for pipelining ------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Split input on CRLF only; lines wait in a queue while an earlier command is pending."""
        if self._lost or self._wire.disconnecting:
            return
        self.resetTimeout()
        if self._transaction_started is not None:
            self._transaction_bytes += len(data)
        lines = (self._buffer + data).split(b"\r\n")
        self._buffer = lines.pop()
        if lines:
            self._line_started = None
        self._lines.extend(lines)
        self._process()
        self._update_deadline()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while self._lines and not self._pauses:
                if self._lost or self._wire.disconnecting:
                    self._lines.clear()
                    return
                line = self._lines.popleft()
                if self.mode != smtp.DATA and self._unauthorised_pipelining():
                    return
                if self._skipping_line:
                    self._skipping_line = False
                elif len(line) > self._line_limit():
                    self.lineLengthExceeded(line)
                else:
                    self.lineReceived(line)
            if (
                not self._pauses
                and not self._lost
                and not self._wire.disconnecting
                and len(self._buffer) > self._line_limit()
            ):
                # An unfinished line already too long: drop what we have (keeping a final CR,
                # which may be half of the CRLF that ends it) and skip the rest when it arrives.
                if not self._skipping_line:
                    self.lineLengthExceeded(self._buffer)
                self._buffer = b"\r" if self._buffer.endswith(b"\r") else b""
                self._skipping_line = True
        finally:
            self._processing = False

    def _unauthorised_pipelining(self) -> bool:
        """
        Drop a client that sends commands ahead without having been told it may.

        RFC 2920 allows that only once our EHLO reply has offered PIPELINING; before it, or
        after HELO, more input behind the command being answered means the client does not
        wait for replies (Postfix C{smtpd_forbid_unauth_pipelining}, C{reject_unauth_pipelining}).
        """
        if self._pipelining or not (self._lines or self._buffer):
            return False
        _log.warn("Dropping SMTP client {client}: pipelining without EHLO", client=self._client)
        self._abort_transaction()
        self._close_with(554, "5.5.0 Error: SMTP protocol synchronization")
        return True

    def _line_limit(self) -> int:
        return self._data_line_limit if self.mode == smtp.DATA else self._command_limit

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

    def _pause(self) -> None:
        """Stop reading and answering until _resume: a reply is pending or the client is slowed."""
        self._pauses += 1
        if self._pauses == 1:
            self.setTimeout(None)
            self._set_deadline(None)
            if not self._lost and not self._wire.disconnecting:
                self._wire.pauseProducing()

    def _resume(self) -> None:
        self._pauses -= 1
        if self._pauses or self._lost or self._wire.disconnecting:
            return
        self._wire.resumeProducing()
        self.setTimeout(self.timeout)
        self._process()
        self._update_deadline()

    def _wait_for(self, d: defer.Deferred[Any]) -> None:
        """Hold later pipelined lines until C{d}, which sends this command's reply, has fired."""
        state = {"done": False, "paused": False}

        def finished(result: object) -> object:
            state["done"] = True
            if state["paused"]:
                self._resume()
            return result

        d.addBoth(finished)
        d.addErrback(lambda f: _log.failure("Unexpected error in SMTP reply", failure=f))
        if not state["done"]:
            state["paused"] = True
            self._pause()

    # --- commands -------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.mode == smtp.DATA:
            self._data_line(line)
        else:
            self._command(line)

    def _command(self, line: bytes) -> None:
        if b"\0" in line or _BARE_NEWLINE.search(line):
            self.sendCode(500, "5.5.2 Error: bare CR, LF or NUL in command")
            return
        parts = line.strip().split(None, 1)
        if not parts:
            self.sendCode(500, "5.5.2 Error: bad syntax")
            return
        verb = parts[0].upper()
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

    def _tls_active(self) -> bool:
        return bool(self.startedTLS) or ISSLTransport.providedBy(self.transport)

    def _starttls_offered(self) -> bool:
        return (
            self.ctx is not None
            and self._settings.starttls
            and bool(self.canStartTLS)
            and not self._tls_active()
        )

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

    def ext_STARTTLS(self, rest: bytes) -> None:
        """
        Start TLS with nothing carried over from plaintext (CVE-2011-0411, RFC 3207 section 4.2).

        Lines the client sent after STARTTLS, before the handshake, are thrown away unanswered, and
        HELO and the transaction are forgotten: the client must say EHLO again inside TLS.
        """
        if self._tls_active():
            self.sendCode(503, "5.5.1 Error: TLS already active")
        elif not self._starttls_offered():
            self.sendCode(502, "5.5.1 Error: command not implemented")
        elif rest:
            self.sendCode(501, "5.5.4 Syntax: STARTTLS")
        elif self._from is not None:
            self.sendCode(503, "5.5.1 Error: MAIL transaction in progress")
        else:
            if self._lines or self._buffer:
                _log.warn(
                    "Discarding plaintext sent after STARTTLS by {client}", client=self._client
                )
            self._lines.clear()
            self._buffer = b""
            self._skipping_line = False
            self._helo = (None, (self._client or "").encode("ascii", "replace"))
            self._greeted = False
            self._pipelining = False
            self._from = None
            self._to = []
            self.sendCode(220, "2.0.0 Ready to start TLS")
            self._wire.startTLS(self.ctx)
            self.startedTLS = True

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
        refusal = self._mail_parameters_refusal(match.group("opts"))
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

    def _mail_parameters_refusal(self, opts: bytes | None) -> tuple[int, str] | None:
        """SIZE and BODY are the only MAIL parameters we implement (RFC 1870, RFC 6152)."""
        for param in (opts or b"").split():
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit() or len(value) > 20:
                    return 501, "5.5.4 Bad SIZE parameter"
                if int(value) > self._settings.max_message_size:
                    return 552, "5.3.4 Message size exceeds fixed limit"
            elif key == b"BODY" and value.upper() in (b"7BIT", b"8BITMIME"):
                continue
            else:
                return 555, f"5.5.4 Unsupported parameter: {_printable(param)}"
        return None

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
            client = _client_name(self._wire.getPeer())
            self.sendCode(550, f"5.7.1 {client} is not allowed to relay through this gateway")
            return
        match = self.rcpt_re.match(rest)
        if not match:
            self.sendCode(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        if match.group("opts"):
            self.sendCode(555, f"5.5.4 Unsupported parameter: {_printable(match.group('opts'))}")
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
        self._data_size = 0
        self._header_size = 0
        self._header_lines = 0
        self._hops = 0
        self._in_header = True
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
        if _BARE_NEWLINE.search(line):
            self._fail_data(550, "5.5.2 Message contains bare CR or LF (SMTP smuggling defence)")
            return
        if b"\0" in line:
            self._fail_data(550, "5.5.2 Message contains a NUL character")
            return
        if line[:1] == b".":
            line = line[1:]
        self._data_size += len(line) + 2
        if self._data_size > self._settings.max_message_size:
            self._fail_data(552, "5.3.4 Message size exceeds fixed limit")
            return
        if self._in_header and not self._header_line(line):
            return
        self._feed(line)

    def _header_line(self, line: bytes) -> bool:
        """Track the header block (size, Received count); False when the message is refused."""
        if not line:
            self._in_header = False
            return True
        is_continuation = line[:1] in (b" ", b"\t") and self._header_lines > 0
        if not is_continuation and not _HEADER_FIELD.match(line):
            # The body starts without a blank line; if there were no headers at all, add the
            # blank line so that our Received header does not swallow the first body line.
            self._in_header = False
            if not self._header_lines:
                self._feed(b"")
            return True
        self._header_lines += 1
        self._header_size += len(line) + 2
        if self._header_size > self._settings.max_header_size:
            self._fail_data(552, "5.3.4 Message header too large")
            return False
        if not is_continuation and _RECEIVED_FIELD.match(line):
            self._hops += 1
            if self._hops > self._settings.max_hops:
                self._fail_data(554, "5.4.6 Too many hops (mail loop?)")
                return False
        return True

    def _feed(self, line: bytes) -> None:
        """Give a line to the message; a message that fails makes the whole DATA fail."""
        if self._data_error is not None:
            return
        try:
            for message in self._messages:
                message.lineReceived(line)
        except smtp.SMTPServerError as e:
            code = int(e.code) if 400 <= int(e.code) < 600 else 451
            self._fail_data(code, _with_enhanced_code(code, e.resp).decode("utf-8", "replace"))
        except Exception:
            _log.failure("Message refused a line; answering 451")
            self._fail_data(451, "4.3.0 Temporary failure storing the message, try again later")

    def _fail_data(self, code: int, text: str) -> None:
        """Store nothing, keep reading to CRLF.CRLF, then answer with the first error found."""
        if self._data_error is None:
            _log.info(
                "Refusing message from {client}: {code} {text}",
                client=self._client,
                code=code,
                text=text,
            )
            self._data_error = (code, text.encode("utf-8"))
        messages, self._messages = self._messages, []
        _abort(messages)

    def _end_of_data(self) -> None:
        self.mode = smtp.COMMAND
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
        queue_id = _printable(result) if isinstance(result, bytes) else ""
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


def _peer_ip(peer: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(peer, IPv4Address | IPv6Address):
        return None
    try:
        return ipaddress.ip_address(peer.host.split("%", 1)[0])
    except ValueError:
        return None


def _client_name(peer: IAddress) -> str:
    """The key connections are counted under and the name used in replies and logs."""
    if isinstance(peer, UNIXAddress):
        return "unix"
    address = _peer_ip(peer)
    return str(address) if address is not None else str(peer)


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


def _with_enhanced_code(code: int, text: bytes | str) -> bytes:
    """Prefix a generic enhanced status code (RFC 3463) when a passed-through text has none."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if _ENHANCED_CODE.match(text):
        return text
    return f"{code // 100}.0.0 ".encode("ascii") + text


def _printable(value: bytes) -> str:
    """Client- or store-supplied text made safe to echo in a one-line reply."""
    text = value.decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:100]
