# -*- test-case-name: tests.test_smtp_server -*-
"""
One intake connection's wire side: input, timers, error limits and STARTTLS.

L{GatewayConnection} splits input into CRLF lines itself rather than with
C{LineOnlyReceiver}, because the gateway must queue lines while a reply is pending
(pipelining), throw lines away after STARTTLS and never let an over-long line flip DATA back
into command mode. It runs the idle timer and the deadlines of L{secmail.smtp.limits} on the
injected clock, slows down and drops clients that make too many errors, and starts TLS with
nothing carried over from plaintext. What the commands do is
L{secmail.smtp.server.GatewayESMTP}'s part.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from secmail.config import SmtpSettings
from secmail.smtp.limits import (
    DATA_LINE_LIMIT,
    ERROR_SLEEP_SECONDS,
    MIN_COMMAND_LINE_LIMIT,
    earliest_deadline,
    peer_accepted,
    with_enhanced_code,
)

_log = Logger()


class GatewayConnection(smtp.ESMTP):
    """
    Twisted's ESMTP with our own input splitting, timers, error limits and STARTTLS.

    Command lines are limited to max(C{max_line_length}, 1000) bytes; DATA lines to
    L{DATA_LINE_LIMIT} (1 MiB), because long body lines are ordinary mail.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        hostname: str,
        clock: IReactorTime,
        tls_context_factory: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None = None,
    ) -> None:
        super().__init__(contextFactory=tls_context_factory)
        self.challengers = {}
        self._helo: tuple[bytes | None, bytes] = (None, b"")
        self.host = hostname
        self.timeout = settings.idle_timeout
        self._settings = settings
        self._hostname = hostname
        self._clock = clock
        self._client: str | None = None
        self._lost = False
        self._greeted = False
        self._errors = 0
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

    def _abort_transaction(self) -> None:
        """Forget the transaction in progress: the protocol's part."""
        raise NotImplementedError

    @property
    def _wire(self) -> Any:
        """The transport; loosely typed because we need C{disconnecting} and producer methods."""
        return self.transport

    # --- connection life ----------------------------------------------------------------------

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """Schedule the idle timeout on the injected clock, not the global reactor."""
        return self._clock.callLater(period, func)

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
        (Re)arm the deadline of what the client is sending now, besides the idle timer
        (L{earliest_deadline}). No deadline runs while we, not the client, are the slow side.
        """
        if self._pauses or self._lost or self._wire.disconnecting:
            self._set_deadline(None)
            return
        if self.mode != smtp.DATA and self._buffer and not self._skipping_line:
            if self._line_started is None:
                self._line_started = self._clock.seconds()
        else:
            self._line_started = None
        deadline = earliest_deadline(
            self._settings, self._transaction_started, self._transaction_bytes, self._line_started
        )
        if deadline is None:
            self._set_deadline(None)
            return
        at, self._deadline_reason = deadline
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
        return peer_accepted(self._wire.getPeer(), self._settings)

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
            self.sendCode(int(error.code), with_enhanced_code(int(error.code), error.resp))
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

    # --- STARTTLS -------------------------------------------------------------------------------

    def _tls_active(self) -> bool:
        return bool(self.startedTLS) or ISSLTransport.providedBy(self.transport)

    def _starttls_offered(self) -> bool:
        return (
            self.ctx is not None
            and self._settings.starttls
            and bool(self.canStartTLS)
            and not self._tls_active()
        )

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
