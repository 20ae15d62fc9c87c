"""
Outbound SMTP: hand one queued message to one host, to a list of hosts, or by route.

We do not use C{twisted.mail.smtp.SMTPClient} (reliability.md §5.1 item 7). Its DATA path,
C{transformChunk}, runs on every 16 KiB C{FileSender} chunk on its own. So a line starting
with "." is not dot-stuffed when it is the first line or starts a chunk, and the next hop
sees an early end of data: the message is cut short, or the rest runs as SMTP commands
(outbound smuggling). It also turns CRLF into CR CR LF and lets a bare CR through. And its
callback API has neither a timeout for each stage nor per-recipient results. So this
module has:

  - L{DataEncoder}: pure and line-oriented. It makes line ends canonical CRLF, dot-stuffs
    every line and folds lines longer than 998 octets.
  - L{SmtpClientProtocol}: a small state machine for one session, which carries one
    transaction per message. It sends one command at a time (with PIPELINING, one envelope
    at a time), and every state it waits in has its own timeout on the injected clock.
  - L{deliver_many}, L{deliver_many_to_hosts}, L{resolve_mx} and L{deliver_many_via_route}:
    the coroutines the queue calls, with one outcome per message. L{deliver},
    L{deliver_to_hosts} and L{deliver_via_route} are their one-message forms, which raise
    the message's error.

8-bit mail (RFC 6152): before a message's MAIL FROM the client knows whether it has a byte
over 127, from L{OutgoingMessage.eight_bit} or by reading it once (a message of up to
L{PREFETCH_LIMIT} bytes is then sent from what was read, so it is read once either way).
An 8-bit message goes with C{BODY=8BITMIME} to a peer that offers 8BITMIME; to one that
does not, it is converted to 7 bits first (L{secmail.smtp.downgrade}, on a worker thread),
or, when that cannot be done, fails permanently without being sent. A 7-bit message goes
as before, without C{BODY=}.

Error texts name the host and the command, in the form
C{"mx.example.com[192.0.2.1]:25 said: 550 5.1.1 no such user (in reply to RCPT TO)"}. They
can go into a DSN as they are. They never quote message content.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from typing import Protocol as TypingProtocol

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IResolver,
    IStreamClientEndpoint,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from zope.interface import implementer

from secmail.config import Route
from secmail.smtp.downgrade import DowngradeError, downgrade, is_eight_bit

if TYPE_CHECKING:
    # Twisted documents this interface but does not export it from twisted.internet.ssl.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_log = Logger()

MAX_HOSTS = 5
"""How many hosts L{deliver_to_hosts} tries at most. Postfix's smtp_mx_address_limit is also 5."""

DNS_TIMEOUTS = (1, 3, 11, 45)
"""Retry schedule for the MX query, as in twisted.names.client. About a minute in all."""

PREFETCH_LIMIT = 1024 * 1024
"""A message whose 8-bit-ness is not known is read before its MAIL FROM to find out. Up to
this many bytes are kept and sent from memory; a larger message is read again to send it."""

RunInThread: TypeAlias = Callable[..., Awaitable[Any]]
"""C{deferToThread}-like: runs C{f(*args)} off the reactor thread."""


# --- results and errors -----------------------------------------------------------------------


class DeliveryError(Exception):
    """Base of the delivery errors. C{text} is safe to put into a DSN."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class PermanentDeliveryError(DeliveryError):
    """Retrying will not help, so the message bounces.

    C{recipients} maps each rejected recipient to its own reply text, when each recipient
    was rejected on its own. It is empty when the whole transaction was refused.
    """

    def __init__(self, text: str, recipients: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.recipients = dict(recipients or {})


class TemporaryDeliveryError(DeliveryError):
    """Try again later.

    C{try_other_hosts} is False once the host has seen the whole message. Then a 4xx was a
    definite answer about this message, or (after a lost connection or a timeout) the host
    may in fact have taken it (RFC 1047). Offering the message to the next MX at once
    would only make duplicates more likely.
    """

    def __init__(self, text: str, *, try_other_hosts: bool = True) -> None:
        super().__init__(text)
        self.try_other_hosts = try_other_hosts


@dataclass
class DeliveryResult:
    """What one SMTP transaction did for each recipient.

    C{accepted} is filled only when the final dot got 250, so those recipients are
    delivered. C{temporary} and C{permanent} map a recipient to the reply text of a 4xx or
    5xx to its RCPT (or to why its address could not be used).
    """

    accepted: list[str] = field(default_factory=list)
    temporary: dict[str, str] = field(default_factory=dict)
    permanent: dict[str, str] = field(default_factory=dict)
    reply: str = ""
    """The final-dot reply, e.g. C{"host[ip]:25 said: 250 2.0.0 queued as X"}, for the log."""


DeliveryOutcome: TypeAlias = DeliveryResult | DeliveryError
"""What became of one message: its per-recipient result, or why the whole of it failed."""


# --- inputs -----------------------------------------------------------------------------------


class TlsPolicy(Enum):
    """When and how to use STARTTLS."""

    NONE = "none"
    """Never use STARTTLS."""
    OPPORTUNISTIC = "opportunistic"
    """For MX hosts. Use STARTTLS when it is offered, without certificate checks. Encryption
    protects against passive snooping. Without DANE/MTA-STS there is nothing to verify
    against. A failed handshake is a temporary failure."""
    VERIFY = "verify"
    """For a configured relay host. When STARTTLS is offered, the certificate must be valid
    for the host name. When it is not offered, carry on in plain text."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait in each state. The defaults follow RFC 5321 §4.5.3.2."""

    connect: float = 30
    greeting: float = 300
    helo: float = 300
    starttls: float = 300
    mail: float = 300
    rcpt: float = 300
    data_init: float = 120
    content: float = 180
    """The longest time the transfer may make no progress: a stuck content source or a peer
    that stopped reading. This is Postfix's smtp_data_xfer_timeout."""
    final_dot: float = 600
    rset: float = 20
    """Between two messages of a session. Postfix's smtp_rset_timeout is 20 s as well."""
    quit: float = 10


@dataclass(frozen=True)
class ClientOptions:
    """Settings for the gateway as a whole, the same for every delivery."""

    helo: str
    ca_file: str | None = None
    """PEM file of CAs to trust under L{TlsPolicy.VERIFY}. None means the platform's trust store."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    run_in_thread: RunInThread | None = None
    """Where converting an 8-bit message to 7 bits runs (CPU work). None: in the caller's
    thread, for tests; the gateway passes C{deferToThread}."""

    def __post_init__(self) -> None:
        problem = _address_problem(self.helo)
        if not self.helo or problem:
            raise ValueError(f"HELO name {self.helo!r} cannot be used: {problem or 'empty'}")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for one SMTP transaction.

    C{content} is a factory, so every attempt reads the message afresh. It yields the raw
    message in any chunking. L{DataEncoder} makes it fit for the wire. C{size}, if known,
    is sent as C{SIZE=} to hosts that advertise SIZE. C{eight_bit} says whether the
    message has a byte over 127; None (not known) makes the client read it to find out.
    """

    sender: str
    recipients: Sequence[str]
    content: Callable[[], AsyncIterator[bytes]]
    size: int | None = None
    eight_bit: bool | None = None


# --- envelope checks --------------------------------------------------------------------------

_FORBIDDEN_IN_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def _address_problem(address: str) -> str | None:
    """Why C{address} cannot go between the angle brackets of MAIL/RCPT, or None.

    A CR or LF would end the command early and let the rest become a new command (SMTP
    injection, GHSA-v3q9-hj7j-63hq). A space or '>' would end the path early. A non-ASCII
    address needs SMTPUTF8 (RFC 6531), which this client does not speak.
    """
    match = _FORBIDDEN_IN_ADDRESS.search(address)
    if match is None:
        return None if address.isascii() else "has non-ASCII characters (needs SMTPUTF8)"
    char = match.group()
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", " ": "a space", "<": "'<'", ">": "'>'"}
    return "contains " + names.get(char, f"control character {char!r}")


def check_envelope(message: OutgoingMessage) -> dict[str, str]:
    """Reject a message whose envelope cannot be sent, and find its unusable recipients.

    Raises L{PermanentDeliveryError} for a bad sender, or when no recipient is usable.
    Otherwise it returns the unusable recipients, each with the reason. These are
    permanent failures for those recipients only.
    """
    problem = _address_problem(message.sender)
    if problem:
        raise PermanentDeliveryError(f"invalid sender address {message.sender!r}: {problem}")
    if not message.recipients:
        raise ValueError("a message needs at least one recipient")
    invalid = {}
    for recipient in message.recipients:
        problem = "is empty" if not recipient else _address_problem(recipient)
        if problem:
            invalid[recipient] = f"invalid recipient address {recipient!r}: {problem}"
    if len(invalid) == len(set(message.recipients)):
        first = next(iter(invalid.values()))
        raise PermanentDeliveryError(first, recipients=invalid)
    return invalid


# --- DATA encoding ----------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


class DataEncoder:
    """Turn raw message bytes, in any chunking, into SMTP DATA wire bytes.

    - Line ends become CRLF. A bare CR or bare LF counts as a line end, because a bare
      one must never reach the next hop (SMTP smuggling).
    - A line that starts with "." gets one more "." (RFC 5321 §4.5.2), wherever the chunk
      boundaries fall, the first line included.
    - A line longer than 998 octets is folded. After 998 octets on the wire we send CRLF and
      one space, then the rest: header-style folding, which is what Postfix does with
      smtp_line_length_limit. In a header this is a valid fold that unfolds to the same
      value. In a body it adds a line break and a space, and there is no lossless way to
      fold an over-long body line, which RFC 5322 forbids anyway. The leading space also
      means a continuation line is never dot-stuffed and never taken for the end of data.
      The limit counts the stuffed dot, so every wire line is at most 1000 octets with its
      CRLF.
    - L{finish} ends a last line that has no line end, then adds the C{.CRLF} terminator.

    Besides the chunk being worked on, it keeps at most one wire line (998 octets).
    """

    MAX_LINE = 998

    def __init__(self) -> None:
        self._line = bytearray()  # wire bytes of the current output line, without CRLF
        self._in_line = False  # the current input line has content, so stuffing is settled
        self._after_cr = False  # the last chunk ended in CR: an LF next completes that CRLF
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Take the next chunk of the message and return the wire bytes that are complete."""
        if self._finished:
            raise RuntimeError("DataEncoder.feed() after finish()")
        out: list[bytes] = []
        pos, end = 0, len(data)
        if self._after_cr and data:
            self._after_cr = False
            if data[:1] == b"\n":
                pos = 1
        while pos < end:
            match = _LINE_END.search(data, pos)
            if match is None:
                self._append(data[pos:], out)
                break
            self._append(data[pos : match.start()], out)
            self._end_line(out)
            pos = match.end()
            if pos == end and match.group() == b"\r":
                self._after_cr = True
        return b"".join(out)

    def finish(self) -> bytes:
        """End the last line if it has no line end, and add the end-of-data line."""
        if self._finished:
            raise RuntimeError("DataEncoder.finish() called twice")
        self._finished = True
        out: list[bytes] = []
        if self._in_line:
            self._end_line(out)
        out.append(b".\r\n")
        return b"".join(out)

    def _append(self, segment: bytes, out: list[bytes]) -> None:
        if not segment:
            return
        line = self._line
        if not self._in_line:
            self._in_line = True
            if segment[:1] == b".":
                line += b"."
        pos = 0
        while True:
            room = self.MAX_LINE - len(line)
            if len(segment) - pos <= room:
                line += segment[pos:]
                return
            line += segment[pos : pos + room]
            pos += room
            out.append(bytes(line) + b"\r\n")
            line.clear()
            line += b" "

    def _end_line(self, out: list[bytes]) -> None:
        out.append(bytes(self._line) + b"\r\n")
        self._line.clear()
        self._in_line = False


# --- the protocol -----------------------------------------------------------------------------


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
class _Reply:
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


def _printable(raw: bytes) -> str:
    """Reply text fit for logs and DSNs: no control characters and no invalid UTF-8."""
    text = raw.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass
class _Transaction:
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
class SmtpClientProtocol(Protocol):
    """One SMTP session that carries a sequence of transactions, one per message.

    A state machine. The session goes GREETING, EHLO (or HELO), perhaps STARTTLS and EHLO
    again, and then, for each message in turn, PREPARE (unless the message is known to be
    7-bit, or 8-bit for a peer with 8BITMIME: see the module's docstring), MAIL FROM, RCPT
    TO, DATA, CONTENT and END_OF_DATA. A message that fails in PREPARE has sent nothing, so
    the session goes on with the next. After a transaction that ended in step with the
    peer, the next message starts with MAIL FROM, or with RSET first when the transaction
    failed. After the last message comes QUIT.

    It sends one command at a time, except that when the peer advertises PIPELINING (RFC
    2920) a message's MAIL FROM, RCPT TOs and DATA go out in one write. Their replies are
    then read in order, each in its own state with its own timeout, exactly as if the
    commands had gone one by one; only what is sent next differs. A transaction refused
    part-way (MAIL FROM, or every RCPT TO) is settled once the last reply of its group,
    the one to DATA, is in, unless a 421 ends the session first.

    C{results} has one Deferred per message, in order. Each fires with a L{DeliveryResult}
    or fails with a L{DeliveryError} as soon as that message's outcome is known.

    When the session ends early (lost connection, timeout, protocol error, a 421, a failed
    RSET), what each message still without an outcome gets depends on whether it was
    tried, that is whether the peer answered its MAIL FROM. The message in progress, if it
    was tried, gets the session's error itself. The others fail with a
    L{TemporaryDeliveryError} saying they were not tried, or, when the peer has not
    answered any MAIL FROM in this session, with the session's error itself: then that
    error (a refused greeting, say) is as much about one message as about any other, and
    a one-message session reports exactly what went wrong.

    Replies are handled only in the state that expects them. Bytes that come after the
    replies due, before we have sent the next command, cannot be an answer to that
    command. They are treated as a protocol error, which also stops plain-text injection
    after STARTTLS.

    It is also the transport's push producer while message content is sent, so a slow
    peer slows down how fast we read the content.
    """

    MAX_LINE_LENGTH = 4096
    """Longest reply line taken (RFC 5321 asks for 512 octets)."""
    MAX_REPLY_LINES = 100

    def __init__(
        self,
        clock: IReactorTime,
        hostname: str,
        messages: Sequence[OutgoingMessage],
        options: ClientOptions,
        tls: TlsPolicy,
    ) -> None:
        if not messages:
            raise ValueError("a session needs at least one message")
        self.state = State.GREETING
        self.results: list[Deferred[DeliveryResult]] = [Deferred() for _ in messages]
        self._clock = clock
        self._hostname = hostname
        self._messages = list(messages)
        self._invalid = [check_envelope(message) for message in self._messages]
        self._next = 0  # index of the next message whose transaction is to begin
        self._txn: _Transaction | None = None
        self._tried_any = False  # the peer has answered some MAIL FROM in this session
        self._queued: deque[tuple[State, float]] = deque()
        """Pipelined commands after the one in C{state} whose replies are due, in order."""
        self._options = options
        self._timeouts = options.timeouts
        self._tls = tls
        self._peer = hostname
        self._buffer = b""
        self._reply_lines: list[bytes] = []
        self._extensions: dict[str, str] = {}
        self._tls_started = False
        self._handshake_done = False
        self._timer: IDelayedCall | None = None
        self._sending: Deferred[None] | None = None
        self._paused: Deferred[None] | None = None
        self._handlers: dict[State, Callable[[_Reply], None]] = {
            State.GREETING: self._on_greeting,
            State.EHLO: self._on_ehlo,
            State.HELO: self._on_helo,
            State.STARTTLS: self._on_starttls,
            State.PREPARE: self._on_reply_while_preparing,
            State.MAIL: self._on_mail,
            State.RCPT: self._on_rcpt,
            State.DATA: self._on_data,
            State.CONTENT: self._on_early_reply,
            State.END_OF_DATA: self._on_end_of_data,
            State.RSET: self._on_rset,
            State.QUIT: self._on_quit,
        }

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

    def _collect(self, line: bytes) -> _Reply | None:
        """Add a reply line, and return the reply once its last line has come."""
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            self._protocol_error(f"sent a malformed reply {_printable(line[:80])!r}")
            return None
        self._reply_lines.append(line)
        if len(self._reply_lines) > self.MAX_REPLY_LINES:
            self._protocol_error("sent a reply with too many lines")
            return None
        if line[3:4] == b"-":
            return None
        lines, self._reply_lines = self._reply_lines, []
        return _Reply(int(line[:3]), [_printable(raw[4:]) for raw in lines])

    def _said(self, reply: _Reply) -> str:
        return f"{self._peer} said: {reply.text} (in reply to {self.state.value})"

    # --- the session: greeting, hello, STARTTLS -------------------------------------------

    def _on_greeting(self, reply: _Reply) -> None:
        if reply.kind == 2:
            self._send_ehlo()
        else:
            # Even a 554 greeting only means "not this host": Postfix skips 5xx greeters too.
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _send_ehlo(self) -> None:
        self._command(State.EHLO, b"EHLO " + self._options.helo.encode(), self._timeouts.helo)

    def _on_ehlo(self, reply: _Reply) -> None:
        if reply.kind == 2:
            self._extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self._extensions[keyword.upper()] = params
            self._after_hello()
        elif reply.kind == 5:
            helo = b"HELO " + self._options.helo.encode()
            self._command(State.HELO, helo, self._timeouts.helo)
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _on_helo(self, reply: _Reply) -> None:
        if reply.kind == 2:
            self._extensions = {}
            self._after_hello()
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _after_hello(self) -> None:
        if (
            self._tls is not TlsPolicy.NONE
            and not self._tls_started
            and "STARTTLS" in self._extensions
            and ITLSTransport.providedBy(self.transport)
        ):
            self._command(State.STARTTLS, b"STARTTLS", self._timeouts.starttls)
        else:
            self._begin_transaction()

    def _on_starttls(self, reply: _Reply) -> None:
        if reply.kind != 2:
            if self._tls is TlsPolicy.OPPORTUNISTIC:
                self._begin_transaction()  # plain text, as if STARTTLS were not offered
            else:
                self._end_session(TemporaryDeliveryError(self._said(reply)))
            return
        try:
            creator = self._tls_creator()
            cast(ITLSTransport, self.transport).startTLS(creator)
        except Exception as e:
            _log.failure("Could not start TLS with {peer}", peer=self._peer)
            text = f"could not start TLS with {self._peer}: {e}"
            self._end_session(TemporaryDeliveryError(text), polite=False)
            return
        # RFC 3207 §4.2: forget everything learnt before TLS and say EHLO again.
        self._tls_started = True
        self._extensions = {}
        self._send_ehlo()

    def _tls_creator(self) -> IOpenSSLClientConnectionCreator:
        if self._tls is TlsPolicy.VERIFY:
            ca_file = self._options.ca_file
            trust = platformTrust() if ca_file is None else load_trust_root(ca_file)
            return optionsForClientTLS(
                self._hostname,
                trustRoot=trust,
                extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
            )
        options = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
        return cast(IOpenSSLClientConnectionCreator, options)

    # --- one transaction per message --------------------------------------------------------

    def _begin_transaction(self) -> None:
        """Start the next message: if need be, find out whether it is 8-bit; then its envelope."""
        index = self._next
        self._next += 1
        message, invalid = self._messages[index], self._invalid[index]
        self._txn = txn = _Transaction(
            message=message,
            result=self.results[index],
            to_send=deque(r for r in message.recipients if r not in invalid),
            permanent=dict(invalid),
            pipelined="PIPELINING" in self._extensions,
        )
        if message.eight_bit is False:
            self._send_envelope(txn, message.size)
        elif message.eight_bit and "8BITMIME" in self._extensions:
            self._send_envelope(txn, message.size, eight_bit=True)
        else:
            # Read from memory, this finishes at once, so a pipelined envelope still goes
            # in one write.
            self._expect(State.PREPARE, self._timeouts.content)
            preparing = Deferred.fromCoroutine(self._prepare(txn))
            preparing.addErrback(self._prepare_failed, txn)
            if not preparing.called:
                # Done at once, it may have begun the next message, whose Deferred this is.
                self._sending = preparing

    def _preparing(self, txn: _Transaction) -> bool:
        """Whether C{txn} is still being prepared: False once the session ended."""
        return self.state is State.PREPARE and self._txn is txn

    async def _prepare(self, txn: _Transaction) -> None:
        """Read the message to see whether it is 8-bit; for a peer without 8BITMIME, convert it."""
        message = txn.message
        kept: list[bytes] | None = []
        eight_bit = bool(message.eight_bit)
        size = 0
        chunks = message.content()
        try:
            async for chunk in chunks:
                if not self._preparing(txn):
                    return
                self._start_timer(self._timeouts.content)
                size += len(chunk)
                eight_bit = eight_bit or is_eight_bit(chunk)
                if kept is not None:
                    kept.append(chunk)
                    if size > PREFETCH_LIMIT:
                        kept = None  # too much to keep: it is read again to be sent
                if eight_bit and kept is None:
                    break  # all that was to be learnt
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if not self._preparing(txn):
            return
        if eight_bit and "8BITMIME" not in self._extensions:
            raw = b"".join(kept) if kept is not None else await _read_all(message.content)
            if not self._preparing(txn):
                return
            run = self._options.run_in_thread
            try:
                converted: bytes = await (run(downgrade, raw) if run else _now(downgrade, raw))
            except DowngradeError as e:
                if self._preparing(txn):
                    text = (
                        f"{self._peer} does not accept 8-bit mail (no 8BITMIME) and the "
                        f"message could not be converted to 7-bit: {e.reason}"
                    )
                    self._end_transaction(PermanentDeliveryError(text), clean=True)
                return
            if not self._preparing(txn):
                return
            txn.kept = [converted]
            self._send_envelope(txn, None if message.size is None else len(converted))
            return
        txn.kept = kept
        self._send_envelope(txn, message.size, eight_bit=eight_bit)

    def _on_reply_while_preparing(self, reply: _Reply) -> None:
        """A reply before we sent MAIL FROM answers nothing of ours (a 421 on shutting down)."""
        self._protocol_error(f"sent {reply.text!r} before our next command")

    def _prepare_failed(self, failure: Failure, txn: _Transaction) -> None:
        """Reading (or converting) the message failed before its MAIL FROM: try it later."""
        if not self._preparing(txn):
            return
        _log.failure("Preparing a message for {peer} failed", failure, peer=self._peer)
        text = f"reading the message content failed ({type(failure.value).__name__})"
        # Nothing of this message was sent, so the session goes on with the next one.
        self._end_transaction(TemporaryDeliveryError(text), clean=True)

    def _send_envelope(
        self, txn: _Transaction, size: int | None, *, eight_bit: bool = False
    ) -> None:
        """Send the MAIL FROM, and with PIPELINING the RCPT TOs and DATA too."""
        message = txn.message
        mail = b"MAIL FROM:<" + message.sender.encode() + b">"
        if size is not None and "SIZE" in self._extensions:
            mail += b" SIZE=%d" % size
        if eight_bit:
            mail += b" BODY=8BITMIME"
        if not txn.pipelined:
            self._command(State.MAIL, mail, self._timeouts.mail)
            return
        # RFC 2920: the whole envelope and DATA in one write, then the replies in order.
        lines = [mail]
        while txn.to_send:
            lines.append(self._rcpt_command(txn))
            self._queued.append((State.RCPT, self._timeouts.rcpt))
        lines.append(b"DATA")
        self._queued.append((State.DATA, self._timeouts.data_init))
        self._transport.write(b"\r\n".join(lines) + b"\r\n")
        self._expect(State.MAIL, self._timeouts.mail)

    def _rcpt_command(self, txn: _Transaction) -> bytes:
        recipient = txn.to_send.popleft()
        txn.awaiting.append(recipient)
        return b"RCPT TO:<" + recipient.encode() + b">"

    def _on_mail(self, reply: _Reply) -> None:
        txn = self._current
        txn.tried = self._tried_any = True
        if reply.kind != 2:
            if reply.kind not in (4, 5) or reply.code == 421 or not txn.pipelined:
                self._refused(reply)
                return
            # The RCPT TOs and DATA sent with it still get their replies, to be read first.
            txn.refusal = self._error_for(reply)
        if txn.pipelined:
            self._next_reply()
        else:
            self._next_recipient()

    def _next_recipient(self) -> None:
        """Without PIPELINING: the next RCPT TO, else DATA when some recipient was accepted."""
        txn = self._current
        if txn.to_send:
            self._command(State.RCPT, self._rcpt_command(txn), self._timeouts.rcpt)
        elif txn.accepted:
            self._command(State.DATA, b"DATA", self._timeouts.data_init)
        else:
            self._end_transaction(self._nothing_to_send(txn), clean=False)

    def _on_rcpt(self, reply: _Reply) -> None:
        txn = self._current
        recipient = txn.awaiting.popleft()
        if reply.kind not in (2, 4, 5):
            self._protocol_error(f"gave an unexpected reply {reply.text!r} to RCPT TO")
            return
        if txn.refusal is not None:
            pass  # replies to RCPT TO after a refused MAIL FROM say nothing about the recipient
        elif reply.kind == 2:
            txn.accepted.append(recipient)
        elif reply.kind == 4:
            txn.temporary[recipient] = self._said(reply)
        else:
            txn.permanent[recipient] = self._said(reply)
        if txn.pipelined:
            self._next_reply()
        else:
            self._next_recipient()

    def _nothing_to_send(self, txn: _Transaction) -> DeliveryOutcome:
        """The outcome of a transaction that had no accepted recipient, so sent no content."""
        if txn.refusal is not None:
            return txn.refusal
        if txn.temporary:
            # Every recipient was refused and some may try again later: each has its own answer.
            return DeliveryResult(temporary=dict(txn.temporary), permanent=dict(txn.permanent))
        first = next(iter(txn.permanent.values()))
        return PermanentDeliveryError(first, recipients=txn.permanent)

    def _on_data(self, reply: _Reply) -> None:
        txn = self._current
        if txn.refusal is not None or not txn.accepted:
            # Pipelined, and MAIL FROM or every RCPT TO was refused: there is nothing to send.
            if reply.code == 354:
                # The peer took DATA all the same. A lone dot ends the empty message and
                # brings the conversation back in step; what it is answered counts for nothing.
                txn.discard = True
                self._command(State.END_OF_DATA, b".", self._timeouts.final_dot)
            else:
                self._end_transaction(self._nothing_to_send(txn), clean=False)
            return
        if reply.code == 354 and txn.kept is not None:
            # In memory already: all of it at once, as the transport buffers it anyway.
            encoder = DataEncoder()
            wire = [encoder.feed(chunk) for chunk in txn.kept]
            wire.append(encoder.finish())
            self._transport.write(b"".join(wire))
            self._expect(State.END_OF_DATA, self._timeouts.final_dot)
        elif reply.code == 354:
            self.state = State.CONTENT
            self._transport.registerProducer(self, True)
            self._sending = Deferred.fromCoroutine(self._send_content(txn))
            self._sending.addErrback(self._content_failed)
        else:
            self._refused(reply)

    def _sending_content_of(self, txn: _Transaction) -> bool:
        """Whether we are still to send C{txn}'s content: False once the session stopped it."""
        return self.state is State.CONTENT and self._txn is txn

    async def _send_content(self, txn: _Transaction) -> None:
        encoder = DataEncoder()
        chunks = txn.message.content()
        try:
            while True:
                self._start_timer(self._timeouts.content)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if not self._sending_content_of(txn):
                    return
                if chunk:
                    self._transport.write(encoder.feed(chunk))
                while self._paused is not None:
                    await self._paused
                if not self._sending_content_of(txn):
                    return
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if not self._sending_content_of(txn):
            return
        self._transport.unregisterProducer()
        self._transport.write(encoder.finish())
        self._expect(State.END_OF_DATA, self._timeouts.final_dot)

    def _content_failed(self, failure: Failure) -> None:
        """The content source raised, so the message must not be ended with a dot."""
        if self.state is not State.CONTENT:
            return  # we stopped the sending ourselves, and the outcome is settled already
        _log.failure("Reading the content for {peer} failed", failure, peer=self._peer)
        text = f"reading the message content failed ({type(failure.value).__name__})"
        self._end_session(TemporaryDeliveryError(text), polite=False)

    def _on_early_reply(self, reply: _Reply) -> None:
        """A reply while we are still sending content: the peer gave up on the message."""
        self._end_session(self._error_for(reply), polite=False)

    def _on_end_of_data(self, reply: _Reply) -> None:
        txn = self._current
        if txn.discard:
            self._end_transaction(self._nothing_to_send(txn), clean=False)
            return
        if reply.code == 250:
            result = DeliveryResult(
                accepted=list(txn.accepted),
                temporary=dict(txn.temporary),
                permanent=dict(txn.permanent),
                reply=self._said(reply),
            )
            self._end_transaction(result, clean=True)
            return
        if reply.kind == 5:
            error: DeliveryError = PermanentDeliveryError(self._said(reply))
        else:
            error = TemporaryDeliveryError(self._said(reply), try_other_hosts=False)
        self._end_transaction_or_session(reply, error)

    def _refused(self, reply: _Reply) -> None:
        """MAIL FROM or DATA was refused: the transaction failed, the session goes on."""
        if reply.kind not in (4, 5):
            self._protocol_error(f"gave an unexpected reply {reply.text!r} to {self.state.value}")
            return
        self._end_transaction_or_session(reply, self._error_for(reply))

    def _end_transaction_or_session(self, reply: _Reply, error: DeliveryError) -> None:
        """A failed transaction, and after a 421 the end of the session: the peer is closing."""
        if reply.code == 421:
            self._end_session(error)
        else:
            self._end_transaction(error, clean=False)

    def _end_transaction(self, outcome: DeliveryOutcome, *, clean: bool) -> None:
        """Settle the current message, then go on to the next one (RSET first unless C{clean})."""
        txn, self._txn = self._current, None
        if self._next >= len(self._messages):
            self._quit()
        elif clean:
            self._begin_transaction()
        else:
            self._command(State.RSET, b"RSET", self._timeouts.rset)
        _settle(txn.result, outcome)

    def _on_rset(self, reply: _Reply) -> None:
        if reply.kind == 2:
            self._begin_transaction()
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _on_quit(self, reply: _Reply) -> None:
        self.state = State.CLOSED
        self._cancel_timer()
        self._transport.loseConnection()

    @property
    def _current(self) -> _Transaction:
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

    def _error_for(self, reply: _Reply) -> DeliveryError:
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
                _settle(txn.result, error)
            else:
                untried.insert(0, txn.result)
        others = _not_tried(self._peer, error) if self._tried_any else error
        for result in untried:
            _settle(result, others)

    def _resume(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)


def _settle(result: Deferred[DeliveryResult], outcome: DeliveryOutcome) -> None:
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


async def _read_all(content: Callable[[], AsyncIterator[bytes]]) -> bytes:
    return b"".join([chunk async for chunk in content()])


async def _now(f: Callable[[bytes], bytes], data: bytes) -> bytes:
    return f(data)


def load_trust_root(ca_file: str) -> IOpenSSLTrustRoot:
    """Trust the CA certificates in the PEM file C{ca_file}, which may hold several."""
    try:
        with open(ca_file, "rb") as f:
            pem = f.read()
        found = x509.load_pem_x509_certificates(pem)
    except (OSError, ValueError) as e:
        raise TemporaryDeliveryError(f"cannot use CA file {ca_file!r}: {e}") from None
    certificates = [Certificate(crypto.X509.from_cryptography(c)) for c in found]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return root


# --- the coroutines the queue calls ----------------------------------------------------------


async def deliver_many(
    reactor: IReactorTCP,
    host: str,
    port: int,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
) -> list[DeliveryOutcome]:
    """Connect to C{host}:C{port} once and send C{messages} over that one session.

    Returns one outcome per message, in the same order: a L{DeliveryResult} with the
    per-recipient outcomes, or the L{DeliveryError} that failed the whole transaction. A
    message whose envelope cannot be sent gets its error without being sent; when the
    connection cannot be made, every message gets that error. See L{SmtpClientProtocol}
    for what a session that ends early does to the messages still to come.
    """

    async def session(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        try:
            protocol = await _connect(reactor, host, port, sendable, options, tls)
        except TemporaryDeliveryError as e:
            return [e] * len(sendable)
        return [await _outcome(result) for result in protocol.results]

    return await _with_envelopes_checked(messages, session)


async def deliver(
    reactor: IReactorTCP,
    host: str,
    port: int,
    message: OutgoingMessage,
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
) -> DeliveryResult:
    """Connect to C{host}:C{port} and run one SMTP transaction for C{message}.

    Returns per-recipient outcomes. Raises L{TemporaryDeliveryError} or
    L{PermanentDeliveryError} when the whole transaction failed.
    """
    [outcome] = await deliver_many(reactor, host, port, [message], options, tls)
    return _result_or_raise(outcome)


async def _connect(
    reactor: IReactorTCP,
    host: str,
    port: int,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy,
) -> SmtpClientProtocol:
    clock = IReactorTime(reactor)
    endpoint = _endpoint(reactor, host, port, options.timeouts.connect)
    factory = Factory.forProtocol(partial(SmtpClientProtocol, clock, host, messages, options, tls))
    factory.noisy = False  # two log lines per session otherwise
    connecting = endpoint.connect(factory)
    connecting.addTimeout(options.timeouts.connect, clock)
    try:
        return cast(SmtpClientProtocol, await connecting)
    except (defer.TimeoutError, ConnectingCancelledError):
        # HostnameEndpoint answers our timeout's cancel() with ConnectingCancelledError.
        raise TemporaryDeliveryError(f"connection to {host}:{port} timed out") from None
    except Exception as e:
        raise TemporaryDeliveryError(f"connection to {host}:{port} failed: {e}") from None


def _endpoint(reactor: IReactorTCP, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """An IP address is connected to directly; a name goes through HostnameEndpoint's lookup."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, str(address), port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, str(address), port, timeout=timeout)


async def _outcome(result: Deferred[DeliveryResult]) -> DeliveryOutcome:
    try:
        return await result
    except DeliveryError as e:
        return e


def _result_or_raise(outcome: DeliveryOutcome) -> DeliveryResult:
    if isinstance(outcome, DeliveryError):
        raise outcome
    return outcome


async def _with_envelopes_checked(
    messages: Sequence[OutgoingMessage],
    send: Callable[[list[OutgoingMessage]], Awaitable[list[DeliveryOutcome]]],
) -> list[DeliveryOutcome]:
    """Outcomes for C{messages}: envelope errors at once, the rest from C{send}, in order.

    A message whose envelope cannot be sent fails on its own, so it never costs the
    others their session, and when no message is left nothing is sent at all.
    """
    outcomes: dict[int, DeliveryOutcome] = {}
    sendable: list[int] = []
    for index, message in enumerate(messages):
        try:
            check_envelope(message)
        except PermanentDeliveryError as e:
            outcomes[index] = e
        else:
            sendable.append(index)
    if sendable:
        results = await send([messages[index] for index in sendable])
        outcomes.update(zip(sendable, results, strict=True))
    return [outcomes[index] for index in range(len(messages))]


async def deliver_many_to_hosts(
    reactor: IReactorTCP,
    hosts: Sequence[tuple[str, int]],
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    *,
    max_hosts: int = MAX_HOSTS,
) -> list[DeliveryOutcome]:
    """Try C{hosts} in order, one session each, until every message has a definite answer.

    A message moves on to the next host when its outcome is a temporary failure from
    before the host saw the whole message (C{try_other_hosts}): all of them after a
    connection-level failure (refused, timed out, 4xx greeting, TLS failure and so on);
    after a session that ended part-way, the message in progress (unless its final dot was
    sent) and those whose turn never came. A message whose final dot was sent is never
    offered to another host. Every other outcome is final. A message still without one
    after the last host keeps that host's error.
    """

    async def send(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = [TemporaryDeliveryError("no host to deliver to")] * len(
            sendable
        )
        pending = list(range(len(sendable)))
        for host, port in list(hosts)[:max_hosts]:
            batch = [sendable[index] for index in pending]
            results = await deliver_many(reactor, host, port, batch, options, tls)
            moving: list[int] = []
            for index, outcome in zip(pending, results, strict=True):
                outcomes[index] = outcome
                if isinstance(outcome, TemporaryDeliveryError) and outcome.try_other_hosts:
                    moving.append(index)
            if not moving:
                break
            _log.info(
                "Delivery of {n} message(s) via {host}:{port} failed, next host: {text}",
                n=len(moving),
                host=host,
                port=port,
                text=cast(DeliveryError, outcomes[moving[0]]).text,
            )
            pending = moving
        return outcomes

    return await _with_envelopes_checked(messages, send)


async def deliver_to_hosts(
    reactor: IReactorTCP,
    hosts: Sequence[tuple[str, int]],
    message: OutgoingMessage,
    options: ClientOptions,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    *,
    max_hosts: int = MAX_HOSTS,
) -> DeliveryResult:
    """Try C{hosts} in order until one gives a definite answer.

    A temporary failure before the host has seen the whole message (refused, timed out,
    4xx greeting, TLS failure and so on) moves on to the next host. Any other outcome is
    final. When every host fails, the last host's error is raised.
    """
    [outcome] = await deliver_many_to_hosts(
        reactor, hosts, [message], options, tls, max_hosts=max_hosts
    )
    return _result_or_raise(outcome)


async def resolve_mx(
    resolver: IResolver, domain: str, *, rng: random.Random | None = None
) -> list[tuple[str, int]]:
    """The hosts to try for C{domain}, best first, each with port 25.

    MX records are sorted by preference. Equal preferences come in random order, drawn
    from C{rng} when it is given (for repeatable tests). With no MX records the domain
    itself is used (RFC 5321 §5.1). A null MX (RFC 7505) and NXDOMAIN are permanent
    failures. Any other DNS failure is temporary.
    """
    domain = domain.rstrip(".")
    try:
        answers, _authority, _additional = await resolver.lookupMailExchange(domain, DNS_TIMEOUTS)
    except DNSNameError:
        raise PermanentDeliveryError(f"domain {domain} does not exist (DNS NXDOMAIN)") from None
    except Exception as e:
        raise TemporaryDeliveryError(
            f"MX lookup for {domain} failed: {type(e).__name__} {e}".rstrip()
        ) from None
    records: list[tuple[int, str]] = []
    for rr in cast(list[dns.RRHeader], answers):
        if rr.type == dns.MX:
            payload = cast(dns.Record_MX, rr.payload)
            name = payload.name.name.decode("ascii", "replace").rstrip(".")
            records.append((payload.preference, name))
    if not records:
        return [(domain, 25)]
    usable = [record for record in records if record[1]]
    if not usable:
        raise PermanentDeliveryError("domain does not accept mail (null MX)")
    draw = rng.random if rng is not None else random.random
    hosts: list[tuple[str, int]] = []
    for _preference, name in sorted(usable, key=lambda record: (record[0], draw())):
        if (name, 25) not in hosts:
            hosts.append((name, 25))
    return hosts


async def deliver_many_via_route(
    reactor: IReactorTCP,
    resolver: IResolver,
    route: Route,
    domain: str,
    messages: Sequence[OutgoingMessage],
    options: ClientOptions,
    *,
    rng: random.Random | None = None,
) -> list[DeliveryOutcome]:
    """Deliver C{messages}, all for C{domain}, the way C{route} says: one session per host.

    An MX route goes to the domain's MX hosts with opportunistic TLS. An
    C{smtp://host:port} route goes to that relay, with a verified certificate when it
    offers STARTTLS. A failed MX lookup is every message's outcome.
    """

    async def send(sendable: list[OutgoingMessage]) -> list[DeliveryOutcome]:
        if not route.mx:
            hosts = [(route.host, route.port)]
            return await deliver_many_to_hosts(reactor, hosts, sendable, options, TlsPolicy.VERIFY)
        try:
            hosts = await resolve_mx(resolver, domain, rng=rng)
        except DeliveryError as e:
            return [e] * len(sendable)
        return await deliver_many_to_hosts(
            reactor, hosts, sendable, options, TlsPolicy.OPPORTUNISTIC
        )

    return await _with_envelopes_checked(messages, send)


async def deliver_via_route(
    reactor: IReactorTCP,
    resolver: IResolver,
    route: Route,
    domain: str,
    message: OutgoingMessage,
    options: ClientOptions,
    *,
    rng: random.Random | None = None,
) -> DeliveryResult:
    """Deliver mail for C{domain} the way C{route} says (see L{deliver_many_via_route})."""
    [outcome] = await deliver_many_via_route(
        reactor, resolver, route, domain, [message], options, rng=rng
    )
    return _result_or_raise(outcome)
