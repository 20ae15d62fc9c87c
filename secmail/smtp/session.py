# -*- test-case-name: tests.test_smtp_client -*-
"""
The plumbing of one outbound SMTP session, which L{secmail.smtp.client.SmtpClientProtocol}
builds on.

L{SmtpSession} reads the peer's replies line by line and hands each whole reply to the
handler of the state that expects it (the protocol's part). Every state has its own timer
on the injected clock. However the session ends (QUIT, a lost connection, a timeout, a
protocol error), it settles every message still without an outcome, as
L{secmail.smtp.client.SmtpClientProtocol} describes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from secmail.smtp.outgoing import (
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    OutgoingMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    Timeouts,
)


class State(Enum):
    """Where the client is in the conversation. The value names it in error texts."""

    GREETING = "initial greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    PREPARE = "preparing the message"
    """Before MAIL FROM: reading the message to see whether it is 8-bit, converting it."""
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    CONTENT = "message content"
    END_OF_DATA = "end of data"
    RSET = "RSET"
    QUIT = "QUIT"
    CLOSED = "closed"


@dataclass(frozen=True)
class Reply:
    """One whole reply: its code and the text of each of its lines."""

    code: int
    lines: list[str]

    @property
    def kind(self) -> int:
        return self.code // 100

    @property
    def text(self) -> str:
        return f"{self.code} {' '.join(line for line in self.lines if line)}".rstrip()


class _Transport(TypingProtocol):
    """The parts of a TCP (or TLS) transport that the protocol uses."""

    disconnecting: bool

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def printable(raw: bytes) -> str:
    """Reply text fit for logs and DSNs: no control characters and no invalid UTF-8."""
    text = raw.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass
class Transaction:
    """The message the session is sending now, and what the peer said so far."""

    message: OutgoingMessage
    result: Deferred[DeliveryResult]
    to_send: deque[str]
    """Recipients whose RCPT TO is still to be sent."""
    permanent: dict[str, str]
    pipelined: bool
    """MAIL FROM, every RCPT TO and DATA went in one write (RFC 2920)."""
    kept: list[bytes] | None = None
    """The content to send, when it is in memory: what was read of the message before its
    MAIL FROM, or its 7-bit form. None: the message's content is read (again) to be sent."""
    awaiting: deque[str] = field(default_factory=deque)
    """Recipients whose RCPT TO was sent and not yet answered, in order."""
    temporary: dict[str, str] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    tried: bool = False
    """The peer has answered its MAIL FROM, so it has had a say about this message."""
    refusal: DeliveryError | None = None
    """Pipelined: why MAIL FROM was refused, while the replies sent with it are read."""
    discard: bool = False
    """Pipelined: DATA got 354 with nothing to send, so the dot ends an empty message."""


@implementer(IPushProducer, IHandshakeListener)
class SmtpSession(Protocol):
    """One client session's reading, timers and ending; what to say is the subclass's.

    It is also the transport's push producer while message content is sent, so a slow
    peer slows down how fast the content is read.
    """

    MAX_LINE_LENGTH = 4096
    """Longest reply line taken (RFC 5321 asks for 512 octets)."""
    MAX_REPLY_LINES = 100

    _handlers: dict[State, Callable[[Reply], None]]
    """What handles the reply in each state: the conversation's part (the subclass sets it)."""

    def __init__(
        self,
        clock: IReactorTime,
        hostname: str,
        messages: Sequence[OutgoingMessage],
        timeouts: Timeouts,
    ) -> None:
        if not messages:
            raise ValueError("a session needs at least one message")
        self.state = State.GREETING
        self.results: list[Deferred[DeliveryResult]] = [Deferred() for _ in messages]
        self._clock = clock
        self._hostname = hostname
        self._messages = list(messages)
        self._next = 0  # index of the next message whose transaction is to begin
        self._txn: Transaction | None = None
        self._tried_any = False  # the peer has answered some MAIL FROM in this session
        self._queued: deque[tuple[State, float]] = deque()
        """Pipelined commands after the one in C{state} whose replies are due, in order."""
        self._timeouts = timeouts
        self._peer = hostname
        self._buffer = b""
        self._reply_lines: list[bytes] = []
        self._tls_started = False
        self._handshake_done = False
        self._timer: IDelayedCall | None = None
        self._sending: Deferred[None] | None = None
        self._paused: Deferred[None] | None = None

    @property
    def result(self) -> Deferred[DeliveryResult]:
        """The first message's outcome: the whole outcome of a one-message session."""
        return self.results[0]

    @property
    def _transport(self) -> _Transport:
        return cast(_Transport, self.transport)

    # --- Twisted's side -------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self._transport.getPeer()
        ip, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if ip is not None and port is not None:
            self._peer = f"{self._hostname}[{ip}]:{port}"
        self._expect(State.GREETING, self._timeouts.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._buffer += data
        while self.state is not State.CLOSED:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > self.MAX_LINE_LENGTH:
                    self._protocol_error("sent a reply line that is too long")
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            if len(line) > self.MAX_LINE_LENGTH:
                self._protocol_error("sent a reply line that is too long")
                return
            reply = self._collect(line)
            if reply is None:
                continue
            if self._buffer and not self._queued and self.state is not State.QUIT:
                self._protocol_error(
                    f"sent unexpected data after its reply to {self.state.value} "
                    "(before our next command)"
                )
                return
            self._cancel_timer()
            self._handlers[self.state](reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state, self.state = self.state, State.CLOSED
        self._cancel_timer()
        self._resume()
        if state in (State.CLOSED, State.QUIT):
            return
        if state is State.EHLO and self._tls_started and not self._handshake_done:
            text = f"TLS handshake with {self._peer} failed: {reason.getErrorMessage()}"
        else:
            text = f"lost connection with {self._peer} {_while(state)}"
        self._settle_rest(
            TemporaryDeliveryError(text, try_other_hosts=state is not State.END_OF_DATA)
        )

    def handshakeCompleted(self) -> None:
        self._handshake_done = True

    # IPushProducer: the transport calls these while we send the message content.

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        self._resume()

    def stopProducing(self) -> None:
        """The connection is going away. L{connectionLost} follows and ends the sending."""

    # --- reading replies --------------------------------------------------------------------

    def _collect(self, line: bytes) -> Reply | None:
        """Add a reply line, and return the reply once its last line has come."""
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            self._protocol_error(f"sent a malformed reply {printable(line[:80])!r}")
            return None
        self._reply_lines.append(line)
        if len(self._reply_lines) > self.MAX_REPLY_LINES:
            self._protocol_error("sent a reply with too many lines")
            return None
        if line[3:4] == b"-":
            return None
        lines, self._reply_lines = self._reply_lines, []
        return Reply(int(line[:3]), [printable(raw[4:]) for raw in lines])

    def _said(self, reply: Reply) -> str:
        return f"{self._peer} said: {reply.text} (in reply to {self.state.value})"

    @property
    def _current(self) -> Transaction:
        txn = self._txn
        if txn is None:  # pragma: no cover - the transaction states always have one
            raise RuntimeError(f"no transaction in progress in state {self.state}")
        return txn

    # --- helpers ---------------------------------------------------------------------------

    def _command(self, state: State, line: bytes, timeout: float) -> None:
        self._transport.write(line + b"\r\n")
        self._expect(state, timeout)

    def _expect(self, state: State, timeout: float) -> None:
        self.state = state
        self._start_timer(timeout)

    def _next_reply(self) -> None:
        """Go on to the reply to the next command of a pipelined group."""
        state, timeout = self._queued.popleft()
        self._expect(state, timeout)

    def _start_timer(self, timeout: float) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        state = self.state
        if state is State.QUIT:
            self.state = State.CLOSED
            self._transport.abortConnection()
            return
        text = f"conversation with {self._peer} timed out {_while(state)}"
        self._end_session(
            TemporaryDeliveryError(text, try_other_hosts=state is not State.END_OF_DATA),
            polite=False,
        )

    def _protocol_error(self, what: str) -> None:
        state = self.state
        self._end_session(
            TemporaryDeliveryError(
                f"{self._peer} {what}", try_other_hosts=state is not State.END_OF_DATA
            ),
            polite=False,
        )

    def _error_for(self, reply: Reply) -> DeliveryError:
        if reply.kind == 5:
            return PermanentDeliveryError(self._said(reply))
        if reply.kind == 4:
            return TemporaryDeliveryError(self._said(reply))
        text = f"{self._peer} gave an unexpected reply {reply.text!r} to {self.state.value}"
        return TemporaryDeliveryError(text)

    def _end_session(self, error: DeliveryError, *, polite: bool = True) -> None:
        """End the session with C{error}: QUIT when the conversation is in step, else abort."""
        if polite:
            self._quit()
        else:
            self.state = State.CLOSED
            self._cancel_timer()
            self._transport.abortConnection()
        self._queued.clear()  # replies still due to a pipelined group: the first ends it all
        self._resume()  # a paused sender wakes up, sees the state and stops
        self._settle_rest(error)

    def _quit(self) -> None:
        self._command(State.QUIT, b"QUIT", self._timeouts.quit)

    def _settle_rest(self, error: DeliveryError) -> None:
        """The session ended with C{error}: settle every message still without an outcome."""
        if self._sending is not None and not self._sending.called:
            self._sending.cancel()
        txn, self._txn = self._txn, None
        untried = self.results[self._next :]
        self._next = len(self._messages)
        if txn is not None:
            if txn.tried or not self._tried_any:
                settle(txn.result, error)
            else:
                untried.insert(0, txn.result)
        others = _not_tried(self._peer, error) if self._tried_any else error
        for result in untried:
            settle(result, others)

    def _resume(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)


def settle(result: Deferred[DeliveryResult], outcome: DeliveryOutcome) -> None:
    if result.called:
        return
    if isinstance(outcome, DeliveryResult):
        result.callback(outcome)
    else:
        result.errback(Failure(outcome))


def _not_tried(peer: str, cause: DeliveryError) -> TemporaryDeliveryError:
    """The error for a message that the session ended on before the peer had a say about it."""
    return TemporaryDeliveryError(
        f"not tried: the session with {peer} ended before this message was sent ({cause.text})"
    )


def _while(state: State) -> str:
    if state is State.GREETING:
        return "while receiving the initial greeting"
    if state is State.CONTENT:
        return "while sending the message content"
    if state is State.PREPARE:
        return "while reading the message content"
    return f"while waiting for the reply to {state.value}"
